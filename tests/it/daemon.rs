//! The daemon through real HTTP on port 0, against Garage and a fake phone root: the vendors'
//! request shapes, a small control plane that checks signed callbacks (and refuses some, to
//! exercise the outbox), cancellation, and SIGKILL in the middle of an upload and a restore.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::daemon::{answer, ControlPlane, Daemon, INSTANCE, SECRET, TOKEN};
use crate::support::garage;
use crate::support::path_str;
use crate::support::tree::{self, Ignore};

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
    // Again with every log line there is, for the secrets check at the end: this run uses the
    // token, the callback secret and the store's credentials.
    drop(d);
    let d = Daemon::spawn_env(g, dir.path().join("cpbackup.toml"), dir.path(), &[("RUST_LOG", "trace".into())]);

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
    let log = d.log.clone();
    assert!(d.term().success(), "SIGTERM ends the daemon cleanly");
    assert!(cp.bad().is_empty(), "callbacks refused: {:?}", cp.bad());
    assert_no_secrets_in_log(&log, &[]);
}

/// The daemon's log (stderr, at the level the run was given) holds none of the secrets it used:
/// the API token, the callback secret, the store's secret key, and `more`. The log must hold
/// debug or trace lines, or the check would prove nothing.
fn assert_no_secrets_in_log(log: &Path, more: &[&str]) {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("DEBUG") || text.contains("TRACE"), "the log is not verbose:\n{text}");
    for secret in [TOKEN, SECRET, garage::SECRET].iter().chain(more) {
        if let Some(i) = text.find(secret) {
            let from = (0..=i.saturating_sub(300)).rev().find(|k| text.is_char_boundary(*k)).unwrap_or(0);
            panic!("secret {secret:?} in the log:\n{}", &text[from..i + secret.len()]);
        }
    }
}

#[test]
fn authentication_limits_and_errors_in_the_vendors_shapes() {
    let g = garage::shared();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    app_tree(&root, 0);
    // Callbacks go to a control plane that checks their signature with SECRET, while this
    // daemon signs with another secret: every one must be refused. The daemon logs everything.
    const WRONG_SECRET: &str = "not-the-callback-secret-987";
    let cp = ControlPlane::start(0);
    drop(Daemon::start(g, dir.path(), &root, &cp.url, "body_limit = 4096\n"));
    let d = Daemon::spawn_env(
        g,
        dir.path().join("cpbackup.toml"),
        dir.path(),
        &[("RUST_LOG", "trace".into()), ("CPBACKUP_CALLBACK_SECRET", WRONG_SECRET.into())],
    );
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
    // Every protected route, every way of getting the token wrong: 401, and nothing done.
    let (_, v) = d.post("/ecp/DescribeTasks", json!({}));
    let tasks_before = v["TotalCount"].clone();
    let routes = [
        ("POST", "/ecp/BackupFile"),
        ("POST", "/ecp/RecoveryFile"),
        ("POST", "/ecp/DescribeTasks"),
        ("POST", "/cph/batch-storage"),
        ("POST", "/cph/batch-restore"),
        ("GET", "/cph/jobs/j-1"),
        ("GET", "/cph/jobs"),
        ("GET", "/tasks/t-1"),
        ("DELETE", "/tasks/t-1"),
        ("GET", "/metrics"),
    ];
    let wrong = [
        None,
        Some(String::new()),
        Some("Bearer".to_string()),
        Some("Bearer ".to_string()),
        Some(TOKEN.to_string()),
        Some(format!("bearer {TOKEN}")),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer  {TOKEN}")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {}", TOKEN.to_uppercase())),
    ];
    let body = json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": "oss://bkt/x/", "SourceFilePathList": ["/data/data"],
        "storage_infos": [{"phone_id": INSTANCE, "include_files": ["/data/data"], "bucket_name": "bkt", "object_path": "x.tar"}]});
    for (method, path) in routes {
        for auth in &wrong {
            let mut req = ureq::request(method, &format!("{}{path}", d.base));
            if let Some(a) = auth {
                req = req.set("Authorization", a);
            }
            let (code, v) = answer(if method == "POST" { req.send_json(body.clone()) } else { req.call() });
            assert_eq!(code, 401, "{method} {path} with {auth:?}: {v}");
            let shape = if path.starts_with("/cph") { &v["error_code"] } else { &v["Code"] };
            assert!(shape.is_string(), "{method} {path}: the vendor's error shape: {v}");
        }
    }
    let (_, v) = d.post("/ecp/DescribeTasks", json!({}));
    assert_eq!(v["TotalCount"], tasks_before, "a request refused with 401 still made a task: {v}");
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
    // The command line's rules are checked on the request: 400 naming the field and the
    // rule, and no task made.
    let (_, v) = d.post("/ecp/DescribeTasks", json!({}));
    let tasks_before = v["TotalCount"].clone();
    for (body, field, rule) in [
        (
            json!({"SourceFilePathList": ["/data/data", "/etc/passwd"]}),
            "SourceFilePathList[1]",
            "only paths under /data",
        ),
        (
            json!({"SourceFilePathList": ["/data"], "ExcludeSourceFilePathList": ["cache"]}),
            "ExcludeSourceFilePathList[0]",
            "absolute",
        ),
        (
            json!({"SourceFilePathList": ["/data"], "BackupFileName": "my backup"}),
            "BackupFileName",
            "not a valid object path",
        ),
    ] {
        let mut body = body;
        body["AndroidInstanceIdList"] = json!([INSTANCE]);
        body["BackupFilePath"] = json!("oss://bkt/x/");
        let (code, v) = d.post("/ecp/BackupFile", body);
        assert_eq!((code, &v["Code"]), (400, &json!("InvalidParameter")), "{v}");
        let msg = v["Message"].as_str().unwrap();
        assert!(msg.starts_with(field) && msg.contains(rule), "{field}, {rule}: {v}");
    }
    let (code, v) = d.post(
        "/cph/batch-storage",
        json!({"storage_infos": [{"phone_id": INSTANCE, "include_files": ["/system/app"], "bucket_name": "bkt", "object_path": "x.tar"}]}),
    );
    assert_eq!((code, &v["error_code"]), (400, &json!("CPS.0002")), "{v}");
    assert!(v["error_msg"].as_str().unwrap().starts_with("storage_infos[0].include_files[0]: "), "{v}");
    let (_, v) = d.post("/ecp/DescribeTasks", json!({}));
    assert_eq!(v["TotalCount"], tasks_before, "a refused request made a task: {v}");
    // Whether a path exists is the task's to find out when it runs.
    let (code, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": "oss://bkt/x/", "SourceFilePathList": ["/data/not-here"]}),
    );
    assert_eq!(code, 200, "accepted; the task itself fails on the missing path: {v}");
    let t = d.wait(v["Data"][0]["TaskId"].as_str().unwrap(), &["Failed"]);
    assert_eq!(t["ErrorCode"], "InvalidParameter");
    assert!(t["ErrorMsg"].as_str().unwrap().contains("/data/not-here"), "{t}");
    // That task's status callbacks, signed with the wrong secret, were refused by the control
    // plane's own check: it does check.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cp.bad().is_empty() {
        assert!(Instant::now() < deadline, "no callback reached the control plane");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cp.bad()[0].starts_with("signature"), "{:?}", cp.bad());
    assert!(cp.events().is_empty(), "a wrongly signed callback was accepted: {:?}", cp.events());
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
    // Secrets never reach the log, even at trace level; the journal is private: the state
    // directory and the journal's directories 0700, every task and undelivered event 0600.
    drop(d);
    assert_no_secrets_in_log(&dir.path().join("daemon.log"), &[WRONG_SECRET]);
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("HTTP 401"), "the refused callbacks ran while logging:\n{log}");
    assert!(
        log.contains("cpbackup.toml holds a secret and is open to other users (mode 0644): chmod 600"),
        "no warning about the config others can read:\n{log}"
    );
    let journal = dir.path().join("state/journal");
    let entries = walk(&journal);
    let files = |sub: &str| entries.iter().filter(|p| p.starts_with(journal.join(sub)) && p.is_file()).count();
    assert!(files("tasks") >= 1 && files("outbox") >= 1, "nothing to check: {entries:?}");
    for entry in std::iter::once(dir.path().join("state")).chain(entries) {
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

    // A request is checked whole before any of its jobs starts: a bad second info of this phone
    // fails it, and its good first info does not run.
    let tasks = |d: &Daemon| d.post("/ecp/DescribeTasks", json!({})).1["TotalCount"].as_u64().unwrap();
    let before = tasks(&d);
    let (code, v) = d.post(
        "/cph/batch-storage",
        json!({"storage_infos": [
            {"phone_id": INSTANCE, "include_files": ["/data/data"], "bucket_name": bucket, "object_path": "cph/first.tar"},
            {"phone_id": INSTANCE, "include_files": ["/data/data"], "bucket_name": "Bad_Bucket", "object_path": "cph/second.tar"}
        ]}),
    );
    assert_eq!((code, &v["error_code"]), (400, &json!("CPS.0002")), "{v}");
    assert!(v["error_msg"].as_str().unwrap().starts_with("storage_infos[1]: "), "{v}");
    assert_eq!(tasks(&d), before, "no job of a refused request was started");

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

/// A record and an archive in the bucket, as an earlier run would have left them.
fn seed(store: &dyn cpbackup::store::Store, key: &str, instance: &str, schedule: &str, created: &str, status: &str) {
    let m = json!({
        "BackupFileId": format!("bf-{}", key.replace(['/', '.', '_'], "-")),
        "BackupFileName": key.rsplit('/').next().unwrap(),
        "AndroidInstanceId": instance,
        "ScheduleId": schedule,
        "Status": status,
        "GmtCreated": created,
        "GmtModified": created,
        "BackupFilePath": key,
    });
    store.put(key, b"an archive").unwrap();
    store.put(&format!("{key}.manifest.json"), m.to_string().as_bytes()).unwrap();
}

fn schedule(d: &Daemon, id: &str) -> Value {
    let (code, v) = d.get("/schedules");
    assert_eq!(code, 200, "{v}");
    v["Schedules"].as_array().unwrap().iter().find(|s| s["id"] == id).cloned().unwrap_or(Value::Null)
}

/// Wait until the schedule's last run is another than `not`; that run's task id.
fn next_run(d: &Daemon, id: &str, not: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let s = schedule(d, id);
        let t = s["last_task_id"].as_str().unwrap_or("").to_string();
        if !t.is_empty() && t != not {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "schedule {id} did not run within {within:?}: {s}; log:\n{}",
            std::fs::read_to_string(&d.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn schedules_run_on_time_forget_after_success_only_and_survive_a_restart() {
    use cpbackup::store::Store;
    let g = garage::shared();
    let bucket = g.bucket("daemon-sched");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    app_tree(&root, 0);
    let store = g.store(&bucket);
    // Earlier backups of the schedule (the two oldest go with keep.last = 2), and records
    // retention must leave alone: another schedule's, a failed one, another phone's.
    for day in 1..=3 {
        let key = format!("sched/{INSTANCE}_2026010{day}030000.tar.zst");
        seed(&store, &key, INSTANCE, "every-minute", &format!("2026-01-0{day} 03:00:00"), "AVAILABLE");
    }
    seed(
        &store,
        &format!("sched/{INSTANCE}_20251201030000.tar.zst"),
        INSTANCE,
        "other",
        "2025-12-01 03:00:00",
        "AVAILABLE",
    );
    seed(
        &store,
        &format!("sched/{INSTANCE}_20251202030000.tar.zst"),
        INSTANCE,
        "every-minute",
        "2025-12-02 03:00:00",
        "BACKUP_FAILED",
    );
    seed(
        &store,
        "sched/acp-other_20251203030000.tar.zst",
        "acp-other",
        "every-minute",
        "2025-12-03 03:00:00",
        "AVAILABLE",
    );
    for day in 1..=2 {
        let key = format!("failing/{INSTANCE}_2026010{day}030000.tar.zst");
        seed(&store, &key, INSTANCE, "failing", &format!("2026-01-0{day} 03:00:00"), "AVAILABLE");
    }
    let extra = format!(
        "endpoint = \"{}\"\nregion = \"garage\"\n\n\
         [[schedule]]\nid = \"every-minute\"\ncron = \"* * * * *\"\njitter_secs = 0\n\
         body = {{ BackupFilePath = \"oss://{bucket}/sched/\", SourceFilePathList = [\"/data/data/com.example.app\"] }}\n\
         keep = {{ last = 2 }}\n\n\
         [[schedule]]\nid = \"failing\"\ncron = \"* * * * *\"\n\
         body = {{ BackupFilePath = \"oss://{bucket}/failing/\", SourceFilePathList = [\"/data/not-here\"] }}\n\
         keep = {{ last = 1 }}\n",
        g.endpoint()
    );
    let started = Instant::now();
    let d = Daemon::start(g, dir.path(), &root, "", &extra);
    let s = schedule(&d, "every-minute");
    assert_eq!(s["from_config"], true, "{s}");
    assert!(!s["next_run"].as_str().unwrap().is_empty(), "{s}");

    // It fires within a minute of its time, as an ordinary task.
    let first = next_run(&d, "every-minute", "", Duration::from_secs(75));
    assert!(started.elapsed() < Duration::from_secs(75));
    let t = d.wait(&first, &["Finished", "Failed"]);
    assert_eq!(t["TaskStatus"], "Finished", "{t}");
    let m: Value = serde_json::from_str(t["Result"].as_str().unwrap()).unwrap();
    assert_eq!(m["ScheduleId"], "every-minute", "{m}");
    let failed = next_run(&d, "failing", "", Duration::from_secs(30));
    let t = d.wait(&failed, &["Finished", "Failed"]);
    assert_eq!(t["TaskStatus"], "Failed", "{t}");

    // After the run succeeded, retention: the two oldest of this schedule's backups go.
    let gone =
        |key: &str| store.get(&format!("{key}.manifest.json")).unwrap().is_none() && store.get(key).unwrap().is_none();
    let deadline = Instant::now() + Duration::from_secs(75);
    while !(gone(&format!("sched/{INSTANCE}_20260101030000.tar.zst"))
        && gone(&format!("sched/{INSTANCE}_20260102030000.tar.zst")))
    {
        assert!(
            Instant::now() < deadline,
            "no retention after the run; log:\n{}",
            std::fs::read_to_string(&d.log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for key in [
        format!("sched/{INSTANCE}_20251201030000.tar.zst"),
        format!("sched/{INSTANCE}_20251202030000.tar.zst"),
        "sched/acp-other_20251203030000.tar.zst".to_string(),
    ] {
        assert!(!gone(&key), "retention deleted {key}, which is not this schedule's to forget");
    }
    // The failing schedule's retention never ran: a later run of it has started, so its
    // first run's end was seen, and its older backups are all there.
    next_run(&d, "failing", &failed, Duration::from_secs(75));
    for day in 1..=2 {
        assert!(!gone(&format!("failing/{INSTANCE}_2026010{day}030000.tar.zst")), "retention after a failed run");
    }

    // The API: bad requests name the field, config schedules are the config's.
    let body = json!({"BackupFilePath": format!("oss://{bucket}/api/"), "SourceFilePathList": ["/data/data"]});
    let (code, v) = d.post("/schedules", json!({"id": "api-nightly", "cron": "0 3 * *", "body": body}));
    assert_eq!((code, v["Code"].as_str()), (400, Some("InvalidParameter")), "{v}");
    assert!(v["Message"].as_str().unwrap().starts_with("cron: "), "{v}");
    let (code, v) = d.post("/schedules", json!({"id": "api-nightly", "cron": "0 3 * * *", "body": {"BackupFilePath": format!("oss://{bucket}/api/"), "SourceFilePathList": ["/system"]}}));
    assert_eq!(code, 400, "{v}");
    assert!(v["Message"].as_str().unwrap().starts_with("body.SourceFilePathList[0]: "), "{v}");
    let (code, v) = d.post(
        "/schedules",
        json!({"id": "api-nightly", "cron": "0 3 * * *", "jitter_secs": 3600, "body": body, "keep": {"daily": 7}}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["Schedules"][0]["id"], "api-nightly");
    let del = |d: &Daemon, id: &str| {
        answer(
            ureq::delete(&format!("{}/schedules/{id}", d.base)).set("Authorization", &format!("Bearer {TOKEN}")).call(),
        )
    };
    assert_eq!(del(&d, "every-minute").0, 409);
    assert_eq!(del(&d, "no-such").0, 404);

    // Stopped across a minute's time: at the next start the missed run runs at once, once;
    // the schedules made over the API are still there.
    let before = schedule(&d, "every-minute")["last_task_id"].as_str().unwrap().to_string();
    let api = schedule(&d, "api-nightly");
    let (config, _) = d.kill();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    std::thread::sleep(Duration::from_secs(60 - now % 60 + 1));
    let d = Daemon::spawn(g, config, dir.path());
    let missed = next_run(&d, "every-minute", &before, Duration::from_secs(15));
    assert_ne!(missed, before);
    let again = schedule(&d, "api-nightly");
    assert_eq!((&again["cron"], &again["keep"], &again["next_run"]), (&api["cron"], &api["keep"], &api["next_run"]));
    assert_eq!(del(&d, "api-nightly").0, 200);
    assert!(schedule(&d, "api-nightly").is_null());
}

/// A test CA and the PEM files of certificates it signs.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        TestCa { issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap() }
    }

    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.issuer.pem()).unwrap();
        path.to_path_buf()
    }

    /// A certificate for `name` (a server's when `server`, else a client's), valid from
    /// `from` to `to` (years), as (cert.pem, key.pem) under `dir`.
    fn issue(&self, dir: &Path, file: &str, name: &str, server: bool, years: (i32, i32)) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        p.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        p.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (dir.join(format!("{file}.pem")), dir.join(format!("{file}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        (c, k)
    }
}

/// curl, as an operator would use it: the HTTP status, or None when no answer came (the TLS
/// handshake failed), and the body.
fn curl(args: &[&str]) -> (Option<u16>, String) {
    let o = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}: this test needs curl (apt-get install curl)"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (o.status.success().then(|| code.trim().parse().unwrap()), body.to_string())
}

#[test]
fn api_over_tls_with_client_certificates_and_a_reload() {
    let g = garage::shared();
    let bucket = g.bucket("daemon-tls");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    app_tree(&root, 200);
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let server_ca = TestCa::new("cpbackup test server CA");
    let server_ca_pem = server_ca.write(&pki.join("server-ca.pem"));
    let (server_cert, server_key) = server_ca.issue(&pki, "server", "127.0.0.1", true, (2020, 2099));
    let client_ca = TestCa::new("cpbackup test client CA");
    let client_ca_pem = client_ca.write(&pki.join("client-ca.pem"));
    let (client, client_key) = client_ca.issue(&pki, "client", "control-plane", false, (2020, 2099));
    let (expired, expired_key) = client_ca.issue(&pki, "expired", "control-plane", false, (2020, 2021));
    let (stranger, stranger_key) =
        TestCa::new("another CA").issue(&pki, "stranger", "control-plane", false, (2020, 2099));
    let p = |p: &PathBuf| p.to_str().unwrap().to_string();
    let extra = format!(
        "endpoint = \"{}\"\nregion = \"garage\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nclient_ca_file = \"{}\"\nauth = \"mtls\"\n",
        g.endpoint(),
        p(&server_cert),
        p(&server_key),
        p(&client_ca_pem)
    );
    let d = Daemon::start(g, dir.path(), &root, "", &extra);
    let base = d.base.replace("http://", "https://");
    let url = |path: &str| format!("{base}{path}");
    let tasks = url("/ecp/DescribeTasks");
    let with = |cert: &PathBuf, key: &PathBuf, ca: &PathBuf, u: &str| {
        curl(&["--cacert", &p(ca), "--cert", &p(cert), "--key", &p(key), "-d", "{}", u])
    };

    // auth = "mtls": a client certificate from the client CA is the credential.
    let (code, body) = with(&client, &client_key, &server_ca_pem, &tasks);
    assert_eq!(code, Some(200), "{body}");
    assert!(body.contains("\"TotalCount\""), "{body}");
    let (code, body) = curl(&["--cacert", &p(&server_ca_pem), "-d", "{}", &tasks]);
    assert_eq!(code, Some(401), "without a client certificate: {body}");
    assert!(body.contains("client certificate"), "{body}");
    let (code, body) = curl(&["--cacert", &p(&server_ca_pem), &url("/healthz")]);
    assert_eq!((code, body.trim()), (Some(200), "ok"), "/healthz needs no credential");
    assert_eq!(
        with(&expired, &expired_key, &server_ca_pem, &tasks).0,
        None,
        "an expired client certificate is refused"
    );
    assert_eq!(
        with(&stranger, &stranger_key, &server_ca_pem, &tasks).0,
        None,
        "a certificate from another CA is refused"
    );
    assert_eq!(
        curl(&["-d", "{}", &d.base.replace("https://", "http://")]).0.filter(|c| *c < 400),
        None,
        "no plain HTTP"
    );

    // A reload while a backup runs: new connections get the new certificate, the task goes on.
    let backup = format!(
        "{{\"AndroidInstanceIdList\": [\"{INSTANCE}\"], \"BackupFilePath\": \"oss://{bucket}/tls/\", \"SourceFilePathList\": [\"/data/media/0\"]}}"
    );
    let (code, v) = curl(&[
        "--cacert",
        &p(&server_ca_pem),
        "--cert",
        &p(&client),
        "--key",
        &p(&client_key),
        "-d",
        &backup,
        &url("/ecp/BackupFile"),
    ]);
    assert_eq!(code, Some(200), "{v}");
    let v: Value = serde_json::from_str(&v).unwrap();
    let id = v["Data"][0]["TaskId"].as_str().unwrap().to_string();
    let status = |id: &str| {
        let (_, body) = with(&client, &client_key, &server_ca_pem, &tasks);
        let v: Value = serde_json::from_str(&body).unwrap();
        v["Data"].as_array().unwrap().iter().find(|t| t["TaskId"] == id).map(|t| t["TaskStatus"].clone()).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&id) == "Waiting" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let new_ca = TestCa::new("cpbackup test server CA, renewed");
    let new_ca_pem = new_ca.write(&pki.join("new-ca.pem"));
    let (renewed, renewed_key) = new_ca.issue(&pki, "renewed", "127.0.0.1", true, (2020, 2099));
    std::fs::copy(&renewed, &server_cert).unwrap();
    std::fs::copy(&renewed_key, &server_key).unwrap();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while with(&client, &client_key, &new_ca_pem, &tasks).0 != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served; log:\n{}",
            std::fs::read_to_string(&d.log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(with(&client, &client_key, &server_ca_pem, &tasks).0, None, "the old certificate is no longer served");
    let (_, body) = with(&client, &client_key, &new_ca_pem, &tasks);
    assert!(body.contains(&format!("\"TaskId\":\"{id}\"")), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let t = v["Data"].as_array().unwrap().iter().find(|t| t["TaskId"] == id).cloned().unwrap();
    assert_eq!(t["TaskStatus"], "Processing", "the backup spans the reload: {t}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = with(&client, &client_key, &new_ca_pem, &tasks);
        let v: Value = serde_json::from_str(&body).unwrap();
        let t = v["Data"].as_array().unwrap().iter().find(|t| t["TaskId"] == id).cloned().unwrap();
        if t["TaskStatus"] != "Processing" {
            assert_eq!(t["TaskStatus"], "Finished", "the task ran through the reload: {t}");
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    // A reload that fails keeps what is served.
    std::fs::write(&server_cert, "not a certificate").unwrap();
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(with(&client, &client_key, &new_ca_pem, &tasks).0, Some(200));
    drop(d);
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(
        log.contains("SIGHUP: TLS certificates reloaded") && log.contains("still serving the certificates read before"),
        "{log}"
    );

    // auth = "both": the certificate and the token.
    std::fs::copy(&renewed, &server_cert).unwrap();
    let cfg = dir.path().join("cpbackup.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("auth = \"mtls\"", "auth = \"both\"");
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::spawn(g, cfg.clone(), dir.path());
    let tasks = d.base.replace("http://", "https://") + "/ecp/DescribeTasks";
    let (code, body) = with(&client, &client_key, &new_ca_pem, &tasks);
    assert_eq!(code, Some(401), "a certificate without the token: {body}");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (code, body) = curl(&["--cacert", &p(&new_ca_pem), "-H", &bearer, "-d", "{}", &tasks]);
    assert_eq!(code, Some(401), "the token without a certificate: {body}");
    let (code, body) = curl(&[
        "--cacert",
        &p(&new_ca_pem),
        "--cert",
        &p(&client),
        "--key",
        &p(&client_key),
        "-H",
        &bearer,
        "-d",
        "{}",
        &tasks,
    ]);
    assert_eq!(code, Some(200), "{body}");
    drop(d);

    // Plain HTTP beyond loopback works, with a warning at start.
    let open = dir.path().join("open.toml");
    std::fs::write(
        &open,
        format!("listen = \"0.0.0.0:0\"\ntoken = \"{TOKEN}\"\nstate_dir = \"{}\"\n", dir.path().join("s2").display()),
    )
    .unwrap();
    let log = dir.path().join("open.log");
    let mut child = g
        .cpbackup()
        .args(["daemon", "--config", path_str(&open)])
        .env_remove("CPBACKUP_STATE_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening on 0.0.0.0:"), "{line}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("without TLS"), "no warning for plain HTTP beyond loopback:\n{text}");
}
