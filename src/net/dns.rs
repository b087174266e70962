//! Name resolution for a static binary on a phone: a small stub resolver that asks the name
//! servers it is given (A and AAAA over UDP, TCP when an answer is truncated) after looking in
//! the hosts file. It never reads Android's properties or talks to netd, and it never falls back
//! to libc: musl's resolver on Android asks 127.0.0.1 (there is no `/etc/resolv.conf`) and fails.
//!
//! Like musl, it sends each query to every server at once and takes the first answer that is an
//! answer (NOERROR or NXDOMAIN); SERVFAIL and REFUSED wait for another server. Queries are resent
//! every second until the timeout, so one lost datagram costs a second, not the whole lookup.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Public resolvers used when nothing else is known: the two big ones in mainland China first
/// (AliDNS, DNSPod: most cloud phones run there, and the others may be unreachable), then
/// Cloudflare and Google. All are asked at once, so order only breaks ties.
pub const PUBLIC: &[&str] = &["223.5.5.5", "119.29.29.29", "1.1.1.1", "8.8.8.8"];

/// How long one lookup may take, and how often an unanswered query is sent again.
const TIMEOUT: Duration = Duration::from_secs(5);
const RESEND: Duration = Duration::from_secs(1);

/// Where the name servers came from, for logs and `cpbackup version --net`-style reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--dns` or `CPBACKUP_DNS`.
    Configured,
    /// The `nameserver` lines of `/etc/resolv.conf`.
    ResolvConf,
    /// [`PUBLIC`]: no configuration and no (usable) `/etc/resolv.conf`, as on Android.
    Public,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Configured => "configured",
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

/// The addresses a hosts-file text gives `name` (case-insensitive, aliases included).
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.trim_end_matches('.');
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let ip = IpAddr::from_str(w.next()?).ok()?;
            w.any(|h| h.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

/// The resolver the HTTP client connects through.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    servers: Vec<SocketAddr>,
    source: Source,
    /// Read once at start: `/etc/hosts` (on Android a link to `/system/etc/hosts`).
    hosts: String,
    timeout: Duration,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver").field("servers", &self.inner.servers).field("source", &self.inner.source).finish()
    }
}

impl Resolver {
    /// A resolver asking exactly `servers` (and the hosts text first).
    pub fn new(servers: Vec<SocketAddr>, source: Source, hosts: String) -> Resolver {
        Resolver { inner: Arc::new(Inner { servers, source, hosts, timeout: TIMEOUT }) }
    }

    /// The servers to use, in the order of the rules: `configured` when not empty, else the
    /// nameservers of `/etc/resolv.conf`, else [`PUBLIC`]. Reads `/etc/resolv.conf` and
    /// `/etc/hosts` of the machine the agent runs on (not of `--root`: the network is the
    /// process's, not the data tree's).
    pub fn from_system(configured: Vec<SocketAddr>) -> Resolver {
        let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
        let (servers, source) = if !configured.is_empty() {
            (configured, Source::Configured)
        } else {
            match resolv_conf_servers(&read("/etc/resolv.conf")) {
                s if !s.is_empty() => (s, Source::ResolvConf),
                _ => {
                    (PUBLIC.iter().map(|ip| SocketAddr::new(ip.parse().expect("valid"), 53)).collect(), Source::Public)
                }
            }
        };
        Resolver::new(servers, source, read("/etc/hosts"))
    }

    /// The same resolver with another overall timeout per lookup (tests of dead servers).
    pub fn with_timeout(self, timeout: Duration) -> Resolver {
        let i = &self.inner;
        Resolver {
            inner: Arc::new(Inner { servers: i.servers.clone(), source: i.source, hosts: i.hosts.clone(), timeout }),
        }
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.inner.servers
    }

    pub fn source(&self) -> Source {
        self.inner.source
    }

    /// The addresses of `name`: IPv4 first (cloud phones' networks are mostly IPv4-only; the
    /// HTTP client tries the others when a connection fails).
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        let name = name.trim_end_matches('.');
        if let Ok(ip) = IpAddr::from_str(name.trim_start_matches('[').trim_end_matches(']')) {
            return Ok(vec![ip]);
        }
        if name.eq_ignore_ascii_case("localhost") {
            return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        }
        let from_hosts = hosts_lookup(&self.inner.hosts, name);
        if !from_hosts.is_empty() {
            return Ok(from_hosts);
        }
        if name.is_empty() || name.len() > 253 || name.split('.').any(|l| l.is_empty() || l.len() > 63) {
            return Err(LookupError { name: name.to_string(), servers: vec![], why: "not a valid host name".into() });
        }
        if self.inner.servers.is_empty() {
            return Err(self.error(name, "no DNS servers configured"));
        }
        let (a, aaaa) = tokio::join!(self.query(name, QTYPE_A), self.query(name, QTYPE_AAAA));
        match (a, aaaa) {
            (Ok(mut v4), Ok(v6)) => {
                v4.extend(v6);
                if v4.is_empty() {
                    Err(self.error(name, "no such host"))
                } else {
                    Ok(v4)
                }
            }
            // One family answering is enough (some servers time out on AAAA).
            (Ok(v), Err(_)) | (Err(_), Ok(v)) if !v.is_empty() => Ok(v),
            (Err(e), _) | (_, Err(e)) => Err(self.error(name, &e)),
        }
    }

    /// `host:port` (or `[v6]:port`) to socket addresses, blocking: for synchronous HTTP clients
    /// (`ureq::AgentBuilder::resolver(move |n: &str| r.resolve_blocking(n))`). Runs the lookup
    /// on a thread of its own, so it may be called from inside a tokio runtime too.
    pub fn resolve_blocking(&self, netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{netloc:?} is not host:port"));
        let (host, port) = netloc.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let this = self.clone();
        let host = host.to_string();
        let ips = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(this.lookup(&host)).map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))
        })
        .join()
        .map_err(|_| std::io::Error::other("DNS lookup thread failed"))??;
        Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }

    fn error(&self, name: &str, why: &str) -> LookupError {
        LookupError { name: name.to_string(), servers: self.inner.servers.clone(), why: why.to_string() }
    }

    /// One question to every server at once; the first real answer wins.
    async fn query(&self, name: &str, qtype: u16) -> Result<Vec<IpAddr>, String> {
        let servers = self.inner.servers.clone();
        let timeout = self.inner.timeout;
        let mut set = tokio::task::JoinSet::new();
        for server in servers {
            let name = name.to_string();
            set.spawn(async move { ask(server, &name, qtype, timeout).await.map_err(|e| format!("{server}: {e}")) });
        }
        let mut errors = Vec::new();
        while let Some(done) = set.join_next().await {
            match done {
                Ok(Ok(Answer::Addresses(v))) => return Ok(v),
                Ok(Ok(Answer::NoSuchName)) => return Ok(Vec::new()),
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(errors.join("; "))
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

/// A lookup that found nothing, naming the servers asked (the first thing to check on a phone).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve {name:?} ({why}; DNS servers {servers:?}: set them with --dns or CPBACKUP_DNS)")]
pub struct LookupError {
    pub name: String,
    pub servers: Vec<SocketAddr>,
    pub why: String,
}

// ---------------------------------------------------------------------------------------------
// The wire format (RFC 1035): just enough for A and AAAA.

pub const QTYPE_A: u16 = 1;
pub const QTYPE_AAAA: u16 = 28;

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Addresses(Vec<IpAddr>),
    NoSuchName,
}

/// Ask one server: UDP, resent every [`RESEND`], TCP when the answer is truncated.
async fn ask(server: SocketAddr, name: &str, qtype: u16, timeout: Duration) -> Result<Answer, String> {
    let id: u16 = rand::random();
    let q = encode_query(id, name, qtype);
    let attempt = async {
        let bind: SocketAddr =
            if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
        // Connected: the kernel drops datagrams from anyone but the server.
        sock.connect(server).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1232];
        loop {
            sock.send(&q).await.map_err(|e| e.to_string())?;
            let deadline = tokio::time::Instant::now() + RESEND;
            loop {
                match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                    Err(_) => break, // resend
                    // ICMP port unreachable: nothing listens there.
                    Ok(Err(e)) => return Err(e.to_string()),
                    Ok(Ok(n)) => match decode_response(&buf[..n], id, name, qtype) {
                        Ok(Decoded::Truncated) => return ask_tcp(server, &q, id, name, qtype).await,
                        Ok(Decoded::Answer(a)) => return Ok(a),
                        Ok(Decoded::Refused(rcode)) => return Err(format!("answered {}", rcode_name(rcode))),
                        // Not ours (stale id, spoofed): keep listening.
                        Err(_) => continue,
                    },
                }
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer in {} s", timeout.as_secs_f32())),
    }
}

async fn ask_tcp(server: SocketAddr, q: &[u8], id: u16, name: &str, qtype: u16) -> Result<Answer, String> {
    let mut s = TcpStream::connect(server).await.map_err(|e| format!("tcp: {e}"))?;
    let mut msg = (q.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(q);
    s.write_all(&msg).await.map_err(|e| format!("tcp: {e}"))?;
    let len = s.read_u16().await.map_err(|e| format!("tcp: {e}"))? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.map_err(|e| format!("tcp: {e}"))?;
    match decode_response(&buf, id, name, qtype)? {
        Decoded::Answer(a) => Ok(a),
        Decoded::Truncated => Err("tcp answer truncated".into()),
        Decoded::Refused(rcode) => Err(format!("answered {}", rcode_name(rcode))),
    }
}

fn rcode_name(rcode: u8) -> String {
    match rcode {
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("rcode {n}"),
    }
}

/// A standard query with recursion desired.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(18 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00]); // RD
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // IN
    m
}

#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    Answer(Answer),
    Truncated,
    Refused(u8),
}

/// Check a response against its query (id, QR, the question) and take the addresses of the
/// asked type from the answer section, whatever owner name (CNAME chains end in them).
fn decode_response(m: &[u8], id: u16, name: &str, qtype: u16) -> Result<Decoded, String> {
    let short = || "short message".to_string();
    if m.len() < 12 {
        return Err(short());
    }
    if u16::from_be_bytes([m[0], m[1]]) != id || m[2] & 0x80 == 0 {
        return Err("not the answer to this query".into());
    }
    let qd = u16::from_be_bytes([m[4], m[5]]);
    let an = u16::from_be_bytes([m[6], m[7]]);
    let mut at = 12;
    if qd != 1 {
        return Err("not the answer to this query".into());
    }
    let (qname, next) = read_name(m, at)?;
    at = next;
    if at + 4 > m.len() {
        return Err(short());
    }
    let qt = u16::from_be_bytes([m[at], m[at + 1]]);
    if !qname.eq_ignore_ascii_case(name.trim_end_matches('.')) || qt != qtype {
        return Err("not the answer to this query".into());
    }
    at += 4;
    if m[2] & 0x02 != 0 {
        return Ok(Decoded::Truncated);
    }
    match m[3] & 0x0f {
        0 => {}
        3 => return Ok(Decoded::Answer(Answer::NoSuchName)),
        r => return Ok(Decoded::Refused(r)),
    }
    let mut ips = Vec::new();
    for _ in 0..an {
        let (_, next) = read_name(m, at)?;
        at = next;
        if at + 10 > m.len() {
            return Err(short());
        }
        let rtype = u16::from_be_bytes([m[at], m[at + 1]]);
        let class = u16::from_be_bytes([m[at + 2], m[at + 3]]);
        let len = u16::from_be_bytes([m[at + 8], m[at + 9]]) as usize;
        at += 10;
        let data = m.get(at..at + len).ok_or_else(short)?;
        at += len;
        match (rtype, class, len) {
            (QTYPE_A, 1, 4) if qtype == QTYPE_A => ips.push(IpAddr::from(<[u8; 4]>::try_from(data).expect("4 bytes"))),
            (QTYPE_AAAA, 1, 16) if qtype == QTYPE_AAAA => {
                ips.push(IpAddr::from(<[u8; 16]>::try_from(data).expect("16 bytes")))
            }
            _ => {}
        }
    }
    Ok(Decoded::Answer(Answer::Addresses(ips)))
}

/// A (possibly compressed) name at `at`: the dotted name and where the record goes on.
fn read_name(m: &[u8], mut at: usize) -> Result<(String, usize), String> {
    let mut name = String::new();
    let mut end = None;
    // Each pointer must go backwards, so a loop cannot last; the count is a second guard.
    for _ in 0..128 {
        let len = *m.get(at).ok_or("name runs off the message")? as usize;
        match len {
            0 => {
                return Ok((name, end.unwrap_or(at + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let lo = *m.get(at + 1).ok_or("name runs off the message")? as usize;
                let to = ((l & 0x3f) << 8) | lo;
                if to >= at {
                    return Err("name pointer goes forward".into());
                }
                end.get_or_insert(at + 2);
                at = to;
            }
            l if l < 64 => {
                let label = m.get(at + 1..at + 1 + l).ok_or("name runs off the message")?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label));
                at += 1 + l;
            }
            _ => return Err("bad label".into()),
        }
    }
    Err("name too long".into())
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
    fn resolv_conf_and_hosts_are_read() {
        let rc = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver ::1\noptions ndots:5\n";
        assert_eq!(resolv_conf_servers(rc), vec!["10.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
        let hosts = "127.0.0.1 localhost\n::1 ip6-localhost\n10.1.2.3 oss.internal OSS.alias # the store\n";
        assert_eq!(hosts_lookup(hosts, "oss.alias."), vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert!(hosts_lookup(hosts, "store").is_empty());
    }

    /// A response built by hand: question echoed, a CNAME then two A records (compressed names).
    fn response(id: u16, name: &str, rcode: u8, flags: u8) -> Vec<u8> {
        let q = encode_query(id, name, QTYPE_A);
        let mut m = q.clone();
        m[2] = 0x81 | flags;
        m[3] = 0x80 | rcode;
        m[7] = 3; // answers
                  // CNAME: owner = pointer to the question name (offset 12), target "x" + pointer.
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'x', 0xc0, 12]);
        let cname_at = q.len() + 12;
        for ip in [[10, 0, 0, 1], [10, 0, 0, 2]] {
            m.extend_from_slice(&[0xc0 | (cname_at >> 8) as u8, cname_at as u8, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            m.extend_from_slice(&ip);
        }
        m
    }

    #[test]
    fn answers_are_checked_and_decoded() {
        let r = response(7, "garage.test", 0, 0);
        let want = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        assert_eq!(decode_response(&r, 7, "garage.test", QTYPE_A), Ok(Decoded::Answer(Answer::Addresses(want))));
        assert_eq!(decode_response(&r, 7, "GARAGE.test.", QTYPE_A).is_ok(), true);
        assert!(decode_response(&r, 8, "garage.test", QTYPE_A).is_err(), "other id");
        assert!(decode_response(&r, 7, "other.test", QTYPE_A).is_err(), "other question");
        assert!(decode_response(&r, 7, "garage.test", QTYPE_AAAA).is_err(), "other type");
        assert!(decode_response(&r[..r.len() - 2], 7, "garage.test", QTYPE_A).is_err(), "cut short");
        let nx = response(7, "garage.test", 3, 0);
        assert_eq!(decode_response(&nx, 7, "garage.test", QTYPE_A), Ok(Decoded::Answer(Answer::NoSuchName)));
        assert_eq!(
            decode_response(&response(7, "garage.test", 2, 0), 7, "garage.test", QTYPE_A),
            Ok(Decoded::Refused(2))
        );
        assert_eq!(
            decode_response(&response(7, "garage.test", 0, 0x02), 7, "garage.test", QTYPE_A),
            Ok(Decoded::Truncated)
        );
        // A pointer loop ends in an error, not a hang.
        let mut lp = encode_query(1, "a", QTYPE_A);
        lp[12] = 0xc0;
        lp[13] = 12;
        assert!(read_name(&lp, 12).is_err());
    }

    #[tokio::test]
    async fn literals_localhost_and_hosts_need_no_server() {
        let r = Resolver::new(vec![], Source::Configured, "10.9.8.7 store.lan\n".into());
        assert_eq!(r.lookup("192.0.2.1").await.unwrap(), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.lookup("[::1]").await.unwrap(), vec!["::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.lookup("localhost").await.unwrap()[0], "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.lookup("store.lan").await.unwrap(), vec!["10.9.8.7".parse::<IpAddr>().unwrap()]);
        let e = r.lookup("oss.example").await.unwrap_err();
        assert!(e.to_string().contains("no DNS servers"), "{e}");
    }

    #[test]
    fn blocking_lookups_work_inside_and_outside_a_runtime() {
        let r = Resolver::new(vec![], Source::Configured, "10.9.8.7 cb.lan\n".into());
        let want = vec!["10.9.8.7:443".parse::<SocketAddr>().unwrap()];
        assert_eq!(r.resolve_blocking("cb.lan:443").unwrap(), want);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(async { r.resolve_blocking("cb.lan:443") }).unwrap(), want);
        assert!(r.resolve_blocking("cb.lan").is_err());
    }

    #[tokio::test]
    async fn a_dead_server_fails_within_the_timeout_and_names_itself() {
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let r = Resolver::new(vec![addr], Source::Configured, String::new()).with_timeout(Duration::from_millis(300));
        let t = std::time::Instant::now();
        let e = r.lookup("garage.test").await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(e.to_string().contains(&addr.to_string()) && e.to_string().contains("--dns"), "{e}");
    }
}
