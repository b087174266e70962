//! The API's listening socket: plain HTTP, or HTTPS with rustls (`tls_cert_file`,
//! `tls_key_file`) that asks clients for certificates from `client_ca_file` (mutual TLS).
//! Certificates are read again on SIGHUP; connections already open and running tasks are not
//! touched. Every request carries whether its connection presented a client certificate
//! that checked ([`ClientCert`]), for the API's authentication.
//!
//! It never serves with a half-read configuration: a reload that fails keeps the one in use.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::Router;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};

use super::config::Config;
use crate::error::{Error, Result};

/// Whether the connection a request came on presented a client certificate from
/// `client_ca_file` (a certificate that does not check fails the handshake instead).
#[derive(Debug, Clone, Copy)]
pub struct ClientCert(pub bool);

/// The TLS configuration in use, and where it is read from.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// The configured TLS, read now; `None` when the config names no certificate.
    pub fn from_config(cfg: &Config) -> Result<Option<Arc<Tls>>> {
        let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) else { return Ok(None) };
        let current = build(cert, key, cfg.client_ca_file.as_deref())?;
        Ok(Some(Arc::new(Tls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: cfg.client_ca_file.clone(),
            current: RwLock::new(current),
        })))
    }

    /// Read the files again; on failure the configuration in use stays.
    pub fn reload(&self) -> Result<()> {
        let fresh = build(&self.cert, &self.key, self.client_ca.as_deref())?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn build(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>> {
    let certs = read_certs(cert, "tls_cert_file")?;
    crate::secret::warn_if_exposed(key);
    let key_pem = crate::secret::read_file(key, "tls_key_file")?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem.expose())
        .map_err(|e| Error::usage(format!("tls_key_file {}: no private key in PEM form ({e})", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS: {e}")))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca, "client_ca_file")? {
                roots.add(c).map_err(|e| Error::usage(format!("client_ca_file {}: {e}", ca.display())))?;
            }
            // Clients without a certificate get through the handshake; the API answers them 401
            // (so /healthz stays open). A certificate that does not check ends the handshake.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::usage(format!("client_ca_file {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key_der).map_err(|e| {
        Error::usage(format!("tls_cert_file {} and tls_key_file {}: {e}", cert.display(), key.display()))
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::usage(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::usage(format!("{what} {}: no PEM certificate in it", path.display())));
    }
    Ok(certs)
}

/// Serve `app` on `listener` until `stop` completes: each connection on a task of its own,
/// through TLS when `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<Tls>>,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => return Ok(()),
        };
        let app = app.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            match acceptor {
                None => connection(tcp, app, ClientCert(false)).await,
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                        connection(tls, app, ClientCert(cert)).await
                    }
                    Err(e) => tracing::debug!("TLS handshake refused: {e}"),
                },
            }
        });
    }
}

async fn connection<S>(io: S, app: Router, cert: ClientCert)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(cert);
        tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service).await {
        tracing::debug!("connection: {e}");
    }
}
