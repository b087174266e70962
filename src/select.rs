//! Selection: which device paths a backup takes. Owns the CPH path rules (absolute, under
//! `/data` or a cache directory, the allowed characters, the length limit), `*` globs, the
//! include/exclude logic (exclude wins, a directory takes its subtree), resolving device
//! paths inside `--root`, and the sorted, deterministic walk.
//!
//! It must never follow a symlink during the walk, never leave `--root` (absolute symlinks
//! resolve inside it), never open a file (so it can never block on a FIFO), and never hold
//! the whole tree in memory: it visits entries one at a time, holding only the sorted names of
//! the directories on the current path.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The longest path the CPH API accepts.
pub const MAX_PATH_LEN: usize = 4096;

/// The device directories a data path may live under.
const ALLOWED_TOPS: &[&str] = &["/data", "/cache", "/data/cache"];

/// What `--all` leaves out of `/data`: the agent's own files and what Android rebuilds or
/// throws away by itself. Each is a device path; globs allowed.
pub const ALL_EXCLUDES: &[&str] = &[
    "/data/cpbackup",       // the agent's home: journal, config, upload ids
    "/data/*/.cpbackup-*",  // staging directories of an import in progress
    "/data/.cpbackup-*",    // the same, at the top
    "/data/local/tmp",      // adb's scratch space, where the agent binary is pushed
    "/data/anr",            // crash dumps
    "/data/tombstones",     // native crash dumps
    "/data/system/dropbox", // system event logs
    "/data/misc/logd",      // log daemon buffers
    "/data/dalvik-cache",   // compiled code, rebuilt on boot
    "/data/lost+found",     // fsck's leftovers
    "/data/cache",          // the cache partition's stand-in
];

/// Validate one include or exclude path against the CPH rules. The error names the path and
/// the rule it breaks.
pub fn check_path_rule(path: &str) -> Result<()> {
    if path.len() > MAX_PATH_LEN {
        return Err(Error::path_rule(truncate_for_message(path), format!("longer than {MAX_PATH_LEN} characters")));
    }
    if !path.starts_with('/') {
        return Err(Error::path_rule(path, "must be absolute (start with /), e.g. /data/data/com.example.app"));
    }
    if let Some(bad) = path.chars().find(|c| !is_allowed_char(*c)) {
        return Err(Error::path_rule(
            path,
            format!("character {bad:?} is not allowed; use only A-Z a-z 0-9 . / - _ + # * = ~"),
        ));
    }
    for comp in path.split('/').skip(1) {
        match comp {
            "" if path != "/" && path.ends_with('/') && path.len() > 1 => {}
            "" => {
                return Err(Error::path_rule(path, "contains an empty component (//)"));
            }
            "." | ".." => {
                return Err(Error::path_rule(path, "must not contain . or .. components"));
            }
            _ => {}
        }
    }
    let trimmed = path.trim_end_matches('/');
    let under_allowed = ALLOWED_TOPS.iter().any(|top| trimmed == *top || trimmed.starts_with(&format!("{top}/")));
    if !under_allowed {
        return Err(Error::path_rule(
            path,
            "only paths under /data or a cache directory (/cache, /data/cache) can be backed up",
        ));
    }
    if trimmed.split('/').any(|c| c.contains('*') && c.chars().all(|ch| ch == '*') && c.len() > 1) {
        return Err(Error::path_rule(path, "** is not supported; * matches within one path component"));
    }
    Ok(())
}

fn is_allowed_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_' | '+' | '#' | '*' | '=' | '~')
}

fn truncate_for_message(path: &str) -> String {
    let mut s: String = path.chars().take(80).collect();
    s.push('…');
    s
}

/// `*` matches any run of bytes within one path component; everything else matches itself.
pub fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative matcher with single-star backtracking: linear in practice, no recursion.
    let (mut p, mut n) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            p += 1;
            mark = n;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

/// A device path (relative to the device's `/`, no leading slash, e.g. `data/data/pkg`) and
/// where it lives on this host (under `--root`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rooted {
    pub device: Vec<u8>,
    pub host: PathBuf,
}

impl Rooted {
    pub fn display(&self) -> String {
        device_display(&self.device)
    }
}

/// `/`-prefixed, lossy form of a device path, for messages.
pub fn device_display(device: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(device))
}

/// Join a device path onto the root without resolving anything.
pub fn host_path(root: &Path, device: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(device))
}

const MAX_SYMLINK_HOPS: usize = 40;

/// Resolve a device path inside `root`, following symlinks as the device would, but with every
/// absolute link target and every `..` confined to `root`. With `follow_last` false the final
/// component is not followed (so a symlink itself can be named). Components that do not exist
/// are kept as they are.
pub fn resolve(root: &Path, device_path: &[u8], follow_last: bool) -> io::Result<Rooted> {
    let mut pending: Vec<Vec<u8>> = split_components(device_path).rev().map(<[u8]>::to_vec).collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut hops = 0usize;
    let mut missing = false;
    while let Some(comp) = pending.pop() {
        match comp.as_slice() {
            b"." => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        done.push(comp);
        if missing {
            continue;
        }
        let is_last = pending.is_empty();
        let host = host_path(root, &done.join(&b'/'));
        match fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() && (follow_last || !is_last) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "too many levels of symbolic links resolving /{}",
                            String::from_utf8_lossy(device_path)
                        ),
                    ));
                }
                let target = fs::read_link(&host)?;
                let target = target.as_os_str().as_bytes();
                done.pop();
                if target.starts_with(b"/") {
                    done.clear();
                }
                for c in split_components(target).rev() {
                    pending.push(c.to_vec());
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing = true,
            Err(e) => return Err(e),
        }
    }
    let device = done.join(&b'/');
    Ok(Rooted { host: host_path(root, &device), device })
}

fn split_components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|b| *b == b'/').filter(|c| !c.is_empty())
}

/// One thing the walk found.
#[derive(Debug)]
pub struct Entry {
    pub path: Rooted,
    pub meta: fs::Metadata,
}

/// Something skipped or unreadable: the walk keeps going and reports these.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// A validated selection: include roots (globs expanded, resolved inside root, nested ones
/// folded into their parents) and exclude patterns.
#[derive(Debug, Clone)]
pub struct Selection {
    pub root: PathBuf,
    pub includes: Vec<Rooted>,
    excludes: Vec<Vec<Vec<u8>>>,
    /// Host paths never to take (the archive being written, its manifest).
    pub ignore_host: Vec<PathBuf>,
    /// The include paths as the user gave them, for the manifest.
    pub source_paths: Vec<String>,
}

impl Selection {
    /// Check the paths, expand globs and resolve everything inside `root`.
    /// Returns the selection and warnings for globs that matched nothing.
    pub fn new(root: &Path, includes: &[String], excludes: &[String]) -> Result<(Selection, Vec<Skipped>)> {
        if includes.is_empty() {
            return Err(Error::usage("nothing to back up: give at least one --include PATH, or --all"));
        }
        for p in includes.iter().chain(excludes) {
            check_path_rule(p)?;
        }
        let root_meta = fs::metadata(root).map_err(|e| {
            Error::usage(format!(
                "--root {}: {e}; it must be an existing directory that stands for the phone's /",
                root.display()
            ))
        })?;
        if !root_meta.is_dir() {
            return Err(Error::usage(format!("--root {} is not a directory", root.display())));
        }
        let mut warnings = Vec::new();
        let mut resolved: Vec<Rooted> = Vec::new();
        for inc in includes {
            let trimmed = inc.trim_end_matches('/');
            if trimmed.contains('*') {
                let found = expand_glob(root, trimmed.as_bytes())?;
                if found.is_empty() {
                    warnings.push(Skipped { path: inc.clone(), reason: "the pattern matched nothing".into() });
                }
                resolved.extend(found);
            } else {
                let r = resolve(root, trimmed.as_bytes(), true)
                    .map_err(|e| Error::path_rule(inc.as_str(), format!("cannot be resolved under --root: {e}")))?;
                if fs::symlink_metadata(&r.host).is_err() {
                    return Err(Error::path_rule(
                        inc.as_str(),
                        format!("does not exist under --root {} (looked for {})", root.display(), r.host.display()),
                    ));
                }
                resolved.push(r);
            }
        }
        resolved.sort_by(|a, b| a.device.cmp(&b.device));
        resolved.dedup_by(|a, b| a.device == b.device);
        // Fold includes nested under another include into it: the parent's walk takes them.
        let mut includes_out: Vec<Rooted> = Vec::new();
        for r in resolved {
            if !includes_out.iter().any(|p| is_under(&r.device, &p.device)) {
                includes_out.push(r);
            }
        }
        let mut excl = Vec::new();
        for ex in excludes {
            excl.push(resolve_exclude(root, ex.trim_end_matches('/'))?);
        }
        Ok((
            Selection {
                root: root.to_path_buf(),
                includes: includes_out,
                excludes: excl,
                ignore_host: Vec::new(),
                source_paths: includes.to_vec(),
            },
            warnings,
        ))
    }

    /// `--all`: the whole of `/data` but the agent's own files and transient directories.
    pub fn all(root: &Path, extra_excludes: &[String]) -> Result<(Selection, Vec<Skipped>)> {
        let mut excludes: Vec<String> = ALL_EXCLUDES.iter().map(|s| s.to_string()).collect();
        excludes.extend(extra_excludes.iter().cloned());
        let (mut sel, w) = Selection::new(root, &["/data".to_string()], &excludes)?;
        sel.source_paths = vec!["/data".to_string()];
        Ok((sel, w))
    }

    pub fn is_excluded(&self, device: &[u8]) -> bool {
        let comps: Vec<&[u8]> = split_components(device).collect();
        self.excludes
            .iter()
            .any(|pat| pat.len() <= comps.len() && pat.iter().zip(&comps).all(|(p, c)| wildcard_match(p, c)))
    }

    /// Walk every include in order: each entry (directories before their contents, names
    /// sorted bytewise), and what was skipped (unreadable directories, special files) where it
    /// was met. Never fails: what cannot be read is a `Skipped`.
    pub fn walk(&self) -> Walk<'_> {
        Walk { sel: self, includes: self.includes.iter(), stack: Vec::new(), queued: None }
    }

    /// Count what the walk would take: used to size upload parts and the progress bar.
    pub fn scan(&self) -> Totals {
        let mut t = Totals::default();
        for e in self.walk() {
            if let Walked::Entry(e) = e {
                t.entries += 1;
                if e.meta.is_file() {
                    t.bytes += e.meta.len();
                }
            }
        }
        t
    }
}

/// One step of a selection's walk.
#[derive(Debug)]
pub enum Walked {
    Entry(Entry),
    Skipped(Skipped),
}

/// The walk over a selection (see [`Selection::walk`]).
pub struct Walk<'a> {
    sel: &'a Selection,
    includes: std::slice::Iter<'a, Rooted>,
    /// Each frame: a directory's sorted children, consumed from the back.
    stack: Vec<(Rooted, Vec<Vec<u8>>)>,
    /// What comes right after the step just returned: a directory that cannot be listed is
    /// reported, then still archived (so the tree's shape survives).
    queued: Option<Walked>,
}

impl Iterator for Walk<'_> {
    type Item = Walked;

    fn next(&mut self) -> Option<Walked> {
        if let Some(q) = self.queued.take() {
            return Some(q);
        }
        loop {
            let (path, meta) = match self.next_path()? {
                Ok(found) => found,
                Err(skipped) => return Some(Walked::Skipped(skipped)),
            };
            if self.sel.ignore_host.iter().any(|p| p == &path.host) {
                continue; // the archive being written: never archive ourselves
            }
            if meta.is_dir() {
                return Some(match read_sorted(&path.host) {
                    Ok(names) => {
                        self.stack.push((path.clone(), names));
                        Walked::Entry(Entry { path, meta })
                    }
                    Err(e) => {
                        let reason = format!("cannot list directory: {e}");
                        let skipped = Skipped { path: path.display(), reason };
                        self.queued = Some(Walked::Entry(Entry { path, meta }));
                        Walked::Skipped(skipped)
                    }
                });
            }
            if meta.is_file() || meta.file_type().is_symlink() {
                return Some(Walked::Entry(Entry { path, meta }));
            }
            return Some(Walked::Skipped(Skipped { path: path.display(), reason: special_kind(&meta).into() }));
        }
    }
}

impl Walk<'_> {
    /// The next path to look at, with its `lstat`: the next name in the deepest directory
    /// being walked, else the next include.
    fn next_path(&mut self) -> Option<std::result::Result<(Rooted, fs::Metadata), Skipped>> {
        loop {
            if let Some((dir, names)) = self.stack.last_mut() {
                let Some(name) = names.pop() else {
                    self.stack.pop();
                    continue;
                };
                let mut device = dir.device.clone();
                if !device.is_empty() {
                    device.push(b'/');
                }
                device.extend_from_slice(&name);
                if self.sel.is_excluded(&device) {
                    continue;
                }
                let host = dir.host.join(OsStr::from_bytes(&name));
                return Some(match fs::symlink_metadata(&host) {
                    Ok(meta) => Ok((Rooted { device, host }, meta)),
                    Err(e) => Err(Skipped { path: device_display(&device), reason: e.to_string() }),
                });
            }
            let inc = self.includes.next()?;
            if self.sel.is_excluded(&inc.device) {
                continue;
            }
            return Some(match fs::symlink_metadata(&inc.host) {
                Ok(meta) => Ok((inc.clone(), meta)),
                Err(e) => Err(Skipped { path: inc.display(), reason: e.to_string() }),
            });
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub entries: u64,
    pub bytes: u64,
}

fn special_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_socket() {
        "skipped: socket"
    } else if ft.is_fifo() {
        "skipped: FIFO"
    } else if ft.is_block_device() || ft.is_char_device() {
        "skipped: device node"
    } else {
        "skipped: unknown file type"
    }
}

/// Names in a directory, sorted bytewise and returned reversed (so `pop` yields them in order).
fn read_sorted(dir: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    for ent in fs::read_dir(dir)? {
        names.push(ent?.file_name().as_bytes().to_vec());
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

fn is_under(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

/// Expand a pattern whose components may hold `*` into the existing device paths it names.
fn expand_glob(root: &Path, pattern: &[u8]) -> Result<Vec<Rooted>> {
    let comps: Vec<&[u8]> = split_components(pattern).collect();
    let mut current: Vec<Rooted> = vec![Rooted { device: Vec::new(), host: root.to_path_buf() }];
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        for base in &current {
            let candidates: Vec<Vec<u8>> = if comp.contains(&b'*') {
                let dir = match resolve(root, &base.device, true) {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                let mut names = match read_sorted(&dir.host) {
                    Ok(n) => n,
                    Err(_) => continue,
                };
                names.reverse();
                names.into_iter().filter(|n| wildcard_match(comp, n)).collect()
            } else {
                vec![comp.to_vec()]
            };
            for name in candidates {
                let mut dev = base.device.clone();
                if !dev.is_empty() {
                    dev.push(b'/');
                }
                dev.extend_from_slice(&name);
                let r = resolve(root, &dev, true).map_err(|e| Error::path_rule(device_display(&dev), e.to_string()))?;
                if fs::symlink_metadata(&r.host).is_ok() {
                    next.push(if last { r } else { Rooted { device: dev, host: r.host } });
                }
            }
        }
        current = next;
    }
    Ok(current)
}

/// Resolve the literal prefix of an exclude inside root (so an exclude written through a
/// symlinked directory still matches the walk's canonical paths) and keep its glob tail.
fn resolve_exclude(root: &Path, pattern: &str) -> Result<Vec<Vec<u8>>> {
    let comps: Vec<&[u8]> = split_components(pattern.as_bytes()).collect();
    let literal = comps.iter().take_while(|c| !c.contains(&b'*')).count();
    let prefix = comps[..literal].join(&b'/');
    let resolved = resolve(root, &prefix, false)
        .map_err(|e| Error::path_rule(pattern, format!("cannot be resolved under --root: {e}")))?;
    let mut out: Vec<Vec<u8>> = split_components(&resolved.device).map(<[u8]>::to_vec).collect();
    out.extend(comps[literal..].iter().map(|c| c.to_vec()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        assert!(check_path_rule("/data/app").is_ok());
        assert!(check_path_rule("/data/app/com.xx.xx-*").is_ok());
        assert!(check_path_rule("/cache").is_ok());
        assert!(check_path_rule("/data/media/0/Android/data/com.a_b+c#d=e~f").is_ok());
        for (bad, rule) in [
            ("data/app", "absolute"),
            ("/system/app", "only paths under /data"),
            ("/data/a b", "not allowed"),
            ("/data/../etc", ".."),
            ("/data//x", "empty component"),
            ("/database", "only paths under /data"),
            ("/data/x$y", "not allowed"),
        ] {
            let e = check_path_rule(bad).unwrap_err().to_string();
            assert!(e.contains(rule), "{bad}: {e}");
            assert!(e.contains(bad), "{bad}: {e}");
        }
        let long = format!("/data/{}", "a".repeat(4100));
        assert!(check_path_rule(&long).unwrap_err().to_string().contains("4096"));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"com.xx.xx-*", b"com.xx.xx-abc=="));
        assert!(wildcard_match(b"*", b""));
        assert!(wildcard_match(b"a*b*c", b"aXXbYYc"));
        assert!(!wildcard_match(b"a*b*c", b"aXXbYY"));
        assert!(!wildcard_match(b"com.xx", b"com.xxy"));
    }

    #[test]
    fn absolute_symlinks_stay_in_root() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("data/data/pkg")).unwrap();
        fs::create_dir_all(root.path().join("data/user")).unwrap();
        std::os::unix::fs::symlink("/data/data", root.path().join("data/user/0")).unwrap();
        std::os::unix::fs::symlink("/../../../../etc", root.path().join("data/evil")).unwrap();
        let r = resolve(root.path(), b"/data/user/0/pkg", true).unwrap();
        assert_eq!(r.device, b"data/data/pkg");
        assert_eq!(r.host, root.path().join("data/data/pkg"));
        let r = resolve(root.path(), b"/data/evil", true).unwrap();
        assert_eq!(r.host, root.path().join("etc"));
        let r = resolve(root.path(), b"/data/user/0", false).unwrap();
        assert_eq!(r.device, b"data/user/0");
    }
}
