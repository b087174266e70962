//! A restore's reads ahead of its writes. The walk down the trees, the ranged reads of packs,
//! the opening and decoding of each chunk, and its check against its id run on threads of
//! their own, so that the caller (an `Unpacker`) writes one file while the next ones are
//! fetched, decoded and checked: the store's latency, the decompressor and the hash overlap
//! with the writes, as an archive's download, hash and decoder do.
//!
//! The reads are planned from the chunks the walk names, in the order it names them: chunks
//! that follow each other closely in one pack, across files, make one read of up to `RANGE`
//! bytes (a whole restore reads each pack in a few ranges; one file costs one range). A
//! snapshot taken after some files changed names, file after file, chunks in the old packs
//! and in the new: a range stays open in each of up to `OPEN` packs at once.
//!
//! Ranges are read in the order they were opened, which is the order the decoder first needs
//! them, `FETCHERS` at once, each only once it holds one of `RANGES_AHEAD` tokens; the decoder
//! gives a range's token back when the walk says its last chunk has gone by. A range is read
//! once it is closed (full, or the oldest of `OPEN`, or the walk's end), or when the decoder
//! asks for it (it has caught up with the walk). A range the decoder waits for is always read:
//! the ranges opened before it were read already, at most `OPEN` ranges are live at any point
//! of the walk, and there are more tokens than that.
//!
//! It must never hold more than `RANGES_AHEAD` ranges and `2 × CHUNKS_AHEAD` decoded chunks,
//! never hand on a chunk that did not hash to its id, and never write: restoring is the
//! caller's.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Mutex;
use std::thread::{Scope, ScopedJoinHandle};

use super::id::Name;
use super::pack::Located;
use super::read::{self, Blobs, Each, Filter, Opener};
use super::tree::Node;
use crate::archive::read::Item;
use crate::error::{Error, Result};
use crate::pipe;

/// The largest read of a pack (a chunk larger than this is read alone).
pub(super) const RANGE: u64 = 4 << 20;
/// A gap between two chunks of one pack that a read spans rather than starting another: what
/// a partial restore skips between the files it wants, or a chunk another snapshot stored.
const GAP: u64 = 256 << 10;
/// Ranges open at once, each in its own pack.
const OPEN: usize = 3;
/// Reads in flight at once: one leaves the store idle while a range is handed on.
const FETCHERS: usize = 3;
/// Ranges read and not yet done with: more than can be live at once (`OPEN`), and room for
/// the readers to work ahead. Memory: `RANGE × RANGES_AHEAD` of stored bytes at most.
const RANGES_AHEAD: usize = OPEN + FETCHERS;
/// Decoded chunks handed on and not yet written, at each of two stages.
const CHUNKS_AHEAD: usize = 4;
/// Entries and chunks the walk runs ahead of the decoder.
const STEPS_AHEAD: usize = 4096;

/// What an error of this module says was going on.
const READING: &str = "reading a snapshot ahead";

/// One read of a pack.
struct Range {
    id: u64,
    pack: Name,
    start: u64,
    len: u64,
}

/// A range's id, first byte's offset and bytes, as a reader fetched them.
type Fetched = (u64, u64, Result<Vec<u8>>);

/// What the walk hands the decoder: an entry, each chunk of its content with the range that
/// holds it, its end; and when a range's last chunk has gone by.
enum Step {
    Entry(Item),
    Chunk(Located, u64),
    End,
    Done(u64),
}

/// What the decoder hands the check: an entry, its chunks decoded, its end.
enum Decoded {
    Entry(Item),
    Chunk(Located, Vec<u8>),
    End,
}

/// What the check hands the caller: an entry, its content in checked chunks, its end.
enum Out {
    Entry(Item),
    Data(Vec<u8>),
    End,
}

/// Every entry the filter takes, in walk order, with its content read ahead: what an
/// `Unpacker` eats. Returns, per include, whether it named something.
pub fn entries(opener: Opener<'_>, root: &[Located], filter: &Filter, each: &mut Each<'_>) -> Result<Vec<bool>> {
    entries_seen_by(opener, root, filter, &mut |_, _| Ok(()), each)
}

/// `entries`, with each node the walk takes shown to `seen` first, on the walk's thread
/// (`verify --read-data` checks its chunks against the index there: one walk, not two).
pub fn entries_seen_by(
    opener: Opener<'_>,
    root: &[Located],
    filter: &Filter,
    seen: &mut (dyn FnMut(&[u8], &Node) -> Result<()> + Send),
    each: &mut Each<'_>,
) -> Result<Vec<bool>> {
    let (ranges_tx, ranges_rx) = mpsc::channel::<Range>();
    // A token for each range that may be read and not yet done with.
    let (token_tx, token_rx) = mpsc::sync_channel::<()>(RANGES_AHEAD);
    for _ in 0..RANGES_AHEAD {
        let _ = token_tx.send(());
    }
    // The readers take the ranges in turn, each with a token.
    let next = Mutex::new((ranges_rx, token_rx));
    std::thread::scope(|s| {
        let (planned_tx, planned_rx) = crossbeam_channel::bounded::<Step>(STEPS_AHEAD);
        // The decoder asks for a range it waits for that the walk still extends.
        let (wants_tx, wants_rx) = crossbeam_channel::unbounded::<u64>();
        let (fetched_tx, fetched_rx) = mpsc::channel::<Fetched>();
        let (decoded_tx, decoded_rx) = mpsc::sync_channel::<Decoded>(CHUNKS_AHEAD);
        let (out_tx, out_rx) = mpsc::sync_channel::<Out>(CHUNKS_AHEAD);
        let (spare_tx, spare_rx) = mpsc::sync_channel::<Vec<u8>>(CHUNKS_AHEAD + 1);

        let walk = {
            let opener = opener.clone();
            spawn(s, "walk", move || {
                let mut plan = Plan::new(ranges_tx, planned_tx, wants_rx);
                let mut blobs = Blobs::new(opener);
                let found = read::walk(&mut blobs, root, filter, &mut |path, node| {
                    seen(path, node)?;
                    plan.entry(path, node, filter)
                })?;
                plan.finish()?;
                Ok(found)
            })?
        };
        let mut fetchers = Vec::new();
        for _ in 0..FETCHERS {
            let (opener, next, fetched_tx) = (opener.clone(), &next, fetched_tx.clone());
            fetchers.push(spawn(s, "fetch", move || loop {
                let r = {
                    let next = next.lock().unwrap_or_else(|p| p.into_inner());
                    let (Ok(r), Ok(())) = (next.0.recv(), next.1.recv()) else { return Ok(()) };
                    r
                };
                let got = opener.fetch(&r.pack, r.start, r.len, r.len);
                if fetched_tx.send((r.id, r.start, got)).is_err() {
                    return Ok(());
                }
            })?);
        }
        drop(fetched_tx);
        let decode = {
            let opener = opener.clone();
            spawn(s, "decode", move || {
                let mut d = Decode {
                    opener,
                    fetched: fetched_rx,
                    ranges: BTreeMap::new(),
                    wants: wants_tx,
                    tokens: token_tx,
                    out: decoded_tx,
                    spare: spare_rx,
                };
                for step in planned_rx {
                    d.step(step)?;
                }
                Ok(())
            })?
        };
        // The hash of every chunk, on a thread of its own: it costs as much as the decoding.
        let check = spawn(s, "check", move || check(&opener, decoded_rx, out_tx))?;

        let written = write(&out_rx, &spare_tx, each);
        drop(out_rx);
        let checked = join(check);
        let decoded = join(decode);
        let walked = join(walk);
        for f in fetchers {
            let _ = join(f);
        }
        // The stage that failed first explains; those after it only saw it stop.
        let cause = |e, later: [Result<()>; 3]| later.into_iter().fold(e, pipe::root_cause);
        let (walked, seen) = match walked {
            Ok(seen) => (Ok(()), seen),
            Err(e) => (Err(e), Vec::new()),
        };
        match (written, checked, decoded, walked) {
            (Ok(()), Ok(()), Ok(()), Ok(())) => Ok(seen),
            (Err(e), c, d, w) => Err(cause(e, [c, d, w])),
            (Ok(()), Err(e), d, w) => Err(cause(e, [d, w, Ok(())])),
            (Ok(()), Ok(()), Err(e), w) => Err(cause(e, [w, Ok(()), Ok(())])),
            (Ok(()), Ok(()), Ok(()), Err(e)) => Err(e),
        }
    })
}

/// The caller's end: each entry and its content, from the decoder.
fn write(out: &Receiver<Out>, spare: &SyncSender<Vec<u8>>, each: &mut Each<'_>) -> Result<()> {
    while let Ok(next) = out.recv() {
        let Out::Entry(item) = next else { return Err(Error::internal("content came without its entry")) };
        let mut content = Content { out, spare, buf: Vec::new(), pos: 0, ended: false };
        each(item, &mut content)?;
        // What the caller did not read of the content (a file it skipped) is passed over.
        io::copy(&mut content, &mut io::sink()).map_err(|e| Error::Io { context: READING.into(), source: e })?;
    }
    Ok(())
}

/// An entry's content as the decoder hands it on.
struct Content<'c> {
    out: &'c Receiver<Out>,
    spare: &'c SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for Content<'_> {
    fn read(&mut self, to: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.ended {
                return Ok(0);
            }
            match self.out.recv() {
                Ok(Out::Data(b)) => {
                    let used = std::mem::replace(&mut self.buf, b);
                    let _ = self.spare.try_send(used);
                    self.pos = 0;
                }
                Ok(Out::End) => self.ended = true,
                Ok(Out::Entry(_)) => return Err(io::Error::other("an entry came before the content's end")),
                Err(_) => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the snapshot's reading stopped")),
            }
        }
        let n = to.len().min(self.buf.len() - self.pos);
        to[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The walk's side: entries planned into ranges.
struct Plan {
    /// The ranges being extended, the one extended longest ago first.
    open: Vec<Range>,
    /// Ranges no longer extended, waiting for those opened before them to be handed over.
    closed: BTreeMap<u64, Range>,
    /// The id of the next range opened, and of the next handed to the readers.
    next: u64,
    next_out: u64,
    ranges: Sender<Range>,
    planned: crossbeam_channel::Sender<Step>,
    wants: crossbeam_channel::Receiver<u64>,
}

impl Plan {
    fn new(
        ranges: Sender<Range>,
        planned: crossbeam_channel::Sender<Step>,
        wants: crossbeam_channel::Receiver<u64>,
    ) -> Plan {
        Plan { open: Vec::new(), closed: BTreeMap::new(), next: 0, next_out: 0, ranges, planned, wants }
    }

    fn entry(&mut self, path: &[u8], node: &Node, filter: &Filter) -> Result<()> {
        let (item, content) = read::item(path, node, filter);
        self.send(Step::Entry(item))?;
        for c in content {
            let range = self.place(c)?;
            self.send(Step::Chunk(*c, range))?;
        }
        self.send(Step::End)
    }

    /// Every open range closed: the walk has ended.
    fn finish(&mut self) -> Result<()> {
        while !self.open.is_empty() {
            let r = self.open.remove(0);
            self.close(r)?;
        }
        Ok(())
    }

    /// Hand the decoder a step; while it has no room, answer its asks for open ranges (each
    /// one's end goes after the step). An ask is answered only then: while the walk goes on,
    /// the range grows to its full size, and the decoder has the steps before it to work on.
    fn send(&mut self, step: Step) -> Result<()> {
        let step = match self.planned.try_send(step) {
            Ok(()) => return Ok(()),
            Err(crossbeam_channel::TrySendError::Full(step)) => step,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(stopped("the decoder")),
        };
        let mut steps = vec![step];
        let mut i = 0;
        while i < steps.len() {
            let mut sel = crossbeam_channel::Select::new();
            let send = sel.send(&self.planned);
            sel.recv(&self.wants);
            let op = sel.select();
            if op.index() == send {
                let step = std::mem::replace(&mut steps[i], Step::End);
                op.send(&self.planned, step).map_err(|_| stopped("the decoder"))?;
                i += 1;
            } else {
                let id = op.recv(&self.wants).map_err(|_| stopped("the decoder"))?;
                self.wanted(id, &mut steps)?;
            }
        }
        Ok(())
    }

    /// The decoder waits for range `id`: when it is still open, the readers get it now.
    fn wanted(&mut self, id: u64, steps: &mut Vec<Step>) -> Result<()> {
        if let Some(i) = self.open.iter().position(|r| r.id == id) {
            let r = self.open.remove(i);
            self.hand_over(r)?;
            steps.push(Step::Done(id));
        }
        Ok(())
    }

    /// The range that will hold chunk `c`: an open one of its pack that `c` follows closely,
    /// else a new one (and the one extended longest ago is closed when `OPEN` are).
    fn place(&mut self, c: &Located) -> Result<u64> {
        let (off, len) = (u64::from(c.entry.offset), u64::from(c.entry.stored));
        let fits = |r: &Range| {
            r.pack == c.pack && off >= r.start && off <= r.start + r.len + GAP && off + len <= r.start + RANGE
        };
        if let Some(i) = self.open.iter().position(fits) {
            let mut r = self.open.remove(i);
            r.len = r.len.max(off + len - r.start);
            let id = r.id;
            self.open.push(r);
            return Ok(id);
        }
        if self.open.len() >= OPEN {
            let r = self.open.remove(0);
            self.close(r)?;
        }
        let id = self.next;
        self.next += 1;
        self.open.push(Range { id, pack: c.pack, start: off, len });
        Ok(id)
    }

    /// A range is complete: the readers get it, the decoder learns its last chunk went by.
    fn close(&mut self, r: Range) -> Result<()> {
        let id = r.id;
        self.hand_over(r)?;
        self.send(Step::Done(id))
    }

    /// The readers get the ranges in the order they were opened.
    fn hand_over(&mut self, r: Range) -> Result<()> {
        self.closed.insert(r.id, r);
        while let Some(r) = self.closed.remove(&self.next_out) {
            self.ranges.send(r).map_err(|_| stopped("the readers"))?;
            self.next_out += 1;
        }
        Ok(())
    }
}

/// The decoder's side: chunks out of their ranges, opened and decoded, handed on in order.
struct Decode<'a> {
    opener: Opener<'a>,
    fetched: Receiver<Fetched>,
    /// The ranges read and not yet done with: id → first byte's offset, bytes.
    ranges: BTreeMap<u64, (u64, Vec<u8>)>,
    wants: crossbeam_channel::Sender<u64>,
    tokens: SyncSender<()>,
    out: SyncSender<Decoded>,
    spare: Receiver<Vec<u8>>,
}

impl Decode<'_> {
    fn step(&mut self, step: Step) -> Result<()> {
        let (c, range) = match step {
            Step::Entry(item) => return self.send(Decoded::Entry(item)),
            Step::End => return self.send(Decoded::End),
            Step::Done(id) => {
                self.ranges.remove(&id);
                let _ = self.tokens.send(());
                return Ok(());
            }
            Step::Chunk(c, range) => (c, range),
        };
        if !self.ranges.contains_key(&range) {
            // Caught up with the walk: the range may still be open.
            let _ = self.wants.send(range);
        }
        while !self.ranges.contains_key(&range) {
            let (id, start, got) = self.fetched.recv().map_err(|_| stopped("the readers"))?;
            self.ranges.insert(id, (start, got?));
        }
        let (start, bytes) = self.ranges.get(&range).ok_or_else(|| Error::internal("no range"))?;
        let s = (u64::from(c.entry.offset) - start) as usize;
        let stored =
            bytes.get(s..s + c.entry.stored as usize).ok_or_else(|| Error::internal("a chunk outside its range"))?;
        let mut out = self.spare.try_recv().unwrap_or_default();
        self.opener.decode(&c, stored, &mut out)?;
        self.send(Decoded::Chunk(c, out))
    }

    fn send(&self, d: Decoded) -> Result<()> {
        self.out.send(d).map_err(|_| stopped("the check"))
    }
}

/// Each chunk checked against its id, and each file against the size its tree says, before
/// the caller sees it.
fn check(opener: &Opener<'_>, decoded: Receiver<Decoded>, out: SyncSender<Out>) -> Result<()> {
    // The entry being handed on: its path, the size its tree says, the bytes so far.
    let mut entry = (Vec::new(), 0, 0);
    for d in decoded {
        let o = match d {
            Decoded::Entry(item) => {
                entry = (item.meta.path.clone(), item.size, 0);
                Out::Entry(item)
            }
            Decoded::Chunk(c, bytes) => {
                opener.check(&c, &bytes)?;
                entry.2 += bytes.len() as u64;
                Out::Data(bytes)
            }
            Decoded::End => {
                let (path, size, got) = &entry;
                if got != size {
                    return Err(Error::archive(
                        format!("/{}", String::from_utf8_lossy(path)),
                        format!("has chunks of {got} bytes where its tree says {size}: the repository is damaged"),
                    ));
                }
                Out::End
            }
        };
        out.send(o).map_err(|_| stopped("the writer"))?;
    }
    Ok(())
}

fn stopped(who: impl std::fmt::Display) -> Error {
    Error::Io { context: READING.into(), source: io::Error::new(io::ErrorKind::BrokenPipe, format!("{who} stopped")) }
}

fn spawn<'s, 'e, T: Send + 's>(
    s: &'s Scope<'s, 'e>,
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 's,
) -> Result<ScopedJoinHandle<'s, Result<T>>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn_scoped(s, f)
        .map_err(|e| Error::Io { context: format!("starting the {name} thread"), source: e })
}

fn join<T>(h: ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join().map_err(|_| Error::internal("a restore's reading thread panicked"))?
}
