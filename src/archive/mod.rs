//! Archives: the tar stream and its containers. `write` turns entries into tar (ustar with pax
//! records where needed, GNU sparse for sparse files), `disk` puts a file from the disk into it,
//! `read` parses and checks entries from any tar, `unpack` puts them safely into a staging
//! directory and then into place, `ab` owns the Android backup container.
//!
//! Nothing here knows where the archive's bytes come from or go to (files, stdout, object
//! stores): every function takes an `io::Read` or `io::Write`.

pub mod ab;
pub mod disk;
pub mod read;
pub mod unpack;
pub mod write;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The archive formats cpbackup writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    #[serde(rename = "tar")]
    Tar,
    #[serde(rename = "tar.zst")]
    TarZst,
    #[serde(rename = "ab")]
    Ab,
    /// A snapshot in a repository (`repo`): not an archive, a record naming a tree.
    #[serde(rename = "repo")]
    Repo,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "tar" => Ok(Format::Tar),
            "tar.zst" | "tzst" | "zst" => Ok(Format::TarZst),
            "ab" => Ok(Format::Ab),
            "repo" => Ok(Format::Repo),
            other => Err(Error::usage(format!("unknown format {other:?}: use tar, tar.zst, ab or repo"))),
        }
    }

    /// The format a file name asks for by its extension (under a sealing `.age`); `None` when
    /// it names none.
    pub fn from_name(name: &str) -> Option<Format> {
        let lower = name.to_ascii_lowercase();
        let lower = lower.strip_suffix(".age").unwrap_or(&lower);
        if lower.ends_with(".tar.zst") || lower.ends_with(".tzst") {
            Some(Format::TarZst)
        } else if lower.ends_with(".tar") {
            Some(Format::Tar)
        } else if lower.ends_with(".ab") {
            Some(Format::Ab)
        } else {
            None
        }
    }

    /// The name `parse` reads and the manifest's `Format` field holds.
    pub fn name(self) -> &'static str {
        match self {
            Format::Tar => "tar",
            Format::TarZst => "tar.zst",
            Format::Ab => "ab",
            Format::Repo => "repo",
        }
    }

    /// What a stored object's name ends with (a snapshot's record names no archive).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Tar => "tar",
            Format::TarZst => "tar.zst",
            Format::Ab => "ab",
            Format::Repo => "snapshot",
        }
    }
}

/// How strictly the tar must follow Android's own restore reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Everything tar can carry: symlinks, hard links, pax times and xattrs, GNU sparse.
    Full,
    /// Only what `TarBackupReader` accepts: types `0`, `5` and `x` (with `path=` and `size=`),
    /// octal numbers.
    Android,
}

/// The metadata of one archive entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Relative path inside the archive (no leading `/`), raw bytes.
    pub path: Vec<u8>,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    pub fn display(&self) -> String {
        shown(&self.path)
    }
}

/// An entry name for messages: lossy UTF-8, cut in the middle when long, so that an error about
/// a name of 20,000 bytes stays one readable line.
pub fn shown(name: &[u8]) -> String {
    const KEEP: usize = 120;
    if name.len() <= 2 * KEEP {
        return String::from_utf8_lossy(name).into_owned();
    }
    let head = String::from_utf8_lossy(&name[..KEEP]);
    let tail = String::from_utf8_lossy(&name[name.len() - KEEP / 2..]);
    format!("{head}…{tail} ({} bytes)", name.len())
}

#[cfg(test)]
mod tests {
    use super::Format;

    #[test]
    fn a_formats_name_is_what_parse_reads_and_the_manifest_holds() {
        for f in [Format::Tar, Format::TarZst, Format::Ab, Format::Repo] {
            assert_eq!(Format::parse(f.name()).ok(), Some(f));
            assert_eq!(serde_json::to_value(f).ok(), Some(serde_json::Value::from(f.name())));
        }
        assert_eq!(Format::from_name("x.tar.zst.age"), Some(Format::TarZst));
        assert_eq!(Format::from_name("x.snapshot"), None);
    }
}
