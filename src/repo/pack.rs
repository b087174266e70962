//! Pack objects (`data/XX/<random>`): a run of blobs, then the pack's own index of them, then
//! a trailer. Owns that layout, the writer that fills a pack in memory, and the parsing of a
//! pack's index (what `prune` and an index rebuild read when an index object is lost).
//!
//! ```text
//! pack    = blob* header trailer
//! header  = version:u8  entry*          entry = kind:u8 flags:u8 raw:u32 stored:u32 id:[32]
//! trailer = header_len:u32  "cpbkpak1"     (integers little-endian; offsets are cumulative)
//! ```
//!
//! It must never name a pack by its content (two writers must never write the same key), and
//! never trust a length it read without checking it against the pack's size.

use super::blob::Kind;
use super::id::{Id, Name};
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"cpbkpak1";
const VERSION: u8 = 1;
pub const ENTRY_LEN: usize = 42;
pub const TRAILER_LEN: usize = 12;
/// A pack is sent once it holds this much.
pub const TARGET: usize = 16 << 20;
/// Or this many blobs: what a writer holds per pack in flight (its entries, the index
/// object's, the blobs not yet published) then stays the same whether the files are large
/// or a few hundred bytes each (a pack of those reaches this long before its target).
pub const MAX_ENTRIES: usize = 8_000;
/// A tree pack is sent once it holds this much: trees of a million files are not held whole,
/// and a writer of many small files holds little more than one of a few large ones.
pub const TREE_TARGET: usize = 1 << 20;

/// Where one blob lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: Id,
    pub kind: Kind,
    pub compressed: bool,
    pub offset: u32,
    pub stored: u32,
    pub raw: u32,
}

/// A blob located in the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub pack: Name,
    pub entry: Entry,
}

/// The object key of a pack under the repository's prefix.
pub fn key(prefix: &str, pack: &Name) -> String {
    let h = pack.hex();
    format!("{prefix}data/{}/{h}", &h[..2])
}

/// The pack a key names, when it is one.
pub fn name_of(key: &str) -> Option<Name> {
    let rest = key.rsplit_once("data/")?.1;
    let (dir, hex) = rest.split_once('/')?;
    let n = Name::parse(hex)?;
    (dir.len() == 2 && hex.starts_with(dir)).then_some(n)
}

/// A pack being filled.
pub struct Writer {
    pub name: Name,
    buf: Vec<u8>,
    /// Blobs added before the pack had its buffer (the last pack's, still being stored), in
    /// order after `buf`'s bytes: copied in when the buffer comes.
    later: Vec<Vec<u8>>,
    later_bytes: usize,
    /// Whether `buf` is the pack's buffer yet.
    has_buf: bool,
    entries: Vec<Entry>,
    target: usize,
}

impl Writer {
    pub fn new() -> Writer {
        Writer {
            name: Name::random(),
            buf: Vec::new(),
            later: Vec::new(),
            later_bytes: 0,
            has_buf: true,
            entries: Vec::new(),
            target: TARGET,
        }
    }

    /// A pack whose buffer is still in use: blobs are kept aside (`add_owned`) until `fill`
    /// gives it one.
    pub fn awaiting() -> Writer {
        Writer { has_buf: false, ..Writer::new() }
    }

    /// Whether the pack still waits for its buffer, and how many bytes of blobs it keeps aside.
    pub fn waiting(&self) -> Option<usize> {
        (!self.has_buf).then_some(self.later_bytes)
    }

    /// The buffer of a pack that waits for one (emptied first; a pack that has one keeps its
    /// own): the blobs kept aside are copied into it, and their buffers handed to `done`.
    pub fn fill(&mut self, mut buf: Vec<u8>, done: &mut dyn FnMut(Vec<u8>)) {
        if self.has_buf {
            return;
        }
        buf.clear();
        for b in self.later.drain(..) {
            buf.extend_from_slice(&b);
            done(b);
        }
        self.buf = buf;
        self.later_bytes = 0;
        self.has_buf = true;
    }

    /// A pack sent once it holds `target` bytes (at most `TARGET`).
    pub fn with_target(target: usize) -> Writer {
        Writer { target: target.min(TARGET), ..Writer::new() }
    }

    /// A pack filled in `buf` (emptied first): the buffer of a pack already stored, reused so
    /// that a snapshot allocates its data pack buffer once.
    pub fn reuse(mut buf: Vec<u8>) -> Writer {
        buf.clear();
        Writer { buf, ..Writer::new() }
    }

    pub fn len(&self) -> usize {
        self.buf.len() + self.later_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn full(&self) -> bool {
        self.len() >= self.target || self.entries.len() >= MAX_ENTRIES
    }

    /// Whether a blob of `len` bytes would take the pack past its target (it goes into the
    /// next one, so a pack's buffer never grows past the target and its header).
    pub fn would_overflow(&self, len: usize) -> bool {
        !self.entries.is_empty() && self.len() + len > self.target
    }

    pub fn add(&mut self, id: Id, kind: Kind, compressed: bool, raw: u32, stored: &[u8]) -> Entry {
        let e = self.entry(id, kind, compressed, raw, stored.len());
        if self.has_buf {
            self.buf.extend_from_slice(stored);
        } else {
            self.later.push(stored.to_vec());
            self.later_bytes += stored.len();
        }
        e
    }

    /// `add`, of bytes the pack may keep as they are while it waits for its buffer; their
    /// buffer back when they were copied.
    pub fn add_owned(
        &mut self,
        id: Id,
        kind: Kind,
        compressed: bool,
        raw: u32,
        stored: Vec<u8>,
    ) -> (Entry, Option<Vec<u8>>) {
        if self.has_buf {
            return (self.add(id, kind, compressed, raw, &stored), Some(stored));
        }
        let e = self.entry(id, kind, compressed, raw, stored.len());
        self.later_bytes += stored.len();
        self.later.push(stored);
        (e, None)
    }

    fn entry(&mut self, id: Id, kind: Kind, compressed: bool, raw: u32, stored: usize) -> Entry {
        let e = Entry { id, kind, compressed, offset: self.len() as u32, stored: stored as u32, raw };
        self.entries.push(e);
        e
    }

    /// The pack's bytes and its entries (a pack still waiting for its buffer makes one).
    pub fn finish(mut self) -> (Name, Vec<u8>, Vec<Entry>) {
        if !self.has_buf {
            self.fill(Vec::new(), &mut drop);
        }
        let start = self.buf.len();
        self.buf.push(VERSION);
        for e in &self.entries {
            self.buf.push(e.kind as u8);
            self.buf.push(u8::from(e.compressed));
            self.buf.extend_from_slice(&e.raw.to_le_bytes());
            self.buf.extend_from_slice(&e.stored.to_le_bytes());
            self.buf.extend_from_slice(&e.id.0);
        }
        let header_len = (self.buf.len() - start) as u32;
        self.buf.extend_from_slice(&header_len.to_le_bytes());
        self.buf.extend_from_slice(MAGIC);
        (self.name, self.buf, self.entries)
    }
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

/// The header length a pack's trailer gives (its last `TRAILER_LEN` bytes).
pub fn header_len(trailer: &[u8], pack_size: u64, what: &str) -> Result<u32> {
    if trailer.len() != TRAILER_LEN || &trailer[4..] != MAGIC {
        return Err(Error::archive(what, "is not a cpbackup pack (no trailer)"));
    }
    let n = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if n == 0 || u64::from(n) + TRAILER_LEN as u64 > pack_size {
        return Err(Error::archive(what, format!("claims a header of {n} bytes in a pack of {pack_size}")));
    }
    Ok(n)
}

/// Parse a pack's header (the `header_len` bytes before its trailer).
pub fn parse_header(header: &[u8], pack_size: u64, what: &str) -> Result<Vec<Entry>> {
    if header.first() != Some(&VERSION) || !(header.len() - 1).is_multiple_of(ENTRY_LEN) {
        return Err(Error::archive(what, "has a pack header of an unknown version or length"));
    }
    let body = pack_size.saturating_sub((header.len() + TRAILER_LEN) as u64);
    let mut offset = 0u64;
    let mut out = Vec::with_capacity((header.len() - 1) / ENTRY_LEN);
    for r in header[1..].chunks_exact(ENTRY_LEN) {
        let kind = Kind::from_u8(r[0]).ok_or_else(|| Error::archive(what, format!("has a blob of kind {}", r[0])))?;
        let raw = u32::from_le_bytes([r[2], r[3], r[4], r[5]]);
        let stored = u32::from_le_bytes([r[6], r[7], r[8], r[9]]);
        let mut id = [0u8; 32];
        id.copy_from_slice(&r[10..42]);
        if offset + u64::from(stored) > body {
            return Err(Error::archive(what, "has blobs past its end"));
        }
        out.push(Entry { id: Id(id), kind, compressed: r[1] & 1 == 1, offset: offset as u32, stored, raw });
        offset += u64::from(stored);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_lists_its_blobs_at_its_end() {
        let mut w = Writer::new();
        let a = w.add(Id([1; 32]), Kind::Data, true, 100, b"abc");
        let b = w.add(Id([2; 32]), Kind::Tree, false, 5, b"hello");
        assert_eq!((a.offset, b.offset), (0, 3));
        let (name, bytes, entries) = w.finish();
        assert_eq!(entries, vec![a, b]);
        let size = bytes.len() as u64;
        let n = header_len(&bytes[bytes.len() - TRAILER_LEN..], size, "p").unwrap() as usize;
        let header = &bytes[bytes.len() - TRAILER_LEN - n..bytes.len() - TRAILER_LEN];
        assert_eq!(parse_header(header, size, "p").unwrap(), entries);
        assert_eq!(&bytes[3..8], b"hello");
        let k = key("fleet/", &name);
        assert!(k.starts_with("fleet/data/"));
        assert_eq!(name_of(&k), Some(name));
        assert_eq!(name_of("fleet/index/00"), None);
        // Lies are refused.
        assert!(header_len(&bytes[bytes.len() - TRAILER_LEN..], 10, "p").is_err());
        assert!(parse_header(header, 20, "p").is_err());
        assert!(header_len(b"000000000000", size, "p").is_err());
    }

    #[test]
    fn a_pack_waiting_for_its_buffer_keeps_blobs_aside_in_order() {
        let mut w = Writer::awaiting();
        let (a, copied) = w.add_owned(Id([1; 32]), Kind::Data, false, 3, b"abc".to_vec());
        assert!(copied.is_none());
        let (b, _) = w.add_owned(Id([2; 32]), Kind::Data, false, 2, b"de".to_vec());
        assert_eq!((a.offset, b.offset, w.len(), w.waiting()), (0, 3, 5, Some(5)));
        let mut back = Vec::new();
        w.fill(b"old pack".to_vec(), &mut |v| back.push(v));
        assert_eq!((back.len(), w.waiting()), (2, None));
        let (c, copied) = w.add_owned(Id([3; 32]), Kind::Data, false, 1, b"f".to_vec());
        assert_eq!((c.offset, copied), (5, Some(b"f".to_vec())));
        let (_, bytes, entries) = w.finish();
        assert_eq!(&bytes[..6], b"abcdef");
        assert_eq!(entries, vec![a, b, c]);
        // One that never got a buffer makes one.
        let mut w = Writer::awaiting();
        w.add_owned(Id([1; 32]), Kind::Data, false, 3, b"xyz".to_vec());
        assert_eq!(&w.finish().1[..3], b"xyz");
    }
}
