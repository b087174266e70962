//! Compression codecs for the archive stream: none (`.tar`), zstd with worker threads and
//! incompressible stretches stored (`.tar.zst`, `zst.rs`), zlib (the `.ab` container). Owns
//! levels and thread counts; knows nothing of tar or of where the bytes go.
//!
//! Every encoder must be finished explicitly (`Encoder::finish`): dropping one loses the end
//! of the stream, the classic truncated archive.

pub mod parzlib;
pub mod zst;

use std::io::{self, Write};

use parzlib::ParZlib;
use zst::Zstd;

/// Input per zstd worker job: zstd's minimum (BENCHMARKS.md, "Figures behind constants").
const ZSTD_JOB: u32 = 512 << 10;
/// Window a job's worker loads first: 2^(3-9) of it, 32 KiB at level 3 (BENCHMARKS.md, "Figures behind constants").
const ZSTD_OVERLAP_LOG: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Zstd {
        level: i32,
        workers: u32,
    },
    /// zlib; with more than one worker, compressed in parallel blocks (still one stream).
    Zlib {
        level: u32,
        workers: u32,
    },
}

impl Codec {
    /// zstd level 3 (the CLI's default), workers on every core.
    pub fn zstd_default() -> Codec {
        // Two workers per core: one per core idles the cores (BENCHMARKS.md, "Figures behind constants").
        Codec::Zstd { level: 3, workers: 2 * cores() }
    }

    /// zlib level 6 on every core: the `.ab` default.
    pub fn zlib_default() -> Codec {
        Codec::Zlib { level: 6, workers: cores() }
    }
}

fn cores() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

pub enum Encoder<W: Write> {
    None(W),
    Zstd(Zstd<W>),
    Zlib(flate2::write::ZlibEncoder<W>),
    ParZlib(ParZlib<W>),
}

impl<W: Write> Encoder<W> {
    pub fn new(codec: Codec, out: W) -> io::Result<Encoder<W>> {
        Ok(match codec {
            Codec::None => Encoder::None(out),
            // 512 KiB jobs keep the encoder near 10 MiB (BENCHMARKS.md, "Figures behind constants").
            Codec::Zstd { level, workers } => {
                Encoder::Zstd(Zstd::new(out, level, workers, ZSTD_JOB, ZSTD_OVERLAP_LOG)?)
            }
            Codec::Zlib { level, workers } if workers > 1 => Encoder::ParZlib(ParZlib::new(out, level, workers)?),
            Codec::Zlib { level, .. } => {
                Encoder::Zlib(flate2::write::ZlibEncoder::new(out, flate2::Compression::new(level)))
            }
        })
    }

    /// End the compressed stream and hand back the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Encoder::Zstd(e) => e.finish(),
            Encoder::Zlib(e) => e.finish(),
            Encoder::ParZlib(e) => e.finish(),
        }
    }

    pub fn get_mut(&mut self) -> &mut W {
        match self {
            Encoder::None(w) => w,
            Encoder::Zstd(e) => e.get_mut(),
            Encoder::Zlib(e) => e.get_mut(),
            Encoder::ParZlib(e) => e.get_mut(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Zlib(e) => e.write(buf),
            Encoder::ParZlib(e) => e.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
            Encoder::Zlib(e) => e.write_all(buf),
            Encoder::ParZlib(e) => e.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Zlib(e) => e.flush(),
            Encoder::ParZlib(e) => e.flush(),
        }
    }
}
