//! Putting recovered app data in place so that a run killed at any point (SIGKILL, a crash)
//! leaves a state the next run settles: every app's data dir then holds what it held before or
//! the recovered tree, never a mix, never nothing.
//!
//! Names, all in the target's parent directory, for run `ID` (`PID-RANDOM`) and package `PKG`:
//!
//! ```text
//! .cpbackup-app-ID-PKG     staging, being written or finished but not committed
//! .cpbackup-ready-ID-PKG   the committed tree: final mode, owner and label
//! .cpbackup-old-ID-PKG     the target, set aside
//! ```
//!
//! The swap: the staged tree is made final (the fresh dir's mode and owner, `chcon -R` with its
//! context) and flushed (`syncfs`); then
//!
//! 1. staging → ready: the commit point (parent fsynced);
//! 2. target → aside;
//! 3. each top-level entry of the aside that ready lacks (what the install made and the archive
//!    does not carry: `cache`, `code_cache`, `lib`) → into ready;
//! 4. ready → target (parent fsynced);
//! 5. the aside removed; `restorecon` gives the policy's label.
//!
//! Recovery ([`finish_interrupted`]), per leftover: staging → removed (the target was never
//! touched); ready → steps 2–5 from wherever they stopped; an aside without a ready (steps 1–4
//! done) → removed, or renamed back when the target is missing (it is then the only copy: only
//! an older cpbackup, or someone else, leaves that).
//!
//! Each run holds an exclusive `flock` on `ROOT/data/.cpbackup-run-ID` while it lives (the kernel
//! drops it when the process dies), and recovery takes the same lock before touching a run's
//! leftovers: the files of a live run (another daemon task, another process) are never touched,
//! and two recoveries never work on the same run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Area, ASIDE_PREFIX, STAGING_PREFIX};
use crate::android::device::Device;
use crate::android::pm;
use crate::android::selinux::{self, Relabel};
use crate::error::{Error, IoContext, Result};
use crate::select;
use crate::sys::{self, walk};

pub(super) const READY_PREFIX: &str = ".cpbackup-ready-";
const LOCK_PREFIX: &str = ".cpbackup-run-";
const AREAS: [Area; 4] = [Area::Ce, Area::De, Area::Ext, Area::Obb];

/// The directory holding an area's package dirs of Android user `user` (`/data/user/N` for
/// `Ce`…), under the root.
pub(super) fn area_parent(root: &Path, area: Area, user: u32) -> Option<PathBuf> {
    let device = area.device_path("p", user);
    let (parent, _) = device.rsplit_once('/')?;
    select::resolve(root, parent.as_bytes(), true).ok().map(|r| r.host)
}

/// The names of one swap, all in the target's parent directory.
pub(super) struct Swap {
    parent: PathBuf,
    pub(super) target: PathBuf,
    ready: PathBuf,
    aside: PathBuf,
    /// Keep the entries of the set-aside dir that the recovered tree lacks (data dirs).
    keep_extras: bool,
}

/// What settling a swap found and did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Settled {
    Nothing,
    /// Committed: the recovered tree is now the target.
    RolledForward,
    /// Only the set-aside dir was left after the swap: removed.
    AsideRemoved,
    /// The target was missing and its set-aside copy was put back.
    PutBack,
}

impl Swap {
    pub(super) fn new(parent: &Path, id: &str, pkg: &str, area: Area) -> Swap {
        Swap {
            parent: parent.to_path_buf(),
            target: parent.join(pkg),
            ready: parent.join(format!("{READY_PREFIX}{id}-{pkg}")),
            aside: parent.join(format!("{ASIDE_PREFIX}{id}-{pkg}")),
            keep_extras: area.is_data_dir(),
        }
    }

    /// The commit point: the finished staged tree, flushed to disk, takes its ready name.
    pub(super) fn commit(&self, staged: &Path) -> Result<()> {
        for p in [&self.ready, &self.aside] {
            if exists(p) {
                return Err(unexpected(p, "already exists"));
            }
        }
        sys::sync_fs(staged).ctx(|| format!("flushing {}", staged.display()))?;
        crash_point()?;
        fs::rename(staged, &self.ready)
            .ctx(|| format!("committing {} as {}", staged.display(), self.ready.display()))?;
        flush_renames(&self.parent);
        Ok(())
    }

    /// Finish the swap from wherever it stopped (steps 2–5 but the relabel), or settle a
    /// set-aside dir left without a ready one. Idempotent.
    pub(super) fn settle(&self) -> Result<Settled> {
        if let Ok(m) = fs::symlink_metadata(&self.ready) {
            if !m.is_dir() {
                return Err(unexpected(&self.ready, "is not a directory"));
            }
            self.roll_forward()?;
            return Ok(Settled::RolledForward);
        }
        if !exists(&self.aside) {
            return Ok(Settled::Nothing);
        }
        if !exists(&self.target) {
            crash_point()?;
            fs::rename(&self.aside, &self.target)
                .ctx(|| format!("putting {} back as {}", self.aside.display(), self.target.display()))?;
            flush_renames(&self.parent);
            return Ok(Settled::PutBack);
        }
        crash_point()?;
        remove_any(&self.aside)?;
        Ok(Settled::AsideRemoved)
    }

    fn roll_forward(&self) -> Result<()> {
        if exists(&self.target) {
            if exists(&self.aside) {
                // A new target appeared after the old one was set aside (the system remade the
                // dir): an empty one goes, anything else is left for a person.
                crash_point()?;
                fs::remove_dir(&self.target).ctx(|| {
                    format!(
                        "removing {}, made after the data it replaces was set aside as {} (the recovered data waits in {})",
                        self.target.display(),
                        self.aside.display(),
                        self.ready.display()
                    )
                })?;
            } else {
                crash_point()?;
                fs::rename(&self.target, &self.aside)
                    .ctx(|| format!("moving {} aside as {}", self.target.display(), self.aside.display()))?;
                flush_renames(&self.parent);
            }
        }
        if self.keep_extras && fs::symlink_metadata(&self.aside).is_ok_and(|m| m.is_dir()) {
            let listed = fs::read_dir(&self.aside).ctx(|| format!("listing {}", self.aside.display()))?;
            let mut names = Vec::new();
            for ent in listed {
                names.push(ent.ctx(|| format!("listing {}", self.aside.display()))?.file_name());
            }
            for name in names {
                let to = self.ready.join(&name);
                if !exists(&to) {
                    let from = self.aside.join(&name);
                    crash_point()?;
                    fs::rename(&from, &to)
                        .ctx(|| format!("keeping {}: moving it into {}", from.display(), self.ready.display()))?;
                }
            }
        }
        crash_point()?;
        fs::rename(&self.ready, &self.target)
            .ctx(|| format!("moving {} into place as {}", self.ready.display(), self.target.display()))?;
        flush_renames(&self.parent);
        if exists(&self.aside) {
            crash_point()?;
            remove_any(&self.aside)?;
        }
        Ok(())
    }
}

/// Held by a live run: an exclusive `flock` on `DATA/.cpbackup-run-ID`. Dropping it removes
/// the file, then the descriptor closes (and with it the lock).
pub(super) struct RunLock {
    pub(super) id: String,
    path: PathBuf,
    _file: File,
}

impl RunLock {
    /// A new run: a fresh id and its lock, in `data` (the root's `/data`).
    pub(super) fn take(data: &Path) -> Result<RunLock> {
        let mut last = None;
        for _ in 0..8 {
            let id = format!("{}-{}", std::process::id(), rand::random::<u32>());
            let path = data.join(format!("{LOCK_PREFIX}{id}"));
            let file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::Io { context: format!("creating the run lock {}", path.display()), source: e })
                }
            };
            // A recovery may have claimed (and removed) the file between its creation and the
            // lock: then it is not ours any more, and another id is taken.
            match lock_and_check(&file, &path) {
                Ok(true) => return Ok(RunLock { id, path, _file: file }),
                Ok(false) => last = Some(io::Error::other("taken by a recovery")),
                Err(e) => last = Some(e),
            }
        }
        let source = last.unwrap_or_else(|| io::Error::other("every id tried was in use"));
        Err(Error::Io { context: format!("locking a run in {}", data.display()), source })
    }

    /// The lock of run `id`, when no live process holds it (made when its file is gone).
    fn claim(data: &Path, id: &str) -> Option<RunLock> {
        let path = data.join(format!("{LOCK_PREFIX}{id}"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        match lock_and_check(&file, &path) {
            Ok(true) => Some(RunLock { id: id.to_string(), path, _file: file }),
            _ => None,
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Lock `file` without waiting; true when it is locked and still the file named `path`.
fn lock_and_check(file: &File, path: &Path) -> io::Result<bool> {
    if !sys::try_lock(file)? {
        return Ok(false);
    }
    let held = file.metadata()?;
    Ok(fs::symlink_metadata(path).is_ok_and(|m| m.dev() == held.dev() && m.ino() == held.ino()))
}

/// What one run left behind.
#[derive(Default)]
struct Leftovers {
    /// Staging dirs (data trees and APKs): never committed.
    staging: Vec<PathBuf>,
    /// Swaps begun: (area, parent dir, package).
    swaps: BTreeSet<(Area, PathBuf, String)>,
}

/// Settle what killed recover-app runs left under `root`, in the parents of every area's
/// package dirs and in `/data/local/tmp`: a swap past its commit point is finished (and the
/// target relabelled), staging from before it is removed, a set-aside dir is removed or, when
/// it is the only copy, put back. The files of a run still going are left alone. Idempotent;
/// returns what it did (and what it could not do), a line each.
pub fn finish_interrupted(root: &Path, device: &Device) -> Vec<String> {
    let mut done = Vec::new();
    let data = match select::resolve(root, b"data", true) {
        Ok(r) => r.host,
        Err(e) => {
            tracing::warn!("resolving /data under {}: {e}", root.display());
            return done;
        }
    };
    let mut parents: Vec<(Option<Area>, PathBuf)> = Vec::new();
    for user in users(&data) {
        for area in AREAS {
            if let Some(p) = area_parent(root, area, user) {
                if !parents.iter().any(|(_, q)| *q == p) {
                    parents.push((Some(area), p));
                }
            }
        }
    }
    if let Ok(r) = select::resolve(root, b"data/local/tmp", true) {
        if !parents.iter().any(|(_, q)| *q == r.host) {
            parents.push((None, r.host));
        }
    }
    let mut runs: BTreeMap<String, Leftovers> = BTreeMap::new();
    for (area, parent) in &parents {
        scan(parent, *area, &mut runs);
    }
    for (id, left) in runs {
        let Some(_lock) = RunLock::claim(&data, &id) else {
            tracing::debug!("run {id} is still going (or being settled): its files are left alone");
            continue;
        };
        for (area, parent, pkg) in &left.swaps {
            settle_one(&Swap::new(parent, &id, pkg, *area), *area, device, &mut done);
        }
        for path in &left.staging {
            match crash_point().and_then(|()| remove_any(path)) {
                Ok(()) => done.push(format!("removed {}, staged by an interrupted recover-app", path.display())),
                Err(e) => done.push(format!("could not remove {}: {e}", path.display())),
            }
        }
    }
    // The locks of runs that ended and left nothing.
    if let Ok(rd) = fs::read_dir(&data) {
        for ent in rd.flatten() {
            let name = ent.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_prefix(LOCK_PREFIX)) {
                if split_id(&format!("{id}-")).is_some() {
                    drop(RunLock::claim(&data, id));
                }
            }
        }
    }
    for line in &done {
        tracing::info!("{line}");
    }
    done
}

/// The Android users whose data dirs may hold a recovery's leftovers: 0, and every number
/// named in `/data/user`, `/data/user_de` and `/data/media`.
fn users(data: &Path) -> BTreeSet<u32> {
    let mut users = BTreeSet::from([0]);
    for dir in ["user", "user_de", "media"] {
        let Ok(rd) = fs::read_dir(data.join(dir)) else { continue };
        for ent in rd.flatten() {
            let name = ent.file_name();
            let n = name.to_str().filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if let Some(user) = n.and_then(|n| n.parse().ok()) {
                users.insert(user);
            }
        }
    }
    users
}

fn settle_one(swap: &Swap, area: Area, device: &Device, done: &mut Vec<String>) {
    let target = swap.target.display();
    let relabel = match swap.settle() {
        Ok(Settled::Nothing) => return,
        Ok(Settled::PutBack) => {
            done.push(format!(
                "put {target} back from {} (set aside by an interrupted recover-app)",
                swap.aside.display()
            ));
            return;
        }
        Ok(Settled::RolledForward) => {
            done.push(format!("finished moving the recovered data into {target} (an interrupted recover-app)"));
            true
        }
        Ok(Settled::AsideRemoved) => {
            done.push(format!("removed {}, the data {target} held before a recover-app", swap.aside.display()));
            true
        }
        Err(e) => {
            done.push(format!("could not finish the recovery of {target}: {e}"));
            return;
        }
    };
    if relabel {
        // The tree carries the fresh dir's context from before the commit; this gives it the
        // policy's label, as an uninterrupted run does.
        let context = selinux::context_of(&swap.target);
        let r = crash_point()
            .and_then(|()| selinux::relabel(device, &swap.target, context.as_deref(), !area.is_data_dir()));
        match r {
            Ok(Relabel::Restorecon) => done.push(format!("relabelled {target}: restorecon")),
            Ok(Relabel::Chcon(c)) => done.push(format!("relabelled {target}: chcon {c}")),
            Ok(Relabel::Unlabelled(w)) => done.push(format!("left {target} unlabelled: {w}")),
            Err(e) => done.push(format!("could not relabel {target}: {e}")),
        }
    }
}

/// Note what `dir` holds of cpbackup's recover-app names, by run. `area` is `None` for
/// `/data/local/tmp` (APK staging only).
fn scan(dir: &Path, area: Option<Area>, runs: &mut BTreeMap<String, Leftovers>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(rest) = name.strip_prefix(STAGING_PREFIX) {
            if let Some((id, _)) = split_id(rest) {
                runs.entry(id.to_string()).or_default().staging.push(ent.path());
            }
            continue;
        }
        let Some(area) = area else { continue };
        let Some(rest) = name.strip_prefix(READY_PREFIX).or_else(|| name.strip_prefix(ASIDE_PREFIX)) else { continue };
        match split_id(rest) {
            Some((id, pkg)) if pm::check_package_name(pkg).is_ok() => {
                runs.entry(id.to_string()).or_default().swaps.insert((area, dir.to_path_buf(), pkg.to_string()));
            }
            _ => tracing::warn!("{}: not a name cpbackup makes; left alone", ent.path().display()),
        }
    }
}

/// `PID-RANDOM-REST` → (`PID-RANDOM`, `REST`). Package names hold no `-`.
fn split_id(rest: &str) -> Option<(&str, &str)> {
    let mut parts = rest.splitn(3, '-');
    let (pid, random, tail) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(random) {
        return None;
    }
    Some((&rest[..pid.len() + 1 + random.len()], tail))
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn remove_any(p: &Path) -> Result<()> {
    walk::remove_tree(p).ctx(|| format!("removing {}", p.display()))
}

/// `p` is not what a swap expects there: `what` it is instead.
pub(super) fn unexpected(p: &Path, what: &str) -> Error {
    Error::Io { context: p.display().to_string(), source: io::Error::other(what.to_string()) }
}

/// Make a rename in `dir` durable. A failure is only logged: the rename itself is done.
fn flush_renames(dir: &Path) {
    if let Err(e) = sys::sync_dir(dir) {
        tracing::warn!("could not flush {}: {e}", dir.display());
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: how many more steps may run before a simulated SIGKILL (`None`: no limit), and
    /// whether one happened.
    static STEPS_LEFT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    static KILLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A point before a step that changes the disk, where a SIGKILL may land. In tests the swap or
/// recovery can stop there (as an error, which nothing cleans up after, like a killed process
/// leaves its files); in the built agent it is nothing.
#[inline]
pub(super) fn crash_point() -> Result<()> {
    #[cfg(test)]
    {
        if let Some(n) = STEPS_LEFT.with(|s| s.get()) {
            if n == 0 {
                KILLED.with(|k| k.set(true));
                return Err(Error::Io { context: "simulated SIGKILL".into(), source: io::Error::other("killed") });
            }
            STEPS_LEFT.with(|s| s.set(Some(n - 1)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::recover::{swap_in, Target};
    use super::super::stage::StagedArea;
    use super::*;
    use crate::android::device::CommandLine;
    use crate::android::owner::Owner;
    use std::cell::RefCell;
    use std::io::Read;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const PKG: &str = "com.example.notes";
    const ID: &str = "4242-17";

    /// Records each device command and answers success (no tool runs).
    #[derive(Default)]
    struct Recorder(RefCell<Vec<String>>);

    impl CommandLine for Recorder {
        fn run(&self, program: &str, args: &[&str], _stdin: Option<&mut dyn Read>) -> Result<String> {
            self.0.borrow_mut().push(format!("{program} {}", args.join(" ")));
            Ok(String::new())
        }
    }

    fn kill_after(steps: Option<usize>) {
        STEPS_LEFT.with(|s| s.set(steps));
        KILLED.with(|k| k.set(false));
    }

    /// No more kills; whether the last `kill_after` killed.
    fn stop_killing() -> bool {
        STEPS_LEFT.with(|s| s.set(None));
        KILLED.with(|k| k.get())
    }

    /// path → what it is, for every entry under `dir` (`None` when `dir` is missing).
    fn tree(dir: &Path) -> Option<BTreeMap<String, String>> {
        fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
            let mut ents: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
            ents.sort_by_key(|e| e.file_name());
            for e in ents {
                let name = format!("{rel}{}", e.file_name().to_string_lossy());
                let m = fs::symlink_metadata(e.path()).unwrap();
                if m.file_type().is_symlink() {
                    out.insert(name, format!("link {}", fs::read_link(e.path()).unwrap().display()));
                } else if m.is_dir() {
                    out.insert(name.clone(), "dir".into());
                    walk(&e.path(), &format!("{name}/"), out);
                } else {
                    out.insert(name, format!("file {}", fs::read_to_string(e.path()).unwrap()));
                }
            }
        }
        let m = fs::symlink_metadata(dir).ok()?;
        let mut out = BTreeMap::new();
        out.insert(String::new(), format!("top {:o}", m.mode() & 0o7777));
        walk(dir, "", &mut out);
        Some(out)
    }

    fn write(p: &Path, s: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, s).unwrap();
    }

    /// A phone root with one package's area: the fresh dir (when `fresh`) and a finished
    /// staged tree. Returns the root, the staged area, the tree before and the tree wanted after.
    struct Case {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        area: Area,
        staged: StagedArea,
        old: Option<BTreeMap<String, String>>,
        new: BTreeMap<String, String>,
    }

    fn case(area: Area, fresh: bool) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("phone");
        for d in [
            "data/data",
            "data/user",
            "data/user_de/0",
            "data/media/0/Android/data",
            "data/media/0/Android/obb",
            "data/local/tmp",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        symlink("/data/data", root.join("data/user/0")).unwrap();
        let parent = area_parent(&root, area, 0).unwrap();
        let target = parent.join(PKG);
        if fresh {
            // What an install makes (and one entry the archive also carries).
            write(&target.join("cache/fresh.tmp"), "fresh cache");
            write(&target.join("code_cache/x.prof"), "code");
            symlink("/data/app/~~x==/lib/arm64", target.join("lib")).unwrap();
            fs::set_permissions(&target, fs::Permissions::from_mode(0o751)).unwrap();
        }
        let dir = parent.join(format!("{STAGING_PREFIX}{ID}-{PKG}"));
        write(&dir.join("files/sub/note.txt"), "remember the milk");
        write(&dir.join("cache/thumb.bin"), "cached");
        write(&dir.join("shared_prefs/p.xml"), "<map/>");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let old = tree(&target);
        let mut new = tree(&dir).unwrap();
        let mode = if fresh {
            0o751
        } else if area.is_data_dir() {
            0o700
        } else {
            0o770
        };
        new.insert(String::new(), format!("top {mode:o}"));
        if fresh && area.is_data_dir() {
            for (k, v) in old.as_ref().unwrap() {
                if !k.is_empty() && !k.starts_with("cache") {
                    new.insert(k.clone(), v.clone());
                }
            }
        }
        Case { _tmp: tmp, root, area, staged: StagedArea { dir, target }, old, new }
    }

    impl Case {
        fn owner(&self) -> Owner {
            let (uid, gid) = crate::sys::ids();
            Owner { uid, gid, cache_gid: gid }
        }

        fn swap(&self, cli: &Recorder) -> std::result::Result<Relabel, (super::super::RecoverStep, Error)> {
            swap_in(
                Target { root: &self.root, id: ID, user: 0 },
                PKG,
                self.area,
                &self.staged,
                self.owner(),
                &Device::new(cli),
            )
        }

        fn recover(&self, cli: &Recorder) -> Vec<String> {
            finish_interrupted(&self.root, &Device::new(cli))
        }

        fn target(&self) -> Option<BTreeMap<String, String>> {
            tree(&self.staged.target)
        }

        /// The names cpbackup made that are still there.
        fn leftovers(&self) -> Vec<String> {
            let mut out = Vec::new();
            for d in [
                "data",
                "data/data",
                "data/user_de/0",
                "data/media/0/Android/data",
                "data/media/0/Android/obb",
                "data/local/tmp",
            ] {
                for e in fs::read_dir(self.root.join(d)).unwrap() {
                    let n = e.unwrap().file_name().to_string_lossy().into_owned();
                    if n.starts_with(".cpbackup") {
                        out.push(format!("{d}/{n}"));
                    }
                }
            }
            out
        }

        /// Settled: exactly the old tree (`false`) or exactly the new one (`true`), nothing else.
        fn assert_settled(&self, new: bool, what: &str) {
            let got = self.target();
            if new {
                assert_eq!(got.as_ref(), Some(&self.new), "{what}: not the new tree");
            } else {
                assert_eq!(got, self.old, "{what}: not the old tree");
            }
            assert_eq!(self.leftovers(), Vec::<String>::new(), "{what}: leftovers");
        }
    }

    /// Kill the swap before each of its steps in turn (and then the recovery before each of
    /// its own): recovery always ends in the old tree (killed before the commit point) or the
    /// new one (after), with nothing left behind; a second recovery finds nothing to do.
    fn every_kill_point(area: Area, fresh: bool) {
        let mut n = 0;
        loop {
            let c = case(area, fresh);
            let cli = Recorder::default();
            kill_after(Some(n));
            let r = c.swap(&cli);
            if !stop_killing() {
                r.unwrap();
                c.assert_settled(true, "uninterrupted swap");
                let calls = cli.0.borrow().join("\n");
                assert!(
                    calls.contains(&format!("restorecon -R {}", c.staged.target.display())) || !area.is_data_dir(),
                    "{calls}"
                );
                assert!(c.recover(&cli).is_empty());
                break;
            }
            assert!(r.is_err());
            // What the phone shows while the run is dead: the old tree, nothing (while the
            // aside and ready dirs hold both), or the new tree. Never a mix.
            let committed = exists(&c.staged.target.with_file_name(format!("{READY_PREFIX}{ID}-{PKG}")))
                || c.target().as_ref() == Some(&c.new);
            let shown = c.target();
            assert!(
                shown == c.old || shown.as_ref() == Some(&c.new) || (shown.is_none() && committed),
                "killed before step {n}: the target is a mix: {shown:?}"
            );
            let mut m = 0;
            loop {
                let c = case(area, fresh);
                let cli = Recorder::default();
                kill_after(Some(n));
                assert!(c.swap(&cli).is_err());
                kill_after(Some(m));
                c.recover(&cli);
                let again = stop_killing();
                let what = format!("{area:?} fresh={fresh}: swap killed before step {n}, recovery before step {m}");
                if again {
                    c.recover(&cli);
                }
                c.assert_settled(committed, &what);
                assert_eq!(c.recover(&cli), Vec::<String>::new(), "{what}: a second recovery did something");
                if !again {
                    break;
                }
                m += 1;
            }
            n += 1;
        }
        assert!(n >= 4, "{area:?}: only {n} kill points");
    }

    #[test]
    fn swap_killed_anywhere_ends_old_or_new_in_a_data_dir() {
        every_kill_point(Area::Ce, true);
        every_kill_point(Area::De, true);
    }

    #[test]
    fn swap_killed_anywhere_ends_old_or_new_in_external_storage() {
        every_kill_point(Area::Ext, false);
        every_kill_point(Area::Obb, true);
    }

    #[test]
    fn swap_labels_before_the_commit_and_restorecons_after() {
        let c = case(Area::Ce, true);
        let cli = Recorder::default();
        let context = selinux::context_of(&c.staged.target);
        assert_eq!(c.swap(&cli).unwrap(), Relabel::Restorecon);
        let calls = cli.0.borrow().clone();
        let restorecon = format!("restorecon -R {}", c.staged.target.display());
        match context {
            // A host with SELinux labels: the staged tree got the fresh dir's context first.
            Some(ctx) => {
                assert_eq!(calls, vec![format!("chcon -R -h {ctx} {}", c.staged.dir.display()), restorecon])
            }
            None => assert_eq!(calls, vec![restorecon]),
        }
    }

    #[test]
    fn live_runs_are_left_alone_and_dead_ones_settled() {
        let c = case(Area::Ce, true);
        let data = c.root.join("data");
        let live = RunLock::take(&data).unwrap();
        let staging = c.staged.target.with_file_name(format!("{STAGING_PREFIX}{}-{PKG}", live.id));
        let ready = c.staged.target.with_file_name(format!("{READY_PREFIX}{}-{PKG}", live.id));
        fs::create_dir(&staging).unwrap();
        fs::create_dir(&ready).unwrap();
        // The dead run's lock file is still there, unlocked (the kernel dropped the lock).
        fs::write(data.join(format!("{LOCK_PREFIX}{ID}")), "").unwrap();
        let cli = Recorder::default();
        let done = c.recover(&cli);
        assert_eq!(done, vec![format!("removed {}, staged by an interrupted recover-app", c.staged.dir.display())]);
        assert!(staging.is_dir() && ready.is_dir(), "a live run's files were touched");
        assert_eq!(c.target(), c.old);
        assert!(!data.join(format!("{LOCK_PREFIX}{ID}")).exists(), "the dead run's lock is removed");

        drop(live);
        let done = c.recover(&cli);
        assert_eq!(done.len(), 3, "{done:?}");
        assert_eq!(tree(&c.staged.target).unwrap().get("lib"), c.old.as_ref().unwrap().get("lib"));
        assert_eq!(c.leftovers(), Vec::<String>::new());
    }

    #[test]
    fn an_aside_without_ready_is_the_old_data() {
        // Target missing: the aside is the only copy and goes back.
        let c = case(Area::Ce, true);
        fs::remove_dir_all(&c.staged.dir).unwrap();
        let swap = Swap::new(c.staged.target.parent().unwrap(), ID, PKG, Area::Ce);
        fs::rename(&swap.target, &swap.aside).unwrap();
        let done = c.recover(&Recorder::default());
        assert_eq!(done.len(), 1, "{done:?}");
        c.assert_settled(false, "put back");

        // Target present: the aside is what the target held before; removed.
        let c = case(Area::De, true);
        fs::remove_dir_all(&c.staged.dir).unwrap();
        let swap = Swap::new(c.staged.target.parent().unwrap(), ID, PKG, Area::De);
        fs::create_dir(&swap.aside).unwrap();
        c.recover(&Recorder::default());
        c.assert_settled(false, "aside removed");
    }

    #[test]
    fn a_target_remade_after_the_aside_is_never_deleted() {
        let c = case(Area::Ce, true);
        let swap = Swap::new(c.staged.target.parent().unwrap(), ID, PKG, Area::Ce);
        // Committed (made final: the fresh dir's mode), then the target set aside.
        fs::set_permissions(&c.staged.dir, fs::Permissions::from_mode(0o751)).unwrap();
        fs::rename(&c.staged.dir, &swap.ready).unwrap();
        fs::rename(&swap.target, &swap.aside).unwrap();
        write(&swap.target.join("someone.txt"), "else");
        let done = c.recover(&Recorder::default());
        assert!(done[0].starts_with("could not finish"), "{done:?}");
        assert!(swap.ready.is_dir() && swap.aside.is_dir() && swap.target.join("someone.txt").is_file());
        // An empty one goes.
        fs::remove_file(swap.target.join("someone.txt")).unwrap();
        c.recover(&Recorder::default());
        c.assert_settled(true, "empty remade target");
    }

    /// A run killed past its commit point while recovering into user 10: the next run (acting
    /// for any user) finds its ready tree in user 10's DE dir and finishes the swap there.
    #[test]
    fn another_users_leftovers_are_settled() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let parent = root.join("data/user_de/10");
        write(&parent.join(PKG).join("old.txt"), "old");
        write(&parent.join(format!("{READY_PREFIX}{ID}-{PKG}")).join("new.txt"), "new");
        fs::create_dir_all(root.join("data/user/0")).unwrap();
        assert_eq!(users(&root.join("data")), BTreeSet::from([0, 10]));
        let cli = Recorder::default();
        let done = finish_interrupted(root, &Device::new(&cli));
        assert!(done[0].starts_with("finished moving the recovered data into"), "{done:?}");
        let now = tree(&parent.join(PKG)).unwrap();
        assert_eq!(now.get("new.txt").map(String::as_str), Some("file new"));
        // A data dir keeps what the install made and the archive lacks (here: old.txt).
        assert_eq!(now.get("old.txt").map(String::as_str), Some("file old"));
        assert_eq!(fs::read_dir(&parent).unwrap().count(), 1, "nothing of the run is left beside the target");
    }

    #[test]
    fn run_ids_parse() {
        assert_eq!(split_id("12-345-com.a.b"), Some(("12-345", "com.a.b")));
        assert_eq!(split_id("12-345-com.a.b.apks"), Some(("12-345", "com.a.b.apks")));
        assert_eq!(split_id("12-x-com.a"), None);
        assert_eq!(split_id("12-345"), None);
        assert_eq!(split_id("-345-a"), None);
    }
}
