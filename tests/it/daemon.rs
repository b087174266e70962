//! The daemon through real HTTP on port 0, against Garage and a fake phone root: the vendors'
//! request shapes, a small control plane that checks signed callbacks (and refuses some, to
//! exercise the outbox), cancellation, and SIGKILL in the middle of an upload and a restore.

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

use crate::support::garage::{self, Garage};
use crate::support::path_str;
use crate::support::tree::{self, Ignore};

const TOKEN: &str = "test-token-0123456789";
const SECRET: &str = "callback-secret-abcdef";
const INSTANCE: &str = "acp-test0001";

/// A control plane: receives callbacks, checks their HMAC, refuses the first `refuse` ones.
struct ControlPlane {
    url: String,
    events: Arc<Mutex<Vec<(String, Value)>>>,
    refused: Arc<Mutex<u32>>,
}

impl ControlPlane {
    fn start(refuse: u32) -> ControlPlane {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/callback", l.local_addr().unwrap());
        let events = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(0u32));
        let (ev, rf) = (events.clone(), refused.clone());
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
                let sig_ok = headers.get("x-cpbackup-signature") == Some(&expected);
                let mut n = rf.lock().unwrap();
                let status = if !sig_ok {
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
        ControlPlane { url, events, refused }
    }

    fn events(&self) -> Vec<(String, Value)> {
        self.events.lock().unwrap().clone()
    }

    /// Wait until an event for `task` reports `status`.
    fn wait_for(&self, task: &str, status: &str) -> Vec<(String, Value)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let evs: Vec<_> = self.events().into_iter().filter(|(_, v)| v["TaskId"] == task).collect();
            if evs.iter().any(|(_, v)| v["Task"]["Status"] == status) {
                return evs;
            }
            assert!(Instant::now() < deadline, "no {status} callback for {task}; got {evs:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Daemon {
    child: Child,
    base: String,
    config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(g: &Garage, dir: &Path, root: &Path, callback: &str, extra: &str) -> Daemon {
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
        Self::spawn(g, config, dir)
    }

    fn spawn(g: &Garage, config: PathBuf, dir: &Path) -> Daemon {
        Self::spawn_env(g, config, dir, &[])
    }

    fn spawn_env(g: &Garage, config: PathBuf, dir: &Path, envs: &[(&str, String)]) -> Daemon {
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
        let mut child = c.spawn().unwrap();
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

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = ureq::post(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .send_json(body);
        answer(r)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        answer(ureq::get(&format!("{}{path}", self.base)).set("Authorization", &format!("Bearer {TOKEN}")).call())
    }

    fn task(&self, id: &str) -> Value {
        let (code, v) = self.post("/ecp/DescribeTasks", json!({"TaskIds": [id]}));
        assert_eq!(code, 200, "{v}");
        v["Data"][0].clone()
    }

    fn wait(&self, id: &str, done: &[&str]) -> Value {
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

    fn kill(mut self) -> (PathBuf, PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.config.clone(), self.log.clone())
    }

    fn term(mut self) -> std::process::ExitStatus {
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

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    match r {
        Ok(resp) => (resp.status(), resp.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("request failed: {e}"),
    }
}

fn app_tree(root: &Path, mib: usize) {
    let b = tree::Builder::new(root);
    b.file("data/data/com.example.app/files/a.txt", b"version one");
    b.file("data/data/com.example.app/shared_prefs/p.xml", b"<map/>");
    b.dir("data/user");
    std::os::unix::fs::symlink("/data/data", b.path("data/user/0")).unwrap();
    if mib > 0 {
        // Incompressible, so the upload takes a while and spans many parts.
        let chunk = cpbackup::demo::noise(1 << 20, 7);
        for i in 0..mib {
            let mut c = chunk.clone();
            c[0] = i as u8;
            c[1] = (i >> 8) as u8;
            b.file(&format!("data/media/0/big/{i:04}.bin"), &c);
        }
    }
}

#[test]
fn ecp_backup_recover_describe_delete_with_signed_callbacks() {
    let g = garage::shared();
    let bucket = g.bucket("daemon-ecp");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    app_tree(&root, 0);
    let cp = ControlPlane::start(2);
    let d = Daemon::start(
        g,
        dir.path(),
        &root,
        &cp.url,
        &format!("endpoint = \"{}\"\nregion = \"garage\"\n", g.endpoint()),
    );

    let (code, v) = d.post(
        "/ecp/BackupFile",
        json!({
            "AndroidInstanceIdList": [INSTANCE, "acp-other"],
            "BackupFilePath": format!("oss://{bucket}/backups/"),
            "SourceFilePathList": ["/data/user/0/com.example.app", "/data/data/com.example.app"],
            "Description": "nightly",
            "UploadType": "OSS",
        }),
    );
    assert_eq!(code, 200, "{v}");
    assert!(v["TaskId"].as_str().unwrap().starts_with("t-"));
    assert_eq!(v["Count"], 2);
    let mine = &v["Data"][0];
    assert_eq!(mine["AndroidInstanceId"], INSTANCE);
    assert!(mine["BackupFileId"].as_str().unwrap().starts_with("bf-"));
    let other = &v["Data"][1];
    assert_eq!(other["AndroidInstanceId"], "acp-other");
    assert_eq!(other["Code"], "InvalidAndroidInstanceId.NotFound");
    let task = mine["TaskId"].as_str().unwrap().to_string();
    let bf = mine["BackupFileId"].as_str().unwrap().to_string();
    let t = d.wait(&task, &["Finished", "Failed"]);
    assert_eq!(t["TaskStatus"], "Finished", "{t}");
    assert!(!t["StartTime"].as_str().unwrap().is_empty() && !t["FinishTime"].as_str().unwrap().is_empty());
    let result: Value = serde_json::from_str(t["Result"].as_str().unwrap()).unwrap();
    assert_eq!(result["Status"], "AVAILABLE");
    assert_eq!(result["BackupFileId"], bf);

    // Callbacks: Waiting → Processing → Finished, in order, each signed, the refused ones
    // delivered again later with the same event id.
    let evs = cp.wait_for(&task, "Finished");
    let statuses: Vec<&str> =
        evs.iter().filter(|(_, v)| v["Kind"] == "status").map(|(_, v)| v["Task"]["Status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["Waiting", "Processing", "Finished"], "{evs:?}");
    assert_eq!(*cp.refused.lock().unwrap(), 2);
    let seqs: Vec<u64> = evs.iter().map(|(_, v)| v["Seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let ids: Vec<&String> = evs.iter().map(|(id, _)| id).collect();
    let mut dedup = ids.clone();
    dedup.dedup();
    assert_eq!(ids, dedup, "no event delivered twice after a 2xx");

    // DescribeBackupFiles finds it.
    let (code, v) = d.post("/ecp/DescribeBackupFiles", json!({"BackupFileId": bf}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["TotalCount"], 1, "{v}");
    assert_eq!(v["Data"][0]["Description"], "nightly");

    // RecoveryFile by folder + id puts the data back.
    std::fs::write(root.join("data/data/com.example.app/files/a.txt"), b"changed since").unwrap();
    let (code, v) = d.post(
        "/ecp/RecoveryFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("oss://{bucket}/backups/"), "BackupFileId": bf}),
    );
    assert_eq!(code, 200, "{v}");
    let rt = v["Data"][0]["TaskId"].as_str().unwrap().to_string();
    let t = d.wait(&rt, &["Finished", "Failed"]);
    assert_eq!(t["TaskStatus"], "Finished", "{t}");
    assert_eq!(std::fs::read(root.join("data/data/com.example.app/files/a.txt")).unwrap(), b"version one");

    // DeleteBackupFile removes archive and record.
    let (code, v) = d.post("/ecp/DeleteBackupFile", json!({"BackupFileIdList": [bf]}));
    assert_eq!(code, 200, "{v}");
    let (_, v) = d.post("/ecp/DescribeBackupFiles", json!({"BackupFileId": bf}));
    assert_eq!(v["TotalCount"], 0, "{v}");

    // Metrics.
    let m = ureq::get(&format!("{}/metrics", d.base))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for name in [
        "cpbackup_tasks{state=\"Finished\"} 2",
        "cpbackup_bytes_uploaded_total",
        "cpbackup_bytes_downloaded_total",
        "cpbackup_part_retries_total",
        "cpbackup_callback_backlog",
    ] {
        assert!(m.contains(name), "{name} missing from:\n{m}");
    }
    assert!(d.term().success(), "SIGTERM ends the daemon cleanly");
}

#[test]
fn authentication_limits_and_errors_in_the_vendors_shapes() {
    let g = garage::shared();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    app_tree(&root, 0);
    let d = Daemon::start(g, dir.path(), &root, "", "body_limit = 4096\n");
    // /healthz needs no token; everything else does, compared exactly.
    assert_eq!(ureq::get(&format!("{}/healthz", d.base)).call().unwrap().status(), 200);
    for auth in [None, Some("Bearer wrong"), Some("Bearer test-token-012345678"), Some(TOKEN)] {
        let mut req = ureq::post(&format!("{}/ecp/DescribeTasks", d.base));
        if let Some(a) = auth {
            req = req.set("Authorization", a);
        }
        let (code, v) = answer(req.send_json(json!({})));
        assert_eq!(code, 401, "{auth:?}: {v}");
        assert_eq!(v["Code"], "InvalidToken");
    }
    let (code, v) = answer(ureq::get(&format!("{}/cph/jobs?request_id=x", d.base)).call());
    assert_eq!(code, 401);
    assert!(v["error_code"].is_string(), "CPH shape: {v}");
    // Oversized body: 413. (The server may close before reading the whole body, and a client
    // still sending then sees a reset instead of the answer: try again in that case.)
    let big = json!({"SourceFilePathList": vec!["/data/x"; 700]});
    let code = (0..5)
        .find_map(|_| {
            match ureq::post(&format!("{}/ecp/BackupFile", d.base))
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .send_json(big.clone())
            {
                Ok(r) => Some(r.status()),
                Err(ureq::Error::Status(c, _)) => Some(c),
                Err(_) => None,
            }
        })
        .expect("an answer to the oversized request");
    assert_eq!(code, 413);
    // Malformed JSON names the problem; a wrong type names the parameter.
    let (code, v) = answer(
        ureq::post(&format!("{}/ecp/BackupFile", d.base))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .send_string("{not json"),
    );
    assert_eq!(code, 400);
    assert!(v["Message"].as_str().unwrap().contains("malformed"), "{v}");
    let (code, v) = d.post("/ecp/BackupFile", json!({"AndroidInstanceIdList": "acp-test0001"}));
    assert_eq!(code, 400);
    assert!(
        v["Message"].as_str().unwrap().contains("AndroidInstanceIdList")
            || v["Message"].as_str().unwrap().contains("sequence"),
        "{v}"
    );
    let (code, v) = d.post("/ecp/BackupFile", json!({"AndroidInstanceIdList": [INSTANCE]}));
    assert_eq!(code, 400);
    assert!(v["Message"].as_str().unwrap().contains("BackupFilePath"), "{v}");
    let (code, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": "oss://b/x/", "SourceFilePathList": ["/system"]}),
    );
    assert_eq!(code, 200, "accepted; the task itself fails on the path rule: {v}");
    let t = d.wait(v["Data"][0]["TaskId"].as_str().unwrap(), &["Failed"]);
    assert_eq!(t["ErrorCode"], "InvalidParameter");
    assert!(t["ErrorMsg"].as_str().unwrap().contains("/system"), "{t}");
    let (code, v) = d.post("/ecp/BackupEverything", json!({}));
    assert_eq!(code, 404);
    assert_eq!(v["Code"], "InvalidAction.NotFound");
    let (code, v) = d.post("/ecp/DescribeTasks", json!({"MaxResults": 101}));
    assert_eq!(code, 400);
    assert!(v["Message"].as_str().unwrap().contains("MaxResults"));
    // A token is required to listen beyond loopback.
    let cfg = dir.path().join("open.toml");
    std::fs::write(&cfg, format!("listen = \"0.0.0.0:0\"\nstate_dir = \"{}\"\n", dir.path().join("s2").display()))
        .unwrap();
    let o = g.cpbackup().args(["daemon", "--config", path_str(&cfg)]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no token"));
    // Secrets never reach the log; the journal and config are private.
    drop(d);
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(!log.contains(TOKEN) && !log.contains(SECRET) && !log.contains(garage::SECRET), "secret in log:\n{log}");
    for entry in walk(&dir.path().join("state/journal")) {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            std::fs::metadata(&entry).unwrap_or_else(|e| panic!("{}: {e}", entry.display())).permissions().mode()
                & 0o777;
        let want = if entry.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{}", entry.display());
    }
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

#[test]
fn client_tokens_cph_shapes_and_cancel() {
    let g = garage::shared();
    let bucket = g.bucket("daemon-cph");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    app_tree(&root, 120);
    let d = Daemon::start(g, dir.path(), &root, "", &format!("endpoint = \"{}\"\nregion = \"garage\"\n", g.endpoint()));

    // The same ClientToken returns the same task.
    let body = json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("oss://{bucket}/a/"), "SourceFilePathList": ["/data/data"], "ClientToken": "once"});
    let (_, a) = d.post("/ecp/BackupFile", body.clone());
    let (_, b) = d.post("/ecp/BackupFile", body);
    assert_eq!(a["Data"][0]["TaskId"], b["Data"][0]["TaskId"]);
    d.wait(a["Data"][0]["TaskId"].as_str().unwrap(), &["Finished"]);

    // CPH batch-storage and jobs.
    let (code, v) = d.post(
        "/cph/batch-storage",
        json!({"storage_infos": [
            {"phone_id": INSTANCE, "include_files": ["/data/data/com.example.app"], "bucket_name": bucket, "object_path": "cph/phone.tar"},
            {"phone_id": "not-me", "include_files": ["/data/data"], "bucket_name": bucket, "object_path": "cph/x.tar"}
        ]}),
    );
    assert_eq!(code, 200, "{v}");
    assert!(v["request_id"].is_string());
    assert_eq!(v["jobs"][1]["error_code"], "CPS.0004");
    let job = v["jobs"][0]["job_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let j = loop {
        let (code, j) = d.get(&format!("/cph/jobs/{job}"));
        assert_eq!(code, 200, "{j}");
        if j["status"] != 1 {
            break j;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(j["status"], 2, "{j}");
    let (_, list) = d.get(&format!("/cph/jobs?request_id={}", v["request_id"].as_str().unwrap()));
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let (code, v) = d.post(
        "/cph/batch-restore",
        json!({"restore_infos": [{"phone_id": INSTANCE, "bucket_name": bucket, "object_path": "cph/phone.tar"}]}),
    );
    assert_eq!(code, 200, "{v}");

    // Cancel a long backup: Failed with code Cancelled, no multipart upload left open.
    let (_, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("oss://{bucket}/big/"), "SourceFilePathList": ["/data/media/0"]}),
    );
    let id = v["Data"][0]["TaskId"].as_str().unwrap().to_string();
    d.wait(&id, &["Processing"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.task(&id)["Progress"]["TransferredBytes"].as_u64().unwrap_or(0) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = ureq::delete(&format!("{}/tasks/{id}", d.base))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = d.wait(&id, &["Failed", "Finished"]);
    assert_eq!(t["TaskStatus"], "Failed", "{t}");
    assert_eq!(t["ErrorCode"], "Cancelled");
    let store = g.store(&bucket);
    assert!(store.open_uploads("").unwrap().is_empty(), "multipart upload left open");
}

#[test]
fn killed_mid_upload_and_mid_restore_then_restarted() {
    let g = garage::shared();
    let bucket = g.bucket("daemon-kill");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    app_tree(&root, 150);
    let cp = ControlPlane::start(0);
    let extra = format!("endpoint = \"{}\"\nregion = \"garage\"\n", g.endpoint());
    let d = Daemon::start(g, dir.path(), &root, &cp.url, &extra);

    // A good backup to restore from later.
    let (_, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("oss://{bucket}/good.tar.zst"), "SourceFilePathList": ["/data/media/0", "/data/data"]}),
    );
    let good = v["Data"][0]["TaskId"].as_str().unwrap().to_string();
    d.wait(&good, &["Finished"]);

    // Kill during an upload.
    let (_, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("oss://{bucket}/killed.tar"), "SourceFilePathList": ["/data/media/0"]}),
    );
    let killed = v["Data"][0]["TaskId"].as_str().unwrap().to_string();
    d.wait(&killed, &["Processing"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.task(&killed)["Progress"]["TransferredBytes"].as_u64().unwrap_or(0) < 20 << 20 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (config, _) = d.kill();
    let d = Daemon::spawn(g, config.clone(), dir.path());
    let t = d.task(&killed);
    assert_eq!(t["TaskStatus"], "Failed", "{t}");
    assert_eq!(t["ErrorCode"], "AgentRestarted");
    let store = g.store(&bucket);
    assert!(store.open_uploads("").unwrap().is_empty(), "multipart upload left open after the restart");
    use cpbackup::store::Store;
    assert!(store.get("killed.tar").unwrap().is_none(), "partial object under the final key");
    let m: Value = serde_json::from_slice(&store.get("killed.tar.manifest.json").unwrap().unwrap()).unwrap();
    assert_eq!(m["Status"], "BACKUP_FAILED", "{m}");
    cp.wait_for(&killed, "Failed");

    // Kill during a restore: afterwards the data is the old data, whole, and no staging is left.
    let before = tree::snapshot(&root, "data/media");
    let (_, v) = d.post(
        "/ecp/RecoveryFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("oss://{bucket}/good.tar.zst")}),
    );
    let rt = v["Data"][0]["TaskId"].as_str().unwrap().to_string();
    d.wait(&rt, &["Processing"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.task(&rt)["Progress"]["Bytes"].as_u64().unwrap_or(0) < 10 << 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (config, _) = d.kill();
    let d = Daemon::spawn(g, config, dir.path());
    let t = d.task(&rt);
    assert!(t["TaskStatus"] == "Failed" || t["TaskStatus"] == "Finished", "{t}");
    tree::assert_same(&before, &tree::snapshot(&root, "data/media"), Ignore::default());
    for e in std::fs::read_dir(root.join("data")).unwrap() {
        let n = e.unwrap().file_name();
        assert!(!n.to_string_lossy().starts_with(".cpbackup-"), "staging left: {n:?}");
    }
    drop(d);
}

#[test]
fn sigterm_lets_running_tasks_end_within_the_deadline() {
    let g = garage::shared();
    let bucket = g.bucket("daemon-term");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    app_tree(&root, 200);
    // A deadline shorter than the backup: the task is cancelled, cleanly.
    let extra = format!("endpoint = \"{}\"\nregion = \"garage\"\nshutdown_deadline_secs = 0\n", g.endpoint());
    let cfg = dir.path().join("cpbackup.toml");
    let d = Daemon::start(g, dir.path(), &root, "", &extra.replace("shutdown_deadline_secs = 0\n", ""));
    drop(d);
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace("shutdown_deadline_secs = 5", "shutdown_deadline_secs = 0");
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::spawn(g, cfg.clone(), dir.path());
    let (_, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("oss://{bucket}/t/"), "SourceFilePathList": ["/data/media/0"]}),
    );
    let id = v["Data"][0]["TaskId"].as_str().unwrap().to_string();
    d.wait(&id, &["Processing"]);
    let status = d.term();
    assert!(status.success(), "exit status {status:?}");
    // After a restart the task is settled by the shutdown itself, not by crash recovery.
    let d = Daemon::spawn(g, cfg, dir.path());
    let t = d.task(&id);
    assert!(t["TaskStatus"] == "Finished" || (t["TaskStatus"] == "Failed" && t["ErrorCode"] == "Cancelled"), "{t}");
    assert!(g.store(&bucket).open_uploads("").unwrap().is_empty(), "multipart upload left open");
}

#[test]
fn backup_app_and_recover_app_onto_another_phone() {
    use crate::android::{path_env, phone_with_notes, require_tools, Phone, NOTES};
    require_tools();
    let g = garage::shared();
    let bucket = g.bucket("daemon-apps");
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _, _) = phone_with_notes(tmp.path());
    let extra = format!("endpoint = \"{}\"\nregion = \"garage\"\n", g.endpoint());
    let dir_a = tmp.path().join("agent-a");
    std::fs::create_dir_all(&dir_a).unwrap();
    let d = Daemon::start(g, &dir_a, &a.root, "", &extra);
    drop(d);
    let envs = |p: &Phone| vec![("PATH", path_env()), ("FAKEROID_ROOT", p.root.display().to_string())];
    let d = Daemon::spawn_env(g, dir_a.join("cpbackup.toml"), &dir_a, &envs(&a));
    let (code, v) = d.post(
        "/ecp/BackupApp",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("oss://{bucket}/apps/"), "SourceAppList": [NOTES], "UploadEndpoint": g.endpoint()}),
    );
    assert_eq!(code, 200, "{v}");
    let bf = v["Data"][0]["BackupFileId"].as_str().unwrap().to_string();
    let t = d.wait(v["Data"][0]["TaskId"].as_str().unwrap(), &["Finished", "PartFinished", "Failed"]);
    assert_eq!(t["TaskStatus"], "Finished", "{t}");
    let m: Value = serde_json::from_str(t["Result"].as_str().unwrap()).unwrap();
    assert_eq!(m["SourceAppInfoList"], json!([NOTES]));
    assert_eq!(m["Format"], "ab");
    drop(d);

    // Phone B: a different uid for the fresh install.
    let b = Phone::new(10250, 33, "arm64-v8a,armeabi-v7a,armeabi");
    let dir_b = tmp.path().join("agent-b");
    std::fs::create_dir_all(&dir_b).unwrap();
    let d = Daemon::start(g, &dir_b, &b.root, "", &extra);
    drop(d);
    let d = Daemon::spawn_env(g, dir_b.join("cpbackup.toml"), &dir_b, &envs(&b));
    let (code, v) = d.post(
        "/ecp/RecoverApp",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("oss://{bucket}/apps/"), "BackupFileId": bf, "UploadType": "OSS"}),
    );
    assert_eq!(code, 200, "{v}");
    let t = d.wait(v["Data"][0]["TaskId"].as_str().unwrap(), &["Finished", "PartFinished", "Failed"]);
    assert_eq!(t["TaskStatus"], "Finished", "{t}");
    let note = b.p("data/data/com.example.notes/files/sub/note.txt");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "remember the milk\n");
    if crate::support::tree::is_root() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&note).unwrap().uid(), 10250, "owner from the fresh install");
    }
}
