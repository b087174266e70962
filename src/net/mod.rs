//! How the agent reaches the network from inside a phone: which name servers answer its lookups
//! ([`dns`]) and which certificate authorities it trusts ([`roots`]), and the one HTTP client
//! built from both that every request of the agent goes through (object storage, STS).
//!
//! A static musl binary on Android has neither `/etc/resolv.conf` nor `/etc/ssl`, so nothing here
//! leans on libc or the host: the same rules run on the phone and on a test machine. The
//! settings are the process's (`--dns`/`CPBACKUP_DNS`, the phone root's CA store), installed once
//! by `main` before any client is built; a library user that installs nothing gets
//! [`Network::from_env`]. Never spawns processes and never reads Android properties
//! (`net.dns1` is gone since Android 8).

pub mod dns;
pub mod roots;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

use aws_smithy_runtime_api::client::http::SharedHttpClient;

pub use dns::Resolver;
pub use roots::Roots;

/// Name servers from the environment, as `--dns` takes them (`1.1.1.1,8.8.8.8:53`).
pub const DNS_ENV: &str = "CPBACKUP_DNS";

/// The agent's network settings.
#[derive(Debug, Clone)]
pub struct Network {
    pub resolver: Resolver,
    pub roots: Roots,
}

static INSTALLED: OnceLock<Network> = OnceLock::new();

impl Network {
    /// `dns` (from `--dns`; empty: `CPBACKUP_DNS`, then `/etc/resolv.conf`, then public
    /// resolvers) and the CA roots of the phone whose `/` is `root`.
    pub fn new(dns: Vec<SocketAddr>, root: &Path) -> Network {
        let roots = Roots::load(root);
        if !roots.skipped.is_empty() {
            tracing::warn!("{}: skipped {} files that are not CA certificates", roots.source, roots.skipped.len());
        }
        Network { resolver: Resolver::from_system(dns), roots }
    }

    /// `CPBACKUP_DNS` (ignored with a warning when it does not parse) and the roots of `/`.
    pub fn from_env() -> Network {
        Network::new(
            env_servers().unwrap_or_else(|e| {
                tracing::warn!("{DNS_ENV}: {e}; ignored");
                Vec::new()
            }),
            Path::new("/"),
        )
    }

    /// Make these the settings of every client built from now on. The first call wins (a
    /// second is a bug in the caller and returns false).
    pub fn install(self) -> bool {
        tracing::debug!(
            "network: DNS {:?} ({}), {} CA roots from {}",
            self.resolver.servers(),
            self.resolver.source(),
            self.roots.certs.len(),
            self.roots.source
        );
        INSTALLED.set(self).is_ok()
    }

    /// The installed settings, or [`Network::from_env`] when none were.
    pub fn current() -> &'static Network {
        INSTALLED.get_or_init(Network::from_env)
    }

    /// An HTTP(S) client that resolves with [`Network::resolver`] and trusts exactly
    /// [`Network::roots`]: hyper with rustls on ring (aws-lc-sys fails to link for Android arm64
    /// in reports, and ring is smaller).
    pub fn http_client(&self) -> SharedHttpClient {
        use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
        let mut trust = TrustStore::empty().with_native_roots(false);
        for pem in self.roots.pem() {
            trust.add_pem_certificate(pem);
        }
        let ctx = TlsContext::builder().with_trust_store(trust).build().expect("a TLS context from checked roots");
        aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .tls_context(ctx)
            .build_with_resolver(self.resolver.clone())
    }
}

impl Network {
    /// The same roots as a rustls client configuration (ring), for HTTP clients other than the
    /// object store's (the daemon's callbacks: `ureq::AgentBuilder::tls_config`).
    pub fn rustls_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(self.roots.certs.iter().cloned());
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(store)
            .with_no_client_auth();
        std::sync::Arc::new(config)
    }
}

/// `CPBACKUP_DNS` parsed; empty when unset.
pub fn env_servers() -> Result<Vec<SocketAddr>, dns::BadServer> {
    match std::env::var(DNS_ENV) {
        Ok(v) => dns::parse_servers(&v),
        Err(_) => Ok(Vec::new()),
    }
}

/// A plain-words hint for a failed connection, added to the store's error text: TLS and DNS
/// failures on a phone are configuration, and the raw chain does not say which knob to turn.
pub fn hint(error_text: &str) -> Option<&'static str> {
    if error_text.contains("invalid peer certificate") || error_text.contains("UnknownIssuer") {
        Some("the server's certificate is not signed by a trusted CA: the agent trusts the phone's cacerts (/apex/com.android.conscrypt/cacerts, /system/etc/security/cacerts under --root), else bundled Mozilla roots")
    } else if error_text.contains("cannot resolve") {
        Some("DNS failed: give name servers with --dns or CPBACKUP_DNS")
    } else {
        None
    }
}
