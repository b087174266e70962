//! Bridges between stages that run on different threads: one side writes into a `PipeWriter`,
//! the other reads a `PipeReader`; between them a bounded channel of chunks, so memory stays at
//! about `CHUNK × (DEPTH + 2)` whatever the stream's size. Chunks the reader is done with go
//! back to the writer to be filled again.
//!
//! A stream ends only when the writer says so (`PipeWriter::finish`): a writer dropped on the
//! way out of an error makes the reader fail, never see a clean end. That is what keeps a
//! half-written archive from being compressed to the end and published.

use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

const CHUNK: usize = 1 << 20;
const DEPTH: usize = 2;

enum Msg {
    Data(Vec<u8>),
    End,
    Fail(io::Error),
}

pub struct PipeWriter {
    tx: SyncSender<Msg>,
    /// Chunks the reader is done with, filled again instead of fresh ones: no allocation, and
    /// no page faulted in and zeroed, per megabyte.
    spent: Receiver<Vec<u8>>,
    /// Always `CHUNK` long; the first `filled` bytes are the stream's.
    buf: Vec<u8>,
    filled: usize,
}

impl PipeWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let mut next = self.spent.try_recv().unwrap_or_default();
        next.resize(CHUNK, 0);
        let mut chunk = std::mem::replace(&mut self.buf, next);
        chunk.truncate(std::mem::take(&mut self.filled));
        self.tx.send(Msg::Data(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the next stage stopped"))
    }

    /// Read `from` to its end straight into the pipe's chunks (no buffer in between). Its read
    /// errors come back as they are.
    pub fn fill_from(&mut self, from: &mut dyn Read) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            if self.filled == CHUNK {
                self.send_buf()?;
            }
            match from.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.filled += n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The clean end of the stream.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buf()?;
        self.tx.send(Msg::End).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the next stage stopped"))
    }

    /// End the stream with an error the reader will see.
    fn fail(self, e: io::Error) {
        let _ = self.tx.send(Msg::Fail(e));
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    /// Sends what is buffered; the stream goes on.
    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

pub struct PipeReader {
    rx: Receiver<Msg>,
    /// Where finished chunks go back to the writer.
    spent: Sender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(c)) => {
                    let done = std::mem::replace(&mut self.chunk, c);
                    if done.capacity() >= CHUNK {
                        // The writer may be gone already: then the chunk is just freed.
                        let _ = self.spent.send(done);
                    }
                    self.pos = 0;
                }
                Ok(Msg::End) => self.ended = true,
                Ok(Msg::Fail(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the stream stopped before its end"));
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = mpsc::sync_channel(DEPTH);
    let (spent_tx, spent_rx) = mpsc::channel();
    (
        PipeWriter { tx, spent: spent_rx, buf: vec![0; CHUNK], filled: 0 },
        PipeReader { rx, spent: spent_tx, chunk: Vec::new(), pos: 0, ended: false },
    )
}

/// A stage running on its own thread.
pub struct Background<T> {
    handle: JoinHandle<Result<T>>,
}

impl<T> Background<T> {
    /// The stage's result: call once its pipe has ended (or was dropped).
    pub fn join(self) -> Result<T> {
        self.handle.join().map_err(|_| Error::internal("a background stage panicked"))?
    }
}

fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<Background<T>> {
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| Error::Io { context: format!("starting the {name} thread"), source: e })?;
    Ok(Background { handle })
}

/// Run `produce` on a thread of its own, writing into the pipe whose reading end is returned.
/// The stream ends cleanly only if `produce` returns `Ok`.
pub fn produce_in_background<T, F>(name: &str, produce: F) -> Result<(PipeReader, Background<T>)>
where
    T: Send + 'static,
    F: FnOnce(&mut PipeWriter) -> Result<T> + Send + 'static,
{
    let (mut w, r) = pipe();
    let bg = spawn(name, move || match produce(&mut w) {
        Ok(t) => {
            w.finish().map_err(|e| Error::Io { context: "handing data to the next stage".into(), source: e })?;
            Ok(t)
        }
        Err(e) => {
            w.fail(io::Error::other(e.to_string()));
            Err(e)
        }
    })?;
    Ok((r, bg))
}

/// Run `consume` on a thread of its own, reading the pipe whose writing end is returned.
pub fn consume_in_background<T, F>(name: &str, consume: F) -> Result<(PipeWriter, Background<T>)>
where
    T: Send + 'static,
    F: FnOnce(&mut PipeReader) -> Result<T> + Send + 'static,
{
    let (w, mut r) = pipe();
    let bg = spawn(name, move || consume(&mut r))?;
    Ok((w, bg))
}

/// Of two stages' errors, the one that explains. A stage that fails on its own (a store that
/// gives up, a corrupt stream) breaks the pipe under the other, whose error then only says
/// that the stream stopped (or quotes the first one): the other side's error wins unless it
/// is itself just a broken pipe.
pub fn root_cause(here: Error, there: Result<impl Sized>) -> Error {
    match there {
        Err(e) if !is_broken_pipe(&e) => e,
        _ => here,
    }
}

pub fn is_broken_pipe(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => source.kind() == io::ErrorKind::BrokenPipe,
        Error::Archive { reason, .. } => {
            reason.contains("stopped before its end") || reason.contains("next stage stopped")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn werr(e: io::Error) -> Error {
        Error::Io { context: "w".into(), source: e }
    }

    /// Read straight into the chunks, which go back to the writer to be filled again: every byte
    /// arrives once and in order, across many more chunks than are ever alive at once.
    #[test]
    fn chunks_filled_from_a_reader_and_reused_carry_the_stream() {
        let data: Vec<u8> =
            (0..(9 * CHUNK as u32 + 12_345)).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
        let d2 = data.clone();
        let (mut r, bg) = produce_in_background("t", move |w| {
            let n = w.fill_from(&mut d2.as_slice()).map_err(werr)?;
            w.write_all(b"tail").map_err(werr)?;
            Ok(n)
        })
        .unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 7777];
        loop {
            let n = r.read(&mut small).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(bg.join().unwrap(), data.len() as u64);
        assert!(got.len() == data.len() + 4 && got[..data.len()] == data[..] && got.ends_with(b"tail"));
    }

    #[test]
    fn bytes_arrive_in_order_and_errors_propagate() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        let d2 = data.clone();
        let (mut r, bg) = produce_in_background("t", move |w| {
            for c in d2.chunks(7777) {
                w.write_all(c).map_err(werr)?;
            }
            Ok(42)
        })
        .unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(bg.join().unwrap(), 42);

        let (mut r, bg) = produce_in_background::<(), _>("t", |w| {
            w.write_all(b"abc").map_err(werr)?;
            Err(Error::archive("zstd stream", "corrupt"))
        })
        .unwrap();
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("corrupt"));
        assert!(bg.join().is_err());
    }

    #[test]
    fn a_dropped_writer_is_never_a_clean_end() {
        // A consumer that counts what it reads to the stream's end, fed 3 MB.
        let counting = || {
            let (mut w, bg) = consume_in_background("t", |r| {
                let mut v = Vec::new();
                r.read_to_end(&mut v).map_err(werr)?;
                Ok(v.len())
            })
            .unwrap();
            w.write_all(&[1u8; 3_000_000]).unwrap();
            (w, bg)
        };
        let (w, bg) = counting();
        drop(w);
        let e = bg.join().unwrap_err();
        assert!(is_broken_pipe(&e), "{e}");

        let (w, bg) = counting();
        w.finish().unwrap();
        assert_eq!(bg.join().unwrap(), 3_000_000);
    }
}
