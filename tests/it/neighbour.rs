//! A good neighbour on the phone: every thread of the work runs at the task's CPU and I/O
//! priority (nice 10, best-effort level 7 by default), read back from `/proc/PID/task/*/stat`
//! (field 19) and `ioprio_get` for each thread of a running export, from the command line and
//! from the daemon, whose own HTTP threads keep theirs.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::daemon::{Daemon, INSTANCE};
use crate::support::{cpbackup, garage, path_str, tree};

const BEST_EFFORT_7: u32 = (2 << 13) | 7;

/// Each thread of `pid`: its id, name, nice value and I/O priority.
fn threads(pid: u32) -> Vec<(i32, String, i32, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: i32 = e.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else { continue };
        let (head, after) = stat.rsplit_once(')').unwrap();
        let name = head.split_once('(').unwrap().1.to_string();
        let nice: i32 = after.split_whitespace().nth(16).unwrap().parse().unwrap();
        // SAFETY: plain integers in, a value or -1 out.
        let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, tid) };
        if ioprio < 0 {
            continue; // the thread ended between the listing and now
        }
        out.push((tid, name, nice, ioprio as u32));
    }
    out
}

fn own_nice() -> i32 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    stat.rsplit_once(')').unwrap().1.split_whitespace().nth(16).unwrap().parse().unwrap()
}

/// The nice value of `pid`'s autogroup (`/autogroup-N nice V`), where the kernel has them.
fn autogroup_nice(pid: &str) -> Option<i32> {
    cpbackup::sys::thread::autogroup_nice_of(std::path::Path::new(&format!("/proc/{pid}/autogroup")))
}

/// An export to a pipe nobody reads: it starts every thread and then waits on the pipe.
fn stalled_export(root: &std::path::Path, extra: &[&str]) -> Vec<(i32, String, i32, u32)> {
    stalled(root, extra, false).0
}

/// `stalled_export`, optionally in a session of its own (as `setsid`, or init for a service,
/// starts it); also the nice value of its autogroup while it runs.
fn stalled(root: &std::path::Path, extra: &[&str], own_session: bool) -> (Vec<(i32, String, i32, u32)>, Option<i32>) {
    let mut c = cpbackup();
    c.args(extra)
        .args(["export", "--include", "/data/media/0", "--root", path_str(root), "--to", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if own_session {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and touches nothing of the parent's.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = c.spawn().unwrap();
    // Until the pipeline stands (a reader, the compressor and its workers) and stays so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = threads(child.id());
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = threads(child.id());
        if now.len() >= 3 && now.len() == seen.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the export did not settle: {now:?}");
        seen = now;
    }
    let group = autogroup_nice(&child.id().to_string());
    let _ = child.kill();
    let _ = child.wait();
    (seen, group)
}

#[test]
fn every_thread_of_an_export_takes_the_priority() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let b = tree::Builder::new(&root);
    for i in 0..8 {
        b.file(&format!("data/media/0/{i}.bin"), &cpbackup::demo::noise(4 << 20, i));
    }
    let shell = own_nice();
    let all = stalled_export(&root, &[]);
    assert!(all.len() >= 3, "{all:?}");
    for (tid, name, nice, ioprio) in &all {
        assert_eq!((*nice, *ioprio), (10, BEST_EFFORT_7), "thread {tid} ({name}) at the defaults: {all:?}");
    }
    let all = stalled_export(&root, &["--nice", "15", "--io-class", "idle", "--io-level", "0"]);
    for (tid, name, nice, ioprio) in &all {
        assert_eq!((*nice, *ioprio), (15, 3 << 13), "thread {tid} ({name}): {all:?}");
    }
    let all = stalled_export(&root, &["--foreground"]);
    for (tid, name, nice, ioprio) in &all {
        assert_eq!(*nice, shell, "thread {tid} ({name}) --foreground: {all:?}");
        assert_ne!(*ioprio, BEST_EFFORT_7, "thread {tid} ({name}) --foreground: {all:?}");
    }
    let o = cpbackup()
        .args(["--io-class", "fast", "export", "--include", "/data", "--root", path_str(&root), "--to", "-"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("idle, best-effort or realtime"));
}

/// Where the kernel schedules sessions as groups (autogroup), a nice value counts only inside
/// the group: an export leading its own session lowers its group to the task's nice; one in
/// someone else's session (an adb shell, this test's) leaves that group alone.
#[test]
fn an_export_in_a_session_of_its_own_lowers_the_sessions_group() {
    let Some(mine) = autogroup_nice("self") else {
        eprintln!("skipped: this kernel has no autogroups (/proc/self/autogroup), so nice reaches across sessions");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let b = tree::Builder::new(&root);
    for i in 0..8 {
        b.file(&format!("data/media/0/{i}.bin"), &cpbackup::demo::noise(4 << 20, i));
    }
    let (_, group) = stalled(&root, &[], true);
    assert_eq!(group, Some(10), "the defaults, own session");
    let (_, group) = stalled(&root, &["--nice", "15"], true);
    assert_eq!(group, Some(15), "--nice 15, own session");
    let (_, group) = stalled(&root, &["--foreground"], true);
    assert_eq!(group, Some(0), "--foreground leaves the new group as the kernel made it");
    let (threads, group) = stalled(&root, &[], false);
    assert_eq!(group, Some(mine), "the test's own session, shared");
    assert!(threads.iter().all(|t| t.2 == 10), "{threads:?}");
    assert_eq!(autogroup_nice("self"), Some(mine), "the test's group untouched");
}

#[test]
fn a_daemon_task_runs_low_and_its_http_threads_do_not() {
    let g = garage::shared();
    let bucket = g.bucket("neighbour");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let b = tree::Builder::new(&root);
    for i in 0..200 {
        let mut c = cpbackup::demo::noise(1 << 20, 11);
        c[0] = i as u8;
        b.file(&format!("data/media/0/{i:03}.bin"), &c);
    }
    let d = Daemon::start(g, dir.path(), &root, "", &format!("endpoint = \"{}\"\nregion = \"garage\"\n", g.endpoint()));
    let (_, v) = d.post(
        "/ecp/BackupFile",
        json!({"AndroidInstanceIdList": [INSTANCE], "BackupFilePath": format!("oss://{bucket}/n/"), "SourceFilePathList": ["/data/media/0"]}),
    );
    let id = v["Data"][0]["TaskId"].as_str().unwrap().to_string();
    d.wait(&id, &["Processing"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.task(&id)["Progress"]["TransferredBytes"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = threads(d.child.id());
    let server =
        |name: &str, tid: i32| tid == d.child.id() as i32 || name.starts_with("cpbackup-api") || name == "outbox";
    let (http, work): (Vec<_>, Vec<_>) = all.iter().partition(|(tid, name, _, _)| server(name, *tid));
    assert!(work.iter().any(|(_, name, _, _)| name.starts_with("task ")), "the task's own thread: {all:?}");
    assert!(work.iter().any(|(_, name, _, _)| name.starts_with("cpbackup-store")), "the store's runtime: {all:?}");
    for (tid, name, nice, ioprio) in &work {
        assert_eq!((*nice, *ioprio), (10, BEST_EFFORT_7), "task thread {tid} ({name}): {all:?}");
    }
    assert!(http.len() >= 3, "{all:?}");
    for (tid, name, nice, ioprio) in &http {
        assert_eq!(*nice, own_nice(), "server thread {tid} ({name}): {all:?}");
        assert_ne!(*ioprio, BEST_EFFORT_7, "server thread {tid} ({name}): {all:?}");
    }
    d.wait(&id, &["Finished"]);
}
