//! Trees with every case an archive must carry, and a comparer that checks content and
//! metadata entry by entry.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

/// Whether we can set arbitrary owners (root) — the CI and the phone both run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub struct Builder {
    pub root: PathBuf,
    /// Whether `user.*` xattrs could be set on this filesystem.
    pub xattrs: bool,
}

impl Builder {
    pub fn new(root: &Path) -> Builder {
        Builder { root: root.to_path_buf(), xattrs: false }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(&p).expect("mkdir");
        p
    }

    pub fn file(&self, rel: &str, content: &[u8]) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir parent");
        }
        fs::write(&p, content).expect("write file");
        p
    }

    /// Set owner, mode and an mtime with nanoseconds on an existing path.
    pub fn meta(&self, rel: &str, uid: u32, gid: u32, mode: u32, mtime: (i64, u32)) {
        let p = self.path(rel);
        if is_root() {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).expect("chown");
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        let t = FileTime::from_unix_time(mtime.0, mtime.1);
        filetime::set_symlink_file_times(&p, t, t).expect("utimes");
    }
}

/// An Android-like data tree with every case the issue lists, under `root/data`.
/// Returns the builder (with `xattrs` telling whether xattrs were set).
pub fn full_case_tree(root: &Path) -> Builder {
    let mut b = Builder::new(root);
    let app = "data/data/com.example.app";
    b.dir(&format!("{app}/files"));
    b.dir(&format!("{app}/empty_dir"));
    b.dir(&format!("{app}/cache/deep/er/still"));
    b.file(&format!("{app}/files/small.txt"), b"hello cloud phone\n");
    b.file(&format!("{app}/files/empty"), b"");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    b.file(&format!("{app}/databases/app.db"), &big);
    b.file(&format!("{app}/shared_prefs/prefs.xml"), b"<map><int name=\"x\" value=\"1\"/></map>\n");
    // Hard links: content stored once, restored as links.
    b.file(&format!("{app}/files/linked_a"), b"same inode\n");
    fs::hard_link(b.path(&format!("{app}/files/linked_a")), b.path(&format!("{app}/files/linked_b"))).expect("link");
    // Symlinks: relative, absolute (device-absolute), dangling.
    symlink("files/small.txt", b.path(&format!("{app}/rel_link"))).expect("symlink");
    symlink("/data/app/com.example.app-1/lib/arm64", b.path(&format!("{app}/lib"))).expect("symlink");
    symlink("does/not/exist", b.path(&format!("{app}/dangling"))).expect("symlink");
    // Long paths and names: a 255-byte name, and a path far over 100 and 255 bytes.
    let long_name = "n".repeat(255);
    b.file(&format!("{app}/files/{long_name}"), b"long name\n");
    let deep = (0..12).map(|i| format!("segment_{i:02}_abcdefghijklmnop")).collect::<Vec<_>>().join("/");
    b.file(&format!("{app}/files/{deep}/leaf.bin"), b"deep path\n");
    // Long symlink target.
    symlink(format!("files/{deep}/leaf.bin"), b.path(&format!("{app}/long_target_link"))).expect("symlink");
    // Non-UTF-8 name.
    let mut raw = b.path(&format!("{app}/files")).into_os_string().into_vec();
    raw.extend_from_slice(b"/caf\xe9-latin1.txt");
    fs::write(PathBuf::from(OsStr::from_bytes(&raw)), b"latin-1 name\n").expect("write non-utf8");
    // Sparse file: 64 MiB apparent, a few KiB of data.
    let sparse = b.path(&format!("{app}/files/sparse.img"));
    let mut f = File::create(&sparse).expect("create sparse");
    f.seek(SeekFrom::Start(10 * 1024 * 1024)).expect("seek");
    f.write_all(&[7u8; 5000]).expect("write");
    f.seek(SeekFrom::Start(40 * 1024 * 1024)).expect("seek");
    f.write_all(b"middle").expect("write");
    f.set_len(64 * 1024 * 1024).expect("set_len");
    drop(f);
    // Permission bits, set-id and sticky, owners of an Android app (uid 10123, cache gid 20123).
    b.meta(&format!("{app}/files/small.txt"), 10123, 10123, 0o600, (1_700_000_000, 123_456_789));
    b.meta(&format!("{app}/databases/app.db"), 10123, 10123, 0o660, (1_600_000_000, 1));
    b.meta(&format!("{app}/shared_prefs/prefs.xml"), 10123, 10123, 0o4751, (1_650_000_000, 999_999_999));
    b.meta(&format!("{app}/cache"), 10123, 20123, 0o2771, (1_650_000_001, 5));
    b.meta(&format!("{app}/empty_dir"), 10123, 10123, 0o1777, (1_500_000_000, 0));
    b.meta(&format!("{app}/files"), 10123, 10123, 0o771, (1_690_000_000, 42));
    b.meta(app, 10123, 10123, 0o700, (1_690_000_001, 43));
    // Xattrs (user.* works on most filesystems; security.selinux only where SELinux allows it).
    let xa = b.path(&format!("{app}/files/small.txt"));
    b.xattrs = xattr::set(&xa, "user.cpbackup.test", b"value\x00with nul").is_ok();
    // External files of the app, and media.
    b.file("data/media/0/Android/data/com.example.app/files/photo.jpg", &big[..100_000]);
    b.file("data/media/0/DCIM/a.jpg", &big[..50_000]);
    b.meta("data/media/0/DCIM/a.jpg", 1023, 1023, 0o664, (1_680_000_000, 777));
    // /data/user/0 -> /data/data, as on a phone.
    b.dir("data/user");
    symlink("/data/data", b.path("data/user/0")).expect("symlink user/0");
    b
}

/// One entry's comparable state.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Node {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub content: Option<[u8; 32]>,
    pub link: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Index of the first path sharing this inode (hard links), relative.
    pub link_group: Option<Vec<u8>>,
}

/// Snapshot of everything under `root/rel`, keyed by path relative to `root`.
pub fn snapshot(root: &Path, rel: &str) -> BTreeMap<Vec<u8>, Node> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let top = root.join(rel);
    let mut stack = vec![top];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).expect("lstat");
        let key = p.strip_prefix(root).expect("under root").as_os_str().as_bytes().to_vec();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else {
            '?'
        };
        let content = (kind == 'f').then(|| {
            let mut h = sha2::Sha256::new();
            let mut f = File::open(&p).expect("open");
            std::io::copy(&mut f, &mut h).expect("read");
            h.finalize().into()
        });
        let link = (kind == 'l').then(|| fs::read_link(&p).expect("readlink").into_os_string().into_vec());
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&p)
            .map(|it| {
                it.filter(|n| n.as_bytes().starts_with(b"user."))
                    .filter_map(|n| xattr::get(&p, &n).ok().flatten().map(|v| (n.as_bytes().to_vec(), v)))
                    .collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        let link_group = (kind == 'f' && m.nlink() > 1)
            .then(|| inodes.entry((m.dev(), m.ino())).or_insert_with(|| key.clone()).clone());
        out.insert(
            key,
            Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec()),
                size: if kind == 'f' { m.len() } else { 0 },
                content,
                link,
                xattrs,
                link_group,
            },
        );
        if kind == 'd' {
            for e in fs::read_dir(&p).expect("readdir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    out
}

/// What to ignore when comparing.
#[derive(Clone, Copy, Default)]
pub struct Ignore {
    pub xattrs: bool,
    /// Symlink mtimes (tools that cannot set them).
    pub link_mtime: bool,
    /// Directory mtimes of the top entry (it may be created by the import).
    pub top_meta: bool,
}

/// Assert two snapshots are equal, with a readable message for the first differences.
pub fn assert_same(expected: &BTreeMap<Vec<u8>, Node>, actual: &BTreeMap<Vec<u8>, Node>, ignore: Ignore) {
    let mut problems = Vec::new();
    for (k, e) in expected {
        let shown = String::from_utf8_lossy(k);
        match actual.get(k) {
            None => problems.push(format!("missing: {shown}")),
            Some(a) => {
                let mut e = e.clone();
                let mut a = a.clone();
                if ignore.xattrs {
                    e.xattrs.clear();
                    a.xattrs.clear();
                }
                if ignore.link_mtime && e.kind == 'l' {
                    a.mtime = e.mtime;
                }
                if e != a {
                    problems.push(format!("differs: {shown}\n  expected {e:?}\n  actual   {a:?}"));
                }
            }
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            problems.push(format!("unexpected: {}", String::from_utf8_lossy(k)));
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// `count` incompressible files of `each` bytes, `blob0.bin`…, under `dir` (made if missing),
/// the same bytes for the same seed.
pub fn random_files(dir: &Path, count: usize, each: usize, seed: u64) {
    use rand::{RngCore, SeedableRng};
    fs::create_dir_all(dir).expect("create dir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; each];
    for i in 0..count {
        rng.fill_bytes(&mut buf);
        fs::write(dir.join(format!("blob{i}.bin")), &buf).expect("write");
    }
}
