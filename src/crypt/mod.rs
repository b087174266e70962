//! Backups only their owner can read. Owns the keys a backup is sealed for and opened with
//! (`keys`), the age stage of the stream (`stream`: age-encryption.org/v1, which the `age` CLI
//! reads and writes), and Android's own encrypted `.ab` (`ab`: what `adb backup` writes when
//! given a password).
//!
//! Where it sits: `tar -> compress -> seal -> hash -> store` on the way up, so the SHA-256 in
//! the manifest covers the stored bytes and `verify` checks integrity without a key;
//! `store -> hash -> open -> decompress -> tar` on the way down. With recipients only, the phone
//! holds no secret: it can write a backup it cannot read.
//!
//! It must never let a key, identity or passphrase reach a log, an error, a manifest, the
//! journal or a callback: they live in `Secret`s and in `Opening`, which does not serialize.

pub mod ab;
pub mod keys;
pub mod stream;

use serde::{Deserialize, Serialize};

pub use keys::{Opening, Sealing};

/// The manifest's record of how an archive is sealed (never a key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Encryption {
    /// `age` (age-encryption.org/v1 over the whole archive) or `android-aes-256` (the `.ab`'s
    /// own encryption).
    pub format: String,
    /// The age recipients (public keys) it was sealed for.
    pub recipients: Vec<String>,
    /// Sealed with a passphrase (age's scrypt, or the `.ab` password).
    pub passphrase: bool,
}

pub const AGE: &str = "age";
pub const ANDROID_AES_256: &str = "android-aes-256";

impl Encryption {
    /// How `sealing` seals an archive of this kind: Android's own encryption for an `.ab`
    /// given a passphrase, age otherwise.
    pub fn of(sealing: &Sealing, android_ab: bool) -> Option<Encryption> {
        if !sealing.is_some() {
            return None;
        }
        let passphrase = sealing.passphrase.is_some();
        let format = if android_ab && passphrase { ANDROID_AES_256 } else { AGE };
        Some(Encryption { format: format.into(), recipients: sealing.recipients.clone(), passphrase })
    }

    pub fn is_age(&self) -> bool {
        self.format == AGE
    }
}
