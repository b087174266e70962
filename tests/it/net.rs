//! The network as a phone sees it (issue 6): no `/etc/resolv.conf`, no `/etc/ssl`. Names are
//! resolved through the name servers given (`--dns`, `CPBACKUP_DNS`) — here a DNS responder of
//! the test's own on loopback that knows `garage.test` — else through the phone's netd, asked on
//! its `dev/socket/dnsproxyd` under `--root` — here a netd of the test's own speaking bionic's
//! getaddrinfo protocol on a Unix socket in the fake phone — and TLS trusts the CA store of the phone
//! under `--root` (`system/etc/security/cacerts`, Android 14's `apex/com.android.conscrypt/cacerts`),
//! else bundled roots: a CA made by the test, behind a TLS proxy of the test's own in front of
//! Garage, is trusted only when the fake phone carries it.
//!
//! Everything goes through the binary, so the same tests run the aarch64 build under qemu.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::support::garage::{self, Garage};
use crate::support::tree::{self, Ignore};
use crate::support::{json, path_str, run, stderr};

// ---------------------------------------------------------------------------------------------
// A DNS responder: A records for the names it is given, NOERROR without answers for other types
// of those names, NXDOMAIN for everything else. Logs every question.

struct Dns {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Dns {
    fn start(names: &[(&str, [u8; 4])]) -> Dns {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let names: Vec<(String, [u8; 4])> = names.iter().map(|(n, ip)| (n.to_string(), *ip)).collect();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { return };
                if let Some((reply, q)) = answer(&buf[..n], &names) {
                    log.lock().unwrap().push(q);
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        Dns { addr, asked }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// The reply to one query, and the question as "name/TYPE".
fn answer(q: &[u8], names: &[(String, [u8; 4])]) -> Option<(Vec<u8>, String)> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let l = *q.get(at)? as usize;
        at += 1;
        if l == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(at..at + l)?).to_lowercase());
        at += l;
    }
    let qtype = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
    let qend = at + 4;
    let name = labels.join(".");
    let known = names.iter().find(|(n, _)| *n == name);
    let mut r = q.get(..qend)?.to_vec();
    r[2] = 0x81 | (q[2] & 0x01); // QR, opcode 0, RD echoed
    r[3] = if known.is_some() { 0x80 } else { 0x83 }; // RA; NOERROR or NXDOMAIN
    r[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
    if let (Some((_, ip)), 1) = (known, qtype) {
        r[7] = 1;
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        r.extend_from_slice(ip);
    }
    let t = match qtype {
        1 => "A",
        28 => "AAAA",
        _ => "other",
    };
    Some((r, format!("{name}/{t}")))
}

// ---------------------------------------------------------------------------------------------
// netd of the test's own: `dev/socket/dnsproxyd` in a fake phone, answering bionic's `getaddrinfo`
// command (`getaddrinfo NAME ^ FLAGS FAMILY SOCKTYPE PROTOCOL NETID\0`) as netd's
// DnsProxyListener does: `222\0` and one addrinfo per address, or `401\0` and EAI_NODATA for
// names it does not know. Each connection stays open after the answer, as netd leaves it. Logs
// every command.

struct Netd {
    asked: Arc<Mutex<Vec<String>>>,
}

impl Netd {
    fn start(root: &Path, names: &[(&str, [u8; 4])]) -> Netd {
        let dir = root.join("dev/socket");
        fs::create_dir_all(&dir).unwrap();
        let listener = UnixListener::bind(dir.join("dnsproxyd")).unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let names: Vec<(String, [u8; 4])> = names.iter().map(|(n, ip)| (n.to_string(), *ip)).collect();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let (log, names) = (log.clone(), names.clone());
                std::thread::spawn(move || {
                    let mut cmd = Vec::new();
                    let mut b = [0u8; 1];
                    while conn.read_exact(&mut b).is_ok() && b[0] != 0 {
                        cmd.push(b[0]);
                    }
                    let cmd = String::from_utf8_lossy(&cmd).into_owned();
                    let host = cmd.split(' ').nth(1).unwrap_or("").to_string();
                    log.lock().unwrap().push(cmd);
                    let _ = conn.write_all(&netd_answer(names.iter().find(|(n, _)| *n == host).map(|(_, ip)| *ip)));
                    let _ = conn.read(&mut b); // until the client hangs up
                });
            }
        });
        Netd { asked }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn netd_answer(ip: Option<[u8; 4]>) -> Vec<u8> {
    let be = |m: &mut Vec<u8>, v: u32| m.extend_from_slice(&v.to_be_bytes());
    let Some(ip) = ip else {
        let mut m = b"401\0".to_vec();
        be(&mut m, 4);
        m.extend_from_slice(&7i32.to_ne_bytes()); // EAI_NODATA, in netd's byte order
        return m;
    };
    let mut m = b"222\0".to_vec();
    // more, ai_flags, AF_INET, SOCK_STREAM, IPPROTO_TCP, then a sockaddr_in of 16 bytes.
    for v in [1, 0, 2, 1, 6, 16] {
        be(&mut m, v);
    }
    m.extend_from_slice(&2u16.to_ne_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&ip);
    m.extend_from_slice(&[0; 8]);
    be(&mut m, 0); // no canonical name
    be(&mut m, 0); // the end
    m
}

// ---------------------------------------------------------------------------------------------
// A certificate authority, a server certificate for `garage.test`, and a TLS proxy to Garage.

struct Ca {
    /// The CA certificate, PEM.
    pem: String,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn ca_and_server_cert(host: &str) -> Ca {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, format!("cpbackup test CA for {host}"));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut lp = CertificateParams::new(vec![host.to_string()]).unwrap();
    lp.distinguished_name.push(DnType::CommonName, host);
    let leaf = lp.signed_by(&leaf_key, &ca).unwrap();
    Ca {
        pem: ca.pem(),
        chain: vec![leaf.der().clone(), ca.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    }
}

/// A TLS-terminating proxy on loopback in front of `upstream`; returns its port.
fn tls_proxy(ca: &Ca, upstream: SocketAddr) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(ca.chain.clone(), ca.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that does not trust the CA hangs up during the handshake.
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
    });
    port
}

/// Put `pem` into a fake phone's CA store the way Android keeps it: `<hash>.0`, the PEM block
/// followed by the text dump.
fn install_ca(root: &Path, dir: &str, pem: &str) {
    let d = root.join(dir);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("5a3f0ff8.0"), format!("{pem}Certificate:\n    Data:\n        Version: 3 (0x2)\n")).unwrap();
}

fn garage_addr(g: &Garage) -> SocketAddr {
    g.endpoint().trim_start_matches("http://").parse().expect("the test Garage listens on an IP")
}

fn small_tree(root: &Path) {
    let b = tree::Builder::new(root);
    b.file("data/media/0/DCIM/a.jpg", &vec![7u8; 300_000]);
    b.file("data/media/0/notes/b.txt", b"hello from the phone");
}

fn same(a: &Path, b: &Path) {
    let ignore = Ignore { xattrs: true, ..Default::default() };
    tree::assert_same(&tree::snapshot(a, "data/media/0"), &tree::snapshot(b, "data/media/0"), ignore);
}

// ---------------------------------------------------------------------------------------------

#[test]
fn net_store_host_name_resolves_through_the_given_dns_server() {
    let g = garage::shared();
    let bucket = g.bucket("dns");
    let dns = Dns::start(&[("garage.test", [127, 0, 0, 1])]);
    let endpoint = format!("http://garage.test:{}", garage_addr(g).port());
    let src = tempfile::tempdir().unwrap();
    small_tree(src.path());
    let url = format!("s3://{bucket}/phone/dns.tar.zst");

    // --dns on the command line.
    let mut c = g.cpbackup();
    c.args(["export", "--root", path_str(src.path()), "--include", "/data/media/0", "--to", &url, "--json"]);
    c.args(["--endpoint", &endpoint, "--path-style", "--dns", &dns.addr.to_string()]);
    let m = json(&run(&mut c, 0));
    assert_eq!(m["Status"], "AVAILABLE");
    assert_eq!(m["UploadEndpoint"], endpoint.trim_start_matches("http://"));
    assert!(dns.asked().iter().any(|q| q == "garage.test/A"), "the agent asked the test's server: {:?}", dns.asked());

    // CPBACKUP_DNS in the environment, for the way back.
    let before = dns.asked().len();
    let dst = tempfile::tempdir().unwrap();
    let mut c = g.cpbackup();
    c.args(["import", "--root", path_str(dst.path()), "--from", &url, "--json"]);
    c.args(["--endpoint", &endpoint, "--path-style"]).env("CPBACKUP_DNS", dns.addr.to_string());
    let r = json(&run(&mut c, 0));
    assert_eq!(r["ChecksumVerified"], true);
    assert!(dns.asked().len() > before, "import resolved through CPBACKUP_DNS too");
    same(src.path(), dst.path());
}

#[test]
fn net_unknown_host_fails_naming_the_dns_servers() {
    let g = garage::shared();
    let bucket = g.bucket("nxdomain");
    let dns = Dns::start(&[("garage.test", [127, 0, 0, 1])]);
    let src = tempfile::tempdir().unwrap();
    small_tree(src.path());
    let mut c = g.cpbackup();
    c.args(["export", "--root", path_str(src.path()), "--include", "/data/media/0"]);
    c.args(["--to", &format!("s3://{bucket}/x.tar"), "--endpoint", "http://nowhere.test:9", "--path-style"]);
    c.args(["--dns", &dns.addr.to_string()]).env("CPBACKUP_RETRY_ATTEMPTS", "1");
    let out = run(&mut c, 1);
    let err = stderr(&out);
    assert!(err.contains("cannot resolve \"nowhere.test\"") && err.contains(&dns.addr.to_string()), "{err}");
    assert!(err.contains("--dns"), "says how to fix it: {err}");
    assert!(dns.asked().iter().any(|q| q == "nowhere.test/A"));
}

#[test]
fn net_bad_dns_servers_are_a_usage_error() {
    let out = run(crate::support::cpbackup().args(["--dns", "dns.google", "version"]), 2);
    assert!(stderr(&out).contains("bad DNS server \"dns.google\""), "{}", stderr(&out));
}

#[test]
fn net_tls_trusts_the_phones_cacerts_and_nothing_else() {
    let g = garage::shared();
    let bucket = g.bucket("tls");
    let dns = Dns::start(&[("garage.test", [127, 0, 0, 1])]);
    let ca = ca_and_server_cert("garage.test");
    let port = tls_proxy(&ca, garage_addr(g));
    let endpoint = format!("https://garage.test:{port}");
    let url = format!("s3://{bucket}/phone/tls.tar.zst");
    let export = |root: &Path| {
        let mut c = g.cpbackup();
        c.args(["export", "--root", path_str(root), "--include", "/data/media/0", "--to", &url, "--json"]);
        c.args(["--endpoint", &endpoint, "--path-style", "--dns", &dns.addr.to_string()]);
        c.env("CPBACKUP_RETRY_ATTEMPTS", "1");
        c
    };

    // A phone without the CA (no cacerts at all: bundled roots) refuses the server.
    let bare = tempfile::tempdir().unwrap();
    small_tree(bare.path());
    let out = run(&mut export(bare.path()), 1);
    let err = stderr(&out);
    assert!(err.contains("invalid peer certificate") && err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("not signed by a trusted CA") && err.contains("cacerts"), "a plain-words hint: {err}");

    // A phone whose store holds other CAs only refuses it too.
    let other = tempfile::tempdir().unwrap();
    small_tree(other.path());
    install_ca(other.path(), "system/etc/security/cacerts", &ca_and_server_cert("elsewhere.test").pem);
    let err = stderr(&run(&mut export(other.path()), 1));
    assert!(err.contains("UnknownIssuer"), "{err}");

    // The CA in /system/etc/security/cacerts: trusted.
    let src = tempfile::tempdir().unwrap();
    small_tree(src.path());
    install_ca(src.path(), "system/etc/security/cacerts", &ca.pem);
    let m = json(&run(&mut export(src.path()), 0));
    assert_eq!(m["Status"], "AVAILABLE");

    // Android 14: the CA in the Conscrypt APEX's store, on the way back.
    let dst = tempfile::tempdir().unwrap();
    install_ca(dst.path(), "apex/com.android.conscrypt/cacerts", &ca.pem);
    let mut c = g.cpbackup();
    c.args(["import", "--root", path_str(dst.path()), "--from", &url, "--json"]);
    c.args(["--endpoint", &endpoint, "--path-style", "--dns", &dns.addr.to_string()]);
    let r = json(&run(&mut c, 0));
    assert_eq!(r["ChecksumVerified"], true);
    same(src.path(), dst.path());
}

#[test]
fn net_names_resolve_through_the_phones_netd_unless_servers_are_given() {
    let g = garage::shared();
    let bucket = g.bucket("netd");
    let src = tempfile::tempdir().unwrap();
    small_tree(src.path());
    let netd = Netd::start(src.path(), &[("garage.test", [127, 0, 0, 1])]);
    let socket = src.path().join("dev/socket/dnsproxyd");
    let endpoint = format!("http://garage.test:{}", garage_addr(g).port());
    let export = |endpoint: &str, name: &str| {
        let url = format!("s3://{bucket}/phone/{name}.tar.zst");
        let mut c = g.cpbackup();
        c.args(["export", "--root", path_str(src.path()), "--include", "/data/media/0", "--to", &url, "--json"]);
        c.args(["--endpoint", endpoint, "--path-style"]).env_remove("CPBACKUP_DNS");
        c.env("CPBACKUP_RETRY_ATTEMPTS", "1");
        c
    };

    // `version` says which resolver the phone under --root gets.
    let mut c = crate::support::cpbackup();
    c.args(["version", "--root", path_str(src.path())]).env_remove("CPBACKUP_DNS");
    let v = String::from_utf8_lossy(&run(&mut c, 0).stdout).into_owned();
    assert!(v.contains(&format!("dns: netd at {}", socket.display())), "{v}");

    // The store's host name is resolved by the phone's netd, asked as bionic asks it.
    let m = json(&run(&mut export(&endpoint, "netd"), 0));
    assert_eq!(m["Status"], "AVAILABLE");
    assert!(
        netd.asked().iter().any(|q| q == "getaddrinfo garage.test ^ 1024 0 1 0 0"),
        "the agent asked netd: {:?}",
        netd.asked()
    );

    // A name netd does not know: the error says netd was asked, and how to ask others.
    let err = stderr(&run(&mut export("http://nowhere.test:9", "nowhere"), 1));
    assert!(err.contains("cannot resolve \"nowhere.test\" (no such host") && err.contains("netd at"), "{err}");
    assert!(err.contains("--dns"), "says how to fix it: {err}");

    // --dns wins over netd: the given server is asked, netd is not.
    let dns = Dns::start(&[("garage.test", [127, 0, 0, 1])]);
    let before = netd.asked().len();
    let m = json(&run(export(&endpoint, "dns").args(["--dns", &dns.addr.to_string()]), 0));
    assert_eq!(m["Status"], "AVAILABLE");
    assert!(dns.asked().iter().any(|q| q == "garage.test/A"), "{:?}", dns.asked());
    assert_eq!(netd.asked().len(), before, "netd was not asked: {:?}", netd.asked());
}
