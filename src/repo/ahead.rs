//! A restore's reads ahead of its writes. The walk down the trees, the ranged reads of packs,
//! the opening and decoding of each chunk, and its check against its id run on threads of
//! their own, so that the caller (an `Unpacker`) writes one file while the next ones are
//! fetched, decoded and checked: the store's latency, the decompressor and the hash overlap
//! with the writes, as an archive's download, hash and decoder do.
//!
//! The reads are planned from the chunks the walk names, in the order it names them: chunks
//! that follow each other closely in one pack, across files, make one read of up to `RANGE`
//! bytes (a whole restore reads each pack in one GET; one file costs one). A snapshot taken
//! after some files changed names, file after file, chunks in the old packs and in the new: a
//! range stays open in each of up to `OPEN` packs at once.
//!
//! A range is streamed, not read whole: its reader hands the decoder pieces of up to `PIECE`
//! bytes, each cut where a chunk ends, `PIECES_AHEAD` waiting at most; past them the rest
//! waits in the connection. So the decoder starts on a pack's first chunks while the rest is
//! on its way, a range costs memory by its pieces and not by its size, and ranges can be whole
//! packs (4 MiB ranges read whole left the cores idle a quarter of a restore, and cost the
//! store a partial block at each of four times as many ends). A chunk the walk names again
//! that lies before its range's piece is read alone.
//!
//! A range goes to the readers once it is closed: full, passed by the walk in its pack, the
//! oldest of `OPEN`, at the walk's end, or when the decoder asks for it (it has caught up with
//! the walk). Or earlier, while the walk still extends it, once it was opened half the walk's
//! lead ago (small files fill a range more slowly than the walk runs ahead): such a range
//! grows. Its reader asks the store for all it may grow to (`RANGE`), streams what the walk
//! has named of it, and is told each chunk the walk adds until the walk closes it, then drops
//! the rest (what the connection held of it is all it costs). So a pack of changed files,
//! whose chunks come a file or two at a time between the old packs' runs, is read in one GET,
//! not in one for every few files, each waited on.
//!
//! Ranges are started in the order they were opened, which is the order the decoder first
//! needs them, `FETCHERS` at once, each only once it holds one of `RANGES_AHEAD` tokens; the
//! decoder gives a range's token back when the walk says its last chunk has gone by. A range
//! the decoder waits for is always started: the ranges opened before it were started already,
//! and of those only the ones live at the decoder's point of the walk (at most `OPEN`) still
//! hold a token or keep a reader waiting on a full queue of pieces or for the walk; there are
//! more tokens and readers than that.
//!
//! Every stage hands the next batches, not single steps: a snapshot of small files is three
//! steps a file (entry, chunk, end), and a hand-off per step woke a thread per step (280,000
//! context switches for 52,000 files). A batch goes on when it is full, or when its stage is
//! about to wait. The buffers come back: a decoded piece's to the readers, a written chunk's
//! to the decoder (a new buffer costs a page fault per page).
//!
//! It must never hold more than `PIECES_AHEAD + 2` pieces of each of `RANGES_AHEAD` ranges
//! (those waiting, one being read, one being decoded), five batches of decoded chunks of
//! about `BATCH_BYTES` (one being decoded, one checked, one written, one waiting at each of the
//! two hand-offs), and `SPARE_BYTES` of spare buffers; never hand on a chunk that did not hash
//! to its id, and never write: restoring is the caller's.

use std::collections::{BTreeMap, VecDeque};
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

/// The largest read of a pack: a whole pack's data (a chunk larger than this is read alone).
pub(super) const RANGE: u64 = 16 << 20;
/// A gap between two chunks of one pack that a read spans rather than starting another: what
/// a partial restore skips between the files it wants, or a chunk another snapshot stored.
const GAP: u64 = 256 << 10;
/// Ranges open at once, each in its own pack.
const OPEN: usize = 3;
/// Ranges streamed at once: more than can be live at once (`OPEN`), so that the one the decoder
/// waits for always has a reader.
const FETCHERS: usize = OPEN + 1;
/// Ranges started and not yet done with: more than can be live at once, and room for the
/// readers to work ahead. Through Garage, 5 restored as fast as 7 and held 6 MiB less.
const RANGES_AHEAD: usize = OPEN + 2;
/// A piece of a range handed on while the rest of it streams in: chunks up to this many bytes.
const PIECE: u64 = 1 << 20;
/// Pieces of a range that wait for the decoder (1 was slower; 4 held more, no faster).
const PIECES_AHEAD: usize = 2;
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

/// One read of a pack, as the walk plans it.
struct Range {
    id: u64,
    pack: Name,
    start: u64,
    len: u64,
    /// Where the chunks it was extended by end, in order, not yet told its reader: its pieces
    /// end at them.
    ends: Vec<u64>,
    /// The walk's steps planned when it was opened.
    opened: u64,
    /// Once its reader has it while the walk still extends it: where each new chunk ends.
    grow: Option<Sender<u64>>,
}

/// What a reader is handed: a range of a pack, where the chunks in it end as far as the walk
/// knows, and, while the walk still extends it, those to come.
struct Fetch {
    id: u64,
    pack: Name,
    start: u64,
    /// The most it reads: the range's length, or `RANGE` while it grows.
    len: u64,
    ends: Vec<u64>,
    more: Option<Receiver<u64>>,
}

/// A piece of a range as a reader streamed it: its first byte's offset in the pack, its bytes.
type Piece = Result<(u64, Vec<u8>)>;
/// A range a reader started: its id, and its pieces as they come.
type Started = (u64, Receiver<Piece>);

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
    let (ranges_tx, ranges_rx) = mpsc::channel::<Fetch>();
    // A token for each range that may be read and not yet done with.
    let (token_tx, token_rx) = mpsc::sync_channel::<()>(RANGES_AHEAD);
    for _ in 0..RANGES_AHEAD {
        let _ = token_tx.send(());
    }
    // The readers take the ranges in turn, each with a token.
    let next = Mutex::new((ranges_rx, token_rx));
    // Pieces and decoded chunks done with, back to the readers and the decoder.
    let spare = Buffers::new(SPARE_BYTES);
    std::thread::scope(|s| {
        let (planned_tx, planned_rx) = crossbeam_channel::bounded::<Vec<Step>>(STEPS_AHEAD / STEP_BATCH);
        // The decoder asks for a range it waits for that the walk still extends.
        let (wants_tx, wants_rx) = crossbeam_channel::unbounded::<u64>();
        let (started_tx, started_rx) = mpsc::channel::<Started>();
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
            let (opener, next, started_tx) = (opener.clone(), &next, started_tx.clone());
            fetchers.push(spawn(s, "fetch", move || loop {
                let f = {
                    let next = next.lock().unwrap_or_else(|p| p.into_inner());
                    let (Ok(f), Ok(())) = (next.0.recv(), next.1.recv()) else { return Ok(()) };
                    f
                };
                let (pieces_tx, pieces_rx) = mpsc::sync_channel::<Piece>(PIECES_AHEAD);
                if started_tx.send((f.id, pieces_rx)).is_err() {
                    return Ok(());
                }
                stream(&opener, f, spare, &pieces_tx);
            })?);
        }
        drop(started_tx);
        let decode = {
            let opener = opener.clone();
            spawn(s, "decode", move || {
                let mut d = Decode {
                    opener,
                    started: started_rx,
                    ranges: BTreeMap::new(),
                    alone: Vec::new(),
                    wants: wants_tx,
                    tokens: token_tx,
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
    /// Ranges for the readers, waiting for those opened before them to be handed over.
    waiting: BTreeMap<u64, Fetch>,
    /// The id of the next range opened, and of the next handed to the readers.
    next: u64,
    next_out: u64,
    ranges: Sender<Fetch>,
    /// The steps not yet handed on, and how many were planned in all.
    batch: Vec<Step>,
    steps: u64,
    planned: crossbeam_channel::Sender<Vec<Step>>,
    wants: crossbeam_channel::Receiver<u64>,
}

impl Plan {
    fn new(
        ranges: Sender<Fetch>,
        planned: crossbeam_channel::Sender<Vec<Step>>,
        wants: crossbeam_channel::Receiver<u64>,
    ) -> Plan {
        Plan {
            open: Vec::new(),
            waiting: BTreeMap::new(),
            next: 0,
            next_out: 0,
            ranges,
            batch: Vec::new(),
            steps: 0,
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
        self.steps += 1;
        match self.batch.len() >= STEP_BATCH {
            true => self.flush(),
            false => Ok(()),
        }
    }

    /// Hand the decoder the steps so far; while it has no room, answer its asks for open
    /// ranges. An ask is answered only then: while the walk goes on, the range grows to its
    /// full size, and the decoder has the steps before it to work on.
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        loop {
            batch = match self.planned.try_send(batch) {
                Ok(()) => return Ok(()),
                Err(crossbeam_channel::TrySendError::Full(batch)) => batch,
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(stopped("the decoder")),
            };
            let mut sel = crossbeam_channel::Select::new();
            let send = sel.send(&self.planned);
            sel.recv(&self.wants);
            let op = sel.select();
            if op.index() == send {
                return op.send(&self.planned, batch).map_err(|_| stopped("the decoder"));
            }
            let id = op.recv(&self.wants).map_err(|_| stopped("the decoder"))?;
            self.wanted(id)?;
        }
    }

    /// The decoder waits for range `id`: when it is still open and not read yet, the readers get
    /// it as it is (a range that grows asks for all it may grow to, and a partial restore that
    /// caught up with its walk, one file, would pay for what it drops), and its end goes after
    /// the batch being handed on.
    fn wanted(&mut self, id: u64) -> Result<()> {
        match self.open.iter().position(|r| r.id == id && r.grow.is_none()) {
            Some(i) => {
                let r = self.open.remove(i);
                self.close(r)
            }
            None => Ok(()),
        }
    }

    /// The range that will hold chunk `c`: an open one of its pack that `c` follows closely,
    /// else a new one (and the one extended longest ago is closed when `OPEN` are).
    fn place(&mut self, c: &Located) -> Result<u64> {
        let (off, len) = (u64::from(c.entry.offset), u64::from(c.entry.stored));
        let fits = |r: &Range| {
            r.pack == c.pack && off >= r.start && off <= r.start + r.len + GAP && off + len <= r.start + RANGE
        };
        // A range the decoder may soon need is read now, and goes on growing: one opened half
        // the walk's lead ago (small files fill a range more slowly than the walk runs ahead;
        // read only once the decoder asked for it, each range kept the decoder waiting for its
        // first piece; closed then, a pack of changed files between old ones was read in a
        // hundred ranges of a few files each, every one waited on).
        while let Some(i) =
            self.open.iter().position(|r| r.grow.is_none() && self.steps - r.opened >= (STEPS_AHEAD / 2) as u64)
        {
            self.grow(i)?;
        }
        if let Some(i) = self.open.iter().position(fits) {
            let mut r = self.open.remove(i);
            if off + len > r.start + r.len {
                r.len = off + len - r.start;
                match &r.grow {
                    // A reader that stopped (at an error) is past caring.
                    Some(more) => drop(more.send(off + len)),
                    None => r.ends.push(off + len),
                }
            }
            let id = r.id;
            self.open.push(r);
            return Ok(id);
        }
        // A range of the pack that `c` lies beyond (it would overrun the range, or the walk
        // skipped a file's old chunks) is done: read now, not once it is the oldest of `OPEN`
        // (its reader would start only as the walk opened the third range after it, and the
        // decoder give its token back as late).
        let behind = |r: &Range| r.pack == c.pack && off >= r.start + r.len;
        if let Some(i) = self.open.iter().position(behind) {
            let r = self.open.remove(i);
            self.close(r)?;
        }
        if self.open.len() >= OPEN {
            let r = self.open.remove(0);
            self.close(r)?;
        }
        let id = self.next;
        self.next += 1;
        let r = Range { id, pack: c.pack, start: off, len, ends: vec![off + len], opened: self.steps, grow: None };
        self.open.push(r);
        Ok(id)
    }

    /// Open range `i` goes to the readers now, and is told each chunk it grows by.
    fn grow(&mut self, i: usize) -> Result<()> {
        let r = &mut self.open[i];
        if r.grow.is_some() {
            return Ok(());
        }
        let (more_tx, more_rx) = mpsc::channel();
        r.grow = Some(more_tx);
        let f = Fetch {
            id: r.id,
            pack: r.pack,
            start: r.start,
            len: RANGE,
            ends: std::mem::take(&mut r.ends),
            more: Some(more_rx),
        };
        self.hand_over(f)
    }

    /// A range is complete: the readers get it (a growing one's reader learns it has ended as
    /// its `grow` goes), the decoder learns its last chunk went by.
    fn close(&mut self, r: Range) -> Result<()> {
        let id = r.id;
        if r.grow.is_none() {
            self.hand_over(Fetch { id, pack: r.pack, start: r.start, len: r.len, ends: r.ends, more: None })?;
        }
        self.send(Step::Done(id))
    }

    /// The readers get the ranges in the order they were opened.
    fn hand_over(&mut self, f: Fetch) -> Result<()> {
        self.waiting.insert(f.id, f);
        while let Some(f) = self.waiting.remove(&self.next_out) {
            self.ranges.send(f).map_err(|_| stopped("the readers"))?;
            self.next_out += 1;
        }
        Ok(())
    }
}

/// A range the decoder takes its chunks from: the pieces to come, the one it is in.
struct Reading {
    pieces: Receiver<Piece>,
    /// The piece's first byte's offset in the pack, and its bytes.
    at: u64,
    piece: Vec<u8>,
}

/// The decoder's side: chunks out of their ranges, opened and decoded, handed on in order.
struct Decode<'a> {
    opener: Opener<'a>,
    started: Receiver<Started>,
    /// The ranges started and not yet done with.
    ranges: BTreeMap<u64, Reading>,
    /// A chunk that lies before its range's piece (the walk named it again), read alone.
    alone: Vec<u8>,
    wants: crossbeam_channel::Sender<u64>,
    tokens: SyncSender<()>,
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
                if let Some(r) = self.ranges.remove(&id) {
                    self.spare.give(r.piece);
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
            let (id, pieces) = self.wait(|d| d.started.try_recv(), |d| d.started.recv())?;
            self.ranges.insert(id, Reading { pieces, at: 0, piece: Vec::new() });
        }
        let mut r = self.ranges.remove(&range).ok_or_else(|| Error::internal("no range"))?;
        let got = self.chunk(&c, &mut r);
        self.ranges.insert(range, r);
        got
    }

    /// Chunk `c` out of range `r`'s pieces (those before it are done with), decoded and sent.
    fn chunk(&mut self, c: &Located, r: &mut Reading) -> Result<()> {
        let (off, len) = (u64::from(c.entry.offset), u64::from(c.entry.stored));
        while off >= r.at && off + len > r.at + r.piece.len() as u64 {
            let (at, piece) = self.wait(|_| r.pieces.try_recv(), |_| r.pieces.recv())??;
            self.spare.give(std::mem::replace(&mut r.piece, piece));
            r.at = at;
        }
        let stored = match off >= r.at {
            true => &r.piece[(off - r.at) as usize..(off - r.at + len) as usize],
            false => {
                self.alone = self.opener.fetch(&c.pack, off, len, len, std::mem::take(&mut self.alone))?;
                &self.alone[..]
            }
        };
        let mut out = self.spare.take(c.entry.raw as usize);
        self.opener.decode(c, stored, &mut out)?;
        let n = out.len();
        self.send(Decoded::Chunk(*c, out), n)
    }

    /// What `now` takes, or else, with what is decoded handed on first, what `wait` waits for.
    fn wait<T>(
        &mut self,
        now: impl FnOnce(&Self) -> std::result::Result<T, TryRecvError>,
        wait: impl FnOnce(&Self) -> std::result::Result<T, mpsc::RecvError>,
    ) -> Result<T> {
        match now(self) {
            Ok(t) => Ok(t),
            Err(TryRecvError::Empty) => {
                self.flush()?;
                wait(self).map_err(|_| stopped("the readers"))
            }
            Err(TryRecvError::Disconnected) => Err(stopped("the readers")),
        }
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

/// Range `f` streamed into `pieces`: runs of its chunks of up to `PIECE` bytes (one chunk when
/// it is larger), each cut where a chunk ends, as far as the walk has told (a growing range's
/// reader waits for more, and reads no further once the walk closed it). Stops at an error
/// (which goes on as the next piece), or when the decoder no longer wants the range.
fn stream(opener: &Opener<'_>, f: Fetch, spare: &Buffers, pieces: &SyncSender<Piece>) {
    let mut body = match opener.stream(&f.pack, f.start, f.len) {
        Ok(b) => b,
        Err(e) => {
            let _ = pieces.send(Err(e));
            return;
        }
    };
    let (mut at, mut ends) = (f.start, VecDeque::from(f.ends));
    loop {
        if let Some(more) = &f.more {
            ends.extend(more.try_iter());
            if ends.is_empty() {
                match more.recv() {
                    Ok(e) => ends.push_back(e),
                    Err(_) => return,
                }
            }
        }
        let Some(mut end) = ends.pop_front() else { return };
        while let Some(e) = ends.front().copied().filter(|e| e - at <= PIECE) {
            end = e;
            ends.pop_front();
        }
        let mut buf = spare.take((end - at) as usize);
        let piece = match (&mut body).take(end - at).read_to_end(&mut buf) {
            Ok(n) if n as u64 == end - at => Ok((at, buf)),
            Ok(_) => Err(opener.ends_before(&f.pack, end)),
            Err(e) => Err(Error::Io { context: format!("reading {}", opener.pack_url(&f.pack)), source: e }),
        };
        let failed = piece.is_err();
        if pieces.send(piece).is_err() || failed {
            return;
        }
        at = end;
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
