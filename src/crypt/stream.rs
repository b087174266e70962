//! The age stage of the stream (age-encryption.org/v1): a writer that seals what passes through
//! it for the recipients or a passphrase, and a reader that opens it with identities or the
//! passphrase. ChaCha20-Poly1305 over 64 KiB chunks, the last one flagged, so a truncated,
//! reordered or altered stream fails to open instead of yielding other bytes.
//!
//! It must never hand out a byte that did not authenticate, and never put a key into an error.

use std::io::{self, Read, Write};

use age::secrecy::SecretString;

use super::keys::{Opening, Sealing};
use crate::error::{Error, Result};

/// The first bytes of every age file.
pub const MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// The scrypt work factor of what we seal with a passphrase: the age CLI's (2^18, about a
/// second and 256 MiB once per backup).
const SCRYPT_LOG_N: u8 = 18;
/// The most we accept when opening: 2^20 (1 GiB). A file asking more is refused, so a hostile
/// header cannot make the phone spend minutes and gigabytes.
const SCRYPT_MAX_LOG_N: u8 = 20;

pub type Sealer<W> = age::stream::StreamWriter<W>;

/// Start sealing into `out`: the age header is written at once; `finish` on the result writes
/// the last chunk and hands `out` back.
pub fn seal<W: Write>(sealing: &Sealing, out: W) -> Result<Sealer<W>> {
    let encryptor = match &sealing.passphrase {
        Some(p) => {
            let mut r = age::scrypt::Recipient::new(passphrase(p.expose())?);
            r.set_work_factor(SCRYPT_LOG_N);
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
        }
        None => {
            let recipients = sealing.age_recipients()?;
            if recipients.is_empty() {
                return Err(Error::internal("sealing asked for without recipients or a passphrase"));
            }
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        }
    }
    .map_err(|e| Error::usage(format!("cannot seal for these recipients: {e}")))?;
    encryptor.wrap_output(out).map_err(|e| Error::Io { context: "writing the age header".into(), source: e })
}

fn passphrase(bytes: &[u8]) -> Result<SecretString> {
    let s = std::str::from_utf8(bytes).map_err(|_| Error::usage("the passphrase is not UTF-8 text"))?;
    Ok(SecretString::from(s.to_string()))
}

/// Open an age stream read from `input`. `shown` names the archive and `made_for` the
/// recipients its manifest says it was sealed for (empty when unknown), for the error when no
/// key fits.
pub fn open<R: Read>(input: R, keys: &Opening, shown: &str, made_for: &[String]) -> Result<Opened<R>> {
    let decryptor = age::Decryptor::new(input).map_err(|e| header_error(e, shown))?;
    let scrypt = decryptor.is_scrypt();
    let no_key = |reason: String| Error::Key { what: shown.to_string(), reason };
    let reader = if scrypt {
        let Some(p) = keys.passphrase() else {
            return Err(no_key("is sealed with a passphrase: pass --passphrase-file FILE (its first line)".into()));
        };
        let mut id = age::scrypt::Identity::new(passphrase(p.expose())?);
        id.set_max_work_factor(SCRYPT_MAX_LOG_N);
        decryptor.decrypt(std::iter::once(&id as &dyn age::Identity))
    } else {
        if keys.identities().is_empty() {
            return Err(no_key(format!(
                "is sealed for {}: pass --identity FILE with its secret key",
                for_whom(made_for)
            )));
        }
        decryptor.decrypt(keys.identities().iter().map(|i| i as &dyn age::Identity))
    };
    match reader {
        Ok(r) => Ok(Opened { inner: r, shown: shown.to_string() }),
        Err(age::DecryptError::NoMatchingKeys) => Err(no_key(format!(
            "is sealed for {}, and none of the identities given ({}) is among them: pass --identity with the \
             matching secret key",
            for_whom(made_for),
            keys.recipients().join(", ")
        ))),
        Err(age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed) if scrypt => {
            Err(no_key("does not open with this passphrase: check --passphrase-file".into()))
        }
        Err(age::DecryptError::ExcessiveWork { required, .. }) => Err(no_key(format!(
            "asks for scrypt work 2^{required}, more than the 2^{SCRYPT_MAX_LOG_N} cpbackup accepts"
        ))),
        Err(e) => Err(header_error(e, shown)),
    }
}

fn for_whom(made_for: &[String]) -> String {
    if made_for.is_empty() {
        "recipients its manifest does not name".into()
    } else {
        made_for.join(", ")
    }
}

fn header_error(e: age::DecryptError, shown: &str) -> Error {
    Error::archive(shown, format!("is not a valid age file: {e}"))
}

/// The opened stream: every byte read has authenticated; a chunk that does not (tampering,
/// truncation, the wrong stream) is an error that says so.
pub struct Opened<R: Read> {
    inner: age::stream::StreamReader<R>,
    shown: String,
}

impl<R: Read> Read for Opened<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| match crate::error::extract_ours(e) {
            Ok(ours) => io::Error::other(ours),
            Err(e) if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::UnexpectedEof => {
                io::Error::other(Error::archive(
                    self.shown.clone(),
                    format!("fails to decrypt ({e}): it is damaged, truncated or was tampered with"),
                ))
            }
            Err(e) => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn keys() -> (Sealing, Opening) {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let text = Secret::new(id.to_string().expose_secret().as_bytes().to_vec());
        let sealing = Sealing { recipients: vec![id.to_public().to_string()], passphrase: None };
        (sealing, Opening::from_text(&text, "test").unwrap())
    }

    fn sealed(sealing: &Sealing, data: &[u8]) -> Vec<u8> {
        let mut w = seal(sealing, Vec::new()).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn open_all(bytes: &[u8], keys: &Opening) -> Result<Vec<u8>> {
        let mut r = open(bytes, keys, "x.age", &[])?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| crate::error::extract_ours(e).unwrap_or_else(|e| Error::archive("x", e.to_string())))?;
        Ok(out)
    }

    #[test]
    fn round_trip_and_every_kind_of_damage_is_refused() {
        let (sealing, opening) = keys();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let bytes = sealed(&sealing, &data);
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(open_all(&bytes, &opening).unwrap(), data);

        // A flipped byte in the payload, the payload cut at a chunk boundary or inside one.
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 1000] ^= 1;
        let e = open_all(&flipped, &opening).unwrap_err().to_string();
        assert!(e.contains("tampered"), "{e}");
        for cut in [n - 1, n - 17, n - (n - 200) % 65_552] {
            let e = open_all(&bytes[..cut], &opening).unwrap_err().to_string();
            assert!(e.contains("fails to decrypt") || e.contains("not a valid age file"), "cut {cut}: {e}");
        }
        // The wrong key; no key.
        let (_, other) = keys();
        let e = open_all(&bytes, &other).unwrap_err();
        assert!(matches!(e, Error::Key { .. }) && e.to_string().contains("--identity"), "{e}");
        let e = open_all(&bytes, &Opening::default()).unwrap_err();
        assert!(e.to_string().contains("pass --identity"), "{e}");
    }
}
