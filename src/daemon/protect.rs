//! How a task's archive is protected and paced: whom it is sealed for (age recipients), how the
//! store encrypts it (SSE-S3, SSE-KMS, SSE-C), what opens it on restore (an age identity handed
//! over in the request), and the transfer's bandwidth cap. The config gives the defaults
//! (`recipients`, `recipients_file`, `sse`, `sse_kms_key_id`, `sse_c_key_file`, `limit_rate`,
//! and for snapshots `format` and `id_key_file`); a request may say otherwise for itself, in
//! its API's own field names (the id key and an SSE-C key only ever come from the config).
//!
//! It must never let a secret out of memory: an SSE-C key comes only from the config (a file
//! or the environment), never from a request; a request's decryption identity lives in the
//! task's spec in memory (`Opening` does not serialize), so the journal, the logs and the
//! callbacks never see it, and a task that needed one cannot survive a restart (`reattach`
//! says so). Errors name the field, never what it holds.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::config::Config;
use super::task::Work;
use crate::archive::Format;
use crate::crypt::{Opening, Sealing};
use crate::error::{Error, Result};
use crate::repo::seal::IdKey;
use crate::secret::Secret;
use crate::spec::StoreOptions;
use crate::store::rate;
use crate::store::sse::Sse;

/// The config's defaults (`recipients`, `recipients_file`, `sse`, `sse_kms_key_id`,
/// `sse_c_key_file`, `limit_rate`), read and checked once, at start.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub sealing: Sealing,
    pub sse: Sse,
    pub limit_rate: Option<u64>,
    /// `format`: what a BackupFile writes when its request names no format.
    pub format: Option<Format>,
    /// `id_key_file`: a sealed repository's id key.
    pub id_key: Option<IdKey>,
}

impl Settings {
    pub fn load(cfg: &Config) -> Result<Settings> {
        let files: Vec<PathBuf> = cfg.recipients_file.iter().cloned().collect();
        let sealing = Sealing::new(&cfg.recipients, &files, None).map_err(|e| config_error("recipients", e))?;
        let sse = Sse::from_flags(cfg.sse.as_deref(), cfg.sse_kms_key_id.as_deref(), cfg.sse_c_key_file.as_deref())
            .map_err(|e| config_error("sse", e))?;
        let limit_rate =
            cfg.limit_rate.as_deref().map(rate::parse).transpose().map_err(|e| config_error("limit_rate", e))?;
        let format = cfg.format.as_deref().map(Format::parse).transpose().map_err(|e| config_error("format", e))?;
        let id_key =
            cfg.id_key_file.as_deref().map(IdKey::read_file).transpose().map_err(|e| config_error("id_key_file", e))?;
        Ok(Settings { sealing, sse, limit_rate, format, id_key })
    }
}

fn config_error(key: &str, e: Error) -> Error {
    let flags = [
        ("--recipients-file", "recipients_file"),
        ("--sse-kms-key-id", "sse_kms_key_id"),
        ("--sse-c-key-file", "sse_c_key_file"),
        ("--sse", "sse"),
        ("--limit-rate", "limit_rate"),
        ("--id-key-file", "id_key_file"),
    ];
    Error::usage(format!("config {key}: {}", in_terms_of(e, &flags)))
}

/// An error of the command line's checks, its flags named as `terms` names them.
fn in_terms_of(e: Error, terms: &[(&str, &str)]) -> String {
    terms.iter().fold(e.to_string(), |msg, (flag, name)| msg.replace(flag, name))
}

/// How one API names a request's fields, for its errors.
pub struct Names {
    pub recipients: &'static str,
    pub sse: &'static str,
    pub sse_kms_key_id: &'static str,
    pub limit_rate: &'static str,
    pub identity: &'static str,
}

pub const ECP: Names = Names {
    recipients: "EncryptionRecipients",
    sse: "ServerSideEncryption",
    sse_kms_key_id: "SseKmsKeyId",
    limit_rate: "LimitRate",
    identity: "DecryptionIdentity",
};

pub const CPH: Names = Names {
    recipients: "encryption_recipients",
    sse: "server_side_encryption",
    sse_kms_key_id: "sse_kms_key_id",
    limit_rate: "limit_rate",
    identity: "decryption_identity",
};

/// What one request asks for itself; each field left out takes the config's.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    pub recipients: Vec<String>,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub limit_rate: Option<String>,
    /// Restores: the text of an age identity file (`AGE-SECRET-KEY-1…` lines).
    pub identity: Option<Secret>,
}

/// What a request asked for, checked; `None` where it asked nothing.
struct Checked {
    sealing: Option<Sealing>,
    sse: Option<Sse>,
    limit_rate: Option<u64>,
    opening: Option<Opening>,
}

impl Asked {
    /// Every field parsed and checked, each error naming the field as the API calls it: the
    /// checks a request passes before any task exists.
    pub fn check(&self, names: &Names) -> Result<()> {
        self.checked(names).map(drop)
    }

    fn checked(&self, names: &Names) -> Result<Checked> {
        let terms = [
            ("--sse-kms-key-id", names.sse_kms_key_id),
            ("--sse-c-key-file", "the agent's config (sse_c_key_file)"),
            ("--sse", names.sse),
            ("--limit-rate", names.limit_rate),
        ];
        let field = |name: &str, e: Error| Error::usage(format!("{name}: {}", in_terms_of(e, &terms)));
        let sealing = (!self.recipients.is_empty())
            .then(|| Sealing::new(&self.recipients, &[], None))
            .transpose()
            .map_err(|e| field(names.recipients, e))?;
        let sse = (self.sse.is_some() || self.sse_kms_key_id.is_some())
            .then(|| Sse::from_flags(self.sse.as_deref(), self.sse_kms_key_id.as_deref(), None))
            .transpose()
            .map_err(|e| field(names.sse, e))?;
        let limit_rate =
            self.limit_rate.as_deref().map(rate::parse).transpose().map_err(|e| field(names.limit_rate, e))?;
        let opening = self.identity.as_ref().map(|text| Opening::from_text(text, names.identity)).transpose()?;
        Ok(Checked { sealing, sse, limit_rate, opening })
    }
}

impl Settings {
    /// A task's sealing, opening and store options: the request's own where it gave them,
    /// else the config's. `store` is the config's options for the task's endpoint.
    pub fn for_task(
        &self,
        mut store: StoreOptions,
        asked: &Asked,
        names: &Names,
    ) -> Result<(Sealing, Opening, StoreOptions)> {
        let c = asked.checked(names)?;
        if let Some(sse) = c.sse {
            store.sse = sse;
        }
        if c.limit_rate.is_some() {
            store.limit_rate = c.limit_rate;
        }
        Ok((c.sealing.unwrap_or_else(|| self.sealing.clone()), c.opening.unwrap_or_default(), store))
    }

    /// The repository id key a sealed snapshot needs (none for anything else).
    pub fn id_key_for(&self, format: Option<Format>, sealing: &Sealing) -> Option<IdKey> {
        (format == Some(Format::Repo) && sealing.is_some()).then(|| self.id_key.clone()).flatten()
    }

    /// The config's secrets on a task the journal brought back, which holds none: an SSE-C key
    /// for a task whose request named no SSE of its own, and a sealed snapshot's id key.
    pub fn reattach(&self, work: &mut Work) {
        if let Work::Export { spec } = work {
            spec.id_key = self.id_key_for(spec.format, &spec.sealing);
        }
        let store = match work {
            Work::Export { spec } => &mut spec.store,
            Work::BackupApp { spec } => &mut spec.store,
            Work::Import { spec, .. } => &mut spec.store,
            Work::RecoverApp { spec, .. } => &mut spec.store,
        };
        if store.sse.mode.is_none() && store.sse.customer_key.is_none() {
            store.sse.customer_key = self.sse.customer_key.clone();
        }
    }
}

/// A request's secret field: held as a `Secret` from the moment it is parsed.
pub fn secret_field<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Secret>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    Ok(text.filter(|t| !t.trim().is_empty()).map(|t| Secret::new(t.into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    #[test]
    fn a_request_overrides_the_config_field_by_field() {
        let cfg = Config { recipients: vec![R1.into()], limit_rate: Some("1M".into()), ..Default::default() };
        let settings = Settings::load(&cfg).unwrap();
        let store = StoreOptions { limit_rate: settings.limit_rate, ..Default::default() };

        let (sealing, opening, opts) = settings.for_task(store.clone(), &Asked::default(), &ECP).unwrap();
        assert_eq!((sealing.recipients.as_slice(), opening.is_empty()), ([R1.to_string()].as_slice(), true));
        assert_eq!((opts.limit_rate, opts.sse.mode), (Some(1 << 20), None));

        let asked = Asked { sse: Some("AES256".into()), limit_rate: Some("500k".into()), ..Default::default() };
        let (_, _, opts) = settings.for_task(store.clone(), &asked, &ECP).unwrap();
        assert_eq!((opts.limit_rate, opts.sse.record().map(|r| r.mode)), (Some(500 << 10), Some("AES256".into())));

        for (asked, says) in [
            (Asked { recipients: vec!["age1nope".into()], ..Default::default() }, "EncryptionRecipients: recipient 1"),
            (Asked { sse: Some("ROT13".into()), ..Default::default() }, "ServerSideEncryption"),
            (Asked { limit_rate: Some("fast".into()), ..Default::default() }, "LimitRate"),
            (
                Asked { identity: Some(Secret::new(b"AGE-SECRET-KEY-1NOTAKEY".to_vec())), ..Default::default() },
                "DecryptionIdentity line 1",
            ),
        ] {
            let e = asked.check(&ECP).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("NOTAKEY"), "an identity never shows in an error: {e}");
        }
    }

    #[test]
    fn a_journaled_task_gets_the_configured_customer_key_back_unless_it_named_its_own_sse() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, [9u8; 32]).unwrap();
        let cfg = Config { sse_c_key_file: Some(key), ..Default::default() };
        let settings = Settings::load(&cfg).unwrap();
        let journaled = |mode: Option<&str>| {
            let mut spec = crate::spec::ImportSpec::default();
            spec.store.sse = Sse::from_flags(mode, None, None).unwrap();
            let text = serde_json::to_string(&Work::Import { spec, backup_file_id: None }).unwrap();
            assert!(!text.contains("customer"), "{text}");
            serde_json::from_str::<Work>(&text).unwrap()
        };
        let key_of = |w: &Work| match w {
            Work::Import { spec, .. } => spec.store.sse.customer_key.is_some(),
            _ => unreachable!(),
        };
        let mut plain = journaled(None);
        settings.reattach(&mut plain);
        assert!(key_of(&plain), "the configured SSE-C key is back");
        let mut own = journaled(Some("AES256"));
        settings.reattach(&mut own);
        assert!(!key_of(&own), "a request's own SSE stays its own");
    }
}
