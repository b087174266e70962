//! The commit point and what follows it: a flushed staging directory renamed to
//! `.cpbackup-commit-ID` (beside it, `.cpbackup-commit-ID.dirs` lists the directories whose
//! metadata the archive describes), then merged into its target by renames, directory metadata
//! last; and, on the next start after a kill, what the killed run left settled by the same
//! rule: past the commit point it is finished, before it removed.
//!
//! It never removes what a live run holds (its staging is locked while it lives), and never
//! replaces an existing directory but by setting it aside first.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::staging::{copy_dir_meta, STAGING_PREFIX};
use crate::error::{IoContext, Result};
use crate::select;
use crate::sys;
use crate::sys::walk::{self, Step, Walk};

/// A staging directory past the commit point (and, with `.dirs` appended, the list of the
/// directories whose metadata the archive describes).
const COMMIT_PREFIX: &str = ".cpbackup-commit-";
const TRASH_PREFIX: &str = ".cpbackup-trash-";

/// The commit point of one top: the list of directories written and flushed, then `staged`
/// (flushed already) renamed to run `id`'s commit name in `target`. Returns that name.
pub(super) fn commit_point(staged: &Path, target: &Path, id: &str, explicit: &HashSet<Vec<u8>>) -> Result<PathBuf> {
    let commit = target.join(format!("{COMMIT_PREFIX}{id}"));
    let list = dir_list_of(&commit);
    write_dir_list(&list, explicit).ctx(|| format!("writing {}", list.display()))?;
    fs::rename(staged, &commit).ctx(|| format!("committing {}", staged.display()))?;
    Ok(commit)
}

/// Flushed to disk after the commit point: the rename that is the commit.
pub(super) fn flush_commit(target: &Path) -> Result<()> {
    sys::sync_dir(target).ctx(|| format!("flushing {}", target.display()))
}

/// Committed trees (commit directory, target, the directories the archive describes) merged
/// into their targets, then the directory metadata they carry applied: after every merge, since
/// a merge changes the times of the directories it moves entries into (and one top may resolve
/// inside another, `/cache` into `/data/cache`).
pub(super) fn move_into_place(
    root: &Path,
    committed: &[(&Path, &Path, &HashSet<Vec<u8>>)],
    is_root: bool,
) -> Result<()> {
    let mut deferred = Vec::new();
    for (commit, target, explicit) in committed {
        merge(root, commit, target, explicit, &mut deferred)?;
    }
    for (dst, meta) in &deferred {
        copy_dir_meta(meta, dst, is_root).ctx(|| format!("setting metadata of {}", dst.display()))?;
    }
    Ok(())
}

/// A committed tree's shells, once merged, and its directory list.
pub(super) fn remove_committed(commit: &Path) -> Result<()> {
    walk::remove_tree(commit).ctx(|| format!("removing {}", commit.display()))?;
    let list = dir_list_of(commit);
    match fs::remove_file(&list) {
        // Harmless: the next start removes a list without its commit directory.
        Err(e) if e.kind() != io::ErrorKind::NotFound => tracing::warn!("could not remove {}: {e}", list.display()),
        _ => {}
    }
    Ok(())
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
pub(super) fn finish_interrupted(root: &Path, target: &Path) -> Vec<String> {
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
    move_into_place(root, &[(commit, target, &explicit)], sys::is_root())?;
    remove_committed(commit)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

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
