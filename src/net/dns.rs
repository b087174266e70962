//! Name resolution for a static binary on a phone: which resolver answers (the rules below), and
//! the lookup the HTTP client connects through. The DNS protocol itself is `hickory-resolver`'s
//! (A and AAAA over UDP, TCP when an answer is truncated, the hosts file first); netd's socket
//! protocol is [`super::netd`]'s. Never falls back to libc: musl's resolver on Android asks
//! 127.0.0.1 (there is no `/etc/resolv.conf`) and fails; never reads Android properties
//! (`net.dns1` is gone since Android 8).
//!
//! The order, decided once at start ([`Resolver::choose`]):
//! 1. `--dns` / `CPBACKUP_DNS`: exactly those servers;
//! 2. netd's `dev/socket/dnsproxyd` under the phone's root, when it is a socket: the phone's own
//!    resolver, as its apps use it (the network's servers, a VPC's private zones, Private DNS);
//! 3. the `nameserver` lines of `/etc/resolv.conf` (a test machine, a container);
//! 4. [`PUBLIC`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use hickory_resolver::config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::netd;

/// Public resolvers used when nothing else is known: the two big ones in mainland China first
/// (AliDNS, DNSPod: most cloud phones run there, and the others may be unreachable), then
/// Cloudflare and Google. All are asked at once, so order only breaks ties.
pub const PUBLIC: &[&str] = &["223.5.5.5", "119.29.29.29", "1.1.1.1", "8.8.8.8"];

/// How long one lookup may take, and how long one query waits before it is sent again (one
/// lost datagram costs this much, not the whole lookup).
const TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPT: Duration = Duration::from_secs(2);

/// Where the resolver came from: `cpbackup version` and the debug log say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--dns` or `CPBACKUP_DNS`.
    Configured,
    /// netd's `dnsproxyd` socket under the phone's root.
    Netd,
    /// The `nameserver` lines of `/etc/resolv.conf`.
    ResolvConf,
    /// [`PUBLIC`]: no configuration, no netd and no (usable) `/etc/resolv.conf`.
    Public,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Configured => "--dns / CPBACKUP_DNS",
            Source::Netd => "netd, as the phone's apps resolve",
            Source::ResolvConf => "/etc/resolv.conf",
            Source::Public => "public fallback",
        })
    }
}

/// A name server list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad DNS server {0:?}: want an IP address, IP:PORT or [IPv6]:PORT")]
pub struct BadServer(pub String);

/// Parse `1.1.1.1,8.8.8.8:53 [::1]:5353` (commas or spaces): addresses with port 53 unless given.
pub fn parse_servers(s: &str) -> Result<Vec<SocketAddr>, BadServer> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            if let Ok(ip) = IpAddr::from_str(t) {
                Ok(SocketAddr::new(ip, 53))
            } else {
                SocketAddr::from_str(t).map_err(|_| BadServer(t.to_string()))
            }
        })
        .collect()
}

/// The `nameserver` lines of a resolv.conf text (scoped IPv6 `fe80::1%eth0` are skipped: they
/// need an interface index that a string cannot carry portably).
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| IpAddr::from_str(a).ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Who answers the lookups.
#[derive(Debug)]
enum Via {
    /// netd's socket (the path as seen from the agent, under `--root`).
    Netd(PathBuf),
    /// These name servers, through hickory.
    Servers(Vec<SocketAddr>),
}

/// The resolver the HTTP client connects through.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    via: Via,
    source: Source,
    timeout: Duration,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver").field("via", &self.inner.via).field("source", &self.inner.source).finish()
    }
}

impl fmt::Display for Resolver {
    /// `10.0.0.2:53 (/etc/resolv.conf)`, `netd at /dev/socket/dnsproxyd (netd, as …)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.via {
            Via::Netd(p) => write!(f, "netd at {}", p.display())?,
            Via::Servers(s) => {
                let s: Vec<String> = s.iter().map(|a| a.to_string()).collect();
                write!(f, "{}", if s.is_empty() { "no servers".to_string() } else { s.join(", ") })?
            }
        }
        write!(f, " ({})", self.inner.source)
    }
}

impl Resolver {
    /// A resolver asking exactly `servers`.
    pub fn servers(servers: Vec<SocketAddr>, source: Source) -> Resolver {
        Resolver::with(Via::Servers(servers), source)
    }

    /// A resolver asking netd at `socket`.
    pub fn netd(socket: PathBuf) -> Resolver {
        Resolver::with(Via::Netd(socket), Source::Netd)
    }

    fn with(via: Via, source: Source) -> Resolver {
        Resolver { inner: Arc::new(Inner { via, source, timeout: TIMEOUT }) }
    }

    /// The resolver by the rules of this module: `configured` when not empty, else netd's socket
    /// under `root` (the phone's `/`) when it is one, else the nameservers of the agent's own
    /// `/etc/resolv.conf`, else [`PUBLIC`].
    pub fn choose(configured: Vec<SocketAddr>, root: &Path) -> Resolver {
        if !configured.is_empty() {
            return Resolver::servers(configured, Source::Configured);
        }
        let socket = root.join(netd::SOCKET);
        if std::fs::metadata(&socket).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
            return Resolver::netd(socket);
        }
        let conf = resolv_conf_servers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
        if !conf.is_empty() {
            return Resolver::servers(conf, Source::ResolvConf);
        }
        let public = PUBLIC.iter().filter_map(|ip| ip.parse().ok()).map(|ip| SocketAddr::new(ip, 53)).collect();
        Resolver::servers(public, Source::Public)
    }

    /// The same resolver with another overall timeout per lookup (tests of dead servers).
    pub fn with_timeout(self, timeout: Duration) -> Resolver {
        let via = match &self.inner.via {
            Via::Netd(p) => Via::Netd(p.clone()),
            Via::Servers(s) => Via::Servers(s.clone()),
        };
        Resolver { inner: Arc::new(Inner { via, source: self.inner.source, timeout }) }
    }

    pub fn source(&self) -> Source {
        self.inner.source
    }

    /// The name servers asked (empty when netd answers).
    pub fn server_list(&self) -> &[SocketAddr] {
        match &self.inner.via {
            Via::Servers(s) => s,
            Via::Netd(_) => &[],
        }
    }

    /// The addresses of `name`. IP literals and `localhost` need no server. Through name servers,
    /// IPv4 comes first (cloud phones' networks are mostly IPv4-only; the HTTP client tries the
    /// others when a connection fails); through netd, the order is netd's (RFC 6724, as the
    /// phone's apps get it).
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        let name = name.trim_end_matches('.');
        if let Ok(ip) = IpAddr::from_str(name.trim_start_matches('[').trim_end_matches(']')) {
            return Ok(vec![ip]);
        }
        if name.eq_ignore_ascii_case("localhost") {
            return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        }
        if name.is_empty() || name.len() > 253 || name.split('.').any(|l| l.is_empty() || l.len() > 63) {
            return Err(self.error(name, "not a valid host name".into()));
        }
        let timeout = self.inner.timeout;
        let found = match &self.inner.via {
            Via::Netd(socket) => {
                let (socket, owned) = (socket.clone(), name.to_string());
                let asked = tokio::task::spawn_blocking(move || netd::lookup(&socket, &owned, timeout));
                match tokio::time::timeout(timeout, asked).await {
                    Err(_) => Err(format!("netd gave no answer in {} s", timeout.as_secs_f32())),
                    Ok(Err(e)) => Err(format!("the lookup failed: {e}")),
                    Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                }
            }
            Via::Servers(servers) if servers.is_empty() => Err("no DNS servers configured".into()),
            Via::Servers(servers) => match tokio::time::timeout(timeout, ask(servers, name, timeout)).await {
                Err(_) => Err(format!("no answer in {} s", timeout.as_secs_f32())),
                Ok(r) => r,
            },
        };
        match found {
            Ok(ips) if !ips.is_empty() => Ok(ips),
            Ok(_) => Err(self.error(name, "no such host".into())),
            Err(why) => Err(self.error(name, why)),
        }
    }

    fn error(&self, name: &str, why: String) -> LookupError {
        LookupError { name: name.to_string(), resolver: self.to_string(), why }
    }
}

/// One lookup through hickory, asking every server at once (a dead one costs nothing while
/// another answers). A resolver is built per lookup: it lives on the caller's runtime (the agent
/// runs several, one per store), and lookups are rare, one per new connection.
async fn ask(servers: &[SocketAddr], name: &str, timeout: Duration) -> Result<Vec<IpAddr>, String> {
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut udp = ConnectionConfig::udp();
            udp.port = s.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = s.port();
            NameServerConfig::new(s.ip(), true, vec![udp, tcp])
        })
        .collect();
    // No search domains: names are asked as given, fully qualified.
    let config = ResolverConfig::from_parts(None, vec![], name_servers);
    let mut builder = hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts = builder.options_mut();
    opts.timeout = ATTEMPT.min(timeout);
    opts.attempts = 2;
    opts.num_concurrent_reqs = servers.len();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.ndots = 0;
    opts.cache_size = 16;
    let resolver = builder.build().map_err(|e| e.to_string())?;
    match resolver.lookup_ip(format!("{name}.")).await {
        Ok(found) => {
            let mut ips: Vec<IpAddr> = found.iter().collect();
            ips.sort_by_key(|ip| ip.is_ipv6());
            ips.dedup();
            Ok(ips)
        }
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

impl ResolveDns for Resolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move {
            let r = self.lookup(name).await;
            match &r {
                Ok(ips) => tracing::debug!("dns: {name} -> {ips:?}"),
                Err(e) => tracing::debug!("dns: {e}"),
            }
            r.map_err(ResolveDnsError::new)
        })
    }
}

/// A lookup that found nothing, naming the resolver asked (the first thing to check on a phone).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve {name:?} ({why}; DNS: {resolver}; set servers with --dns or CPBACKUP_DNS)")]
pub struct LookupError {
    pub name: String,
    /// The resolver as [`Resolver`]'s `Display` shows it.
    pub resolver: String,
    pub why: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_with_and_without_ports() {
        let s = parse_servers("1.1.1.1, 8.8.8.8:5353 [::1]:54,2001:db8::1").unwrap();
        assert_eq!(
            s,
            vec![
                "1.1.1.1:53".parse().unwrap(),
                "8.8.8.8:5353".parse().unwrap(),
                "[::1]:54".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(parse_servers("dns.google"), Err(BadServer("dns.google".into())));
        assert!(parse_servers("").unwrap().is_empty());
    }

    #[test]
    fn resolv_conf_is_read() {
        let rc = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver ::1\noptions ndots:5\n";
        assert_eq!(resolv_conf_servers(rc), vec!["10.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
    }

    #[test]
    fn the_order_is_configured_then_netd_then_the_system() {
        let root = tempfile::tempdir().unwrap();
        let given: Vec<SocketAddr> = vec!["192.0.2.53:5353".parse().unwrap()];
        // No socket: /etc/resolv.conf or the public list, whichever this machine has.
        let r = Resolver::choose(vec![], root.path());
        assert!(matches!(r.source(), Source::ResolvConf | Source::Public), "{r}");
        // A plain file where the socket would be is not netd.
        std::fs::create_dir_all(root.path().join("dev/socket")).unwrap();
        std::fs::write(root.path().join(netd::SOCKET), b"").unwrap();
        assert_ne!(Resolver::choose(vec![], root.path()).source(), Source::Netd);
        std::fs::remove_file(root.path().join(netd::SOCKET)).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(root.path().join(netd::SOCKET)).unwrap();
        let r = Resolver::choose(vec![], root.path());
        assert_eq!(r.source(), Source::Netd);
        assert!(r.to_string().starts_with(&format!("netd at {}", root.path().join(netd::SOCKET).display())), "{r}");
        assert!(r.server_list().is_empty());
        // --dns wins over netd.
        let r = Resolver::choose(given.clone(), root.path());
        assert_eq!((r.source(), r.server_list()), (Source::Configured, &given[..]));
        assert_eq!(r.to_string(), "192.0.2.53:5353 (--dns / CPBACKUP_DNS)");
    }

    #[tokio::test]
    async fn literals_and_localhost_need_no_server() {
        let r = Resolver::servers(vec![], Source::Configured);
        assert_eq!(r.lookup("192.0.2.1").await.unwrap(), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.lookup("[::1]").await.unwrap(), vec!["::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.lookup("localhost").await.unwrap()[0], "127.0.0.1".parse::<IpAddr>().unwrap());
        let e = r.lookup("oss.example").await.unwrap_err();
        assert!(e.to_string().contains("no DNS servers"), "{e}");
        let e = r.lookup("bad..name").await.unwrap_err();
        assert!(e.to_string().contains("not a valid host name"), "{e}");
    }

    #[tokio::test]
    async fn a_dead_server_fails_within_the_timeout_and_names_itself() {
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let r = Resolver::servers(vec![addr], Source::Configured).with_timeout(Duration::from_millis(300));
        let t = std::time::Instant::now();
        let e = r.lookup("garage.test").await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(e.to_string().contains(&addr.to_string()) && e.to_string().contains("--dns"), "{e}");
    }

    #[tokio::test]
    async fn netd_answers_and_failures_reach_the_caller() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dnsproxyd");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() && b[0] != 0 {
                    req.push(b[0]);
                }
                let reply = if req.starts_with(b"getaddrinfo store.lan ") {
                    netd::tests::answer(&["10.9.8.7".parse().unwrap()], None)
                } else {
                    let mut m = b"401\0".to_vec();
                    m.extend_from_slice(&4u32.to_be_bytes());
                    m.extend_from_slice(&7i32.to_ne_bytes()); // EAI_NODATA
                    m
                };
                let _ = s.write_all(&reply);
            }
        });
        let r = Resolver::netd(path.clone());
        assert_eq!(r.lookup("store.lan").await.unwrap(), vec!["10.9.8.7".parse::<IpAddr>().unwrap()]);
        let e = r.lookup("nowhere.lan").await.unwrap_err().to_string();
        assert!(e.contains("cannot resolve \"nowhere.lan\" (no such host") && e.contains("netd at"), "{e}");
        drop(dir);
        let e = r.lookup("store.lan").await.unwrap_err().to_string();
        assert!(e.contains("cannot connect to netd"), "{e}");
    }
}
