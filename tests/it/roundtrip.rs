//! Export then import into a fresh root, for every format, and compare content and metadata.
//! Also the selection rules, streaming through stdout/stdin, and the safety of import.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Stdio;

use crate::support::tree::{self, Ignore};
use crate::support::{cpbackup, json, path_str, run, stderr, Cli};

fn export(root: &Path, dest: &Path, includes: &[&str], extra: &[&str]) -> serde_json::Value {
    json(&run(cpbackup().export(root, includes, dest).arg("--json").args(extra), 0))
}

fn import(root: &Path, src: &Path) -> serde_json::Value {
    json(&run(cpbackup().import(root, src).arg("--json"), 0))
}

fn roundtrip(format: &str) {
    let src = tempfile::tempdir().unwrap();
    let b = tree::full_case_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join(format!("backup.{format}"));
    let m = export(src.path(), &archive, &["/data/user/0/com.example.app", "/data/media/0"], &[]);
    assert_eq!(m["Status"], "AVAILABLE");
    assert_eq!(m["Format"], format);
    assert_eq!(m["SourceFilePathList"], serde_json::json!(["/data/user/0/com.example.app", "/data/media/0"]));
    assert_eq!(m["Sha256"].as_str().unwrap().len(), 64);
    assert_eq!(m["ArchiveSize"].as_u64().unwrap(), fs::metadata(&archive).unwrap().len());
    assert!(m["BackupFileId"].as_str().unwrap().starts_with("bf-"));
    // The manifest beside the archive is the same record.
    let beside: serde_json::Value =
        serde_json::from_slice(&fs::read(out.path().join(format!("backup.{format}.manifest.json"))).unwrap()).unwrap();
    assert_eq!(beside, m);
    // The sparse file's holes were not stored at full size.
    assert!(m["ArchiveSize"].as_u64().unwrap() < 20 * 1024 * 1024, "archive too big: {}", m["ArchiveSize"]);

    let dst = tempfile::tempdir().unwrap();
    let r = import(dst.path(), &archive);
    assert_eq!(r["ChecksumVerified"], true);
    assert_eq!(r["Entries"], m["EntryCount"]);
    let ignore = Ignore { xattrs: true, ..Default::default() };
    for rel in ["data/data/com.example.app", "data/media/0"] {
        tree::assert_same(&tree::snapshot(src.path(), rel), &tree::snapshot(dst.path(), rel), ignore);
    }
    // The restored sparse file is sparse again.
    let sparse = dst.path().join("data/data/com.example.app/files/sparse.img");
    let meta = fs::metadata(&sparse).unwrap();
    assert_eq!(meta.len(), 64 * 1024 * 1024);
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 8 * 1024 * 1024, "sparse file restored dense");
    // xattrs are archived but only restored when asked.
    if b.xattrs {
        let f = dst.path().join("data/data/com.example.app/files/small.txt");
        assert!(xattr::get(&f, "user.cpbackup.test").unwrap().is_none(), "xattrs restored without --restore-xattrs");
        let dst2 = tempfile::tempdir().unwrap();
        run(cpbackup().import(dst2.path(), &archive).arg("--restore-xattrs"), 0);
        let f = dst2.path().join("data/data/com.example.app/files/small.txt");
        assert_eq!(xattr::get(&f, "user.cpbackup.test").unwrap().as_deref(), Some(&b"value\x00with nul"[..]));
        tree::assert_same(
            &tree::snapshot(src.path(), "data/data/com.example.app"),
            &tree::snapshot(dst2.path(), "data/data/com.example.app"),
            Ignore::default(),
        );
    } else {
        eprintln!("note: this filesystem refuses user.* xattrs; xattr restore not checked here");
    }
    // No staging left behind.
    for top in ["data"] {
        for e in fs::read_dir(dst.path().join(top)).unwrap() {
            let n = e.unwrap().file_name();
            assert!(!n.to_string_lossy().starts_with(".cpbackup-"), "left behind: {n:?}");
        }
    }
}

#[test]
fn roundtrip_tar() {
    roundtrip("tar");
}

#[test]
fn roundtrip_tar_zst() {
    roundtrip("tar.zst");
}

#[test]
fn roundtrip_ab() {
    roundtrip("ab");
}

#[test]
fn format_defaults_to_tar_zst_and_follows_the_flag() {
    let src = tempfile::tempdir().unwrap();
    tree::Builder::new(src.path()).file("data/x/f", b"abc");
    let out = tempfile::tempdir().unwrap();
    let noext = out.path().join("backup");
    let m = export(src.path(), &noext, &["/data/x"], &[]);
    assert_eq!(m["Format"], "tar.zst");
    assert_eq!(&fs::read(&noext).unwrap()[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    let forced = out.path().join("forced.bin");
    let m = export(src.path(), &forced, &["/data/x"], &["--format", "ab"]);
    assert_eq!(m["Format"], "ab");
    assert!(fs::read(&forced).unwrap().starts_with(b"ANDROID BACKUP\n5\n1\nnone\n"));
    // A folder destination names the archive from --name, or from the instance id and time.
    let m = export(src.path(), out.path(), &["/data/x"], &["--instance-id", "acp-123"]);
    let name = m["BackupFileName"].as_str().unwrap();
    assert!(name.starts_with("acp-123_") && name.ends_with(".tar.zst"), "{name}");
    assert!(out.path().join(name).is_file());
    let m = export(src.path(), out.path(), &["/data/x"], &["--name", "named.tar"]);
    assert_eq!(m["BackupFileName"], "named.tar");
    assert!(out.path().join("named.tar").is_file());
}

#[test]
fn streams_through_stdout_and_stdin() {
    let src = tempfile::tempdir().unwrap();
    tree::full_case_tree(src.path());
    let exp = cpbackup().export(src.path(), &["/data/data"], "-").stdout(Stdio::piped()).spawn().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let imp = cpbackup().import(dst.path(), "-").stdin(exp.stdout.unwrap()).output().unwrap();
    assert!(imp.status.success(), "{}", stderr(&imp));
    tree::assert_same(
        &tree::snapshot(src.path(), "data/data"),
        &tree::snapshot(dst.path(), "data/data"),
        Ignore { xattrs: true, ..Default::default() },
    );
}

#[test]
fn globs_excludes_and_symlinked_includes() {
    let src = tempfile::tempdir().unwrap();
    let b = tree::Builder::new(src.path());
    b.file("data/app/com.xx.xx-1/base.apk", b"apk1");
    b.file("data/app/com.xx.xx-2/base.apk", b"apk2");
    b.file("data/app/com.yy-1/base.apk", b"other");
    b.file("data/data/com.xx.xx/files/keep", b"k");
    b.file("data/data/com.xx.xx/cache/drop", b"d");
    b.dir("data/user");
    symlink("/data/data", b.path("data/user/0")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("sel.tar");
    export(
        src.path(),
        &archive,
        &["/data/app/com.xx.xx-*", "/data/user/0/com.xx.xx"],
        &["--exclude", "/data/user/0/com.xx.xx/cache", "--exclude", "/data/app/*-2"],
    );
    let list = std::process::Command::new("tar").arg("-tf").arg(&archive).output().unwrap();
    let names = String::from_utf8(list.stdout).unwrap();
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(
        names,
        vec![
            "data/app/com.xx.xx-1/",
            "data/app/com.xx.xx-1/base.apk",
            "data/data/com.xx.xx/",
            "data/data/com.xx.xx/files/",
            "data/data/com.xx.xx/files/keep",
        ],
        "sorted, symlinked include resolved inside the root, excludes win"
    );
}

#[test]
fn path_rules_are_enforced_with_clear_errors() {
    let src = tempfile::tempdir().unwrap();
    tree::Builder::new(src.path()).file("data/x/f", b"abc");
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("x.tar");
    for (path, rule) in [
        ("/system/app", "only paths under /data"),
        ("data/x", "must be absolute"),
        ("/data/x y", "not allowed"),
        ("/data/../etc", ".."),
        ("/data/nope", "does not exist"),
    ] {
        let o = run(cpbackup().export(src.path(), &[path], &dest), 2);
        let e = stderr(&o);
        assert!(e.contains(path) && e.contains(rule), "{path}: {e}");
        assert!(!dest.exists(), "nothing written on bad input");
    }
    let long = format!("/data/{}", "a".repeat(4100));
    let o = run(cpbackup().export(src.path(), &[&long], &dest), 2);
    assert!(stderr(&o).contains("4096"));
    // Usage errors from the argument parser are exit 2 too.
    run(cpbackup().args(["export", "--to", path_str(&dest), "--bogus"]), 2);
    let o = run(cpbackup().export(src.path(), &["/data/x"], "ftp://x/y"), 2);
    assert!(stderr(&o).contains("ftp://x/y"));
    // A --root that is not there, on either side: named, its cause told once.
    let missing = out.path().join("no-such-root");
    run(cpbackup().export(src.path(), &["/data/x"], &dest), 0);
    for o in [
        run(cpbackup().export(&missing, &["/data/x"], out.path().join("y.tar")), 2),
        run(cpbackup().import(&missing, &dest), 2),
    ] {
        let e = stderr(&o);
        assert!(e.contains("--root") && e.contains("no-such-root"), "{e}");
        assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    }
}

#[test]
fn backup_all_takes_data_minus_transient_and_asks_for_a_restart() {
    let src = tempfile::tempdir().unwrap();
    let b = tree::Builder::new(src.path());
    b.file("data/data/com.a/f", b"a");
    b.file("data/system/packages.list", b"com.a 10050 0 /data/user/0/com.a default:targetSdkVersion=33 3003\n");
    b.file("data/local/tmp/cpbackup", b"the agent binary");
    b.file("data/cpbackup/state/x.json", b"{}");
    b.file("data/dalvik-cache/arm64/x.dex", b"dex");
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("all.tar");
    let m = export(src.path(), &archive, &[], &["--all"]);
    assert_eq!(m["BackupAll"], true);
    let list = std::process::Command::new("tar").arg("-tf").arg(&archive).output().unwrap();
    let names = String::from_utf8(list.stdout).unwrap();
    assert!(names.contains("data/data/com.a/f") && names.contains("data/system/packages.list"), "{names}");
    for gone in ["data/local/tmp", "data/cpbackup", "dalvik-cache"] {
        assert!(!names.contains(gone), "{gone} archived:\n{names}");
    }
    let dst = tempfile::tempdir().unwrap();
    let r = import(dst.path(), &archive);
    assert_eq!(r["RestartRequired"], true);
    assert!(r["Warnings"].to_string().contains("restart the phone"));
    assert_eq!(fs::read(dst.path().join("data/data/com.a/f")).unwrap(), b"a");
}

#[test]
fn fifos_sockets_are_skipped_and_never_block() {
    let src = tempfile::tempdir().unwrap();
    let b = tree::Builder::new(src.path());
    b.file("data/d/regular", b"r");
    let fifo = b.path("data/d/fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(b.path("data/d/sock")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let m = export(src.path(), &out.path().join("s.tar"), &["/data/d"], &[]);
    assert_eq!(m["Status"], "AVAILABLE");
    let w = m["Warnings"].to_string();
    assert!(w.contains("/data/d/fifo: skipped: FIFO") && w.contains("/data/d/sock: skipped: socket"), "{w}");
    assert_eq!(m["EntryCount"], 2);
}

#[test]
fn unreadable_files_are_warnings_and_the_backup_goes_on() {
    if !tree::is_root() || !crate::support::have("setpriv") {
        eprintln!("note: needs root and setpriv to create a file the agent cannot read; not checked here");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    fs::set_permissions(src.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let b = tree::Builder::new(src.path());
    b.file("data/d/ok", b"ok");
    b.file("data/d/secret", b"no");
    fs::set_permissions(b.path("data/d/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    b.dir("data/d/closed");
    b.file("data/d/closed/inner", b"x");
    fs::set_permissions(b.path("data/d/closed"), fs::Permissions::from_mode(0o700)).unwrap();
    for p in ["data", "data/d"] {
        fs::set_permissions(b.path(p), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    fs::set_permissions(out.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let archive = out.path().join("u.tar");
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(crate::support::bin_argv())
        .export(src.path(), &["/data/d"], &archive)
        .arg("--json");
    let o = run(&mut c, 0);
    let m = json(&o);
    assert_eq!(m["Status"], "PART_BACKUP_FINISHED");
    let w = m["Warnings"].to_string();
    assert!(w.contains("/data/d/secret") && w.contains("/data/d/closed"), "{w}");
    let list = std::process::Command::new("tar").arg("-tf").arg(&archive).output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("data/d/ok"));
}

#[test]
fn import_overwrites_archived_paths_and_keeps_others() {
    let src = tempfile::tempdir().unwrap();
    let b = tree::Builder::new(src.path());
    b.file("data/data/p/files/a", b"new a");
    b.file("data/data/p/files/sub/b", b"new b");
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("o.tar.zst");
    export(src.path(), &archive, &["/data/data/p"], &[]);
    let dst = tempfile::tempdir().unwrap();
    let d = tree::Builder::new(dst.path());
    d.file("data/data/p/files/a", b"old a");
    d.file("data/data/p/files/other", b"untouched");
    d.file("data/data/q/f", b"other app");
    // A directory where the archive has a file, and a file where it has a directory.
    d.dir("data/data/p/files/sub/b/was_dir");
    import(dst.path(), &archive);
    assert_eq!(fs::read(d.path("data/data/p/files/a")).unwrap(), b"new a");
    assert_eq!(fs::read(d.path("data/data/p/files/sub/b")).unwrap(), b"new b");
    assert_eq!(fs::read(d.path("data/data/p/files/other")).unwrap(), b"untouched");
    assert_eq!(fs::read(d.path("data/data/q/f")).unwrap(), b"other app");
}

/// Existing data, then a bad archive: the error is clear and nothing changed.
fn assert_import_fails_and_keeps(archive: &Path, code: i32, expect: &str) {
    let dst = tempfile::tempdir().unwrap();
    let d = tree::Builder::new(dst.path());
    d.file("data/data/p/files/a", b"precious");
    d.file("data/data/p/files/sub/b", b"also precious");
    let before = tree::snapshot(dst.path(), "data");
    let o = run(cpbackup().import(dst.path(), archive), code);
    let e = stderr(&o);
    assert!(e.contains(expect), "expected {expect:?} in: {e}");
    tree::assert_same(&before, &tree::snapshot(dst.path(), "data"), Ignore::default());
}

#[test]
fn corrupt_truncated_or_tampered_archives_change_nothing() {
    let src = tempfile::tempdir().unwrap();
    let b = tree::Builder::new(src.path());
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    b.file("data/data/p/files/a", &payload);
    b.file("data/data/p/files/sub/b", b"newer");
    let out = tempfile::tempdir().unwrap();
    for fmt in ["tar", "tar.zst", "ab"] {
        let archive = out.path().join(format!("good.{fmt}"));
        export(src.path(), &archive, &["/data/data/p"], &[]);
        let bytes = fs::read(&archive).unwrap();
        let manifest = fs::read(out.path().join(format!("good.{fmt}.manifest.json"))).unwrap();

        // Truncated, no manifest: the structure tells.
        let cut = out.path().join(format!("cut.{fmt}"));
        fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert_import_fails_and_keeps(&cut, 2, "archive");

        // One byte flipped, manifest present: the checksum (or the decoder) tells.
        let flipped = out.path().join(format!("flipped.{fmt}"));
        let mut f = bytes.clone();
        let i = f.len() / 2;
        f[i] ^= 0x55;
        fs::write(&flipped, &f).unwrap();
        fs::write(out.path().join(format!("flipped.{fmt}.manifest.json")), &manifest).unwrap();
        assert_import_fails_and_keeps(&flipped, 2, "");
        run(cpbackup().args(["verify", "--from", path_str(&flipped)]), 2);

        // Intact archive, verify passes.
        let o = run(cpbackup().args(["verify", "--from", path_str(&archive), "--json"]), 0);
        assert_eq!(json(&o)["ChecksumVerified"], true);
    }
    // Garbage.
    let garbage = out.path().join("garbage.tar");
    fs::write(&garbage, vec![0x42u8; 10_000]).unwrap();
    assert_import_fails_and_keeps(&garbage, 2, "archive");
}

#[test]
fn manifests_that_forbid_a_restore() {
    let src = tempfile::tempdir().unwrap();
    tree::Builder::new(src.path()).file("data/data/p/f", b"x");
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("m.tar");
    export(src.path(), &archive, &["/data/data/p"], &[]);
    let mpath = out.path().join("m.tar.manifest.json");
    let good: serde_json::Value = serde_json::from_slice(&fs::read(&mpath).unwrap()).unwrap();

    // Still being written: refused.
    let mut m = good.clone();
    m["Status"] = "BACKUPING".into();
    fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    assert_import_fails_and_keeps(&archive, 2, "BACKUPING");

    // Needs more space than there is: refused before anything is written.
    let mut m = good.clone();
    m["UncompressedSize"] = serde_json::json!(u64::MAX / 4);
    fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    assert_import_fails_and_keeps(&archive, 1, "not enough free space");

    // Tampered digest.
    let mut m = good.clone();
    m["Sha256"] = "0".repeat(64).into();
    fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    assert_import_fails_and_keeps(&archive, 2, "checksum mismatch");
}

#[test]
fn export_marks_the_manifest_while_writing_and_never_archives_itself() {
    // The archive is written inside the selection: it must not include itself.
    let src = tempfile::tempdir().unwrap();
    let b = tree::Builder::new(src.path());
    b.file("data/d/f", b"x");
    let dest = b.path("data/d/self.tar");
    let m = export(src.path(), &dest, &["/data/d"], &[]);
    assert_eq!(m["EntryCount"], 2, "{m}");
    let list = std::process::Command::new("tar").arg("-tf").arg(&dest).output().unwrap();
    let names = String::from_utf8_lossy(&list.stdout);
    assert!(!names.contains("self.tar"), "{names}");
}

#[test]
fn version_names_commit_target_and_profile() {
    let o = run(cpbackup().arg("version"), 0);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.starts_with("cpbackup ") && s.contains("commit") && s.contains("linux"), "{s}");
}

#[test]
fn demo_runs_the_whole_path_on_its_own_root() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let o = run(cpbackup().args(["demo", "--dir", path_str(&demo)]), 0);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("checksum matches the manifest"), "{out}");
    tree::assert_same(
        &tree::snapshot(&demo.join("phone"), "data/data/com.example.notes"),
        &tree::snapshot(&demo.join("restored"), "data/data/com.example.notes"),
        Ignore::default(),
    );
    assert!(demo.join("store/demo.tar.zst.manifest.json").is_file());
}
