//! Reading archives: find the container (`.ab`, zstd, gzip or plain tar) from the first bytes,
//! parse tar entries (ustar, pax, GNU long names and sparse files), and check every entry's
//! name and type before anyone acts on it.
//!
//! It never writes anything. What it hands out is already checked: relative, no `..`, a known
//! type. An archive that ends without its end-of-archive blocks is an error, not a short success.

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read};

use super::{ab, Meta};
use crate::crypt::{self, Opening};
use crate::error::{Error, Result};

/// The kind of an entry that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { sparse: bool },
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Item {
    pub meta: Meta,
    pub kind: Kind,
    pub size: u64,
}

/// The container found around the tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Tar,
    Zstd,
    Gzip,
    Ab { version: u32, compressed: bool, encrypted: bool },
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Look at the first bytes of `src` and return the decoded tar stream. `keys` opens an
/// encrypted `.ab` (its passphrase); `shown` names the archive in errors.
pub fn open<'a, R: Read + 'a>(src: R, keys: &Opening, shown: &str) -> Result<(Container, Box<dyn Read + 'a>)> {
    let mut src = BufReader::with_capacity(256 * 1024, src);
    let head = src.fill_buf().map_err(|e| Error::archive("header", e.to_string()))?;
    if head.is_empty() {
        return Err(Error::archive("source", "is empty"));
    }
    if head.starts_with(&ZSTD_MAGIC) {
        let dec =
            zstd::stream::read::Decoder::with_buffer(src).map_err(|e| Error::archive("zstd stream", e.to_string()))?;
        return Ok((Container::Zstd, Box::new(dec)));
    }
    if head.starts_with(&GZIP_MAGIC) {
        return Ok((Container::Gzip, Box::new(flate2::bufread::MultiGzDecoder::new(src))));
    }
    if head.starts_with(ab::MAGIC) || head.starts_with(b"ANDROID BACKUP") {
        let header = ab::read_header(&mut src)?;
        let c = Container::Ab {
            version: header.version,
            compressed: header.compressed,
            encrypted: header.encrypted.is_some(),
        };
        let body: Box<dyn BufRead + 'a> = match &header.encrypted {
            None => Box::new(src),
            Some(params) => {
                let Some(passphrase) = keys.passphrase() else {
                    return Err(Error::Key {
                        what: shown.to_string(),
                        reason:
                            "is an encrypted Android backup (AES-256): pass --passphrase-file FILE with its password"
                                .into(),
                    });
                };
                let key = crypt::ab::open_key(params, passphrase, header.version, shown)?;
                Box::new(BufReader::with_capacity(256 * 1024, crypt::ab::CbcReader::new(&key, src)))
            }
        };
        if header.compressed {
            return Ok((c, Box::new(flate2::bufread::ZlibDecoder::new(body))));
        }
        return Ok((c, Box::new(body)));
    }
    Ok((Container::Tar, Box::new(src)))
}

/// At most this many bytes between one entry's data and the next's: the skipped rest of the
/// previous entry aside, its headers, pax records, GNU long names and old GNU sparse
/// extension blocks. The tar reader holds pax records and long names in memory whole, at the
/// size their header claims, so without a cap a small compressed archive could claim gigabytes
/// of them. 32 MiB holds the extension blocks of `MAX_SPARSE_REGIONS` regions with room to
/// spare, and any real path, link target or set of xattrs many times over. Under the fuzzer
/// (`cargo fuzz` builds with `--cfg fuzzing`) it is 4 KiB, small enough for its inputs to
/// reach.
#[allow(unexpected_cfgs)]
pub const MAX_HEADER_BYTES: u64 = if cfg!(fuzzing) { 4096 } else { 32 << 20 };

/// What the tar reader may still read before the next entry's data (`headers` mode), and how
/// much of an entry's data the consumer has read (`data` mode).
#[derive(Default)]
struct Budget {
    headers: Cell<bool>,
    left: Cell<u64>,
    data_read: Cell<u64>,
}

/// The archive's source as the tar reader sees it: between entries, reads stop with an error
/// once the budget is spent.
struct Guarded<'a> {
    inner: &'a mut dyn Read,
    budget: &'a Budget,
}

impl Read for Guarded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let b = self.budget;
        if !b.headers.get() {
            let n = self.inner.read(buf)?;
            b.data_read.set(b.data_read.get().saturating_add(n as u64));
            return Ok(n);
        }
        let left = b.left.get();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("headers, pax records or long names of over {MAX_HEADER_BYTES} bytes before one entry"),
            ));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        b.left.set(left - n as u64);
        Ok(n)
    }
}

/// Call `f` for every entry of the tar stream in order, with a reader over its content.
/// Returns the number of entries. Checks that the archive ends properly.
pub fn each_entry(src: &mut dyn Read, f: &mut dyn FnMut(Item, &mut dyn Read) -> Result<()>) -> Result<u64> {
    let budget = Budget::default();
    let mut archive = tar::Archive::new(Guarded { inner: src, budget: &budget });
    let mut count = 0u64;
    {
        let mut entries = archive.entries().map_err(|e| Error::archive("tar stream", e.to_string()))?;
        // What the tar reader skips of the previous entry before the next header: the data
        // the consumer left unread and the padding to the block boundary.
        let mut skip = 0u64;
        loop {
            budget.headers.set(true);
            budget.left.set(skip.saturating_add(MAX_HEADER_BYTES));
            let next = entries.next();
            budget.headers.set(false);
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(|e| Error::archive(format!("entry {}", count + 1), e.to_string()))?;
            let stored = stored_size(&mut entry)?;
            let read_before = budget.data_read.get();
            if let Some((item, sparse)) = check(&mut entry)? {
                match sparse {
                    None => f(item, &mut entry)?,
                    Some(layout) => {
                        let shown = item.meta.display();
                        let mut expanded = SparseReader::new(&mut entry, layout, item.size, stored, &shown)?;
                        f(item, &mut expanded)?
                    }
                }
                count += 1;
            }
            // Whatever the consumer left unread is skipped by the tar reader itself.
            let padded = stored.saturating_add(511) & !511;
            skip = padded.saturating_sub(budget.data_read.get() - read_before);
        }
    }
    // tar-rs stops at the first zero block, or at a clean EOF where a header should have been.
    // The second zero block tells a complete archive from one cut at a block boundary.
    let mut src = archive.into_inner();
    let mut tail = [0u8; 512];
    let mut got = 0;
    while got < tail.len() {
        match src.read(&mut tail[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::archive("end", e.to_string())),
        }
    }
    if got < tail.len() || tail.iter().any(|b| *b != 0) {
        return Err(Error::archive(
            "stream",
            format!("is truncated: it ends after {count} entries without the end-of-archive marker"),
        ));
    }
    // Drain what follows (record padding; for compressed streams this also checks the trailer).
    io::copy(&mut src, &mut io::sink()).map_err(|e| Error::archive("trailer", e.to_string()))?;
    Ok(count)
}

/// How many bytes of the archive an entry's data takes, as the tar reader counts them: the
/// header's size, or the pax `size` record's (for old GNU sparse entries, whose reported size
/// is the expanded one, this is read from the records again, as the tar reader does).
fn stored_size<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<u64> {
    if entry.header().entry_type() != tar::EntryType::GNUSparse {
        return Ok(entry.size());
    }
    let mut pax_size = None;
    if let Some(exts) = entry.pax_extensions().map_err(|e| Error::archive("entry", e.to_string()))? {
        for ext in exts {
            let Ok(ext) = ext else { break };
            if ext.key_bytes() == b"size" {
                pax_size = std::str::from_utf8(ext.value_bytes()).ok().and_then(|v| v.parse::<u64>().ok());
                break;
            }
        }
    }
    match pax_size {
        Some(n) => Ok(n),
        None => entry.header().entry_size().map_err(|e| Error::archive("entry", format!("has a bad size field: {e}"))),
    }
}

/// Where a pax-format sparse file (GNU tar's `--format=posix --sparse`) keeps its map.
enum SparseLayout {
    /// Format 0.1: `GNU.sparse.map` in the pax header.
    Map(Vec<(u64, u64)>),
    /// Format 1.0: a decimal map at the start of the entry's data.
    InData,
}

fn check<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<(Item, Option<SparseLayout>)>> {
    use tar::EntryType as T;
    let raw_path = entry.path_bytes().into_owned();
    let shown = super::shown(&raw_path);
    let header = entry.header();
    let et = header.entry_type();
    let kind =
        match et {
            T::Regular | T::Continuous => Kind::File { sparse: false },
            T::GNUSparse => Kind::File { sparse: true },
            T::Directory => Kind::Dir,
            T::Symlink | T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::archive(format!("entry {shown:?}"), "is a link without a target"))?
                    .into_owned();
                if target.is_empty() || target.contains(&0) || target.len() > MAX_NAME {
                    return Err(Error::archive(
                        format!("entry {shown:?}"),
                        "has an empty, invalid or too long link target",
                    ));
                }
                if et == T::Symlink {
                    Kind::Symlink(target)
                } else {
                    Kind::Hardlink(clean_path(&target, &shown)?.ok_or_else(|| {
                        Error::archive(format!("entry {shown:?}"), "is a hard link to the archive's top")
                    })?)
                }
            }
            T::XGlobalHeader => return Ok(None),
            T::Char | T::Block => {
                return Err(Error::archive(
                    format!("entry {shown:?}"),
                    "is a device node; refusing to create device nodes",
                ));
            }
            T::Fifo => return Err(Error::archive(format!("entry {shown:?}"), "is a FIFO; refusing to create FIFOs")),
            other => {
                return Err(Error::archive(
                    format!("entry {shown:?}"),
                    format!("has an unsupported type {:?}", other.as_byte() as char),
                ))
            }
        };
    let mut raw_path = raw_path;
    let mode = header.mode().map_err(|e| bad_field(&shown, "mode", e))? & 0o7777;
    let mut uid = header.uid().map_err(|e| bad_field(&shown, "uid", e))?;
    let mut gid = header.gid().map_err(|e| bad_field(&shown, "gid", e))?;
    let mut mtime = header.mtime().map_err(|e| bad_field(&shown, "mtime", e))? as i64;
    let mut mtime_nsec = 0u32;
    let mut xattrs = Vec::new();
    let mut sparse_name = None;
    let mut sparse_size = None;
    let mut sparse_map = None;
    let mut sparse_major = None;
    if let Some(exts) = entry.pax_extensions().map_err(|e| Error::archive(format!("entry {shown:?}"), e.to_string()))? {
        for ext in exts {
            let ext = ext.map_err(|e| Error::archive(format!("entry {shown:?} pax record"), e.to_string()))?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            match key {
                // The tar reader takes a valid `size` and silently ignores one it cannot parse
                // (reading the header's size instead): refuse what other readers would read
                // differently.
                b"size" => {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| bad_pax(&shown, "size"))?;
                }
                b"uid" => uid = parse_num(value).ok_or_else(|| bad_pax(&shown, "uid"))?,
                b"gid" => gid = parse_num(value).ok_or_else(|| bad_pax(&shown, "gid"))?,
                b"mtime" => {
                    let (s, n) = parse_time(value).ok_or_else(|| bad_pax(&shown, "mtime"))?;
                    mtime = s;
                    mtime_nsec = n;
                }
                b"GNU.sparse.name" => sparse_name = Some(value.to_vec()),
                b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                    sparse_size = Some(parse_num(value).ok_or_else(|| bad_pax(&shown, "GNU.sparse.realsize"))?)
                }
                b"GNU.sparse.major" => sparse_major = parse_num(value),
                b"GNU.sparse.map" => {
                    sparse_map = Some(parse_map(value).ok_or_else(|| bad_pax(&shown, "GNU.sparse.map"))?)
                }
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    let mut kind = kind;
    let mut size = match kind {
        Kind::File { .. } => entry.size(),
        _ => 0,
    };
    let mut layout = None;
    if let (Some(name), Some(real)) = (sparse_name, sparse_size) {
        raw_path = name;
        size = real;
        kind = Kind::File { sparse: true };
        layout = Some(match (sparse_major, sparse_map) {
            (Some(1), _) => SparseLayout::InData,
            (_, Some(map)) => SparseLayout::Map(map),
            _ => {
                return Err(Error::archive(
                    format!("entry {shown:?}"),
                    "uses a GNU sparse format cpbackup does not read (0.0)",
                ));
            }
        });
    }
    let Some(path) = clean_path(&raw_path, &shown)? else {
        return Ok(None); // "./": the archive's own top, nothing to create
    };
    Ok(Some((
        Item {
            meta: Meta {
                path,
                mode,
                uid: u32::try_from(uid).map_err(|_| bad_pax(&shown, "uid"))?,
                gid: u32::try_from(gid).map_err(|_| bad_pax(&shown, "gid"))?,
                mtime,
                mtime_nsec,
                xattrs,
            },
            kind,
            size,
        },
        layout,
    )))
}

/// `off,len,off,len,…`, at most `MAX_SPARSE_REGIONS` pairs.
fn parse_map(v: &[u8]) -> Option<Vec<(u64, u64)>> {
    let commas = v.iter().filter(|b| **b == b',').count() as u64;
    if commas >= 2 * MAX_SPARSE_REGIONS {
        return None;
    }
    let nums: Vec<u64> =
        std::str::from_utf8(v).ok()?.split(',').map(|s| s.trim().parse().ok()).collect::<Option<_>>()?;
    if nums.len() % 2 != 0 {
        return None;
    }
    Some(nums.chunks(2).map(|c| (c[0], c[1])).collect())
}

/// At most this many regions in a sparse map: more is an attack, not a file (the writer stores
/// a file with more regions whole).
pub const MAX_SPARSE_REGIONS: u64 = 1 << 20;

/// Expands a pax sparse entry's stored regions into the file's full content, zeros in the
/// holes.
struct SparseReader<'a> {
    inner: &'a mut dyn Read,
    map: Vec<(u64, u64)>,
    idx: usize,
    pos: u64,
    size: u64,
}

impl<'a> SparseReader<'a> {
    /// `size` is the file's (expanded) size, `stored` how many bytes the entry holds.
    fn new(
        inner: &'a mut dyn Read,
        layout: SparseLayout,
        size: u64,
        stored: u64,
        shown: &str,
    ) -> Result<SparseReader<'a>> {
        let bad = |why: &str| Error::archive(format!("entry {shown:?}"), format!("has a bad sparse map: {why}"));
        let (map, data) = match layout {
            SparseLayout::Map(m) => (m, stored),
            SparseLayout::InData => {
                let mut consumed = 0u64;
                let count = read_decimal_line(inner, &mut consumed).map_err(|e| bad(&e.to_string()))?;
                if count > MAX_SPARSE_REGIONS {
                    return Err(bad("too many regions"));
                }
                let mut m = Vec::new();
                for _ in 0..count {
                    let off = read_decimal_line(inner, &mut consumed).map_err(|e| bad(&e.to_string()))?;
                    let len = read_decimal_line(inner, &mut consumed).map_err(|e| bad(&e.to_string()))?;
                    m.push((off, len));
                }
                let pad = (512 - consumed % 512) % 512;
                io::copy(&mut inner.take(pad), &mut io::sink()).map_err(|e| bad(&e.to_string()))?;
                let data = stored.checked_sub(consumed + pad).ok_or_else(|| bad("it is longer than the entry"))?;
                (m, data)
            }
        };
        let mut end = 0u64;
        let mut held = 0u64;
        for &(off, len) in &map {
            let stop = off.checked_add(len).ok_or_else(|| bad("region overflows"))?;
            if off < end || stop > size {
                return Err(bad("regions out of order or past the end"));
            }
            end = stop;
            held += len; // no overflow: the regions are disjoint and end within a u64 size
        }
        // Whether the content is read or skipped, the same entry must be as good: the regions
        // take exactly the data the entry stores.
        if held != data {
            return Err(bad(&format!("its regions take {held} bytes and the entry stores {data}")));
        }
        Ok(SparseReader { inner, map, idx: 0, pos: 0, size })
    }
}

fn read_decimal_line(r: &mut dyn Read, consumed: &mut u64) -> io::Result<u64> {
    let mut digits = Vec::new();
    let mut b = [0u8; 1];
    loop {
        r.read_exact(&mut b)?;
        *consumed += 1;
        if b[0] == b'\n' {
            break;
        }
        if !b[0].is_ascii_digit() || digits.len() > 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a decimal number"));
        }
        digits.push(b[0]);
    }
    std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a decimal number"))
}

impl Read for SparseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos >= self.size || buf.is_empty() {
                return Ok(0);
            }
            match self.map.get(self.idx) {
                Some(&(off, len)) if self.pos >= off => {
                    let end = off + len;
                    if self.pos >= end {
                        self.idx += 1;
                        continue;
                    }
                    let want = (end - self.pos).min(buf.len() as u64) as usize;
                    let n = self.inner.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "sparse data ends early"));
                    }
                    self.pos += n as u64;
                    return Ok(n);
                }
                next => {
                    let until = next.map(|(o, _)| *o).unwrap_or(self.size);
                    let n = (until - self.pos).min(buf.len() as u64) as usize;
                    buf[..n].fill(0);
                    self.pos += n as u64;
                    return Ok(n);
                }
            }
        }
    }
}

fn bad_field(shown: &str, field: &str, e: io::Error) -> Error {
    Error::archive(format!("entry {shown:?}"), format!("has a bad {field} field: {e}"))
}

fn bad_pax(shown: &str, field: &str) -> Error {
    Error::archive(format!("entry {shown:?}"), format!("has a bad pax {field} record"))
}

fn parse_num(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// pax time: `SECONDS[.FRACTION]`, possibly negative.
fn parse_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    if s.starts_with('-') && nsec > 0 {
        // -1.5 means 1.5 s before the epoch: whole part -2, plus 0.5 s
        return Some((secs.checked_sub(1)?, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

/// The longest entry name or link target accepted: 16 times the longest path a file-system
/// call takes; anything longer cannot be restored, and is only held (and split) in memory.
pub const MAX_NAME: usize = 64 * 1024;

/// Normalise an entry name: relative, `.` and empty components dropped, never `..`, never
/// absolute, no NUL. `None` for the archive's top (`./`).
pub fn clean_path(raw: &[u8], shown: &str) -> Result<Option<Vec<u8>>> {
    if raw.len() > MAX_NAME {
        return Err(Error::archive(
            format!("entry {shown:?}"),
            format!("has a name of {} bytes, too long: names over {MAX_NAME} bytes are refused", raw.len()),
        ));
    }
    if raw.starts_with(b"/") {
        return Err(Error::archive(
            format!("entry {shown:?}"),
            "has an absolute name; refusing to write outside the restore root",
        ));
    }
    if raw.contains(&0) {
        return Err(Error::archive(format!("entry {shown:?}"), "has a NUL byte in its name"));
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                return Err(Error::archive(
                    format!("entry {shown:?}"),
                    "contains a .. component; refusing to write outside the restore root",
                ))
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    Ok(Some(out.join(&b'/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path(b"./data/x/", "").unwrap().unwrap(), b"data/x");
        assert_eq!(clean_path(b"./", "").unwrap(), None);
        assert!(clean_path(b"/etc/passwd", "").is_err());
        assert!(clean_path(b"data/../../etc", "").is_err());
        assert!(clean_path(b"..", "").is_err());
    }

    /// A reader that counts what was taken from it.
    struct Counted<R>(R, u64);

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n as u64;
            Ok(n)
        }
    }

    fn header(kind: tar::EntryType, name: &str, size: u64, gnu: bool) -> Vec<u8> {
        let mut h = if gnu { tar::Header::new_gnu() } else { tar::Header::new_ustar() };
        h.set_entry_type(kind);
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    /// A pax record or GNU long name that claims a huge size used to be read into memory whole
    /// (and a few kilobytes of zstd can stand for gigabytes of it).
    #[test]
    fn huge_pax_records_and_long_names_are_refused_not_buffered() {
        for (kind, gnu) in [(tar::EntryType::XHeader, false), (tar::EntryType::GNULongName, true)] {
            let head = header(kind, "x", 1 << 40, gnu);
            let mut src = Counted(head.chain(io::repeat(b'a')), 0);
            let e = each_entry(&mut src, &mut |_, _| Ok(())).unwrap_err().to_string();
            assert!(e.contains("over 33554432 bytes"), "{kind:?}: {e}");
            assert!(src.1 <= 512 + MAX_HEADER_BYTES, "{kind:?}: read {} bytes", src.1);
        }
    }

    /// The budget between entries counts what the consumer left unread as skippable, for
    /// plain and old GNU sparse entries alike.
    #[test]
    fn unread_data_is_skipped_whatever_its_size() {
        use super::super::write::TarWriter;
        use super::super::Flavor;
        use std::io::Write;
        use std::os::unix::fs::FileExt;

        let big = MAX_HEADER_BYTES + 4096 + 17;
        let head = header(tar::EntryType::Regular, "big", big, false);
        let mut stream: Box<dyn Read> = Box::new(io::Cursor::new(head).chain(io::repeat(7).take(big)));
        let mut tail = vec![0u8; 512 - (big % 512) as usize];
        tail.extend(header(tar::EntryType::Regular, "small", 3, false));
        tail.extend(b"abc");
        tail.extend([0u8; 509 + 1024]);
        stream = Box::new(stream.chain(io::Cursor::new(tail)));
        let mut seen = Vec::new();
        let n = each_entry(&mut stream, &mut |item, data| {
            let mut first = [0u8; 3];
            data.read_exact(&mut first).unwrap();
            seen.push((item.meta.display(), first));
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(seen, vec![("big".to_string(), [7, 7, 7]), ("small".to_string(), *b"abc")]);

        // Old GNU sparse: 40 MiB stored in two regions of a 100 MiB file, read 10 bytes of it.
        let mut f = tempfile::tempfile().unwrap();
        let region = 20 << 20;
        f.write_all_at(&vec![1u8; region], 0).unwrap();
        f.write_all_at(&vec![2u8; region], 60 << 20).unwrap();
        f.set_len(100 << 20).unwrap();
        f.flush().unwrap();
        let meta = |p: &str| Meta { path: p.as_bytes().to_vec(), mode: 0o644, ..Default::default() };
        let mut w = TarWriter::new(Vec::new(), Flavor::Full);
        w.append_sparse(&meta("sparse"), 100 << 20, &[(0, region as u64), (60 << 20, region as u64)], &f).unwrap();
        w.append_file(&meta("after"), 2, &mut &b"ok"[..]).unwrap();
        let bytes = w.finish().unwrap();
        let mut got = Vec::new();
        let n = each_entry(&mut &bytes[..], &mut |item, data| {
            let mut head = vec![0u8; 10.min(item.size as usize)];
            data.read_exact(&mut head).unwrap();
            got.push((item.meta.display(), item.kind, item.size, head));
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(got[0], ("sparse".to_string(), Kind::File { sparse: true }, 100 << 20, vec![1u8; 10]));
        assert_eq!(got[1], ("after".to_string(), Kind::File { sparse: false }, 2, b"ok".to_vec()));
    }

    fn padded(mut v: Vec<u8>) -> Vec<u8> {
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    /// GNU tar's pax sparse file (`--sparse-version` 0.1 with `map`, 1.0 without), then the
    /// end of the archive.
    fn pax_sparse(map: Option<&str>, realsize: u64, data: &[u8]) -> Vec<u8> {
        let mut pax = crate::archive::write::Pax::default();
        pax.record(b"GNU.sparse.name", b"sp");
        pax.record(b"GNU.sparse.realsize", realsize.to_string().as_bytes());
        match map {
            Some(m) => pax.record(b"GNU.sparse.map", m.as_bytes()),
            None => pax.record(b"GNU.sparse.major", b"1"),
        }
        let records = pax.encode();
        let mut tar = header(tar::EntryType::XHeader, "PaxHeaders/sp", records.len() as u64, false);
        tar.extend(padded(records));
        tar.extend(header(tar::EntryType::Regular, "GNUSparseFile.0/sp", data.len() as u64, false));
        tar.extend(padded(data.to_vec()));
        tar.extend([0u8; 1024]);
        tar
    }

    /// Read every entry's content (`read`) or none; the names and contents, or the error.
    fn read_all(tar: &[u8], read: bool) -> std::result::Result<Vec<(String, Vec<u8>)>, String> {
        let mut got = Vec::new();
        each_entry(&mut &tar[..], &mut |item, data| {
            let mut content = Vec::new();
            if read {
                data.read_to_end(&mut content).map_err(|e| Error::archive("test", e.to_string()))?;
            }
            got.push((item.meta.display(), content));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(got)
    }

    /// The tar_reader fuzz target's read-or-skip check caught it: a sparse map whose regions
    /// take more (or less) than the entry stores failed when the content was read and passed
    /// when it was skipped. Now it fails both ways.
    #[test]
    fn sparse_regions_must_take_what_the_entry_stores() {
        let good = pax_sparse(Some("2,3,10,0"), 10, b"abc");
        assert_eq!(read_all(&good, true).unwrap(), vec![("sp".to_string(), b"\0\0abc\0\0\0\0\0".to_vec())]);
        let map_in_data = [&b"1\n2\n3\n"[..], &[0u8; 506], b"abc"].concat();
        let good = pax_sparse(None, 10, &map_in_data);
        assert_eq!(read_all(&good, true).unwrap(), vec![("sp".to_string(), b"\0\0abc\0\0\0\0\0".to_vec())]);
        for bad in [
            pax_sparse(Some("2,5,10,0"), 10, b"abc"),
            pax_sparse(Some("2,2,10,0"), 10, b"abc"),
            pax_sparse(None, 10, &[&b"1\n2\n5\n"[..], &[0u8; 506], b"abc"].concat()),
            pax_sparse(None, 10, b"1\n2\n3\n"),
        ] {
            for read in [true, false] {
                let e = read_all(&bad, read).unwrap_err();
                assert!(e.contains("bad sparse map"), "read {read}: {e}");
            }
        }
    }

    #[test]
    fn sparse_maps_are_capped() {
        assert_eq!(parse_map(b"0,512,1024,512"), Some(vec![(0, 512), (1024, 512)]));
        let many = vec!["0"; 2 * MAX_SPARSE_REGIONS as usize + 2].join(",");
        assert_eq!(parse_map(many.as_bytes()), None);
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_time(b"1700000000.123456789"), Some((1_700_000_000, 123_456_789)));
        assert_eq!(parse_time(b"5.5"), Some((5, 500_000_000)));
        assert_eq!(parse_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_time(b"12"), Some((12, 0)));
        assert_eq!(parse_time(b"x"), None);
        // The whole part one below i64::MIN: refused, not an overflow.
        assert_eq!(parse_time(b"-9223372036854775808.5"), None);
        assert_eq!(parse_time(b"-9223372036854775807.5"), Some((i64::MIN, 500_000_000)));
    }
}
