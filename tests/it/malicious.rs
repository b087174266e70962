//! Hostile input: a table of crafted archives — traversal in every form, links that lead out,
//! writes through a planted symlink, special files, absurd sizes and counts, bad checksums,
//! truncated and garbage headers, corrupt containers and bombs — each imported through the real
//! binary as a plain `.tar`, a `.tar.zst` and an `.ab` (compressed and not), and the app-shaped
//! ones through `recover-app` too.
//!
//! For every case: the exit code says bad input (2; 1 for "not enough free space", which is what
//! a bomb that claims more than the disk holds gets), stderr names the problem, nothing is written
//! outside the root (a sibling directory, and an absolute sentinel directory that the absolute
//! names and link targets aim at), the root is exactly as it was, and no staging is left. Every
//! run gets 256 MiB of address space, a 2 MiB stack and 60 s: a bomb that is held in memory,
//! recursion that overflows a daemon worker's stack, or work that never ends fails the case.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::tree::{self, Ignore};
use crate::support::{cpbackup, path_str, Cli};

// ---------------------------------------------------------------------------------------------
// Building archives

/// A raw tar builder that writes whatever it is told: no checks, on purpose.
#[derive(Default)]
struct Crafted {
    out: Vec<u8>,
}

/// The default header: ustar, mode 0644, owner 0, the given type, name, link and size.
fn ustar(name: &[u8], kind: u8, link: &[u8], size: u64) -> [u8; 512] {
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
    h
}

fn seal(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// One pax record, `LEN key=value\n`, LEN counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

impl Crafted {
    fn from_tar(mut tar: Vec<u8>) -> Self {
        // Drop the end-of-archive blocks so that more entries can follow.
        while tar.len() >= 512 && tar[tar.len() - 512..].iter().all(|b| *b == 0) {
            tar.truncate(tar.len() - 512);
        }
        Crafted { out: tar }
    }
    fn entry(mut self, name: &[u8], kind: u8, link: &[u8], data: &[u8]) -> Self {
        self.header(name, kind, link, data.len() as u64);
        self.data(data)
    }
    fn data(mut self, data: &[u8]) -> Self {
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn header(&mut self, name: &[u8], kind: u8, link: &[u8], size: u64) {
        let mut h = ustar(name, kind, link, size);
        seal(&mut h);
        self.out.extend_from_slice(&h);
    }
    /// A header built from the default one by `edit`, checksum computed after.
    fn raw(mut self, name: &[u8], kind: u8, edit: impl FnOnce(&mut [u8; 512])) -> Self {
        let mut h = ustar(name, kind, b"", 0);
        edit(&mut h);
        seal(&mut h);
        self.out.extend_from_slice(&h);
        self
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
    /// A pax extended header (`x`) for the next entry.
    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.entry(b"PaxHeaders/x", b'x', b"", &body)
    }
    /// A GNU long name (`L`) for the next entry.
    fn longname(self, name: &[u8]) -> Self {
        let mut n = name.to_vec();
        n.push(0);
        self.entry(b"././@LongLink", b'L', b"", &n)
    }
    /// A GNU long link target (`K`) for the next entry.
    fn longlink(self, target: &[u8]) -> Self {
        let mut n = target.to_vec();
        n.push(0);
        self.entry(b"././@LongLink", b'K', b"", &n)
    }
    fn end(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&[0u8; 1024]);
        self.out
    }
}

/// The containers a tar travels in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wrap {
    Tar,
    Zst,
    /// `.ab` version 5, zlib (what cpbackup and `adb backup` write).
    Ab,
    /// `.ab` version 1, uncompressed.
    AbPlain,
}

const ALL: [Wrap; 4] = [Wrap::Tar, Wrap::Zst, Wrap::Ab, Wrap::AbPlain];
const COMPRESSED: [Wrap; 2] = [Wrap::Zst, Wrap::Ab];

impl Wrap {
    fn ext(self) -> &'static str {
        match self {
            Wrap::Tar => "tar",
            Wrap::Zst => "tar.zst",
            Wrap::Ab | Wrap::AbPlain => "ab",
        }
    }
}

/// The tar that `write` produces, in container `w`; streamed, so a bomb never exists
/// uncompressed in the test's memory.
fn wrap_stream(w: Wrap, write: &dyn Fn(&mut dyn Write) -> io::Result<()>) -> Vec<u8> {
    match w {
        Wrap::Tar => {
            let mut v = Vec::new();
            write(&mut v).unwrap();
            v
        }
        Wrap::Zst => {
            let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
            e.include_checksum(true).unwrap();
            write(&mut e).unwrap();
            e.finish().unwrap()
        }
        Wrap::Ab => {
            let mut e =
                flate2::write::ZlibEncoder::new(b"ANDROID BACKUP\n5\n1\nnone\n".to_vec(), flate2::Compression::best());
            write(&mut e).unwrap();
            e.finish().unwrap()
        }
        Wrap::AbPlain => {
            let mut v = b"ANDROID BACKUP\n1\n0\nnone\n".to_vec();
            write(&mut v).unwrap();
            v
        }
    }
}

fn wrap(tar: &[u8], w: Wrap) -> Vec<u8> {
    wrap_stream(w, &|o| o.write_all(tar))
}

/// `head`, then `n` copies of `byte`, then `tail`, in container `w`.
fn wrap_filled(w: Wrap, head: &[u8], byte: u8, n: u64, tail: &[u8]) -> Vec<u8> {
    wrap_stream(w, &|o| {
        o.write_all(head)?;
        let chunk = vec![byte; 1 << 20];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            o.write_all(&chunk[..k])?;
            left -= k as u64;
        }
        o.write_all(tail)
    })
}

// ---------------------------------------------------------------------------------------------
// Running the binary, measured

/// One run: exit code (`None` when killed by a signal: a crash, running out of the memory
/// limit, or the time limit), output, time.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
}

/// The address space every run gets (the binary itself takes about 60 MiB): a run that holds
/// what a bomb claims, or memory that grows with the entries, aborts instead of passing.
const MEMORY: u64 = 256 << 20;
const TIME: Duration = Duration::from_secs(60);
/// The main thread's stack: what the daemon's worker threads get (tokio's 2 MiB), so that
/// what overflows there overflows here.
const STACK: u64 = 2 << 20;

/// Run with a time limit (killed after it), an address-space limit (`RLIMIT_AS`) and a 2 MiB
/// stack (`RLIMIT_STACK`); the limits not under `CPBACKUP_BIN`, where an emulator shares the
/// process.
fn run_limited(cmd: &mut Command, time: Duration, memory: u64) -> Ran {
    use std::os::unix::process::CommandExt;
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    cmd.stdout(out.try_clone().unwrap()).stderr(err.try_clone().unwrap());
    // glibc reserves 64 MiB of address space per thread arena: two are plenty.
    cmd.env("MALLOC_ARENA_MAX", "2");
    if std::env::var_os("CPBACKUP_BIN").is_none() {
        // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent's.
        unsafe {
            cmd.pre_exec(move || {
                for (resource, value) in [(libc::RLIMIT_AS, memory), (libc::RLIMIT_STACK, STACK)] {
                    let lim = libc::rlimit { rlim_cur: value, rlim_max: value };
                    if libc::setrlimit(resource, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn cpbackup");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > time {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = start.elapsed().as_secs_f64();
    let read = |mut f: fs::File| {
        let mut s = Vec::new();
        io::Seek::rewind(&mut f).unwrap();
        f.read_to_end(&mut s).unwrap();
        String::from_utf8_lossy(&s).into_owned()
    };
    Ran { code: status.code(), stdout: read(out), stderr: read(err), secs }
}

fn run_bounded(cmd: &mut Command) -> Ran {
    run_limited(cmd, TIME, MEMORY)
}

/// A directory outside every test root that absolute names and link targets aim at, with a
/// file in it that hard links aim at. Nothing may ever appear in it, and its file must keep one
/// link and its content.
fn sentinel() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        // Those of earlier runs, whose process is gone.
        for e in fs::read_dir(tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("malicious-sentinel-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let d = tmp.join(format!("malicious-sentinel-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("passwd"), b"root:x:0:0").unwrap();
        d
    })
}

fn sentinel_str() -> String {
    sentinel().display().to_string()
}

fn assert_sentinel_untouched(name: &str) {
    let names: Vec<_> = fs::read_dir(sentinel()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("passwd")], "{name}: wrote into the sentinel directory");
    let m = fs::metadata(sentinel().join("passwd")).unwrap();
    assert_eq!(m.nlink(), 1, "{name}: hard-linked the sentinel file");
    assert_eq!(fs::read(sentinel().join("passwd")).unwrap(), b"root:x:0:0", "{name}: changed the sentinel file");
}

/// A root holding data that must survive, beside a directory nothing may reach.
struct Fixture {
    base: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    before: std::collections::BTreeMap<Vec<u8>, tree::Node>,
}

impl Fixture {
    fn new() -> Fixture {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        let b = tree::Builder::new(&root);
        b.file("data/data/p/files/a", b"precious");
        b.file("data/media/0/photo.jpg", b"jpeg");
        b.dir("data/local/tmp");
        let before = tree::snapshot(&root, "");
        Fixture { base, root, outside, before }
    }

    fn import(&self, name: &str, w: Wrap, archive: &[u8]) -> Ran {
        let file = self.base.path().join(format!("{name}.{}", w.ext()));
        fs::write(&file, archive).unwrap();
        let r = run_bounded(cpbackup().import(&self.root, &file));
        fs::remove_file(&file).unwrap();
        r
    }

    /// Nothing outside the root, nothing changed inside it, no staging anywhere.
    fn assert_untouched(&self, name: &str) {
        assert_eq!(fs::read_dir(&self.outside).unwrap().count(), 0, "{name}: wrote outside the root");
        let names: Vec<_> = fs::read_dir(self.base.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{name}: wrote beside the root: {names:?}");
        assert_sentinel_untouched(name);
        tree::assert_same(&self.before, &tree::snapshot(&self.root, ""), Ignore::default());
        assert_no_staging(&self.root);
    }
}

fn assert_no_staging(root: &Path) {
    for top in ["", "data", "data/data", "data/user_de/0", "data/local/tmp", "data/media/0/Android/data"] {
        if let Ok(rd) = fs::read_dir(root.join(top)) {
            for e in rd {
                let n = e.unwrap().file_name();
                assert!(!n.to_string_lossy().starts_with(".cpbackup-"), "staging left: {top}/{n:?}");
            }
        }
    }
}

/// What a hostile archive must end in.
#[derive(Clone, Copy)]
struct Expect {
    code: i32,
    says: &'static str,
}

/// Bad input: exit 2, naming the problem.
const fn refused(says: &'static str) -> Expect {
    Expect { code: 2, says }
}

/// More than the disk holds: exit 1, "not enough free space", before anything is written.
const NO_SPACE: Expect = Expect { code: 1, says: "not enough free space" };

/// Import `archive` in each of `wraps` into a fresh fixture, and check the outcome.
fn hostile(name: &str, tar: &[u8], wraps: &[Wrap], expect: Expect) {
    for &w in wraps {
        hostile_bytes(&format!("{name} ({w:?})"), w, &wrap(tar, w), expect);
    }
}

fn hostile_bytes(name: &str, w: Wrap, archive: &[u8], expect: Expect) -> Ran {
    let fx = Fixture::new();
    let r = fx.import("archive", w, archive);
    assert_eq!(r.code, Some(expect.code), "{name}: exit code; stderr:\n{}", r.stderr);
    assert!(r.stderr.contains(expect.says), "{name}: expected {:?} in:\n{}", expect.says, r.stderr);
    assert!(
        r.stderr.lines().count() < 20 && r.stderr.len() < 4096,
        "{name}: a clear error, not a flood:\n{}",
        r.stderr
    );
    fx.assert_untouched(name);
    r
}

// ---------------------------------------------------------------------------------------------
// import: the table

#[test]
fn traversal_in_every_form_is_refused() {
    let abs = format!("{}/evil", sentinel_str());
    let deep_climb = format!("data/{}{}evil", "a/".repeat(60), "../".repeat(70));
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("dotdot", Crafted::default().file("../evil", b"x").end(), refused("..")),
        ("dotdot_only", Crafted::default().dir("..").end(), refused("..")),
        ("dotdot_inner", Crafted::default().file("data/../../evil", b"x").end(), refused("..")),
        ("dotdot_deep", Crafted::default().file("data/a/../../../outside/evil", b"x").end(), refused("..")),
        ("dotdot_after_dot", Crafted::default().file("data/./../../evil", b"x").end(), refused("..")),
        ("dotdot_trailing", Crafted::default().dir("data/a/..").end(), refused("..")),
        ("dot_prefix_escape", Crafted::default().file("./../evil", b"x").end(), refused("..")),
        ("absolute", Crafted::default().file(&abs, b"x").end(), refused("absolute")),
        ("absolute_dir", Crafted::default().dir(&sentinel_str()).end(), refused("absolute")),
        ("double_slash_absolute", Crafted::default().file(&format!("/{abs}"), b"x").end(), refused("absolute")),
        // GNU long name (`L`) and pax `path=` carry names the 100-byte field cannot; they are
        // what the reader uses, so they are what is checked.
        ("longname_dotdot", Crafted::default().longname(b"../../evil").file("data/benign", b"x").end(), refused("..")),
        (
            "longname_deep_climb",
            Crafted::default().longname(deep_climb.as_bytes()).file("data/benign", b"x").end(),
            refused(".."),
        ),
        (
            "longname_absolute",
            Crafted::default().longname(abs.as_bytes()).file("data/benign", b"x").end(),
            refused("absolute"),
        ),
        (
            "longname_nul",
            Crafted::default().longname(b"data/x\0/../../../evil").file("data/benign", b"x").end(),
            refused("NUL"),
        ),
        (
            "pax_path_dotdot",
            Crafted::default().pax(&[("path", b"../../evil")]).file("data/benign", b"x").end(),
            refused(".."),
        ),
        (
            "pax_path_absolute",
            Crafted::default().pax(&[("path", abs.as_bytes())]).file("data/benign", b"x").end(),
            refused("absolute"),
        ),
        (
            "pax_path_nul",
            Crafted::default().pax(&[("path", b"data/x\0../../evil")]).file("data/benign", b"x").end(),
            refused("NUL"),
        ),
        (
            "pax_sparse_name_dotdot",
            Crafted::default()
                .pax(&[
                    ("GNU.sparse.major", b"1"),
                    ("GNU.sparse.minor", b"0"),
                    ("GNU.sparse.name", b"../../evil"),
                    ("GNU.sparse.realsize", b"1"),
                ])
                .file("data/GNUSparseFile.0/benign", b"1\n0\n1\n")
                .end(),
            refused(".."),
        ),
        (
            "pax_linkpath_out",
            Crafted::default().pax(&[("linkpath", b"../../../outside")]).symlink("data/link", "benign").end(),
            refused("leads out of the restore root"),
        ),
        (
            "pax_linkpath_hardlink_out",
            Crafted::default().pax(&[("linkpath", b"../../etc/passwd")]).hardlink("data/hl", "data/benign").end(),
            refused(".."),
        ),
        (
            "longlink_hardlink_absolute",
            Crafted::default().longlink(format!("{}/passwd", sentinel_str()).as_bytes()).hardlink("data/hl", "x").end(),
            refused("absolute"),
        ),
        (
            "longlink_symlink_out",
            Crafted::default().longlink(b"../../../../../../../outside").symlink("data/a/link", "x").end(),
            refused("leads out of the restore root"),
        ),
    ];
    for (name, tar, expect) in cases {
        hostile(name, &tar, &ALL, expect);
    }
}

#[test]
fn links_that_lead_out_of_the_root_are_refused() {
    let s = sentinel_str();
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "symlink_out",
            Crafted::default().symlink("data/link", "../../outside").end(),
            refused("leads out of the restore root"),
        ),
        (
            "symlink_dotdot_dotdot_then_file",
            Crafted::default().symlink("data/link", "../..").file("data/link/evil", b"x").end(),
            refused("leads out of the restore root"),
        ),
        (
            "symlink_absolute_then_file_through_it",
            Crafted::default().symlink("data/d/link", &s).file("data/d/link/evil", b"x").end(),
            refused("through the symlink"),
        ),
        (
            "symlink_to_slash_then_deep_file",
            Crafted::default().symlink("data/link", "/").file("data/link/etc/evil", b"x").end(),
            refused("through the symlink"),
        ),
        (
            "symlink_then_dir_through_it",
            Crafted::default().symlink("data/link", "../data").dir("data/link/sub").end(),
            refused("through the symlink"),
        ),
        (
            "symlink_then_symlink_through_it",
            Crafted::default().symlink("data/link", &s).symlink("data/link/passwd", "x").end(),
            refused("through the symlink"),
        ),
        (
            // The device has data/data/p/files (a directory); the archive puts a symlink in its
            // place, then a file through it.
            "symlink_replaces_existing_dir_then_file",
            Crafted::default().symlink("data/data/p/files", &s).file("data/data/p/files/evil", b"x").end(),
            refused("through the symlink"),
        ),
        (
            "symlink_replaces_archive_dir",
            Crafted::default().dir("data/d").symlink("data/d", &s).file("data/d/evil", b"x").end(),
            refused("would replace a directory"),
        ),
        (
            "file_replaces_archive_dir",
            Crafted::default().dir("data/d").file("data/d/f", b"x").file("data/d", b"x").end(),
            refused("would replace a directory"),
        ),
        (
            "hardlink_absolute",
            Crafted::default().hardlink("data/hl", &format!("{s}/passwd")).end(),
            refused("absolute"),
        ),
        ("hardlink_dotdot", Crafted::default().hardlink("data/hl", "../../etc/passwd").end(), refused("..")),
        ("hardlink_dotdot_outside", Crafted::default().hardlink("data/hl", "../outside/x").end(), refused("..")),
        (
            "hardlink_to_existing_device_file",
            Crafted::default().hardlink("data/hl", "data/data/p/files/a").end(),
            refused("not a file unpacked earlier"),
        ),
        (
            "hardlink_through_symlinked_dir",
            Crafted::default().symlink("data/s", &s).hardlink("data/h", "data/s/passwd").end(),
            refused("not a file unpacked earlier"),
        ),
        (
            "hardlink_through_relative_symlinked_dir",
            Crafted::default().file("data/real/f", b"x").symlink("data/s", "real").hardlink("data/h", "data/s/f").end(),
            refused("not a file unpacked earlier"),
        ),
        (
            "hardlink_to_a_symlink",
            Crafted::default().symlink("data/s", &format!("{s}/passwd")).hardlink("data/h", "data/s").end(),
            refused("not a file unpacked earlier"),
        ),
        (
            "hardlink_to_a_directory",
            Crafted::default().dir("data/d").hardlink("data/h", "data/d").end(),
            refused("not a file unpacked earlier"),
        ),
        (
            "hardlink_to_itself",
            Crafted::default().file("data/x", b"x").hardlink("data/x", "data/x").end(),
            refused("not a file unpacked earlier"),
        ),
        (
            "hardlink_across_tops",
            Crafted::default().file("cache/f", b"x").hardlink("data/h", "cache/f").end(),
            refused("did not unpack under the same top directory"),
        ),
        ("char_device", Crafted::default().entry(b"data/dev", b'3', b"", b"").end(), refused("device node")),
        ("block_device", Crafted::default().entry(b"data/dev", b'4', b"", b"").end(), refused("device node")),
        ("fifo", Crafted::default().entry(b"data/fifo", b'6', b"", b"").end(), refused("FIFO")),
        ("unknown_type", Crafted::default().entry(b"data/x", b'Z', b"", b"").end(), refused("unsupported type")),
        ("gnu_volume_header", Crafted::default().entry(b"data/x", b'V', b"", b"").end(), refused("unsupported type")),
        ("file_at_top", Crafted::default().file("data", b"x").end(), refused("top of the device tree")),
        ("symlink_at_top", Crafted::default().symlink("data", &s).end(), refused("top of the device tree")),
    ];
    for (name, tar, expect) in cases {
        hostile(name, &tar, &ALL, expect);
    }
}

#[test]
fn absurd_sizes_and_headers_are_refused() {
    let size_field = |bytes: [u8; 12]| move |h: &mut [u8; 512]| h[124..136].copy_from_slice(&bytes);
    let mut b256_2_63 = [0u8; 12];
    b256_2_63[0] = 0x80;
    b256_2_63[4..].copy_from_slice(&(1u64 << 63).to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        // Sizes the disk cannot hold are refused before a byte is written.
        ("size_base256_2_63", Crafted::default().raw(b"data/big", b'0', size_field(b256_2_63)).end(), NO_SPACE),
        (
            "pax_size_2_62",
            Crafted::default().pax(&[("size", b"4611686018427387904")]).file("data/big", b"").end(),
            NO_SPACE,
        ),
        // Sizes no tar reader can skip over.
        (
            "size_base256_all_ones",
            Crafted::default().raw(b"data/big", b'0', size_field([0xff; 12])).end(),
            refused("archive"),
        ),
        (
            "pax_size_u64_max",
            Crafted::default().pax(&[("size", b"18446744073709551615")]).file("data/big", b"").end(),
            refused("archive"),
        ),
        (
            "pax_size_not_a_number",
            Crafted::default().pax(&[("size", b"12abc")]).file("data/x", b"").end(),
            refused("size"),
        ),
        ("pax_size_negative", Crafted::default().pax(&[("size", b"-1")]).file("data/x", b"").end(), refused("size")),
        (
            "size_field_garbage",
            Crafted::default().raw(b"data/x", b'0', |h| h[124..136].fill(b'z')).end(),
            refused("archive"),
        ),
        (
            "mode_field_garbage",
            Crafted::default().raw(b"data/x", b'0', |h| h[100..108].fill(b'9')).end(),
            refused("mode"),
        ),
        // An octal size of 1 GiB with the end blocks behind it: fits the disk, ends inside the
        // file.
        (
            "size_octal_1gib_truncated",
            Crafted::default().raw(b"data/x", b'0', |h| h[124..136].copy_from_slice(b"10000000000\0")).end(),
            refused("ends inside"),
        ),
        // A pax record whose length claims gigabytes, and one whose length is not a number.
        (
            "pax_record_length_gigabytes",
            Crafted::default().entry(b"PaxHeaders/x", b'x', b"", b"9999999999 path=data/x\n").file("data/x", b"").end(),
            refused("pax"),
        ),
        (
            "pax_record_length_garbage",
            Crafted::default().entry(b"PaxHeaders/x", b'x', b"", b"zz path=data/x\n").file("data/x", b"").end(),
            refused("pax"),
        ),
        (
            "pax_mtime_garbage",
            Crafted::default().pax(&[("mtime", b"yesterday")]).file("data/x", b"").end(),
            refused("mtime"),
        ),
        ("pax_uid_huge", Crafted::default().pax(&[("uid", b"99999999999")]).file("data/x", b"").end(), refused("uid")),
        // Extension headers that describe nothing.
        ("longname_then_end", Crafted::default().longname(b"data/x").end(), refused("archive")),
        ("pax_then_end", Crafted::default().pax(&[("path", b"data/x")]).end(), refused("archive")),
        (
            "two_longnames",
            Crafted::default().longname(b"data/a").longname(b"data/b").file("data/x", b"").end(),
            refused("archive"),
        ),
        // Sparse maps that lie.
        (
            "pax_sparse_map_past_end",
            Crafted::default()
                .pax(&[
                    ("GNU.sparse.major", b"0"),
                    ("GNU.sparse.minor", b"1"),
                    ("GNU.sparse.name", b"data/sparse"),
                    ("GNU.sparse.realsize", b"1024"),
                    ("GNU.sparse.map", b"0,512,4096,512"),
                ])
                .file("data/GNUSparseFile.0/sparse", &[1u8; 1024])
                .end(),
            refused("sparse map"),
        ),
        (
            "pax_sparse_regions_overflow",
            Crafted::default()
                .pax(&[
                    ("GNU.sparse.major", b"0"),
                    ("GNU.sparse.minor", b"1"),
                    ("GNU.sparse.name", b"data/sparse"),
                    ("GNU.sparse.realsize", b"1024"),
                    ("GNU.sparse.map", b"18446744073709551615,2"),
                ])
                .file("data/GNUSparseFile.0/sparse", &[1u8; 2])
                .end(),
            refused("sparse map"),
        ),
        (
            "pax_sparse_1_0_count_huge",
            Crafted::default()
                .pax(&[
                    ("GNU.sparse.major", b"1"),
                    ("GNU.sparse.minor", b"0"),
                    ("GNU.sparse.name", b"data/sparse"),
                    ("GNU.sparse.realsize", b"1024"),
                ])
                .file("data/GNUSparseFile.0/sparse", b"99999999999999\n")
                .end(),
            refused("sparse map"),
        ),
    ];
    for (name, tar, expect) in cases {
        hostile(name, &tar, &ALL, expect);
    }
}

#[test]
fn truncated_garbage_and_corrupt_archives_are_refused() {
    let good = Crafted::default().dir("data/x").file("data/x/f", &[1u8; 3000]).end();
    let mut bad_sum = good.clone();
    bad_sum[512 + 148] = b'7';
    let mut bad_sum_first = good.clone();
    bad_sum_first[0] = b'D';
    let mut zero_sum = good.clone();
    zero_sum[512 + 148..512 + 156].fill(0);
    let tar_cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("bad_checksum", bad_sum, refused("checksum")),
        ("bad_checksum_first_header", bad_sum_first, refused("checksum")),
        ("checksum_field_zeroed", zero_sum, refused("archive")),
        ("cut_inside_header", good[..700].to_vec(), refused("archive")),
        ("cut_in_data", good[..1024].to_vec(), refused("archive")),
        ("cut_at_block", good[..512 * 8].to_vec(), refused("truncated")),
        ("no_end_marker", good[..good.len() - 1024].to_vec(), refused("truncated")),
        ("half_end_marker", good[..good.len() - 512].to_vec(), refused("truncated")),
        ("one_zero_block", vec![0u8; 512], refused("truncated")),
        ("garbage", vec![0xA5u8; 4096], refused("archive")),
        ("garbage_after_a_good_entry", [&good[..512 * 8], &[0x5Au8; 4096][..]].concat(), refused("archive")),
        ("text", b"hello, this is not an archive\n".repeat(40), refused("archive")),
    ];
    for (name, tar, expect) in tar_cases {
        hostile(name, &tar, &ALL, expect);
    }

    // Containers that are corrupt themselves.
    let zst = wrap(&good, Wrap::Zst);
    let mut zst_flipped = zst.clone();
    let mid = zst_flipped.len() / 2;
    zst_flipped[mid] ^= 0xff;
    zst_flipped[mid + 1] ^= 0x55;
    let mut zst_bad_checksum = zst.clone();
    let n = zst_bad_checksum.len();
    zst_bad_checksum[n - 1] ^= 0x01; // the frame's content checksum
    let ab = wrap(&good, Wrap::Ab);
    let mut ab_flipped = ab.clone();
    let mid = 24 + (ab_flipped.len() - 24) / 2;
    ab_flipped[mid] ^= 0xff;
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&good).unwrap();
        e.finish().unwrap()
    };
    let mut zst_garbage = vec![0x28, 0xb5, 0x2f, 0xfd];
    zst_garbage.extend_from_slice(&[0xff; 64]);
    // A well-formed encrypted header (random key lines) and some payload.
    let ab_encrypted = format!(
        "ANDROID BACKUP\n5\n1\nAES-256\n{}\n{}\n10000\n{}\n{}\n",
        "A1".repeat(64),
        "B2".repeat(64),
        "C3".repeat(16),
        "D4".repeat(96)
    )
    .into_bytes()
    .into_iter()
    .chain([0x5Au8; 64])
    .collect::<Vec<u8>>();
    let raw: Vec<(&str, Wrap, Vec<u8>, Expect)> = vec![
        ("empty_file", Wrap::Tar, Vec::new(), refused("empty")),
        ("zstd_garbage", Wrap::Zst, zst_garbage, refused("archive")),
        ("zstd_corrupt_frame", Wrap::Zst, zst_flipped, refused("archive")),
        ("zstd_bad_content_checksum", Wrap::Zst, zst_bad_checksum, refused("archive")),
        ("zstd_truncated_frame", Wrap::Zst, zst[..zst.len() / 2].to_vec(), refused("archive")),
        ("zstd_magic_only", Wrap::Zst, zst[..4].to_vec(), refused("archive")),
        ("zstd_then_garbage", Wrap::Zst, [&zst[..], &[0x11u8; 100][..]].concat(), refused("archive")),
        ("gzip_truncated", Wrap::Tar, gz[..gz.len() / 2].to_vec(), refused("archive")),
        ("gzip_magic_only", Wrap::Tar, gz[..2].to_vec(), refused("archive")),
        ("ab_garbage_version", Wrap::Ab, b"ANDROID BACKUP\nfive\n1\nnone\n".to_vec(), refused("version")),
        ("ab_version_6", Wrap::Ab, b"ANDROID BACKUP\n6\n1\nnone\n".to_vec(), refused("version 6")),
        ("ab_version_0", Wrap::Ab, b"ANDROID BACKUP\n0\n1\nnone\n".to_vec(), refused("version 0")),
        (
            "ab_encrypted_key_lines_cut",
            Wrap::Ab,
            b"ANDROID BACKUP\n5\n1\nAES-256\nAAAA\n".to_vec(),
            refused("truncated"),
        ),
        ("ab_encrypted_without_its_passphrase", Wrap::Ab, ab_encrypted.clone(), refused("encrypted")),
        (
            "ab_encrypted_rounds_absurd",
            Wrap::Ab,
            String::from_utf8(ab_encrypted).unwrap().replace("\n10000\n", "\n4000000000\n").into_bytes(),
            refused("rounds"),
        ),
        ("ab_unknown_encryption", Wrap::Ab, b"ANDROID BACKUP\n5\n1\nROT13\n".to_vec(), refused("encryption")),
        ("ab_header_cut", Wrap::Ab, b"ANDROID BACKUP\n5\n".to_vec(), refused("truncated")),
        ("ab_magic_cut", Wrap::Ab, b"ANDROID BACKUP".to_vec(), refused("truncated")),
        ("ab_endless_line", Wrap::Ab, [&b"ANDROID BACKUP\n"[..], &[b'5'; 100_000][..]].concat(), refused("version")),
        ("ab_header_only", Wrap::Ab, b"ANDROID BACKUP\n5\n1\nnone\n".to_vec(), refused("archive")),
        ("ab_zlib_corrupt", Wrap::Ab, ab_flipped, refused("archive")),
        ("ab_zlib_truncated", Wrap::Ab, ab[..24 + (ab.len() - 24) / 2].to_vec(), refused("archive")),
        (
            "ab_says_compressed_holds_plain_tar",
            Wrap::Ab,
            [&b"ANDROID BACKUP\n5\n1\nnone\n"[..], &good[..]].concat(),
            refused("archive"),
        ),
    ];
    for (name, w, bytes, expect) in raw {
        hostile_bytes(name, w, &bytes, expect);
    }
}

/// Only end-of-archive blocks: a well-formed empty archive (what GNU tar writes for an empty
/// file list, and what an export whose globs all matched nothing holds). Importing it is not an
/// error; it restores nothing, changes nothing and says it holds no entries.
#[test]
fn an_archive_of_zero_blocks_only_restores_nothing() {
    for w in ALL {
        let fx = Fixture::new();
        let r = fx.import("zeros", w, &wrap(&[0u8; 10240], w));
        assert_eq!(r.code, Some(0), "{w:?}: {}", r.stderr);
        fx.assert_untouched(&format!("zeros ({w:?})"));
        let fx = Fixture::new();
        let mut c = cpbackup();
        let file = fx.base.path().join(format!("zeros.{}", w.ext()));
        fs::write(&file, wrap(&[0u8; 1024], w)).unwrap();
        c.import(&fx.root, &file).arg("--json");
        let r = run_bounded(&mut c);
        assert_eq!(r.code, Some(0), "{w:?}: {}", r.stderr);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["Entries"], 0, "{v}");
        fs::remove_file(&file).unwrap();
        fx.assert_untouched(&format!("zeros ({w:?}, --json)"));
    }
}

/// Odd names that are not traversal on Linux: a backslash is an ordinary byte, and the ustar
/// name field ends at its first NUL (every tar reader stops there). They land inside the root
/// under the name a tar reader sees, and nowhere else.
#[test]
fn backslashes_and_nul_terminated_fields_stay_inside_the_root() {
    let tar =
        Crafted::default().file("data/..\\..\\evil", b"backslash").raw(b"data/ok\0/../../../evil", b'0', |_| {}).end();
    for w in ALL {
        let fx = Fixture::new();
        let r = fx.import("odd", w, &wrap(&tar, w));
        assert_eq!(r.code, Some(0), "{w:?}: {}", r.stderr);
        assert_eq!(fs::read(fx.root.join("data/..\\..\\evil")).unwrap(), b"backslash");
        assert!(fs::symlink_metadata(fx.root.join("data/ok")).unwrap().is_file());
        assert_eq!(fs::read_dir(&fx.outside).unwrap().count(), 0, "{w:?}: wrote outside the root");
        assert!(!fx.base.path().join("evil").exists() && !fx.root.join("evil").exists());
        assert_sentinel_untouched("odd");
        assert_no_staging(&fx.root);
    }
}

/// A later entry of a name replaces the earlier file or symlink of that name (tar's rule), and
/// never writes through the link it replaces.
#[test]
fn a_later_entry_replaces_an_earlier_file_or_link_never_writing_through_it() {
    let to_sentinel = format!("{}/passwd", sentinel_str());
    let tar = Crafted::default()
        .file("data/x", b"first")
        .file("data/x", b"second")
        .symlink("data/y", &to_sentinel)
        .file("data/y", b"mine")
        .end();
    for w in ALL {
        let fx = Fixture::new();
        let r = fx.import("again", w, &wrap(&tar, w));
        assert_eq!(r.code, Some(0), "{w:?}: {}", r.stderr);
        assert_eq!(fs::read(fx.root.join("data/x")).unwrap(), b"second");
        assert!(fs::symlink_metadata(fx.root.join("data/y")).unwrap().is_file(), "{w:?}: data/y is still a link");
        assert_eq!(fs::read(fx.root.join("data/y")).unwrap(), b"mine");
        assert_sentinel_untouched("again");
        assert_no_staging(&fx.root);
    }
}

/// The device's own symlinks are followed only inside the root: a device symlink that points
/// out of the root on the host (relative, climbing past it; or absolute, naming the host's
/// sentinel) is resolved as the phone would, under the root, and never written through.
#[test]
fn device_symlinks_are_never_followed_out_of_the_root() {
    let tar = Crafted::default().file("data/climb/evil", b"1").file("data/abs/evil", b"2").end();
    for w in [Wrap::Tar, Wrap::Zst] {
        let fx = Fixture::new();
        symlink("../../outside", fx.root.join("data/climb")).unwrap();
        symlink(sentinel(), fx.root.join("data/abs")).unwrap();
        let r = fx.import("device-links", w, &wrap(&tar, w));
        assert_eq!(r.code, Some(0), "{w:?}: {}", r.stderr);
        assert_eq!(fs::read_dir(&fx.outside).unwrap().count(), 0, "{w:?}: wrote through a device symlink");
        assert_sentinel_untouched("device-links");
        for (link, content) in [("data/climb", b"1"), ("data/abs", b"2")] {
            let evil = select_host(&fx.root, &format!("{link}/evil"));
            assert!(evil.starts_with(&fx.root), "{w:?}: {} is outside the root", evil.display());
            assert_eq!(fs::read(&evil).unwrap(), content, "{w:?}: {}", evil.display());
        }
        assert_no_staging(&fx.root);
    }
}

/// Where a device path lands under `root`, following symlinks the way the phone would (inside
/// the root), for checking where an import put a file.
fn select_host(root: &Path, rel: &str) -> PathBuf {
    cpbackup::select::resolve(root, rel.as_bytes(), true).unwrap().host
}

// ---------------------------------------------------------------------------------------------
// Bombs: tiny archives that claim terabytes

/// A header that claims 4 TiB (with a MiB of zeros behind it, far less than it claims): refused
/// before a byte is written, whatever the container.
#[test]
fn a_tiny_archive_claiming_terabytes_is_refused_before_writing() {
    let mut c = Crafted::default();
    c.header(b"data/bomb", b'0', b"", 4u64 << 40);
    for w in ALL {
        let bytes = wrap_filled(w, &c.out, 0, 1 << 20, &[]);
        if COMPRESSED.contains(&w) {
            assert!(bytes.len() < 4096, "{w:?}: {} bytes", bytes.len());
        }
        // Had it started writing, it would have hit the end of the data: "ends inside this file".
        hostile_bytes(&format!("bomb ({w:?})"), w, &bytes, NO_SPACE);
    }
}

/// Sparse entries claim a size the holes make cheap to store: the claimed (apparent) size must
/// fit the disk just like a plain file's, or a few KiB could make the import scan petabytes of
/// holes, or write terabytes of a repeated byte the compressor squeezes to nothing.
#[test]
fn sparse_bombs_are_refused_before_writing() {
    // pax 1.0: one data region of 4 TiB of 'A' (a few MiB of it actually present).
    let pax_data = |real: &[u8], map: &str| {
        let mut c = Crafted::default().pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"data/sparse"),
            ("GNU.sparse.realsize", real),
        ]);
        let mut map = map.as_bytes().to_vec();
        map.resize(512, 0);
        c.header(b"data/GNUSparseFile.0/sparse", b'0', b"", 512 + (4u64 << 40));
        c.out.extend_from_slice(&map);
        c.out
    };
    let four_tib = (4u64 << 40).to_string();
    let pib = (1u64 << 50).to_string();
    // pax 0.1: a petabyte of holes and 512 bytes of data at its end.
    let holes = {
        let map = format!("{},512", (1u64 << 50) - 512);
        let mut c = Crafted::default().pax(&[
            ("GNU.sparse.major", b"0"),
            ("GNU.sparse.minor", b"1"),
            ("GNU.sparse.name", b"data/holes"),
            ("GNU.sparse.realsize", pib.as_bytes()),
            ("GNU.sparse.map", map.as_bytes()),
        ]);
        c.header(b"data/GNUSparseFile.0/holes", b'0', b"", 512);
        c.out.extend_from_slice(&[7u8; 512]);
        c.out.extend_from_slice(&[0u8; 1024]);
        c.out
    };
    // Old GNU ('S'): a real size of a petabyte, one region of 512 bytes at its end.
    let gnu_holes = {
        let mut c = Crafted::default().raw(b"data/gnuholes", b'S', |h| {
            h[257..265].copy_from_slice(b"ustar  \0");
            h[124..136].copy_from_slice(b"00000001000\0");
            // Base-256 numbers: 0x80, then the value in the last 8 bytes.
            let b256 = |f: &mut [u8], v: u64| {
                f.fill(0);
                f[0] = 0x80;
                f[4..].copy_from_slice(&v.to_be_bytes());
            };
            b256(&mut h[386..398], (1u64 << 50) - 512);
            h[398..410].copy_from_slice(b"00000001000\0");
            b256(&mut h[483..495], 1u64 << 50);
        });
        c.out.extend_from_slice(&[7u8; 512]);
        c.out.extend_from_slice(&[0u8; 1024]);
        c.out
    };
    for w in ALL {
        let head = pax_data(four_tib.as_bytes(), &format!("1\n0\n{four_tib}\n"));
        let bytes = wrap_filled(w, &head, b'A', 4 << 20, &[]);
        hostile_bytes(&format!("sparse_data_bomb ({w:?})"), w, &bytes, NO_SPACE);
        for (name, tar) in [("sparse_hole_bomb", &holes), ("gnu_sparse_hole_bomb", &gnu_holes)] {
            let r = hostile_bytes(&format!("{name} ({w:?})"), w, &wrap(tar, w), NO_SPACE);
            assert!(r.secs < 20.0, "{name} ({w:?}): took {:.1} s", r.secs);
        }
    }
}

/// The tar reader holds GNU long names and pax records in memory whole: ones that claim a
/// terabyte, with 512 MiB of them actually present (a few hundred KiB compressed, twice the
/// memory limit every run gets), are refused once past a cap, within the limit.
#[test]
fn huge_long_names_and_pax_headers_are_refused_in_bounded_memory() {
    for (name, kind) in [("longname_1tb", b'L'), ("pax_header_1tb", b'x'), ("longlink_1tb", b'K')] {
        let mut c = Crafted::default();
        c.header(b"././@LongLink", kind, b"", 1 << 40);
        for w in COMPRESSED {
            let bytes = wrap_filled(w, &c.out, b'a', 2 * MEMORY, &[]);
            assert!(bytes.len() < 1 << 20, "{w:?}: {} bytes", bytes.len());
            let r = hostile_bytes(&format!("{name} ({w:?})"), w, &bytes, refused("bytes before one entry"));
            assert!(r.secs < 20.0, "{name} ({w:?}): took {:.1} s", r.secs);
        }
    }
    // Names that are merely long (24 MiB of "a/", inside that cap, a few KiB compressed):
    // refused as names no filesystem takes, before they are split into millions of components.
    let long = format!("data/{}x", "a/".repeat(12 << 20));
    type Build = fn(&[u8]) -> Vec<u8>;
    let cases: [(&str, Build); 4] = [
        ("longname_24mib", |n| Crafted::default().longname(n).file("data/x", b"").end()),
        ("pax_path_24mib", |n| Crafted::default().pax(&[("path", n)]).file("data/x", b"").end()),
        ("pax_linkpath_24mib", |n| Crafted::default().pax(&[("linkpath", n)]).symlink("data/l", "x").end()),
        ("longlink_hardlink_24mib", |n| Crafted::default().longlink(n).hardlink("data/h", "x").end()),
    ];
    for (name, build) in cases {
        let tar = build(long.as_bytes());
        for w in COMPRESSED {
            let r = hostile_bytes(&format!("{name} ({w:?})"), w, &wrap(&tar, w), refused("too long"));
            assert!(r.stderr.len() < 1024, "{name} ({w:?}): {} bytes of stderr", r.stderr.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Counts and depth

/// 200,000 empty files in a .tar.zst of a few hundred KiB. A phone's data can hold that many
/// files (thumbnails, caches, mail), so this is a real backup, not an attack: the import must
/// complete, with memory that does not grow with the number of files (the unpacker keeps
/// nothing per file, only per directory).
#[test]
fn two_hundred_thousand_entries_complete_in_bounded_memory() {
    const N: usize = 200_000;
    let bytes = wrap_stream(Wrap::Zst, &|o| {
        let mut c = Crafted::default().dir("data/many");
        for i in 0..N {
            c.header(format!("data/many/f{i:06}").as_bytes(), b'0', b"", 0);
            if c.out.len() > 1 << 20 {
                o.write_all(&c.out)?;
                c.out.clear();
            }
        }
        o.write_all(&c.end())
    });
    assert!(bytes.len() < 2 << 20, "{} bytes", bytes.len());
    let fx = Fixture::new();
    let file = fx.base.path().join("many.tar.zst");
    fs::write(&file, &bytes).unwrap();
    // Half the usual memory: the binary's own 60 MiB, and at most ~300 bytes per entry. The
    // time is the filesystem's (200,000 creates, 10-15 s here) and grows with the machine's
    // load: a generous limit, so that only a hang fails.
    let r = run_limited(cpbackup().import(&fx.root, &file), 3 * TIME, MEMORY / 2);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(fs::read_dir(fx.root.join("data/many")).unwrap().count(), N);
    assert_no_staging(&fx.root);
    // The data that was there is still there.
    assert_eq!(fs::read(fx.root.join("data/data/p/files/a")).unwrap(), b"precious");
}

/// 10,000 nested directories: a path no filesystem call takes (over 4,096 bytes). Refused with
/// a clear error that does not quote all 20,000 bytes of it, no stack overflow, nothing left.
#[test]
fn ten_thousand_levels_of_nesting_are_refused_clearly() {
    let deep = format!("data/{}f", "d/".repeat(10_000));
    let as_file = Crafted::default().pax(&[("path", deep.as_bytes())]).file("data/x", b"deep").end();
    let as_dirs = Crafted::default().longname(deep.trim_end_matches('f').as_bytes()).dir("data/x").end();
    for (name, tar) in [("deep_file", as_file), ("deep_dir", as_dirs)] {
        for w in [Wrap::Tar, Wrap::Zst, Wrap::Ab] {
            let r = hostile_bytes(&format!("{name} ({w:?})"), w, &wrap(&tar, w), refused("too long"));
            assert!(r.stderr.len() < 1024, "{name} ({w:?}): {} bytes of stderr", r.stderr.len());
        }
    }
}

/// As deep as a path can go (about 1,900 levels under the root) is a real tree: it restores,
/// into an existing tree just as deep (the merge walks every level), with the 2 MiB stack of a
/// daemon worker. (The merge used to recurse, 6 KiB a level: it overflowed even 8 MiB.)
#[test]
fn the_deepest_restorable_tree_restores_without_overflowing_the_stack() {
    let fx = Fixture::new();
    let prefix_len = fx.root.join("data/.cpbackup-staging-4294967295-4294967295/").as_os_str().len();
    let levels = (4000 - prefix_len) / 2;
    let rel = format!("data/{}", "d/".repeat(levels));
    fs::create_dir_all(fx.root.join(&rel)).unwrap();
    fs::write(fx.root.join(&rel).join("old"), b"old").unwrap();
    let mut c = Crafted::default();
    // Every level as its own entry, so that every level is merged and gets its metadata.
    for i in 1..=levels {
        let name = format!("data/{}", "d/".repeat(i));
        c = c.pax(&[("path", name.as_bytes())]).dir("data/x");
    }
    let tar = c.pax(&[("path", format!("{rel}new").as_bytes())]).file("data/x", b"new").end();
    let r = fx.import("deepest", Wrap::Zst, &wrap(&tar, Wrap::Zst));
    assert_eq!(r.code, Some(0), "{levels} levels: {}", r.stderr);
    assert_eq!(fs::read(fx.root.join(&rel).join("new")).unwrap(), b"new");
    assert_eq!(fs::read(fx.root.join(&rel).join("old")).unwrap(), b"old");
    assert_no_staging(&fx.root);
}

// ---------------------------------------------------------------------------------------------
// recover-app: the same attacks in Android's layout

const FIXTURE_PKG: &str = "org.fixture.app";

/// The tar inside the independently built `adb backup` fixture (one package with an APK).
fn fixture_tar() -> Vec<u8> {
    let ab = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adb-backup-v5.ab")).unwrap();
    let mut tar = Vec::new();
    flate2::read::ZlibDecoder::new(&ab[24..]).read_to_end(&mut tar).unwrap();
    tar
}

/// A fake phone, a sibling directory nothing may reach, and the recover-app command.
struct AppFixture {
    phone: crate::android::Phone,
    outside: PathBuf,
}

impl AppFixture {
    fn new() -> AppFixture {
        let phone = crate::android::Phone::new(10300, 33, "arm64-v8a,armeabi-v7a");
        let outside = phone.root.parent().unwrap().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(phone.p("data/data/keep.txt"), b"precious").unwrap();
        AppFixture { phone, outside }
    }

    fn recover(&self, name: &str, ab: &[u8]) -> Ran {
        let file = self.phone.root.parent().unwrap().join(format!("{name}.ab"));
        fs::write(&file, ab).unwrap();
        let mut c = cpbackup();
        c.env("PATH", crate::android::path_env()).env("FAKEROID_ROOT", &self.phone.root);
        c.recover_app(&self.phone.root, &file).arg("--json");
        let r = run_bounded(&mut c);
        fs::remove_file(&file).unwrap();
        r
    }

    fn assert_contained(&self, name: &str) {
        assert_eq!(fs::read_dir(&self.outside).unwrap().count(), 0, "{name}: wrote outside the root");
        assert_sentinel_untouched(name);
        assert_eq!(fs::read(self.phone.p("data/data/keep.txt")).unwrap(), b"precious", "{name}");
        assert!(!self.phone.p("evil").exists() && !self.phone.p("data/evil").exists(), "{name}: escaped its domain");
        assert_no_staging(&self.phone.root);
    }

    fn pm_log(&self) -> String {
        fs::read_to_string(self.phone.p(".fakeroid/log")).unwrap_or_default()
    }
}

/// Traversal, links out, invalid package names and bombs in `apps/PKG/…` entries: refused by
/// recover-app before anything on the phone changes (no pm call that installs or uninstalls).
#[test]
fn recover_app_refuses_hostile_entries_before_touching_the_phone() {
    let p = FIXTURE_PKG;
    let s = sentinel_str();
    let manifest = format!("1\n{p}\n7\n29\ncom.android.vending\n1\n1\n3082abcd\n");
    let app = || Crafted::default().file(&format!("apps/{p}/_manifest"), manifest.as_bytes());
    let mut bomb = app();
    bomb.header(format!("apps/{p}/r/bomb").as_bytes(), b'0', b"", 4u64 << 40);
    let mut apk_bomb = app();
    apk_bomb.header(format!("apps/{p}/a/base.apk").as_bytes(), b'0', b"", 4u64 << 40);
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("dotdot_in_domain", app().file(&format!("apps/{p}/r/../../../../evil"), b"x").end(), refused("..")),
        ("dotdot_as_package", Crafted::default().file("apps/../evil", b"x").end(), refused("..")),
        ("absolute", app().file(&format!("{s}/evil"), b"x").end(), refused("absolute")),
        (
            "pax_path_dotdot",
            app().pax(&[("path", format!("apps/{p}/f/../../../../../evil").as_bytes())]).file("apps/x", b"x").end(),
            refused(".."),
        ),
        (
            "longname_dotdot",
            app().longname(format!("apps/{p}/ef/../../../../../../evil").as_bytes()).file("apps/x", b"x").end(),
            refused(".."),
        ),
        (
            "hardlink_absolute",
            app().hardlink(&format!("apps/{p}/r/hl"), &format!("{s}/passwd")).end(),
            refused("absolute"),
        ),
        ("hardlink_dotdot", app().hardlink(&format!("apps/{p}/r/hl"), "../../../etc/passwd").end(), refused("..")),
        ("invalid_package", Crafted::default().file("apps/com.x;rm -rf/r/f", b"x").end(), refused("invalid package")),
        ("package_dotdot_like", Crafted::default().file("apps/.../r/f", b"x").end(), refused("invalid package")),
        (
            "device_node",
            app().entry(format!("apps/{p}/r/dev").as_bytes(), b'3', b"", b"").end(),
            refused("device node"),
        ),
        (
            "ten_thousand_levels",
            app()
                .pax(&[("path", format!("apps/{p}/r/{}f", "d/".repeat(10_000)).as_bytes())])
                .file("apps/x", b"x")
                .end(),
            // Not the archive's fault as a whole: this package fails, others would go on.
            Expect { code: 1, says: "too long" },
        ),
    ];
    for (name, tar, expect) in cases {
        for w in [Wrap::Ab, Wrap::AbPlain] {
            let name = format!("{name} ({w:?})");
            let fx = AppFixture::new();
            let r = fx.recover("hostile", &wrap(&tar, w));
            assert_eq!(r.code, Some(expect.code), "{name}: exit code; stderr:\n{}", r.stderr);
            assert!(r.stderr.contains(expect.says), "{name}: expected {:?} in:\n{}", expect.says, r.stderr);
            assert!(r.stderr.len() < 4096, "{name}: a clear error, not a flood:\n{}", r.stderr);
            let log = fx.pm_log();
            assert!(!log.contains("install") && !log.contains("uninstall"), "{name}: touched the phone: {log}");
            fx.assert_contained(&name);
        }
    }
    // Bombs: the data and the APK claim 4 TiB, a MiB present. Refused before writing (had it
    // written, the data would have ended early instead), in bounded time.
    for (name, c) in [("data_bomb", bomb), ("apk_bomb", apk_bomb)] {
        for w in [Wrap::Ab, Wrap::AbPlain] {
            let name = format!("{name} ({w:?})");
            let bytes = wrap_filled(w, &c.out, 0, 1 << 20, &[]);
            let fx = AppFixture::new();
            let r = fx.recover("bomb", &bytes);
            assert_eq!(r.code, Some(NO_SPACE.code), "{name}: exit code; stderr:\n{}", r.stderr);
            assert!(r.stderr.contains(NO_SPACE.says), "{name}: {}", r.stderr);
            assert!(!fx.pm_log().contains("install"), "{name}: {}", fx.pm_log());
            fx.assert_contained(&name);
        }
    }
}

/// What Android's format cannot carry (symlinks, hard links) and what is not app data (entries
/// outside `apps/`, unknown domains) is skipped with a warning, never followed: a file "through"
/// a skipped symlink lands in a real directory inside the app's data dir.
#[test]
fn recover_app_skips_links_and_foreign_entries_without_following_them() {
    crate::support::require(&["unzip"]);
    let p = FIXTURE_PKG;
    let s = sentinel_str();
    let tar = Crafted::from_tar(fixture_tar())
        .symlink(&format!("apps/{p}/f/link"), &s)
        .file(&format!("apps/{p}/f/link/evil"), b"through")
        .symlink(&format!("apps/{p}/r/up"), "../../../../../../..")
        .file(&format!("apps/{p}/r/up/evil"), b"up")
        .hardlink(&format!("apps/{p}/f/hl"), &format!("apps/{p}/f/notes.txt"))
        .file("data/evil", b"not an app")
        .file("shared/0/evil", b"shared storage")
        .file(&format!("apps/{p}/zz/evil"), b"unknown domain")
        .end();
    for w in [Wrap::Ab, Wrap::AbPlain] {
        let fx = AppFixture::new();
        let r = fx.recover("links", &wrap(&tar, w));
        assert_eq!(r.code, Some(0), "{w:?}: {}", r.stderr);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["Apps"][0]["Status"], "RECOVERED", "{v}");
        let warnings = v["Warnings"].to_string();
        for said in ["only files and directories", "not an app entry", "unknown domain"] {
            assert!(warnings.contains(said), "{w:?}: {said:?} not in {warnings}");
        }
        let ce = fx.phone.p(&format!("data/data/{p}"));
        for (rel, content) in [("files/link/evil", &b"through"[..]), ("up/evil", b"up")] {
            let m = fs::symlink_metadata(ce.join(rel).parent().unwrap()).unwrap();
            assert!(m.is_dir(), "{w:?}: {rel}'s directory is a real directory");
            assert_eq!(fs::read(ce.join(rel)).unwrap(), content, "{w:?}: {rel}");
        }
        assert!(!ce.join("files/hl").exists(), "{w:?}: a hard link was restored");
        assert_eq!(fs::read_to_string(ce.join("files/notes.txt")).unwrap(), "my notes\n");
        let mut stack = vec![ce.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let ft = e.file_type().unwrap();
                assert!(!ft.is_symlink() || e.file_name() == "lib", "{w:?}: symlink restored: {:?}", e.path());
                if ft.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        fx.assert_contained(&format!("links ({w:?})"));
    }
}

/// `levels` directories `d`, each in the one above, under `top`, with a file `leaf` at the
/// bottom: made one level at a time relative to the level above, since the whole path is longer
/// than any file-system call takes.
fn deep_tree(top: &Path, levels: usize) {
    use std::os::unix::io::{AsRawFd, FromRawFd};
    fs::create_dir(top).unwrap();
    let mut dir = fs::File::open(top).unwrap();
    for _ in 0..levels {
        // SAFETY: mkdirat and openat relative to a descriptor this File owns, with a
        // NUL-terminated name; the new descriptor is owned by the File made from it.
        dir = unsafe {
            assert_eq!(libc::mkdirat(dir.as_raw_fd(), c"d".as_ptr(), 0o755), 0, "{}", io::Error::last_os_error());
            let fd = libc::openat(dir.as_raw_fd(), c"d".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
            assert!(fd >= 0, "{}", io::Error::last_os_error());
            fs::File::from_raw_fd(fd)
        };
    }
    // SAFETY: as above.
    let fd = unsafe {
        libc::openat(dir.as_raw_fd(), c"leaf".as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC, 0o644)
    };
    assert!(fd >= 0, "{}", io::Error::last_os_error());
    // SAFETY: the descriptor was just opened and is owned by nothing else.
    drop(unsafe { fs::File::from_raw_fd(fd) });
}

/// The owner (uid, gid) of every level of a tree made by `deep_tree`, top first, the leaf last.
fn deep_owners(top: &Path) -> Vec<(u32, u32)> {
    use std::os::unix::io::{AsRawFd, FromRawFd};
    let mut dir = fs::File::open(top).unwrap();
    let mut out = Vec::new();
    loop {
        let m = dir.metadata().unwrap();
        out.push((m.uid(), m.gid()));
        // SAFETY: openat relative to a descriptor this File owns, with a NUL-terminated name.
        let fd = unsafe {
            libc::openat(dir.as_raw_fd(), c"d".as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        };
        if fd < 0 {
            // SAFETY: as above.
            let leaf = unsafe {
                libc::openat(dir.as_raw_fd(), c"leaf".as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            };
            assert!(leaf >= 0, "level {} has neither d nor leaf", out.len());
            // SAFETY: the descriptor was just opened and is owned by nothing else.
            let m = unsafe { fs::File::from_raw_fd(leaf) }.metadata().unwrap();
            out.push((m.uid(), m.gid()));
            return out;
        }
        // SAFETY: as above.
        dir = unsafe { fs::File::from_raw_fd(fd) };
    }
}

/// A tree 10,000 directories deep (a path of 20,000 bytes, five times what a file-system call
/// takes) in a package's staged data when the owner step walks it: it appears there while pm
/// installs the app (a hook of the fake pm moves it in, as any root process could). The owner
/// step, and everything after it, walks it level by level without recursion under the 2 MiB
/// stack of a daemon worker: the package is recovered, every level owned by the app, nothing
/// left behind.
#[test]
fn a_tree_ten_thousand_levels_deep_goes_through_the_owner_step() {
    crate::support::require(&["unzip"]);
    const LEVELS: usize = 10_000;
    let fx = AppFixture::new();
    let deep = fx.phone.root.parent().unwrap().join("deep");
    deep_tree(&deep, LEVELS);
    let hooks = fx.phone.p(".fakeroid/hooks");
    fs::create_dir_all(&hooks).unwrap();
    let hook = hooks.join("pm-install-commit");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\nfor d in \"$FAKEROID_ROOT\"/data/data/.cpbackup-app-*-{FIXTURE_PKG}; do mv {} \"$d/deep\"; done\n",
            path_str(&deep)
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let r = fx.recover("deep", &wrap(&fixture_tar(), Wrap::Ab));
    let placed = fx.phone.p(&format!("data/data/{FIXTURE_PKG}/deep"));
    let owners = if placed.exists() { deep_owners(&placed) } else { Vec::new() };
    let app = fs::metadata(fx.phone.p(&format!("data/data/{FIXTURE_PKG}"))).ok().map(|m| (m.uid(), m.gid()));
    // GNU rm walks any depth; the test's own temp-dir removal does not.
    for p in [&placed, &deep] {
        let st = Command::new("rm").arg("-rf").arg(p).status().unwrap();
        assert!(st.success(), "rm -rf {}", p.display());
    }
    assert_eq!(r.code, Some(0), "stderr:\n{}", r.stderr);
    assert!(r.stderr.len() < 4096, "a flood of output:\n{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["Apps"][0]["Status"], "RECOVERED", "{v}");
    assert!(!deep.exists() || fs::read_dir(&deep).is_err(), "the hook did not move the tree in");
    assert_eq!(owners.len(), LEVELS + 2, "levels of the recovered tree (the top, {LEVELS} below it, the leaf)");
    let app = app.expect("the app's data dir");
    assert!(owners.iter().all(|o| *o == app), "a level not owned by the app {app:?}");
    fx.assert_contained("deep");
}
