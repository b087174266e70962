//! A staging directory per top directory of the device tree (`ROOT/<top>/.cpbackup-staging-ID`,
//! on the target's own filesystem, so that the commit can move it by renames), and the rules
//! an entry must pass to go in: a path a file-system call takes, real directories above it
//! (never a symlink the archive planted), a later entry replacing an earlier file or link but
//! never a directory, relative symlinks that stay under the root; then the archived metadata
//! applied (owners only as root).
//!
//! It writes only inside its staging directory, and leaves no trace when dropped unused: the
//! directories made to hold it go again and the target's times are put back.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use super::Options;
use crate::archive::Meta;
use crate::error::{Error, IoContext, Result};
use crate::sys::{self, walk, PATH_MAX, SPACE_RESERVE};

pub(super) const STAGING_PREFIX: &str = ".cpbackup-staging-";

pub(super) struct Staging {
    /// `ROOT/<top>/.cpbackup-staging-<id>`
    pub(super) dir: PathBuf,
    /// Where its contents go: `ROOT/<top>`, resolved inside the root.
    pub(super) target: PathBuf,
    /// Directories known to exist in staging as real directories (relative to `dir`).
    pub(super) dirs: HashSet<Vec<u8>>,
    /// Directories the archive itself describes; only their metadata is applied on commit.
    pub(super) explicit: HashSet<Vec<u8>>,
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

impl Staging {
    /// Make run `id`'s staging directory in `target` (and `target` itself when missing),
    /// private and locked while this run lives.
    pub(super) fn create(target: PathBuf, id: &str) -> Result<Staging> {
        let created = highest_missing(&target);
        // Creating directories changes the times of the one above them: put back on abort.
        let above = created.as_deref().and_then(Path::parent).and_then(|p| fs::metadata(p).ok());
        fs::create_dir_all(&target).ctx(|| format!("creating {}", target.display()))?;
        let tm = match above {
            Some(m) => m,
            None => fs::metadata(&target).ctx(|| format!("reading {}", target.display()))?,
        };
        let target_times = (FileTime::from_last_access_time(&tm), FileTime::from_last_modification_time(&tm));
        let dir = target.join(format!("{STAGING_PREFIX}{id}"));
        fs::create_dir(&dir).ctx(|| format!("creating staging directory {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).ctx(|| format!("securing {}", dir.display()))?;
        // Held while this run lives (through the rename to the commit name: same inode), so
        // that a `cleanup` or daemon start meanwhile leaves this staging alone.
        let lock = File::open(&dir).ctx(|| format!("opening {}", dir.display()))?;
        if !sys::try_lock(&lock).ctx(|| format!("locking {}", dir.display()))? {
            return Err(Error::internal(format!("{} was locked by another run", dir.display())));
        }
        let available = sys::free_bytes(&dir).unwrap_or(u64::MAX);
        Ok(Staging {
            dir,
            target,
            dirs: HashSet::from([Vec::new()]),
            explicit: HashSet::new(),
            available,
            written: 0,
            created,
            target_times,
            _lock: lock,
        })
    }

    /// Where `rest` (the entry's path below the top) goes in staging, with every directory
    /// above it made (see [`Staging::ensure_parents`]).
    pub(super) fn local(&mut self, rest: &[u8], shown: &str) -> Result<PathBuf> {
        let local = self.dir.join(OsStr::from_bytes(rest));
        if local.as_os_str().len() >= PATH_MAX {
            return Err(Error::archive(
                format!("entry {shown:?}"),
                format!(
                    "is too long to restore: {} bytes with the staging directory, and a path is at most {PATH_MAX} bytes",
                    local.as_os_str().len()
                ),
            ));
        }
        self.ensure_parents(rest, shown)?;
        Ok(local)
    }

    /// Room for `size` more bytes (sparse files by the size they claim: holes are cheap to
    /// store, not to check, and a data region of a repeated byte compresses as well as a hole).
    pub(super) fn reserve(&mut self, size: u64) -> Result<()> {
        let left = self.available.saturating_sub(self.written);
        if size > left.saturating_sub(SPACE_RESERVE) {
            return Err(Error::NoSpace { path: self.target.clone(), needed: size, available: left });
        }
        self.written += size;
        Ok(())
    }

    /// Make every parent of `rest` a real directory in staging, refusing to go through anything
    /// an earlier entry left there that is not a directory (a planted symlink above all).
    fn ensure_parents(&mut self, rest: &[u8], shown: &str) -> Result<()> {
        let positions: Vec<usize> = rest.iter().enumerate().filter(|(_, b)| **b == b'/').map(|(i, _)| i).collect();
        // A known directory's own parents are known: start below the deepest one (checking every
        // prefix of every name would cost the square of its depth, per entry).
        let known = positions.iter().rposition(|&pos| self.dirs.contains(&rest[..pos])).map_or(0, |i| i + 1);
        for &pos in &positions[known..] {
            let prefix = &rest[..pos];
            if self.dirs.contains(prefix) {
                continue;
            }
            let p = self.dir.join(OsStr::from_bytes(prefix));
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
            self.dirs.insert(prefix.to_vec());
        }
        Ok(())
    }

    /// Remove the staging directory of a run that failed before its commit point, and the
    /// traces it left: the directories made to hold it, and the target's times.
    pub(super) fn discard(&self) {
        if let Err(e) = walk::remove_tree(&self.dir) {
            tracing::warn!("could not remove staging {}: {e}", self.dir.display());
        }
        match &self.created {
            Some(top) => {
                // Only empty directories go: remove_dir refuses anything else.
                let mut p = self.target.clone();
                while fs::remove_dir(&p).is_ok() && &p != top {
                    if !p.pop() {
                        break;
                    }
                }
                if let Some(above) = top.parent() {
                    let _ = filetime::set_file_times(above, self.target_times.0, self.target_times.1);
                }
            }
            None => {
                let _ = filetime::set_file_times(&self.target, self.target_times.0, self.target_times.1);
            }
        }
    }
}

/// A later entry of the same name replaces an earlier file or link (tar semantics).
pub(super) fn replace_earlier(local: &Path, shown: &str) -> Result<()> {
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
pub(super) fn check_symlink(path: &[u8], target: &[u8], shown: &str) -> Result<()> {
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

/// The nearest ancestor of `p` (or `p` itself) that exists.
pub(super) fn existing_ancestor(p: &Path) -> PathBuf {
    let mut cur = p.to_path_buf();
    while !cur.exists() {
        if !cur.pop() {
            return PathBuf::from("/");
        }
    }
    cur
}

fn mtime_of(meta: &Meta) -> FileTime {
    FileTime::from_unix_time(meta.mtime, meta.mtime_nsec)
}

/// chown, then chmod (chown clears set-id bits), then times. Returns true when ownership
/// could not be set because we are not root.
pub(super) fn apply_file_meta(
    file: &File,
    local: &Path,
    meta: &Meta,
    is_root: bool,
    opts: Options,
) -> io::Result<bool> {
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

pub(super) fn apply_link_meta(local: &Path, meta: &Meta, is_root: bool) -> io::Result<bool> {
    if is_root {
        std::os::unix::fs::lchown(local, Some(meta.uid), Some(meta.gid))?;
    }
    filetime::set_symlink_file_times(local, mtime_of(meta), mtime_of(meta))?;
    Ok(!is_root)
}

pub(super) fn apply_dir_meta(path: &Path, meta: &Meta, is_root: bool) -> io::Result<bool> {
    if is_root {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))?;
    filetime::set_symlink_file_times(path, mtime_of(meta), mtime_of(meta))?;
    Ok(!is_root)
}

/// A staged directory's metadata onto the one it was merged into.
pub(super) fn copy_dir_meta(src: &fs::Metadata, dst: &Path, is_root: bool) -> io::Result<()> {
    if is_root {
        std::os::unix::fs::lchown(dst, Some(src.uid()), Some(src.gid()))?;
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(src.mode() & 0o7777))?;
    let t = FileTime::from_last_modification_time(src);
    filetime::set_symlink_file_times(dst, t, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_escape_rules() {
        assert!(check_symlink(b"data/a/link", b"../b", "").is_ok());
        assert!(check_symlink(b"data/a/link", b"../../x", "").is_ok());
        assert!(check_symlink(b"data/a/link", b"../../../etc", "").is_err());
        assert!(check_symlink(b"data/link", b"/data/data", "").is_ok());
    }
}
