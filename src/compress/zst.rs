//! The zstd encoder of `.tar.zst`: zstd frames for what compresses, frames of stored blocks
//! for what does not (photos, videos, the compressed members of APKs). Both are plain zstd
//! (RFC 8878); any decoder reads the concatenated frames as one stream.
//!
//! Owns the choice between compressing and storing, made per 128 KiB segment: a sample of its
//! bytes must look uniform, and zstd at level 1 must gain under 1% on it (tried on one segment
//! in four). It must never store what zstd shrinks more than that (zip members, whose headers
//! repeat, and flat images are near-uniform bytes too), and never end a compressed frame for a
//! single stray segment: ending one waits for every worker.

use std::io::{self, Write};

use zstd::stream::raw::{CParameter, Encoder as Cctx, InBuffer, Operation, OutBuffer};

/// The unit of the choice, and the size of a stored block: zstd's largest block.
const SEGMENT: usize = 128 << 10;
/// A segment shorter than this is compressed without looking (a stored one saves little).
const MIN_LOOK: usize = 16 << 10;
/// The sample: the first `RUN` bytes of every `STRIDE`, 8 KiB of a full segment.
const RUN: usize = 64;
const STRIDE: usize = 1024;
/// Uniform: collision entropy ≥ 7.85 bits/byte, Σ count²/n² ≤ 1/230.7 (BENCHMARKS.md, "Figures behind constants").
const COLLISION_DIVISOR: u64 = 230;
/// One uniform-looking segment in this many is compressed at level 1 to see whether storing
/// is right; the verdict holds for the segments between.
const TRIAL_EVERY: u32 = 4;
/// Stored when the trial gains less than 1%.
const TRIAL_GAIN_PERCENT: u64 = 1;

/// The header of a frame of stored blocks: magic, then a descriptor with no content size, no
/// checksum, no dictionary (0x00), then a window of 128 KiB (0x38: 2^(10+7)), which bounds a
/// block to 128 KiB and the decoder's buffer to as much. The manifest's SHA-256 of the
/// archive covers these bytes as it covers the rest.
const STORED_FRAME: [u8; 6] = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
/// An empty stored block with the last-block bit: the end of a stored frame.
const STORED_END: [u8; 3] = [0x01, 0x00, 0x00];

/// zstd at `level`, on `workers` threads (1: on the caller's), content checksum in each
/// compressed frame.
pub struct Zstd<W: Write> {
    cctx: Cctx<'static>,
    out: Vec<u8>,
    inner: W,
    /// A stored frame is open (and no compressed one).
    storing: bool,
    /// The compressed frame has taken input since it began.
    fed: bool,
    /// The previous segment looked uniform.
    last_uniform: bool,
    /// Level 1, one-shot, for the trials; and its output.
    trial: zstd::bulk::Compressor<'static>,
    trial_out: Vec<u8>,
    /// The last trial found storing right; it holds for `until_trial` more segments.
    verdict: bool,
    until_trial: u32,
    stored_bytes: u64,
}

impl<W: Write> Zstd<W> {
    pub fn new(inner: W, level: i32, workers: u32, job: u32, overlap_log: u32) -> io::Result<Zstd<W>> {
        let mut cctx = Cctx::new(level)?;
        if workers > 1 {
            cctx.set_parameter(CParameter::NbWorkers(workers))?;
            cctx.set_parameter(CParameter::JobSize(job))?;
            cctx.set_parameter(CParameter::OverlapSizeLog(overlap_log))?;
        }
        cctx.set_parameter(CParameter::ChecksumFlag(true))?;
        Ok(Zstd {
            cctx,
            out: Vec::with_capacity(zstd::zstd_safe::CCtx::out_size()),
            inner,
            storing: false,
            fed: false,
            last_uniform: false,
            trial: zstd::bulk::Compressor::new(1)?,
            trial_out: Vec::with_capacity(zstd::zstd_safe::compress_bound(SEGMENT)),
            verdict: false,
            until_trial: 0,
            stored_bytes: 0,
        })
    }

    /// Bytes written in stored blocks so far.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// End the open frame and hand back the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        tracing::debug!("zstd: {} bytes stored as they were", self.stored_bytes);
        if self.storing {
            self.inner.write_all(&STORED_END)?;
        } else {
            // Even with no input: an empty stream is still one valid (empty) frame.
            self.end_compressed()?;
        }
        self.inner.flush()?;
        Ok(self.inner)
    }

    fn segment(&mut self, seg: &[u8]) -> io::Result<()> {
        let uniform = looks_uniform(seg);
        // Storing starts at the second uniform segment in a row: one stray segment is not
        // worth ending a compressed frame for.
        if uniform && (self.storing || self.last_uniform) && self.storing_is_right(seg)? {
            if !self.storing {
                if self.fed {
                    self.end_compressed()?;
                }
                self.inner.write_all(&STORED_FRAME)?;
                self.storing = true;
            }
            // Block header: the size above the type (0: stored) and the last-block bit (0).
            let header = ((seg.len() as u32) << 3).to_le_bytes();
            self.inner.write_all(&header[..3])?;
            self.inner.write_all(seg)?;
            self.stored_bytes += seg.len() as u64;
        } else {
            if self.storing {
                self.inner.write_all(&STORED_END)?;
                self.storing = false;
            }
            self.compress(seg)?;
        }
        self.last_uniform = uniform;
        Ok(())
    }

    /// The verdict of a trial at level 1, taken on this segment when one is due.
    fn storing_is_right(&mut self, seg: &[u8]) -> io::Result<bool> {
        if self.until_trial == 0 {
            self.trial_out.clear();
            let size = self.trial.compress_to_buffer(seg, &mut self.trial_out)? as u64;
            self.verdict = size * 100 >= seg.len() as u64 * (100 - TRIAL_GAIN_PERCENT);
            self.until_trial = TRIAL_EVERY;
        }
        self.until_trial -= 1;
        Ok(self.verdict)
    }

    fn compress(&mut self, seg: &[u8]) -> io::Result<()> {
        let mut src = InBuffer::around(seg);
        while src.pos() < seg.len() {
            self.out.clear();
            self.cctx.run(&mut src, &mut OutBuffer::around(&mut self.out))?;
            self.inner.write_all(&self.out)?;
        }
        self.fed = true;
        Ok(())
    }

    /// End the compressed frame (waiting for every worker) and make ready for the next.
    fn end_compressed(&mut self) -> io::Result<()> {
        self.drain(|cctx, out| cctx.finish(out, false))?;
        self.cctx.reinit()?;
        self.fed = false;
        Ok(())
    }

    /// Call `step` (an end or a flush) until it says nothing is left, writing what it produces.
    fn drain(
        &mut self,
        mut step: impl FnMut(&mut Cctx<'static>, &mut OutBuffer<'_, Vec<u8>>) -> io::Result<usize>,
    ) -> io::Result<()> {
        loop {
            self.out.clear();
            let left = step(&mut self.cctx, &mut OutBuffer::around(&mut self.out))?;
            self.inner.write_all(&self.out)?;
            if left == 0 {
                return Ok(());
            }
        }
    }
}

impl<W: Write> Write for Zstd<W> {
    /// Takes one segment at most: what it says it took is all handled.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(SEGMENT);
        self.segment(&buf[..n])?;
        Ok(n)
    }

    /// Flushes what the compressor has produced so far (a compressed frame stays open).
    fn flush(&mut self) -> io::Result<()> {
        if !self.storing {
            self.drain(|cctx, out| cctx.flush(out))?;
        }
        self.inner.flush()
    }
}

/// Whether a segment's sample has near-uniform bytes (see `COLLISION_DIVISOR`).
pub(crate) fn looks_uniform(seg: &[u8]) -> bool {
    if seg.len() < MIN_LOOK {
        return false;
    }
    let mut counts = [0u32; 256];
    let mut n = 0u64;
    for run in seg.chunks(STRIDE) {
        for &b in &run[..run.len().min(RUN)] {
            counts[b as usize] += 1;
        }
        n += run.len().min(RUN) as u64;
    }
    let sum_sq: u64 = counts.iter().map(|&c| u64::from(c) * u64::from(c)).sum();
    sum_sq * COLLISION_DIVISOR <= n * n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::noise as random;
    use std::io::Read;

    fn text(len: usize) -> Vec<u8> {
        let words = ["alpha ", "beta ", "gamma ", "delta\n", "epsilon ", "zeta ", "eta, ", "theta; "];
        let mut v = Vec::with_capacity(len + 8);
        let mut i = 7u64;
        while v.len() < len {
            i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            v.extend_from_slice(words[(i >> 61) as usize].as_bytes());
        }
        v.truncate(len);
        v
    }

    fn encode(input: &[u8], workers: u32, write: usize) -> (Vec<u8>, u64) {
        let mut z = Zstd::new(Vec::new(), 3, workers, 512 << 10, 3).unwrap();
        for piece in input.chunks(write) {
            z.write_all(piece).unwrap();
        }
        let stored = z.stored_bytes();
        (z.finish().unwrap(), stored)
    }

    fn decode(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(bytes).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn random_is_stored_text_compressed_and_all_of_it_decodes() {
        // Text, a photo, text, a photo ending the stream: every switch, both directions.
        let mut input = text(3 << 20);
        input.extend(random(5 << 20, 1));
        input.extend(text(1 << 20));
        input.extend(random(2 << 20, 2));
        for workers in [1, 4] {
            for write in [1 << 20, 100_000] {
                let (z, stored) = encode(&input, workers, write);
                assert_eq!(decode(&z), input, "workers {workers}, writes of {write}");
                // All but the first segment of each random stretch (and a boundary one).
                assert!(stored >= (7 << 20) - 4 * SEGMENT as u64, "stored {stored}");
                assert!(stored <= 7 << 20, "stored {stored}: text was stored");
                // The random part costs 3 bytes per 128 KiB block plus the frame headers, and
                // the text restarts its frame: within 0.1% of the text alone plus the random.
                let text_only = encode(&text(4 << 20), workers, write).0.len();
                assert!(z.len() < text_only + (7 << 20) + 8192, "{} bytes, text alone {text_only}", z.len());
            }
        }
    }

    #[test]
    fn compressible_data_is_never_stored() {
        // Text, SQLite-like pages, and bytes 0..200 at random (7.64 bits: zstd still gains).
        let mut input = text(2 << 20);
        for page in 0..256u32 {
            let mut p = b"SQLite format 3\0".to_vec();
            p.extend(page.to_be_bytes());
            p.extend(text(2000 + (page as usize % 7) * 200));
            p.resize(4096, 0);
            input.extend(p);
        }
        input.extend(random(2 << 20, 3).iter().map(|b| b % 200));
        let (z, stored) = encode(&input, 2, 1 << 20);
        assert_eq!(stored, 0);
        assert_eq!(decode(&z), input);
    }

    #[test]
    fn uniform_bytes_that_repeat_are_compressed() {
        // Every 3,000 random bytes twice over: uniform bytes that zstd halves, like the
        // repeated headers of a zip's members or the flat areas of a drawing.
        let mut input = Vec::new();
        for i in 0..1400 {
            let block = random(3000, 100 + i);
            input.extend(&block);
            input.extend(&block);
        }
        assert!(looks_uniform(&input[..SEGMENT]));
        let (z, stored) = encode(&input, 2, 1 << 20);
        assert_eq!(stored, 0);
        assert!(z.len() < input.len() * 6 / 10, "{} bytes", z.len());
        assert_eq!(decode(&z), input);
    }

    #[test]
    fn a_stream_of_stored_frames_alone_is_valid() {
        // The first segment is compressed (no run yet), then stored to the end; and an empty
        // stream is one empty frame.
        let input = random(1 << 20, 4);
        let (z, stored) = encode(&input, 1, 1 << 20);
        assert_eq!(stored, (1 << 20) - SEGMENT as u64);
        assert_eq!(decode(&z), input);
        assert!(decode(&encode(&[], 2, 1).0).is_empty());
    }

    #[test]
    fn the_sample_tells_random_from_near_random() {
        let rnd = random(SEGMENT, 5);
        assert!(looks_uniform(&rnd));
        let mut skewed = rnd.clone();
        for b in skewed.iter_mut().step_by(8) {
            *b = 0;
        }
        assert!(!looks_uniform(&skewed), "one byte in 8 the same: compressible");
        assert!(!looks_uniform(&rnd[..MIN_LOOK - 1]), "too short to look at");
        assert!(!looks_uniform(&vec![0u8; SEGMENT]));
    }
}
