//! Server-side encryption of archives in object storage: the settings (`--sse AES256|KMS`,
//! `--sse-kms-key-id ID`, `--sse-c-key-file FILE`), the customer key of SSE-C with the MD5 the
//! S3 API wants beside it, and the record a manifest keeps of them. The S3 headers themselves
//! are set by `s3::sse`.
//!
//! It must never let a customer key reach a log, an error message, anything serialized (the
//! daemon's journal, a manifest, an upload record) or `Debug` output: the key is held in a
//! `Secret`, skipped by serde, and errors name the file, never what it holds.

use std::fmt;
use std::path::Path;

use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::secret::{self, Secret};

/// The flag a customer key comes from, as errors name it.
pub const KEY_FLAG: &str = "--sse-c-key-file";

/// Encryption at rest with the store's own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SseMode {
    /// SSE-S3 (SSE-OSS, SSE-OBS): keys the store manages.
    #[serde(rename = "AES256")]
    Aes256,
    /// SSE-KMS: a key of the provider's key management service.
    #[serde(rename = "KMS")]
    Kms,
}

impl SseMode {
    pub fn parse(s: &str) -> Result<SseMode> {
        match s.trim().to_ascii_uppercase().as_str() {
            "AES256" => Ok(SseMode::Aes256),
            "KMS" | "AWS:KMS" => Ok(SseMode::Kms),
            _ => Err(Error::usage(format!(
                "--sse {s:?}: use AES256 (the store's own keys) or KMS (a key of the key management service; \
                 --sse-kms-key-id names it); for a key of your own, --sse-c-key-file FILE"
            ))),
        }
    }
}

/// SSE-C: the customer's AES-256 key, sent with every request that writes or reads the
/// archive's content, and never kept by the store.
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerKey {
    /// The key in base64, as the `…-customer-key` header carries it.
    header: Secret,
    /// The base64 MD5 of the key, for `…-customer-key-MD5` (the store checks the key arrived whole).
    md5: String,
}

impl CustomerKey {
    /// The key a file holds: exactly 32 bytes, or the base64 of 32 bytes (whitespace around
    /// it ignored). Others being able to read the file is warned about.
    pub fn read(path: &Path) -> Result<CustomerKey> {
        let held = secret::read_file(path, KEY_FLAG)?;
        CustomerKey::from_bytes(&held).map_err(|why| {
            Error::usage(format!(
                "{KEY_FLAG} {}: {why}: it must hold a 32-byte key, raw or in base64 \
                 (e.g. `head -c 32 /dev/urandom > FILE` or `openssl rand -base64 32 > FILE`)",
                path.display()
            ))
        })
    }

    /// The key in `held` (see `read`); the error says what is wrong without quoting it.
    fn from_bytes(held: &Secret) -> std::result::Result<CustomerKey, String> {
        let bytes = held.expose();
        let key: Zeroizing<Vec<u8>> = if bytes.len() == 32 {
            Zeroizing::new(bytes.to_vec())
        } else {
            let text = std::str::from_utf8(bytes).map_err(|_| format!("holds {} bytes", bytes.len()))?.trim();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| format!("holds {} bytes that are not base64", bytes.len()))?;
            Zeroizing::new(decoded)
        };
        if key.len() != 32 {
            return Err(format!("decodes to {} bytes", key.len()));
        }
        use md5::Digest;
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&key[..]));
        let header = Secret::new(base64::engine::general_purpose::STANDARD.encode(&key[..]).into_bytes());
        Ok(CustomerKey { header, md5 })
    }

    /// The `…-customer-key` header's value: the key itself, for the request only.
    pub fn header(&self) -> String {
        String::from_utf8_lossy(self.header.expose()).into_owned()
    }

    /// The `…-customer-key-MD5` header's value.
    pub fn md5(&self) -> &str {
        &self.md5
    }
}

impl fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CustomerKey([redacted])")
    }
}

/// How the store is to encrypt archives. Empty (the default): as the bucket's own settings say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sse {
    /// `--sse`: the store's keys (AES256) or its KMS (KMS).
    pub mode: Option<SseMode>,
    /// `--sse-kms-key-id`: which KMS key (the store's default one when absent).
    pub kms_key_id: Option<String>,
    /// `--sse-c-key-file`: SSE-C with this key. Never serialized: a journaled task gets it
    /// again from where it came from (the config or the environment), never from the journal.
    #[serde(skip)]
    pub customer_key: Option<CustomerKey>,
}

impl Sse {
    /// The settings the three flags ask for, checked: `--sse-kms-key-id` means KMS (and
    /// contradicts `--sse AES256`), and a customer key excludes the store's keys.
    pub fn from_flags(mode: Option<&str>, kms_key_id: Option<&str>, key_file: Option<&Path>) -> Result<Sse> {
        let mut mode = mode.map(SseMode::parse).transpose()?;
        let kms_key_id = kms_key_id.map(str::trim).filter(|k| !k.is_empty()).map(str::to_string);
        if kms_key_id.is_some() {
            match mode {
                None => mode = Some(SseMode::Kms),
                Some(SseMode::Kms) => {}
                Some(SseMode::Aes256) => {
                    return Err(Error::usage("--sse-kms-key-id names a KMS key: it goes with --sse KMS, not AES256"))
                }
            }
        }
        if key_file.is_some() && mode.is_some() {
            return Err(Error::usage(
                "--sse-c-key-file (your own key) and --sse / --sse-kms-key-id (the store's keys) exclude each other: \
                 give one or the other",
            ));
        }
        let customer_key = key_file.map(CustomerKey::read).transpose()?;
        Ok(Sse { mode, kms_key_id, customer_key })
    }

    pub fn is_set(&self) -> bool {
        self.mode.is_some() || self.customer_key.is_some()
    }

    /// What a manifest records: the mode and the KMS key id, never a key.
    pub fn record(&self) -> Option<ServerSideEncryption> {
        let mode = match (self.mode, &self.customer_key) {
            (_, Some(_)) => "SSE-C",
            (Some(SseMode::Aes256), None) => "AES256",
            (Some(SseMode::Kms), None) => "KMS",
            (None, None) => return None,
        };
        let kms_key_id = if self.mode == Some(SseMode::Kms) { self.kms_key_id.clone() } else { None };
        Some(ServerSideEncryption { mode: mode.to_string(), kms_key_id })
    }
}

/// The manifest's `ServerSideEncryption`: `{"Mode": "AES256"|"KMS"|"SSE-C", "KmsKeyId": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServerSideEncryption {
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, body: &[u8]) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("k");
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn customer_keys_are_raw_or_base64_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let raw = *b"recognisable-customer-key-32byte";
        let from_raw = CustomerKey::read(&key_file(dir.path(), &raw)).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let from_b64 = CustomerKey::read(&key_file(dir.path(), format!("{b64}\n").as_bytes())).unwrap();
        assert_eq!(from_raw, from_b64);
        assert_eq!(from_raw.header(), b64);
        // RFC 1321's MD5 of the key, in base64 (as `openssl dgst -md5 -binary | base64` gives it).
        use md5::Digest;
        assert_eq!(from_raw.md5(), base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(raw)));
        assert_eq!(from_raw.md5().len(), 24);
        let sse = Sse { customer_key: Some(from_raw), ..Default::default() };
        let shown = format!("{sse:?}");
        assert!(!shown.contains("recognisable") && !shown.contains(&b64[..12]), "{shown}");
        let json = serde_json::to_string(&sse).unwrap();
        assert!(!json.contains(&b64[..12]) && !json.contains("customer"), "{json}");
        assert_eq!(serde_json::from_str::<Sse>(&json).unwrap(), Sse::default(), "the key does not come back");
        assert_eq!(sse.record(), Some(ServerSideEncryption { mode: "SSE-C".into(), kms_key_id: None }));

        for (body, needle) in [
            (&b"recognisable-but-31-bytes-long!"[..], "31 bytes that are not base64"),
            (b"cmVjb2duaXNhYmxlLXNob3J0", "decodes to 18 bytes"),
            (b"", "decodes to 0 bytes"),
        ] {
            let e = CustomerKey::read(&key_file(dir.path(), body)).unwrap_err();
            let text = e.to_string();
            assert!(e.is_input() && text.contains(KEY_FLAG) && text.contains(needle), "{text}");
            assert!(!text.contains("recognisable") && !text.contains("cmVjb2du"), "{text}");
        }
        let e = CustomerKey::read(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains(KEY_FLAG) && e.contains("missing"), "{e}");
    }

    #[test]
    fn flags_combine_or_are_refused() {
        assert_eq!(Sse::from_flags(None, None, None).unwrap(), Sse::default());
        assert!(!Sse::default().is_set() && Sse::default().record().is_none());
        let s = Sse::from_flags(Some("aes256"), None, None).unwrap();
        assert_eq!(s.record(), Some(ServerSideEncryption { mode: "AES256".into(), kms_key_id: None }));
        let s = Sse::from_flags(None, Some("key-1"), None).unwrap();
        assert_eq!(s.mode, Some(SseMode::Kms), "a KMS key id means KMS");
        assert_eq!(s.record(), Some(ServerSideEncryption { mode: "KMS".into(), kms_key_id: Some("key-1".into()) }));
        let v = serde_json::to_value(s.record()).unwrap();
        assert_eq!(v, serde_json::json!({"Mode": "KMS", "KmsKeyId": "key-1"}));
        let v = serde_json::to_value(Sse::from_flags(Some("KMS"), None, None).unwrap().record()).unwrap();
        assert_eq!(v, serde_json::json!({"Mode": "KMS"}));
        let e = Sse::from_flags(Some("AES256"), Some("k"), None).unwrap_err().to_string();
        assert!(e.contains("--sse-kms-key-id") && e.contains("KMS"), "{e}");
        let e = Sse::from_flags(Some("rot13"), None, None).unwrap_err();
        assert!(e.is_input() && e.to_string().contains("\"rot13\"") && e.to_string().contains("AES256"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let k = key_file(dir.path(), &[7u8; 32]);
        let e = Sse::from_flags(Some("KMS"), None, Some(&k)).unwrap_err().to_string();
        assert!(e.contains("--sse-c-key-file") && e.contains("exclude"), "{e}");
        assert!(Sse::from_flags(None, None, Some(&k)).unwrap().is_set());
    }
}
