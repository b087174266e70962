//! The agent's one HTTP stack: hyper with rustls on ring (aws-lc-sys fails to link for Android
//! arm64 in reports, and ring is smaller), through `aws-smithy-http-client`, resolving with
//! [`super::Resolver`] and trusting exactly [`super::Roots`]. The object store gets it as the
//! SDK's HTTP client ([`Network::http_client`]); the daemon's callbacks post through a connector
//! of the same builder ([`Poster`]): one TLS configuration, one resolver, one set of bugs.
//!
//! Never reads the host's trust store or its resolver settings, and never logs a URL's query or
//! userinfo (they may carry a token).

use std::time::Duration;

use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::http::{HttpConnector, SharedHttpClient};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::error::display::DisplayErrorContext;

use super::Network;

impl Network {
    /// The TLS context of every client: exactly [`Network::roots`], rustls on ring.
    fn tls_context(&self) -> TlsContext {
        let mut trust = TrustStore::empty().with_native_roots(false);
        for pem in self.roots.pem() {
            trust.add_pem_certificate(pem);
        }
        TlsContext::builder().with_trust_store(trust).build().expect("a TLS context from checked roots")
    }

    /// The SDK's HTTP client: resolves with [`Network::resolver`], trusts [`Network::roots`].
    pub fn http_client(&self) -> SharedHttpClient {
        aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .tls_context(self.tls_context())
            .build_with_resolver(self.resolver.clone())
    }

    /// A connector of the same stack for requests made outside the SDK.
    fn connector(&self) -> aws_smithy_http_client::Connector {
        aws_smithy_http_client::Connector::builder()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .tls_context(self.tls_context())
            .build_with_resolver(self.resolver.clone())
    }
}

/// Where the poster's requests run: the runtime it was made in (the daemon's), else one of its
/// own, started at the first request, so pooled connections stay served between requests.
enum Runtime {
    Shared(tokio::runtime::Handle),
    Own(std::sync::OnceLock<tokio::runtime::Runtime>),
}

/// Blocking POSTs of small bodies (the daemon's callbacks) through the agent's HTTP stack.
pub struct Poster {
    connector: aws_smithy_http_client::Connector,
    runtime: Runtime,
    timeout: Duration,
}

/// A POST that got no HTTP answer: the error chain, without the URL.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PostError(pub String);

impl Poster {
    /// A poster with the installed network settings; each request may take `timeout` in all
    /// (connecting, TLS, sending, the answer's head).
    pub fn new(timeout: Duration) -> Poster {
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(h) => Runtime::Shared(h),
            Err(_) => Runtime::Own(std::sync::OnceLock::new()),
        };
        Poster { connector: Network::current().connector(), runtime, timeout }
    }

    /// POST `body` to `url` with `headers`; the answer's status. Call from a thread that is not
    /// a runtime's (it blocks).
    pub fn post(&self, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<u16, PostError> {
        let mut req = aws_smithy_runtime_api::http::Request::new(SdkBody::from(body));
        req.set_method("POST").map_err(|e| PostError(format!("method: {e}")))?;
        req.set_uri(url).map_err(|e| PostError(format!("not a URL: {e}")))?;
        for (k, v) in headers {
            req.headers_mut()
                .try_insert(k.to_string(), v.to_string())
                .map_err(|e| PostError(format!("header {k}: {e}")))?;
        }
        let timeout = self.timeout;
        let call = async {
            match tokio::time::timeout(timeout, self.connector.call(req)).await {
                Err(_) => Err(PostError(format!("no answer in {} s", timeout.as_secs()))),
                Ok(Err(e)) => Err(PostError(DisplayErrorContext(&e).to_string())),
                Ok(Ok(resp)) => Ok(resp.status().as_u16()),
            }
        };
        match &self.runtime {
            Runtime::Shared(h) => h.block_on(call),
            Runtime::Own(cell) => {
                if cell.get().is_none() {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .thread_name("http")
                        .enable_all()
                        .build()
                        .map_err(|e| PostError(format!("starting an async runtime: {e}")))?;
                    let _ = cell.set(rt);
                }
                match cell.get() {
                    Some(rt) => rt.block_on(call),
                    None => Err(PostError("no async runtime".into())),
                }
            }
        }
    }
}
