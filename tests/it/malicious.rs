//! Crafted archives: traversal in every form, links that lead out, writes through a planted
//! symlink, device nodes, absurd sizes, truncation and garbage. None may write outside the
//! root, each must end in a clear error, and the existing tree must be unchanged.

use std::fs;
use std::path::Path;

use crate::support::tree::{self, Ignore};
use crate::support::{cpbackup, path_str, run, stderr};

/// A raw tar builder that writes whatever it is told: no checks, on purpose.
#[derive(Default)]
struct Crafted {
    out: Vec<u8>,
}

impl Crafted {
    fn entry(mut self, name: &[u8], kind: u8, link: &[u8], data: &[u8]) -> Self {
        self.header(name, kind, link, data.len() as u64);
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn header(&mut self, name: &[u8], kind: u8, link: &[u8], size: u64) {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        let s = format!("{size:011o}\0");
        if s.len() == 12 {
            h[124..136].copy_from_slice(s.as_bytes());
        } else {
            h[124] = 0x80;
            h[128..136].copy_from_slice(&size.to_be_bytes());
        }
        h[136..148].copy_from_slice(b"14000000000\0");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.out.extend_from_slice(&h);
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), b'0', b"", data)
    }
    fn dir(self, name: &str) -> Self {
        self.entry(name.as_bytes(), b'5', b"", b"")
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name.as_bytes(), b'2', target.as_bytes(), b"")
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name.as_bytes(), b'1', target.as_bytes(), b"")
    }
    fn end(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&[0u8; 1024]);
        self.out
    }
}

/// Import `archive` into a root holding precious data beside an "outside" sentinel directory;
/// expect failure with `expect` in the message, nothing outside touched, the root unchanged.
fn hostile(name: &str, archive: &[u8], expect: &str) {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let outside = base.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let b = tree::Builder::new(&root);
    b.file("data/data/p/files/a", b"precious");
    let before = tree::snapshot(&root, "data");
    let file = base.path().join(format!("{name}.tar"));
    fs::write(&file, archive).unwrap();
    let o = run(cpbackup().args(["import", "--root", path_str(&root), "--from", path_str(&file)]), 2);
    let e = stderr(&o);
    assert!(e.contains(expect), "{name}: expected {expect:?} in: {e}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "{name}: wrote outside the root");
    assert!(!base.path().join("evil").exists() && !base.path().join("etc").exists(), "{name}: escaped");
    tree::assert_same(&before, &tree::snapshot(&root, "data"), Ignore::default());
    assert_no_staging(&root);
}

fn assert_no_staging(root: &Path) {
    for top in ["", "data"] {
        if let Ok(rd) = fs::read_dir(root.join(top)) {
            for e in rd {
                let n = e.unwrap().file_name();
                assert!(!n.to_string_lossy().starts_with(".cpbackup-"), "staging left: {n:?}");
            }
        }
    }
}

#[test]
fn traversal_in_every_form_is_refused() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", Crafted::default().file("../evil", b"x").end(), ".."),
        ("dotdot_inner", Crafted::default().file("data/../../evil", b"x").end(), ".."),
        ("dotdot_deep", Crafted::default().file("data/a/../../../outside/evil", b"x").end(), ".."),
        ("absolute", Crafted::default().file("/tmp/evil", b"x").end(), "absolute"),
        ("dot_prefix_escape", Crafted::default().file("./../evil", b"x").end(), ".."),
        (
            "symlink_out",
            Crafted::default().symlink("data/link", "../../outside").end(),
            "leads out of the restore root",
        ),
        (
            "symlink_then_file_through_it",
            Crafted::default().symlink("data/d/link", "/data").file("data/d/link/x/evil", b"x").end(),
            "through the symlink",
        ),
        (
            "symlink_then_dir_through_it",
            Crafted::default().symlink("data/link", "../data").dir("data/link/sub").end(),
            "through the symlink",
        ),
        ("hardlink_out", Crafted::default().hardlink("data/hl", "../../etc/passwd").end(), ".."),
        (
            "hardlink_to_nothing_unpacked",
            Crafted::default().hardlink("data/hl", "data/data/p/files/a").end(),
            "not a file unpacked earlier",
        ),
        ("char_device", Crafted::default().entry(b"data/dev", b'3', b"", b"").end(), "device node"),
        ("block_device", Crafted::default().entry(b"data/dev", b'4', b"", b"").end(), "device node"),
        ("fifo", Crafted::default().entry(b"data/fifo", b'6', b"", b"").end(), "FIFO"),
        ("file_at_top", Crafted::default().file("data", b"x").end(), "top of the device tree"),
    ];
    for (name, archive, expect) in cases {
        hostile(name, &archive, expect);
    }
}

#[test]
fn truncated_and_garbage_archives_are_refused() {
    let good = Crafted::default().dir("data/x").file("data/x/f", &[1u8; 3000]).end();
    hostile("cut_in_data", &good[..1024], "archive");
    hostile("cut_at_block", &good[..512 * 8], "truncated");
    hostile("no_end_marker", &good[..good.len() - 1024], "truncated");
    let mut bad_sum = good.clone();
    bad_sum[512 + 148] = b'7';
    hostile("bad_checksum", &bad_sum, "archive");
    hostile("garbage", &[0xA5u8; 4096], "archive");
    hostile("ab_garbage_header", b"ANDROID BACKUP\nfive\n1\nnone\n", "version");
    hostile("ab_encrypted", b"ANDROID BACKUP\n5\n1\nAES-256\nAAAA\n", "encrypted");
    let mut zst = vec![0x28, 0xb5, 0x2f, 0xfd];
    zst.extend_from_slice(&[0xff; 64]);
    hostile("zstd_garbage", &zst, "archive");
}

#[test]
fn a_tiny_archive_claiming_terabytes_is_refused_before_writing() {
    // A header that claims 4 TiB, compressed into a few hundred bytes.
    let mut c = Crafted::default();
    c.header(b"data/bomb", b'0', b"", 4u64 << 40);
    let mut raw = c.out;
    raw.extend(std::iter::repeat_n(0u8, 1 << 20));
    let small = zstd::encode_all(&raw[..], 19).unwrap();
    assert!(small.len() < 4096);
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    tree::Builder::new(&root).file("data/keep", b"k");
    let file = base.path().join("bomb.tar.zst");
    fs::write(&file, &small).unwrap();
    let o = run(cpbackup().args(["import", "--root", path_str(&root), "--from", path_str(&file)]), 1);
    assert!(stderr(&o).contains("not enough free space"), "{}", stderr(&o));
    assert_eq!(fs::read(root.join("data/keep")).unwrap(), b"k");
    assert_no_staging(&root);
}
