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
//! Every stage hands the next batches, not single steps: a snapshot of small files is three
//! steps a file (entry, chunk, end), and a hand-off per step woke a thread per step (280,000
//! context switches for 52,000 files). A batch goes on when it is full, or when its stage is
//! about to wait. The buffers come back: a done range's to the readers, a written chunk's to
//! the decoder (a new buffer costs a page fault per page).
//!
//! It must never hold more than `RANGES_AHEAD` ranges, five batches of decoded chunks of
//! about `BATCH_BYTES` (one being decoded, one checked, one written, one waiting at each of the
//! two hand-offs), and `SPARE_BYTES` of spare buffers; never hand on a chunk that did not hash
//! to its id, and never write: restoring is the caller's.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Mutex;
use std::thread::{Scope, ScopedJoinHandle};

use super::buffers::Buffers;
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
/// Decoded bytes in a batch handed on: it goes on at its first chunk past this (a chunk is at
/// most 4 MiB), or at `BATCH_ITEMS` entries, ends and chunks.
const BATCH_BYTES: usize = 256 << 10;
const BATCH_ITEMS: usize = 512;
/// Buffers of written chunks kept for the decoder to fill again (a restore of 1.2 GB faulted
/// 135,000 times without them; with 6 MiB, and a batch waiting at each hand-off, it peaked at
/// 63 MiB through S3).
const SPARE_BYTES: usize = 3 << 20;
/// Entries and chunks the walk runs ahead of the decoder, in batches of `STEP_BATCH`.
const STEPS_AHEAD: usize = 4096;
const STEP_BATCH: usize = 256;

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
    // Range buffers done with, back to the readers.
    let (range_spare_tx, range_spare_rx) = mpsc::sync_channel::<Vec<u8>>(RANGES_AHEAD);
    // The readers take the ranges in turn, each with a token (and a buffer when there is one).
    let next = Mutex::new((ranges_rx, token_rx, range_spare_rx));
    let spare = Buffers::new(SPARE_BYTES);
    std::thread::scope(|s| {
        let (planned_tx, planned_rx) = crossbeam_channel::bounded::<Vec<Step>>(STEPS_AHEAD / STEP_BATCH);
        // The decoder asks for a range it waits for that the walk still extends.
        let (wants_tx, wants_rx) = crossbeam_channel::unbounded::<u64>();
        let (fetched_tx, fetched_rx) = mpsc::channel::<Fetched>();
        // One batch waits at each hand-off: without it the stages ran in lock-step, and a
        // restore through S3 left a core idle half the time.
        let (decoded_tx, decoded_rx) = mpsc::sync_channel::<Vec<Decoded>>(1);
        let (out_tx, out_rx) = mpsc::sync_channel::<Vec<Out>>(1);
        let spare = &spare;

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
                let (r, buf) = {
                    let next = next.lock().unwrap_or_else(|p| p.into_inner());
                    let (Ok(r), Ok(())) = (next.0.recv(), next.1.recv()) else { return Ok(()) };
                    (r, next.2.try_recv().unwrap_or_default())
                };
                let got = opener.fetch(&r.pack, r.start, r.len, r.len, buf);
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
                    range_spare: range_spare_tx,
                    out: decoded_tx,
                    batch: Vec::new(),
                    batch_bytes: 0,
                    spare,
                };
                loop {
                    let steps = match planned_rx.try_recv() {
                        Ok(steps) => steps,
                        Err(crossbeam_channel::TryRecvError::Empty) => {
                            // About to wait for the walk: what is decoded goes on first.
                            d.flush()?;
                            match planned_rx.recv() {
                                Ok(steps) => steps,
                                Err(_) => break,
                            }
                        }
                        Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                    };
                    for step in steps {
                        d.step(step)?;
                    }
                }
                d.flush()
            })?
        };
        // The hash of every chunk, on a thread of its own: it costs as much as the decoding.
        let check = spawn(s, "check", move || check(&opener, decoded_rx, out_tx))?;

        let written = write(&out_rx, spare, each);
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

/// The check's batches, taken one item at a time.
struct Outs<'c> {
    rx: &'c Receiver<Vec<Out>>,
    batch: std::vec::IntoIter<Out>,
}

impl Outs<'_> {
    /// The next item; `None` when the check stopped.
    fn next(&mut self) -> Option<Out> {
        loop {
            if let Some(o) = self.batch.next() {
                return Some(o);
            }
            self.batch = self.rx.recv().ok()?.into_iter();
        }
    }
}

/// The caller's end: each entry and its content, from the decoder.
fn write(out: &Receiver<Vec<Out>>, spare: &Buffers, each: &mut Each<'_>) -> Result<()> {
    let mut outs = Outs { rx: out, batch: Vec::new().into_iter() };
    while let Some(next) = outs.next() {
        let Out::Entry(item) = next else { return Err(Error::internal("content came without its entry")) };
        let mut content = Content { outs: &mut outs, spare, buf: Vec::new(), pos: 0, ended: false };
        each(item, &mut content)?;
        // What the caller did not read of the content (a file it skipped) is passed over.
        io::copy(&mut content, &mut io::sink()).map_err(|e| Error::Io { context: READING.into(), source: e })?;
        spare.give(content.buf);
    }
    Ok(())
}

/// An entry's content as the decoder hands it on.
struct Content<'c, 'o> {
    outs: &'c mut Outs<'o>,
    spare: &'c Buffers,
    buf: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for Content<'_, '_> {
    fn read(&mut self, to: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.ended {
                return Ok(0);
            }
            match self.outs.next() {
                Some(Out::Data(b)) => {
                    self.spare.give(std::mem::replace(&mut self.buf, b));
                    self.pos = 0;
                }
                Some(Out::End) => self.ended = true,
                Some(Out::Entry(_)) => return Err(io::Error::other("an entry came before the content's end")),
                None => return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the snapshot's reading stopped")),
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
    /// The steps not yet handed on.
    batch: Vec<Step>,
    planned: crossbeam_channel::Sender<Vec<Step>>,
    wants: crossbeam_channel::Receiver<u64>,
}

impl Plan {
    fn new(
        ranges: Sender<Range>,
        planned: crossbeam_channel::Sender<Vec<Step>>,
        wants: crossbeam_channel::Receiver<u64>,
    ) -> Plan {
        Plan {
            open: Vec::new(),
            closed: BTreeMap::new(),
            next: 0,
            next_out: 0,
            ranges,
            batch: Vec::new(),
            planned,
            wants,
        }
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

    /// Every open range closed and every step handed on: the walk has ended.
    fn finish(&mut self) -> Result<()> {
        while !self.open.is_empty() {
            let r = self.open.remove(0);
            self.close(r)?;
        }
        self.flush()
    }

    /// A step for the decoder, handed on with a full batch.
    fn send(&mut self, step: Step) -> Result<()> {
        self.batch.push(step);
        match self.batch.len() >= STEP_BATCH {
            true => self.flush(),
            false => Ok(()),
        }
    }

    /// Hand the decoder the steps so far; while it has no room, answer its asks for open
    /// ranges (each one's end goes after the steps). An ask is answered only then: while the
    /// walk goes on, the range grows to its full size, and the decoder has the steps before it
    /// to work on.
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let batch = match self.planned.try_send(batch) {
            Ok(()) => return Ok(()),
            Err(crossbeam_channel::TrySendError::Full(batch)) => batch,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(stopped("the decoder")),
        };
        let mut batches = vec![batch];
        let mut i = 0;
        while i < batches.len() {
            let mut sel = crossbeam_channel::Select::new();
            let send = sel.send(&self.planned);
            sel.recv(&self.wants);
            let op = sel.select();
            if op.index() == send {
                let batch = std::mem::take(&mut batches[i]);
                op.send(&self.planned, batch).map_err(|_| stopped("the decoder"))?;
                i += 1;
            } else {
                let id = op.recv(&self.wants).map_err(|_| stopped("the decoder"))?;
                self.wanted(id, &mut batches)?;
            }
        }
        Ok(())
    }

    /// The decoder waits for range `id`: when it is still open, the readers get it now.
    fn wanted(&mut self, id: u64, batches: &mut Vec<Vec<Step>>) -> Result<()> {
        if let Some(i) = self.open.iter().position(|r| r.id == id) {
            let r = self.open.remove(i);
            self.hand_over(r)?;
            batches.push(vec![Step::Done(id)]);
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
    /// Done ranges' buffers, back to the readers.
    range_spare: SyncSender<Vec<u8>>,
    out: SyncSender<Vec<Decoded>>,
    /// What is decoded and not yet handed on, and its decoded bytes.
    batch: Vec<Decoded>,
    batch_bytes: usize,
    /// Written chunks' buffers, back from the caller.
    spare: &'a Buffers,
}

impl Decode<'_> {
    fn step(&mut self, step: Step) -> Result<()> {
        let (c, range) = match step {
            Step::Entry(item) => return self.send(Decoded::Entry(item), 0),
            Step::End => return self.send(Decoded::End, 0),
            Step::Done(id) => {
                if let Some((_, bytes)) = self.ranges.remove(&id) {
                    let _ = self.range_spare.try_send(bytes);
                }
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
            let (id, start, got) = match self.fetched.try_recv() {
                Ok(f) => f,
                Err(TryRecvError::Empty) => {
                    // About to wait for a read: what is decoded goes on first.
                    self.flush()?;
                    self.fetched.recv().map_err(|_| stopped("the readers"))?
                }
                Err(TryRecvError::Disconnected) => return Err(stopped("the readers")),
            };
            self.ranges.insert(id, (start, got?));
        }
        let (start, bytes) = self.ranges.get(&range).ok_or_else(|| Error::internal("no range"))?;
        let s = (u64::from(c.entry.offset) - start) as usize;
        let stored =
            bytes.get(s..s + c.entry.stored as usize).ok_or_else(|| Error::internal("a chunk outside its range"))?;
        let mut out = self.spare.take(c.entry.raw as usize);
        self.opener.decode(&c, stored, &mut out)?;
        let n = out.len();
        self.send(Decoded::Chunk(c, out), n)
    }

    /// `d` into the batch, which goes on when full.
    fn send(&mut self, d: Decoded, bytes: usize) -> Result<()> {
        self.batch.push(d);
        self.batch_bytes += bytes;
        match self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_ITEMS {
            true => self.flush(),
            false => Ok(()),
        }
    }

    /// The batch handed on.
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        self.out.send(std::mem::take(&mut self.batch)).map_err(|_| stopped("the check"))
    }
}

/// Each chunk checked against its id, and each file against the size its tree says, before
/// the caller sees it.
fn check(opener: &Opener<'_>, decoded: Receiver<Vec<Decoded>>, out: SyncSender<Vec<Out>>) -> Result<()> {
    // The entry being handed on: its path, the size its tree says, the bytes so far.
    let mut entry = (Vec::new(), 0, 0);
    for batch in decoded {
        let mut checked = Vec::with_capacity(batch.len());
        for d in batch {
            checked.push(checked_item(opener, d, &mut entry)?);
        }
        out.send(checked).map_err(|_| stopped("the writer"))?;
    }
    Ok(())
}

/// One item checked: a chunk against its id, an entry's end against the size its tree says.
fn checked_item(opener: &Opener<'_>, d: Decoded, entry: &mut (Vec<u8>, u64, u64)) -> Result<Out> {
    Ok(match d {
        Decoded::Entry(item) => {
            *entry = (item.meta.path.clone(), item.size, 0);
            Out::Entry(item)
        }
        Decoded::Chunk(c, bytes) => {
            opener.check(&c, &bytes)?;
            entry.2 += bytes.len() as u64;
            Out::Data(bytes)
        }
        Decoded::End => {
            let (path, size, got) = &*entry;
            if got != size {
                return Err(Error::archive(
                    format!("/{}", String::from_utf8_lossy(path)),
                    format!("has chunks of {got} bytes where its tree says {size}: the repository is damaged"),
                ));
            }
            Out::End
        }
    })
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
