//! A file's bytes from the archive onto the disk, as fast as the disk takes them: large files
//! around the page cache (`O_DIRECT`, in aligned blocks), their writeback started as soon as
//! they are written; the small ones flushed by a thread of their own every so often, so that
//! the flush before the commit finds little left. Holes of a sparse file stay holes.
//!
//! It creates a file only where no name exists and never through a symlink, and tells an
//! archive that ends inside a file (its fault) from a disk that refuses a write (ours).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::sys;

/// The copy buffer: 1 MiB of aligned blocks, and room to align its start.
pub(super) const COPY_BUF: usize = 1024 * 1024 + ALIGN;
/// Files at least this large, and not sparse, are written around the page cache (O_DIRECT).
const DIRECT_MIN: u64 = 1024 * 1024;
/// What O_DIRECT asks of a buffer's address and length, and of the file offset.
pub(super) const ALIGN: usize = 4096;
/// Files at least this large have their writeback started as soon as they are written.
pub(super) const WRITEBACK_MIN: u64 = 1024 * 1024;
/// The smaller files are flushed in the background each time this much of them is written,
/// each counted with a block for its inode.
const FLUSH_EVERY: u64 = 16 * 1024 * 1024;

/// Which side of a copy failed: the archive (its fault) or the disk (ours).
pub(super) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// A new file, never through a symlink and never over an existing name.
pub(super) fn create_file(local: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(local)
}

/// Write `size` bytes of `data` into `file` (new and empty), through `buf`.
pub(super) fn write_file(
    mut file: File,
    data: &mut dyn Read,
    size: u64,
    sparse: bool,
    buf: &mut [u8],
) -> Result<File, CopyError> {
    // Large files skip the page cache (BENCHMARKS.md, issue 7 third run: "Large files around
    // the page cache").
    if !sparse && size >= DIRECT_MIN {
        let off = (ALIGN - (buf.as_ptr() as usize % ALIGN)) % ALIGN;
        let len = buf.len().saturating_sub(off) / ALIGN * ALIGN;
        if len > 0 && sys::set_direct(&file, true) {
            write_direct(&mut file, data, size, &mut buf[off..off + len])?;
            return Ok(file);
        }
    }
    let mut remaining = size;
    let mut holes = false;
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        let n = match data.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        if n == 0 {
            return Err(ended_inside());
        }
        write_chunk(&mut file, &buf[..n], sparse, &mut holes).map_err(CopyError::Write)?;
        remaining -= n as u64;
    }
    if holes {
        file.set_len(size).map_err(CopyError::Write)?;
    }
    Ok(file)
}

/// Write `size` bytes of `data` with O_DIRECT set on `file` (`buf` aligned, a multiple of
/// `ALIGN` long): whole blocks straight to the disk, the last partial block through the page
/// cache. From a write the device refuses or cuts short on, the rest of the file goes through
/// the page cache instead.
fn write_direct(file: &mut File, data: &mut dyn Read, size: u64, buf: &mut [u8]) -> Result<(), CopyError> {
    let mut remaining = size;
    let mut direct = true;
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        data.read_exact(&mut buf[..want]).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ended_inside(),
            _ => CopyError::Read(e),
        })?;
        let mut done = 0;
        if direct {
            let blocks = want / ALIGN * ALIGN;
            while done < blocks && done % ALIGN == 0 {
                match file.write(&buf[done..blocks]) {
                    Ok(0) => return Err(CopyError::Write(io::ErrorKind::WriteZero.into())),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                    Err(e) => return Err(CopyError::Write(e)),
                }
            }
            if done < want {
                sys::set_direct(file, false);
                direct = false;
            }
        }
        file.write_all(&buf[done..want]).map_err(CopyError::Write)?;
        remaining -= want as u64;
    }
    Ok(())
}

fn ended_inside() -> CopyError {
    CopyError::Read(io::Error::new(io::ErrorKind::UnexpectedEof, "the archive ends inside this file"))
}

fn write_chunk(file: &mut File, data: &[u8], sparse: bool, holes: &mut bool) -> io::Result<()> {
    if !sparse {
        return file.write_all(data);
    }
    // Keep holes as holes: skip 4 KiB blocks of zeros instead of writing them.
    for block in data.chunks(4096) {
        if block.iter().all(|b| *b == 0) {
            file.seek(SeekFrom::Current(block.len() as i64))?;
            *holes = true;
        } else {
            file.write_all(block)?;
        }
    }
    Ok(())
}

/// Starts the disk on the small files while the archive goes on. Started one file at a time,
/// their writeback would cost the thread that writes them (the one that limits the import
/// while small files come); the final `syncfs` alone leaves the disk idle until the end.
/// Instead, every `FLUSH_EVERY` bytes a thread of its own flushes the filesystem: the kernel's
/// writeback then runs on the core the writing thread leaves idle.
#[derive(Default)]
pub(super) struct Flusher {
    unflushed: u64,
    running: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    /// `bytes` more were written in `dir`.
    pub(super) fn wrote(&mut self, bytes: u64, dir: &Path) {
        self.unflushed += bytes;
        if self.unflushed < FLUSH_EVERY || self.running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        self.unflushed = 0;
        let dir = dir.to_path_buf();
        // Advisory: the flush before the commit is the one whose failure counts.
        self.running = std::thread::Builder::new()
            .name("flush".into())
            .spawn(move || {
                if let Err(e) = sys::sync_fs(&dir) {
                    tracing::debug!("flushing ahead of the commit: {e}");
                }
            })
            .ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A reader that hands out at most 7,777 bytes a call, as a decompressor may.
    struct Dribble<'a>(&'a [u8]);

    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.0.len()).min(7777);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn large_files_written_around_the_page_cache_hold_exactly_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        if !sys::set_direct(&create_file(&dir.path().join("probe")).unwrap(), true) {
            eprintln!("O_DIRECT is refused in {}: only the page-cache path is tested", dir.path().display());
        }
        // An unaligned buffer, as the Unpacker's Vec may be.
        let mut buf = vec![0u8; COPY_BUF + 1];
        for size in [DIRECT_MIN as usize, DIRECT_MIN as usize + 1, 3 * (1 << 20) + 4095, 5_000_000] {
            let path = dir.path().join(format!("f{size}"));
            let file = create_file(&path).unwrap();
            write_file(file, &mut Dribble(&data[..size]), size as u64, false, &mut buf[1..])
                .unwrap_or_else(|_| panic!());
            assert!(fs::read(&path).unwrap() == data[..size], "{size} bytes restored differently");
        }
        // An archive that ends inside the file says so.
        let path = dir.path().join("short");
        let e = write_file(create_file(&path).unwrap(), &mut Dribble(&data[..2_000_000]), 3_000_000, false, &mut buf);
        match e {
            Err(CopyError::Read(e)) => assert!(e.to_string().contains("ends inside this file"), "{e}"),
            _ => panic!("a short archive was not noticed"),
        }
    }
}
