//! The metadata cache: for one selection of one phone, the previous snapshot's files in walk
//! order, each with its size, mtime, ctime and inode and the chunks that held its content. A
//! file whose metadata is unchanged is not read again. It is streamed beside the sorted walk
//! (one record in memory), written anew by each snapshot, and made current only after that
//! snapshot's record is stored.
//!
//! An optimisation only: the writer trusts it only while the snapshot it came from still
//! exists, and never for a chunk in a pack prune has marked. A corrupt or lost cache costs
//! speed (the files are read and hashed), never correctness.

use std::cmp::Ordering;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::pack::Located;
use super::tree;
use crate::error::{Error, IoContext, Result};

const MAGIC: &[u8; 8] = b"cpbkfil1";

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub ctime: i64,
    pub ctime_nsec: u32,
    pub ino: u64,
}

impl Stamp {
    pub fn of(m: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec().clamp(0, 999_999_999) as u32,
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec().clamp(0, 999_999_999) as u32,
            ino: m.ino(),
        }
    }
}

/// The walk's order: component by component, bytewise (a `/` sorts before every other byte).
pub fn walk_order(a: &[u8], b: &[u8]) -> Ordering {
    let key = |c: u8| if c == b'/' { 0u16 } else { u16::from(c) + 1 };
    a.iter().map(|&c| key(c)).cmp(b.iter().map(|&c| key(c)))
}

/// Where the previous snapshot came from: its record's key and id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub record_key: String,
    pub backup_file_id: String,
}

/// One file: its path, stamp and chunks.
type Record = (Vec<u8>, Stamp, Vec<Located>);

/// Reads the previous snapshot's records forward, in walk order.
pub struct Reader {
    src: zstd::stream::read::Decoder<'static, BufReader<File>>,
    pub source: Source,
    next: Option<Record>,
    broken: bool,
}

fn read_u32(r: &mut dyn Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_bytes(r: &mut dyn Read, n: u32, max: u32) -> io::Result<Vec<u8>> {
    if n > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "length out of range"));
    }
    let mut v = vec![0u8; n as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

impl Reader {
    /// The cache at `path`; `None` when there is none or it cannot be read.
    pub fn open(path: &Path) -> Option<Reader> {
        let f = File::open(path).ok()?;
        let mut src = zstd::stream::read::Decoder::new(f).ok()?;
        let mut magic = [0u8; 8];
        src.read_exact(&mut magic).ok()?;
        if &magic != MAGIC {
            tracing::info!("the metadata cache {} is of another version: files will be read", path.display());
            return None;
        }
        let n = read_u32(&mut src).ok()?;
        let record_key = String::from_utf8(read_bytes(&mut src, n, 4096).ok()?).ok()?;
        let n = read_u32(&mut src).ok()?;
        let backup_file_id = String::from_utf8(read_bytes(&mut src, n, 4096).ok()?).ok()?;
        let mut r = Reader { src, source: Source { record_key, backup_file_id }, next: None, broken: false };
        r.advance();
        Some(r)
    }

    fn advance(&mut self) {
        self.next = match self.read_one() {
            Ok(x) => x,
            Err(e) => {
                if !self.broken {
                    tracing::info!("the metadata cache ends early ({e}): the rest of the files will be read");
                }
                self.broken = true;
                None
            }
        };
    }

    fn read_one(&mut self) -> io::Result<Option<Record>> {
        let mut b = [0u8; 4];
        match self.src.read(&mut b[..1])? {
            0 => return Ok(None),
            _ => self.src.read_exact(&mut b[1..])?,
        }
        let path = read_bytes(&mut self.src, u32::from_le_bytes(b), 1 << 20)?;
        let r = &mut self.src;
        let s = Stamp {
            size: read_u64(r)?,
            mtime: read_u64(r)? as i64,
            mtime_nsec: read_u32(r)?,
            ctime: read_u64(r)? as i64,
            ctime_nsec: read_u32(r)?,
            ino: read_u64(r)?,
        };
        let n = read_u32(r)?;
        if n > 1 << 24 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk count out of range"));
        }
        let mut chunks = Vec::with_capacity(n as usize);
        let mut rb = [0u8; tree::REF_LEN];
        for _ in 0..n {
            r.read_exact(&mut rb)?;
            chunks.push(tree::decode_ref(&rb));
        }
        Ok(Some((path, s, chunks)))
    }

    /// The chunks of `path` when the cache holds it with this stamp. Paths must be asked in
    /// walk order; records before `path` are passed over.
    pub fn find(&mut self, path: &[u8], stamp: &Stamp) -> Option<Vec<Located>> {
        loop {
            let ord = match &self.next {
                None => return None,
                Some((p, _, _)) => walk_order(p, path),
            };
            match ord {
                Ordering::Less => self.advance(),
                Ordering::Greater => return None,
                Ordering::Equal => {
                    let hit = self.next.take().and_then(|(_, s, c)| (s == *stamp).then_some(c));
                    self.advance();
                    return hit;
                }
            }
        }
    }
}

/// Writes the new snapshot's records; `commit` makes them the cache.
pub struct Writer {
    out: Option<zstd::stream::write::Encoder<'static, BufWriter<File>>>,
    tmp: PathBuf,
    path: PathBuf,
    last: Vec<u8>,
}

impl Writer {
    pub fn create(path: &Path, source: &Source) -> Result<Writer> {
        let tmp = path.with_extension(format!("new-{}", std::process::id()));
        let f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        let mut out = zstd::stream::write::Encoder::new(BufWriter::new(f), 1).ctx(|| "starting zstd".into())?;
        let mut head = MAGIC.to_vec();
        for s in [&source.record_key, &source.backup_file_id] {
            head.extend_from_slice(&(s.len() as u32).to_le_bytes());
            head.extend_from_slice(s.as_bytes());
        }
        out.write_all(&head).ctx(|| format!("writing {}", tmp.display()))?;
        Ok(Writer { out: Some(out), tmp, path: path.to_path_buf(), last: Vec::new() })
    }

    /// One file; in walk order (an out-of-order path is left out: the reader could not find it).
    pub fn add(&mut self, path: &[u8], s: &Stamp, chunks: &[Located]) -> Result<()> {
        if !self.last.is_empty() && walk_order(&self.last, path) != Ordering::Less {
            return Ok(());
        }
        self.last = path.to_vec();
        let Some(out) = self.out.as_mut() else { return Ok(()) };
        let mut rec = Vec::with_capacity(path.len() + 48 + chunks.len() * tree::REF_LEN);
        rec.extend_from_slice(&(path.len() as u32).to_le_bytes());
        rec.extend_from_slice(path);
        rec.extend_from_slice(&s.size.to_le_bytes());
        rec.extend_from_slice(&s.mtime.to_le_bytes());
        rec.extend_from_slice(&s.mtime_nsec.to_le_bytes());
        rec.extend_from_slice(&s.ctime.to_le_bytes());
        rec.extend_from_slice(&s.ctime_nsec.to_le_bytes());
        rec.extend_from_slice(&s.ino.to_le_bytes());
        rec.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for c in chunks {
            tree::encode_ref(c, &mut rec);
        }
        out.write_all(&rec).ctx(|| format!("writing {}", self.tmp.display()))
    }

    /// Make this the cache (after the snapshot's record is stored).
    pub fn commit(mut self) -> Result<()> {
        let Some(out) = self.out.take() else { return Ok(()) };
        let w = out.finish().ctx(|| format!("writing {}", self.tmp.display()))?;
        let f = w
            .into_inner()
            .map_err(|e| Error::Io { context: format!("writing {}", self.tmp.display()), source: e.into_error() })?;
        f.sync_all().ctx(|| format!("flushing {}", self.tmp.display()))?;
        fs::rename(&self.tmp, &self.path).ctx(|| format!("renaming {}", self.tmp.display()))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::blob::Kind;
    use crate::repo::id::{Id, Name};
    use crate::repo::pack::Entry;

    #[test]
    fn walk_order_is_component_wise() {
        assert_eq!(walk_order(b"a/b", b"a-c"), Ordering::Less);
        assert_eq!(walk_order(b"a", b"a/b"), Ordering::Less);
        assert_eq!(walk_order(b"a/z", b"ab"), Ordering::Less);
        assert_eq!(walk_order(b"b", b"a/z"), Ordering::Greater);
    }

    #[test]
    fn a_cache_streams_beside_the_walk_and_a_broken_one_only_misses() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("files");
        let src = Source { record_key: "r/x.manifest.json".into(), backup_file_id: "bf-1".into() };
        let loc = |i: u8| Located {
            pack: Name([i; 16]),
            entry: Entry { id: Id([i; 32]), kind: Kind::Data, compressed: false, offset: 0, stored: 1, raw: 1 },
        };
        let st = |i: u64| Stamp { size: i, ino: i, ..Default::default() };
        let mut w = Writer::create(&path, &src).unwrap();
        let paths: [&[u8]; 4] = [b"data/a/x", b"data/a-b", b"data/b/1", b"data/b/2"];
        for (i, p) in paths.iter().enumerate() {
            w.add(p, &st(i as u64), &[loc(i as u8)]).unwrap();
        }
        // Not committed: no cache.
        drop(w);
        assert!(Reader::open(&path).is_none());
        let mut w = Writer::create(&path, &src).unwrap();
        for (i, p) in paths.iter().enumerate() {
            w.add(p, &st(i as u64), &[loc(i as u8)]).unwrap();
        }
        w.commit().unwrap();
        let mut r = Reader::open(&path).unwrap();
        assert_eq!(r.source, src);
        assert_eq!(r.find(b"data/0", &st(0)), None);
        assert_eq!(r.find(b"data/a/x", &st(0)), Some(vec![loc(0)]));
        assert_eq!(r.find(b"data/a-b", &st(9)), None, "changed metadata");
        assert_eq!(r.find(b"data/b/2", &st(3)), Some(vec![loc(3)]), "skips data/b/1");
        assert_eq!(r.find(b"data/c", &st(3)), None);
        // Cut in the middle: what is before the cut still serves.
        let bytes = fs::read(&path).unwrap();
        let mut raw = Vec::new();
        zstd::stream::copy_decode(&bytes[..], &mut raw).unwrap();
        let cut = zstd::bulk::compress(&raw[..raw.len() - 30], 1).unwrap();
        fs::write(&path, cut).unwrap();
        let mut r = Reader::open(&path).unwrap();
        assert_eq!(r.find(b"data/a/x", &st(0)), Some(vec![loc(0)]));
        assert_eq!(r.find(b"data/b/2", &st(3)), None);
        fs::write(&path, b"garbage").unwrap();
        assert!(Reader::open(&path).is_none());
    }
}
