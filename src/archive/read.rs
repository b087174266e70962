//! Reading archives: find the container (`.ab`, zstd, gzip or plain tar) from the first bytes,
//! parse tar entries (ustar, pax, GNU long names and sparse files), and check every entry's
//! name and type before anyone acts on it.
//!
//! It never writes anything. What it hands out is already checked: relative, no `..`, a known
//! type. An archive that ends without its end-of-archive blocks is an error, not a short success.

use std::io::{self, BufRead, BufReader, Read};

use super::{ab, Meta};
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
    Ab { version: u32, compressed: bool },
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Look at the first bytes of `src` and return the decoded tar stream.
pub fn open<'a, R: Read + 'a>(src: R) -> Result<(Container, Box<dyn Read + 'a>)> {
    let mut src = BufReader::with_capacity(256 * 1024, src);
    let head = src.fill_buf().map_err(|e| Error::archive("header", e.to_string()))?;
    if head.is_empty() {
        return Err(Error::archive("source", "is empty"));
    }
    if head.starts_with(&ZSTD_MAGIC) {
        let dec = zstd::stream::read::Decoder::with_buffer(src)
            .map_err(|e| Error::archive("zstd stream", e.to_string()))?;
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
        };
        if header.compressed {
            return Ok((c, Box::new(flate2::bufread::ZlibDecoder::new(src))));
        }
        return Ok((c, Box::new(src)));
    }
    Ok((Container::Tar, Box::new(src)))
}

/// Call `f` for every entry of the tar stream in order, with a reader over its content.
/// Returns the number of entries. Checks that the archive ends properly.
pub fn each_entry(src: &mut dyn Read, f: &mut dyn FnMut(Item, &mut dyn Read) -> Result<()>) -> Result<u64> {
    let mut archive = tar::Archive::new(src);
    let mut count = 0u64;
    {
        let entries = archive.entries().map_err(|e| Error::archive("tar stream", e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| Error::archive(format!("entry {}", count + 1), e.to_string()))?;
            let Some(item) = check(&mut entry)? else { continue };
            f(item, &mut entry)?;
            // Whatever the consumer left unread is skipped by the tar reader itself.
            count += 1;
        }
    }
    // tar-rs stops at the first zero block, or at a clean EOF where a header should have been.
    // The second zero block tells a complete archive from one cut at a block boundary.
    let src = archive.into_inner();
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
    io::copy(src, &mut io::sink()).map_err(|e| Error::archive("trailer", e.to_string()))?;
    Ok(count)
}

fn check<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<Item>> {
    use tar::EntryType as T;
    let raw_path = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw_path).into_owned();
    let header = entry.header();
    let et = header.entry_type();
    let kind = match et {
        T::Regular | T::Continuous => Kind::File { sparse: false },
        T::GNUSparse => Kind::File { sparse: true },
        T::Directory => Kind::Dir,
        T::Symlink | T::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| Error::archive(format!("entry {shown:?}"), "is a link without a target"))?
                .into_owned();
            if target.is_empty() || target.contains(&0) {
                return Err(Error::archive(format!("entry {shown:?}"), "has an empty or invalid link target"));
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
            return Err(Error::archive(format!("entry {shown:?}"), "is a device node; refusing to create device nodes"));
        }
        T::Fifo => return Err(Error::archive(format!("entry {shown:?}"), "is a FIFO; refusing to create FIFOs")),
        other => {
            return Err(Error::archive(
                format!("entry {shown:?}"),
                format!("has an unsupported type {:?}", other.as_byte() as char),
            ))
        }
    };
    let Some(path) = clean_path(&raw_path, &shown)? else {
        return Ok(None); // "./": the archive's own top, nothing to create
    };
    let mode = header.mode().map_err(|e| bad_field(&shown, "mode", e))? & 0o7777;
    let mut uid = header.uid().map_err(|e| bad_field(&shown, "uid", e))?;
    let mut gid = header.gid().map_err(|e| bad_field(&shown, "gid", e))?;
    let mut mtime = header.mtime().map_err(|e| bad_field(&shown, "mtime", e))? as i64;
    let mut mtime_nsec = 0u32;
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(|e| Error::archive(format!("entry {shown:?}"), e.to_string()))? {
        for ext in exts {
            let ext = ext.map_err(|e| Error::archive(format!("entry {shown:?} pax record"), e.to_string()))?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            match key {
                b"uid" => uid = parse_num(value).ok_or_else(|| bad_pax(&shown, "uid"))?,
                b"gid" => gid = parse_num(value).ok_or_else(|| bad_pax(&shown, "gid"))?,
                b"mtime" => {
                    let (s, n) = parse_time(value).ok_or_else(|| bad_pax(&shown, "mtime"))?;
                    mtime = s;
                    mtime_nsec = n;
                }
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    let size = match kind {
        Kind::File { .. } => entry.size(),
        _ => 0,
    };
    Ok(Some(Item {
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
    }))
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
        return Some((secs - 1, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

/// Normalise an entry name: relative, `.` and empty components dropped, never `..`, never
/// absolute, no NUL. `None` for the archive's top (`./`).
pub fn clean_path(raw: &[u8], shown: &str) -> Result<Option<Vec<u8>>> {
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

    #[test]
    fn pax_times() {
        assert_eq!(parse_time(b"1700000000.123456789"), Some((1_700_000_000, 123_456_789)));
        assert_eq!(parse_time(b"5.5"), Some((5, 500_000_000)));
        assert_eq!(parse_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_time(b"12"), Some((12, 0)));
        assert_eq!(parse_time(b"x"), None);
    }
}
