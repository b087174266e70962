//! Reading a snapshot: from the root tree's blobs (named in its record) down the trees to the
//! files, fetching only what the wanted paths need, by ranged reads of packs. No index is
//! read: a tree names where each chunk lies.
//!
//! Data blobs come in windows that grow while reads are sequential (a whole restore reads
//! each pack in a few large ranges; one file costs one range); tree blobs come in windows of
//! their pack around them, or after them while the walk reads forwards. Every blob
//! is checked against its id before it is used. It never writes: restoring is the caller's
//! `Unpacker`.

use std::io::{self, Read};

use super::blob;
use super::id::{Hasher, Name};
use super::pack::{self, Located};
use super::seal::Keys;
use super::tree::{self, Node, NodeKind};
use super::Repo;
use crate::error::{Error, Result};
use crate::store::Store;

/// The largest data window.
const DATA_WINDOW: u64 = 8 << 20;
/// Data windows kept, each over its own pack: a snapshot taken after a few files changed reads
/// the old pack and, every hundred files or so, the new one; one window would start again from
/// a single file's size at every switch.
const DATA_WINDOWS: usize = 2;
/// What a tree blob is fetched with: a window of its pack around it, or after it.
const TREE_WINDOW: u64 = 2 << 20;
/// Tree windows kept: a snapshot after a change names its new trees and, for the unchanged
/// directories, trees in the packs of the snapshots before it; the walk goes back and forth.
const TREE_WINDOWS: usize = 4;

struct Window {
    pack: Name,
    start: u64,
    bytes: Vec<u8>,
    /// How far the next sequential read from this window's pack reaches.
    grow: u64,
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

/// The windows of one kind of blob, the one used last at the end.
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

    /// The blob's bytes in the last window (which holds it).
    fn slice(&self, off: u64, len: u64) -> Result<&[u8]> {
        let w = self.held.last().ok_or_else(|| Error::internal("no window"))?;
        let s = (off - w.start) as usize;
        Ok(&w.bytes[s..s + len as usize])
    }
}

/// Fetches and checks blobs.
pub struct Blobs<'a> {
    store: &'a dyn Store,
    prefix: String,
    hasher: Hasher,
    keys: Option<&'a Keys>,
    data: Windows,
    trees: Windows,
}

impl<'a> Blobs<'a> {
    pub fn new(store: &'a dyn Store, prefix: &str, hasher: Hasher) -> Blobs<'a> {
        Blobs {
            store,
            prefix: prefix.to_string(),
            hasher,
            keys: None,
            data: Windows::new(DATA_WINDOWS),
            trees: Windows::new(TREE_WINDOWS),
        }
    }

    /// The blobs of `repo`, opened with its keys when it is sealed.
    pub fn of(repo: &'a Repo<'_>) -> Blobs<'a> {
        Blobs { keys: repo.keys.as_ref(), ..Blobs::new(repo.store, &repo.prefix, repo.hasher.clone()) }
    }

    /// A blob's stored bytes; `ahead`: how many bytes from its offset the caller will want.
    fn stored(&mut self, loc: &Located, ahead: u64) -> Result<&[u8]> {
        let off = u64::from(loc.entry.offset);
        let len = u64::from(loc.entry.stored);
        if loc.entry.kind == blob::Kind::Tree {
            if !self.trees.find(&loc.pack, off, len) {
                // A walk down the trees reads a pack's trees forwards (the blob starts where a
                // window ends: the window goes on from it) or jumps (the window is centred on
                // it: a directory's subtrees were written just before it).
                let start = match self.trees.take_continued(&loc.pack, off) {
                    Some(_) => off,
                    None => off.saturating_sub(TREE_WINDOW / 2),
                };
                let want = (off + len - start).max(TREE_WINDOW);
                let w = self.fetch(loc, start, want, 0)?;
                self.trees.push(w);
            }
            return self.trees.slice(off, len);
        }
        if !self.data.find(&loc.pack, off, len) {
            // Sequential: that pack's window doubles; anything else starts again from the ask.
            let grow = self.data.take_continued(&loc.pack, off).map_or(0, |w| (w.grow * 2).min(DATA_WINDOW));
            let w = self.fetch(loc, off, ahead.max(len).max(grow), grow)?;
            self.data.push(w);
        }
        self.data.slice(off, len)
    }

    /// `want` bytes of the blob's pack from `start`, which must reach past the blob.
    fn fetch(&self, loc: &Located, start: u64, want: u64, grow: u64) -> Result<Window> {
        let (off, len) = (u64::from(loc.entry.offset), u64::from(loc.entry.stored));
        let key = pack::key(&self.prefix, &loc.pack);
        tracing::trace!("{:?} blob at {off}+{len}: reading {key} {start}+{want}", loc.entry.kind);
        let bytes = self.store.get_range(&key, start, want)?;
        if (bytes.len() as u64) < off + len - start {
            return Err(Error::archive(
                self.store.url(&key),
                format!(
                    "ends before the blob at {off} (+{len}) that a snapshot's tree names; the repository is damaged"
                ),
            ));
        }
        let grow = grow.max(bytes.len() as u64);
        Ok(Window { pack: loc.pack, start, bytes, grow })
    }

    /// A blob decoded and checked against its id.
    pub fn read(&mut self, loc: &Located, ahead: u64, out: &mut Vec<u8>) -> Result<()> {
        let what = format!("blob {:?} in {}", loc.entry.id, self.store.url(&pack::key(&self.prefix, &loc.pack)));
        let hasher = self.hasher.clone();
        let (keys, store, prefix) = (self.keys, self.store, self.prefix.clone());
        let stored = self.stored(loc, ahead)?;
        match keys {
            Some(k) => {
                let opened = k.open_blob(store, &prefix, &loc.entry.id, stored, &what)?;
                blob::decode(&opened, loc.entry.compressed, loc.entry.raw, &what, out)?;
            }
            None => blob::decode(stored, loc.entry.compressed, loc.entry.raw, &what, out)?,
        }
        if hasher.id(out) != loc.entry.id {
            return Err(Error::archive(what, "does not hash to its id: the repository is damaged"));
        }
        Ok(())
    }
}

/// The bytes the chunks from `i` on will want in one read: while they follow each other in
/// one pack, up to the largest window.
fn run_ahead(chunks: &[Located], i: usize) -> u64 {
    let first = &chunks[i];
    let mut end = u64::from(first.entry.offset) + u64::from(first.entry.stored);
    for c in &chunks[i + 1..] {
        if c.pack != first.pack
            || u64::from(c.entry.offset) != end
            || end - u64::from(first.entry.offset) >= DATA_WINDOW
        {
            break;
        }
        end += u64::from(c.entry.stored);
    }
    end - u64::from(first.entry.offset)
}

/// A file's content as a reader.
pub struct Content<'b, 'a> {
    blobs: &'b mut Blobs<'a>,
    chunks: &'b [Located],
    next: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl<'b, 'a> Content<'b, 'a> {
    pub fn new(blobs: &'b mut Blobs<'a>, chunks: &'b [Located]) -> Content<'b, 'a> {
        Content { blobs, chunks, next: 0, buf: Vec::new(), pos: 0 }
    }
}

impl Read for Content<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(c) = self.chunks.get(self.next) else { return Ok(0) };
            let ahead = run_ahead(self.chunks, self.next);
            self.next += 1;
            self.pos = 0;
            self.blobs.read(c, ahead, &mut self.buf).map_err(io::Error::other)?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
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
            self.blobs.read(&r, 0, &mut self.c.buf).map_err(io::Error::other)?;
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
pub type Visit<'v> = dyn FnMut(&[u8], &Node, &mut Blobs<'_>) -> Result<()> + 'v;

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
            visit(&path, &node, blobs)?;
        }
        if node.kind.is_dir() {
            stack.push(Cursor::new(node.chunks, path));
        }
    }
    Ok(seen)
}

/// What `entries` calls for each entry.
pub type Each<'e> = dyn FnMut(crate::archive::read::Item, &mut dyn Read) -> Result<()> + 'e;

/// The nodes the filter takes, as archive entries with their content: what an `Unpacker`
/// (or `ls`, or `verify --read-data`) eats. Returns, per include, whether it named something.
pub fn entries(blobs: &mut Blobs<'_>, root: &[Located], filter: &Filter, each: &mut Each<'_>) -> Result<Vec<bool>> {
    use crate::archive::read::{Item, Kind};
    use crate::archive::Meta;
    walk(blobs, root, filter, &mut |path, node, blobs| {
        let meta = Meta {
            path: path.to_vec(),
            mode: node.mode & tree::PERMS,
            uid: node.uid,
            gid: node.gid,
            mtime: node.mtime,
            mtime_nsec: node.mtime_nsec,
            xattrs: node.xattrs.clone(),
        };
        let sparse = node.mode & tree::SPARSE != 0;
        let file = |meta| Item { meta, kind: Kind::File { sparse }, size: node.size };
        match node.kind {
            NodeKind::Dir | NodeKind::Implicit => each(Item { meta, kind: Kind::Dir, size: 0 }, &mut io::empty()),
            NodeKind::Symlink => {
                each(Item { meta, kind: Kind::Symlink(node.target.clone()), size: 0 }, &mut io::empty())
            }
            // A link to a file this read took is a link; otherwise the file itself.
            NodeKind::Hardlink if filter.place(&node.target) == Place::In => {
                each(Item { meta, kind: Kind::Hardlink(node.target.clone()), size: 0 }, &mut io::empty())
            }
            NodeKind::File | NodeKind::Hardlink => each(file(meta), &mut Content::new(blobs, &node.chunks)),
        }
    })
}
