//! A full disk during import and recover-app (issue 8): the phone's data lives on a small
//! tmpfs the test mounts, the archive holds more than fits. With a manifest the agent refuses
//! before writing; without one (an archive on stdin) it stops when the filesystem fills. Either
//! way: a clear error naming the space, exit 1, the data that was there before intact, and no
//! staging left behind to hold the space.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::android::{self, NOTES};
use crate::support::tree::{self, Ignore};
use crate::support::{cpbackup, run, stderr, Cli};

const MIB: usize = 1 << 20;

/// A tmpfs of `mib` MiB mounted on `dir` for as long as this lives.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, mib: usize) -> SmallDisk {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0755"), "cpbackup-test"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {mib} MiB tmpfs on {} failed ({}): the disk-full tests need root (CI runs as root)",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        SmallDisk { dir: dir.to_path_buf() }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn assert_no_staging(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name();
        assert!(!n.to_string_lossy().starts_with(".cpbackup-"), "left in {}: {n:?}", dir.display());
    }
}

/// Free bytes on the filesystem of `p`.
fn free(p: &Path) -> u64 {
    cpbackup::sys::free_bytes(p).unwrap()
}

#[test]
fn diskfull_import_refuses_or_stops_and_keeps_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    // The archive: 48 MiB that does not compress, exported with its manifest beside it.
    let src = tmp.path().join("src");
    tree::random_files(&src.join("data/media/0/big"), 6, 8 * MIB, 91);
    let archive = tmp.path().join("big.tar.zst");
    run(cpbackup().export(&src, &["/data/media/0"], &archive), 0);

    // The phone: its /data on a 40 MiB filesystem, 6 MiB of it the user's own.
    let root = tmp.path().join("phone");
    let _disk = SmallDisk::mount(&root.join("data"), 40);
    let b = tree::Builder::new(&root);
    tree::random_files(&root.join("data/media/0/big"), 2, 3 * MIB, 92);
    b.file("data/media/0/notes.txt", b"precious");
    let before = tree::snapshot(&root, "data/media");
    let free_before = free(&root.join("data"));

    // 1. With the manifest: refused before a byte is written.
    let out = run(cpbackup().import(&root, &archive), 1);
    let e = stderr(&out);
    assert!(e.contains("not enough free space") && e.contains("free some space"), "{e}");
    tree::assert_same(&before, &tree::snapshot(&root, "data/media"), Ignore::default());
    assert_no_staging(&root.join("data"));

    // 2. On stdin, with no manifest to tell the size: it stops when the filesystem is full.
    let mut child = cpbackup().import(&root, "-").stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let bytes = fs::read(&archive).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes); // the agent stops reading when it gives up
    });
    let out = child.wait_with_output().unwrap();
    let _ = feeder.join();
    let e = stderr(&out);
    eprintln!("import from stdin onto a full disk: {e}");
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("space") && (e.contains("free some space") || e.contains("filesystem is full")), "{e}");
    tree::assert_same(&before, &tree::snapshot(&root, "data/media"), Ignore::default());
    assert_no_staging(&root.join("data"));
    // The space the attempt took is given back.
    assert!(free(&root.join("data")) >= free_before, "staging still holds space");
}

#[test]
fn diskfull_recover_app_stops_and_keeps_the_installed_app() {
    android::require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let (a, ..) = android::phone_with_notes(tmp.path());
    let media = a.p("data/data/com.example.notes/files/media");
    tree::random_files(&media, 6, 8 * MIB, 93);
    let ab = tmp.path().join("notes.ab");
    let mut c = cpbackup();
    c.env("PATH", android::path_env()).env("FAKEROID_ROOT", &a.root);
    run(c.backup_app(&a.root, &[NOTES], &ab), 0);

    // The app's data shrinks to 4 MiB, and /data/data moves onto a 40 MiB filesystem.
    fs::remove_dir_all(&media).unwrap();
    tree::random_files(&media, 1, 4 * MIB, 94);
    let data = a.p("data/data");
    let keep = tmp.path().join("data-data");
    assert!(Command::new("cp").arg("-a").arg(&data).arg(&keep).status().unwrap().success());
    let _disk = SmallDisk::mount(&data, 40);
    assert!(Command::new("cp").arg("-a").arg(format!("{}/.", keep.display())).arg(&data).status().unwrap().success());
    let app = "data/data/com.example.notes";
    let before = tree::snapshot(&a.root, app);
    let free_before = free(&data);

    for from in [ab.clone(), PathBuf::from("-")] {
        let mut c = cpbackup();
        c.env("PATH", android::path_env()).env("FAKEROID_ROOT", &a.root);
        c.recover_app(&a.root, &from);
        if from == Path::new("-") {
            c.stdin(fs::File::open(&ab).unwrap());
        }
        let out = c.output().unwrap();
        let e = stderr(&out);
        eprintln!("recover-app from {from:?} onto a full disk: {e}");
        assert_eq!(out.status.code(), Some(1), "{from:?}: {e}");
        assert!(e.contains("space"), "{from:?}: the error names the space: {e}");
        tree::assert_same(&before, &tree::snapshot(&a.root, app), Ignore { xattrs: true, ..Default::default() });
        assert_no_staging(&data);
        assert!(free(&data) >= free_before, "{from:?}: staging still holds space");
    }
}
