//! Tar writing. Owns the header layout: ustar headers, pax `x` records for what ustar cannot
//! hold (long or non-ASCII names, sizes over 8 GiB, nanosecond times, xattrs), and GNU sparse
//! headers for files with holes. Each file entry takes exactly the size its header announced,
//! whatever the file does while it is read.
//!
//! It must never follow a link, never write a header whose size disagrees with the data that
//! follows, and (in the Android flavor) never emit a type Android's reader rejects.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use super::{Flavor, Meta};

const BLOCK: usize = 512;
const COPY_BUF: usize = 256 * 1024;

/// What happened to a file's content while it was archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Exactly the announced size was read.
    Complete,
    /// The file ended early; the entry was padded with zeros to its header size.
    Shrunk { read: u64 },
    /// The file had more bytes than announced; the extra was left out.
    Grew,
}

pub struct TarWriter<W: Write> {
    out: W,
    flavor: Flavor,
    entries: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W, flavor: Flavor) -> Self {
        TarWriter { out, flavor, entries: 0, bytes: 0, buf: Vec::new() }
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Uncompressed tar bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What the tar may carry (links and sparse files only in the full flavour).
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn append_dir(&mut self, meta: &Meta) -> io::Result<()> {
        self.header(meta, b'5', 0, None, None)
    }

    pub fn append_symlink(&mut self, meta: &Meta, target: &[u8]) -> io::Result<()> {
        self.require_full("symlinks")?;
        self.header(meta, b'2', 0, Some(target), None)
    }

    /// A hard link to an entry written earlier in this archive (content stored once).
    pub fn append_hardlink(&mut self, meta: &Meta, target: &[u8]) -> io::Result<()> {
        self.require_full("hard links")?;
        self.header(meta, b'1', 0, Some(target), None)
    }

    /// A regular file of `size` bytes read from `src`.
    pub fn append_file(&mut self, meta: &Meta, size: u64, src: &mut dyn Read) -> io::Result<Content> {
        self.header(meta, b'0', size, None, None)?;
        let mut remaining = size;
        if self.buf.len() < COPY_BUF {
            self.buf.resize(COPY_BUF, 0);
        }
        let mut outcome = Content::Complete;
        while remaining > 0 {
            let want = remaining.min(self.buf.len() as u64) as usize;
            let n = match src.read(&mut self.buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                outcome = Content::Shrunk { read: size - remaining };
                self.zeros(remaining)?;
                break;
            }
            self.out.write_all(&self.buf[..n])?;
            remaining -= n as u64;
        }
        if outcome == Content::Complete {
            let mut probe = [0u8; 1];
            if src.read(&mut probe).unwrap_or(0) > 0 {
                outcome = Content::Grew;
            }
        }
        self.bytes += size;
        self.pad(size)?;
        Ok(outcome)
    }

    /// A sparse file: only the `data` regions `(offset, len)` are stored (GNU sparse format).
    pub fn append_sparse(
        &mut self,
        meta: &Meta,
        real_size: u64,
        data: &[(u64, u64)],
        file: &File,
    ) -> io::Result<Content> {
        self.require_full("sparse files")?;
        let stored: u64 = data.iter().map(|(_, l)| l).sum();
        self.header(meta, b'S', stored, None, Some((real_size, data)))?;
        if self.buf.len() < COPY_BUF {
            self.buf.resize(COPY_BUF, 0);
        }
        let mut outcome = Content::Complete;
        let mut done = 0u64;
        for &(offset, len) in data {
            let mut pos = 0u64;
            while pos < len {
                let want = (len - pos).min(self.buf.len() as u64) as usize;
                let n = match file.read_at(&mut self.buf[..want], offset + pos) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    outcome = Content::Shrunk { read: done };
                    self.zeros(len - pos)?;
                    break;
                }
                self.out.write_all(&self.buf[..n])?;
                pos += n as u64;
                done += n as u64;
            }
        }
        self.bytes += stored;
        self.pad(stored)?;
        Ok(outcome)
    }

    /// End the archive (two zero blocks) and hand back the writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; BLOCK * 2])?;
        self.bytes += (BLOCK * 2) as u64;
        self.out.flush()?;
        Ok(self.out)
    }

    fn require_full(&self, what: &str) -> io::Result<()> {
        if self.flavor == Flavor::Android {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} cannot be stored in an Android backup"),
            ));
        }
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        let zero = [0u8; 8192];
        while n > 0 {
            let k = n.min(zero.len() as u64) as usize;
            self.out.write_all(&zero[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
            self.bytes += (BLOCK - rem) as u64;
        }
        Ok(())
    }

    fn header(
        &mut self,
        meta: &Meta,
        kind: u8,
        size: u64,
        link: Option<&[u8]>,
        sparse: Option<(u64, &[(u64, u64)])>,
    ) -> io::Result<()> {
        let android = self.flavor == Flavor::Android;
        let mut pax = Pax::default();
        let mut h = [0u8; BLOCK];

        // Name: the ustar name field, or prefix + name, or a pax record.
        let mut name = meta.path.clone();
        if kind == b'5' && !android && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let clean = name.iter().all(|b| (0x20..0x7f).contains(b));
        let fits = (!android || clean) && split_name(&name, &mut h);
        if !fits {
            pax.record(b"path", &name);
            // Keep a readable, truncated name in the header for tools that ignore pax.
            h[..100].fill(0);
            h[345..500].fill(0);
            let short = &name[..name.len().min(99)];
            h[..short.len()].copy_from_slice(short);
            if std::str::from_utf8(&name).is_err() {
                pax.hdrcharset_binary = true;
            }
        }
        if let Some(link) = link {
            if link.len() <= 100 {
                h[157..157 + link.len()].copy_from_slice(link);
            } else {
                pax.record(b"linkpath", link);
                h[157..256].copy_from_slice(&link[..99]);
            }
            if std::str::from_utf8(link).is_err() {
                pax.hdrcharset_binary = true;
            }
        }

        octal(&mut h[100..108], u64::from(meta.mode & 0o7777));
        for (field, id, key) in [(108..116, meta.uid, &b"uid"[..]), (116..124, meta.gid, &b"gid"[..])] {
            if !octal(&mut h[field.clone()], u64::from(id)) {
                octal(&mut h[field], 0);
                if !android {
                    pax.record(key, id.to_string().as_bytes());
                }
            }
        }
        if !octal(&mut h[124..136], size) {
            // Over 8 GiB: pax size for everyone, base-256 as well for GNU-style readers.
            pax.record(b"size", size.to_string().as_bytes());
            if android {
                octal(&mut h[124..136], 0o77777777777);
            } else {
                base256(&mut h[124..136], size);
            }
        }
        let secs = meta.mtime.max(0) as u64;
        if !octal(&mut h[136..148], secs) || meta.mtime < 0 {
            octal(&mut h[136..148], 0);
            if !android {
                pax.record(b"mtime", meta.mtime.to_string().as_bytes());
            }
        } else if meta.mtime_nsec != 0 && !android {
            pax.record(b"mtime", format!("{}.{:09}", meta.mtime, meta.mtime_nsec).as_bytes());
        }
        if !android {
            for (k, v) in &meta.xattrs {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(k);
                pax.record(&key, v);
            }
        }
        h[156] = kind;
        if let Some((real, map)) = sparse {
            // Old GNU layout: the sparse map lives in the header and extension blocks.
            h[257..263].copy_from_slice(b"ustar ");
            h[263..265].copy_from_slice(b" \0");
            let mut map: Vec<(u64, u64)> = map.to_vec();
            if map.last().map(|(o, l)| o + l) != Some(real) {
                map.push((real, 0)); // GNU marks a trailing hole with an empty region at the end
            }
            let (head, rest) = map.split_at(map.len().min(4));
            for (i, (o, l)) in head.iter().enumerate() {
                num12(&mut h[386 + i * 24..398 + i * 24], *o);
                num12(&mut h[398 + i * 24..410 + i * 24], *l);
            }
            h[482] = u8::from(!rest.is_empty());
            num12(&mut h[483..495], real);
            self.emit_pax(&pax, &h, meta)?;
            checksum(&mut h);
            self.out.write_all(&h)?;
            self.bytes += BLOCK as u64;
            let chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
            for (ci, chunk) in chunks.iter().enumerate() {
                let mut ext = [0u8; BLOCK];
                for (i, (o, l)) in chunk.iter().enumerate() {
                    num12(&mut ext[i * 24..i * 24 + 12], *o);
                    num12(&mut ext[i * 24 + 12..i * 24 + 24], *l);
                }
                ext[504] = u8::from(ci + 1 < chunks.len());
                self.out.write_all(&ext)?;
                self.bytes += BLOCK as u64;
            }
        } else {
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            if android && !pax.is_empty() && !pax.has(b"size") {
                // Android's reader takes the size of a pax-described entry only from `size=`.
                pax.record(b"size", size.to_string().as_bytes());
            }
            self.emit_pax(&pax, &h, meta)?;
            checksum(&mut h);
            self.out.write_all(&h)?;
            self.bytes += BLOCK as u64;
        }
        self.entries += 1;
        Ok(())
    }

    fn emit_pax(&mut self, pax: &Pax, real: &[u8; BLOCK], meta: &Meta) -> io::Result<()> {
        if pax.is_empty() {
            return Ok(());
        }
        let body = pax.encode();
        // The x block is a copy of the real header (Android reads mode and mtime from it).
        let mut h = *real;
        h[..100].fill(0);
        let leaf = meta.path.rsplit(|b| *b == b'/').next().unwrap_or(b"entry");
        let mut pname = b"PaxHeader/".to_vec();
        pname.extend(leaf.iter().map(|b| if (0x20..0x7f).contains(b) { *b } else { b'_' }));
        pname.truncate(99);
        h[..pname.len()].copy_from_slice(&pname);
        h[345..500].fill(0);
        h[157..257].fill(0);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[482..500].fill(0);
        h[386..482].fill(0);
        h[156] = b'x';
        octal(&mut h[124..136], body.len() as u64);
        checksum(&mut h);
        self.out.write_all(&h)?;
        self.out.write_all(&body)?;
        self.bytes += (BLOCK + body.len()) as u64;
        self.pad(body.len() as u64)?;
        Ok(())
    }
}

/// A pax extended header's records (also what the reader's tests build archives with).
#[derive(Default)]
pub(crate) struct Pax {
    records: Vec<(Vec<u8>, Vec<u8>)>,
    hdrcharset_binary: bool,
}

impl Pax {
    pub(crate) fn record(&mut self, key: &[u8], value: &[u8]) {
        self.records.push((key.to_vec(), value.to_vec()));
    }
    fn has(&self, key: &[u8]) -> bool {
        self.records.iter().any(|(k, _)| k == key)
    }
    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut records: Vec<(&[u8], &[u8])> = Vec::new();
        if self.hdrcharset_binary {
            records.push((b"hdrcharset", b"BINARY"));
        }
        records.extend(self.records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        for (k, v) in records {
            // "LEN KEY=VALUE\n", where LEN counts its own digits.
            let base = k.len() + v.len() + 3;
            let mut len = base + 1;
            while len != base + len.to_string().len() {
                len = base + len.to_string().len();
            }
            out.extend_from_slice(len.to_string().as_bytes());
            out.push(b' ');
            out.extend_from_slice(k);
            out.push(b'=');
            out.extend_from_slice(v);
            out.push(b'\n');
        }
        out
    }
}

/// Put `name` into the ustar name (and prefix) fields; false when it does not fit.
fn split_name(name: &[u8], h: &mut [u8; BLOCK]) -> bool {
    if name.len() <= 100 {
        h[..name.len()].copy_from_slice(name);
        return true;
    }
    // prefix (≤155) + '/' + name (≤100), split at a slash.
    let trailing = name.ends_with(b"/");
    let body = if trailing { &name[..name.len() - 1] } else { name };
    for (i, b) in body.iter().enumerate().rev() {
        if *b != b'/' {
            continue;
        }
        let (prefix, rest) = (&body[..i], &name[i + 1..]);
        if rest.len() > 100 {
            return false;
        }
        if prefix.len() <= 155 && !rest.is_empty() && !prefix.is_empty() {
            h[..rest.len()].copy_from_slice(rest);
            h[345..345 + prefix.len()].copy_from_slice(prefix);
            return true;
        }
    }
    false
}

/// Zero-padded octal with a terminating NUL; false when the value does not fit.
fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

fn base256(field: &mut [u8], v: u64) {
    field.fill(0);
    field[0] = 0x80;
    let bytes = v.to_be_bytes();
    let n = field.len();
    field[n - 8..].copy_from_slice(&bytes);
}

/// 12-byte numeric field: octal when it fits, base-256 otherwise (GNU).
fn num12(field: &mut [u8], v: u64) {
    if !octal(field, v) {
        base256(field, v);
    }
}

fn checksum(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// The data regions of a file with holes, by SEEK_DATA/SEEK_HOLE; `None` when the filesystem
/// cannot say, the file has no holes, or it has more than `read::MAX_SPARSE_REGIONS` regions.
pub fn sparse_map(file: &File, size: u64) -> Option<Vec<(u64, u64)>> {
    let mut map = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match crate::sys::seek_data(file, pos) {
            Ok(Some(d)) => d,
            Ok(None) => break, // only a hole remains
            Err(_) => return None,
        };
        let hole = crate::sys::seek_hole(file, data).ok()?.min(size);
        if hole > data {
            if map.len() as u64 >= super::read::MAX_SPARSE_REGIONS {
                return None; // more regions than a reader accepts: stored whole, holes as zeros
            }
            map.push((data, hole - data));
        }
        pos = hole;
    }
    let stored: u64 = map.iter().map(|(_, l)| l).sum();
    if stored >= size {
        return None;
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(path: &str) -> Meta {
        Meta { path: path.as_bytes().to_vec(), mode: 0o644, mtime: 1_700_000_000, ..Default::default() }
    }

    #[test]
    fn pax_length_counts_itself() {
        let mut p = Pax::default();
        p.record(b"path", &vec![b'a'; 93]);
        let enc = p.encode();
        let len: usize =
            std::str::from_utf8(&enc[..enc.iter().position(|b| *b == b' ').unwrap()]).unwrap().parse().unwrap();
        assert_eq!(len, enc.len());
    }

    #[test]
    fn android_flavor_refuses_links_and_writes_pax_with_size() {
        let mut w = TarWriter::new(Vec::new(), Flavor::Android);
        assert!(w.append_symlink(&meta("a"), b"b").is_err());
        let long = format!("apps/p/r/{}", "x".repeat(200));
        w.append_file(&meta(&long), 3, &mut &b"abc"[..]).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out[156], b'x');
        let body = String::from_utf8_lossy(&out[512..1024]);
        assert!(body.contains("path=") && body.contains(" size=3\n"), "{body}");
    }

    /// Keeps the first bytes written and counts the rest.
    struct Head {
        head: Vec<u8>,
        total: u64,
    }

    impl Write for Head {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let keep = buf.len().min(4096usize.saturating_sub(self.head.len()));
            self.head.extend_from_slice(&buf[..keep]);
            self.total += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn files_over_8_gib_get_pax_size_and_read_back() {
        let size = (8u64 << 30) + 3;
        let mut w = TarWriter::new(Head { head: Vec::new(), total: 0 }, Flavor::Full);
        let c = w.append_file(&meta("data/big.img"), size, &mut io::repeat(0xAB).take(size)).unwrap();
        assert_eq!(c, Content::Complete);
        let out = w.finish().unwrap();
        assert_eq!(out.total, 3 * 512 + size + 509 + 1024);
        // The pax record carries the size; the real header has it in base-256 as well.
        let pax = String::from_utf8_lossy(&out.head[512..1024]);
        assert!(pax.contains(&format!(" size={size}\n")), "{pax}");
        assert_eq!(out.head[1024 + 124], 0x80);
        // Read it back through the reader: a synthetic stream, nothing held in memory.
        let head = out.head[..1536].to_vec();
        let stream = io::Cursor::new(head).chain(io::repeat(0xAB).take(size)).chain(io::repeat(0).take(509 + 1024));
        let mut stream = stream;
        let mut seen = Vec::new();
        crate::archive::read::each_entry(&mut stream, &mut |item, data| {
            let n = io::copy(data, &mut io::sink()).unwrap();
            seen.push((item.meta.path.clone(), item.size, n));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(b"data/big.img".to_vec(), size, size)]);
    }

    #[test]
    fn shrinking_file_is_padded_to_header_size() {
        let mut w = TarWriter::new(Vec::new(), Flavor::Full);
        let c = w.append_file(&meta("f"), 10, &mut &b"abc"[..]).unwrap();
        assert_eq!(c, Content::Shrunk { read: 3 });
        let c = w.append_file(&meta("g"), 2, &mut &b"abc"[..]).unwrap();
        assert_eq!(c, Content::Grew);
        let out = w.finish().unwrap();
        assert_eq!(out.len(), 512 * 4 + 1024);
    }
}
