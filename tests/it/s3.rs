//! Object storage (issue 3) against a real Garage server: export/import/verify round trips,
//! multipart and single-PUT uploads, folder keys, the OSS and OBS switches, the catalogue
//! (`list`, `delete`), the failures that must abort an upload, an agent killed mid-upload, a
//! download that loses its connection, secrets kept out of logs, and a three-node cluster
//! with one node down.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpbackup::store::Store;

use crate::support::garage::{self, Garage};
use crate::support::tree::{self, Ignore};
use crate::support::{json, path_str, run, stderr, Cli};

const MIB: usize = 1 << 20;

/// A tree of `files` incompressible files of `each` bytes under `root/data/media/0/big`.
fn random_tree(root: &Path, files: usize, each: usize, seed: u64) {
    tree::random_files(&root.join("data/media/0/big"), files, each, seed);
}

fn export(g: &Garage, root: &Path, to: &str, extra: &[&str]) -> serde_json::Value {
    json(&run(g.cpbackup().export(root, &["/data/media/0"], to).arg("--json").args(extra), 0))
}

fn snapshot_equal(a: &Path, b: &Path, rel: &str) {
    tree::assert_same(&tree::snapshot(a, rel), &tree::snapshot(b, rel), Ignore { xattrs: true, ..Default::default() });
}

#[test]
fn s3_multipart_round_trip_export_import_verify() {
    let g = garage::shared();
    let bucket = g.bucket("roundtrip");
    let src = tempfile::tempdir().unwrap();
    tree::full_case_tree(src.path());
    random_tree(src.path(), 2, 10 * MIB, 1);
    let url = format!("s3://{bucket}/backups/full.tar.zst");
    let includes = ["/data/user/0/com.example.app", "/data/media/0"];
    let m = json(&run(g.cpbackup().export(src.path(), &includes, &url).arg("--json"), 0));
    assert_eq!(m["Status"], "AVAILABLE");
    assert_eq!(m["UploadType"], "S3");
    assert_eq!(m["BackupFilePath"], url);
    assert_eq!(m["BackupFileName"], "full.tar.zst");
    assert_eq!(m["UploadEndpoint"], g.endpoint().trim_start_matches("http://"));

    // Multipart: 20 MiB of random data and the rest make several equal parts.
    let store = g.store(&bucket);
    let (size, etag) = store.head("backups/full.tar.zst").unwrap().expect("the archive exists");
    assert_eq!(size, m["ArchiveSize"].as_u64().unwrap());
    let parts = size.div_ceil(cpbackup::store::s3::DEFAULT_PART_SIZE);
    assert!(parts >= 3);
    assert!(etag.trim_matches('"').ends_with(&format!("-{parts}")), "a {parts}-part multipart ETag, got {etag}");
    // The manifest in the bucket is the record printed.
    let stored: serde_json::Value =
        serde_json::from_slice(&store.get("backups/full.tar.zst.manifest.json").unwrap().unwrap()).unwrap();
    assert_eq!(stored, m);
    assert!(store.open_uploads("").unwrap().is_empty(), "no multipart upload left open");
    assert_no_records(&g.state_dir);

    let dst = tempfile::tempdir().unwrap();
    let r = json(&run(g.cpbackup().import(dst.path(), &url).arg("--json"), 0));
    assert_eq!(r["ChecksumVerified"], true);
    assert_eq!(r["Entries"], m["EntryCount"]);
    snapshot_equal(src.path(), dst.path(), "data/data/com.example.app");
    snapshot_equal(src.path(), dst.path(), "data/media/0");

    let v = json(&run(g.cpbackup().args(["verify", "--from", &url, "--json"]), 0));
    assert_eq!(v["ChecksumVerified"], true);
    assert_eq!(v["Sha256"], m["Sha256"]);
}

#[test]
fn s3_small_archive_is_one_put_and_oss_obs_schemes_work() {
    let g = garage::shared();
    let bucket = g.bucket("small");
    let src = tempfile::tempdir().unwrap();
    tree::Builder::new(src.path()).file("data/media/0/a.txt", b"tiny\n");
    for (scheme, kind) in [("s3", "S3"), ("oss", "OSS"), ("obs", "OBS")] {
        // obs:// sends UNSIGNED-PAYLOAD, oss:// and obs:// default to checksums only when required:
        // Garage must accept both, like the vendors.
        let url = format!("{scheme}://{bucket}/one/a-{scheme}.tar");
        let m = export(g, src.path(), &url, &[]);
        assert_eq!(m["UploadType"], kind);
        assert_eq!(m["Format"], "tar");
        let (_, etag) = g.store(&bucket).head(&format!("one/a-{scheme}.tar")).unwrap().unwrap();
        assert!(!etag.contains('-'), "a single PUT, not multipart: {etag}");
        let dst = tempfile::tempdir().unwrap();
        let r = json(&run(g.cpbackup().import(dst.path(), &url).arg("--json"), 0));
        assert_eq!(r["ChecksumVerified"], true);
        assert_eq!(fs::read(dst.path().join("data/media/0/a.txt")).unwrap(), b"tiny\n");
    }
}

/// A ranged read gives what the object holds of the range: fewer bytes where it ends (a
/// restore's read of a pack asks for as much as a pack's data may be), none for an empty range.
#[test]
fn s3_ranged_reads_end_where_the_object_ends() {
    let g = garage::shared();
    let store = g.store(&g.bucket("ranges"));
    let body: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    store.put("fleet/data/ab/pack", &body).unwrap();
    let read = |offset: u64, len: u64| {
        let mut got = Vec::new();
        store.read_range("fleet/data/ab/pack", offset, len).unwrap().read_to_end(&mut got).unwrap();
        got
    };
    assert_eq!(read(100, 1000), body[100..1100]);
    assert_eq!(read(2500, 16 << 20), body[2500..]);
    assert!(read(10, 0).is_empty());
    assert_eq!(store.get_range("fleet/data/ab/pack", 2990, 100).unwrap(), body[2990..]);
}

#[test]
fn s3_folder_keys_name_the_object() {
    let g = garage::shared();
    let bucket = g.bucket("folder");
    let src = tempfile::tempdir().unwrap();
    tree::Builder::new(src.path()).file("data/media/0/a.txt", b"folder\n");
    let m = export(g, src.path(), &format!("oss://{bucket}/backups/"), &["--name", "named.tar.zst"]);
    assert_eq!(m["BackupFilePath"], format!("oss://{bucket}/backups/named.tar.zst"));
    let m = export(g, src.path(), &format!("s3://{bucket}/backups/"), &["--instance-id", "acp-test1"]);
    let name = m["BackupFileName"].as_str().unwrap().to_string();
    assert!(
        name.starts_with("acp-test1_")
            && name.ends_with(".tar.zst")
            && name.len() == "acp-test1_20240520140000.tar.zst".len(),
        "{name}"
    );
    let store = g.store(&bucket);
    assert!(store.head(&format!("backups/{name}")).unwrap().is_some());
    assert!(store.head("backups/named.tar.zst.manifest.json").unwrap().is_some());
    // A whole bucket is a folder too.
    let m = export(g, src.path(), &format!("s3://{bucket}"), &["--name", "top.tar"]);
    assert_eq!(m["BackupFilePath"], format!("s3://{bucket}/top.tar"));
    // Restoring needs the archive, not the folder.
    let out = run(g.cpbackup().import(src.path(), format!("s3://{bucket}/backups/")), 2);
    assert!(stderr(&out).contains("is a folder"), "{}", stderr(&out));
}

#[test]
fn s3_names_and_rules_are_checked() {
    let g = garage::shared();
    let src = tempfile::tempdir().unwrap();
    tree::Builder::new(src.path()).file("data/media/0/a.txt", b"x\n");
    let root = path_str(src.path());
    for (to, needle) in [
        ("s3://Bad_Bucket/x.tar", "\"Bad_Bucket\""),
        ("s3://ab/x.tar", "3 to 63"),
        ("s3://good-bucket/a b.tar", "\"a b.tar\""),
        ("oss://good-bucket/ü.tar", ". / - _ + # ="),
    ] {
        let out = run(g.cpbackup().export(root, &["/data/media/0"], to), 2);
        assert!(stderr(&out).contains(needle), "{to}: {}", stderr(&out));
    }
    let out =
        run(g.cpbackup().export(root, &["/data/media/0"], "s3://good-bucket/").args(["--name", "bad name.tar"]), 2);
    assert!(stderr(&out).contains("bad name.tar"), "{}", stderr(&out));
    // A bucket that does not exist: the export fails (exit 1) saying so, and leaves nothing open.
    let out = run(g.cpbackup().export(root, &["/data/media/0"], "s3://no-such-bucket-here/x.tar"), 1);
    assert!(stderr(&out).contains("NoSuchBucket"), "{}", stderr(&out));
    assert_no_records(&g.state_dir);
    // No credentials at all: a clear message, not a hang on instance metadata.
    let t = Instant::now();
    let out = run(
        g.cpbackup()
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("HOME", src.path())
            .args(["list", "--in", "s3://no-such-bucket-here/"]),
        1,
    );
    assert!(stderr(&out).contains("AWS_ACCESS_KEY_ID"), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(10), "credentials lookup took {:?}", t.elapsed());
}

#[test]
fn s3_secrets_never_reach_logs_manifests_or_records() {
    let g = garage::shared();
    let bucket = g.bucket("secrets");
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), 1, 9 * MIB, 2);
    let state = tempfile::tempdir().unwrap();
    let url = format!("s3://{bucket}/s.tar");
    let mut c = g.cpbackup();
    c.env("CPBACKUP_STATE_DIR", state.path()).env("RUST_LOG", "trace");
    c.arg("-vv").export(src.path(), &["/data/media/0"], &url).arg("--json");
    let out = run(&mut c, 0);
    let err = stderr(&out);
    assert!(
        err.contains("UploadPart") || err.contains("multipart"),
        "debug logging is on: {}",
        &err[..err.len().min(2000)]
    );
    let manifest = String::from_utf8(g.store(&bucket).get("s.tar.manifest.json").unwrap().unwrap()).unwrap();
    for (what, text) in
        [("stderr", &err), ("stdout", &String::from_utf8_lossy(&out.stdout).into_owned()), ("manifest", &manifest)]
    {
        assert!(!text.contains(garage::SECRET), "the secret key appears in {what}");
        assert!(!text.contains(&garage::SECRET[..16]), "part of the secret key appears in {what}");
    }
    // A failing run's error and the records it leaves say nothing secret either.
    let mut c = g.cpbackup();
    c.env("CPBACKUP_STATE_DIR", state.path()).env("RUST_LOG", "trace");
    c.arg("-vv").export(src.path(), &["/data/media/0"], "s3://no-such-bucket-here/s.tar");
    let out = run(&mut c, 1);
    assert!(!stderr(&out).contains(&garage::SECRET[..16]));
    for e in fs::read_dir(state.path()).into_iter().flatten().flatten() {
        assert!(!fs::read_to_string(e.path()).unwrap_or_default().contains(&garage::SECRET[..16]));
    }
}

/// Manifests written straight into the bucket, for the catalogue tests.
fn fixture_manifest(i: usize) -> serde_json::Value {
    serde_json::json!({
        "BackupFileId": format!("bf-fixture{i:05}"),
        "BackupFileName": format!("acp-{}_{i:05}.tar.zst", i % 4),
        "AndroidInstanceId": format!("acp-{}", i % 4),
        "AndroidInstanceName": format!("phone {}", i % 4),
        "InstanceGroupId": "ag-1",
        "EndUserId": if i % 2 == 0 { "alice" } else { "bob" },
        "Status": if i % 10 == 0 { "BACKUP_FAILED" } else { "AVAILABLE" },
        "Description": if i % 3 == 0 { "weekly full" } else { "daily" },
        "BackupAll": i % 3 == 0,
        "GmtCreated": format!("2024-05-{:02} 10:00:00", 1 + i % 20),
        "GmtModified": format!("2024-05-{:02} 10:00:00", 1 + i % 20),
        "UploadType": "S3",
    })
}

fn list(g: &Garage, prefix: &str, args: &[&str]) -> serde_json::Value {
    json(&run(g.cpbackup().args(["list", "--in", prefix]).args(args), 0))
}

#[test]
fn s3_list_filters_and_pages_over_many_records() {
    let g = garage::shared();
    let bucket = g.bucket("list");
    let store = Arc::new(g.store(&bucket));
    // 130 records, written concurrently; an archive and a stray object that are not manifests.
    std::thread::scope(|s| {
        for t in 0..4 {
            let store = store.clone();
            s.spawn(move || {
                for i in (t..130).step_by(4) {
                    let body = serde_json::to_vec(&fixture_manifest(i)).unwrap();
                    store.put(&format!("cat/acp-{}_{i:05}.tar.zst.manifest.json", i % 4), &body).unwrap();
                }
            });
        }
    });
    store.put("cat/acp-0_00000.tar.zst", b"not a manifest").unwrap();
    store.put("cat/broken.manifest.json", b"{ not json").unwrap();
    store.put("elsewhere/x.manifest.json", &serde_json::to_vec(&fixture_manifest(999)).unwrap()).unwrap();
    let prefix = format!("s3://{bucket}/cat/");

    let first = list(g, &prefix, &[]);
    assert_eq!(first["TotalCount"], 130);
    assert_eq!(first["MaxResults"], 10);
    assert_eq!(first["Data"].as_array().unwrap().len(), 10);
    assert!(first["RequestId"].as_str().unwrap().len() >= 32);

    // Paging over more than 100 records: 100, then 30, no duplicates, nothing missed.
    let p1 = list(g, &prefix, &["--max-results", "100"]);
    assert_eq!(p1["Data"].as_array().unwrap().len(), 100);
    let token = p1["NextToken"].as_str().unwrap().to_string();
    assert!(!token.is_empty());
    let p2 = list(g, &prefix, &["--max-results", "100", "--next-token", &token]);
    assert_eq!(p2["Data"].as_array().unwrap().len(), 30);
    assert_eq!(p2["NextToken"], "");
    let mut ids: Vec<String> = p1["Data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["Data"].as_array().unwrap())
        .map(|m| m["BackupFileId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 130);
    // The token is stable: asking again gives the same page.
    assert_eq!(list(g, &prefix, &["--max-results", "100", "--next-token", &token])["Data"], p2["Data"]);

    let count = |args: &[&str]| {
        list(g, &prefix, &[&["--max-results", "100"][..], args].concat())["TotalCount"].as_u64().unwrap()
    };
    assert_eq!(count(&["--backup-file-id", "bf-fixture00007"]), 1);
    assert_eq!(count(&["--instance-id", "acp-1"]), 33);
    assert_eq!(count(&["--instance-name", "hone 2"]), 32, "substring");
    assert_eq!(count(&["--backup-file-name", "_0001"]), 10, "substring");
    assert_eq!(count(&["--description", "week"]), 44);
    assert_eq!(count(&["--end-user-id", "bob"]), 65);
    assert_eq!(count(&["--backup-all", "true"]), 44);
    assert_eq!(count(&["--instance-group-id", "ag-2"]), 0);
    assert_eq!(count(&["--status", "BACKUP_FAILED"]), 13);
    assert_eq!(count(&["--status", "BACKUP_FAILED", "AVAILABLE"]), 130);
    assert_eq!(count(&["--status", "BACKUP_FAILED,DELETING"]), 13);
    assert_eq!(count(&["--start-time", "2024-05-20 10:00:00"]), 6);
    assert_eq!(count(&["--start-time", "2024-05-01 00:00:00", "--end-time", "2024-05-01 23:59:59"]), 7);
    // Multiples of 4 (all alice), less the multiples of 20 (failed).
    assert_eq!(count(&["--instance-id", "acp-0", "--status", "AVAILABLE", "--end-user-id", "alice"]), 26);

    for (bad, needle) in [
        (&["--max-results", "0"][..], "--max-results 0: must be from 1 to 100"),
        (&["--max-results", "101"], "--max-results 101"),
        (&["--status", "GONE"], "unknown status \"GONE\""),
        (&["--start-time", "yesterday"], "--start-time \"yesterday\""),
        (&["--next-token", "%%%"], "--next-token"),
    ] {
        let out = run(g.cpbackup().args(["list", "--in", &prefix]).args(bad), 2);
        assert!(stderr(&out).contains(needle), "{bad:?}: {}", stderr(&out));
    }

    // The same command works on a local folder.
    let dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    tree::Builder::new(src.path()).file("data/media/0/a.txt", b"x\n");
    for n in ["one.tar", "two.tar"] {
        let to = format!("{}/", path_str(dir.path()));
        run(g.cpbackup().export(src.path(), &["/data/media/0"], to).args(["--name", n]), 0);
    }
    let local = list(g, &format!("{}/", path_str(dir.path())), &[]);
    assert_eq!(local["TotalCount"], 2);
    assert_eq!(local["Data"][0]["BackupFileName"], "one.tar");
}

#[test]
fn s3_delete_removes_archive_then_manifest() {
    let g = garage::shared();
    let bucket = g.bucket("delete");
    let src = tempfile::tempdir().unwrap();
    tree::Builder::new(src.path()).file("data/media/0/a.txt", b"delete me\n");
    let keep = export(g, src.path(), &format!("s3://{bucket}/d/"), &["--name", "keep.tar"]);
    let gone = export(g, src.path(), &format!("s3://{bucket}/d/"), &["--name", "gone.tar"]);
    let id = gone["BackupFileId"].as_str().unwrap();
    let out =
        json(&run(g.cpbackup().args(["delete", "--in", &format!("s3://{bucket}/d/"), "--backup-file-id", id]), 0));
    assert_eq!(out["BackupFileId"], id);
    assert_eq!(out["BackupFilePath"], format!("s3://{bucket}/d/gone.tar"));
    let store = g.store(&bucket);
    assert!(store.head("d/gone.tar").unwrap().is_none());
    assert!(store.head("d/gone.tar.manifest.json").unwrap().is_none());
    assert!(store.head("d/keep.tar").unwrap().is_some());
    let l = list(g, &format!("s3://{bucket}/d/"), &[]);
    assert_eq!(l["TotalCount"], 1);
    assert_eq!(l["Data"][0]["BackupFileId"], keep["BackupFileId"]);
    let again = run(g.cpbackup().args(["delete", "--in", &format!("s3://{bucket}/d/"), "--backup-file-id", id]), 2);
    assert!(stderr(&again).contains(id), "{}", stderr(&again));
}

fn assert_no_records(state: &Path) {
    let left = garage::upload_records(state);
    // Records of uploads still running in other tests are fine; ours are gone, which the
    // callers check through ListMultipartUploads. Here: no record of a dead process.
    for p in left {
        let rec: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap_or_default()).unwrap_or_default();
        let pid = rec["pid"].as_u64().unwrap_or(0);
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "a stale upload record is left: {}", p.display());
    }
}

fn records_in(state: &Path) -> usize {
    garage::upload_records(state).len()
}

/// Stop `child` (SIGSTOP) and wait until it is stopped; false when it ended instead.
fn pause(child: &std::process::Child) -> bool {
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling and waiting for a child of this test; WNOWAIT leaves it waitable.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WSTOPPED | libc::WEXITED | libc::WNOWAIT);
        info.si_code == libc::CLD_STOPPED
    }
}

fn resume(child: &std::process::Child) {
    // SAFETY: signalling a child of this test.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
}

/// Start an export of `root` in the background and wait until its multipart upload is open.
/// The export is returned stopped (SIGSTOP; `resume` it or kill it): it is looked at only
/// while stopped, so it cannot finish its upload between the look and what the caller does
/// next (a loaded machine once let a 128 MiB export complete before the test's abort).
fn export_until_multipart(
    g: &Garage,
    bucket: &str,
    root: &Path,
    key: &str,
    state: &Path,
) -> (std::process::Child, String) {
    let store = g.store(bucket);
    let mut c = g.cpbackup();
    c.env("CPBACKUP_STATE_DIR", state);
    c.export(root, &["/data/media/0"], format!("s3://{bucket}/{key}")).args(["--parts-in-flight", "1"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(pause(&child), "the export ended before its multipart upload was seen open");
        // Open in the store, and recorded by the agent (it records right after the store answers).
        if let Some((_, id)) = store.open_uploads(key).unwrap().into_iter().next() {
            if records_in(state) > 0 {
                return (child, id);
            }
        }
        resume(&child);
        assert!(Instant::now() < deadline, "the export never opened a multipart upload");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn s3_part_refused_aborts_the_upload_and_records_the_failure() {
    let g = garage::shared();
    let bucket = g.bucket("refused");
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), 8, 16 * MIB, 3);
    let state = tempfile::tempdir().unwrap();
    let (child, id) = export_until_multipart(g, &bucket, src.path(), "r.tar", state.path());
    // The store drops the upload under the agent's feet: every later part is refused (NoSuchUpload).
    g.store(&bucket).abort_upload("r.tar", &id).unwrap();
    resume(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("NoSuchUpload"), "{}", stderr(&out));
    let store = g.store(&bucket);
    let m: serde_json::Value = serde_json::from_slice(&store.get("r.tar.manifest.json").unwrap().unwrap()).unwrap();
    assert_eq!(m["Status"], "BACKUP_FAILED");
    assert!(m["FailureReason"].as_str().unwrap().contains("NoSuchUpload"), "{m}");
    assert!(store.head("r.tar").unwrap().is_none(), "no object under the final key");
    assert!(store.open_uploads("").unwrap().is_empty(), "no multipart upload left open");
    assert_eq!(records_in(state.path()), 0, "the record of the aborted upload is gone");
}

#[test]
fn s3_killed_agent_leaves_nothing_open_after_the_next_start() {
    let g = garage::shared();
    let bucket = g.bucket("killed");
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), 8, 16 * MIB, 4);
    let small = tempfile::tempdir().unwrap();
    tree::Builder::new(small.path()).file("data/media/0/a.txt", b"x\n");
    let state = tempfile::tempdir().unwrap();
    let store = g.store(&bucket);

    // 1. kill -9 mid-upload; the next export aborts what the dead one started.
    let (mut child, _) = export_until_multipart(g, &bucket, src.path(), "k1.tar", state.path());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(records_in(state.path()) >= 1, "the killed agent's upload is recorded");
    // Records are the agent's own: 0600 files in a 0700 directory (here, the test's temp dir).
    for e in fs::read_dir(state.path()).unwrap().flatten() {
        use std::os::unix::fs::PermissionsExt;
        if e.file_name().to_string_lossy().starts_with("upload-") {
            assert_eq!(e.metadata().unwrap().permissions().mode() & 0o777, 0o600, "{:?}", e.path());
        }
    }
    assert_eq!(store.open_uploads("k1.tar").unwrap().len(), 1);
    let mut c = g.cpbackup();
    c.env("CPBACKUP_STATE_DIR", state.path());
    c.export(small.path(), &["/data/media/0"], format!("s3://{bucket}/other.tar"));
    run(&mut c, 0);
    assert!(store.open_uploads("").unwrap().is_empty(), "the next start aborted the left-over upload");
    assert!(store.head("k1.tar").unwrap().is_none(), "no object under the killed export's key");
    assert_eq!(records_in(state.path()), 0);

    // 2. kill -9 again; `cpbackup cleanup` aborts it.
    let (mut child, id) = export_until_multipart(g, &bucket, src.path(), "k2.tar", state.path());
    child.kill().unwrap();
    child.wait().unwrap();
    let mut c = g.cpbackup();
    c.env("CPBACKUP_STATE_DIR", state.path()).arg("cleanup");
    let out = json(&run(&mut c, 0));
    assert_eq!(out["Aborted"].as_array().unwrap().len(), 1, "{out}");
    assert!(out["Aborted"][0].as_str().unwrap().contains(&id));
    assert!(store.open_uploads("").unwrap().is_empty());
    assert!(store.head("k2.tar").unwrap().is_none());
    assert_eq!(records_in(state.path()), 0);
}

/// A TCP proxy that cuts the first connection carrying more than `cut_after` bytes back to
/// the client: a dropped connection in the middle of a download.
fn flaky_proxy(upstream: u16, cut_after: u64) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cuts = Arc::new(AtomicU64::new(0));
    let cut_done = Arc::new(AtomicBool::new(false));
    let c2 = cuts.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
            let (c_read, s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &c_read, &mut &s_write);
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            let (cuts, cut_done) = (c2.clone(), cut_done.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut sent = 0u64;
                loop {
                    let n = match (&server).read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if (&client).write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                    if sent > cut_after && !cut_done.swap(true, Ordering::SeqCst) {
                        cuts.fetch_add(1, Ordering::SeqCst);
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        let _ = server.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, cuts)
}

#[test]
fn s3_download_resumes_after_a_dropped_connection() {
    let g = garage::shared();
    let bucket = g.bucket("resume");
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), 2, 6 * MIB, 5);
    let url = format!("s3://{bucket}/r.tar");
    let m = export(g, src.path(), &url, &[]);
    let (port, cuts) = flaky_proxy(g.nodes[0].s3_port, 5 * MIB as u64);
    let dst = tempfile::tempdir().unwrap();
    let mut c = g.cpbackup();
    c.env("CPBACKUP_ENDPOINT", format!("http://127.0.0.1:{port}")).env("RUST_LOG", "warn");
    c.import(dst.path(), &url).arg("--json");
    let out = run(&mut c, 0);
    let r = json(&out);
    assert_eq!(cuts.load(Ordering::SeqCst), 1, "the proxy cut the download once");
    assert!(stderr(&out).contains("resuming at byte"), "{}", stderr(&out));
    assert_eq!(r["ChecksumVerified"], true);
    assert_eq!(r["Sha256"], m["Sha256"]);
    snapshot_equal(src.path(), dst.path(), "data/media/0");
}

#[test]
fn s3_three_node_cluster_keeps_working_with_a_node_down() {
    let g = Garage::start(3);
    let bucket = g.bucket("cluster");
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), 1, 12 * MIB, 6);
    tree::Builder::new(src.path()).file("data/media/0/note.txt", b"replicated\n");
    let before = export(&g, src.path(), &format!("s3://{bucket}/before.tar.zst"), &[]);
    assert_eq!(before["Status"], "AVAILABLE");

    // One of three replicas down: writes and reads still reach a quorum of two.
    g.nodes[2].stop();
    for round in 0..2 {
        let key = format!("s3://{bucket}/down-{round}.tar.zst");
        let m = export(&g, src.path(), &key, &[]);
        assert_eq!(m["Status"], "AVAILABLE");
        for url in [key.clone(), format!("s3://{bucket}/before.tar.zst")] {
            let dst = tempfile::tempdir().unwrap();
            let r = json(&run(g.cpbackup().import(dst.path(), &url).arg("--json"), 0));
            assert_eq!(r["ChecksumVerified"], true);
            snapshot_equal(src.path(), dst.path(), "data/media/0");
        }
    }
    let (size, etag) = g.store(&bucket).head("down-0.tar.zst").unwrap().unwrap();
    let parts = size.div_ceil(cpbackup::store::s3::DEFAULT_PART_SIZE);
    assert!(
        parts >= 2 && etag.trim_matches('"').ends_with(&format!("-{parts}")),
        "multipart while a node is down: {etag}"
    );
    assert_eq!(list(&g, &format!("s3://{bucket}/"), &[])["TotalCount"], 3);

    // The node comes back and the cluster goes on.
    g.nodes[2].start();
    let m = export(&g, src.path(), &format!("s3://{bucket}/after.tar.zst"), &[]);
    assert_eq!(m["Status"], "AVAILABLE");
    run(g.cpbackup().args(["verify", "--from", &format!("s3://{bucket}/after.tar.zst")]), 0);
}
