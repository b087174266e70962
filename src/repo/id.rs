//! Names in a repository: chunk ids (what a chunk's bytes hash to), pack and index names
//! (random), and their text forms in object keys.
//!
//! Chunk ids are SHA-256 of the plaintext, or HMAC-SHA-256 under the repository's id key when
//! the repository is encrypted (so the store cannot confirm a guess of content). SHA-256 and
//! not BLAKE3: the crate already carries it, ARMv8's crypto extensions (every phone SoC and
//! ARM server this agent runs on) and x86's SHA-NI run it at gigabytes per second on one
//! core, and HMAC over it is the standard keyed form. It must never name a pack or an index by
//! its content: two writers must never write the same key.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::secret::Secret;

/// A chunk's id: 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn parse(s: &str) -> Result<Id> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| Error::usage(format!("{s:?} is not a chunk id (64 hex digits)")))?;
        Ok(Id(out))
    }

    /// The first eight bytes as a number: ids are uniform, so this places an id in a sorted run.
    pub fn prefix(&self) -> u64 {
        u64::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5], self.0[6], self.0[7]])
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.hex()[..16])
    }
}

/// How chunk ids are computed in one repository.
#[derive(Clone, Debug)]
pub enum Hasher {
    Sha256,
    /// HMAC-SHA-256 under the repository's id key.
    Keyed(Secret),
}

impl Hasher {
    pub fn id(&self, data: &[u8]) -> Id {
        match self {
            Hasher::Sha256 => Id(Sha256::digest(data).into()),
            Hasher::Keyed(key) => {
                #[allow(clippy::expect_used)]
                let mut mac =
                    <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).expect("HMAC takes keys of any length");
                mac.update(data);
                Id(mac.finalize().into_bytes().into())
            }
        }
    }
}

/// A pack's or index object's name: 16 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(pub [u8; 16]);

impl Name {
    pub fn random() -> Name {
        Name(rand::random())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn parse(s: &str) -> Option<Name> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Name(out))
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sha256_or_keyed() {
        let plain = Hasher::Sha256.id(b"abc");
        assert_eq!(plain.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(Id::parse(&plain.hex()).unwrap(), plain);
        let keyed = Hasher::Keyed(Secret::new(b"key".to_vec())).id(b"abc");
        assert_ne!(keyed, plain);
        assert_eq!(keyed, Hasher::Keyed(Secret::new(b"key".to_vec())).id(b"abc"));
        assert_ne!(keyed, Hasher::Keyed(Secret::new(b"other".to_vec())).id(b"abc"));
        assert!(Id::parse("zz").is_err());
        let n = Name::random();
        assert_eq!(Name::parse(&n.hex()), Some(n));
        assert_ne!(Name::random(), n);
    }
}
