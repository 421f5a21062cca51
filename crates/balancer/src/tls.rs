//! TLS termination with rustls: a frontend's certificates from PEM files, picked by SNI (exact
//! names, then `*.` wildcards, then the default), checked when loaded (the key matches, the
//! certificate is within its validity period), and re-read when the files change — a file that
//! no longer loads leaves the last good certificates serving.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::{CertFiles, TlsConfig};

/// How often certificate files are looked at for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// One loaded certificate and the names it serves.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Its DNS names (subject alternative names, lower case; `*.x` for wildcards).
    names: Vec<String>,
}

/// The certificates of a frontend, indexed for the handshake.
#[derive(Debug, Default)]
pub struct CertStore {
    default: Option<Arc<CertifiedKey>>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` certificates, by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads every pair: the first is the default (for clients without SNI or with a name no
    /// certificate covers); a name two certificates claim goes to the first.
    pub fn load(pairs: &[CertFiles], now: SystemTime) -> Result<CertStore, String> {
        let mut store = CertStore::default();
        for pair in pairs {
            let loaded = load(&pair.cert, &pair.key, now)?;
            for name in &loaded.names {
                let table = match name.strip_prefix("*.") {
                    Some(parent) => store.wildcard.entry(parent.to_string()),
                    None => store.exact.entry(name.clone()),
                };
                table.or_insert_with(|| loaded.key.clone());
            }
            store.default.get_or_insert_with(|| loaded.key.clone());
        }
        Ok(store)
    }

    /// The certificate for a server name (already lower case, as rustls gives it).
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = sni.and_then(|name| {
            self.exact.get(name).or_else(|| {
                // A wildcard covers exactly one label.
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        by_name.or(self.default.as_ref()).cloned()
    }
}

/// Serves the current certificates; swapped in place when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertStore>,
    pairs: Vec<CertFiles>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().pick(hello.server_name())
    }
}

/// Reads a certificate chain and its key, and checks them: the key is the certificate's, and
/// `now` lies within its validity period.
fn load(cert: &Path, key: &Path, now: SystemTime) -> Result<Loaded, String> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(|e| format!("{}: {e}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("{}: {e}", cert.display()))?;
    let Some(leaf) = certs.first() else {
        return Err(format!("{}: no certificate found", cert.display()));
    };
    let (names, not_before, not_after) = describe(leaf).map_err(|e| format!("{}: {e}", cert.display()))?;
    let unix = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if unix > not_after {
        return Err(format!("{}: the certificate expired ({})", cert.display(), date(not_after)));
    }
    if unix < not_before {
        return Err(format!("{}: the certificate is not valid before {}", cert.display(), date(not_before)));
    }
    let key_der = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(|e| format!("{}: {e}", key.display()))?,
    ))
    .map_err(|e| format!("{}: {e}", key.display()))?
    .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{}: unusable key: {e}", key.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|_| {
        format!("{}: the key does not match the certificate {}", key.display(), cert.display())
    })?;
    Ok(Loaded { key: Arc::new(certified), names })
}

/// A certificate's DNS names (lower case) and validity period (Unix seconds).
fn describe(der: &[u8]) -> Result<(Vec<String>, i64, i64), String> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a certificate: {e}"))?;
    let validity = x509.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok((names, validity.not_before.timestamp(), validity.not_after.timestamp()))
}

/// A Unix time as an RFC 3339 date, for messages.
fn date(unix: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix).map_or_else(|_| unix.to_string(), |t| t.to_string())
}

fn mtimes(pairs: &[CertFiles]) -> Vec<Option<SystemTime>> {
    pairs
        .iter()
        .flat_map(|p| [&p.cert, &p.key])
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// An acceptor for `tls` (ALPN: h2, http/1.1) and a task that reloads the files when they change.
pub fn acceptor(tls: &TlsConfig) -> Result<(TlsAcceptor, tokio::task::JoinHandle<()>), String> {
    let pairs = tls.pairs();
    let resolver = Arc::new(ReloadingCert {
        current: ArcSwap::from_pointee(CertStore::load(&pairs, SystemTime::now())?),
        pairs,
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Stateless resumption tickets (AEAD-sealed session state, keys rotated every 6 hours),
    // rather than rustls's default of ids into a 256-entry cache that a few hundred handshakes
    // a second churn through before any client comes back. One ticket per handshake, as
    // HAProxy sends: a browser keeps one connection per origin, and a client that does not
    // resume (most load generators, scripts) decrypts and stores one ticket fewer.
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    cfg.send_tls13_tickets = 1;
    let watcher = tokio::spawn(async move {
        let mut seen = mtimes(&resolver.pairs);
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let now = mtimes(&resolver.pairs);
            if now == seen {
                continue;
            }
            seen = now;
            match CertStore::load(&resolver.pairs, SystemTime::now()) {
                Ok(store) => {
                    resolver.current.store(Arc::new(store));
                    tracing::info!(cert = %resolver.pairs[0].cert.display(), certificates = resolver.pairs.len(), "certificates reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "certificates changed but cannot be loaded; keeping the last good ones")
                }
            }
        }
    });
    Ok((TlsAcceptor::from(Arc::new(cfg)), watcher))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Files(PathBuf);

    impl Files {
        fn new(name: &str) -> Files {
            let d = std::env::temp_dir().join(format!("shoal-tls-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Files(d)
        }

        /// A self-signed certificate for `names`, valid from `from` to `to` days from now.
        fn cert(&self, file: &str, names: &[&str], days: (i64, i64)) -> CertFiles {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params =
                rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.not_before = time::OffsetDateTime::now_utc() + time::Duration::days(days.0);
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days.1);
            let cert = params.self_signed(&key).unwrap();
            let pair = CertFiles {
                cert: self.0.join(format!("{file}.pem")),
                key: self.0.join(format!("{file}.key")),
            };
            std::fs::write(&pair.cert, cert.pem()).unwrap();
            std::fs::write(&pair.key, key.serialize_pem()).unwrap();
            pair
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names_of(k: &CertifiedKey) -> Vec<String> {
        describe(k.end_entity_cert().unwrap()).unwrap().0
    }

    #[test]
    fn sni_picks_the_exact_name_then_a_wildcard_then_the_default() {
        let f = Files::new("sni");
        let pairs = [
            f.cert("default", &["default.test"], (-1, 30)),
            f.cert("api", &["api.example.test", "API2.example.test"], (-1, 30)),
            f.cert("wild", &["*.example.test"], (-1, 30)),
        ];
        let store = CertStore::load(&pairs, SystemTime::now()).unwrap();
        let pick = |sni: Option<&str>| names_of(&store.pick(sni).unwrap());
        assert_eq!(pick(Some("api.example.test")), ["api.example.test", "api2.example.test"]);
        assert_eq!(
            pick(Some("api2.example.test")),
            ["api.example.test", "api2.example.test"],
            "names are case-blind"
        );
        assert_eq!(pick(Some("www.example.test")), ["*.example.test"]);
        assert_eq!(pick(Some("a.b.example.test")), ["default.test"], "a wildcard covers one label only");
        assert_eq!(pick(Some("example.test")), ["default.test"]);
        assert_eq!(pick(Some("other.test")), ["default.test"]);
        assert_eq!(pick(None), ["default.test"], "no SNI: the default");
    }

    #[test]
    fn expired_future_and_mismatched_certificates_are_refused_with_the_reason() {
        let f = Files::new("bad");
        let expired = f.cert("expired", &["a.test"], (-30, -1));
        let e = CertStore::load(&[expired], SystemTime::now()).unwrap_err();
        assert!(e.contains("expired.pem: the certificate expired ("), "{e}");
        let future = f.cert("future", &["a.test"], (2, 30));
        let e = CertStore::load(&[future], SystemTime::now()).unwrap_err();
        assert!(e.contains("is not valid before"), "{e}");
        let (a, b) = (f.cert("a", &["a.test"], (-1, 30)), f.cert("b", &["b.test"], (-1, 30)));
        let mixed = CertFiles { cert: a.cert.clone(), key: b.key.clone() };
        let e = CertStore::load(&[mixed], SystemTime::now()).unwrap_err();
        assert!(e.contains("b.key: the key does not match the certificate"), "{e}");
        std::fs::write(&a.cert, "not a pem").unwrap();
        assert!(CertStore::load(&[a], SystemTime::now()).unwrap_err().contains("no certificate found"));
    }
}
