//! Safe unpacking. Entries go into a staging directory on the target's filesystem
//! (`ROOT/<top>/.cpbackup-staging-<id>`); only when the whole archive has been read and
//! verified does `commit` move them into place, each file by one atomic rename and each new
//! directory tree by one rename of its top.
//!
//! The commit point is one rename: the flushed staging directory becomes
//! `.cpbackup-commit-<id>`. A run killed before it leaves only staging, which the next run
//! removes (the old data stands); a run killed after it leaves a commit directory, which the
//! next run finishes moving into place (the new data stands). Never a mix, once the agent has
//! started again.
//!
//! It must never write outside the root: no absolute names or `..` (refused by `read`), no
//! relative symlink that climbs above the root, no hard link to anything but a file already
//! unpacked from this archive, no write through a symlink planted by the archive. It must never
//! touch the existing tree before `commit`, and it removes its staging whatever happens.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use super::read::{Item, Kind};
use super::Meta;
use crate::error::{Error, IoContext, Result};
use crate::select;
use crate::sys::walk::{self, Step, Walk};
use crate::sys::{self, PATH_MAX, SPACE_RESERVE};

pub const STAGING_PREFIX: &str = ".cpbackup-staging-";
/// A staging directory past the commit point (and, with `.dirs` appended, the list of the
/// directories whose metadata the archive describes).
const COMMIT_PREFIX: &str = ".cpbackup-commit-";
const TRASH_PREFIX: &str = ".cpbackup-trash-";
const COPY_BUF: usize = 1024 * 1024 + ALIGN;
/// Files at least this large, and not sparse, are written around the page cache (O_DIRECT).
const DIRECT_MIN: u64 = 1024 * 1024;
/// What O_DIRECT asks of a buffer's address and length, and of the file offset.
const ALIGN: usize = 4096;
/// Files at least this large have their writeback started as soon as they are written.
const WRITEBACK_MIN: u64 = 1024 * 1024;
/// The smaller files are flushed in the background each time this much of them is written,
/// each counted with a block for its inode.
const FLUSH_EVERY: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Apply the archived `SCHILY.xattr.*` records (SELinux labels among them).
    pub restore_xattrs: bool,
}

/// What an unpack did.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub entries: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

struct Staging {
    /// `ROOT/<top>/.cpbackup-staging-<id>`
    dir: PathBuf,
    /// Where its contents go: `ROOT/<top>`, resolved inside the root.
    target: PathBuf,
    /// Directories known to exist in staging as real directories (relative to `dir`).
    dirs: HashSet<Vec<u8>>,
    /// Directories the archive itself describes; only their metadata is applied on commit.
    explicit: HashSet<Vec<u8>>,
    available: u64,
    written: u64,
    /// The highest directory this run had to create to reach `target` (removed on abort).
    created: Option<PathBuf>,
    /// `target`'s times before the staging directory was made in it, or those of the directory
    /// above `created` when there is one (put back on abort).
    target_times: (FileTime, FileTime),
    /// An exclusive `flock` on the staging directory: this run is alive.
    _lock: File,
}

pub struct Unpacker {
    root: PathBuf,
    id: String,
    opts: Options,
    stagings: BTreeMap<Vec<u8>, Staging>,
    /// Directory metadata to apply in staging once every entry is in, children first.
    dir_meta: Vec<(PathBuf, Meta)>,
    /// Metadata of top directories (`data`, `cache`) themselves.
    top_meta: Vec<(PathBuf, Meta)>,
    is_root: bool,
    warned_owner: bool,
    outcome: Outcome,
    buf: Vec<u8>,
    committed: bool,
    flusher: Flusher,
}

impl Unpacker {
    pub fn new(root: &Path, opts: Options) -> Result<Unpacker> {
        let meta = fs::metadata(root).ctx(|| format!("--root {}", root.display()))?;
        if !meta.is_dir() {
            return Err(Error::usage(format!("--root {} is not a directory", root.display())));
        }
        Ok(Unpacker {
            root: root.to_path_buf(),
            id: format!("{}-{}", std::process::id(), rand::random::<u32>()),
            opts,
            stagings: BTreeMap::new(),
            dir_meta: Vec::new(),
            top_meta: Vec::new(),
            is_root: sys::is_root(),
            warned_owner: false,
            outcome: Outcome::default(),
            buf: Vec::new(),
            committed: false,
            flusher: Flusher::default(),
        })
    }

    /// Check that `needed` bytes fit on every filesystem the archive will be staged on.
    /// Called before unpacking when the manifest tells the size.
    pub fn check_space(&self, tops: &[&[u8]], needed: u64) -> Result<()> {
        for top in tops {
            let target = self.top_target(top)?;
            let probe = existing_ancestor(&target);
            let available = sys::free_bytes(&probe).ctx(|| format!("checking free space on {}", probe.display()))?;
            if available < needed.saturating_add(SPACE_RESERVE) {
                return Err(Error::NoSpace { path: probe, needed: needed.saturating_add(SPACE_RESERVE), available });
            }
        }
        Ok(())
    }

    fn top_target(&self, top: &[u8]) -> Result<PathBuf> {
        let r = select::resolve(&self.root, top, true)
            .ctx(|| format!("resolving /{} under the root", String::from_utf8_lossy(top)))?;
        Ok(r.host)
    }

    fn staging(&mut self, top: &[u8]) -> Result<&mut Staging> {
        if !self.stagings.contains_key(top) {
            let target = self.top_target(top)?;
            let created = highest_missing(&target);
            // Creating directories changes the times of the one above them: put back on abort.
            let above = created.as_deref().and_then(Path::parent).and_then(|p| fs::metadata(p).ok());
            fs::create_dir_all(&target).ctx(|| format!("creating {}", target.display()))?;
            finish_interrupted(&self.root, &target);
            let tm = match above {
                Some(m) => m,
                None => fs::metadata(&target).ctx(|| format!("reading {}", target.display()))?,
            };
            let target_times = (FileTime::from_last_access_time(&tm), FileTime::from_last_modification_time(&tm));
            let dir = target.join(format!("{STAGING_PREFIX}{}", self.id));
            fs::create_dir(&dir).ctx(|| format!("creating staging directory {}", dir.display()))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .ctx(|| format!("securing {}", dir.display()))?;
            // Held while this run lives (through the rename to the commit name: same inode), so
            // that a `cleanup` or daemon start meanwhile leaves this staging alone.
            let lock = File::open(&dir).ctx(|| format!("opening {}", dir.display()))?;
            if !sys::try_lock(&lock).ctx(|| format!("locking {}", dir.display()))? {
                return Err(Error::internal(format!("{} was locked by another run", dir.display())));
            }
            let available = sys::free_bytes(&dir).unwrap_or(u64::MAX);
            let mut dirs = HashSet::new();
            dirs.insert(Vec::new());
            self.stagings.insert(
                top.to_vec(),
                Staging {
                    dir,
                    target,
                    dirs,
                    explicit: HashSet::new(),
                    available,
                    written: 0,
                    created,
                    target_times,
                    _lock: lock,
                },
            );
        }
        // The key was inserted above when missing.
        self.stagings.get_mut(top).ok_or_else(|| Error::archive("staging", "internal: staging directory missing"))
    }

    /// Put one entry into staging.
    pub fn entry(&mut self, item: Item, data: &mut dyn Read) -> Result<()> {
        let shown = item.meta.display();
        let (top, rest) = match item.meta.path.iter().position(|b| *b == b'/') {
            Some(i) => (item.meta.path[..i].to_vec(), item.meta.path[i + 1..].to_vec()),
            None => (item.meta.path.clone(), Vec::new()),
        };
        if rest.is_empty() {
            // The top directory itself (`data` of an --all backup): only its metadata.
            if item.kind != Kind::Dir {
                return Err(Error::archive(
                    format!("entry {shown:?}"),
                    "is not a directory but sits at the top of the device tree",
                ));
            }
            let target = self.top_target(&top)?;
            self.staging(&top)?;
            self.top_meta.push((target, item.meta));
            self.outcome.entries += 1;
            return Ok(());
        }
        let is_root = self.is_root;
        let opts = self.opts;
        let st = self.staging(&top)?;
        let local = st.dir.join(OsStr::from_bytes(&rest));
        if local.as_os_str().len() >= PATH_MAX {
            return Err(Error::archive(
                format!("entry {shown:?}"),
                format!(
                    "is too long to restore: {} bytes with the staging directory, and a path is at most {PATH_MAX} bytes",
                    local.as_os_str().len()
                ),
            ));
        }
        ensure_parents(st, &rest, &shown)?;
        match &item.kind {
            Kind::Dir => {
                match fs::symlink_metadata(&local) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(Error::archive(
                            format!("entry {shown:?}"),
                            "is a directory where an earlier entry put a file or link",
                        ))
                    }
                    Err(_) => fs::create_dir(&local).ctx(|| format!("creating {}", local.display()))?,
                }
                st.dirs.insert(rest.clone());
                st.explicit.insert(rest);
                self.dir_meta.push((local, item.meta));
            }
            Kind::File { sparse } => {
                // Sparse files too, by the size they claim: holes are cheap to store, not to
                // check (each is read as zeros), and a data region of a repeated byte compresses
                // as well as a hole.
                if item.size > st.available.saturating_sub(st.written).saturating_sub(SPACE_RESERVE) {
                    return Err(Error::NoSpace {
                        path: st.target.clone(),
                        needed: item.size,
                        available: st.available.saturating_sub(st.written),
                    });
                }
                if self.buf.len() < COPY_BUF {
                    self.buf.resize(COPY_BUF, 0);
                }
                let st = self.stagings.get_mut(&top).ok_or_else(|| Error::archive("staging", "missing"))?;
                // Created without looking first (one syscall less per file): only a name an
                // earlier entry already used makes the creation fail, and is then replaced.
                let created = match create_file(&local) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        replace_earlier(&local, &shown)?;
                        create_file(&local)
                    }
                    other => other,
                };
                let written =
                    created.map_err(Copy::Write).and_then(|f| write_file(f, data, item.size, *sparse, &mut self.buf));
                let file = written.map_err(|e| match e {
                    Copy::Read(e) => Error::archive(format!("entry {shown:?}"), format!("cannot be read: {e}")),
                    Copy::Write(e) => Error::Io { context: format!("writing {shown}"), source: e },
                })?;
                st.written += item.size;
                self.outcome.bytes += item.size;
                let warn = apply_file_meta(&file, &local, &item.meta, is_root, opts)
                    .ctx(|| format!("setting metadata of {shown}"))?;
                self.owner_warning(warn);
                if item.size >= WRITEBACK_MIN {
                    sys::start_writeback(&file);
                } else {
                    self.flusher.wrote(item.size + ALIGN as u64, local.parent().unwrap_or(&local));
                }
            }
            Kind::Symlink(target) => {
                check_symlink(&item.meta.path, target, &shown)?;
                replace_earlier(&local, &shown)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &local)
                    .ctx(|| format!("creating symlink {shown}"))?;
                let warn =
                    apply_link_meta(&local, &item.meta, is_root).ctx(|| format!("setting metadata of {shown}"))?;
                self.owner_warning(warn);
            }
            Kind::Hardlink(target) => {
                let (ttop, trest) = match target.iter().position(|b| *b == b'/') {
                    Some(i) => (&target[..i], &target[i + 1..]),
                    None => (&target[..], &b""[..]),
                };
                if ttop != top.as_slice() || trest.is_empty() {
                    return Err(Error::archive(
                        format!("entry {shown:?}"),
                        format!(
                            "is a hard link to {:?}, which this archive did not unpack under the same top directory",
                            String::from_utf8_lossy(target)
                        ),
                    ));
                }
                let st = self.stagings.get_mut(&top).ok_or_else(|| Error::archive("staging", "missing"))?;
                let src = st.dir.join(OsStr::from_bytes(trest));
                let parent_ok = match trest.iter().rposition(|b| *b == b'/') {
                    Some(i) => st.dirs.contains(&trest[..i]),
                    None => true,
                };
                let is_file = fs::symlink_metadata(&src).map(|m| m.is_file()).unwrap_or(false);
                // A link to itself would remove its own target before linking to it.
                if !parent_ok || !is_file || trest == rest.as_slice() {
                    return Err(Error::archive(
                        format!("entry {shown:?}"),
                        format!(
                            "is a hard link to {:?}, which is not a file unpacked earlier from this archive",
                            String::from_utf8_lossy(target)
                        ),
                    ));
                }
                replace_earlier(&local, &shown)?;
                fs::hard_link(&src, &local).ctx(|| format!("creating hard link {shown}"))?;
            }
        }
        self.outcome.entries += 1;
        Ok(())
    }

    fn owner_warning(&mut self, refused: bool) {
        if refused && !self.warned_owner {
            self.warned_owner = true;
            let w = "not running as root: files keep the restoring user as owner instead of the archived uid/gid"
                .to_string();
            tracing::warn!("{w}");
            self.outcome.warnings.push(w);
        }
    }

    /// Everything is unpacked and verified: set directory metadata, flush staging to disk,
    /// and move it into place.
    pub fn commit(mut self) -> Result<Outcome> {
        let mut refused = false;
        for (path, meta) in self.dir_meta.iter().rev() {
            refused |=
                apply_dir_meta(path, meta, self.is_root).ctx(|| format!("setting metadata of {}", meta.display()))?;
        }
        self.owner_warning(refused);
        for st in self.stagings.values() {
            sys::sync_fs(&st.dir).ctx(|| format!("flushing {}", st.dir.display()))?;
        }
        // The commit point, top by top: from here on the data is moved into place by this run
        // or, if it dies or fails, by the next start (`finish_interrupted`).
        for st in self.stagings.values_mut() {
            let commit = st.target.join(format!("{COMMIT_PREFIX}{}", self.id));
            write_dir_list(&dir_list_of(&commit), &st.explicit)
                .ctx(|| format!("writing {}", dir_list_of(&commit).display()))?;
            fs::rename(&st.dir, &commit).ctx(|| format!("committing {}", st.dir.display()))?;
            self.committed = true;
            sys::sync_dir(&st.target).ctx(|| format!("flushing {}", st.target.display()))?;
            st.dir = commit;
        }
        let mut deferred: Vec<(PathBuf, fs::Metadata)> = Vec::new();
        for st in self.stagings.values() {
            merge(&self.root, &st.dir, &st.target, &st.explicit, &mut deferred)?;
        }
        for (dst, meta) in &deferred {
            copy_dir_meta(meta, dst, self.is_root).ctx(|| format!("setting metadata of {}", dst.display()))?;
        }
        for (target, meta) in &self.top_meta {
            apply_dir_meta(target, meta, self.is_root).ctx(|| format!("setting metadata of {}", target.display()))?;
        }
        for st in self.stagings.values() {
            // What is left are the shells of merged directories.
            walk::remove_tree(&st.dir).ctx(|| format!("removing {}", st.dir.display()))?;
            let _ = fs::remove_file(dir_list_of(&st.dir));
        }
        self.stagings.clear();
        Ok(std::mem::take(&mut self.outcome))
    }

    /// Remove staging. After a failure, also undo the traces staging left: directories this
    /// run created to hold it, and the target directory's times.
    fn cleanup(&mut self) {
        for st in self.stagings.values() {
            if let Err(e) = walk::remove_tree(&st.dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("could not remove staging {}: {e}", st.dir.display());
                }
            }
            match &st.created {
                Some(top) => {
                    // Only empty directories go: remove_dir refuses anything else.
                    let mut p = st.target.clone();
                    while fs::remove_dir(&p).is_ok() && &p != top {
                        if !p.pop() {
                            break;
                        }
                    }
                    if let Some(above) = top.parent() {
                        let _ = filetime::set_file_times(above, st.target_times.0, st.target_times.1);
                    }
                }
                None => {
                    let _ = filetime::set_file_times(&st.target, st.target_times.0, st.target_times.1);
                }
            }
        }
        self.stagings.clear();
    }
}

impl Drop for Unpacker {
    fn drop(&mut self) {
        if !self.committed {
            self.cleanup();
        }
        // Failed past the commit point: what is still staged is finished by the next start.
        for st in self.stagings.values() {
            tracing::warn!("{} is left for the next start to move into place", st.dir.display());
        }
    }
}

/// Make every parent of `rest` a real directory in staging, refusing to go through anything
/// an earlier entry left there that is not a directory (a planted symlink above all).
fn ensure_parents(st: &mut Staging, rest: &[u8], shown: &str) -> Result<()> {
    let positions: Vec<usize> = rest.iter().enumerate().filter(|(_, b)| **b == b'/').map(|(i, _)| i).collect();
    // A known directory's own parents are known: start below the deepest one (checking every
    // prefix of every name would cost the square of its depth, per entry).
    let known = positions.iter().rposition(|&pos| st.dirs.contains(&rest[..pos])).map_or(0, |i| i + 1);
    for &pos in &positions[known..] {
        let prefix = &rest[..pos];
        if st.dirs.contains(prefix) {
            continue;
        }
        let p = st.dir.join(OsStr::from_bytes(prefix));
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::archive(
                    format!("entry {shown:?}"),
                    format!(
                        "would be written through the symlink {:?} that the archive planted earlier; refusing",
                        String::from_utf8_lossy(prefix)
                    ),
                ))
            }
            Ok(_) => {
                return Err(Error::archive(
                    format!("entry {shown:?}"),
                    format!(
                        "needs {:?} to be a directory, but an earlier entry made it a file",
                        String::from_utf8_lossy(prefix)
                    ),
                ))
            }
            Err(_) => {
                fs::create_dir(&p).ctx(|| format!("creating {}", p.display()))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                    .ctx(|| format!("creating {}", p.display()))?;
            }
        }
        st.dirs.insert(prefix.to_vec());
    }
    Ok(())
}

/// A later entry of the same name replaces an earlier file or link (tar semantics).
fn replace_earlier(local: &Path, shown: &str) -> Result<()> {
    match fs::symlink_metadata(local) {
        Ok(m) if m.is_dir() => Err(Error::archive(
            format!("entry {shown:?}"),
            "would replace a directory unpacked earlier from this archive",
        )),
        Ok(_) => fs::remove_file(local).ctx(|| format!("replacing {shown}")),
        Err(_) => Ok(()),
    }
}

/// A relative symlink target must not climb above the device root from where the link sits.
fn check_symlink(path: &[u8], target: &[u8], shown: &str) -> Result<()> {
    if target.starts_with(b"/") {
        // Absolute: a device path, inside the device by definition; cpbackup itself resolves
        // such links inside --root.
        return Ok(());
    }
    let mut depth = path.split(|b| *b == b'/').count() as i64 - 1;
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(Error::archive(
                        format!("entry {shown:?}"),
                        format!(
                            "is a symlink to {:?}, which leads out of the restore root",
                            String::from_utf8_lossy(target)
                        ),
                    ));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Which side of a copy failed: the archive (its fault) or the disk (ours).
enum Copy {
    Read(io::Error),
    Write(io::Error),
}

/// A new file, never through a symlink and never over an existing name.
fn create_file(local: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(local)
}

fn write_file(mut file: File, data: &mut dyn Read, size: u64, sparse: bool, buf: &mut [u8]) -> Result<File, Copy> {
    // Large files skip the page cache: copying a gigabyte of media into it, and zeroing the
    // pages first, took a third of an import's CPU, all on the thread that writes the files.
    if !sparse && size >= DIRECT_MIN {
        let off = (ALIGN - (buf.as_ptr() as usize % ALIGN)) % ALIGN;
        let len = buf.len().saturating_sub(off) / ALIGN * ALIGN;
        if len > 0 && sys::set_direct(&file, true) {
            write_direct(&mut file, data, size, &mut buf[off..off + len])?;
            return Ok(file);
        }
    }
    let mut remaining = size;
    let mut holes = false;
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        let n = match data.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        if n == 0 {
            return Err(ended_inside());
        }
        write_chunk(&mut file, &buf[..n], sparse, &mut holes).map_err(Copy::Write)?;
        remaining -= n as u64;
    }
    if holes {
        file.set_len(size).map_err(Copy::Write)?;
    }
    Ok(file)
}

/// Write `size` bytes of `data` with O_DIRECT set on `file` (`buf` aligned, a multiple of
/// `ALIGN` long): whole blocks straight to the disk, the last partial block through the page
/// cache. From a write the device refuses or cuts short on, the rest of the file goes through
/// the page cache instead.
fn write_direct(file: &mut File, data: &mut dyn Read, size: u64, buf: &mut [u8]) -> Result<(), Copy> {
    let mut remaining = size;
    let mut direct = true;
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        data.read_exact(&mut buf[..want]).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ended_inside(),
            _ => Copy::Read(e),
        })?;
        let mut done = 0;
        if direct {
            let blocks = want / ALIGN * ALIGN;
            while done < blocks && done % ALIGN == 0 {
                match file.write(&buf[done..blocks]) {
                    Ok(0) => return Err(Copy::Write(io::ErrorKind::WriteZero.into())),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                    Err(e) => return Err(Copy::Write(e)),
                }
            }
            if done < want {
                sys::set_direct(file, false);
                direct = false;
            }
        }
        file.write_all(&buf[done..want]).map_err(Copy::Write)?;
        remaining -= want as u64;
    }
    Ok(())
}

fn ended_inside() -> Copy {
    Copy::Read(io::Error::new(io::ErrorKind::UnexpectedEof, "the archive ends inside this file"))
}

fn write_chunk(file: &mut File, data: &[u8], sparse: bool, holes: &mut bool) -> io::Result<()> {
    if !sparse {
        return file.write_all(data);
    }
    // Keep holes as holes: skip 4 KiB blocks of zeros instead of writing them.
    for block in data.chunks(4096) {
        if block.iter().all(|b| *b == 0) {
            file.seek(SeekFrom::Current(block.len() as i64))?;
            *holes = true;
        } else {
            file.write_all(block)?;
        }
    }
    Ok(())
}

fn mtime_of(meta: &Meta) -> FileTime {
    FileTime::from_unix_time(meta.mtime, meta.mtime_nsec)
}

/// chown, then chmod (chown clears set-id bits), then times. Returns true when ownership
/// could not be set because we are not root.
fn apply_file_meta(file: &File, local: &Path, meta: &Meta, is_root: bool, opts: Options) -> io::Result<bool> {
    let mut refused = false;
    if is_root {
        std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid))?;
    } else {
        refused = true;
    }
    file.set_permissions(fs::Permissions::from_mode(meta.mode))?;
    if opts.restore_xattrs {
        for (k, v) in &meta.xattrs {
            xattr::set(local, OsStr::from_bytes(k), v)?;
        }
    }
    filetime::set_file_handle_times(file, None, Some(mtime_of(meta)))?;
    Ok(refused)
}

fn apply_link_meta(local: &Path, meta: &Meta, is_root: bool) -> io::Result<bool> {
    if is_root {
        std::os::unix::fs::lchown(local, Some(meta.uid), Some(meta.gid))?;
    }
    filetime::set_symlink_file_times(local, mtime_of(meta), mtime_of(meta))?;
    Ok(!is_root)
}

fn apply_dir_meta(path: &Path, meta: &Meta, is_root: bool) -> io::Result<bool> {
    if is_root {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))?;
    filetime::set_symlink_file_times(path, mtime_of(meta), mtime_of(meta))?;
    Ok(!is_root)
}

fn copy_dir_meta(src: &fs::Metadata, dst: &Path, is_root: bool) -> io::Result<()> {
    if is_root {
        std::os::unix::fs::lchown(dst, Some(src.uid()), Some(src.gid()))?;
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(src.mode() & 0o7777))?;
    let t = FileTime::from_last_modification_time(src);
    filetime::set_symlink_file_times(dst, t, t)
}

/// Move the contents of staging `src` into `dst`: new names by one rename each (a whole new
/// directory tree at once), files and links over existing ones by an atomic rename, existing
/// directories merged. Directory metadata the archive described is applied after, children
/// first.
fn merge(
    root: &Path,
    src: &Path,
    dst: &Path,
    explicit: &HashSet<Vec<u8>>,
    deferred: &mut Vec<(PathBuf, fs::Metadata)>,
) -> Result<()> {
    let mut walk = Walk::new(src).ctx(|| format!("listing {}", src.display()))?;
    // Where each directory being merged goes, and its own metadata to defer once its contents
    // are in: the top, then one per level the walk has entered.
    let mut into: Vec<(PathBuf, Option<(PathBuf, fs::Metadata)>)> = vec![(dst.to_path_buf(), None)];
    while let Some(step) = walk.next() {
        let s = src.join(OsStr::from_bytes(walk.rel()));
        if step.ctx(|| format!("listing {}", s.display()))? == Step::Left {
            if let Some((_, Some(then))) = into.pop() {
                deferred.push(then);
            }
            continue;
        }
        let Some((level_dst, _)) = into.last() else { break };
        let level_dst = level_dst.clone();
        let mut d = level_dst.join(OsStr::from_bytes(walk.name().to_bytes()));
        let smeta = fs::symlink_metadata(&s).ctx(|| format!("reading {}", s.display()))?;
        let mut dmeta = fs::symlink_metadata(&d).ok();
        if smeta.is_dir() {
            if let Some(m) = &dmeta {
                if m.file_type().is_symlink() {
                    // The device has a symlink where the archive has a directory (e.g.
                    // /data/user/0 -> /data/data): follow it, inside the root.
                    if let Ok(rel_to_root) = d.strip_prefix(root) {
                        if let Ok(r) = select::resolve(root, rel_to_root.as_os_str().as_bytes(), true) {
                            if fs::metadata(&r.host).map(|m| m.is_dir()).unwrap_or(false) {
                                d = r.host;
                                dmeta = fs::symlink_metadata(&d).ok();
                            }
                        }
                    }
                }
            }
        }
        match dmeta {
            Some(m) if smeta.is_dir() && m.is_dir() => {
                // Merged level by level: the walk enters it next.
                let then = explicit.contains(walk.rel()).then(|| (d.clone(), smeta));
                into.push((d, then));
                continue;
            }
            None => fs::rename(&s, &d).ctx(|| format!("moving {} into place", d.display()))?,
            Some(m) if m.is_dir() || smeta.is_dir() => {
                // A file replaces a directory or the other way round: set the old one aside,
                // put the new one in, then remove the old.
                let trash = level_dst.join(format!("{TRASH_PREFIX}{}", rand::random::<u32>()));
                fs::rename(&d, &trash).ctx(|| format!("setting {} aside", d.display()))?;
                fs::rename(&s, &d).ctx(|| format!("moving {} into place", d.display()))?;
                walk::remove_tree(&trash).ctx(|| format!("removing the replaced {}", trash.display()))?;
            }
            Some(_) => fs::rename(&s, &d).ctx(|| format!("moving {} into place", d.display()))?,
        }
        // Moved whole: nothing below it to merge.
        walk.skip();
    }
    Ok(())
}

/// Settle what killed imports left under `ROOT/data` and `ROOT/cache` (the daemon and
/// `cpbackup cleanup` do this on start; an import does it for its own target directories anyway).
pub fn finish_interrupted_imports(root: &Path) -> Vec<String> {
    let mut done = Vec::new();
    for top in ["data", "cache"] {
        if let Ok(r) = select::resolve(root, top.as_bytes(), true) {
            done.extend(finish_interrupted(root, &r.host));
        }
    }
    done
}

/// Settle what killed runs left in `target`: an import past its commit point is finished
/// (moved into place, then its directory metadata applied); staging from before the commit
/// point, and set-aside entries, are removed. Returns what it did, one line each.
fn finish_interrupted(root: &Path, target: &Path) -> Vec<String> {
    let mut done = Vec::new();
    let Ok(rd) = fs::read_dir(target) else { return done };
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let Some(name) = path.file_name().map(|n| n.as_bytes().to_vec()) else { continue };
        let is_dir = fs::symlink_metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
        let ours = name.starts_with(COMMIT_PREFIX.as_bytes()) || name.starts_with(STAGING_PREFIX.as_bytes());
        // A run that still lives holds its staging locked: not left over, leave it.
        let _claimed = match (ours && is_dir).then(|| File::open(&path)) {
            Some(Ok(f)) if sys::try_lock(&f).unwrap_or(false) => Some(f),
            Some(_) => continue,
            None => None,
        };
        if name.starts_with(COMMIT_PREFIX.as_bytes()) && is_dir {
            match finish_commit(root, &path, target) {
                Ok(()) => done.push(format!("finished the import committed in {}", path.display())),
                Err(e) => tracing::warn!("could not finish the import committed in {}: {e}", path.display()),
            }
        } else if name.starts_with(STAGING_PREFIX.as_bytes()) || name.starts_with(TRASH_PREFIX.as_bytes()) {
            match walk::remove_tree(&path) {
                Ok(()) => done.push(format!("removed {} left by an interrupted import", path.display())),
                Err(e) => tracing::warn!("could not remove {}: {e}", path.display()),
            }
        } else if name.starts_with(COMMIT_PREFIX.as_bytes()) && !is_dir {
            // A directory list whose commit was finished (or never reached).
            let dir = path.with_extension("");
            if !dir.exists() {
                let _ = fs::remove_file(&path);
            }
        }
    }
    for line in &done {
        tracing::info!("{line}");
    }
    done
}

/// Move a committed staging tree into place, as `commit` would have.
fn finish_commit(root: &Path, commit: &Path, target: &Path) -> Result<()> {
    let list = dir_list_of(commit);
    let explicit = read_dir_list(&list).ctx(|| format!("reading {}", list.display()))?;
    let mut deferred = Vec::new();
    merge(root, commit, target, &explicit, &mut deferred)?;
    let is_root = sys::is_root();
    for (dst, meta) in &deferred {
        copy_dir_meta(meta, dst, is_root).ctx(|| format!("setting metadata of {}", dst.display()))?;
    }
    walk::remove_tree(commit).ctx(|| format!("removing {}", commit.display()))?;
    fs::remove_file(&list).ctx(|| format!("removing {}", list.display()))
}

/// `…/.cpbackup-commit-<id>.dirs` beside `…/.cpbackup-commit-<id>`.
fn dir_list_of(commit: &Path) -> PathBuf {
    let mut name = commit.as_os_str().to_os_string();
    name.push(".dirs");
    PathBuf::from(name)
}

/// The directories whose metadata the archive describes, NUL-separated (names never hold NUL),
/// flushed before the commit point.
fn write_dir_list(path: &Path, dirs: &HashSet<Vec<u8>>) -> io::Result<()> {
    let mut sorted: Vec<&Vec<u8>> = dirs.iter().collect();
    sorted.sort();
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    for d in sorted {
        f.write_all(d)?;
        f.write_all(b"\0")?;
    }
    f.sync_all()
}

fn read_dir_list(path: &Path) -> io::Result<HashSet<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes.split(|b| *b == 0).filter(|d| !d.is_empty()).map(<[u8]>::to_vec).collect()),
        // Not written yet when the run died: nothing was committed with it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e),
    }
}

/// The highest ancestor of `p` (or `p` itself) that does not exist yet.
fn highest_missing(p: &Path) -> Option<PathBuf> {
    let mut missing = None;
    let mut cur = p.to_path_buf();
    while fs::symlink_metadata(&cur).is_err() {
        missing = Some(cur.clone());
        if !cur.pop() {
            break;
        }
    }
    missing
}

fn existing_ancestor(p: &Path) -> PathBuf {
    let mut cur = p.to_path_buf();
    while !cur.exists() {
        if !cur.pop() {
            return PathBuf::from("/");
        }
    }
    cur
}

/// Starts the disk on the small files while the archive goes on. Started one file at a time,
/// their writeback would cost the thread that writes them (the one that limits the import
/// while small files come); the final `syncfs` alone leaves the disk idle until the end.
/// Instead, every `FLUSH_EVERY` bytes a thread of its own flushes the filesystem: the kernel's
/// writeback then runs on the core the writing thread leaves idle.
#[derive(Default)]
struct Flusher {
    unflushed: u64,
    running: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn wrote(&mut self, bytes: u64, dir: &Path) {
        self.unflushed += bytes;
        if self.unflushed < FLUSH_EVERY || self.running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        self.unflushed = 0;
        let dir = dir.to_path_buf();
        // Advisory: the flush before the commit is the one whose failure counts.
        self.running = std::thread::Builder::new()
            .name("flush".into())
            .spawn(move || {
                if let Err(e) = sys::sync_fs(&dir) {
                    tracing::debug!("flushing ahead of the commit: {e}");
                }
            })
            .ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most 7,777 bytes a call, as a decompressor may.
    struct Dribble<'a>(&'a [u8]);

    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.0.len()).min(7777);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn large_files_written_around_the_page_cache_hold_exactly_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        if !sys::set_direct(&create_file(&dir.path().join("probe")).unwrap(), true) {
            eprintln!("O_DIRECT is refused in {}: only the page-cache path is tested", dir.path().display());
        }
        // An unaligned buffer, as the Unpacker's Vec may be.
        let mut buf = vec![0u8; COPY_BUF + 1];
        for size in [DIRECT_MIN as usize, DIRECT_MIN as usize + 1, 3 * (1 << 20) + 4095, 5_000_000] {
            let path = dir.path().join(format!("f{size}"));
            let file = create_file(&path).unwrap();
            write_file(file, &mut Dribble(&data[..size]), size as u64, false, &mut buf[1..])
                .unwrap_or_else(|_| panic!());
            assert!(fs::read(&path).unwrap() == data[..size], "{size} bytes restored differently");
        }
        // An archive that ends inside the file says so.
        let path = dir.path().join("short");
        let e = write_file(create_file(&path).unwrap(), &mut Dribble(&data[..2_000_000]), 3_000_000, false, &mut buf);
        match e {
            Err(Copy::Read(e)) => assert!(e.to_string().contains("ends inside this file"), "{e}"),
            _ => panic!("a short archive was not noticed"),
        }
    }

    #[test]
    fn symlink_escape_rules() {
        assert!(check_symlink(b"data/a/link", b"../b", "").is_ok());
        assert!(check_symlink(b"data/a/link", b"../../x", "").is_ok());
        assert!(check_symlink(b"data/a/link", b"../../../etc", "").is_err());
        assert!(check_symlink(b"data/link", b"/data/data", "").is_ok());
    }

    #[test]
    fn leftovers_settle_by_the_commit_point_and_live_runs_are_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let data = root.join("data");
        fs::create_dir_all(data.join("media/0")).unwrap();
        fs::write(data.join("media/0/a.txt"), "old").unwrap();
        fs::write(data.join("media/0/kept.txt"), "only on the phone").unwrap();

        // Past its commit point: finished, the archive's directory metadata applied.
        let commit = data.join(format!("{COMMIT_PREFIX}1-1"));
        fs::create_dir_all(commit.join("media/0/new")).unwrap();
        fs::write(commit.join("media/0/a.txt"), "new").unwrap();
        fs::write(commit.join("media/0/new/b.txt"), "new").unwrap();
        fs::set_permissions(commit.join("media/0"), fs::Permissions::from_mode(0o751)).unwrap();
        write_dir_list(&dir_list_of(&commit), &HashSet::from([b"media/0".to_vec()])).unwrap();
        // Before its commit point, and dead: removed. Alive (locked): left alone.
        let dead = data.join(format!("{STAGING_PREFIX}2-2"));
        fs::create_dir_all(dead.join("media/0")).unwrap();
        fs::write(dead.join("media/0/a.txt"), "half").unwrap();
        let live = data.join(format!("{STAGING_PREFIX}3-3"));
        fs::create_dir_all(&live).unwrap();
        let held = File::open(&live).unwrap();
        assert!(sys::try_lock(&held).unwrap());

        let done = finish_interrupted_imports(root);
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(fs::read_to_string(data.join("media/0/a.txt")).unwrap(), "new");
        assert_eq!(fs::read_to_string(data.join("media/0/new/b.txt")).unwrap(), "new");
        assert_eq!(fs::read_to_string(data.join("media/0/kept.txt")).unwrap(), "only on the phone");
        assert_eq!(fs::metadata(data.join("media/0")).unwrap().mode() & 0o7777, 0o751);
        assert!(!commit.exists() && !dir_list_of(&commit).exists() && !dead.exists());
        assert!(live.exists(), "a live run's staging was touched");
        drop(held);
        assert_eq!(finish_interrupted_imports(root).len(), 1);
        assert!(!live.exists());
        assert!(finish_interrupted_imports(root).is_empty(), "settling twice does nothing");
    }
}
