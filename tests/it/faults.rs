//! Network faults between the agent and Garage (issue 8), through `support::faultproxy`:
//! connections reset mid-request, answers cut short, stalls the agent must notice by itself,
//! and 500 / 503 SlowDown answers, on every kind of request. Within the retry budget, exports,
//! imports, backup-apps and recover-apps of 200 MiB succeed with the SHA-256 verified; beyond
//! it they fail with the reason, leaving no multipart upload open, no object under the final
//! key, a BACKUP_FAILED manifest, and the data already on the phone untouched.

use std::fs;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::android::{self, Phone, NOTES};
use crate::support::daemon::{Daemon, INSTANCE};
use crate::support::faultproxy::{dies_after, every, in_turn, Fault, Proxy, Request};
use crate::support::garage::{self, Garage};
use crate::support::tree::{self, Ignore};
use crate::support::{json, run, stderr, Cli};

const MIB: usize = 1 << 20;

/// Retry quickly, and count a request that moves nothing for 2 s as failed: the faults below
/// then cost seconds, not minutes. Budget: 5 attempts a request.
fn with_fast_retries(c: &mut Command, proxy: &Proxy) {
    c.env("CPBACKUP_ENDPOINT", proxy.endpoint())
        .env("CPBACKUP_RETRY_ATTEMPTS", "5")
        .env("CPBACKUP_RETRY_BASE_MS", "20")
        .env("CPBACKUP_STALL_SECS", "2")
        .env("RUST_LOG", "warn");
}

/// The faults of a flaky network, in turn.
fn flaky() -> Vec<Fault> {
    vec![
        Fault::Reset { after: 0 },
        Fault::Status(503, "SlowDown"),
        Fault::Cut { after: 100 },
        Fault::Status(500, "InternalError"),
        Fault::Stall { after: 0, secs: 15 },
        Fault::Reset { after: 200 },
    ]
}

/// A download that keeps breaking: the GETs of `key` meet, in turn, a cut, a reset and a
/// stall in the middle of the body, and a SlowDown, twice over.
fn flaky_download(key: &'static str) -> impl Fn(&Request) -> Fault + Send + Sync + 'static {
    let body = [
        Fault::Cut { after: 7 * MIB as u64 },
        Fault::Reset { after: 3 * MIB as u64 },
        Fault::Stall { after: 5 * MIB as u64, secs: 15 },
        Fault::Status(503, "SlowDown"),
    ];
    in_turn(move |r| r.gets(key), body.iter().chain(body.iter()).copied().collect())
}

fn any(_: &Request) -> bool {
    true
}

fn sha256_file(p: &Path) -> String {
    let mut h = Sha256::new();
    std::io::copy(&mut fs::File::open(p).unwrap(), &mut h).unwrap();
    hex::encode(h.finalize())
}

fn stored_manifest(g: &Garage, bucket: &str, key: &str) -> serde_json::Value {
    use cpbackup::store::Store;
    let bytes = g.store(bucket).get(&format!("{key}.manifest.json")).unwrap().expect("a manifest");
    serde_json::from_slice(&bytes).unwrap()
}

/// Nothing half-done in the bucket: no open multipart upload, and, for a failed backup, no
/// object under the final key.
fn assert_clean_bucket(g: &Garage, bucket: &str, failed_key: Option<&str>) {
    let store = g.store(bucket);
    assert!(store.open_uploads("").unwrap().is_empty(), "a multipart upload was left open");
    if let Some(key) = failed_key {
        assert!(store.head(key).unwrap().is_none(), "a partial object is under {key}");
    }
}

/// The same check through the agent (and without the proxy): `verify` recomputes the SHA-256.
fn assert_verifies(g: &Garage, url: &str, sha: &serde_json::Value) {
    let v = json(&run(g.cpbackup().args(["verify", "--from", url, "--json"]), 0));
    assert_eq!(v["ChecksumVerified"], true, "{v}");
    assert_eq!(&v["Sha256"], sha);
}

#[test]
fn faults_within_the_budget_export_and_import_200_mib() {
    let g = garage::shared();
    let bucket = g.bucket("faults-ok");
    let src = tempfile::tempdir().unwrap();
    tree::random_files(&src.path().join("data/media/0/big"), 20, 10 * MIB, 81);
    let url = format!("s3://{bucket}/big.tar.zst");

    // Every 4th request of any kind meets a fault: parts, the manifest PUTs, the multipart
    // create and complete calls, the HEADs.
    let proxy = Proxy::start(g.nodes[0].s3_port, every(4, any, flaky()));
    let mut c = g.cpbackup();
    with_fast_retries(&mut c, &proxy);
    c.export(src.path(), &["/data/media/0"], &url).arg("--json");
    let m = json(&run(&mut c, 0));
    assert_eq!(m["Status"], "AVAILABLE");
    assert!(m["ArchiveSize"].as_u64().unwrap() >= 200 * MIB as u64, "{m}");
    let faults = proxy.faults();
    assert!(faults.len() >= 10, "only {} faults were injected", faults.len());
    assert!(faults.iter().any(|(r, _)| r.is_part()), "no part met a fault");
    for kind in [|f: &Fault| matches!(f, Fault::Stall { .. }), |f: &Fault| matches!(f, Fault::Reset { .. })] {
        assert!(proxy.count(kind) >= 1, "a kind of fault never happened: {faults:?}");
    }
    assert_clean_bucket(g, &bucket, None);
    assert_eq!(stored_manifest(g, &bucket, "big.tar.zst"), m);
    assert_verifies(g, &url, &m["Sha256"]);

    // The download: every other GET of the archive breaks somewhere in its body, and is
    // resumed from the byte it reached.
    let proxy = Proxy::start(g.nodes[0].s3_port, flaky_download("big.tar.zst"));
    let dst = tempfile::tempdir().unwrap();
    let mut c = g.cpbackup();
    with_fast_retries(&mut c, &proxy);
    c.import(dst.path(), &url).arg("--json");
    let out = run(&mut c, 0);
    let r = json(&out);
    assert_eq!(r["ChecksumVerified"], true);
    assert_eq!(r["Sha256"], m["Sha256"]);
    assert_eq!(proxy.faults().len(), 8, "the download met only {:?}", proxy.faults());
    assert!(stderr(&out).contains("resuming at byte"), "{}", stderr(&out));
    tree::assert_same(
        &tree::snapshot(src.path(), "data/media/0"),
        &tree::snapshot(dst.path(), "data/media/0"),
        Ignore { xattrs: true, ..Default::default() },
    );
}

#[test]
fn faults_beyond_the_budget_fail_cleanly_and_keep_the_data() {
    let g = garage::shared();
    let bucket = g.bucket("faults-over");
    let src = tempfile::tempdir().unwrap();
    tree::random_files(&src.path().join("data/media/0/big"), 4, 6 * MIB, 82);

    // Export: from the third part on, the store answers SlowDown to every part.
    let third_on = |r: &Request| r.part_number().is_some_and(|n| n >= 3);
    let proxy = Proxy::start(g.nodes[0].s3_port, every(1, third_on, vec![Fault::Status(503, "SlowDown")]));
    let url = format!("s3://{bucket}/over.tar.zst");
    let mut c = g.cpbackup();
    with_fast_retries(&mut c, &proxy);
    c.export(src.path(), &["/data/media/0"], &url);
    let out = run(&mut c, 1);
    let e = stderr(&out);
    assert!(e.contains("SlowDown") && e.contains("5 attempts"), "the reason and the budget: {e}");
    let m = stored_manifest(g, &bucket, "over.tar.zst");
    assert_eq!(m["Status"], "BACKUP_FAILED");
    assert!(m["FailureReason"].as_str().unwrap().contains("SlowDown"), "{m}");
    assert_clean_bucket(g, &bucket, Some("over.tar.zst"));

    // Import: a good archive, but every GET of it after the first is reset. The tree already
    // at the destination stays as it was, and no staging is left.
    let good = format!("s3://{bucket}/good.tar.zst");
    let m = json(&run(g.cpbackup().export(src.path(), &["/data/media/0"], &good).arg("--json"), 0));
    let dst = tempfile::tempdir().unwrap();
    let b = tree::Builder::new(dst.path());
    b.file("data/media/0/big/blob0.bin", b"the phone's own copy");
    b.file("data/media/0/keep.txt", b"precious");
    let before = tree::snapshot(dst.path(), "data");
    let proxy = Proxy::start(g.nodes[0].s3_port, dies_after("good.tar.zst", 4 * MIB as u64));
    let mut c = g.cpbackup();
    with_fast_retries(&mut c, &proxy);
    c.import(dst.path(), &good);
    let out = run(&mut c, 1);
    let e = stderr(&out);
    assert!(e.contains("GetObject") && e.contains(&good), "names the request that failed: {e}");
    tree::assert_same(&before, &tree::snapshot(dst.path(), "data"), Ignore::default());
    assert_no_staging(dst.path());
    let after = stored_manifest(g, &bucket, "good.tar.zst");
    assert_eq!(after["Status"], "RECOVERY_FAILED", "{after}");
    assert!(after["FailureReason"].as_str().unwrap().contains("GetObject"), "{after}");
    assert_verifies(g, &good, &m["Sha256"]);
}

/// No `.cpbackup-*` staging directory left anywhere under `root` (two levels deep).
fn assert_no_staging(root: &Path) {
    for dir in [root.to_path_buf(), root.join("data"), root.join("data/media"), root.join("data/media/0")] {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name();
            assert!(!n.to_string_lossy().starts_with(".cpbackup-"), "staging left in {}: {n:?}", dir.display());
        }
    }
}

/// A `cpbackup` command on `phone`, for the store behind `proxy`.
fn on_phone(g: &Garage, phone: &Phone, proxy: &Proxy) -> Command {
    let mut c = g.cpbackup();
    c.env("PATH", android::path_env()).env("FAKEROID_ROOT", &phone.root);
    with_fast_retries(&mut c, proxy);
    c
}

#[test]
fn faults_within_the_budget_backup_app_and_recover_app_200_mib() {
    android::require_tools();
    let g = garage::shared();
    let bucket = g.bucket("faults-app");
    let tmp = tempfile::tempdir().unwrap();
    let (a, ..) = android::phone_with_notes(tmp.path());
    let big = a.p("data/data/com.example.notes/files/media");
    tree::random_files(&big, 20, 10 * MIB, 83);
    let want = sha256_file(&big.join("blob7.bin"));
    let url = format!("s3://{bucket}/notes.ab");

    let proxy = Proxy::start(g.nodes[0].s3_port, every(4, any, flaky()));
    let mut c = on_phone(g, &a, &proxy);
    c.backup_app(&a.root, &[NOTES], &url).arg("--json");
    let m = json(&run(&mut c, 0));
    assert_eq!(m["Status"], "AVAILABLE");
    assert!(m["ArchiveSize"].as_u64().unwrap() >= 200 * MIB as u64, "{m}");
    assert!(proxy.faults().len() >= 10, "only {:?}", proxy.faults());
    assert_clean_bucket(g, &bucket, None);
    assert_verifies(g, &url, &m["Sha256"]);

    // Onto another phone, through a download that keeps breaking.
    let b = Phone::new(10300, 33, "arm64-v8a,armeabi-v7a,armeabi");
    let proxy = Proxy::start(g.nodes[0].s3_port, flaky_download("notes.ab"));
    let mut c = on_phone(g, &b, &proxy);
    c.recover_app(&b.root, &url).arg("--json");
    let out = run(&mut c, 0);
    let r = json(&out);
    assert_eq!(proxy.faults().len(), 8, "the download met only {:?}", proxy.faults());
    assert!(r.to_string().contains(NOTES), "{r}");
    let got = b.p("data/data/com.example.notes/files/media/blob7.bin");
    assert_eq!(sha256_file(&got), want, "the app's data came back whole");
    assert_eq!(fs::read_dir(got.parent().unwrap()).unwrap().count(), 20);
}

#[test]
fn faults_beyond_the_budget_in_recover_app_keep_the_installed_app() {
    android::require_tools();
    let g = garage::shared();
    let bucket = g.bucket("faults-app-over");
    let tmp = tempfile::tempdir().unwrap();
    let (a, ..) = android::phone_with_notes(tmp.path());
    tree::random_files(&a.p("data/data/com.example.notes/files/media"), 2, 8 * MIB, 84);
    let url = format!("s3://{bucket}/notes.ab");
    let pass = Proxy::start(g.nodes[0].s3_port, |_: &Request| Fault::Pass);
    let mut c = on_phone(g, &a, &pass);
    c.backup_app(&a.root, &[NOTES], &url);
    run(&mut c, 0);

    // The same phone, its app changed since: a recovery that cannot finish must leave it so.
    fs::write(a.p("data/data/com.example.notes/files/sub/note.txt"), "newer note\n").unwrap();
    let app = "data/data/com.example.notes";
    let before = tree::snapshot(&a.root, app);
    let proxy = Proxy::start(g.nodes[0].s3_port, dies_after("notes.ab", 2 * MIB as u64));
    let mut c = on_phone(g, &a, &proxy);
    c.recover_app(&a.root, &url);
    let out = run(&mut c, 1);
    assert!(stderr(&out).contains("GetObject"), "{}", stderr(&out));
    tree::assert_same(&before, &tree::snapshot(&a.root, app), Ignore::default());
    assert_no_staging(&a.p("data/data"));
    let m = stored_manifest(g, &bucket, "notes.ab");
    assert_eq!(m["Status"], "RECOVERY_FAILED", "{m}");
    assert!(m["FailureReason"].as_str().unwrap().contains("GetObject"), "{m}");
}

/// The daemon behind the same faults: its tasks end Failed with the reason, the manifests say
/// BACKUP_FAILED / RECOVERY_FAILED, nothing is left open, the phone's data is unchanged.
#[test]
fn faults_beyond_the_budget_fail_daemon_tasks_with_the_reason() {
    android::require_tools();
    let g = garage::shared();
    let bucket = g.bucket("faults-daemon");
    let tmp = tempfile::tempdir().unwrap();
    let (a, ..) = android::phone_with_notes(tmp.path());
    tree::random_files(&a.p("data/data/com.example.notes/files/media"), 3, 6 * MIB, 85);
    let apps = format!("s3://{bucket}/notes.ab");
    let pass = Proxy::start(g.nodes[0].s3_port, |_: &Request| Fault::Pass);
    let mut c = on_phone(g, &a, &pass);
    run(c.backup_app(&a.root, &[NOTES], &apps), 0);

    // Parts from the second on meet SlowDown; GETs of the archive die after 2 MiB.
    let key = |r: &Request| r.part_number().is_some_and(|n| n >= 2);
    let slow = every(1, key, vec![Fault::Status(503, "SlowDown")]);
    let dies = dies_after("notes.ab", 2 * MIB as u64);
    let proxy = Proxy::start(g.nodes[0].s3_port, move |r: &Request| match slow(r) {
        Fault::Pass => dies(r),
        f => f,
    });
    let dir = tmp.path().join("agent");
    fs::create_dir_all(&dir).unwrap();
    let extra = format!("endpoint = \"{}\"\nregion = \"garage\"\n", proxy.endpoint());
    drop(Daemon::start(g, &dir, &a.root, "", &extra));
    let envs = [
        ("CPBACKUP_ENDPOINT", proxy.endpoint()),
        ("PATH", android::path_env()),
        ("FAKEROID_ROOT", a.root.display().to_string()),
        ("CPBACKUP_RETRY_ATTEMPTS", "4".to_string()),
        ("CPBACKUP_RETRY_BASE_MS", "20".to_string()),
        ("CPBACKUP_STALL_SECS", "2".to_string()),
    ];
    let d = Daemon::spawn_env(g, dir.join("cpbackup.toml"), &dir, &envs);
    let app = "data/data/com.example.notes";
    let before = tree::snapshot(&a.root, app);
    let post = |path: &str, body: serde_json::Value| {
        let mut body = body;
        body["AndroidInstanceIdList"] = serde_json::json!([INSTANCE]);
        let (code, v) = d.post(path, body);
        assert_eq!(code, 200, "{v}");
        let t = d.wait(v["Data"][0]["TaskId"].as_str().unwrap(), &["Finished", "Failed", "PartFinished"]);
        assert_eq!(t["TaskStatus"], "Failed", "{t}");
        t
    };

    let t = post(
        "/ecp/BackupFile",
        serde_json::json!({"BackupFilePath": format!("oss://{bucket}/files.tar.zst"), "SourceFilePathList": ["/data/data/com.example.notes"]}),
    );
    assert!(t["ErrorMsg"].as_str().unwrap().contains("SlowDown"), "{t}");
    let m = stored_manifest(g, &bucket, "files.tar.zst");
    assert_eq!(m["Status"], "BACKUP_FAILED", "{m}");
    assert!(m["FailureReason"].as_str().unwrap().contains("SlowDown"), "{m}");
    assert_clean_bucket(g, &bucket, Some("files.tar.zst"));

    let t = post("/ecp/RecoverApp", serde_json::json!({"BackupFilePath": apps.replace("s3://", "oss://")}));
    assert!(t["ErrorMsg"].as_str().unwrap().contains("GetObject"), "{t}");
    assert_eq!(stored_manifest(g, &bucket, "notes.ab")["Status"], "RECOVERY_FAILED");
    tree::assert_same(&before, &tree::snapshot(&a.root, app), Ignore::default());
    assert_no_staging(&a.p("data/data"));
}
