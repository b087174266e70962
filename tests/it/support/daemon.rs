//! The daemon under test: a control plane that receives callbacks and checks their HMAC
//! signature independently of cpbackup's code, and the daemon process itself (config, start on
//! port 0, the ECP API, kill, SIGTERM).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::garage::Garage;
use super::path_str;

pub const TOKEN: &str = "test-token-0123456789";
pub const SECRET: &str = "callback-secret-abcdef";
pub const INSTANCE: &str = "acp-test0001";

/// A control plane: receives callbacks, checks their HMAC (keyed with `SECRET`) and timestamp,
/// answers 401 to a bad one and refuses the first `refuse` good ones.
pub struct ControlPlane {
    pub url: String,
    pub events: Arc<Mutex<Vec<(String, Value)>>>,
    pub refused: Arc<Mutex<u32>>,
    /// Why each callback that failed the check failed.
    pub bad: Arc<Mutex<Vec<String>>>,
}

impl ControlPlane {
    pub fn start(refuse: u32) -> ControlPlane {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/callback", l.local_addr().unwrap());
        let events = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(0u32));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let (ev, rf, bd) = (events.clone(), refused.clone(), bad.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut headers = BTreeMap::new();
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                loop {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                // Check the signature independently of cpbackup's code.
                let ts = headers.get("x-cpbackup-timestamp").cloned().unwrap_or_default();
                let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(ts.as_bytes());
                mac.update(b".");
                mac.update(&body);
                let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                let given = headers.get("x-cpbackup-signature").cloned().unwrap_or_default();
                // A fresh timestamp, so that a captured callback cannot be replayed later.
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
                let fresh = ts.parse::<i64>().is_ok_and(|t| (t - now).abs() <= 300);
                let why = if given != expected {
                    Some(format!("signature {given:?}, expected {expected:?} over {ts:?}"))
                } else if !fresh {
                    Some(format!("timestamp {ts:?} is not within 5 minutes of {now}"))
                } else {
                    None
                };
                let mut n = rf.lock().unwrap();
                let status = if let Some(why) = why {
                    bd.lock().unwrap().push(why);
                    "401 Unauthorized"
                } else if *n < refuse {
                    *n += 1;
                    "503 Service Unavailable"
                } else {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    ev.lock().unwrap().push((headers.get("x-cpbackup-event-id").cloned().unwrap_or_default(), v));
                    "200 OK"
                };
                drop(n);
                let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        ControlPlane { url, events, refused, bad }
    }

    pub fn bad(&self) -> Vec<String> {
        self.bad.lock().unwrap().clone()
    }

    pub fn events(&self) -> Vec<(String, Value)> {
        self.events.lock().unwrap().clone()
    }

    /// Wait until an event for `task` reports `status`.
    pub fn wait_for(&self, task: &str, status: &str) -> Vec<(String, Value)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let evs: Vec<_> = self.events().into_iter().filter(|(_, v)| v["TaskId"] == task).collect();
            if evs.iter().any(|(_, v)| v["Task"]["Status"] == status) {
                return evs;
            }
            assert!(self.bad().is_empty(), "callbacks refused: {:?}", self.bad());
            assert!(Instant::now() < deadline, "no {status} callback for {task}; got {evs:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub struct Daemon {
    pub child: Child,
    pub base: String,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(g: &Garage, dir: &Path, root: &Path, callback: &str, extra: &str) -> Daemon {
        let config = dir.join("cpbackup.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nstate_dir = \"{}\"\nroot = \"{}\"\ninstance_id = \"{INSTANCE}\"\n\
                 instance_name = \"test phone\"\ncallback_url = \"{callback}\"\ncallback_secret = \"{SECRET}\"\nprogress_interval_secs = 1\n\
                 shutdown_deadline_secs = 5\npath_style = true\n{extra}",
                dir.join("state").display(),
                root.display()
            ),
        )
        .unwrap();
        // As an operator's editor would leave it, whatever the umask: the API test checks
        // that the daemon warns about a secret others can read.
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        Self::spawn(g, config, dir)
    }

    pub fn spawn(g: &Garage, config: PathBuf, dir: &Path) -> Daemon {
        Self::spawn_env(g, config, dir, &[])
    }

    pub fn spawn_env(g: &Garage, config: PathBuf, dir: &Path, envs: &[(&str, String)]) -> Daemon {
        let log = dir.join("daemon.log");
        let mut c = g.cpbackup();
        for (k, v) in envs {
            c.env(k, v);
        }
        c.args(["daemon", "--config", path_str(&config), "-v"])
            // The config names the state dir; the harness's variable would override it.
            .env_remove("CPBACKUP_STATE_DIR")
            .stdout(Stdio::piped())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap());
        let mut child = std::os::unix::process::CommandExt::process_group(&mut c, 0).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line.trim().rsplit(' ').next().unwrap_or("").to_string();
        assert!(
            addr.starts_with("127.0.0.1:"),
            "daemon did not announce its address: {line:?}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Daemon { child, base: format!("http://{addr}"), config, log }
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = ureq::post(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .send_json(body);
        answer(r)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        answer(ureq::get(&format!("{}{path}", self.base)).set("Authorization", &format!("Bearer {TOKEN}")).call())
    }

    pub fn task(&self, id: &str) -> Value {
        let (code, v) = self.post("/ecp/DescribeTasks", json!({"TaskIds": [id]}));
        assert_eq!(code, 200, "{v}");
        v["Data"][0].clone()
    }

    pub fn wait(&self, id: &str, done: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let t = self.task(id);
            if done.iter().any(|s| t["TaskStatus"] == *s) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} still {t}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL the daemon and what it started, as init stops a service.
    pub fn kill(mut self) -> (PathBuf, PathBuf) {
        super::kill_group(&mut self.child);
        (self.config.clone(), self.log.clone())
    }

    pub fn term(mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    match r {
        Ok(resp) => (resp.status(), resp.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("request failed: {e}"),
    }
}
