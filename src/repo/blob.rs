//! One chunk as stored in a pack: zstd (level 3) when that shrinks it, its bytes as they are
//! when not (photos, videos, the compressed members of APKs: the same test as `.tar.zst`'s
//! stored frames, then a one-shot trial). Owns the encoding of a blob and its checked decoding.
//!
//! It must never hand out a decoded blob that is not exactly the length the index says.

use super::id::Id;
use super::seal::Keys;
use crate::compress::zst::looks_uniform;
use crate::error::{Error, Result};

/// What kind of bytes a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Data = 0,
    Tree = 1,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Data),
            1 => Some(Kind::Tree),
            _ => None,
        }
    }
}

const LEVEL: i32 = 3;
/// The trial that confirms a uniform-looking chunk is not worth compressing.
const TRIAL: usize = 128 << 10;

/// A compressor per thread (one zstd context, reused).
pub struct Encoder {
    z: zstd::bulk::Compressor<'static>,
    trial: zstd::bulk::Compressor<'static>,
}

impl Encoder {
    pub fn new() -> Result<Encoder> {
        let z = zstd::bulk::Compressor::new(LEVEL).map_err(|e| Error::internal(format!("zstd: {e}")))?;
        let trial = zstd::bulk::Compressor::new(1).map_err(|e| Error::internal(format!("zstd: {e}")))?;
        Ok(Encoder { z, trial })
    }

    /// Encode `raw` into `out` (cleared first); true when compressed, false when stored.
    pub fn encode(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        let compressed = self.compress(raw, out)?;
        if !compressed {
            out.clear();
            out.reserve_exact(raw.len());
            out.extend_from_slice(raw);
        }
        Ok(compressed)
    }

    /// `raw` compressed into `out` (cleared first) when that is worth it: true then; false
    /// leaves `out` holding nothing of use.
    fn compress(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        if looks_uniform(&raw[..raw.len().min(TRIAL)]) {
            let sample = &raw[..raw.len().min(TRIAL)];
            let small = self.trial.compress(sample).map_err(|e| Error::internal(format!("zstd: {e}")))?;
            if small.len() as u64 * 100 >= sample.len() as u64 * 99 {
                return Ok(false);
            }
        }
        // Exactly: `out` travels on with the chunk until it is packed, and a doubled buffer
        // would carry megabytes nobody uses.
        out.reserve_exact(zstd::zstd_safe::compress_bound(raw.len()));
        self.z.compress_to_buffer(raw, out).map_err(|e| Error::internal(format!("zstd: {e}")))?;
        Ok(out.len() < raw.len())
    }

    /// `encode`, then sealed under `keys` when the repository is sealed: a blob as stored.
    pub fn encode_sealed(&mut self, id: &Id, raw: &[u8], keys: Option<&Keys>, out: &mut Vec<u8>) -> Result<bool> {
        let compressed = self.encode(raw, out)?;
        if let Some(k) = keys {
            k.seal_blob(id, out)?;
        }
        Ok(compressed)
    }

    /// `encode_sealed` of a chunk in a buffer of its own: the blob as stored (compressed, in a
    /// buffer of its size; or, when it does not compress, in `raw`'s buffer: not copied),
    /// whether it is compressed, and `raw`'s buffer when the blob is not in it.
    pub fn encode_owned(
        &mut self,
        id: &Id,
        raw: Vec<u8>,
        keys: Option<&Keys>,
    ) -> Result<(Vec<u8>, bool, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let compressed = self.compress(&raw, &mut out)?;
        let (mut blob, freed) = if compressed { (out, Some(raw)) } else { (raw, None) };
        if let Some(k) = keys {
            k.seal_blob(id, &mut blob)?;
        }
        if compressed {
            // What is in flight is what will be packed, nothing more.
            blob.shrink_to_fit();
        }
        Ok((blob, compressed, freed))
    }
}

/// Decodes blobs with one zstd context, made at the first compressed blob and reused: one
/// made per blob cost a twentieth of a restore's CPU.
#[derive(Default)]
pub struct Decoder(Option<zstd::bulk::Decompressor<'static>>);

impl Decoder {
    /// A blob's stored bytes decoded into `out`, checked against the length its index says;
    /// `what` names the blob in an error (made only then).
    pub fn decode(
        &mut self,
        stored: &[u8],
        compressed: bool,
        raw_len: u32,
        what: &dyn Fn() -> String,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.clear();
        if !compressed {
            if stored.len() != raw_len as usize {
                return Err(Error::archive(
                    what(),
                    format!("holds {} bytes where its index says {raw_len}", stored.len()),
                ));
            }
            out.extend_from_slice(stored);
            return Ok(());
        }
        let cannot = |e: std::io::Error| Error::archive(what(), format!("does not decode: {e}"));
        let d = match &mut self.0 {
            Some(d) => d,
            empty => empty.insert(zstd::bulk::Decompressor::new().map_err(cannot)?),
        };
        out.reserve(raw_len as usize);
        let n = d.decompress_to_buffer(stored, out).map_err(cannot)?;
        if n != raw_len as usize {
            return Err(Error::archive(what(), format!("decodes to {n} bytes where its index says {raw_len}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::noise;

    #[test]
    fn random_is_stored_text_is_compressed_both_decode() {
        let mut enc = Encoder::new().unwrap();
        let mut out = Vec::new();
        let random = noise(300_000, 3);
        assert!(!enc.encode(&random, &mut out).unwrap());
        assert_eq!(out, random);
        let text: Vec<u8> = b"the quick brown fox ".iter().cycle().take(300_000).copied().collect();
        assert!(enc.encode(&text, &mut out).unwrap());
        assert!(out.len() < 10_000);
        // Owned: what does not compress travels on in its own buffer; what does, in `out`.
        let at = random.as_ptr();
        let (blob, compressed, freed) = enc.encode_owned(&Id([0; 32]), random.clone(), None).unwrap();
        assert!(!compressed && blob == random && freed.is_none());
        let (blob, compressed, _) = enc.encode_owned(&Id([0; 32]), random, None).unwrap();
        assert!(!compressed && blob.as_ptr() == at);
        let (blob, compressed, freed) = enc.encode_owned(&Id([0; 32]), text.clone(), None).unwrap();
        assert!(compressed && blob == out && blob.capacity() == blob.len() && freed.as_ref() == Some(&text));
        let mut back = Vec::new();
        let mut dec = Decoder::default();
        let t = || "t".to_string();
        dec.decode(&out, true, text.len() as u32, &t, &mut back).unwrap();
        assert_eq!(back, text);
        assert!(dec.decode(&out, true, 5, &t, &mut back).unwrap_err().to_string().contains("index says 5"));
        assert!(dec.decode(&out[..out.len() / 2], true, text.len() as u32, &t, &mut back).is_err());
        assert!(dec.decode(b"abc", false, 4, &t, &mut back).is_err());
        // An empty file is one empty blob; the context is reused after a failure.
        let stored = enc.encode(b"", &mut out).unwrap();
        dec.decode(&out.clone(), stored, 0, &t, &mut back).unwrap();
        assert!(back.is_empty());
    }
}
