//! The Android backup container (`.ab`): a few text lines, then the tar stream, zlib
//! compressed or not. Owns writing the header that `adb restore` and the
//! `dd bs=24 skip=1 | zlib-flate -uncompress` recipe expect, and reading headers of versions
//! 1–5.
//!
//! An encrypted backup's key material is parsed here and handed to `crypt::ab`, which owns the
//! cipher; this file never sees a key.

use std::io::{BufRead, Write};

use crate::crypt::ab::{self as cipher, Params};
use crate::error::{Error, Result};

pub const MAGIC: &[u8] = b"ANDROID BACKUP\n";

/// The header cpbackup writes: version 5, compressed, not encrypted. Exactly 24 bytes.
pub const HEADER_V5_COMPRESSED: &[u8] = b"ANDROID BACKUP\n5\n1\nnone\n";

/// Write the header: version 5, compressed, and encrypted when `encrypted` gives the key
/// material (`crypt::ab::new_key`).
pub fn write_header(w: &mut dyn Write, encrypted: Option<&Params>) -> std::io::Result<()> {
    match encrypted {
        None => w.write_all(HEADER_V5_COMPRESSED),
        Some(p) => {
            w.write_all(b"ANDROID BACKUP\n5\n1\nAES-256\n")?;
            w.write_all(p.to_lines().as_bytes())
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub compressed: bool,
    /// The key material of an encrypted backup (`AES-256`).
    pub encrypted: Option<Params>,
}

/// Read and check the four header lines. Each line is capped so garbage cannot make us read
/// without end.
pub fn read_header(r: &mut dyn BufRead) -> Result<Header> {
    let magic = line(r, "magic")?;
    if magic != "ANDROID BACKUP" {
        return Err(Error::archive(".ab header", format!("starts with {magic:?}, not \"ANDROID BACKUP\"")));
    }
    let version_s = line(r, "version")?;
    let version: u32 =
        version_s.parse().map_err(|_| Error::archive(".ab header", format!("has a bad version line {version_s:?}")))?;
    if !(1..=5).contains(&version) {
        return Err(Error::archive(".ab header", format!("has version {version}; cpbackup reads versions 1 to 5")));
    }
    let comp_s = line(r, "compression")?;
    let compressed = match comp_s.parse::<i64>() {
        Ok(v) => v != 0,
        Err(_) => return Err(Error::archive(".ab header", format!("has a bad compression line {comp_s:?}"))),
    };
    let enc = line(r, "encryption")?;
    let encrypted = match enc.as_str() {
        "none" => None,
        "AES-256" => {
            let mut lines: [String; 5] = Default::default();
            for (l, what) in lines.iter_mut().zip(["user salt", "checksum salt", "rounds", "user IV", "master key"]) {
                *l = long_line(r, what, cipher::MAX_LINE)?;
            }
            Some(Params::parse([&lines[0], &lines[1], &lines[2], &lines[3], &lines[4]])?)
        }
        other => return Err(Error::archive(".ab header", format!("has an unknown encryption {other:?}"))),
    };
    Ok(Header { version, compressed, encrypted })
}

fn line(r: &mut dyn BufRead, what: &str) -> Result<String> {
    long_line(r, what, 64)
}

/// One header line of at most `max` bytes, without its `\n`.
fn long_line(r: &mut dyn BufRead, what: &str, max: usize) -> Result<String> {
    let mut buf = Vec::new();
    while buf.len() < max && buf.last() != Some(&b'\n') {
        let avail = r.fill_buf().map_err(|e| Error::archive(".ab header", format!("{what} line: {e}")))?;
        if avail.is_empty() {
            break;
        }
        let take = avail.iter().position(|b| *b == b'\n').map(|i| i + 1).unwrap_or(avail.len()).min(max - buf.len());
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
    }
    if buf.last() != Some(&b'\n') {
        return Err(Error::archive(".ab header", format!("is truncated or garbled at the {what} line")));
    }
    buf.pop();
    String::from_utf8(buf).map_err(|_| Error::archive(".ab header", format!("{what} line is not text")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_24_bytes_and_reads_back() {
        assert_eq!(HEADER_V5_COMPRESSED.len(), 24);
        let h = read_header(&mut &HEADER_V5_COMPRESSED[..]).unwrap();
        assert_eq!(h, Header { version: 5, compressed: true, encrypted: None });
        let h = read_header(&mut &b"ANDROID BACKUP\n1\n0\nnone\n"[..]).unwrap();
        assert_eq!(h, Header { version: 1, compressed: false, encrypted: None });
    }

    #[test]
    fn encrypted_headers_write_and_read_back() {
        let (params, _) = cipher::new_key(&crate::secret::Secret::new(b"pw".to_vec())).unwrap();
        let mut out = Vec::new();
        write_header(&mut out, Some(&params)).unwrap();
        assert!(out.starts_with(b"ANDROID BACKUP\n5\n1\nAES-256\n"));
        let h = read_header(&mut &out[..]).unwrap();
        assert_eq!(h.encrypted, Some(params));
        // Cut anywhere inside the key lines: refused.
        for cut in [30, 100, out.len() - 1] {
            assert!(read_header(&mut &out[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn refuses_bad_encryption_and_bad_versions() {
        let e = read_header(&mut &b"ANDROID BACKUP\n5\n1\nAES-256\n"[..]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = read_header(&mut &b"ANDROID BACKUP\n5\n1\nAES-128\n"[..]).unwrap_err().to_string();
        assert!(e.contains("unknown encryption"), "{e}");
        let e = read_header(&mut &b"ANDROID BACKUP\n6\n1\nnone\n"[..]).unwrap_err().to_string();
        assert!(e.contains("version 6"), "{e}");
        assert!(read_header(&mut &b"ANDROID BACKUP\n5\n"[..]).is_err());
    }
}
