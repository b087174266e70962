//! How the agent reaches the network from inside a phone: which resolver answers its lookups
//! ([`dns`], netd's socket protocol in [`netd`]), which certificate authorities it trusts
//! ([`roots`]), and the one HTTP stack built from both that every request of the agent goes
//! through: object storage, STS, the daemon's callbacks ([`http`]).
//!
//! A static musl binary on Android has neither `/etc/resolv.conf` nor `/etc/ssl`, so nothing here
//! leans on libc: the same rules run on the phone and on a test machine. The settings are the
//! process's (`--dns`/`CPBACKUP_DNS`, the phone root's netd socket and CA store), installed once
//! by `main` before any client is built; a library user that installs nothing gets
//! [`Network::from_env`]. Never spawns processes and never reads Android properties.

pub mod dns;
pub mod http;
pub mod netd;
pub mod roots;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

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
    /// `dns` (from `--dns` or `CPBACKUP_DNS`; empty: netd's socket under `root`, then
    /// `/etc/resolv.conf`, then public resolvers, see [`dns`]) and the CA roots of the phone
    /// whose `/` is `root`.
    pub fn new(dns: Vec<SocketAddr>, root: &Path) -> Network {
        let roots = Roots::load(root);
        if !roots.skipped.is_empty() {
            tracing::warn!("{}: skipped {} files that are not CA certificates", roots.source, roots.skipped.len());
        }
        Network { resolver: Resolver::choose(dns, root), roots }
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
        tracing::debug!("network: {}", self.describe().replace('\n', "; "));
        INSTALLED.set(self).is_ok()
    }

    /// The installed settings, or [`Network::from_env`] when none were.
    pub fn current() -> &'static Network {
        INSTALLED.get_or_init(Network::from_env)
    }

    /// Two lines for `cpbackup version`: the resolver and where it came from, the CA roots.
    pub fn describe(&self) -> String {
        format!("dns: {}\nca roots: {} from {}", self.resolver, self.roots.certs.len(), self.roots.source)
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
