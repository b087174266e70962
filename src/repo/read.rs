//! Reading a snapshot's trees: from the root tree's blobs (named in its record) down to the
//! files, fetching only the trees the wanted paths need, by ranged reads of packs. No index
//! is read: a tree names where each chunk lies. File content is read by `ahead`, on threads
//! of its own; both open blobs with the `Opener` here.
//!
//! Tree blobs come in windows of their pack around them, or after them while the walk reads
//! forwards. Every blob is checked against its id before it is used. It never writes:
//! restoring is the caller's `Unpacker`.

use std::cell::RefCell;
use std::io::{self, Read};

use crate::archive::read::{Item, Kind};
use crate::archive::Meta;

use super::blob::{self, Decoder};
use super::id::{Hasher, Name};
use super::pack::{self, Located};
use super::seal::Keys;
use super::tree::{self, Node, NodeKind};
use super::Repo;
use crate::error::{Error, Result};
use crate::store::Store;

/// What a tree blob is fetched with: a window of its pack around it, or after it.
const TREE_WINDOW: u64 = 2 << 20;
/// Tree windows kept: a snapshot after a change names its new trees and, for the unchanged
/// directories, trees in the packs of the snapshots before it; the walk goes back and forth.
const TREE_WINDOWS: usize = 4;

struct Window {
    pack: Name,
    start: u64,
    bytes: Vec<u8>,
}

impl Window {
    fn holds(&self, pack: &Name, off: u64, len: u64) -> bool {
        self.pack == *pack && off >= self.start && off + len <= self.start + self.bytes.len() as u64
    }

    /// A blob that starts where this window ends, or runs over its end: the read goes on.
    fn continued_by(&self, pack: &Name, off: u64) -> bool {
        self.pack == *pack && off >= self.start && off <= self.start + self.bytes.len() as u64
    }
}

/// The windows kept, the one used last at the end.
struct Windows {
    held: Vec<Window>,
    max: usize,
}

impl Windows {
    fn new(max: usize) -> Windows {
        Windows { held: Vec::new(), max }
    }

    /// Whether a window holds the blob; that window becomes the last.
    fn find(&mut self, pack: &Name, off: u64, len: u64) -> bool {
        let Some(i) = self.held.iter().position(|w| w.holds(pack, off, len)) else { return false };
        let w = self.held.remove(i);
        self.held.push(w);
        true
    }

    /// The window a blob continues, taken out.
    fn take_continued(&mut self, pack: &Name, off: u64) -> Option<Window> {
        let i = self.held.iter().position(|w| w.continued_by(pack, off))?;
        Some(self.held.remove(i))
    }

    /// A new last window, in place of the one used longest ago when all are taken.
    fn push(&mut self, w: Window) {
        if self.held.len() >= self.max {
            self.held.remove(0);
        }
        self.held.push(w);
    }

    /// A buffer for the next window: the one used longest ago, when all are taken.
    fn spare(&mut self) -> Vec<u8> {
        match self.held.len() >= self.max {
            true => self.held.remove(0).bytes,
            false => Vec::new(),
        }
    }

    /// The blob's bytes in the last window (which holds it).
    fn slice(&self, off: u64, len: u64) -> Result<&[u8]> {
        let w = self.held.last().ok_or_else(|| Error::internal("no window"))?;
        let s = (off - w.start) as usize;
        Ok(&w.bytes[s..s + len as usize])
    }
}

/// What opens, decodes and checks a blob's stored bytes: the repository's store (where a
/// sealed pack's key is), prefix, id hasher and keys, and a zstd context. Each thread that
/// decodes has its own (a clone).
pub struct Opener<'a> {
    store: &'a dyn Store,
    prefix: String,
    hasher: Hasher,
    keys: Option<&'a Keys>,
    decoder: RefCell<Decoder>,
}

impl Clone for Opener<'_> {
    fn clone(&self) -> Self {
        Opener { prefix: self.prefix.clone(), hasher: self.hasher.clone(), decoder: RefCell::default(), ..*self }
    }
}

impl<'a> Opener<'a> {
    pub fn new(store: &'a dyn Store, prefix: &str, hasher: Hasher) -> Opener<'a> {
        Opener { store, prefix: prefix.to_string(), hasher, keys: None, decoder: RefCell::default() }
    }

    /// The opener of `repo`'s blobs, with its keys when it is sealed.
    pub fn of(repo: &'a Repo<'_>) -> Opener<'a> {
        Opener { keys: repo.keys.as_ref(), ..Opener::new(repo.store, &repo.prefix, repo.hasher.clone()) }
    }

    /// The store's key of a pack.
    fn pack_key(&self, pack: &Name) -> String {
        pack::key(&self.prefix, pack)
    }

    /// A pack as an error names it: its URL in the store.
    pub fn pack_url(&self, pack: &Name) -> String {
        self.store.url(&self.pack_key(pack))
    }

    /// Up to `want` bytes of `pack` from `start`, of which the first `need` must come (the
    /// blobs a tree names in them), into `buf` (its bytes replaced).
    pub fn fetch(&self, pack: &Name, start: u64, want: u64, need: u64, buf: Vec<u8>) -> Result<Vec<u8>> {
        let key = self.pack_key(pack);
        tracing::trace!("reading {key} {start}+{want}");
        let bytes = self.store.get_range_into(&key, start, want, buf)?;
        if (bytes.len() as u64) < need {
            return Err(self.ends_before(pack, start + need));
        }
        Ok(bytes)
    }

    /// Bytes `start..start + len` of `pack`, as they come.
    pub fn stream(&self, pack: &Name, start: u64, len: u64) -> Result<Box<dyn Read + Send + 'a>> {
        let key = self.pack_key(pack);
        tracing::trace!("streaming {key} {start}+{len}");
        self.store.read_range(&key, start, len)
    }

    /// A pack that ends before byte `at`, which a tree names a blob in.
    pub fn ends_before(&self, pack: &Name, at: u64) -> Error {
        Error::archive(
            self.pack_url(pack),
            format!("ends before byte {at} that a snapshot's tree names a blob in; the repository is damaged"),
        )
    }

    /// A blob's stored bytes opened (when sealed), decoded into `out` and checked against its id.
    pub fn open(&self, loc: &Located, stored: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.decode(loc, stored, out)?;
        self.check(loc, out)
    }

    /// A blob's stored bytes opened (when sealed) and decoded into `out`, not yet checked.
    pub fn decode(&self, loc: &Located, stored: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let what = || self.blob_name(loc);
        let mut decoder = self.decoder.borrow_mut();
        let (compressed, raw) = (loc.entry.compressed, loc.entry.raw);
        match self.keys {
            Some(k) => {
                let opened = k.open_blob(self.store, &self.prefix, &loc.entry.id, stored, &what)?;
                decoder.decode(&opened, compressed, raw, &what, out)
            }
            None => decoder.decode(stored, compressed, raw, &what, out),
        }
    }

    /// A blob as an error names it: its id and its pack's URL.
    fn blob_name(&self, loc: &Located) -> String {
        format!("blob {:?} in {}", loc.entry.id, self.pack_url(&loc.pack))
    }

    /// Whether a decoded blob hashes to its id.
    pub fn check(&self, loc: &Located, decoded: &[u8]) -> Result<()> {
        if self.hasher.id(decoded) != loc.entry.id {
            return Err(Error::archive(self.blob_name(loc), "does not hash to its id: the repository is damaged"));
        }
        Ok(())
    }
}

/// Fetches and checks tree blobs.
pub struct Blobs<'a> {
    opener: Opener<'a>,
    trees: Windows,
}

impl<'a> Blobs<'a> {
    pub fn new(opener: Opener<'a>) -> Blobs<'a> {
        Blobs { opener, trees: Windows::new(TREE_WINDOWS) }
    }

    /// The blobs of `repo`, opened with its keys when it is sealed.
    pub fn of(repo: &'a Repo<'_>) -> Blobs<'a> {
        Blobs::new(Opener::of(repo))
    }

    /// A tree blob decoded and checked against its id.
    pub fn read(&mut self, loc: &Located, out: &mut Vec<u8>) -> Result<()> {
        let stored = stored_tree(&self.opener, &mut self.trees, loc)?;
        self.opener.open(loc, stored, out)
    }
}

/// A tree blob's stored bytes, in a window `trees` holds or fetches.
fn stored_tree<'w>(opener: &Opener<'_>, trees: &'w mut Windows, loc: &Located) -> Result<&'w [u8]> {
    let off = u64::from(loc.entry.offset);
    let len = u64::from(loc.entry.stored);
    if loc.entry.kind != blob::Kind::Tree {
        return Err(Error::archive(
            opener.pack_url(&loc.pack),
            format!("holds a data blob at {off} where a snapshot's tree names a tree; the repository is damaged"),
        ));
    }
    if !trees.find(&loc.pack, off, len) {
        // A walk down the trees reads a pack's trees forwards (the blob starts where a
        // window ends: the window goes on from it) or jumps (the window is centred on
        // it: a directory's subtrees were written just before it).
        let (start, buf) = match trees.take_continued(&loc.pack, off) {
            Some(w) => (off, w.bytes),
            None => (off.saturating_sub(TREE_WINDOW / 2), trees.spare()),
        };
        let want = (off + len - start).max(TREE_WINDOW);
        let bytes = opener.fetch(&loc.pack, start, want, off + len - start, buf)?;
        trees.push(Window { pack: loc.pack, start, bytes });
    }
    trees.slice(off, len)
}

/// One directory's tree being read: its blobs, fetched one at a time.
struct Cursor {
    refs: Vec<Located>,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    started: bool,
    /// The directory's path (device path without the leading `/`).
    path: Vec<u8>,
}

struct CursorRead<'c, 'b, 'a> {
    c: &'c mut Cursor,
    blobs: &'b mut Blobs<'a>,
}

impl Read for CursorRead<'_, '_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.c.pos == self.c.buf.len() {
            let Some(r) = self.c.refs.get(self.c.next).copied() else { return Ok(0) };
            self.c.next += 1;
            self.c.pos = 0;
            self.blobs.read(&r, &mut self.c.buf).map_err(io::Error::other)?;
        }
        let n = out.len().min(self.c.buf.len() - self.c.pos);
        out[..n].copy_from_slice(&self.c.buf[self.c.pos..self.c.pos + n]);
        self.c.pos += n;
        Ok(n)
    }
}

impl Cursor {
    fn new(refs: Vec<Located>, path: Vec<u8>) -> Cursor {
        Cursor { refs, next: 0, buf: Vec::new(), pos: 0, started: false, path }
    }

    fn next_node(&mut self, blobs: &mut Blobs<'_>) -> Result<Option<Node>> {
        let what = format!("the tree of /{}", String::from_utf8_lossy(&self.path));
        let mut started = self.started;
        let r = tree::read_node(&mut CursorRead { c: self, blobs }, &what, &mut started);
        self.started = started;
        r
    }
}

/// Which paths a partial read wants: device paths without the leading `/`, as components.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    includes: Vec<Vec<Vec<u8>>>,
}

/// Where a path stands with respect to a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Under an include: taken whole.
    In,
    /// Above an include: passed through, not taken.
    Above,
    Out,
}

impl Filter {
    /// From `--include` paths (`/data/data/com.x`); empty: everything.
    pub fn new(paths: &[String]) -> Result<Filter> {
        let mut includes = Vec::new();
        for p in paths {
            if !p.starts_with('/') {
                return Err(Error::usage(format!(
                    "--include {p:?}: give an absolute device path, e.g. /data/data/com.x"
                )));
            }
            let comps: Vec<Vec<u8>> = p.split('/').filter(|c| !c.is_empty()).map(|c| c.as_bytes().to_vec()).collect();
            if comps.iter().any(|c| c == b"." || c == b"..") {
                return Err(Error::usage(format!("--include {p:?}: no . or .. components")));
            }
            includes.push(comps);
        }
        Ok(Filter { includes })
    }

    pub fn is_all(&self) -> bool {
        self.includes.is_empty() || self.includes.iter().any(|c| c.is_empty())
    }

    pub fn place(&self, path: &[u8]) -> Place {
        if self.is_all() {
            return Place::In;
        }
        let comps: Vec<&[u8]> = path.split(|b| *b == b'/').filter(|c| !c.is_empty()).collect();
        let mut above = false;
        for inc in &self.includes {
            let n = inc.len().min(comps.len());
            if inc[..n].iter().zip(&comps[..n]).all(|(a, b)| a.as_slice() == *b) {
                if comps.len() >= inc.len() {
                    return Place::In;
                }
                above = true;
            }
        }
        if above {
            Place::Above
        } else {
            Place::Out
        }
    }

    /// Includes that matched nothing, as given (`/data/x`).
    pub fn unmatched(&self, seen: &[bool]) -> Vec<String> {
        self.includes
            .iter()
            .zip(seen)
            .filter(|(_, s)| !**s)
            .map(|(c, _)| format!("/{}", c.iter().map(|x| String::from_utf8_lossy(x)).collect::<Vec<_>>().join("/")))
            .collect()
    }

    /// Note which includes `path` (taken) falls under.
    pub fn mark_seen(&self, path: &[u8], seen: &mut [bool]) {
        let comps: Vec<&[u8]> = path.split(|b| *b == b'/').filter(|c| !c.is_empty()).collect();
        for (i, inc) in self.includes.iter().enumerate() {
            if inc.len() <= comps.len() && inc.iter().zip(&comps).all(|(a, b)| a == b) {
                if let Some(s) = seen.get_mut(i) {
                    *s = true;
                }
            }
        }
    }

    fn index_of_exact(&self, path: &[u8]) -> Option<usize> {
        let comps: Vec<&[u8]> = path.split(|b| *b == b'/').filter(|c| !c.is_empty()).collect();
        self.includes.iter().position(|inc| inc.len() == comps.len() && inc.iter().zip(&comps).all(|(a, b)| a == b))
    }
}

/// What `walk` calls for each node it takes.
pub type Visit<'v> = dyn FnMut(&[u8], &Node) -> Result<()> + 'v;

/// Visit every node the filter takes, in walk order (a directory before its contents), with
/// its device path (no leading `/`). Trees outside the filter are not fetched. Returns, per
/// include, whether it named something in the snapshot.
pub fn walk(blobs: &mut Blobs<'_>, root: &[Located], filter: &Filter, visit: &mut Visit<'_>) -> Result<Vec<bool>> {
    walk_nodes(blobs, root, filter, false, visit)
}

/// `walk`, and with `implicit` the directories on the way to the selection too (prune needs
/// every tree blob).
pub fn walk_nodes(
    blobs: &mut Blobs<'_>,
    root: &[Located],
    filter: &Filter,
    implicit: bool,
    visit: &mut Visit<'_>,
) -> Result<Vec<bool>> {
    let mut seen = vec![false; filter.includes.len()];
    let mut stack = vec![Cursor::new(root.to_vec(), Vec::new())];
    // Deep trees are walked with a stack, never recursion.
    while let Some(top) = stack.last_mut() {
        let Some(node) = top.next_node(blobs)? else {
            stack.pop();
            continue;
        };
        let mut path = top.path.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&node.name);
        let place = filter.place(&path);
        if place == Place::Out {
            continue;
        }
        if let Some(i) = filter.index_of_exact(&path) {
            seen[i] = true;
        }
        if place == Place::In && (implicit || node.kind != NodeKind::Implicit) {
            visit(&path, &node)?;
        }
        if node.kind.is_dir() {
            stack.push(Cursor::new(node.chunks, path));
        }
    }
    Ok(seen)
}

/// What a reading of entries calls for each: the entry and its content.
pub type Each<'e> = dyn FnMut(Item, &mut dyn Read) -> Result<()> + 'e;

/// A node as an archive entry, and the chunks of its content.
pub fn item<'n>(path: &[u8], node: &'n Node, filter: &Filter) -> (Item, &'n [Located]) {
    let meta = Meta {
        path: path.to_vec(),
        mode: node.mode & tree::PERMS,
        uid: node.uid,
        gid: node.gid,
        mtime: node.mtime,
        mtime_nsec: node.mtime_nsec,
        xattrs: node.xattrs.clone(),
    };
    let none: &[Located] = &[];
    let (kind, size, content) = match node.kind {
        NodeKind::Dir | NodeKind::Implicit => (Kind::Dir, 0, none),
        NodeKind::Symlink => (Kind::Symlink(node.target.clone()), 0, none),
        // A link to a file this read took is a link; otherwise the file itself.
        NodeKind::Hardlink if filter.place(&node.target) == Place::In => (Kind::Hardlink(node.target.clone()), 0, none),
        NodeKind::File | NodeKind::Hardlink => {
            (Kind::File { sparse: node.mode & tree::SPARSE != 0 }, node.size, &node.chunks[..])
        }
    };
    (Item { meta, kind, size }, content)
}
