//! The daemon's configuration: a TOML file, every key also settable by an environment
//! variable `CPBACKUP_<KEY>` (upper case), the environment winning. Owns the defaults and the
//! checks that make an unsafe configuration refuse to start.
//!
//! It never logs the token or the callback secret, and refuses to listen beyond loopback
//! without a token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::protect::Settings;
use super::schedule::ScheduleSpec;
use crate::error::{Error, Result};
use crate::manifest::Identity;
use crate::priority::{IoClass, Priority};
use crate::spec::StoreOptions;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Serve HTTPS with this certificate chain (PEM) and key (PEM, 0600).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Ask clients for certificates from these CAs (PEM): mutual TLS.
    pub client_ca_file: Option<PathBuf>,
    /// What a request must show: the bearer token, a client certificate, or both.
    pub auth: Auth,
    /// Bearer token every request but /healthz must carry.
    pub token: Option<String>,
    /// Read the token from this file instead (0600).
    pub token_file: Option<PathBuf>,
    /// Where the journal (tasks, outbox) and upload records live.
    pub state_dir: PathBuf,
    /// The directory that stands for the phone's `/` (tests use a fake root).
    pub root: PathBuf,
    /// This phone's identity, as the control plane knows it.
    pub instance_id: String,
    pub instance_name: String,
    pub instance_group_id: String,
    pub region_id: String,
    /// Where status events go when a task does not name its own callback.
    pub callback_url: Option<String>,
    /// HMAC key for callback signatures.
    pub callback_secret: Option<String>,
    /// Heavy tasks at a time.
    pub max_concurrent: usize,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Seconds a running task may take to finish after SIGTERM before it is cancelled.
    pub shutdown_deadline_secs: u64,
    /// Seconds between progress events of a running task.
    pub progress_interval_secs: u64,
    /// Days an ended task (Finished, PartFinished, Failed) stays in the journal and in
    /// DescribeTasks.
    pub task_retention_days: u64,
    /// Ended tasks kept at most (the newest); waiting and running ones are always kept.
    pub task_retention_count: usize,
    /// Object storage defaults for requests that give only a bucket path.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub parts_in_flight: usize,
    /// The CPU and I/O priority of every thread of a task (`crate::priority`).
    pub nice: i32,
    pub io_class: IoClass,
    pub io_level: u32,
    /// Backups the agent starts by itself (`[[schedule]]` tables).
    pub schedule: Vec<ScheduleSpec>,
    /// age recipients every backup is sealed for unless its request names its own (`age1…`;
    /// `CPBACKUP_RECIPIENTS`: comma-separated).
    pub recipients: Vec<String>,
    /// More recipients, one a line (age's recipients file format).
    pub recipients_file: Option<PathBuf>,
    /// `AES256` or `KMS`: the store's own encryption of each archive.
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// SSE-C: the 32-byte key (raw or base64) in this file (0600). Only ever from the config.
    pub sse_c_key_file: Option<PathBuf>,
    /// Bytes per second for a task's transfer (`20M`, `500k`), unless its request says.
    pub limit_rate: Option<String>,
    /// The format of a BackupFile whose request names none: `tar.zst` (the default), `tar`, or
    /// `repo` (a snapshot into the folder, which is a repository).
    pub format: Option<String>,
    /// A sealed repository's id key (the fleet's, 0600): keys its chunk ids.
    pub id_key_file: Option<PathBuf>,
    /// The keys above from `recipients` on, read and checked at load.
    #[serde(skip)]
    pub protection: Settings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8640".into(),
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
            auth: Auth::Token,
            token: None,
            token_file: None,
            state_dir: PathBuf::from("/data/cpbackup"),
            root: PathBuf::from("/"),
            instance_id: String::new(),
            instance_name: String::new(),
            instance_group_id: String::new(),
            region_id: String::new(),
            callback_url: None,
            callback_secret: None,
            max_concurrent: 1,
            body_limit: 1 << 20,
            shutdown_deadline_secs: 30,
            progress_interval_secs: 5,
            task_retention_days: 30,
            task_retention_count: 10_000,
            endpoint: None,
            region: None,
            path_style: false,
            parts_in_flight: 4,
            nice: 10,
            io_class: IoClass::BestEffort,
            io_level: 7,
            schedule: Vec::new(),
            recipients: Vec::new(),
            recipients_file: None,
            sse: None,
            sse_kms_key_id: None,
            sse_c_key_file: None,
            limit_rate: None,
            format: None,
            id_key_file: None,
            protection: Settings::default(),
        }
    }
}

/// What a request must show (`auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// `Authorization: Bearer TOKEN` (when a token is configured).
    #[default]
    Token,
    /// A client certificate from `client_ca_file`.
    Mtls,
    /// Both.
    Both,
}

impl Auth {
    pub fn needs_token(self) -> bool {
        matches!(self, Auth::Token | Auth::Both)
    }

    pub fn needs_certificate(self) -> bool {
        matches!(self, Auth::Mtls | Auth::Both)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Text,
    /// Comma-separated.
    List,
    Number,
    Flag,
}

/// Every key a `CPBACKUP_<KEY>` variable can set, and how its value reads.
const ENV_KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::Text),
    ("tls_cert_file", Kind::Text),
    ("tls_key_file", Kind::Text),
    ("client_ca_file", Kind::Text),
    ("auth", Kind::Text),
    ("token", Kind::Text),
    ("token_file", Kind::Text),
    ("state_dir", Kind::Text),
    ("root", Kind::Text),
    ("instance_id", Kind::Text),
    ("instance_name", Kind::Text),
    ("instance_group_id", Kind::Text),
    ("region_id", Kind::Text),
    ("callback_url", Kind::Text),
    ("callback_secret", Kind::Text),
    ("max_concurrent", Kind::Number),
    ("body_limit", Kind::Number),
    ("shutdown_deadline_secs", Kind::Number),
    ("progress_interval_secs", Kind::Number),
    ("task_retention_days", Kind::Number),
    ("task_retention_count", Kind::Number),
    ("endpoint", Kind::Text),
    ("region", Kind::Text),
    ("path_style", Kind::Flag),
    ("parts_in_flight", Kind::Number),
    ("nice", Kind::Number),
    ("io_class", Kind::Text),
    ("io_level", Kind::Number),
    ("recipients", Kind::List),
    ("recipients_file", Kind::Text),
    ("sse", Kind::Text),
    ("sse_kms_key_id", Kind::Text),
    ("sse_c_key_file", Kind::Text),
    ("limit_rate", Kind::Text),
    ("format", Kind::Text),
    ("id_key_file", Kind::Text),
];

impl Config {
    /// Load the file (if given), then apply `CPBACKUP_*` variables from `env`.
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Config> {
        let mut table: toml::Table = match file {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| Error::usage(format!("config {}: {e}", p.display())))?;
                let table: toml::Table =
                    text.parse().map_err(|e| Error::usage(format!("config {}: {e}", p.display())))?;
                if table.contains_key("token") || table.contains_key("callback_secret") {
                    crate::secret::warn_if_exposed(p);
                }
                table
            }
            None => toml::Table::new(),
        };
        for (key, kind) in ENV_KEYS {
            let var = format!("CPBACKUP_{}", key.to_ascii_uppercase());
            if let Some((_, v)) = env.iter().find(|(k, _)| *k == var) {
                let value = match kind {
                    Kind::Number => toml::Value::Integer(
                        v.parse().map_err(|_| Error::usage(format!("{var}={v:?} is not a number")))?,
                    ),
                    Kind::Flag => toml::Value::Boolean(matches!(v.as_str(), "1" | "true" | "yes")),
                    Kind::Text => toml::Value::String(v.clone()),
                    Kind::List => toml::Value::Array(
                        v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.to_string().into()).collect(),
                    ),
                };
                table.insert(key.to_string(), value);
            }
        }
        let mut cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::usage(format!("config: {}", e.message())))?;
        if let Some(p) = &cfg.token_file {
            let t = std::fs::read_to_string(p).map_err(|e| Error::usage(format!("token_file {}: {e}", p.display())))?;
            crate::secret::warn_if_exposed(p);
            cfg.token = Some(t.trim().to_string());
        }
        if cfg.token.as_deref().is_some_and(str::is_empty) {
            cfg.token = None;
        }
        cfg.check()?;
        cfg.protection = Settings::load(&cfg)?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        let addr: SocketAddr = self.listen.parse().map_err(|_| {
            Error::usage(format!("listen = {:?} is not an address such as 127.0.0.1:8640", self.listen))
        })?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(Error::usage(
                "tls_cert_file and tls_key_file go together: give both, or neither for plain HTTP",
            ));
        }
        if self.client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(Error::usage("client_ca_file needs TLS: give tls_cert_file and tls_key_file too"));
        }
        match (self.auth, self.client_ca_file.is_some()) {
            (Auth::Token, true) => {
                return Err(Error::usage(
                    "client_ca_file is set but auth = \"token\": set auth = \"mtls\" (a client certificate instead of the token) or \"both\"",
                ))
            }
            (Auth::Mtls | Auth::Both, false) => {
                return Err(Error::usage(format!(
                    "auth = {:?} needs client certificates: set client_ca_file (and tls_cert_file, tls_key_file)",
                    self.auth
                )))
            }
            _ => {}
        }
        if self.auth == Auth::Both && self.token.is_none() {
            return Err(Error::usage(
                "auth = \"both\" needs a token too: set token (or token_file, or CPBACKUP_TOKEN)",
            ));
        }
        if self.token.is_none() && self.auth == Auth::Token && !addr.ip().is_loopback() {
            return Err(Error::usage(format!(
                "listen = {:?} reaches beyond this phone but no token is configured: set token (or token_file, or CPBACKUP_TOKEN), or listen on 127.0.0.1",
                self.listen
            )));
        }
        self.priority()?;
        if self.max_concurrent == 0 {
            return Err(Error::usage("max_concurrent must be at least 1"));
        }
        Ok(())
    }

    /// How a task reaches object storage: the request's endpoint (ECP UploadEndpoint) when it
    /// names one, else the configured one. The one place a task's store options are built.
    pub fn store_options(&self, endpoint: Option<&str>) -> StoreOptions {
        StoreOptions {
            endpoint: endpoint.filter(|e| !e.is_empty()).map(str::to_string).or_else(|| self.endpoint.clone()),
            region: self.region.clone(),
            path_style: self.path_style,
            parts_in_flight: self.parts_in_flight,
            state_dir: Some(self.state_dir.join("uploads")),
            sse: self.protection.sse.clone(),
            limit_rate: self.protection.limit_rate,
        }
    }

    /// The priority of a task's threads (`nice`, `io_class`, `io_level`).
    pub fn priority(&self) -> Result<Priority> {
        Priority::new(self.nice, self.io_class, self.io_level)
    }

    /// This phone, as a manifest of task `task_id` records it.
    pub fn identity(&self, task_id: &str) -> Identity {
        Identity {
            android_instance_id: self.instance_id.clone(),
            android_instance_name: self.instance_name.clone(),
            instance_group_id: self.instance_group_id.clone(),
            region_id: self.region_id.clone(),
            task_id: task_id.to_string(),
            ..Default::default()
        }
    }

    pub fn addr(&self) -> Result<SocketAddr> {
        self.listen.parse().map_err(|_| Error::usage(format!("listen = {:?} is not an address", self.listen)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_unsafe_setups_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:1\"\ninstance_id = \"acp-1\"\nmax_concurrent = 2\n").unwrap();
        let c = Config::load(Some(&f), &[("CPBACKUP_INSTANCE_ID".into(), "acp-2".into())]).unwrap();
        assert_eq!(c.instance_id, "acp-2");
        assert_eq!(c.max_concurrent, 2);
        assert_eq!((c.task_retention_days, c.task_retention_count), (30, 10_000));
        let c = Config::load(Some(&f), &[("CPBACKUP_TASK_RETENTION_DAYS".into(), "7".into())]).unwrap();
        assert_eq!(c.task_retention_days, 7);
        let e = Config::load(Some(&f), &[("CPBACKUP_LISTEN".into(), "0.0.0.0:1".into())]).unwrap_err();
        assert!(e.to_string().contains("no token"), "{e}");
        assert!(Config::load(
            Some(&f),
            &[("CPBACKUP_LISTEN".into(), "0.0.0.0:1".into()), ("CPBACKUP_TOKEN".into(), "t".into())]
        )
        .is_ok());
        // TLS and client certificates: settings that only make sense together.
        for (set, says) in [
            (vec![("CPBACKUP_TLS_CERT_FILE", "/c.pem")], "go together"),
            (vec![("CPBACKUP_CLIENT_CA_FILE", "/ca.pem")], "needs TLS"),
            (
                vec![("CPBACKUP_TLS_CERT_FILE", "/c"), ("CPBACKUP_TLS_KEY_FILE", "/k"), ("CPBACKUP_AUTH", "mtls")],
                "client_ca_file",
            ),
            (
                vec![
                    ("CPBACKUP_TLS_CERT_FILE", "/c"),
                    ("CPBACKUP_TLS_KEY_FILE", "/k"),
                    ("CPBACKUP_CLIENT_CA_FILE", "/ca"),
                ],
                "auth = \"token\"",
            ),
            (
                vec![
                    ("CPBACKUP_TLS_CERT_FILE", "/c"),
                    ("CPBACKUP_TLS_KEY_FILE", "/k"),
                    ("CPBACKUP_CLIENT_CA_FILE", "/ca"),
                    ("CPBACKUP_AUTH", "both"),
                ],
                "needs a token",
            ),
            (vec![("CPBACKUP_AUTH", "password")], "unknown variant"),
        ] {
            let env: Vec<(String, String)> = set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let e = Config::load(Some(&f), &env).unwrap_err().to_string();
            assert!(e.contains(says), "{set:?}: {e}");
        }
        // Client certificates instead of a token may listen beyond loopback.
        let mtls: Vec<(String, String)> = [
            ("CPBACKUP_LISTEN", "0.0.0.0:1"),
            ("CPBACKUP_TLS_CERT_FILE", "/c"),
            ("CPBACKUP_TLS_KEY_FILE", "/k"),
            ("CPBACKUP_CLIENT_CA_FILE", "/ca"),
            ("CPBACKUP_AUTH", "mtls"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(Config::load(Some(&f), &mtls).unwrap().auth, Auth::Mtls);
        std::fs::write(&f, "bogus = 1\n").unwrap();
        assert!(Config::load(Some(&f), &[]).unwrap_err().to_string().contains("bogus"));
    }

    #[test]
    fn secrets_open_to_others_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "t\n").unwrap();
        for (mode, exposed) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true), (0o666, true)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let w = crate::secret::exposure(&f);
            assert_eq!(w.is_some(), exposed, "{mode:o}: {w:?}");
            if let Some(w) = w {
                assert!(w.contains(&format!("{mode:04o}")) && w.contains("chmod 600"), "{w}");
            }
        }
    }
}
