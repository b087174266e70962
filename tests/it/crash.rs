//! Crashes (issue 8): the agent killed with SIGKILL at 20 points spread over each of the four
//! operations, from the command line and as the daemon, then started again. Afterwards: no
//! multipart upload open in Garage, no manifest saying AVAILABLE for an archive that does not
//! verify, and the data on the phone either the old or the new, never a mix, never missing.
//!
//! The points are moments, not code locations: a full run is timed first, and the kills land
//! at 2.5%, 7.5%, … 97.5% of it. Each test counts where its kills landed (before the commit
//! point, after it) and insists that both happened, so a change in speed that moved every
//! point to one side fails the test instead of weakening it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::android::{self, Phone, NOTES};
use crate::support::daemon::{Daemon, INSTANCE};
use crate::support::garage::{self, Garage};
use crate::support::tree;
use crate::support::{json as json_of, kill_group, run, Cli};

const POINTS: u32 = 20;
const MIB: usize = 1 << 20;

/// The moments to kill at: POINTS spread evenly over a run that takes `full`.
fn points(full: Duration) -> Vec<Duration> {
    (1..=POINTS).map(|i| full.mul_f64((f64::from(i) - 0.5) / f64::from(POINTS))).collect()
}

/// Kill at POINTS moments spread over a run that took `full`: `kill_at(i, at)` kills run `i` at
/// `at`, checks what it left, and says whether it ended past its commit point. If none did (a
/// loaded machine runs slower than when `full` was timed), up to ten more runs are killed
/// later and later until one does. Asserts the kills landed on both sides.
fn kill_matrix(what: &str, full: Duration, mut kill_at: impl FnMut(usize, Duration) -> bool) {
    let mut landed = Vec::new();
    for (i, at) in points(full).into_iter().enumerate() {
        landed.push(kill_at(i, at));
    }
    let mut late = full;
    for i in POINTS as usize..POINTS as usize + 10 {
        if landed.contains(&true) {
            break;
        }
        late = late.mul_f64(1.5);
        landed.push(kill_at(i, late));
    }
    let after = landed.iter().filter(|past| **past).count();
    let before = landed.len() - after;
    eprintln!("{what}: {before} kills before the commit point, {after} after");
    assert!(before >= 3 && after >= 1, "{what}: the kills did not spread over the run: {before} before, {after} after");
}

/// Run `cmd` to the end twice, asserting success; the shorter time (the first run of a test
/// also warms caches the killed runs find warm).
fn timed(mut cmd: impl FnMut() -> Command) -> Duration {
    (0..2)
        .map(|_| {
            let t = Instant::now();
            run(&mut cmd(), 0);
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Start `cmd` and SIGKILL it `at` later, unless it ended before. True if it was killed.
fn kill_after(cmd: &mut Command, at: Duration) -> bool {
    use std::os::unix::process::CommandExt;
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).process_group(0).spawn().expect("spawn cpbackup");
    let deadline = Instant::now() + at;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return false;
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The state of the backup under `key` after a kill: AVAILABLE only if the archive verifies.
/// Returns whether it is AVAILABLE.
fn check_backup(g: &Garage, bucket: &str, key: &str) -> bool {
    use cpbackup::store::Store;
    let Some(bytes) = g.store(bucket).get(&format!("{key}.manifest.json")).unwrap() else { return false };
    let m: Value = serde_json::from_slice(&bytes).unwrap();
    if m["Status"] != "AVAILABLE" {
        assert!(m["Status"] == "BACKUPING" || m["Status"] == "BACKUP_FAILED", "{key}: {m}");
        return false;
    }
    let v = json_of(&run(g.cpbackup().args(["verify", "--from", &format!("s3://{bucket}/{key}"), "--json"]), 0));
    assert_eq!(v["ChecksumVerified"], true, "{key}: AVAILABLE but {v}");
    assert_eq!(v["Sha256"], m["Sha256"], "{key}");
    true
}

/// Run again after the kills of a backup: the next start leaves nothing open, and none of the
/// killed runs' backups is AVAILABLE without verifying.
fn run_again(g: &Garage, bucket: &str, keys: &[String]) {
    run(g.cpbackup().arg("cleanup"), 0);
    assert!(g.store(bucket).open_uploads("").unwrap().is_empty(), "an upload is still open");
    for key in keys {
        check_backup(g, bucket, key);
    }
}

/// At most the upload of `key` (the run just killed) is open: every start aborts what killed
/// runs left before it.
fn assert_open_at_most(g: &Garage, bucket: &str, key: &str) {
    let open = g.store(bucket).open_uploads("").unwrap();
    assert!(open.iter().all(|(k, _)| k == key), "uploads of earlier killed runs are still open: {open:?}");
}

/// Contents only: kind, mode, bytes, link target of every entry (directory times move when a
/// rename lands in them, and say nothing about which data is there).
type Contents = BTreeMap<Vec<u8>, (char, u32, Option<[u8; 32]>, Option<Vec<u8>>)>;

fn contents(root: &Path, rels: &[&str]) -> Contents {
    let mut out = Contents::new();
    for rel in rels {
        for (k, n) in tree::snapshot(root, rel) {
            out.insert(k, (n.kind, n.mode, n.content, n.link));
        }
    }
    out
}

/// Old or new, never a mix: which one `now` is.
fn old_or_new(now: &Contents, old: &Contents, new: &Contents, what: &str) -> bool {
    if now == new {
        return true;
    }
    if now == old {
        return false;
    }
    let mixed: Vec<String> = now
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(v) || new.get(*k) != Some(v))
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .take(5)
        .collect();
    let missing: Vec<String> =
        new.keys().filter(|k| !now.contains_key(*k)).map(|k| String::from_utf8_lossy(k).into_owned()).take(5).collect();
    panic!("{what}: neither the old data nor the new; differing {mixed:?}, missing {missing:?}");
}

fn assert_no_leftovers(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name();
        assert!(!n.to_string_lossy().starts_with(".cpbackup-"), "left in {}: {n:?}", dir.display());
    }
}

/// Replace `dst` with a copy of `src` (cp -a keeps owners, modes and times).
fn reset(src: &Path, dst: &Path) {
    if dst.exists() {
        fs::remove_dir_all(dst).unwrap();
    }
    let ok = Command::new("cp").arg("-a").arg(src).arg(dst).status().unwrap().success();
    assert!(ok, "cp -a {} {}", src.display(), dst.display());
}

// ---------------------------------------------------------------------------------------------
// The command line.

/// A tree to back up: 30 MiB that does not compress, and some small files.
fn backup_tree(root: &Path, seed: u64) {
    tree::random_files(&root.join("data/media/0/big"), 6, 5 * MIB, seed);
    let b = tree::Builder::new(root);
    for i in 0..200 {
        b.file(&format!("data/data/com.example.app/files/f{i:03}.txt"), format!("file {i} of {seed}\n").as_bytes());
    }
}

#[test]
fn crash_export_at_20_points_then_run_again() {
    let g = garage::shared();
    let bucket = g.bucket("crash-export");
    let src = tempfile::tempdir().unwrap();
    backup_tree(src.path(), 1);
    let export = |key: &str| {
        let mut c = g.cpbackup();
        c.export(src.path(), &["/data/media/0", "/data/data/com.example.app"], format!("s3://{bucket}/{key}"));
        c
    };
    let full = timed(|| export("full.tar.zst"));
    let mut keys = Vec::new();
    kill_matrix("export", full, |i, at| {
        let key = format!("k{i:02}.tar.zst");
        kill_after(&mut export(&key), at);
        assert_open_at_most(g, &bucket, &key);
        keys.push(key.clone());
        check_backup(g, &bucket, &key)
    });
    run_again(g, &bucket, &keys);
}

#[test]
fn crash_import_at_20_points_then_run_again() {
    let g = garage::shared();
    let bucket = g.bucket("crash-import");
    let tmp = tempfile::tempdir().unwrap();
    let (new_src, old, dst, reference) =
        (tmp.path().join("new"), tmp.path().join("old"), tmp.path().join("dst"), tmp.path().join("ref"));
    backup_tree(&new_src, 2);
    let url = format!("s3://{bucket}/new.tar.zst");
    run(g.cpbackup().export(&new_src, &["/data/media/0", "/data/data/com.example.app"], &url), 0);
    // The phone before: the same names with other bytes, and files the archive does not have.
    backup_tree(&old, 3);
    tree::Builder::new(&old).file("data/media/0/only-on-the-phone.txt", b"kept");
    let rels = ["data/media", "data/data"];
    let before = contents(&old, &rels);
    let import = |root: &Path| {
        let mut c = g.cpbackup();
        c.import(root, &url);
        c
    };
    let full = timed(|| {
        reset(&old, &reference);
        import(&reference)
    });
    let after = contents(&reference, &rels);
    assert_ne!(before, after);

    kill_matrix("import", full, |i, at| {
        reset(&old, &dst);
        kill_after(&mut import(&dst), at);
        // Run again: the next start settles what the killed one left.
        run(g.cpbackup().cleanup(&dst), 0);
        assert_no_leftovers(&dst.join("data"));
        old_or_new(&contents(&dst, &rels), &before, &after, &format!("import killed at point {i}"))
    });
}

/// A `cpbackup` command on `phone` for the shared Garage.
fn on_phone(g: &Garage, phone: &Phone) -> Command {
    let mut c = g.cpbackup();
    c.env("PATH", android::path_env()).env("FAKEROID_ROOT", &phone.root);
    c
}

#[test]
fn crash_backup_app_at_20_points_then_run_again() {
    android::require_tools();
    let g = garage::shared();
    let bucket = g.bucket("crash-backup-app");
    let tmp = tempfile::tempdir().unwrap();
    let (a, ..) = android::phone_with_notes(tmp.path());
    tree::random_files(&a.p("data/data/com.example.notes/files/media"), 6, 5 * MIB, 4);
    let app = ["data/data/com.example.notes", "data/user_de/0/com.example.notes"];
    let before = contents(&a.root, &app);
    let backup = |key: &str| {
        let mut c = on_phone(g, &a);
        c.backup_app(&a.root, &[NOTES], format!("s3://{bucket}/{key}"));
        c
    };
    let full = timed(|| backup("full.ab"));
    let mut keys = Vec::new();
    kill_matrix("backup-app", full, |i, at| {
        let key = format!("k{i:02}.ab");
        kill_after(&mut backup(&key), at);
        assert_open_at_most(g, &bucket, &key);
        // A backup reads the app; it never changes it.
        assert_eq!(contents(&a.root, &app), before);
        keys.push(key.clone());
        check_backup(g, &bucket, &key)
    });
    run_again(g, &bucket, &keys);
}

#[test]
fn crash_recover_app_at_20_points_then_run_again() {
    android::require_tools();
    let g = garage::shared();
    let bucket = g.bucket("crash-recover-app");
    let tmp = tempfile::tempdir().unwrap();
    let (a, ..) = android::phone_with_notes(tmp.path());
    let media = a.p("data/data/com.example.notes/files/media");
    tree::random_files(&media, 6, 5 * MIB, 5);
    let url = format!("s3://{bucket}/notes.ab");
    run(on_phone(g, &a).backup_app(&a.root, &[NOTES], &url), 0);

    // The phone's data moves on after the backup: other bytes, a file the archive lacks.
    tree::random_files(&media, 6, 5 * MIB, 6);
    fs::write(a.p("data/data/com.example.notes/files/sub/note.txt"), "a newer note\n").unwrap();
    fs::write(a.p("data/data/com.example.notes/files/written-later.txt"), "later\n").unwrap();
    let app = ["data/data/com.example.notes", "data/user_de/0/com.example.notes"];
    let pristine = tmp.path().join("pristine");
    reset(&a.root, &pristine);
    let before = contents(&a.root, &app);
    let recover = || {
        let mut c = on_phone(g, &a);
        c.recover_app(&a.root, &url);
        c
    };
    let full = timed(|| {
        reset(&pristine, &a.root);
        recover()
    });
    let after = contents(&a.root, &app);
    assert_ne!(before, after);

    kill_matrix("recover-app", full, |i, at| {
        reset(&pristine, &a.root);
        kill_after(&mut recover(), at);
        run(on_phone(g, &a).cleanup(&a.root), 0);
        for parent in ["data/data", "data/user_de/0", "data"] {
            assert_no_leftovers(&a.p(parent));
        }
        old_or_new(&contents(&a.root, &app), &before, &after, &format!("recover-app killed at point {i}"))
    });
}

// ---------------------------------------------------------------------------------------------
// The daemon: the same operations through the ECP API, the daemon killed mid-task and started
// again (its start does what `cleanup` does, and settles the task).

/// A daemon for `root` (with the fake Android tools on PATH for app tasks).
fn daemon(g: &Garage, dir: &Path, root: &Path) -> Daemon {
    let cfg = dir.join("cpbackup.toml");
    if !cfg.exists() {
        let extra = format!("endpoint = \"{}\"\nregion = \"garage\"\n", g.endpoint());
        drop(Daemon::start(g, dir, root, "", &extra));
    }
    let envs = [("PATH", android::path_env()), ("FAKEROID_ROOT", root.display().to_string())];
    Daemon::spawn_env(g, cfg, dir, &envs)
}

/// Post an ECP task; its id.
fn post(d: &Daemon, path: &str, mut body: Value) -> String {
    body["AndroidInstanceIdList"] = json!([INSTANCE]);
    let (code, v) = d.post(path, body);
    assert_eq!(code, 200, "{v}");
    v["Data"][0]["TaskId"].as_str().expect("a task id").to_string()
}

/// Post a task, kill the daemon `at` later (or not, if the task ended first), start it again.
/// The task is then settled: Finished, or Failed because the agent restarted.
fn kill_daemon_during(g: &Garage, dir: &Path, root: &Path, path: &str, body: Value, at: Duration) -> Value {
    let d = daemon(g, dir, root);
    let id = post(&d, path, body);
    let deadline = Instant::now() + at;
    while Instant::now() < deadline {
        if d.task(&id)["TaskStatus"] == "Finished" {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    d.kill();
    let d = daemon(g, dir, root);
    let mut t = d.task(&id);
    if t["TaskStatus"] == "Waiting" || t["TaskStatus"] == "Processing" {
        // Killed before the task started: the restarted daemon runs it.
        t = d.wait(&id, &["Finished", "Failed", "PartFinished"]);
        assert_eq!(t["TaskStatus"], "Finished", "{t}");
    }
    assert!(
        t["TaskStatus"] == "Finished" || (t["TaskStatus"] == "Failed" && t["ErrorCode"] == "AgentRestarted"),
        "{t}"
    );
    t
}

/// Time one task through a fresh daemon, to place the kill points.
fn timed_task(g: &Garage, dir: &Path, root: &Path, path: &str, body: Value) -> Duration {
    let d = daemon(g, dir, root);
    let t = Instant::now();
    let id = post(&d, path, body);
    let done = d.wait(&id, &["Finished", "Failed", "PartFinished"]);
    assert_eq!(done["TaskStatus"], "Finished", "{done}");
    t.elapsed()
}

#[test]
fn crash_daemon_backups_at_20_points_each() {
    android::require_tools();
    let g = garage::shared();
    let bucket = g.bucket("crash-daemon-backup");
    let tmp = tempfile::tempdir().unwrap();
    let (a, ..) = android::phone_with_notes(tmp.path());
    tree::random_files(&a.p("data/data/com.example.notes/files/media"), 6, 5 * MIB, 7);
    let dir = tmp.path().join("agent");
    fs::create_dir_all(&dir).unwrap();
    for (op, path, body) in [
        ("BackupFile", "/ecp/BackupFile", json!({"SourceFilePathList": ["/data/data/com.example.notes"]})),
        ("BackupApp", "/ecp/BackupApp", json!({"SourceAppList": [NOTES]})),
    ] {
        let key = |i: &str| format!("oss://{bucket}/{op}-{i}.{}", if op == "BackupApp" { "ab" } else { "tar.zst" });
        let mut full_body = body.clone();
        full_body["BackupFilePath"] = key("full").into();
        let full = timed_task(g, &dir, &a.root, path, full_body);
        kill_matrix(op, full, |i, at| {
            let mut b = body.clone();
            b["BackupFilePath"] = key(&format!("{i:02}")).into();
            let t = kill_daemon_during(g, &dir, &a.root, path, b, at);
            // The restarted daemon aborted the killed one's upload.
            assert!(g.store(&bucket).open_uploads("").unwrap().is_empty(), "{op} {i}: an upload is still open");
            let k = key(&format!("{i:02}"));
            let available = check_backup(g, &bucket, k.trim_start_matches(&format!("oss://{bucket}/")));
            assert_eq!(available, t["TaskStatus"] == "Finished", "{op} {i}: the task says {t}");
            available
        });
    }
}

#[test]
fn crash_daemon_restores_at_20_points_each() {
    android::require_tools();
    let g = garage::shared();
    let bucket = g.bucket("crash-daemon-restore");
    let tmp = tempfile::tempdir().unwrap();
    let (a, ..) = android::phone_with_notes(tmp.path());
    let media = a.p("data/data/com.example.notes/files/media");
    tree::random_files(&media, 6, 5 * MIB, 8);
    let files = format!("s3://{bucket}/files.tar.zst");
    let apps = format!("s3://{bucket}/notes.ab");
    run(on_phone(g, &a).export(&a.root, &["/data/data/com.example.notes"], &files), 0);
    run(on_phone(g, &a).backup_app(&a.root, &[NOTES], &apps), 0);
    tree::random_files(&media, 6, 5 * MIB, 9);
    fs::write(a.p("data/data/com.example.notes/files/written-later.txt"), "later\n").unwrap();
    let app = ["data/data/com.example.notes", "data/user_de/0/com.example.notes"];
    let pristine = tmp.path().join("pristine");
    reset(&a.root, &pristine);
    let before = contents(&a.root, &app);
    let dir = tmp.path().join("agent");
    fs::create_dir_all(&dir).unwrap();
    for (op, path, from) in [("RecoveryFile", "/ecp/RecoveryFile", &files), ("RecoverApp", "/ecp/RecoverApp", &apps)] {
        let body = json!({"BackupFilePath": from.replace("s3://", "oss://")});
        let full = timed_task(g, &dir, &a.root, path, body.clone());
        let after = contents(&a.root, &app);
        assert_ne!(before, after, "{op}");
        kill_matrix(op, full, |i, at| {
            reset(&pristine, &a.root);
            let t = kill_daemon_during(g, &dir, &a.root, path, body.clone(), at);
            for parent in ["data/data", "data/user_de/0", "data"] {
                assert_no_leftovers(&a.p(parent));
            }
            let new = old_or_new(&contents(&a.root, &app), &before, &after, &format!("{op} killed at point {i}"));
            if t["TaskStatus"] == "Finished" {
                assert!(new, "{op} {i}: Finished, yet the old data is there");
            }
            new
        });
        reset(&pristine, &a.root);
    }
}
