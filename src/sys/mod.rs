//! The file-system primitives the agent builds on: a file replaced atomically (written to a
//! temporary name, flushed, renamed, its directory flushed), directory and filesystem flushes,
//! free space, non-blocking locks, `O_DIRECT`, writeback hints, the data regions of a sparse
//! file, the ids the process runs as, the allocator's threshold for large buffers, ([`thread`])
//! a thread's nice value and I/O class, and ([`walk`]) the one walk over trees the agent did
//! not make.
//!
//! Built on std where std has the call (`File::try_lock`, `sync_all`) and on `rustix`
//! elsewhere. The crate's only `unsafe` is here (`sync_file_range`, `mallopt`, and in `thread` the per-thread
//! priority calls, which rustix lacks), and nowhere else: `grep -rn unsafe src` finds this
//! module. Nothing here knows about archives,
//! stores or phones.

pub mod thread;
pub mod walk;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use rustix::fs::{OFlags, SeekFrom};

use crate::error::{IoContext, Result};

/// Room kept free on a filesystem beyond what a restore stages on it.
pub const SPACE_RESERVE: u64 = 16 * 1024 * 1024;

/// The longest path a file-system call takes (Linux `PATH_MAX`, with its NUL).
pub const PATH_MAX: usize = libc::PATH_MAX as usize;

/// A file being replaced: written under `.NAME.tmp` beside it, then renamed over it by
/// [`Replacement::commit`], so that a reader finds the old content or the new, never half.
/// Dropped without a commit, the temporary file goes.
pub struct Replacement {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl Replacement {
    /// Start replacing `path`: `.NAME.tmp` beside it, created (or truncated) with `mode`.
    pub fn create(path: &Path, mode: u32) -> Result<Replacement> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
        let tmp = parent_of(path).join(format!(".{name}.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        Ok(Replacement { path: path.to_path_buf(), tmp, file: Some(file) })
    }

    /// Lock the temporary file (see [`try_lock`]) before it is visible under its name: the
    /// lock stays with the file `commit` returns.
    pub fn try_lock(&self) -> io::Result<bool> {
        self.file.as_ref().map_or(Ok(false), try_lock)
    }

    /// Write `body`, flush it to disk, rename it over the file, flush the directory. Returns
    /// the file, still open (a lock taken on it is still held).
    pub fn commit(mut self, body: &[u8]) -> Result<File> {
        let tmp = self.tmp.clone();
        let Some(mut file) = self.file.take() else {
            return Err(crate::error::Error::internal(format!("{} was committed twice", tmp.display())));
        };
        let done = file
            .write_all(body)
            .ctx(|| format!("writing {}", tmp.display()))
            .and_then(|()| file.sync_all().ctx(|| format!("flushing {}", tmp.display())))
            .and_then(|()| {
                fs::rename(&tmp, &self.path).ctx(|| format!("renaming {} to {}", tmp.display(), self.path.display()))
            });
        if let Err(e) = done {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // The rename is done; a directory that cannot be flushed only makes it less durable.
        if let Err(e) = sync_dir(parent_of(&self.path)) {
            tracing::debug!("could not flush {}: {e}", parent_of(&self.path).display());
        }
        Ok(file)
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Replace `path` with `body` atomically (see [`Replacement`]), the file created with `mode`.
pub fn write_atomic(path: &Path, body: &[u8], mode: u32) -> Result<()> {
    Replacement::create(path, mode)?.commit(body).map(drop)
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Flush a directory's entries (a rename or creation in it) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flush the whole filesystem holding `dir` (`syncfs`).
pub fn sync_fs(dir: &Path) -> io::Result<()> {
    let f = File::open(dir)?;
    rustix::fs::syncfs(&f)?;
    Ok(())
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// An exclusive `flock` without waiting: `Ok(false)` when another open file description
/// holds it. The kernel drops it when the last descriptor closes, however the process ends.
pub fn try_lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Set or clear `O_DIRECT` on an open file; false when the filesystem refuses it.
pub fn set_direct(file: &File, on: bool) -> bool {
    let Ok(flags) = rustix::fs::fcntl_getfl(file) else { return false };
    let flags = if on { flags | OFlags::DIRECT } else { flags & !OFlags::DIRECT };
    rustix::fs::fcntl_setfl(file, flags).is_ok()
}

/// Ask the kernel to start writing a file's dirty pages to disk now, without waiting for it
/// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`). Advisory: a failure changes nothing.
pub fn start_writeback(file: &File) {
    // SAFETY: sync_file_range on a descriptor this File owns for the whole call; no memory is
    // passed, and the result is only advice to the kernel.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// The next data region at or after `pos` (`SEEK_DATA`); `None` when only a hole follows.
/// Moves the file's offset.
pub fn seek_data(file: &File, pos: u64) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file, SeekFrom::Data(pos)) {
        Ok(p) => Ok(Some(p)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The next hole at or after `pos` (`SEEK_HOLE`; the end of the file counts as one). Moves
/// the file's offset.
pub fn seek_hole(file: &File, pos: u64) -> io::Result<u64> {
    Ok(rustix::fs::seek(file, SeekFrom::Hole(pos))?)
}

/// What `lstat` says of a file, from std's metadata or from a `statat` (see [`walk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `st_mode`: the type bits and the permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub nlink: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub dev: u64,
    pub ino: u64,
}

impl Stat {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

impl From<&fs::Metadata> for Stat {
    fn from(m: &fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec().clamp(0, 999_999_999) as u32,
            nlink: m.nlink(),
            blocks: m.blocks(),
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

impl From<rustix::fs::Stat> for Stat {
    // The field types differ between architectures (`st_nlink` is 32 bits on aarch64, 64 on
    // x86_64): every one goes through `try_from`, a no-op where the types already agree.
    fn from(s: rustix::fs::Stat) -> Stat {
        Stat {
            mode: u32::try_from(s.st_mode).unwrap_or(0),
            uid: u32::try_from(s.st_uid).unwrap_or(0),
            gid: u32::try_from(s.st_gid).unwrap_or(0),
            size: u64::try_from(s.st_size).unwrap_or(0),
            mtime: i64::try_from(s.st_mtime).unwrap_or(0),
            mtime_nsec: u32::try_from(s.st_mtime_nsec).unwrap_or(0).min(999_999_999),
            nlink: u64::try_from(s.st_nlink).unwrap_or(0),
            blocks: u64::try_from(s.st_blocks).unwrap_or(0),
            dev: u64::try_from(s.st_dev).unwrap_or(0),
            ino: u64::try_from(s.st_ino).unwrap_or(0),
        }
    }
}

/// The effective uid: 0 when the agent may set any owner.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The real uid and gid the process runs as.
pub fn ids() -> (u32, u32) {
    (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw())
}

/// Buffers this large and larger are mapped from the kernel and given back to it when freed.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: usize = 1 << 20;
/// glibc's arenas at most.
#[cfg(target_env = "gnu")]
const ARENAS: libc::c_int = 2;

/// Hand buffers of a megabyte and more (chunks, packs, pipeline blocks) straight to and from
/// the kernel. glibc's allocator raises this threshold by itself after the first such buffer is
/// freed, and from then on serves them from per-thread arenas, where buffers allocated on one
/// thread and freed on another leave holes: a snapshot's peak RSS was 10 MiB above what it held.
/// Pinning it costs a page fault per page of a new buffer, a few percent of system time.
/// And two arenas, not eight per core: the threads are a pipeline's stages, which hand buffers
/// from one to the next and seldom allocate at the same moment, and each arena keeps its own
/// free pages (a snapshot through S3 held 2 MiB less with two).
/// musl's allocator (the phone's static binary) maps large buffers already and has no arenas:
/// nothing to do there.
pub fn large_allocations_from_the_kernel() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes two integers and changes only the allocator's tuning; it is called
    // before the process starts its threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_replaced_file_is_whole_private_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rec.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        // Abandoned: the old content stays and the temporary goes.
        let r = Replacement::create(&p, 0o600).unwrap();
        assert!(dir.path().join(".rec.json.tmp").exists());
        drop(r);
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary file was left");
    }

    #[test]
    fn a_lock_is_exclusive_between_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        fs::write(&p, b"").unwrap();
        let a = File::open(&p).unwrap();
        let b = File::open(&p).unwrap();
        assert!(try_lock(&a).unwrap());
        assert!(!try_lock(&b).unwrap());
        drop(a);
        assert!(try_lock(&b).unwrap());
    }

    #[test]
    fn holes_and_data_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
        f.set_len(1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 4096], 512 * 1024).unwrap();
        match seek_data(&f, 0) {
            // A filesystem without hole reporting says the whole file is data.
            Ok(Some(0)) => assert_eq!(seek_hole(&f, 0).unwrap(), 1 << 20),
            Ok(Some(d)) => {
                assert_eq!(d, 512 * 1024);
                assert_eq!(seek_hole(&f, d).unwrap(), 512 * 1024 + 4096);
                assert_eq!(seek_data(&f, d + 4096).unwrap(), None);
            }
            other => panic!("SEEK_DATA: {other:?}"),
        }
        assert!(free_bytes(dir.path()).unwrap() > 0);
        sync_fs(dir.path()).unwrap();
        sync_dir(dir.path()).unwrap();
    }
}
