//! Android's own resolver, asked the way the phone's apps ask it: bionic's `getaddrinfo` sends
//! one text command to netd's `dnsproxyd` socket and reads a binary answer back (AOSP
//! `bionic/libc/dns/net/getaddrinfo.c`, `android_getaddrinfo_proxy`; netd's `DnsProxyListener`,
//! `GetAddrInfoHandler`). netd then applies the phone's DNS settings: the network's servers
//! (DHCP, a VPC's private resolver), Private DNS, `/system/etc/hosts`, DNS64.
//!
//! This module owns that protocol and nothing else: it never falls back to other servers and never
//! reads more than the answer's fields allow (every length is checked before anything is read or
//! allocated; the answer comes from another process and is parsed as hostile input,
//! `fuzz/fuzz_targets/netd_answer.rs`).
//!
//! The exchange, in FrameworkListener's framing:
//!
//! ```text
//! request:  "getaddrinfo NAME ^ FLAGS FAMILY SOCKTYPE PROTOCOL NETID\0"   (^ = no service)
//! success:  "222\0", then per address: BE32 1, BE32 flags, family, socktype, protocol,
//!           BE32 addrlen + sockaddr, BE32 namelen + canonical name with its NUL; then BE32 0
//! failure:  "401\0", BE32 4, the EAI_* code (native byte order)
//! refused:  "5xx text\0" (a malformed command)
//! ```
//!
//! netd keeps the connection open after answering, so the answer is read field by field, never
//! to the end of the stream.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// netd's socket, relative to the phone's `/`.
pub const SOCKET: &str = "dev/socket/dnsproxyd";

/// `DnsProxyQueryResult` and `DnsProxyOperationFailed` (netd's `ResponseCode.h`).
const QUERY_RESULT: &[u8; 4] = b"222\0";
const OPERATION_FAILED: &[u8; 4] = b"401\0";

/// bionic's `AI_ADDRCONFIG`: addresses of a family only when the phone has a route for it, as
/// Java's `InetAddress` asks. `SOCK_STREAM`: one entry per address instead of one per socket type.
const AI_ADDRCONFIG: i32 = 0x0400;
const SOCK_STREAM: i32 = 1;
/// `AF_INET` / `AF_INET6` on Linux (the `ai_family` field, sent big-endian).
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;

/// Bounds on what a sane netd sends: `sizeof(struct sockaddr_storage)`, `NI_MAXHOST`, and far
/// more addresses than a name ever has (bionic's reader has no bound on the count).
const MAX_ADDR_LEN: u32 = 128;
const MAX_NAME_LEN: u32 = 1025;
const MAX_ENTRIES: usize = 256;
/// The text of a refusal (`500 …`, `501 …`) is read up to this many bytes.
const MAX_MESSAGE: usize = 1024;

/// Why netd gave no address.
#[derive(Debug, thiserror::Error)]
pub enum NetdError {
    #[error("cannot connect to netd at {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("talking to netd: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0:?} cannot be sent to netd (spaces, quotes, ^ or control characters)")]
    BadName(String),
    /// `EAI_NODATA` / `EAI_NONAME`: netd's servers say the name does not exist.
    #[error("no such host")]
    NoSuchHost,
    /// Any other `EAI_*` code.
    #[error("netd answered {}", eai_name(*.0))]
    Failed(i32),
    #[error("netd refused the request: {0}")]
    Refused(String),
    #[error("netd's answer does not parse: {0}")]
    Malformed(&'static str),
}

/// The command bionic would send for `getaddrinfo(name, NULL, {AI_ADDRCONFIG, AF_UNSPEC,
/// SOCK_STREAM}, …)` on the default network (`NETID_UNSET`), NUL-terminated.
pub fn request(name: &str) -> Result<Vec<u8>, NetdError> {
    // bionic refuses the same characters: FrameworkListener splits on spaces and treats quotes
    // and ^ specially.
    if name.is_empty() || name.bytes().any(|b| b <= b' ' || b >= 0x7f || matches!(b, b'^' | b'\'' | b'"' | b'\\')) {
        return Err(NetdError::BadName(name.to_string()));
    }
    let mut m = format!("getaddrinfo {name} ^ {AI_ADDRCONFIG} 0 {SOCK_STREAM} 0 0").into_bytes();
    m.push(0);
    Ok(m)
}

/// Read one answer: the addresses, in netd's order (RFC 6724, as the phone's apps get them),
/// each once.
pub fn read_answer(r: &mut impl Read) -> Result<Vec<IpAddr>, NetdError> {
    let mut code = [0u8; 4];
    r.read_exact(&mut code)?;
    if &code == OPERATION_FAILED {
        let len = read_be32(r)?;
        if len != 4 {
            return Err(NetdError::Malformed("a failure's code is not 4 bytes"));
        }
        let mut eai = [0u8; 4];
        r.read_exact(&mut eai)?;
        return Err(match i32::from_ne_bytes(eai) {
            EAI_NODATA | EAI_NONAME => NetdError::NoSuchHost,
            n => NetdError::Failed(n),
        });
    }
    if &code != QUERY_RESULT {
        return Err(refusal(&code, r));
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for _ in 0..=MAX_ENTRIES {
        if read_be32(r)? == 0 {
            return Ok(ips);
        }
        let _flags = read_be32(r)?;
        let family = read_be32(r)? as i32;
        let _socktype = read_be32(r)?;
        let _protocol = read_be32(r)?;
        let addr_len = read_be32(r)?;
        if addr_len > MAX_ADDR_LEN {
            return Err(NetdError::Malformed("an address longer than a sockaddr_storage"));
        }
        let mut addr = vec![0u8; addr_len as usize];
        r.read_exact(&mut addr)?;
        let name_len = read_be32(r)?;
        if name_len > MAX_NAME_LEN {
            return Err(NetdError::Malformed("a canonical name longer than NI_MAXHOST"));
        }
        let mut name = vec![0u8; name_len as usize];
        r.read_exact(&mut name)?;
        if name.last().is_some_and(|&b| b != 0) {
            return Err(NetdError::Malformed("a canonical name without its NUL"));
        }
        if let Some(ip) = sockaddr_ip(family, &addr)? {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    Err(NetdError::Malformed("more addresses than any name has"))
}

/// Ask netd at `socket` for the addresses of `name`, waiting at most `timeout` for each read.
pub fn lookup(socket: &Path, name: &str, timeout: Duration) -> Result<Vec<IpAddr>, NetdError> {
    let req = request(name)?;
    let mut s = UnixStream::connect(socket)
        .map_err(|source| NetdError::Connect { path: socket.display().to_string(), source })?;
    s.set_write_timeout(Some(timeout))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(&req)?;
    read_answer(&mut std::io::BufReader::new(&mut s))
}

/// The address of a `sockaddr_in` (family, port, 4 bytes) or `sockaddr_in6` (family, port,
/// flow info, 16 bytes, scope); other families are skipped.
fn sockaddr_ip(family: i32, addr: &[u8]) -> Result<Option<IpAddr>, NetdError> {
    Ok(match family {
        AF_INET => {
            let b: [u8; 4] =
                addr.get(4..8).and_then(|s| s.try_into().ok()).ok_or(NetdError::Malformed("a short sockaddr_in"))?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        AF_INET6 => {
            let b: [u8; 16] =
                addr.get(8..24).and_then(|s| s.try_into().ok()).ok_or(NetdError::Malformed("a short sockaddr_in6"))?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    })
}

fn read_be32(r: &mut impl Read) -> Result<u32, NetdError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// A `5xx text\0` answer: the code's 4 bytes are already read; the text goes on to its NUL.
fn refusal(code: &[u8; 4], r: &mut impl Read) -> NetdError {
    if !(code[..3].iter().all(u8::is_ascii_digit) && (code[3] == b' ' || code[3] == 0)) {
        return NetdError::Malformed("no response code");
    }
    let mut text = code.to_vec();
    if code[3] == b' ' {
        let mut b = [0u8; 1];
        while text.len() < MAX_MESSAGE && r.read_exact(&mut b).is_ok() && b[0] != 0 {
            text.push(b[0]);
        }
    } else {
        text.truncate(3);
    }
    NetdError::Refused(String::from_utf8_lossy(&text).into_owned())
}

/// bionic's `EAI_*` codes (`netdb.h`), for messages.
const EAI_AGAIN: i32 = 2;
const EAI_FAIL: i32 = 4;
const EAI_NODATA: i32 = 7;
const EAI_NONAME: i32 = 8;
const EAI_SYSTEM: i32 = 11;

fn eai_name(code: i32) -> String {
    match code {
        EAI_AGAIN => "EAI_AGAIN (temporary failure: no server answered)".into(),
        EAI_FAIL => "EAI_FAIL (the servers failed or networking is blocked for this uid)".into(),
        EAI_SYSTEM => "EAI_SYSTEM (the query was not allowed)".into(),
        n => format!("EAI error {n}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An answer as netd writes it: `222\0`, one entry per address, the end mark.
    pub(crate) fn answer(ips: &[IpAddr], canon: Option<&str>) -> Vec<u8> {
        let mut m = QUERY_RESULT.to_vec();
        for ip in ips {
            let be = |m: &mut Vec<u8>, v: u32| m.extend_from_slice(&v.to_be_bytes());
            be(&mut m, 1);
            let (family, sa) = match ip {
                IpAddr::V4(v4) => {
                    let mut sa = vec![2, 0, 0, 0];
                    sa.extend_from_slice(&v4.octets());
                    sa.extend_from_slice(&[0; 8]);
                    (AF_INET, sa)
                }
                IpAddr::V6(v6) => {
                    let mut sa = vec![10, 0, 0, 0, 0, 0, 0, 0];
                    sa.extend_from_slice(&v6.octets());
                    sa.extend_from_slice(&[0; 4]);
                    (AF_INET6, sa)
                }
            };
            for v in [0, family as u32, 1, 6, sa.len() as u32] {
                be(&mut m, v);
            }
            m.extend_from_slice(&sa);
            match canon {
                Some(c) => {
                    be(&mut m, c.len() as u32 + 1);
                    m.extend_from_slice(c.as_bytes());
                    m.push(0);
                }
                None => be(&mut m, 0),
            }
        }
        m.extend_from_slice(&0u32.to_be_bytes());
        m
    }

    fn failure(eai: i32) -> Vec<u8> {
        let mut m = OPERATION_FAILED.to_vec();
        m.extend_from_slice(&4u32.to_be_bytes());
        m.extend_from_slice(&eai.to_ne_bytes());
        m
    }

    #[test]
    fn the_request_is_bionics() {
        assert_eq!(
            request("oss-cn-hangzhou.aliyuncs.com").unwrap(),
            b"getaddrinfo oss-cn-hangzhou.aliyuncs.com ^ 1024 0 1 0 0\0"
        );
        for bad in ["", "a b", "a^b", "a\"b", "a'b", "a\nb", "a\0b", "é.cn"] {
            assert!(matches!(request(bad), Err(NetdError::BadName(_))), "{bad:?}");
        }
    }

    #[test]
    fn answers_decode_in_netds_order_without_duplicates() {
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        let m = answer(&[v6, v4, v4], Some("store.internal"));
        assert_eq!(read_answer(&mut &m[..]).unwrap(), vec![v6, v4]);
        // Bytes after the end mark are not read: netd keeps the connection open.
        let mut more = answer(&[v4], None);
        more.extend_from_slice(b"junk");
        let mut r = &more[..];
        assert_eq!(read_answer(&mut r).unwrap(), vec![v4]);
        assert_eq!(r, b"junk");
        assert!(read_answer(&mut &answer(&[], None)[..]).unwrap().is_empty());
    }

    #[test]
    fn failures_and_refusals_say_what_happened() {
        assert!(matches!(read_answer(&mut &failure(EAI_NODATA)[..]), Err(NetdError::NoSuchHost)));
        assert!(matches!(read_answer(&mut &failure(EAI_NONAME)[..]), Err(NetdError::NoSuchHost)));
        let e = read_answer(&mut &failure(EAI_AGAIN)[..]).unwrap_err();
        assert!(e.to_string().contains("EAI_AGAIN"), "{e}");
        let e = read_answer(&mut &b"501 GetAddrInfoCmd::runCommand: invalid number of arguments\0"[..]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "netd refused the request: 501 GetAddrInfoCmd::runCommand: invalid number of arguments"
        );
        assert!(matches!(read_answer(&mut &b"500\0"[..]), Err(NetdError::Refused(t)) if t == "500"));
        assert!(matches!(read_answer(&mut &b"HTTP/1.1 200"[..]), Err(NetdError::Malformed(_))));
    }

    #[test]
    fn short_and_absurd_answers_are_errors_not_allocations() {
        let full = answer(&["10.0.0.7".parse().unwrap()], Some("x"));
        for cut in 0..full.len() {
            assert!(read_answer(&mut &full[..cut]).is_err(), "cut at {cut}");
        }
        let with = |at: usize, v: u32| {
            let mut m = full.clone();
            m[at..at + 4].copy_from_slice(&v.to_be_bytes());
            m
        };
        // The address length sits after code, more, flags, family, socktype, protocol.
        let addr_len_at = 4 + 5 * 4;
        assert!(matches!(read_answer(&mut &with(addr_len_at, u32::MAX)[..]), Err(NetdError::Malformed(_))));
        assert!(matches!(
            read_answer(&mut &with(addr_len_at, 2)[..]),
            Err(NetdError::Malformed(_)) | Err(NetdError::Io(_))
        ));
        let name_len_at = addr_len_at + 4 + 16;
        assert!(matches!(read_answer(&mut &with(name_len_at, 1 << 30)[..]), Err(NetdError::Malformed(_))));
        // A canonical name without its NUL.
        let mut no_nul = full.clone();
        let last_name_byte = full.len() - 5;
        no_nul[last_name_byte] = b'y';
        assert!(matches!(read_answer(&mut &no_nul[..]), Err(NetdError::Malformed(_))));
        // An endless list ends in an error.
        let mut endless = QUERY_RESULT.to_vec();
        let entry = &full[4..full.len() - 4];
        for _ in 0..=MAX_ENTRIES {
            endless.extend_from_slice(entry);
        }
        assert!(matches!(read_answer(&mut &endless[..]), Err(NetdError::Malformed(_))));
    }

    #[test]
    fn lookups_go_over_the_socket_and_leave_it_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dnsproxyd");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() && b[0] != 0 {
                req.push(b[0]);
            }
            s.write_all(&answer(&["192.0.2.9".parse().unwrap()], None)).unwrap();
            // Like netd: the connection stays open until the client goes.
            let _ = s.read(&mut b);
            String::from_utf8(req).unwrap()
        });
        let ips = lookup(&path, "store.lan", Duration::from_secs(5)).unwrap();
        assert_eq!(ips, vec!["192.0.2.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(server.join().unwrap(), "getaddrinfo store.lan ^ 1024 0 1 0 0");
        let e = lookup(&dir.path().join("none"), "store.lan", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, NetdError::Connect { .. }), "{e}");
    }
}
