//! SHA-256 and byte counts of the archive stream exactly as stored (after compression), on
//! the way out (`HashWriter`) and on the way in (`HashReader`). This is what manifests record
//! and what `import` and `verify` check.
//!
//! It never buffers: every byte passes straight through.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Byte counter shared with a progress display.
pub type Counter = Arc<AtomicU64>;

pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: Counter,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W, count: Counter) -> Self {
        HashWriter { inner, hasher: Sha256::new(), count }
    }

    /// The inner writer, the hex SHA-256 and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        let n = self.count.load(Ordering::Relaxed);
        (self.inner, hex::encode(self.hasher.finalize()), n)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: Counter,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R, count: Counter) -> Self {
        HashReader { inner, hasher: Sha256::new(), count }
    }

    /// Read whatever is left (so the digest covers the whole object), then return the hex
    /// SHA-256 and the byte count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex::encode(self.hasher.finalize()), self.count.load(Ordering::Relaxed)))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
