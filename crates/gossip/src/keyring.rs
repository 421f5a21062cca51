//! The gossip keyring and memberlist's AES-GCM envelope.
//!
//! A keyring holds one primary key (used to encrypt) and any number of other
//! keys (accepted when decrypting), which is what makes rotation possible:
//! install a new key everywhere, make it primary, then remove the old one.
//! Keys are 16, 24 or 32 bytes (AES-128/192/256), given as base64 exactly like
//! `serf agent -encrypt`. The envelope is `[version][12-byte nonce][ciphertext+tag]`;
//! version 1 (no padding) is sent, version 0 (PKCS#7 padded) is also accepted.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::RngCore;

type Aes192Gcm = AesGcm<Aes192, U12>;

const VERSION_SIZE: usize = 1;
const NONCE_SIZE: usize = 12;
const TAG_SIZE: usize = 16;
const BLOCK_SIZE: usize = 16;

/// Bytes that encryption adds to a message (version, nonce, tag).
pub const ENCRYPT_OVERHEAD: usize = VERSION_SIZE + NONCE_SIZE + TAG_SIZE;

/// Errors from key handling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is not 16, 24 or 32 bytes long.
    #[error("key size must be 16, 24 or 32 bytes, got {0}")]
    BadLength(usize),
    /// The key is not valid base64.
    #[error("key is not valid base64: {0}")]
    BadBase64(String),
    /// `use` or `remove` named a key that is not installed.
    #[error("requested key is not in the keyring")]
    NotInstalled,
    /// The primary key cannot be removed.
    #[error("removing the primary key is not allowed")]
    RemovePrimary,
}

/// Why a payload could not be decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Too short to hold the envelope.
    #[error("payload too small to decrypt")]
    TooShort,
    /// Unknown envelope version.
    #[error("unsupported encryption version {0}")]
    BadVersion(u8),
    /// No installed key authenticated the payload.
    #[error("no installed key could decrypt the message")]
    NoKey,
}

enum Cipher {
    A128(Box<Aes128Gcm>),
    A192(Box<Aes192Gcm>),
    A256(Box<Aes256Gcm>),
}

impl Cipher {
    fn new(key: &[u8]) -> Result<Cipher, KeyError> {
        // The length is checked first, so `new_from_slice` cannot fail here.
        let bad = |_| KeyError::BadLength(key.len());
        Ok(match key.len() {
            16 => Cipher::A128(Box::new(Aes128Gcm::new_from_slice(key).map_err(bad)?)),
            24 => Cipher::A192(Box::new(Aes192Gcm::new_from_slice(key).map_err(bad)?)),
            32 => Cipher::A256(Box::new(Aes256Gcm::new_from_slice(key).map_err(bad)?)),
            n => return Err(KeyError::BadLength(n)),
        })
    }

    fn seal(&self, nonce: &[u8; NONCE_SIZE], msg: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = Nonce::from_slice(nonce);
        let payload = Payload { msg, aad };
        // AES-GCM encryption only fails for inputs beyond 64 GiB.
        let sealed = match self {
            Cipher::A128(c) => c.encrypt(nonce, payload),
            Cipher::A192(c) => c.encrypt(nonce, payload),
            Cipher::A256(c) => c.encrypt(nonce, payload),
        };
        sealed.unwrap_or_default()
    }

    fn open(&self, nonce: &[u8], msg: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::from_slice(nonce);
        let payload = Payload { msg, aad };
        match self {
            Cipher::A128(c) => c.decrypt(nonce, payload),
            Cipher::A192(c) => c.decrypt(nonce, payload),
            Cipher::A256(c) => c.decrypt(nonce, payload),
        }
        .ok()
    }
}

struct Key {
    bytes: Vec<u8>,
    cipher: Cipher,
}

/// The installed keys, primary first.
#[derive(Default)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring").field("keys", &self.keys.len()).finish()
    }
}

/// Decodes a base64 key and checks its length.
pub fn decode_key(b64: &str) -> Result<Vec<u8>, KeyError> {
    let key = BASE64.decode(b64.trim()).map_err(|e| KeyError::BadBase64(e.to_string()))?;
    validate_key(&key)?;
    Ok(key)
}

/// Encodes a key as base64 (Serf's text form).
pub fn encode_key(key: &[u8]) -> String {
    BASE64.encode(key)
}

/// Checks that `key` has an AES key length.
pub fn validate_key(key: &[u8]) -> Result<(), KeyError> {
    match key.len() {
        16 | 24 | 32 => Ok(()),
        n => Err(KeyError::BadLength(n)),
    }
}

impl Keyring {
    /// A keyring whose primary key is `primary`, also accepting `others`.
    pub fn new(primary: &[u8], others: &[Vec<u8>]) -> Result<Keyring, KeyError> {
        let mut ring = Keyring::default();
        ring.install(primary)?;
        for k in others {
            ring.install(k)?;
        }
        Ok(ring)
    }

    /// Whether any key is installed (encryption is on).
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The installed keys, primary first.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.keys.iter().map(|k| k.bytes.as_slice())
    }

    /// The key used to encrypt.
    pub fn primary(&self) -> Option<&[u8]> {
        self.keys.first().map(|k| k.bytes.as_slice())
    }

    /// Adds a key; the first key installed becomes primary. Installing twice is a no-op.
    pub fn install(&mut self, key: &[u8]) -> Result<(), KeyError> {
        validate_key(key)?;
        if self.keys.iter().any(|k| k.bytes == key) {
            return Ok(());
        }
        self.keys.push(Key { bytes: key.to_vec(), cipher: Cipher::new(key)? });
        Ok(())
    }

    /// Makes an installed key the primary one.
    pub fn use_key(&mut self, key: &[u8]) -> Result<(), KeyError> {
        let idx = self.keys.iter().position(|k| k.bytes == key).ok_or(KeyError::NotInstalled)?;
        let k = self.keys.remove(idx);
        self.keys.insert(0, k);
        Ok(())
    }

    /// Removes a non-primary key. Removing a key that is not installed is a no-op, as in Serf.
    pub fn remove(&mut self, key: &[u8]) -> Result<(), KeyError> {
        if self.primary() == Some(key) {
            return Err(KeyError::RemovePrimary);
        }
        self.keys.retain(|k| k.bytes != key);
        Ok(())
    }

    /// Encrypts `msg` with the primary key, appending the envelope to `out`.
    /// Returns `false` (and writes nothing) when no key is installed.
    pub fn seal_into(&self, rng: &mut impl RngCore, msg: &[u8], aad: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(key) = self.keys.first() else { return false };
        let mut nonce = [0u8; NONCE_SIZE];
        rng.fill_bytes(&mut nonce);
        out.push(1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&key.cipher.seal(&nonce, msg, aad));
        true
    }

    /// Decrypts an envelope with any installed key.
    pub fn open(&self, envelope: &[u8], aad: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let Some(&version) = envelope.first() else { return Err(DecryptError::TooShort) };
        if version > 1 {
            return Err(DecryptError::BadVersion(version));
        }
        let min = VERSION_SIZE + NONCE_SIZE + TAG_SIZE + if version == 0 { BLOCK_SIZE } else { 0 };
        if envelope.len() < min {
            return Err(DecryptError::TooShort);
        }
        let nonce = &envelope[VERSION_SIZE..VERSION_SIZE + NONCE_SIZE];
        let sealed = &envelope[VERSION_SIZE + NONCE_SIZE..];
        for key in &self.keys {
            if let Some(mut plain) = key.cipher.open(nonce, sealed, aad) {
                if version == 0 {
                    // PKCS#7: the last byte says how many padding bytes to drop.
                    let pad = usize::from(plain.last().copied().unwrap_or(0));
                    if pad == 0 || pad > BLOCK_SIZE || pad > plain.len() {
                        return Err(DecryptError::NoKey);
                    }
                    plain.truncate(plain.len() - pad);
                }
                return Ok(plain);
            }
        }
        Err(DecryptError::NoKey)
    }

    /// The length of an envelope holding `plain_len` bytes.
    pub fn sealed_len(plain_len: usize) -> usize {
        ENCRYPT_OVERHEAD + plain_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn every_key_size_round_trips() {
        for len in [16, 24, 32] {
            let ring = Keyring::new(&vec![7u8; len], &[]).unwrap();
            let mut out = Vec::new();
            assert!(ring.seal_into(&mut rng(), b"hello", b"label", &mut out));
            assert_eq!(out.len(), Keyring::sealed_len(5));
            assert_eq!(ring.open(&out, b"label").unwrap(), b"hello");
            assert_eq!(ring.open(&out, b"other").unwrap_err(), DecryptError::NoKey);
        }
    }

    #[test]
    fn secondary_keys_decrypt_and_rotation_works() {
        let old = vec![1u8; 16];
        let new = vec![2u8; 32];
        let mut a = Keyring::new(&old, &[]).unwrap();
        let mut sealed = Vec::new();
        a.seal_into(&mut rng(), b"m", b"", &mut sealed);

        let mut b = Keyring::new(&new, std::slice::from_ref(&old)).unwrap();
        assert_eq!(b.open(&sealed, b"").unwrap(), b"m");
        assert_eq!(b.remove(&new).unwrap_err(), KeyError::RemovePrimary);
        b.use_key(&old).unwrap();
        assert_eq!(b.primary(), Some(&old[..]));
        b.remove(&new).unwrap();
        assert_eq!(b.keys().count(), 1);
        a.install(&new).unwrap();
        a.use_key(&new).unwrap();
        assert_eq!(a.use_key(&[9u8; 16]).unwrap_err(), KeyError::NotInstalled);
    }

    #[test]
    fn bad_keys_and_envelopes_are_refused() {
        assert_eq!(decode_key("AAAA").unwrap_err(), KeyError::BadLength(3));
        assert!(matches!(decode_key("!!"), Err(KeyError::BadBase64(_))));
        let ring = Keyring::new(&[3u8; 16], &[]).unwrap();
        assert_eq!(ring.open(&[], b"").unwrap_err(), DecryptError::TooShort);
        assert_eq!(ring.open(&[9; 40], b"").unwrap_err(), DecryptError::BadVersion(9));
        assert_eq!(ring.open(&[1; 20], b"").unwrap_err(), DecryptError::TooShort);
        assert_eq!(ring.open(&[1; 60], b"").unwrap_err(), DecryptError::NoKey);
    }

    #[test]
    fn serf_keygen_keys_decode() {
        // `serf keygen` prints 16 random bytes in standard base64.
        let key = decode_key("5K9OtfP7efFrNKe5WCQvXvnaXJ5cWP0SvXiwe0kkjM4=").unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(encode_key(&key), "5K9OtfP7efFrNKe5WCQvXvnaXJ5cWP0SvXiwe0kkjM4=");
    }
}
