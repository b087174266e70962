//! A file from the disk into a tar, as it is at the moment it is read: the one way both
//! backups (`backup`'s exports and `apps`' app data and APKs) store a file. Opened without
//! following a link and without blocking, its type checked again on the open file (what the
//! walk saw may have been replaced since), its holes kept as holes (GNU sparse) and its hard
//! links as links where the tar's flavour carries them, and a file that shrank or grew while it
//! was read reported.
//!
//! It must never follow a link, never block on a FIFO, and never let a file's change put a
//! header out of step with its data (the writer pads or cuts to the size announced).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::write::{sparse_map, Content, TarWriter};
use super::{Flavor, Meta};
use crate::error::{Error, Result};
use crate::sys::Stat;

/// Files with more than one link already stored in this archive, by device and inode: the
/// first one's name, which later links point to.
#[derive(Default)]
pub struct HardLinks(HashMap<(u64, u64), Vec<u8>>);

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// Its content is in the archive, `size` bytes as its header announced; `changed` says how
    /// it shrank or grew while it was read (a whole warning line).
    Stored { size: u64, changed: Option<String> },
    /// A hard link to a file stored earlier in this archive.
    Linked,
    /// Left out (`cannot read: …`): it could not be opened, or is no longer a regular file.
    Unreadable(String),
}

/// An entry's metadata as the tar carries it (no xattrs: see [`xattrs`]).
pub fn meta(path: Vec<u8>, st: &Stat) -> Meta {
    Meta {
        path,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtime: st.mtime,
        mtime_nsec: st.mtime_nsec,
        xattrs: Vec::new(),
    }
}

/// The extended attributes of `path` (not followed through a symlink), sorted by name.
pub fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else { return Vec::new() };
    let mut out = Vec::new();
    for name in names {
        if let Ok(Some(value)) = xattr::get(path, &name) {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    out.sort();
    out
}

/// Store the regular file that `st` (its `lstat` from the walk) describes as `meta.path`:
/// a link to an earlier entry when it is a hard link the archive has already stored (full
/// flavour), else its content from `open` (which must not follow a link nor block), sparse
/// when it has holes (full flavour). `shown` names it in messages. A read error once its
/// header is out fails the archive (it could not be kept consistent); one at the open only
/// leaves the file out.
pub fn put_file<W: Write>(
    tar: &mut TarWriter<W>,
    meta: &Meta,
    st: &Stat,
    open: impl FnOnce() -> io::Result<File>,
    links: &mut HardLinks,
    shown: &str,
) -> Result<Put> {
    let full = tar.flavor() == Flavor::Full;
    let sink_err = |err: io::Error| Error::Io { context: format!("writing the archive at {shown}"), source: err };
    let id = (st.dev, st.ino);
    if full && st.nlink > 1 {
        if let Some(first) = links.0.get(&id) {
            tar.append_hardlink(meta, first).map_err(sink_err)?;
            return Ok(Put::Linked);
        }
    }
    let file = match open().and_then(still_a_file) {
        Ok(f) => f,
        Err(e) => return Ok(Put::Unreadable(format!("cannot read: {e}"))),
    };
    if full && st.nlink > 1 {
        links.0.insert(id, meta.path.clone());
    }
    let size = st.size;
    let sparse = if full && st.blocks.saturating_mul(512) < size { sparse_map(&file, size) } else { None };
    let written = match &sparse {
        Some(map) => tar.append_sparse(meta, size, map, &file),
        // Looking for holes moved the offset: the content is read from its start.
        None => (&file).seek(SeekFrom::Start(0)).and_then(|_| tar.append_file(meta, size, &mut &file)),
    };
    let content = match written {
        Ok(c) => c,
        // The source's fault, but the header is already out: fail loudly.
        Err(e) if is_source_error(&e) => return Err(Error::Io { context: format!("reading {shown}"), source: e }),
        Err(e) => return Err(sink_err(e)),
    };
    let changed = match content {
        Content::Complete => None,
        Content::Shrunk { read } => {
            Some(format!("{shown}: shrank while being read ({read} of {size} bytes); the entry was padded with zeros"))
        }
        Content::Grew => Some(format!("{shown}: grew while being read; only the first {size} bytes were archived")),
    };
    Ok(Put::Stored { size, changed })
}

/// The walk saw a regular file; what was opened must still be one (a FIFO or a directory put
/// in its place since is not read).
fn still_a_file(f: File) -> io::Result<File> {
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no longer a regular file"));
    }
    Ok(f)
}

fn is_source_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EACCES) | Some(libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::OpenOptionsExt;

    fn open(p: &Path) -> impl FnOnce() -> io::Result<File> + '_ {
        move || OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(p)
    }

    fn entries(tar: Vec<u8>) -> Vec<(String, u64, Vec<u8>)> {
        let mut out = Vec::new();
        crate::archive::read::each_entry(&mut tar.as_slice(), &mut |item, data| {
            let mut v = Vec::new();
            io::copy(data, &mut v).unwrap();
            out.push((item.meta.display(), item.size, v));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn files_links_and_what_is_no_longer_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, b"content").unwrap();
        fs::hard_link(&a, dir.path().join("b")).unwrap();
        let st = Stat::from(&fs::symlink_metadata(&a).unwrap());
        let mut links = HardLinks::default();
        let mut tar = TarWriter::new(Vec::new(), Flavor::Full);
        let put = |tar: &mut TarWriter<Vec<u8>>, name: &str, links: &mut HardLinks| {
            put_file(tar, &meta(name.into(), &st), &st, open(&a), links, name).unwrap()
        };
        assert_eq!(put(&mut tar, "a", &mut links), Put::Stored { size: 7, changed: None });
        assert_eq!(put(&mut tar, "b", &mut links), Put::Linked);
        // The walk saw a file; a directory stands there now.
        let swapped = dir.path().join("swapped");
        fs::create_dir(&swapped).unwrap();
        let one = Stat { nlink: 1, ino: st.ino + 1, ..st };
        let got = put_file(&mut tar, &meta(b"s".to_vec(), &one), &one, open(&swapped), &mut links, "s").unwrap();
        assert_eq!(got, Put::Unreadable("cannot read: no longer a regular file".into()));
        let got = entries(tar.finish().unwrap());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], ("a".into(), 7, b"content".to_vec()));
        assert_eq!(got[1].0, "b");

        // Android's flavour carries no links: the second name gets the content again.
        let mut tar = TarWriter::new(Vec::new(), Flavor::Android);
        let mut links = HardLinks::default();
        put(&mut tar, "a", &mut links);
        assert_eq!(put(&mut tar, "b", &mut links), Put::Stored { size: 7, changed: None });
    }

    /// Looking for holes moves the file's offset; a file found to have none (or too many to
    /// store sparse) is still read from its first byte.
    #[test]
    fn a_file_is_read_from_its_start_whatever_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"0123456789").unwrap();
        let st = Stat { blocks: 0, ..Stat::from(&fs::symlink_metadata(&p).unwrap()) };
        let moved = || {
            let mut f = File::open(&p)?;
            f.seek(SeekFrom::End(0))?;
            Ok(f)
        };
        let mut tar = TarWriter::new(Vec::new(), Flavor::Full);
        let got = put_file(&mut tar, &meta(b"f".to_vec(), &st), &st, moved, &mut HardLinks::default(), "f").unwrap();
        assert_eq!(got, Put::Stored { size: 10, changed: None });
        assert_eq!(entries(tar.finish().unwrap())[0].2, b"0123456789");
    }
}
