//! Parallel zlib, the pigz way: the input is cut into blocks, each compressed on a worker
//! thread as raw deflate primed with the previous block's last 32 KiB (so the ratio stays that
//! of one stream) and ended with a sync flush; the writer puts the blocks back in order between
//! one zlib header and one Adler-32 trailer. The result is a single ordinary zlib stream that
//! Android's `InflaterInputStream` and `zlib-flate -uncompress` read.
//!
//! Memory is bounded: at most `2 × workers` blocks are in flight. It never reorders output.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress, Status};

/// Input per block. Large enough that the sync-flush marks (4–5 bytes) and the priming cost
/// vanish; small enough that two cores stay busy.
const BLOCK: usize = 256 * 1024;
/// Deflate's window: how much of the previous block primes the next.
const DICT: usize = 32 * 1024;

struct Job {
    input: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
    reply: SyncSender<io::Result<(Vec<u8>, u32, usize)>>,
}

pub struct ParZlib<W: Write> {
    out: W,
    block: Vec<u8>,
    dict: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    pending: VecDeque<Receiver<io::Result<(Vec<u8>, u32, usize)>>>,
    max_pending: usize,
    adler: u32,
}

impl<W: Write> ParZlib<W> {
    pub fn new(mut out: W, level: u32, workers: u32) -> io::Result<ParZlib<W>> {
        let workers = workers.max(1) as usize;
        out.write_all(&header(level))?;
        let (tx, rx) = mpsc::sync_channel::<Job>(workers * 2);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let mut handles = Vec::new();
        for i in 0..workers {
            let rx = rx.clone();
            let h = std::thread::Builder::new().name(format!("zlib-{i}")).spawn(move || {
                let mut c = Compress::new(Compression::new(level), false);
                loop {
                    let job = match rx.lock() {
                        Ok(g) => g.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let r = compress_block(&mut c, &job);
                    let _ = job.reply.send(r);
                }
            })?;
            handles.push(h);
        }
        Ok(ParZlib {
            out,
            block: Vec::with_capacity(BLOCK),
            dict: Vec::new(),
            jobs: Some(tx),
            workers: handles,
            pending: VecDeque::new(),
            max_pending: workers * 2,
            adler: 1,
        })
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let input = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let next_dict = input[input.len().saturating_sub(DICT)..].to_vec();
        let dict = std::mem::replace(&mut self.dict, next_dict);
        let (reply, rx) = mpsc::sync_channel(1);
        let jobs = self.jobs.as_ref().ok_or_else(|| io::Error::other("zlib stream already finished"))?;
        jobs.send(Job { input, dict, last, reply }).map_err(|_| io::Error::other("zlib worker stopped"))?;
        self.pending.push_back(rx);
        while self.pending.len() > self.max_pending {
            self.collect_one()?;
        }
        Ok(())
    }

    fn collect_one(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else { return Ok(()) };
        let (bytes, adler, len) = rx.recv().map_err(|_| io::Error::other("zlib worker stopped"))??;
        self.adler = zlib_rs::adler32::adler32_combine(self.adler, adler, len as u64);
        self.out.write_all(&bytes)
    }

    /// The last block, the trailer; hands back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.collect_one()?;
        }
        self.jobs = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        let adler = self.adler;
        self.out.write_all(&adler.to_be_bytes())?;
        self.out.flush()?;
        // `self` has no Drop impl: moving the writer out is fine.
        Ok(self.out)
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

impl<W: Write> Write for ParZlib<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn compress_block(c: &mut Compress, job: &Job) -> io::Result<(Vec<u8>, u32, usize)> {
    c.reset();
    if !job.dict.is_empty() {
        c.set_dictionary(&job.dict).map_err(io::Error::other)?;
    }
    let flush = if job.last { FlushCompress::Finish } else { FlushCompress::Sync };
    let mut out = Vec::with_capacity(job.input.len() + job.input.len() / 16 + 64);
    let start_in = c.total_in();
    loop {
        let consumed = (c.total_in() - start_in) as usize;
        let status = c.compress_vec(&job.input[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let all_in = (c.total_in() - start_in) as usize == job.input.len();
        let room_left = out.len() < out.capacity();
        match status {
            Status::StreamEnd => break,
            _ if all_in && room_left && !job.last => break,
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
    Ok((out, zlib_rs::adler32::adler32(1, &job.input), job.input.len()))
}

/// The two zlib header bytes for deflate with a 32 KiB window at `level`.
fn header(level: u32) -> [u8; 2] {
    let cmf: u8 = 0x78;
    let flevel: u8 = match level {
        0 | 1 => 0,
        2..=5 => 1,
        6 => 2,
        _ => 3,
    };
    let mut flg = flevel << 6;
    let rem = ((u16::from(cmf) << 8) | u16::from(flg)) % 31;
    if rem != 0 {
        flg += (31 - rem) as u8;
    }
    [cmf, flg]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(data: &[u8], level: u32, workers: u32) -> Vec<u8> {
        let mut z = ParZlib::new(Vec::new(), level, workers).unwrap();
        for chunk in data.chunks(10_007) {
            z.write_all(chunk).unwrap();
        }
        let out = z.finish().unwrap();
        let mut back = Vec::new();
        flate2::read::ZlibDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        out
    }

    #[test]
    fn one_valid_zlib_stream_in_any_case() {
        assert_eq!(header(9), [0x78, 0xDA]);
        assert_eq!(header(6), [0x78, 0x9C]);
        assert_eq!(header(1), [0x78, 0x01]);
        roundtrip(b"", 6, 2);
        roundtrip(b"x", 9, 3);
        let text: Vec<u8> =
            (0..3_000_000u32).map(|i| b"the quick brown fox "[(i % 20) as usize] ^ ((i / 7919) as u8 & 1)).collect();
        let par = roundtrip(&text, 6, 4);
        // The ratio stays within a whisker of single-stream zlib (priming with the dictionary).
        let mut single = flate2::write::ZlibEncoder::new(Vec::new(), Compression::new(6));
        single.write_all(&text).unwrap();
        let single = single.finish().unwrap();
        assert!(par.len() as f64 <= single.len() as f64 * 1.02 + 200.0, "{} vs {}", par.len(), single.len());
        let exact: Vec<u8> = (0..BLOCK * 3).map(|i| (i % 251) as u8).collect();
        roundtrip(&exact, 6, 2);
    }
}
