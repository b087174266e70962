//! Content-defined chunking (FastCDC 2020, the `fastcdc` crate's cut function): where a byte
//! stream is cut into chunks, so that an insertion moves only the cuts near it and equal
//! content makes equal chunks in every file and on every phone.
//!
//! Owns the parameters (kept in the repository's config: changing them would change every id)
//! and one buffer that a file is read through. It never holds more than `max + READ` bytes.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// Chunk size bounds, bytes. Stored in `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Params {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Params {
    /// File content: about 1 MiB on average (restic's 512 KiB / 1 MiB / 8 MiB, with a smaller
    /// maximum so a chunk in flight costs less memory on a phone).
    pub const FILES: Params = Params { min: 256 << 10, avg: 1 << 20, max: 4 << 20 };
    /// Tree bytes of a large directory: small chunks, so one new file re-uploads little.
    pub const TREES: Params = Params { min: 16 << 10, avg: 64 << 10, max: 256 << 10 };

    pub fn check(&self) -> bool {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        (fastcdc::v2020::MINIMUM_MIN..=fastcdc::v2020::MINIMUM_MAX).contains(&min)
            && (fastcdc::v2020::AVERAGE_MIN..=fastcdc::v2020::AVERAGE_MAX).contains(&avg)
            && (fastcdc::v2020::MAXIMUM_MIN..=fastcdc::v2020::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0
    }
}

/// How much is read from a file at a time.
const READ: usize = 1 << 20;

/// A cutter over a buffer: fill it (from a reader, or by pushing bytes), take chunks out.
pub struct Chunker {
    p: Params,
    masks: (u64, u64),
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Chunker {
    pub fn new(p: Params) -> Chunker {
        let masks = fastcdc::v2020::select_masks(p.avg as usize, fastcdc::v2020::Normalization::Level1);
        Chunker { p, masks, buf: Vec::new(), start: 0, end: 0 }
    }

    /// Forget what is buffered (a new file starts).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Make room at the end of the buffer for `n` more bytes.
    fn room(&mut self, n: usize) {
        if self.start > 0 && self.end + n > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end + n > self.buf.len() {
            // Exactly: at most a maximum chunk and one read, never a doubling beyond that.
            self.buf.reserve_exact(self.end + n - self.buf.len());
            self.buf.resize(self.end + n, 0);
        }
    }

    /// Append bytes (tree serialisation).
    pub fn push(&mut self, data: &[u8]) {
        self.room(data.len());
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
    }

    /// Read from `src` until a whole maximum chunk is buffered or the source ends; `limit` is
    /// how many bytes the source may still give. Returns the bytes read.
    pub fn fill(&mut self, src: &mut dyn Read, limit: u64) -> io::Result<usize> {
        let mut got = 0usize;
        let max = self.p.max as usize;
        while self.pending() < max && (got as u64) < limit {
            let want = READ.min((limit - got as u64).min(usize::MAX as u64) as usize);
            self.room(want);
            let n = match src.read(&mut self.buf[self.end..self.end + want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            self.end += n;
            got += n;
        }
        Ok(got)
    }

    /// The next chunk's length, when one can be cut: with `last`, whatever is buffered ends the
    /// stream; without, only when a maximum chunk's worth is buffered (a later byte could move
    /// the cut otherwise).
    pub fn next_len(&self, last: bool) -> Option<usize> {
        let pending = self.pending();
        if pending == 0 || (!last && pending < self.p.max as usize) {
            return None;
        }
        let (ms, ml) = self.masks;
        let (_, n) = fastcdc::v2020::cut(
            &self.buf[self.start..self.end],
            self.p.min as usize,
            self.p.avg as usize,
            self.p.max as usize,
            ms,
            ml,
            ms << 1,
            ml << 1,
        );
        Some(n.max(1).min(pending))
    }

    /// The next `n` buffered bytes (after `next_len`), and consume them.
    pub fn take(&mut self, n: usize) -> &[u8] {
        let s = self.start;
        self.start += n;
        &self.buf[s..s + n]
    }
}

/// Cut `data` whole (tests, small inputs).
pub fn cuts(p: Params, data: &[u8]) -> Vec<usize> {
    let mut c = Chunker::new(p);
    c.push(data);
    let mut out = Vec::new();
    while let Some(n) = c.next_len(true) {
        c.take(n);
        out.push(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::noise;

    const SMALL: Params = Params { min: 2048, avg: 8192, max: 32768 };

    #[test]
    fn cuts_follow_content_and_survive_an_insertion() {
        assert!(Params::FILES.check() && Params::TREES.check() && SMALL.check());
        assert!(!Params { min: 10, avg: 8192, max: 32768 }.check());
        let data = noise(1 << 20, 7);
        let a = cuts(SMALL, &data);
        assert_eq!(a.iter().sum::<usize>(), data.len());
        assert!(a.iter().all(|&n| n <= 32768));
        assert!(a[..a.len() - 1].iter().all(|&n| n >= 2048));
        let avg = data.len() / a.len();
        assert!((4096..=16384).contains(&avg), "average {avg}");
        // Insert 100 bytes near the start: all but the first few chunks keep their content.
        let mut edited = data[..5000].to_vec();
        edited.extend_from_slice(&[1u8; 100]);
        edited.extend_from_slice(&data[5000..]);
        let b = cuts(SMALL, &edited);
        let ends = |v: &[usize]| {
            let mut pos = 0;
            v.iter()
                .map(|n| {
                    pos += n;
                    pos
                })
                .collect::<Vec<_>>()
        };
        let before: std::collections::HashSet<usize> = ends(&a).into_iter().collect();
        let same = ends(&b).into_iter().filter(|&e| e > 5100 && before.contains(&(e - 100))).count();
        assert!(same + 3 >= a.len(), "{same} of {} cut points kept", a.len());
    }

    #[test]
    fn reading_in_pieces_cuts_as_whole() {
        let data = noise(300_000, 9);
        let whole = cuts(SMALL, &data);
        // A reader that gives a few bytes at a time.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(777);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut c = Chunker::new(SMALL);
        let mut src = Trickle(&data);
        let mut left = data.len() as u64;
        let mut got = Vec::new();
        loop {
            left -= c.fill(&mut src, left).unwrap() as u64;
            match c.next_len(left == 0) {
                Some(n) => {
                    c.take(n);
                    got.push(n);
                }
                None if left == 0 => break,
                None => {}
            }
        }
        assert_eq!(got, whole);
    }
}
