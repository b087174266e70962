//! A fault-injecting TCP proxy between the agent and Garage. It reads each HTTP request's head
//! (so faults land on requests, not just on connections, even on kept-alive connections),
//! asks the test's schedule what to do with it, and then forwards it, resets the connection,
//! stalls, cuts the response short, or answers an S3 error of its own.
//!
//! HTTP/1.1 without pipelining is all it needs to understand: a client sends its next request
//! on a connection only after reading the whole previous response, so when a request head
//! arrives every earlier response has been delivered, and bytes the server sends from then on
//! belong to this request's answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it untouched.
    Pass,
    /// Forward the head and half the body (or, for a request without one, the request and
    /// `after` bytes of the answer), then reset both sides (RST, not FIN).
    Reset { after: u64 },
    /// Forward the request, then hold the answer after `after` of its bytes for `secs`
    /// seconds; then close. The agent must notice the stall itself.
    Stall { after: u64, secs: u64 },
    /// Forward the request and `after` bytes of the answer, then close cleanly (FIN): a
    /// response cut short.
    Cut { after: u64 },
    /// Answer this status and S3 error code without forwarding, then close.
    Status(u16, &'static str),
}

/// One request as the schedule sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Counts every request through this proxy from 0.
    pub index: usize,
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
}

impl Request {
    /// An UploadPart request (PUT with a `partNumber`).
    pub fn is_part(&self) -> bool {
        self.method == "PUT" && self.part_number().is_some()
    }
    /// The `partNumber` of the query, if any.
    pub fn part_number(&self) -> Option<u32> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|kv| kv.strip_prefix("partNumber=")?.parse().ok())
    }
    /// A GET of the object whose key ends with `key` (not its manifest, not a listing).
    pub fn gets(&self, key: &str) -> bool {
        self.is_get() && self.target.split('?').next().is_some_and(|p| p.ends_with(key))
    }
    pub fn is_get(&self) -> bool {
        self.method == "GET" && !self.target.contains("list-type") && !self.target.contains("uploads")
    }
}

type Schedule = dyn Fn(&Request) -> Fault + Send + Sync;

/// A running proxy: its port, and what it did.
pub struct Proxy {
    pub port: u16,
    requests: Arc<AtomicUsize>,
    faults: Arc<Mutex<Vec<(Request, Fault)>>>,
}

impl Proxy {
    /// Listen on a loopback port, forwarding to `upstream` on loopback under `schedule`.
    pub fn start(upstream: u16, schedule: impl Fn(&Request) -> Fault + Send + Sync + 'static) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let schedule: Arc<Schedule> = Arc::new(schedule);
        let requests = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(Mutex::new(Vec::new()));
        let (r2, f2) = (requests.clone(), faults.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (schedule, requests, faults) = (schedule.clone(), r2.clone(), f2.clone());
                std::thread::spawn(move || {
                    let _ = connection(client, upstream, &*schedule, &requests, &faults);
                });
            }
        });
        Proxy { port, requests, faults }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests seen so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Every fault injected so far, with the request it hit.
    pub fn faults(&self) -> Vec<(Request, Fault)> {
        self.faults.lock().expect("fault log").clone()
    }

    /// How many injected faults were of the same kind as `f` (its numbers ignored).
    pub fn count(&self, f: fn(&Fault) -> bool) -> usize {
        self.faults().iter().filter(|(_, x)| f(x)).count()
    }
}

/// A schedule that applies `faults` in turn to every `every`-th request that `wanted` picks
/// (counting only those), and passes everything else.
pub fn every(
    every: usize,
    wanted: impl Fn(&Request) -> bool + Send + Sync + 'static,
    faults: Vec<Fault>,
) -> impl Fn(&Request) -> Fault + Send + Sync + 'static {
    let seen = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    move |r| {
        if !wanted(r) {
            return Fault::Pass;
        }
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n % every != 0 || faults.is_empty() {
            return Fault::Pass;
        }
        faults[next.fetch_add(1, Ordering::SeqCst) % faults.len()]
    }
}

/// What the answer side does once a fault's allowance of answer bytes is spent.
#[derive(Clone, Copy)]
enum Then {
    Cut,
    Reset,
    Stall(u64),
}

/// The current request's limit on its answer: forward `left` more bytes, then `then`.
type Limit = Mutex<Option<(u64, Then)>>;

/// A schedule that applies `faults` once each, in order, to the requests `wanted` picks, then
/// passes everything.
pub fn in_turn(
    wanted: impl Fn(&Request) -> bool + Send + Sync + 'static,
    faults: Vec<Fault>,
) -> impl Fn(&Request) -> Fault + Send + Sync + 'static {
    let next = AtomicUsize::new(0);
    move |r| {
        if !wanted(r) {
            return Fault::Pass;
        }
        faults.get(next.fetch_add(1, Ordering::SeqCst)).copied().unwrap_or(Fault::Pass)
    }
}

/// A schedule for downloads of `key`: the first GET is cut after `after` bytes, every later one
/// is reset before a byte of its body arrives. A download that can never resume.
pub fn dies_after(key: &'static str, after: u64) -> impl Fn(&Request) -> Fault + Send + Sync + 'static {
    let first = std::sync::atomic::AtomicBool::new(true);
    move |r| {
        if !r.gets(key) {
            Fault::Pass
        } else if first.swap(false, Ordering::SeqCst) {
            Fault::Cut { after }
        } else {
            Fault::Reset { after: 0 }
        }
    }
}

/// Serve one client connection: request by request until either side closes or a fault ends it.
fn connection(
    client: TcpStream,
    upstream: u16,
    schedule: &Schedule,
    requests: &AtomicUsize,
    faults: &Mutex<Vec<(Request, Fault)>>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    let limit: Arc<Limit> = Arc::new(Mutex::new(None));
    let answers = {
        let (client, server, limit) = (client.try_clone()?, server.try_clone()?, limit.clone());
        std::thread::spawn(move || answers(server, client, &limit))
    };
    let mut from_client = BufReader::with_capacity(64 * 1024, client.try_clone()?);
    let mut to_server = server.try_clone()?;
    let limit_answer = |left: u64, then: Then| *limit.lock().expect("limit") = Some((left, then));
    loop {
        let Some(head) = read_head(&mut from_client)? else { break };
        let (method, target, length) = parse_head(&head);
        let req = Request { index: requests.fetch_add(1, Ordering::SeqCst), method, target };
        let fault = schedule(&req);
        if fault != Fault::Pass {
            faults.lock().expect("fault log").push((req.clone(), fault));
        }
        match fault {
            Fault::Pass => *limit.lock().expect("limit") = None,
            Fault::Status(code, s3code) => {
                discard_exact(&mut from_client, length)?;
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3code}</Code><Message>injected by the test's fault proxy</Message><RequestId>fault</RequestId></Error>"
                );
                let answer = format!(
                    "HTTP/1.1 {code} {s3code}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                (&client).write_all(answer.as_bytes())?;
                let _ = client.shutdown(Shutdown::Write);
                reset(&server);
                break;
            }
            Fault::Reset { .. } if length > 0 => {
                to_server.write_all(&head)?;
                copy_exact(&mut from_client, &mut to_server, length / 2)?;
                reset(&client);
                reset(&server);
                break;
            }
            Fault::Reset { after } => limit_answer(after, Then::Reset),
            Fault::Cut { after } => limit_answer(after, Then::Cut),
            Fault::Stall { after, secs } => limit_answer(after, Then::Stall(secs)),
        }
        to_server.write_all(&head)?;
        copy_exact(&mut from_client, &mut to_server, length)?;
    }
    let _ = server.shutdown(Shutdown::Write);
    let _ = answers.join();
    Ok(())
}

/// Forward the server's answers to the client, within the limit a fault set.
fn answers(mut server: TcpStream, client: TcpStream, limit: &Limit) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let current = *limit.lock().expect("limit");
        let Some((left, then)) = current else {
            if (&client).write_all(&buf[..n]).is_err() {
                break;
            }
            continue;
        };
        let send = (n as u64).min(left) as usize;
        if (&client).write_all(&buf[..send]).is_err() {
            break;
        }
        if send < n || left == send as u64 {
            match then {
                Then::Cut => {}
                Then::Reset => reset(&client),
                Then::Stall(secs) => std::thread::sleep(Duration::from_secs(secs)),
            }
            let _ = client.shutdown(Shutdown::Both);
            reset(&server);
            return;
        }
        *limit.lock().expect("limit") = Some((left - send as u64, then));
    }
    let _ = client.shutdown(Shutdown::Write);
}

/// Abort the connection with RST, whatever other descriptors share the socket: on Linux,
/// connect() to AF_UNSPEC disconnects a TCP socket, sending a reset.
fn reset(s: &TcpStream) {
    let addr = libc::sockaddr { sa_family: libc::AF_UNSPEC as libc::sa_family_t, sa_data: [0; 14] };
    // SAFETY: a valid socket descriptor and a properly sized address.
    unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(s),
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

/// One request head, through the blank line; None at a clean end of the connection.
fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return Ok(if head.is_empty() { None } else { Some(head) });
        }
        if head.ends_with(b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() > 1 << 20 {
            return Err(std::io::Error::other("request head over 1 MiB"));
        }
    }
}

/// Method, target and Content-Length of a request head. A chunked body is not expected: the
/// agent sends parts and manifests with a known length.
fn parse_head(head: &[u8]) -> (String, String, u64) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut words = first.split(' ');
    let method = words.next().unwrap_or("").to_string();
    let target = words.next().unwrap_or("").to_string();
    let mut length = 0;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            assert!(
                !(k.trim().eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")),
                "the fault proxy does not handle chunked request bodies: {first}"
            );
        }
    }
    (method, target, length)
}

fn copy_exact(from: &mut BufReader<TcpStream>, to: &mut TcpStream, n: u64) -> std::io::Result<()> {
    let copied = std::io::copy(&mut from.by_ref().take(n), to)?;
    if copied < n {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "request body cut"));
    }
    Ok(())
}

fn discard_exact(from: &mut BufReader<TcpStream>, n: u64) -> std::io::Result<()> {
    std::io::copy(&mut from.by_ref().take(n), &mut std::io::sink())?;
    Ok(())
}
