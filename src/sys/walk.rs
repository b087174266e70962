//! The one walk over directory trees the agent did not make itself, or cannot bound: an app's
//! data, a phone's directories, what an archive or another process put in staging. It is
//! iterative (a stack on the heap, never recursion: a tree as deep as a filesystem allows must
//! not overflow a thread's stack), never follows a symlink, and works relative to open
//! directories: each directory is opened by its name in the one above (`openat` with
//! `O_NOFOLLOW`), so no path grows past what a file-system call takes (a tree can be far deeper
//! than `PATH_MAX` allows to name) and no directory renamed meanwhile leads the walk elsewhere.
//!
//! At most two directories are open at once, however deep the tree: going back up reopens the
//! parent through `..` and checks that it is the same directory (device and inode). It holds the
//! names still to visit of the directories on the current path, nothing more, sorted bytewise.
//!
//! `select` keeps its own walk for exports: paths under `--root`, names only, a million files.

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

use super::Stat;

/// What the last call to [`Walk::next`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A directory, before its contents (unless [`Walk::skip`] is called now).
    Dir,
    /// Anything else: a file, a symlink, a special file (its type as the directory listed it,
    /// or as `lstat` said where the listing did not).
    Other(FileType),
    /// A directory whose contents have all been visited.
    Left,
}

/// One directory on the current path.
struct Level {
    /// Its name in the directory above (empty for the top).
    name: CString,
    dev: u64,
    ino: u64,
    /// Entries still to visit, last first.
    names: Vec<(CString, FileType)>,
    /// Its path from the top, as a prefix of `Walk::rel`.
    rel_len: usize,
}

/// A walk over the tree under one directory, in bytewise order of names, each directory
/// before its contents (and once more, as [`Step::Left`], after them). The top itself is not
/// visited. Drive it with `while let Some(step) = walk.next()`; what the step is about is
/// [`Walk::name`] in [`Walk::dir`], at [`Walk::rel`] from the top.
pub struct Walk {
    /// The directory whose entries are being visited: the deepest on the path.
    cur: OwnedFd,
    levels: Vec<Level>,
    /// The current entry's name and path from the top.
    name: CString,
    rel: Vec<u8>,
    /// A directory just visited, to be entered by the next call unless skipped.
    enter: bool,
}

impl Walk {
    /// Start at `top`, which must be a directory (not a symlink to one).
    pub fn new(top: &Path) -> io::Result<Walk> {
        let cur = rustix::fs::open(top, dir_flags(), Mode::empty())?;
        let level = Level::read(&cur, CString::default(), 0)?;
        Ok(Walk { cur, levels: vec![level], name: CString::default(), rel: Vec::new(), enter: false })
    }

    /// The next entry, `None` once the whole tree has been visited. An error opening or listing
    /// a directory leaves that directory out (no `Left` for it) and the walk can go on; an error
    /// going back up (the tree was moved under the walk) ends it.
    #[allow(clippy::should_implement_trait)] // a lending walk: each step borrows the walk
    pub fn next(&mut self) -> Option<io::Result<Step>> {
        if std::mem::take(&mut self.enter) {
            if let Err(e) = self.descend() {
                return Some(Err(e));
            }
        }
        let level = self.levels.last_mut()?;
        if let Some((name, listed)) = level.names.pop() {
            self.rel.truncate(level.rel_len);
            if !self.rel.is_empty() {
                self.rel.push(b'/');
            }
            self.rel.extend_from_slice(name.as_bytes());
            let kind = match listed {
                FileType::Unknown => match rustix::fs::statat(&self.cur, &name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(s) => FileType::from_raw_mode(s.st_mode),
                    Err(e) => {
                        self.name = name;
                        return Some(Err(e.into()));
                    }
                },
                kind => kind,
            };
            self.name = name;
            if kind == FileType::Directory {
                self.enter = true;
                return Some(Ok(Step::Dir));
            }
            return Some(Ok(Step::Other(kind)));
        }
        if self.levels.len() == 1 {
            return None;
        }
        Some(self.ascend())
    }

    /// Do not enter the directory the last step visited (it was moved away, or is left out).
    pub fn skip(&mut self) {
        self.enter = false;
    }

    /// The directory holding the current entry, for `*at` calls on it.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.cur.as_fd()
    }

    /// The current entry's name in [`Walk::dir`].
    pub fn name(&self) -> &CStr {
        &self.name
    }

    /// The current entry's path from the top (`a/b/c`), never passed to a file-system call.
    pub fn rel(&self) -> &[u8] {
        &self.rel
    }

    /// How deep the current entry is: 1 for the top's own entries.
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// `lstat` of the current entry.
    pub fn stat(&self) -> io::Result<Stat> {
        Ok(rustix::fs::statat(&self.cur, &self.name, AtFlags::SYMLINK_NOFOLLOW)?.into())
    }

    /// Open the current entry for reading, never through a symlink and never blocking (a FIFO
    /// put in a file's place must not hang the walk).
    pub fn open(&self) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(&self.cur, &self.name, flags, Mode::empty())?))
    }

    /// Enter the directory the last step visited.
    fn descend(&mut self) -> io::Result<()> {
        let fd = rustix::fs::openat(&self.cur, &self.name, dir_flags(), Mode::empty())?;
        let level = Level::read(&fd, std::mem::take(&mut self.name), self.rel.len())?;
        self.levels.push(level);
        self.cur = fd;
        Ok(())
    }

    /// Back to the parent of the current directory, through `..`, checked to be the directory
    /// the walk came from.
    fn ascend(&mut self) -> io::Result<Step> {
        let Some(done) = self.levels.pop() else { return Ok(Step::Left) };
        let expected = self.levels.last().map(|l| (l.dev, l.ino));
        let parent = rustix::fs::openat(&self.cur, c"..", dir_flags(), Mode::empty())
            .and_then(|p| rustix::fs::fstat(&p).map(|st| (p, st)));
        let parent = match parent {
            Ok((p, st)) if expected == Some(dev_ino(&st)) => p,
            failed => {
                // Nowhere safe to go on from.
                self.levels.clear();
                let shown = String::from_utf8_lossy(&self.rel[..done.rel_len]).into_owned();
                return Err(match failed {
                    Err(e) => e.into(),
                    Ok(_) => io::Error::other(format!("the directory above {shown} was moved while it was walked")),
                });
            }
        };
        self.cur = parent;
        self.rel.truncate(done.rel_len);
        self.name = done.name;
        Ok(Step::Left)
    }
}

impl Level {
    /// The directory open as `fd`, listed.
    fn read(fd: &OwnedFd, name: CString, rel_len: usize) -> io::Result<Level> {
        let st = rustix::fs::fstat(fd)?;
        let mut names = Vec::new();
        let mut dir = Dir::read_from(fd)?;
        while let Some(ent) = dir.read() {
            let ent = ent?;
            let n = ent.file_name();
            if n != c"." && n != c".." {
                names.push((n.to_owned(), ent.file_type()));
            }
        }
        names.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        let (dev, ino) = dev_ino(&st);
        Ok(Level { name, dev, ino, names, rel_len })
    }
}

fn dev_ino(st: &rustix::fs::Stat) -> (u64, u64) {
    (u64::try_from(st.st_dev).unwrap_or(0), u64::try_from(st.st_ino).unwrap_or(0))
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Remove `path` and, when it is a directory, everything under it, however deep (std's
/// `remove_dir_all` recurses, and holds a descriptor per level). Nothing there is no error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return fs::remove_file(path),
        Ok(_) => {}
    }
    let mut walk = Walk::new(path)?;
    while let Some(step) = walk.next() {
        let flags = match step? {
            Step::Dir => continue,
            Step::Other(_) => AtFlags::empty(),
            Step::Left => AtFlags::REMOVEDIR,
        };
        match rustix::fs::unlinkat(walk.dir(), walk.name(), flags) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    fs::remove_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// `levels` directories `d`, each in the one above, under `top`, with a file at the bottom:
    /// made relative to the level above, since the whole path is longer than a call takes.
    fn deep_tree(top: &Path, levels: usize) {
        fs::create_dir(top).unwrap();
        let mut fd = rustix::fs::open(top, dir_flags(), Mode::empty()).unwrap();
        for _ in 0..levels {
            rustix::fs::mkdirat(&fd, c"d", Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(&fd, c"d", dir_flags(), Mode::empty()).unwrap();
        }
        rustix::fs::openat(&fd, c"leaf", OFlags::WRONLY | OFlags::CREATE, Mode::from_raw_mode(0o644)).unwrap();
    }

    fn steps(top: &Path) -> Vec<String> {
        let mut walk = Walk::new(top).unwrap();
        let mut out = Vec::new();
        while let Some(step) = walk.next() {
            let step = step.unwrap();
            let rel = String::from_utf8_lossy(walk.rel()).into_owned();
            out.push(match step {
                Step::Dir => format!("dir {rel} ({})", walk.depth()),
                Step::Other(FileType::Symlink) => format!("link {rel}"),
                Step::Other(_) => format!("file {rel}"),
                Step::Left => format!("left {rel} ({})", walk.name().to_string_lossy()),
            });
        }
        out
    }

    #[test]
    fn sorted_directories_before_and_after_their_contents_links_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        fs::create_dir_all(top.join("b/inner")).unwrap();
        fs::create_dir_all(tmp.path().join("elsewhere/secret")).unwrap();
        fs::write(top.join("a"), "a").unwrap();
        fs::write(top.join("b/inner/f"), "f").unwrap();
        fs::write(top.join("c"), "c").unwrap();
        symlink(tmp.path().join("elsewhere"), top.join("b/link")).unwrap();
        assert_eq!(
            steps(&top),
            [
                "file a",
                "dir b (1)",
                "dir b/inner (2)",
                "file b/inner/f",
                "left b/inner (inner)",
                "link b/link",
                "left b (b)",
                "file c"
            ]
        );
        // A skipped directory is not entered, and has no `Left`.
        let mut walk = Walk::new(&top).unwrap();
        let mut seen = Vec::new();
        while let Some(step) = walk.next() {
            if step.unwrap() == Step::Dir {
                walk.skip();
            }
            seen.push(String::from_utf8_lossy(walk.rel()).into_owned());
        }
        assert_eq!(seen, ["a", "b", "c"]);
        // The top must be a directory itself, not a link to one.
        symlink(&top, tmp.path().join("to-top")).unwrap();
        assert!(Walk::new(&tmp.path().join("to-top")).is_err());
    }

    /// 3,000 levels (a path of 6,000 bytes, more than a call takes) on a 128 KiB stack: every
    /// level visited, then the whole tree removed. (`malicious` puts 10,000 through recover-app.)
    #[test]
    fn trees_deeper_than_a_path_can_name_are_walked_and_removed_on_a_small_stack() {
        const LEVELS: usize = 3_000;
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("deep");
        deep_tree(&top, LEVELS);
        let t = top.clone();
        let (dirs, left, leaf) = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let mut walk = Walk::new(&t).unwrap();
                let (mut dirs, mut left, mut leaf) = (0, 0, 0);
                while let Some(step) = walk.next() {
                    match step.unwrap() {
                        Step::Dir => dirs += 1,
                        Step::Left => left += 1,
                        Step::Other(_) => {
                            assert_eq!(walk.rel().len(), LEVELS * 2 + 4);
                            assert_eq!(walk.stat().unwrap().size, 0);
                            leaf += 1;
                        }
                    }
                }
                remove_tree(&t).unwrap();
                (dirs, left, leaf)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!((dirs, left, leaf), (LEVELS, LEVELS, 1));
        assert!(!top.exists());
        assert!(remove_tree(&top).is_ok(), "removing nothing");
    }
}
