//! Index objects (`index/<random>`): which pack holds which blob, at what offset and length,
//! for one or a few packs. A writer publishes one soon after the packs it names are stored, so
//! a run that is killed leaves packs that the next run finds and reuses.
//!
//! ```text
//! index = zstd( "cpbkidx1" (pack:[16] count:u32 (kind:u8 flags:u8 offset:u32 stored:u32 raw:u32 id:[32]){count})* )
//! ```
//!
//! It must never name a pack before the pack is stored, and never be rewritten in place:
//! `prune` writes a new index object and only then deletes the old.

use super::blob::Kind;
use super::id::{Id, Name};
use super::pack::{Entry, Located};
use super::seal::Keys;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"cpbkidx1";
const ENTRY: usize = 46;
/// An index object never decodes to more than this (about 350,000 blobs).
const MAX_DECODED: usize = 16 << 20;

pub fn key(prefix: &str, name: &Name) -> String {
    format!("{prefix}index/{}", name.hex())
}

pub fn name_of(key: &str) -> Option<Name> {
    Name::parse(key.rsplit_once("index/")?.1)
}

/// Encode the entries of some packs.
pub fn encode(packs: &[(Name, Vec<Entry>)], keys: Option<&Keys>) -> Result<Vec<u8>> {
    let mut raw = MAGIC.to_vec();
    for (name, entries) in packs {
        raw.extend_from_slice(&name.0);
        raw.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            raw.push(e.kind as u8);
            raw.push(u8::from(e.compressed));
            raw.extend_from_slice(&e.offset.to_le_bytes());
            raw.extend_from_slice(&e.stored.to_le_bytes());
            raw.extend_from_slice(&e.raw.to_le_bytes());
            raw.extend_from_slice(&e.id.0);
        }
    }
    let z = zstd::bulk::compress(&raw, 3).map_err(|e| Error::internal(format!("zstd: {e}")))?;
    match keys {
        Some(k) => k.seal_index(&z),
        None => Ok(z),
    }
}

/// Decode an index object, calling `each` for every blob it locates.
pub fn decode(bytes: &[u8], what: &str, keys: Option<&Keys>, each: &mut dyn FnMut(Located)) -> Result<()> {
    let opened;
    let bytes = match keys {
        Some(k) => {
            opened = k.open_index(bytes, what)?;
            &opened[..]
        }
        None => bytes,
    };
    let raw = zstd::bulk::decompress(bytes, MAX_DECODED)
        .map_err(|e| Error::archive(what, format!("is not an index object: {e}")))?;
    let bad = |why: &str| Error::archive(what, format!("is not a valid index object: {why}"));
    let mut rest = raw.strip_prefix(MAGIC.as_slice()).ok_or_else(|| bad("no magic"))?;
    while !rest.is_empty() {
        if rest.len() < 20 {
            return Err(bad("cut short"));
        }
        let mut pack = [0u8; 16];
        pack.copy_from_slice(&rest[..16]);
        let count = u32::from_le_bytes([rest[16], rest[17], rest[18], rest[19]]) as usize;
        rest = &rest[20..];
        let len = count.checked_mul(ENTRY).filter(|n| *n <= rest.len()).ok_or_else(|| bad("cut short"))?;
        for r in rest[..len].chunks_exact(ENTRY) {
            let kind = Kind::from_u8(r[0]).ok_or_else(|| bad("unknown blob kind"))?;
            let u = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
            let mut id = [0u8; 32];
            id.copy_from_slice(&r[14..46]);
            each(Located {
                pack: Name(pack),
                entry: Entry { id: Id(id), kind, compressed: r[1] & 1 == 1, offset: u(2), stored: u(6), raw: u(10) },
            });
        }
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_objects_round_trip_and_refuse_garbage() {
        let e = |i: u8, off: u32| Entry {
            id: Id([i; 32]),
            kind: Kind::Data,
            compressed: i.is_multiple_of(2),
            offset: off,
            stored: 7,
            raw: 9,
        };
        let packs = vec![(Name([1; 16]), vec![e(1, 0), e(2, 7)]), (Name([2; 16]), vec![e(3, 0)])];
        let bytes = encode(&packs, None).unwrap();
        let mut got = Vec::new();
        decode(&bytes, "i", None, &mut |l| got.push(l)).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], Located { pack: Name([2; 16]), entry: e(3, 0) });
        assert!(decode(b"garbage", "i", None, &mut |_| {}).is_err());
        let cut = zstd::bulk::compress(&[MAGIC.as_slice(), &[1u8; 19]].concat(), 3).unwrap();
        assert!(decode(&cut, "i", None, &mut |_| {}).is_err());
        let n = Name::random();
        assert_eq!(name_of(&key("a/", &n)), Some(n));
    }
}
