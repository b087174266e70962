//! A sealed repository's keys and ciphers. Owns the id key (`--id-key-file`: the fleet's shared
//! secret that keys chunk ids and seals index objects), the data keys blobs are sealed with,
//! their key objects (`keys/…`, each wrapped with age for the recipients) and the sealing and
//! opening of one blob or index object.
//!
//! The choice: ChaCha20-Poly1305 (the XChaCha variant: random 24-byte nonces need no counter
//! shared between threads or runs) per blob under a data key, rather than age per object. A
//! blob is read alone by a ranged GET, so it must open alone; age per blob would cost an X25519
//! unwrap and a ~200-byte header for every one of a snapshot's chunks, where a data key is
//! unwrapped once per run that wrote it. Each export makes a fresh random data key, stores it
//! wrapped for the recipients as `keys/<name>` before its first pack, and forgets it when it
//! ends: the phone writes and cannot read back (it holds no identity), and a reader unwraps only
//! the keys the blobs it reads name.
//!
//! ```text
//! sealed blob  = key:[16] nonce:[24] ChaCha20-Poly1305(data key, nonce, aad = chunk id, blob)
//! sealed index = nonce:[24] ChaCha20-Poly1305(index key, nonce, aad = "cpbkidx", index)
//! keys/<name>  = age(recipients, data key:[32])
//! keys/id-<n>  = age(recipients, id key:[32])     (n names the recipients: one per set)
//! ```
//!
//! Chunk ids are HMAC-SHA256 under a key derived from the id key, so the store cannot confirm
//! a guess of content; phones given the same id key make the same ids and dedupe against each
//! other. Index objects are sealed under another key derived from it, so every phone of the
//! fleet reads them (it must, to dedupe) and the store does not. A pack's own header (keyed
//! ids, kinds and lengths) stays as it is: it tells nothing the blobs' sizes do not.
//!
//! It must never let a key reach a log, an error or the store unwrapped, never hand out a byte
//! that did not authenticate, and never reuse a nonce (each is random, 192 bits).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::id::{Hasher, Id, Name};
use crate::crypt::{stream, Opening, Sealing};
use crate::error::{Error, Result};
use crate::secret::{self, Secret};
use crate::store::Store;

const NONCE: usize = 24;
const TAG: usize = 16;
/// What sealing adds to a blob: the key's name, the nonce and the tag.
pub const OVERHEAD: usize = 16 + NONCE + TAG;
const INDEX_AAD: &[u8] = b"cpbkidx";

/// The fleet's id key: 32 bytes, given as a file of 32 raw bytes or 64 hex digits.
#[derive(Clone)]
pub struct IdKey(Secret);

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(…)")
    }
}

impl IdKey {
    pub fn from_bytes(b: &[u8], what: &str) -> Result<IdKey> {
        let text = std::str::from_utf8(b).map(str::trim).unwrap_or("");
        if text.len() == 64 {
            let mut k = [0u8; 32];
            if hex::decode_to_slice(text, &mut k).is_ok() {
                return Ok(IdKey(Secret::new(k.to_vec())));
            }
        }
        if b.len() == 32 {
            return Ok(IdKey(Secret::new(b.to_vec())));
        }
        Err(Error::usage(format!(
            "{what}: is not a repository id key (32 random bytes, or 64 hex digits: `head -c 32 /dev/urandom | \
             xxd -p -c 64`)"
        )))
    }

    /// `--id-key-file FILE` (warned about when others can read it).
    pub fn read_file(path: &Path) -> Result<IdKey> {
        let s = secret::read_file(path, "--id-key-file")?;
        IdKey::from_bytes(s.expose(), &format!("--id-key-file {}", path.display()))
    }

    fn derive(&self, label: &[u8]) -> [u8; 32] {
        #[allow(clippy::expect_used)]
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose()).expect("HMAC takes keys of any length");
        mac.update(label);
        mac.finalize().into_bytes().into()
    }

    /// Chunk ids: HMAC-SHA256 under a key of their own.
    pub fn hasher(&self) -> Hasher {
        Hasher::Keyed(Secret::new(self.derive(b"cpbackup repo chunk ids").to_vec()))
    }

    /// What the config records to tell the right id key from a wrong one (a one-way value).
    pub fn check_value(&self) -> String {
        hex::encode(&self.derive(b"cpbackup repo id key check")[..16])
    }

    fn index_cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.derive(b"cpbackup repo index objects").into())
    }

    /// The key object that holds this id key for `sealing`'s recipients.
    fn wrapped_key(&self, prefix: &str, sealing: &Sealing) -> String {
        let mut who = sealing.recipients.clone();
        who.sort();
        if sealing.passphrase.is_some() {
            who.push("passphrase".into());
        }
        let n = self.derive(format!("cpbackup repo id key for {}", who.join(",")).as_bytes());
        format!("{prefix}keys/id-{}", hex::encode(&n[..16]))
    }
}

/// A data key.
struct DataKey {
    name: Name,
    cipher: XChaCha20Poly1305,
}

/// The keys of a sealed repository for one run: the id key's ciphers, and either this run's
/// data key (an export) or the opening that unwraps the data keys blobs name (a reader).
pub struct Keys {
    id: IdKey,
    index: XChaCha20Poly1305,
    writing: Option<DataKey>,
    opening: Option<Opening>,
    /// The recipients the record says (for the error when no key fits).
    made_for: Vec<String>,
    opened: Mutex<HashMap<Name, Arc<XChaCha20Poly1305>>>,
}

impl Keys {
    /// An export's keys: a fresh data key, stored wrapped for the recipients before anything
    /// it seals, and the id key wrapped for them too (once per set of recipients), so whoever
    /// holds an identity can read indexes and check ids.
    pub fn for_writing(store: &dyn Store, prefix: &str, id: &IdKey, sealing: &Sealing) -> Result<Keys> {
        let idk = id.wrapped_key(prefix, sealing);
        if store.size(&idk)?.is_none() {
            store.put(&idk, &wrap(sealing, id.0.expose())?)?;
        }
        let raw: [u8; 32] = rand::random();
        let name = Name::random();
        store.put(&format!("{prefix}keys/{}", name.hex()), &wrap(sealing, &raw)?)?;
        let cipher = XChaCha20Poly1305::new(&raw.into());
        Ok(Keys {
            index: id.index_cipher(),
            id: id.clone(),
            writing: Some(DataKey { name, cipher }),
            opening: None,
            made_for: sealing.recipients.clone(),
            opened: Mutex::new(HashMap::new()),
        })
    }

    /// A reader's keys: the id key unwrapped from one of `keys/id-*` with `opening`, checked
    /// against the config. Without a fitting identity: `Error::Key` naming the recipients,
    /// before anything is read or written.
    pub fn for_reading(
        store: &dyn Store,
        prefix: &str,
        check: &str,
        opening: &Opening,
        made_for: &[String],
    ) -> Result<Keys> {
        let shown = store.url(prefix);
        let mut last = None;
        for o in store.list(&format!("{prefix}keys/id-"))? {
            let Some(body) = store.get(&o.key)? else { continue };
            match unwrap(&body, opening, &shown, made_for) {
                Ok(raw) => {
                    let id = IdKey::from_bytes(&raw, &store.url(&o.key))?;
                    if id.check_value() != check {
                        return Err(Error::Manifest {
                            what: store.url(&o.key),
                            reason: "holds an id key that is not this repository's (config.json)".into(),
                        });
                    }
                    return Ok(Keys {
                        index: id.index_cipher(),
                        id,
                        writing: None,
                        opening: Some(opening.clone()),
                        made_for: made_for.to_vec(),
                        opened: Mutex::new(HashMap::new()),
                    });
                }
                Err(e @ Error::Key { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Manifest {
            what: shown,
            reason: "is a sealed repository with no id key object (keys/id-…): it is damaged".into(),
        }))
    }

    pub fn hasher(&self) -> Hasher {
        self.id.hasher()
    }

    /// Seal an encoded blob in place (`buf` becomes the sealed form).
    pub fn seal_blob(&self, id: &Id, buf: &mut Vec<u8>) -> Result<()> {
        let Some(k) = &self.writing else { return Err(Error::internal("sealing a blob without a data key")) };
        let nonce: [u8; NONCE] = rand::random();
        let ct = k
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: buf, aad: &id.0 })
            .map_err(|_| Error::internal("sealing a blob failed"))?;
        buf.clear();
        buf.extend_from_slice(&k.name.0);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(&ct);
        Ok(())
    }

    /// Open a sealed blob: its data key unwrapped (once) from `keys/<name>`; `what` names
    /// the blob in an error (made only then).
    pub fn open_blob(
        &self,
        store: &dyn Store,
        prefix: &str,
        id: &Id,
        sealed: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return Err(Error::archive(what(), "is too short to be a sealed blob"));
        }
        let mut name = [0u8; 16];
        name.copy_from_slice(&sealed[..16]);
        let cipher = self.data_key(store, prefix, Name(name))?;
        cipher
            .decrypt(XNonce::from_slice(&sealed[16..16 + NONCE]), Payload { msg: &sealed[16 + NONCE..], aad: &id.0 })
            .map_err(|_| {
                Error::archive(what(), "does not open with its key: the repository is damaged or tampered with")
            })
    }

    fn data_key(&self, store: &dyn Store, prefix: &str, name: Name) -> Result<Arc<XChaCha20Poly1305>> {
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = opened.get(&name) {
            return Ok(c.clone());
        }
        let Some(opening) = &self.opening else {
            return Err(Error::internal("reading a sealed blob without an opening"));
        };
        let key = format!("{prefix}keys/{}", name.hex());
        let body = store.get(&key)?.ok_or_else(|| Error::Manifest {
            what: store.url(&key),
            reason: "is missing: a blob names this data key; the repository is damaged".into(),
        })?;
        let raw = unwrap(&body, opening, &store.url(&key), &self.made_for)?;
        if raw.len() != 32 {
            return Err(Error::archive(store.url(&key), "is not a data key"));
        }
        let c = Arc::new(XChaCha20Poly1305::new_from_slice(&raw).map_err(|_| Error::internal("key length"))?);
        opened.insert(name, c.clone());
        Ok(c)
    }

    /// Seal an index object.
    pub fn seal_index(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let nonce: [u8; NONCE] = rand::random();
        let ct = self
            .index
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: INDEX_AAD })
            .map_err(|_| Error::internal("sealing an index object failed"))?;
        Ok([&nonce[..], &ct].concat())
    }

    /// Open an index object.
    pub fn open_index(&self, sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        if sealed.len() < NONCE + TAG {
            return Err(Error::archive(what, "is too short to be a sealed index object"));
        }
        self.index
            .decrypt(XNonce::from_slice(&sealed[..NONCE]), Payload { msg: &sealed[NONCE..], aad: INDEX_AAD })
            .map_err(|_| Error::archive(what, "does not open with the repository's id key: damaged or tampered with"))
    }
}

fn wrap(sealing: &Sealing, raw: &[u8]) -> Result<Vec<u8>> {
    let mut w = stream::seal(sealing, Vec::new())?;
    std::io::Write::write_all(&mut w, raw).map_err(|e| Error::Io { context: "sealing a key".into(), source: e })?;
    w.finish().map_err(|e| Error::Io { context: "sealing a key".into(), source: e })
}

fn unwrap(body: &[u8], opening: &Opening, shown: &str, made_for: &[String]) -> Result<Vec<u8>> {
    let mut r = stream::open(body, opening, shown, made_for)?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut out)
        .map_err(|e| Error::archive(shown, format!("a key object does not open: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;

    #[test]
    fn blobs_and_indexes_open_only_with_their_keys() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::new(d.path());
        let id = IdKey::from_bytes(&[7u8; 32], "t").unwrap();
        let who = age::x25519::Identity::generate();
        let sealing = Sealing::new(&[who.to_public().to_string()], &[], None).unwrap();
        let w = Keys::for_writing(&s, "r/", &id, &sealing).unwrap();
        let cid = w.hasher().id(b"hello");
        assert_ne!(cid, Hasher::Sha256.id(b"hello"), "ids are keyed");
        let mut buf = b"hello".to_vec();
        w.seal_blob(&cid, &mut buf).unwrap();
        assert_eq!(buf.len(), 5 + OVERHEAD);
        assert!(!buf.windows(5).any(|x| x == b"hello"));
        let idx = w.seal_index(b"index bytes").unwrap();

        let opening = Opening::from_text(&Secret::new(who.to_string().expose_secret_bytes()), "t").unwrap();
        let r = Keys::for_reading(&s, "r/", &id.check_value(), &opening, &sealing.recipients).unwrap();
        let b = || "b".to_string();
        assert_eq!(r.open_blob(&s, "r/", &cid, &buf, &b).unwrap(), b"hello");
        assert_eq!(r.open_index(&idx, "i").unwrap(), b"index bytes");
        // Another id's blob, a flipped byte: refused.
        assert!(r.open_blob(&s, "r/", &Id([1; 32]), &buf, &b).is_err());
        let mut bad = buf.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(r.open_blob(&s, "r/", &cid, &bad, &b).is_err());
        // A wrong identity: Error::Key naming the recipients.
        let other = age::x25519::Identity::generate();
        let wrong = Opening::from_text(&Secret::new(other.to_string().expose_secret_bytes()), "t").unwrap();
        match Keys::for_reading(&s, "r/", &id.check_value(), &wrong, &sealing.recipients) {
            Err(Error::Key { reason, .. }) => assert!(reason.contains(&sealing.recipients[0]), "{reason}"),
            other => panic!("expected Error::Key, got {:?}", other.map(|_| ())),
        }
        assert!(IdKey::from_bytes(b"short", "t").is_err());
    }

    trait Bytes {
        fn expose_secret_bytes(&self) -> Vec<u8>;
    }
    impl Bytes for age::secrecy::SecretString {
        fn expose_secret_bytes(&self) -> Vec<u8> {
            use age::secrecy::ExposeSecret;
            self.expose_secret().as_bytes().to_vec()
        }
    }
}
