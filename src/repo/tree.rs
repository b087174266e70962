//! Trees: one per directory, the list of its entries sorted by name, each with its metadata
//! and where its content is (a file's chunks, a directory's own tree). A tree is a byte stream
//! cut into blobs like file content, so a large directory is several blobs and one new file
//! changes one of them; an unchanged directory makes the same blobs and is stored once.
//!
//! A node names each chunk by id and by place (pack, offset, length): a reader follows a path
//! from the snapshot's record down to a file without reading any index. Owns the node layout
//! and its checked decoding; it never allocates what a hostile length claims before the bytes
//! are there.
//!
//! ```text
//! tree = version:u8 node*
//! node = name_len:u16 name kind:u8 mode:u32 uid:u32 gid:u32 mtime:i64 nsec:u32 size:u64
//!        xattrs:u16 (klen:u16 k vlen:u32 v)* target_len:u16 target chunks:u32 ref*
//! ref  = id:[32] pack:[16] offset:u32 stored:u32 raw:u32 flags:u8 (bit 0 compressed, bit 1 tree)
//! ```

use std::io::{self, Read};

use super::blob::Kind as BlobKind;
use super::id::{Id, Name};
use super::pack::{Entry, Located};
use crate::error::{Error, Result};

const VERSION: u8 = 1;
const MAX_NAME: usize = 65_535;
const MAX_XATTRS: usize = 4096;
/// A file's chunks: 16 TiB of 64 KiB chunks at most; refused beyond.
const MAX_CHUNKS: u32 = 1 << 28;
pub const REF_LEN: usize = 61;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    File = 0,
    Dir = 1,
    Symlink = 2,
    /// A hard link to a file earlier in the snapshot (`target`: its path); its chunks are kept
    /// too, so that restoring it alone still gives the content.
    Hardlink = 3,
    /// A directory on the way to what was selected, not selected itself: no metadata to apply.
    Implicit = 4,
}

impl NodeKind {
    fn from_u8(b: u8) -> Option<NodeKind> {
        Some(match b {
            0 => NodeKind::File,
            1 => NodeKind::Dir,
            2 => NodeKind::Symlink,
            3 => NodeKind::Hardlink,
            4 => NodeKind::Implicit,
            _ => return None,
        })
    }

    pub fn is_dir(self) -> bool {
        matches!(self, NodeKind::Dir | NodeKind::Implicit)
    }
}

/// A file node's `mode` bit beyond the permissions: the file had holes when it was read
/// (allocated blocks short of its size), so a restore writes its zero blocks as holes.
pub const SPARSE: u32 = 1 << 16;
/// The permission bits of a node's `mode`.
pub const PERMS: u32 = 0o7777;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: Vec<u8>,
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub size: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub target: Vec<u8>,
    /// File content, or a directory's tree blobs.
    pub chunks: Vec<Located>,
}

impl Node {
    pub fn new(name: Vec<u8>, kind: NodeKind) -> Node {
        Node {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            xattrs: Vec::new(),
            target: Vec::new(),
            chunks: Vec::new(),
        }
    }
}

pub fn start(out: &mut Vec<u8>) {
    out.push(VERSION);
}

pub fn encode_ref(l: &Located, out: &mut Vec<u8>) {
    out.extend_from_slice(&l.entry.id.0);
    out.extend_from_slice(&l.pack.0);
    out.extend_from_slice(&l.entry.offset.to_le_bytes());
    out.extend_from_slice(&l.entry.stored.to_le_bytes());
    out.extend_from_slice(&l.entry.raw.to_le_bytes());
    out.push(u8::from(l.entry.compressed) | (u8::from(l.entry.kind == BlobKind::Tree) << 1));
}

pub fn decode_ref(r: &[u8]) -> Located {
    let u = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    let mut id = [0u8; 32];
    id.copy_from_slice(&r[..32]);
    let mut pack = [0u8; 16];
    pack.copy_from_slice(&r[32..48]);
    Located {
        pack: Name(pack),
        entry: Entry {
            id: Id(id),
            kind: if r[60] & 2 != 0 { BlobKind::Tree } else { BlobKind::Data },
            compressed: r[60] & 1 != 0,
            offset: u(48),
            stored: u(52),
            raw: u(56),
        },
    }
}

/// Append a node. Names and xattr keys longer than the format holds are refused.
pub fn encode(n: &Node, out: &mut Vec<u8>) -> Result<()> {
    let too_long = |what: &str| {
        Error::usage(format!("{what} of {:?} is too long for a snapshot", String::from_utf8_lossy(&n.name)))
    };
    if n.name.len() > MAX_NAME || n.target.len() > MAX_NAME || n.xattrs.len() > MAX_XATTRS {
        return Err(too_long("the name, link target or xattr list"));
    }
    out.extend_from_slice(&(n.name.len() as u16).to_le_bytes());
    out.extend_from_slice(&n.name);
    out.push(n.kind as u8);
    for v in [n.mode, n.uid, n.gid] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&n.mtime.to_le_bytes());
    out.extend_from_slice(&n.mtime_nsec.to_le_bytes());
    out.extend_from_slice(&n.size.to_le_bytes());
    out.extend_from_slice(&(n.xattrs.len() as u16).to_le_bytes());
    for (k, v) in &n.xattrs {
        if k.len() > MAX_NAME || v.len() > u32::MAX as usize {
            return Err(too_long("an xattr"));
        }
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&(n.target.len() as u16).to_le_bytes());
    out.extend_from_slice(&n.target);
    out.extend_from_slice(&(n.chunks.len() as u32).to_le_bytes());
    for c in &n.chunks {
        encode_ref(c, out);
    }
    Ok(())
}

/// Reads the nodes of one tree from its byte stream.
pub struct Reader<R: Read> {
    src: R,
    what: String,
    started: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(src: R, what: &str) -> Reader<R> {
        Reader { src, what: what.to_string(), started: false }
    }

    /// The next node, `None` at the tree's end.
    pub fn next_node(&mut self) -> Result<Option<Node>> {
        read_node(&mut self.src, &self.what, &mut self.started)
    }
}

/// The next node of a tree read from `src` (`started`: its version byte was read).
pub fn read_node(src: &mut dyn Read, what: &str, started: &mut bool) -> Result<Option<Node>> {
    let mut p = Parse { src, what };
    if !*started {
        let mut v = [0u8; 1];
        p.exact(&mut v)?;
        if v[0] != VERSION {
            return Err(p.bad(format!("version {}", v[0])));
        }
        *started = true;
    }
    p.node()
}

struct Parse<'r> {
    src: &'r mut dyn Read,
    what: &'r str,
}

impl Parse<'_> {
    fn bad(&self, why: impl std::fmt::Display) -> Error {
        Error::archive(self.what, format!("has a broken tree: {why}"))
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.src.read_exact(buf).map_err(|e| match crate::error::extract_ours(e) {
            Ok(ours) => ours,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.bad("cut short"),
            Err(e) => self.bad(e),
        })
    }

    fn bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        // Read in steps so that a lying length costs only what is really there.
        let mut out = Vec::new();
        let mut left = n;
        let mut buf = [0u8; 4096];
        while left > 0 {
            let k = left.min(buf.len());
            self.exact(&mut buf[..k])?;
            out.extend_from_slice(&buf[..k]);
            left -= k;
        }
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16> {
        let mut b = [0u8; 2];
        self.exact(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn node(&mut self) -> Result<Option<Node>> {
        let mut first = [0u8; 2];
        let mut got = 0;
        while got < 2 {
            match self.src.read(&mut first[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(self.bad("cut short")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(crate::error::extract_ours(e).unwrap_or_else(|e| self.bad(e))),
            }
        }
        let name_len = u16::from_le_bytes(first) as usize;
        let name = self.bytes(name_len)?;
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
            return Err(self.bad(format!("an entry named {:?}", String::from_utf8_lossy(&name))));
        }
        let mut k = [0u8; 1];
        self.exact(&mut k)?;
        let kind = NodeKind::from_u8(k[0]).ok_or_else(|| self.bad(format!("an entry of kind {}", k[0])))?;
        let mut n = Node::new(name, kind);
        n.mode = self.u32()?;
        n.uid = self.u32()?;
        n.gid = self.u32()?;
        n.mtime = self.u64()? as i64;
        n.mtime_nsec = self.u32()?;
        n.size = self.u64()?;
        let xattrs = self.u16()? as usize;
        if xattrs > MAX_XATTRS {
            return Err(self.bad("too many xattrs"));
        }
        for _ in 0..xattrs {
            let kl = self.u16()? as usize;
            let key = self.bytes(kl)?;
            let vl = self.u32()? as usize;
            let val = self.bytes(vl)?;
            n.xattrs.push((key, val));
        }
        let tl = self.u16()? as usize;
        n.target = self.bytes(tl)?;
        let chunks = self.u32()?;
        if chunks > MAX_CHUNKS {
            return Err(self.bad("a file of too many chunks"));
        }
        let mut r = [0u8; REF_LEN];
        for _ in 0..chunks {
            self.exact(&mut r)?;
            n.chunks.push(decode_ref(&r));
        }
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_round_trip_and_hostile_trees_are_refused() {
        let loc = Located {
            pack: Name([3; 16]),
            entry: Entry { id: Id([4; 32]), kind: BlobKind::Data, compressed: true, offset: 7, stored: 8, raw: 9 },
        };
        let mut f = Node::new(b"a\xffb".to_vec(), NodeKind::File);
        f.mode = 0o4755;
        f.mtime = -5;
        f.mtime_nsec = 999;
        f.size = 9;
        f.xattrs = vec![(b"security.selinux".to_vec(), b"u:object_r:app_data_file:s0".to_vec())];
        f.chunks = vec![loc, loc];
        let mut d = Node::new(b"dir".to_vec(), NodeKind::Dir);
        d.chunks = vec![Located { entry: Entry { kind: BlobKind::Tree, ..loc.entry }, ..loc }];
        let mut s = Node::new(b"link".to_vec(), NodeKind::Symlink);
        s.target = b"/data/data".to_vec();
        let mut bytes = Vec::new();
        start(&mut bytes);
        for n in [&f, &d, &s] {
            encode(n, &mut bytes).unwrap();
        }
        let mut r = Reader::new(&bytes[..], "t");
        assert_eq!(r.next_node().unwrap().as_ref(), Some(&f));
        assert_eq!(r.next_node().unwrap().as_ref(), Some(&d));
        assert_eq!(r.next_node().unwrap().as_ref(), Some(&s));
        assert_eq!(r.next_node().unwrap(), None);
        // Cut anywhere inside a node: an error, never a short success.
        for cut in [2, 5, 30, bytes.len() - 1] {
            let mut r = Reader::new(&bytes[..cut], "t");
            let mut res = Ok(Some(Node::new(b"x".to_vec(), NodeKind::File)));
            while let Ok(Some(_)) = res {
                res = r.next_node();
            }
            assert!(res.is_err(), "cut at {cut}");
        }
        // Names that would climb or nest.
        for bad in [&b".."[..], b"a/b", b""] {
            let mut t = Vec::new();
            start(&mut t);
            encode(&Node::new(bad.to_vec(), NodeKind::File), &mut t).unwrap();
            assert!(Reader::new(&t[..], "t").next_node().is_err());
        }
        // A lying chunk count costs nothing before it fails.
        let mut t = Vec::new();
        start(&mut t);
        encode(&Node::new(b"x".to_vec(), NodeKind::File), &mut t).unwrap();
        let n = t.len();
        t[n - 4..].copy_from_slice(&(MAX_CHUNKS - 1).to_le_bytes());
        assert!(Reader::new(&t[..], "t").next_node().is_err());
    }
}
