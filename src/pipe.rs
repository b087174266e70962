//! Bridges between stages that run on different threads: a producer writes into a `PipeWriter`
//! on its own thread, the consumer reads a `PipeReader`; between them a bounded channel of
//! chunks, so memory stays at `CHUNK × DEPTH` whatever the stream's size.
//!
//! It never buffers without bound and never swallows an error: a producer's failure reaches the
//! reader as an error, and the producer's own result comes back from `Background::join`.

use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

const CHUNK: usize = 1 << 20;
const DEPTH: usize = 4;

pub struct PipeWriter {
    tx: SyncSender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader stopped"))
    }
}

pub struct PipeReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the producer finished
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A producer running on its own thread.
pub struct Background<T> {
    handle: JoinHandle<Result<T>>,
}

impl<T> Background<T> {
    /// The producer's result. Call after the reader reached EOF or was dropped.
    pub fn join(self) -> Result<T> {
        self.handle.join().map_err(|_| Error::usage("a background stage panicked"))?
    }
}

/// Run `produce` on a thread of its own, writing into the pipe whose reading end is returned.
pub fn background<T, F>(name: &str, produce: F) -> Result<(PipeReader, Background<T>)>
where
    T: Send + 'static,
    F: FnOnce(&mut PipeWriter) -> Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(DEPTH);
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let mut w = PipeWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
            let r = produce(&mut w).and_then(|t| {
                w.flush().map_err(|e| Error::Io { context: "handing data to the next stage".into(), source: e })?;
                Ok(t)
            });
            if let Err(e) = &r {
                // Tell the reader why the stream stops here.
                let _ = tx.send(Err(io::Error::other(e.to_string())));
            }
            r
        })
        .map_err(|e| Error::Io { context: format!("starting the {name} thread"), source: e })?;
    Ok((PipeReader { rx, chunk: Vec::new(), pos: 0 }, Background { handle }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_and_errors_propagate() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        let d2 = data.clone();
        let (mut r, bg) = background("t", move |w| {
            for c in d2.chunks(7777) {
                w.write_all(c).map_err(|e| Error::Io { context: "w".into(), source: e })?;
            }
            Ok(42)
        })
        .unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(bg.join().unwrap(), 42);

        let (mut r, bg) = background::<(), _>("t", |w| {
            w.write_all(b"abc").map_err(|e| Error::Io { context: "w".into(), source: e })?;
            Err(Error::archive("zstd stream", "corrupt"))
        })
        .unwrap();
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        assert!(e.to_string().contains("corrupt"));
        assert!(bg.join().is_err());
    }
}
