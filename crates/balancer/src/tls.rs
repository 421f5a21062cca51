//! TLS termination with rustls: certificates from PEM files, re-read when they change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// How often certificate files are looked at for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Serves the current certificate; swapped in place when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
    cert: PathBuf,
    key: PathBuf,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reads a certificate chain and its key.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(|e| format!("{}: {e}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key_der = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(|e| format!("{}: {e}", key.display()))?,
    ))
    .map_err(|e| format!("{}: {e}", key.display()))?
    .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{}: unusable key: {e}", key.display()))?;
    Ok(CertifiedKey::new(certs, signing))
}

fn mtimes(paths: [&Path; 2]) -> [Option<SystemTime>; 2] {
    paths.map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// An acceptor for `tls` (ALPN: h2, http/1.1) and a task that reloads the files when they change.
pub fn acceptor(tls: &TlsConfig) -> Result<(TlsAcceptor, tokio::task::JoinHandle<()>), String> {
    let resolver = Arc::new(ReloadingCert {
        current: ArcSwap::from_pointee(load(&tls.cert, &tls.key)?),
        cert: tls.cert.clone(),
        key: tls.key.clone(),
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
        let mut seen = mtimes([&resolver.cert, &resolver.key]);
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let now = mtimes([&resolver.cert, &resolver.key]);
            if now == seen {
                continue;
            }
            seen = now;
            match load(&resolver.cert, &resolver.key) {
                Ok(k) => {
                    resolver.current.store(Arc::new(k));
                    tracing::info!(cert = %resolver.cert.display(), "certificate reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "certificate changed but cannot be loaded; keeping the old one")
                }
            }
        }
    });
    Ok((TlsAcceptor::from(Arc::new(cfg)), watcher))
}
