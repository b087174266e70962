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
//!
//! Here the `Unpacker`, entry by entry, one method per kind; `staging` owns the staging
//! directories and the rules an entry must pass there, `writer` a file's bytes onto the disk
//! (`O_DIRECT`, writeback), `settle` the commit point and everything after it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::read::{Item, Kind};
use super::Meta;
use crate::error::{Error, IoContext, Result};
use crate::select;
use crate::sys::{self, SPACE_RESERVE};

mod settle;
mod staging;
mod writer;

pub use settle::finish_interrupted_imports;
use staging::{apply_dir_meta, apply_file_meta, apply_link_meta, check_symlink, replace_earlier, Staging};
use writer::{create_file, write_file, CopyError, Flusher, ALIGN, COPY_BUF, WRITEBACK_MIN};

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
        let meta = fs::metadata(root).map_err(|e| {
            Error::usage(format!(
                "--root {}: {e}; restore into an existing directory that stands for the phone's /",
                root.display()
            ))
        })?;
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
            let probe = staging::existing_ancestor(&target);
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

    /// The staging directory of a top, made on its first entry (after settling what killed
    /// runs left in its target).
    fn staging(&mut self, top: &[u8]) -> Result<&mut Staging> {
        if !self.stagings.contains_key(top) {
            let target = self.top_target(top)?;
            settle::finish_interrupted(&self.root, &target);
            let staging = Staging::create(target, &self.id)?;
            self.stagings.insert(top.to_vec(), staging);
        }
        // The key was inserted above when missing.
        self.stagings.get_mut(top).ok_or_else(|| Error::internal("the staging directory of an entry is missing"))
    }

    /// Put one entry into staging.
    pub fn entry(&mut self, item: Item, data: &mut dyn Read) -> Result<()> {
        let Item { meta, kind, size } = item;
        let shown = meta.display();
        let (top, rest) = match meta.path.iter().position(|b| *b == b'/') {
            Some(i) => (meta.path[..i].to_vec(), meta.path[i + 1..].to_vec()),
            None => (meta.path.clone(), Vec::new()),
        };
        if rest.is_empty() {
            return self.top_dir(&top, kind, meta);
        }
        let local = self.staging(&top)?.local(&rest, &shown)?;
        match kind {
            Kind::Dir => self.dir(&top, rest, local, meta)?,
            Kind::File { sparse } => self.file(&top, &local, meta, size, sparse, data)?,
            Kind::Symlink(target) => self.symlink(&local, meta, &target)?,
            Kind::Hardlink(target) => self.hardlink(&top, &rest, &local, &shown, &target)?,
        }
        self.outcome.entries += 1;
        Ok(())
    }

    /// The top directory itself (`data` of an --all backup): only its metadata, applied last.
    fn top_dir(&mut self, top: &[u8], kind: Kind, meta: Meta) -> Result<()> {
        if kind != Kind::Dir {
            return Err(Error::archive(
                format!("entry {:?}", meta.display()),
                "is not a directory but sits at the top of the device tree",
            ));
        }
        let target = self.top_target(top)?;
        self.staging(top)?;
        self.top_meta.push((target, meta));
        self.outcome.entries += 1;
        Ok(())
    }

    /// A directory: made (or found made by an entry below it); its metadata waits for commit.
    fn dir(&mut self, top: &[u8], rest: Vec<u8>, local: PathBuf, meta: Meta) -> Result<()> {
        match fs::symlink_metadata(&local) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::archive(
                    format!("entry {:?}", meta.display()),
                    "is a directory where an earlier entry put a file or link",
                ))
            }
            Err(_) => fs::create_dir(&local).ctx(|| format!("creating {}", local.display()))?,
        }
        let st = self.staging(top)?;
        st.dirs.insert(rest.clone());
        st.explicit.insert(rest);
        self.dir_meta.push((local, meta));
        Ok(())
    }

    /// A file: its bytes written (see `writer`), then its metadata.
    fn file(
        &mut self,
        top: &[u8],
        local: &Path,
        meta: Meta,
        size: u64,
        sparse: bool,
        data: &mut dyn Read,
    ) -> Result<()> {
        let shown = meta.display();
        self.staging(top)?.reserve(size)?;
        if self.buf.len() < COPY_BUF {
            self.buf.resize(COPY_BUF, 0);
        }
        // Created without looking first (one syscall less per file): only a name an earlier
        // entry already used makes the creation fail, and is then replaced.
        let created = match create_file(local) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                replace_earlier(local, &shown)?;
                create_file(local)
            }
            other => other,
        };
        let written = created.map_err(CopyError::Write).and_then(|f| write_file(f, data, size, sparse, &mut self.buf));
        let file = written.map_err(|e| match e {
            CopyError::Read(e) => Error::archive(format!("entry {shown:?}"), format!("cannot be read: {e}")),
            CopyError::Write(e) => Error::Io { context: format!("writing {shown}"), source: e },
        })?;
        self.outcome.bytes += size;
        let refused = apply_file_meta(&file, local, &meta, self.is_root, self.opts)
            .ctx(|| format!("setting metadata of {shown}"))?;
        self.owner_warning(refused);
        if size >= WRITEBACK_MIN {
            sys::start_writeback(&file);
        } else {
            self.flusher.wrote(size + ALIGN as u64, local.parent().unwrap_or(local));
        }
        Ok(())
    }

    /// A symlink, whose target must not lead out of the root.
    fn symlink(&mut self, local: &Path, meta: Meta, target: &[u8]) -> Result<()> {
        let shown = meta.display();
        check_symlink(&meta.path, target, &shown)?;
        replace_earlier(local, &shown)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), local).ctx(|| format!("creating symlink {shown}"))?;
        let refused = apply_link_meta(local, &meta, self.is_root).ctx(|| format!("setting metadata of {shown}"))?;
        self.owner_warning(refused);
        Ok(())
    }

    /// A hard link: only to a file this archive unpacked earlier under the same top.
    fn hardlink(&mut self, top: &[u8], rest: &[u8], local: &Path, shown: &str, target: &[u8]) -> Result<()> {
        let (ttop, trest) = match target.iter().position(|b| *b == b'/') {
            Some(i) => (&target[..i], &target[i + 1..]),
            None => (target, &b""[..]),
        };
        if ttop != top || trest.is_empty() {
            return Err(Error::archive(
                format!("entry {shown:?}"),
                format!(
                    "is a hard link to {:?}, which this archive did not unpack under the same top directory",
                    String::from_utf8_lossy(target)
                ),
            ));
        }
        let st = self.staging(top)?;
        let src = st.dir.join(OsStr::from_bytes(trest));
        let parent_ok = match trest.iter().rposition(|b| *b == b'/') {
            Some(i) => st.dirs.contains(&trest[..i]),
            None => true,
        };
        let is_file = fs::symlink_metadata(&src).map(|m| m.is_file()).unwrap_or(false);
        // A link to itself would remove its own target before linking to it.
        if !parent_ok || !is_file || trest == rest {
            return Err(Error::archive(
                format!("entry {shown:?}"),
                format!(
                    "is a hard link to {:?}, which is not a file unpacked earlier from this archive",
                    String::from_utf8_lossy(target)
                ),
            ));
        }
        replace_earlier(local, shown)?;
        fs::hard_link(&src, local).ctx(|| format!("creating hard link {shown}"))
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
        // or, if it dies or fails, by the next start (`settle::finish_interrupted`).
        for st in self.stagings.values_mut() {
            st.dir = settle::commit_point(&st.dir, &st.target, &self.id, &st.explicit)?;
            self.committed = true;
            settle::flush_commit(&st.target)?;
        }
        let committed: Vec<_> =
            self.stagings.values().map(|st| (st.dir.as_path(), st.target.as_path(), &st.explicit)).collect();
        settle::move_into_place(&self.root, &committed, self.is_root)?;
        for (target, meta) in &self.top_meta {
            apply_dir_meta(target, meta, self.is_root).ctx(|| format!("setting metadata of {}", target.display()))?;
        }
        for st in self.stagings.values() {
            settle::remove_committed(&st.dir)?;
        }
        self.stagings.clear();
        Ok(std::mem::take(&mut self.outcome))
    }
}

impl Drop for Unpacker {
    fn drop(&mut self) {
        if !self.committed {
            // Failed before the commit point: staging goes, with the traces it left.
            for st in self.stagings.values() {
                st.discard();
            }
            self.stagings.clear();
        }
        // Failed past the commit point: what is still staged is finished by the next start.
        for st in self.stagings.values() {
            tracing::warn!("{} is left for the next start to move into place", st.dir.display());
        }
    }
}
