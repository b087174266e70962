//! Writing a snapshot: the walk → chunks → packs → index objects, and the trees, in three
//! kinds of thread joined by bounded channels:
//!
//! ```text
//! walker (caller's thread): walk, stat, metadata cache, read, cut
//!   -> compressors (one per core, batches handed round-robin and taken back in order):
//!      hash, look up, compress the new
//!   -> builder: packs and trees (a chunk two compressors both found new is packed once),
//!      the next metadata cache
//!   -> uploader: each pack stored, an index object every few packs
//! ```
//!
//! This module owns the walk, the compressors and the threads; the builder and the uploader
//! are `build`'s.
//!
//! Order of trust: marks are read before the index is listed; a pack's blobs are looked up
//! only once its index object is published; the caller writes the snapshot's record only after
//! `snapshot` returns (every pack and index object it needs is stored by then).
//!
//! Memory is bounded by the channels (a few batches of at most a maximum chunk each, each
//! chunk in a buffer of its stored size; raw buffers go back to the walker), one data pack's
//! buffer (filled by the builder, then stored by the uploader while the next pack keeps a few
//! megabytes of blobs aside: the compressors keep working meanwhile), one tree pack of at most
//! `pack::TREE_TARGET`, the blobs not yet published, and one open tree per directory level;
//! never by the number of files or the size of the repository.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::blob::{self, Kind};
use super::buffers::Buffers;
use super::build::{upload, Builder};
use super::cache::IndexCache;
use super::chunker::Chunker;
use super::files::{self, Stamp};
use super::id::{Id, Name};
use super::pack::{self, Entry, Located};
use super::tree::{self, Node, NodeKind};
use super::{marks, Repo};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::select::{Selection, Skipped, Walked};

/// New chunk bytes in one batch before it is handed on.
const BATCH_BYTES: usize = 512 << 10;
const BATCH_EVENTS: usize = 1024;
/// Chunk buffers the compressors and the builder give back for the walker to fill again (4 MiB
/// measured no faster, and 2 MiB more at the peak, once packed buffers came back too).
const SPARE_BYTES: usize = 2 << 20;

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The repository's directory in the state dir (index cache, metadata caches).
    pub cache_dir: PathBuf,
    /// Names this selection's metadata cache (same root and paths: same cache).
    pub selection_key: String,
    /// Read every file, whatever the metadata cache says.
    pub rehash: bool,
    /// Where this snapshot's record will be written, and its id.
    pub record_key: String,
    pub backup_file_id: String,
}

/// What a snapshot cost: the `--json` result's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Stats {
    pub files: u64,
    /// Files taken from the metadata cache without reading them.
    pub files_unchanged: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
    pub requests: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
}

/// A snapshot whose data is all stored; its record is the caller's to write.
pub struct Written {
    /// The root tree's blobs.
    pub root: Vec<Located>,
    pub entries: u64,
    /// File content bytes in the snapshot.
    pub bytes: u64,
    pub stats: Stats,
    next_cache: Option<files::Writer>,
}

impl Written {
    /// After the record is stored: the metadata cache of this snapshot becomes the one the
    /// next uses. A failure here costs only speed next time.
    pub fn commit_cache(mut self) {
        if let Some(w) = self.next_cache.take() {
            if let Err(e) = w.commit() {
                tracing::warn!("could not keep the metadata cache ({e}): the next snapshot reads every file");
            }
        }
    }
}

pub(super) enum Chunk {
    /// As cut from a file: hashed and looked up by a compressor.
    Cut(Vec<u8>),
    /// Not in the repository when a compressor looked: compressed, then packed (unless the
    /// builder packed the same chunk since).
    New { id: Id, data: Vec<u8>, raw: u32, compressed: bool },
    /// Stored already, or packed earlier in this run, here.
    Known(Located),
}

pub(super) enum Ev {
    Dir(Node),
    End,
    Leaf(Node),
    File {
        node: Node,
        stamp: Stamp,
        path: Vec<u8>,
        link: Option<(u64, u64)>,
    },
    Chunk(Chunk),
    FileEnd {
        size: u64,
    },
    /// A hard link to a file earlier in this snapshot.
    Link {
        node: Node,
        to: (u64, u64),
    },
    /// The walk is complete (without it, the builder stops without finishing the trees).
    Done,
}

pub(super) type Batch = Result<Vec<Ev>>;
/// A finished pack: its kind, name, bytes and blobs.
pub(super) type PackOut = (Kind, Name, Vec<u8>, Vec<Entry>);
/// A data pack's buffer, room for a full pack and its header.
pub(super) const PACK_BUF: usize = pack::TARGET + (1 << 20);
/// The file being built: node, stamp, path, (dev, ino) when it has other links.
pub(super) type OpenFile = (Node, Stamp, Vec<u8>, Option<(u64, u64)>);

pub(super) struct Known {
    pub(super) cache: IndexCache,
    /// Blobs packed in this run and not yet in a published index object.
    pub(super) pending: HashMap<Id, Located>,
}

pub(super) struct Shared<'a> {
    pub(super) repo: &'a Repo<'a>,
    known: Mutex<Known>,
    marked: HashSet<Name>,
    pub(super) chunks_new: AtomicU64,
    chunks_reused: AtomicU64,
    /// Chunk buffers back from the compressors and the builder.
    spare: Buffers,
}

impl Shared<'_> {
    /// A copy of a new chunk's bytes, in a buffer a compressor gave back when there is one.
    fn chunk_buffer(&self, data: &[u8]) -> Vec<u8> {
        let mut v = self.spare.take(data.len());
        v.extend_from_slice(data);
        v
    }

    /// A chunk's buffer, its bytes encoded or packed: kept for the next chunk, or freed.
    pub(super) fn give_back(&self, v: Vec<u8>) {
        self.spare.give(v);
    }

    fn usable(&self) -> impl Fn(&Name) -> bool + '_ {
        |p: &Name| !self.marked.contains(p)
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a blob is, when stored already or packed in this run; counted as reused.
    pub(super) fn find(&self, id: &Id) -> Result<Option<Located>> {
        let k = self.lock();
        let found = match k.pending.get(id) {
            Some(l) => Some(*l),
            None => k.cache.lookup(id, &self.usable())?,
        };
        Ok(self.reused(found))
    }

    /// Where a chunk a compressor found new is, when the builder packed it since: it looks
    /// in memory only (this run's packs are there until a run of the index cache takes them,
    /// which needs more publications than a few batches in flight see; a chunk missed then
    /// is packed twice, which costs bytes, not correctness).
    pub(super) fn packed_since(&self, id: &Id) -> Option<Located> {
        let k = self.lock();
        let found = k.pending.get(id).copied().or_else(|| k.cache.lookup_published(id, &self.usable()));
        self.reused(found)
    }

    /// A blob found, counted as reused.
    fn reused(&self, found: Option<Located>) -> Option<Located> {
        if found.is_some() {
            self.chunks_reused.fetch_add(1, Relaxed);
        }
        found
    }
}

/// Write a snapshot of `sel` into the repository.
pub fn snapshot(
    repo: &Repo<'_>,
    sel: &Selection,
    opts: &Options,
    progress: &Progress,
    skip: &mut dyn FnMut(Skipped),
    warn: &mut dyn FnMut(String),
) -> Result<Written> {
    let store = repo.store;
    // Marks first, then the index: a pack deleted after the listing is still marked here.
    let marked = marks::marked(store, &repo.prefix)?;
    let mut cache = IndexCache::open(&opts.cache_dir.join("index"))?;
    let read = cache.sync(store, &repo.prefix, repo.keys.as_ref())?;
    tracing::debug!(
        "index cache: read {read} new index objects; {} blobs known, {} packs marked",
        cache.len(),
        marked.len()
    );

    // The previous snapshot's metadata cache, trusted only while its record exists.
    let files_path = opts.cache_dir.join(format!("files-{}", opts.selection_key));
    let mut prev = if opts.rehash { None } else { files::Reader::open(&files_path) };
    if let Some(p) = &prev {
        let alive = match store.get(&p.source.record_key)? {
            Some(b) => crate::manifest::Manifest::from_json(&p.source.record_key, &b)
                .map(|m| m.backup_file_id == p.source.backup_file_id && m.status.archive_complete())
                .unwrap_or(false),
            None => false,
        };
        if !alive {
            tracing::info!("the snapshot the metadata cache came from is gone: every file is read");
            prev = None;
        }
    }
    let next_cache = files::Writer::create(
        &files_path,
        &files::Source { record_key: opts.record_key.clone(), backup_file_id: opts.backup_file_id.clone() },
    )?;

    let shared = Shared {
        repo,
        known: Mutex::new(Known { cache, pending: HashMap::new() }),
        marked,
        chunks_new: AtomicU64::new(0),
        chunks_reused: AtomicU64::new(0),
        spare: Buffers::new(SPARE_BYTES),
    };
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 4);

    let mut sel = sel.clone();
    sel.includes.sort_by(|a, b| files::walk_order(&a.device, &b.device));

    let mut walker = Walker {
        shared: &shared,
        chunker: Chunker::new(repo.config.chunker),
        prev,
        rehash: opts.rehash,
        stack: Vec::new(),
        links: HashMap::new(),
        batch: Vec::new(),
        batch_bytes: 0,
        txs: Vec::new(),
        next_tx: 0,
        progress,
        bytes_read: 0,
        files: 0,
        unchanged: 0,
        entries: 0,
        bytes: 0,
    };

    let (walked, built, uploaded) = std::thread::scope(|s| {
        let shared = &shared;
        let mut outs = Vec::new();
        for i in 0..workers {
            let (tx, rx) = sync_channel::<Batch>(0);
            let (otx, orx) = sync_channel::<Batch>(0);
            walker.txs.push(tx);
            outs.push(orx);
            std::thread::Builder::new()
                .name(format!("compress-{i}"))
                .spawn_scoped(s, move || compress(rx, otx, shared))
                .map_err(|e| Error::internal(format!("starting a thread: {e}")))?;
        }
        let (utx, urx) = sync_channel::<PackOut>(0);
        // The stored data pack's buffer goes back to the builder, to be filled again.
        let (btx, brx) = sync_channel::<Vec<u8>>(1);
        let uploader = std::thread::Builder::new()
            .name("upload".into())
            .spawn_scoped(s, move || upload(shared, urx, btx))
            .map_err(|e| Error::internal(format!("starting a thread: {e}")))?;
        let builder = std::thread::Builder::new()
            .name("build".into())
            .spawn_scoped(s, move || {
                let mut b = Builder::new(shared, next_cache, utx, brx)?;
                let done = match b.run(outs) {
                    Ok(true) => b.finish().map(Some),
                    Ok(false) => Ok(None),
                    Err(e) => Err(e),
                };
                // The uploader publishes what it stored, whatever happened here.
                drop(b);
                done
            })
            .map_err(|e| Error::internal(format!("starting a thread: {e}")))?;
        let walked = walker.run(&sel, skip, warn);
        let walked = walked.and_then(|()| walker.send(Ev::Done)).and_then(|()| walker.flush_batch(true));
        walker.txs.clear();
        let built = builder.join().unwrap_or_else(|_| Err(Error::internal("the snapshot's builder panicked")));
        let uploaded = uploader.join().unwrap_or_else(|_| Err(Error::internal("the snapshot's uploader panicked")));
        Ok::<_, Error>((walked, built, uploaded))
    })?;
    // The first cause first: a failed upload stops the builder, which stops the walker.
    uploaded?;
    let built = built?;
    walked?;
    let Some((root, next_cache)) = built else {
        return Err(Error::internal("the snapshot's builder stopped before the walk's end"));
    };
    let stats = Stats {
        files: walker.files,
        files_unchanged: walker.unchanged,
        bytes_read: walker.bytes_read,
        chunks_new: shared.chunks_new.load(Relaxed),
        chunks_reused: shared.chunks_reused.load(Relaxed),
        ..Stats::default()
    };
    let (entries, bytes) = (walker.entries, walker.bytes);
    drop(walker);
    let mut known = shared.known.into_inner().unwrap_or_else(|p| p.into_inner());
    known.cache.flush()?;
    Ok(Written { root, entries, bytes, stats, next_cache: Some(next_cache) })
}

struct Walker<'a, 's> {
    shared: &'a Shared<'s>,
    chunker: Chunker,
    prev: Option<files::Reader>,
    rehash: bool,
    /// Directories open, from the root down.
    stack: Vec<Vec<u8>>,
    /// Files with more than one link, by (dev, ino): the first one's path.
    links: HashMap<(u64, u64), Vec<u8>>,
    batch: Vec<Ev>,
    batch_bytes: usize,
    txs: Vec<SyncSender<Batch>>,
    next_tx: usize,
    progress: &'a Progress,
    bytes_read: u64,
    files: u64,
    unchanged: u64,
    entries: u64,
    bytes: u64,
}

fn node_of(name: &[u8], kind: NodeKind, m: &fs::Metadata, host: &Path) -> Node {
    let mut n = Node::new(name.to_vec(), kind);
    n.mode = m.mode() & tree::PERMS;
    if m.is_file() && m.blocks() * 512 < m.len() {
        n.mode |= tree::SPARSE;
    }
    n.uid = m.uid();
    n.gid = m.gid();
    n.mtime = m.mtime();
    n.mtime_nsec = m.mtime_nsec().clamp(0, 999_999_999) as u32;
    n.xattrs = crate::archive::disk::xattrs(host);
    n
}

impl Walker<'_, '_> {
    fn send(&mut self, ev: Ev) -> Result<()> {
        if let Ev::Chunk(Chunk::Cut(data)) = &ev {
            self.batch_bytes += data.len();
        }
        self.batch.push(ev);
        self.flush_batch(false)
    }

    fn flush_batch(&mut self, now: bool) -> Result<()> {
        if self.batch.is_empty() || (!now && self.batch_bytes < BATCH_BYTES && self.batch.len() < BATCH_EVENTS) {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let n = self.txs.len();
        let tx = &self.txs[self.next_tx % n];
        self.next_tx += 1;
        // A closed channel: the builder stopped; its error is the one to tell.
        tx.send(Ok(batch)).map_err(|_| Error::internal("the snapshot's builder stopped"))
    }

    fn run(&mut self, sel: &Selection, skip: &mut dyn FnMut(Skipped), warn: &mut dyn FnMut(String)) -> Result<()> {
        for step in sel.walk() {
            match step {
                Walked::Entry(e) => self.entry(e, warn)?,
                Walked::Skipped(s) => skip(s),
            }
        }
        while self.stack.pop().is_some() {
            self.send(Ev::End)?;
        }
        Ok(())
    }

    fn entry(&mut self, e: crate::select::Entry, warn: &mut dyn FnMut(String)) -> Result<()> {
        self.progress.check_cancel()?;
        let comps: Vec<&[u8]> = e.path.device.split(|b| *b == b'/').filter(|c| !c.is_empty()).collect();
        let Some((name, parents)) = comps.split_last() else {
            return Err(Error::usage("the whole device root cannot be a snapshot's entry: select paths under /data"));
        };
        let name = name.to_vec();
        let parents: Vec<Vec<u8>> = parents.iter().map(|p| p.to_vec()).collect();
        let common = self.stack.iter().zip(parents.iter()).take_while(|(a, b)| a == b).count();
        while self.stack.len() > common {
            self.stack.pop();
            self.send(Ev::End)?;
        }
        for p in &parents[common..] {
            self.send(Ev::Dir(Node::new(p.to_vec(), NodeKind::Implicit)))?;
            self.stack.push(p.to_vec());
        }
        self.entries += 1;
        let m = &e.meta;
        let ft = m.file_type();
        if ft.is_dir() {
            self.send(Ev::Dir(node_of(&name, NodeKind::Dir, m, &e.path.host)))?;
            self.stack.push(name);
            self.progress.entry(0);
            return Ok(());
        }
        if ft.is_symlink() {
            match fs::read_link(&e.path.host) {
                Ok(t) => {
                    let mut n = node_of(&name, NodeKind::Symlink, m, &e.path.host);
                    n.target = t.as_os_str().as_bytes().to_vec();
                    self.send(Ev::Leaf(n))?;
                }
                Err(err) => {
                    self.entries -= 1;
                    warn(format!("{}: cannot read symlink: {err}", e.path.display()));
                }
            }
            self.progress.entry(0);
            return Ok(());
        }
        self.file(&name, e, warn)
    }

    fn file(&mut self, name: &[u8], e: crate::select::Entry, warn: &mut dyn FnMut(String)) -> Result<()> {
        let m = &e.meta;
        let path = e.path.device.clone();
        let shown = e.path.display();
        let mut node = node_of(name, NodeKind::File, m, &e.path.host);
        node.size = m.len();
        let stamp = Stamp::of(m);
        let mut link = None;
        if m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            if let Some(first) = self.links.get(&key) {
                node.kind = NodeKind::Hardlink;
                node.target = first.clone();
                self.files += 1;
                self.progress.entry(0);
                return self.send(Ev::Link { node, to: key });
            }
            link = Some(key);
        }
        // Unchanged since the last snapshot, in packs nobody marked: not read.
        let cached = self.prev.as_mut().and_then(|p| p.find(&path, &stamp));
        if let Some(chunks) = cached.filter(|c| !self.rehash && c.iter().all(|l| !self.shared.marked.contains(&l.pack)))
        {
            self.files += 1;
            self.unchanged += 1;
            self.bytes += node.size;
            if let Some(k) = link {
                self.links.insert(k, path.clone());
            }
            self.shared.chunks_reused.fetch_add(chunks.len() as u64, Relaxed);
            self.send(Ev::File { node, stamp, path, link })?;
            for c in chunks {
                self.send(Ev::Chunk(Chunk::Known(c)))?;
            }
            self.progress.entry(m.len());
            return self.send(Ev::FileEnd { size: m.len() });
        }
        // The type is checked again on the open file: a FIFO or device swapped in after the
        // walk's lstat is not read.
        let opened = crate::backup::open_for_read(&e.path.host).and_then(|f| match f.metadata()?.is_file() {
            true => Ok(f),
            false => Err(io::Error::new(io::ErrorKind::InvalidInput, "no longer a regular file")),
        });
        let mut f = match opened {
            Ok(f) => f,
            Err(err) => {
                self.entries -= 1;
                warn(format!("{shown}: cannot read: {err}"));
                return Ok(());
            }
        };
        if let Some(k) = link {
            self.links.insert(k, path.clone());
        }
        self.files += 1;
        let size = m.len();
        self.send(Ev::File { node, stamp, path, link })?;
        self.chunker.reset();
        let mut left = size;
        let mut got = 0u64;
        loop {
            let n = self
                .chunker
                .fill(&mut f, left)
                .map_err(|err| Error::Io { context: format!("reading {shown}"), source: err })?;
            left -= n as u64;
            got += n as u64;
            let last = left == 0 || n == 0;
            let Some(len) = self.chunker.next_len(last) else {
                if last {
                    break;
                }
                continue;
            };
            let data = self.shared.chunk_buffer(self.chunker.take(len));
            self.send(Ev::Chunk(Chunk::Cut(data)))?;
        }
        if got < size {
            warn(format!("{shown}: shrank while being read ({got} of {size} bytes); the snapshot keeps what was read"));
        } else {
            let mut probe = [0u8; 1];
            if f.read(&mut probe).unwrap_or(0) > 0 {
                warn(format!("{shown}: grew while being read; only the first {size} bytes were kept"));
            }
        }
        self.bytes_read += got;
        self.bytes += got;
        self.progress.entry(got);
        self.send(Ev::FileEnd { size: got })
    }
}

/// A compressor: the chunks of each batch hashed and looked up, the new ones encoded (and
/// sealed, in a sealed repository): compressed into a buffer of their size, or, when they do
/// not compress, passed on in their own (not copied). Raw buffers come back to the walker from
/// here, or from the builder once packed.
fn compress(rx: Receiver<Batch>, tx: SyncSender<Batch>, shared: &Shared<'_>) {
    let keys = shared.repo.keys.as_ref();
    let mut enc = match blob::Encoder::new() {
        Ok(e) => e,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    for batch in rx {
        let batch = batch.and_then(|mut evs| {
            for ev in &mut evs {
                let Ev::Chunk(c) = ev else { continue };
                let Chunk::Cut(data) = c else { continue };
                let data = std::mem::take(data);
                let id = shared.repo.hasher.id(&data);
                *c = match shared.find(&id)? {
                    Some(l) => {
                        shared.give_back(data);
                        Chunk::Known(l)
                    }
                    None => {
                        let raw = data.len() as u32;
                        let (data, compressed, freed) = enc.encode_owned(&id, data, keys)?;
                        if let Some(b) = freed {
                            shared.give_back(b);
                        }
                        Chunk::New { id, data, raw, compressed }
                    }
                };
            }
            Ok(evs)
        });
        if tx.send(batch).is_err() {
            return;
        }
    }
}
