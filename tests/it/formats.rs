//! Interoperability: GNU tar, the zstd CLI and the `.ab` shell recipe read what cpbackup writes,
//! with the same paths, modes, owners and times; cpbackup reads what GNU tar writes.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::tree::{self, Ignore};
use crate::support::{cpbackup, require, run, Cli};

const APP: &str = "data/data/com.example.app";

fn export(root: &Path, dest: &Path) {
    run(cpbackup().export(root, &[&format!("/{APP}")], dest), 0);
}

fn sh(script: &str) -> std::process::Output {
    let o = Command::new("sh").arg("-c").arg(script).env_remove("TAR_OPTIONS").output().unwrap();
    assert!(o.status.success(), "{script}\n{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Metadata GNU tar cannot or does not restore exactly like cpbackup.
fn gnu_ignore() -> Ignore {
    Ignore { xattrs: true, link_mtime: false, top_meta: false }
}

#[test]
fn gnu_tar_extracts_cpbackup_tar_exactly() {
    require(&["tar"]);
    let src = tempfile::tempdir().unwrap();
    tree::full_case_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("x.tar");
    export(src.path(), &archive);
    let dst = tempfile::tempdir().unwrap();
    sh(&format!("tar --numeric-owner --same-owner -xpf '{}' -C '{}'", archive.display(), dst.path().display()));
    tree::assert_same(&tree::snapshot(src.path(), APP), &tree::snapshot(dst.path(), APP), gnu_ignore());
}

#[test]
fn zstd_cli_and_gnu_tar_extract_cpbackup_tar_zst() {
    require(&["tar"]);
    require(&["zstd"]);
    let src = tempfile::tempdir().unwrap();
    tree::full_case_tree(src.path());
    // A photo's worth of incompressible bytes: cpbackup stores them in frames of raw blocks.
    fs::write(src.path().join(APP).join("files/photo.jpg"), cpbackup::demo::noise(2 << 20, 11)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("x.tar.zst");
    export(src.path(), &archive);
    let bytes = fs::read(&archive).unwrap();
    let stored_frame = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    assert!(bytes[4..].windows(6).any(|w| w == stored_frame), "no frame of stored blocks in the archive");
    let dst = tempfile::tempdir().unwrap();
    sh(&format!(
        "zstd -d -c < '{}' | tar --numeric-owner --same-owner -xpf - -C '{}'",
        archive.display(),
        dst.path().display()
    ));
    tree::assert_same(&tree::snapshot(src.path(), APP), &tree::snapshot(dst.path(), APP), gnu_ignore());
}

#[test]
fn ab_container_passes_the_dd_zlib_flate_recipe() {
    require(&["tar"]);
    require(&["zlib-flate"]);
    let src = tempfile::tempdir().unwrap();
    tree::full_case_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let ab = out.path().join("x.ab");
    let tar = out.path().join("x.tar");
    export(src.path(), &ab);
    export(src.path(), &tar);
    let bytes = fs::read(&ab).unwrap();
    assert!(bytes.starts_with(b"ANDROID BACKUP\n5\n1\nnone\n"));
    assert_eq!(bytes[24], 0x78, "zlib stream right after the 24-byte header");
    let listed = sh(&format!("dd if='{}' bs=24 skip=1 2>/dev/null | zlib-flate -uncompress | tar -t", ab.display()));
    let direct = sh(&format!("tar -tf '{}'", tar.display()));
    assert!(!listed.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&listed.stdout), String::from_utf8_lossy(&direct.stdout));
    // And the .ab's tar extracts to the same tree.
    let dst = tempfile::tempdir().unwrap();
    sh(&format!(
        "dd if='{}' bs=24 skip=1 2>/dev/null | zlib-flate -uncompress | tar --numeric-owner --same-owner -xpf - -C '{}'",
        ab.display(),
        dst.path().display()
    ));
    tree::assert_same(&tree::snapshot(src.path(), APP), &tree::snapshot(dst.path(), APP), gnu_ignore());
}

#[test]
fn cpbackup_imports_what_gnu_tar_writes() {
    require(&["tar"]);
    let src = tempfile::tempdir().unwrap();
    tree::full_case_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    for (name, flags) in [("posix.tar", "--format=posix --sparse"), ("gnu.tar", "--format=gnu --sparse")] {
        let archive = out.path().join(name);
        sh(&format!("tar {flags} --numeric-owner -cf '{}' -C '{}' {APP}", archive.display(), src.path().display()));
        let dst = tempfile::tempdir().unwrap();
        run(cpbackup().import(dst.path(), &archive), 0);
        let mut ignore = gnu_ignore();
        if name == "gnu.tar" {
            // The GNU format stores whole seconds only.
            ignore.link_mtime = true;
            let a = strip_nanos(tree::snapshot(src.path(), APP));
            let b = strip_nanos(tree::snapshot(dst.path(), APP));
            tree::assert_same(&a, &b, ignore);
        } else {
            tree::assert_same(&tree::snapshot(src.path(), APP), &tree::snapshot(dst.path(), APP), ignore);
        }
        let sparse = fs::metadata(dst.path().join(APP).join("files/sparse.img")).unwrap();
        assert!(std::os::unix::fs::MetadataExt::blocks(&sparse) * 512 < 8 << 20, "{name}: sparse file restored dense");
    }
}

fn strip_nanos(
    mut s: std::collections::BTreeMap<Vec<u8>, tree::Node>,
) -> std::collections::BTreeMap<Vec<u8>, tree::Node> {
    for n in s.values_mut() {
        n.mtime.1 = 0;
    }
    s
}

#[test]
fn tar_over_stdout_matches_the_file() {
    let src = tempfile::tempdir().unwrap();
    tree::Builder::new(src.path()).file("data/d/f", b"content");
    let o = cpbackup()
        .export(src.path(), &["/data/d"], "-")
        .args(["--format", "tar"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(o.stderr.is_empty(), "nothing but the archive on a non-terminal: {}", String::from_utf8_lossy(&o.stderr));
    let out = tempfile::tempdir().unwrap();
    let p = out.path().join("s.tar");
    fs::write(&p, &o.stdout).unwrap();
    let listed = sh(&format!("tar -tvf '{}'", p.display()));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("data/d/f"));
}

#[test]
fn reads_ab_versions_1_to_5_compressed_or_not() {
    let src = tempfile::tempdir().unwrap();
    tree::Builder::new(src.path()).file("data/d/f", b"from an old phone");
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("x.tar");
    run(cpbackup().export(src.path(), &["/data/d"], &tar), 0);
    let tar_bytes = fs::read(&tar).unwrap();
    for version in 1..=5 {
        for compressed in [false, true] {
            let mut ab = format!("ANDROID BACKUP\n{version}\n{}\nnone\n", u8::from(compressed)).into_bytes();
            if compressed {
                ab.append(&mut zlib_flate(&tar_bytes));
            } else {
                ab.extend_from_slice(&tar_bytes);
            }
            let file = out.path().join(format!("v{version}-{compressed}.ab"));
            fs::write(&file, &ab).unwrap();
            let dst = tempfile::tempdir().unwrap();
            run(cpbackup().import(dst.path(), &file), 0);
            assert_eq!(
                fs::read(dst.path().join("data/d/f")).unwrap(),
                b"from an old phone",
                "v{version} compressed={compressed}"
            );
        }
    }
}

/// zlib through the `zlib-flate` CLI, independent of cpbackup's own encoder.
fn zlib_flate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    require(&["zlib-flate"]);
    let mut child =
        Command::new("zlib-flate").arg("-compress").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}
