//! The Android backup container (`.ab`): a few text lines, then the tar stream, zlib
//! compressed or not. Owns writing the header that `adb restore` and the
//! `dd bs=24 skip=1 | zlib-flate -uncompress` recipe expect, and reading headers of versions
//! 1–5.
//!
//! It must never try to decrypt: an encrypted backup is refused with a message that says how to
//! decrypt it first.

use std::io::{BufRead, Write};

use crate::error::{Error, Result};

pub const MAGIC: &[u8] = b"ANDROID BACKUP\n";

/// The header cpbackup writes: version 5, compressed, not encrypted. Exactly 24 bytes.
pub const HEADER_V5_COMPRESSED: &[u8] = b"ANDROID BACKUP\n5\n1\nnone\n";

pub fn write_header(w: &mut dyn Write) -> std::io::Result<()> {
    w.write_all(HEADER_V5_COMPRESSED)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub compressed: bool,
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
    match enc.as_str() {
        "none" => {}
        "AES-256" => {
            return Err(Error::archive(
                ".ab header",
                "says the backup is encrypted (AES-256); cpbackup does not decrypt: decrypt it first, \
                 e.g. `abe unpack FILE.ab FILE.tar PASSWORD`, then import the tar",
            ))
        }
        other => return Err(Error::archive(".ab header", format!("has an unknown encryption {other:?}"))),
    }
    Ok(Header { version, compressed })
}

fn line(r: &mut dyn BufRead, what: &str) -> Result<String> {
    let mut buf = Vec::new();
    while buf.len() < 64 && buf.last() != Some(&b'\n') {
        let avail = r.fill_buf().map_err(|e| Error::archive(".ab header", format!("{what} line: {e}")))?;
        if avail.is_empty() {
            break;
        }
        let take = avail.iter().position(|b| *b == b'\n').map(|i| i + 1).unwrap_or(avail.len()).min(64 - buf.len());
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
        assert_eq!(h, Header { version: 5, compressed: true });
        let h = read_header(&mut &b"ANDROID BACKUP\n1\n0\nnone\n"[..]).unwrap();
        assert_eq!(h, Header { version: 1, compressed: false });
    }

    #[test]
    fn refuses_encrypted_and_bad_versions() {
        let e = read_header(&mut &b"ANDROID BACKUP\n5\n1\nAES-256\n"[..]).unwrap_err().to_string();
        assert!(e.contains("encrypted"), "{e}");
        let e = read_header(&mut &b"ANDROID BACKUP\n6\n1\nnone\n"[..]).unwrap_err().to_string();
        assert!(e.contains("version 6"), "{e}");
        assert!(read_header(&mut &b"ANDROID BACKUP\n5\n"[..]).is_err());
    }
}
