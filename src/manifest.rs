//! The backup-file record: the fields of Alibaba's `DescribeBackupFiles` plus what cpbackup
//! needs to trust an archive (SHA-256, size, format, entry count) and to know where it came
//! from (agent version, architecture). Stored as `ARCHIVE.manifest.json` beside the archive.
//!
//! A manifest says `BACKUPING` while its archive is written and `AVAILABLE` only after the
//! archive is complete: nothing here may ever mark an archive good before that.

use serde::{Deserialize, Serialize};

use crate::android::SystemInfo;
use crate::archive::Format;
use crate::error::{Error, Result};
use crate::version;

pub const SUFFIX: &str = ".manifest.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    #[default]
    Backuping,
    Available,
    BackupFailed,
    Recovering,
    RecoveryFailed,
    PartBackupFinished,
    Deleting,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Backuping => "BACKUPING",
            Status::Available => "AVAILABLE",
            Status::BackupFailed => "BACKUP_FAILED",
            Status::Recovering => "RECOVERING",
            Status::RecoveryFailed => "RECOVERY_FAILED",
            Status::PartBackupFinished => "PART_BACKUP_FINISHED",
            Status::Deleting => "DELETING",
        }
    }

    pub fn parse(s: &str) -> Result<Status> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            Error::usage(format!(
                "unknown status {s:?}: use AVAILABLE, BACKUPING, RECOVERING, DELETING, BACKUP_FAILED, RECOVERY_FAILED or PART_BACKUP_FINISHED"
            ))
        })
    }

    /// Whether the archive behind a record with this status is complete and may be restored.
    pub fn archive_complete(self) -> bool {
        matches!(self, Status::Available | Status::Recovering | Status::RecoveryFailed | Status::PartBackupFinished)
    }
}

/// Who and where a backup belongs to: the identity fields of the record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Identity {
    pub android_instance_id: String,
    pub android_instance_name: String,
    pub instance_group_id: String,
    pub end_user_id: String,
    pub region_id: String,
    pub task_id: String,
    /// The daemon's schedule that made this backup: its retention forgets only the backups
    /// that carry its id. Absent from the records of other backups.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub schedule_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Manifest {
    pub backup_file_id: String,
    pub backup_file_name: String,
    #[serde(flatten)]
    pub identity: Identity,
    pub status: Status,
    pub source_file_path_list: Vec<String>,
    pub source_app_info_list: Vec<String>,
    /// `backup-app`: per package, what its install does not carry (runtime permissions, app
    /// ops, what each APK needs, whether it holds Keystore keys).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub app_details: Vec<crate::android::details::AppDetails>,
    /// Total size of the source files, as DescribeBackupFiles reports it.
    pub file_size: u64,
    pub upload_type: String,
    pub upload_endpoint: String,
    pub backup_file_path: String,
    pub description: String,
    pub backup_all: bool,
    pub system_version: String,
    pub gmt_created: String,
    pub gmt_modified: String,

    // cpbackup's own fields.
    pub manifest_version: u32,
    pub format: Option<Format>,
    /// How the archive is sealed, when it is (never a key): `{"Format": "age", "Recipients":
    /// [...], "Passphrase": false}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypt::Encryption>,
    /// SHA-256 of the archive object as stored (hex).
    pub sha256: String,
    /// Size of the archive object as stored.
    pub archive_size: u64,
    pub entry_count: u64,
    /// Size of the tar stream before compression.
    pub uncompressed_size: u64,
    pub agent_version: String,
    pub agent_commit: String,
    pub agent_target: String,
    pub arch: String,
    pub error_code: String,
    pub failure_reason: String,
    pub warnings: Vec<String>,
    pub warning_count: u64,
    /// A snapshot's root tree and what writing it cost (`Format: "repo"` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<crate::repo::ops::SnapshotInfo>,
    /// How the store encrypts the archive at rest (`--sse*`): the mode and the KMS key id,
    /// never a key. Absent when the bucket's own settings apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<crate::store::sse::ServerSideEncryption>,
}

impl Manifest {
    /// A new backup's record as it starts (`BACKUPING`): its id (the one given, else a new one),
    /// whom it is for, the phone's build and architecture, this agent, the time. What it holds
    /// (paths or apps, format, sizes) the backup fills in.
    pub fn begin(
        backup_file_id: Option<&str>,
        identity: &Identity,
        description: &str,
        system: &SystemInfo,
        now: time::OffsetDateTime,
    ) -> Manifest {
        version::stamp(Manifest {
            backup_file_id: backup_file_id.map_or_else(new_backup_file_id, str::to_string),
            identity: identity.clone(),
            status: Status::Backuping,
            description: description.to_string(),
            system_version: system.fingerprint.clone(),
            gmt_created: format_time(now),
            gmt_modified: format_time(now),
            manifest_version: 1,
            arch: system.abi.clone(),
            ..Manifest::default()
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of plain fields cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn from_json(what: &str, bytes: &[u8]) -> Result<Manifest> {
        serde_json::from_slice(bytes).map_err(|e| Error::Manifest {
            what: what.to_string(),
            reason: format!("is not a valid cpbackup manifest: {e}"),
        })
    }
}

/// Key of the manifest that belongs to an archive key.
pub fn key_for(archive_key: &str) -> String {
    format!("{archive_key}{SUFFIX}")
}

/// A new `bf-` identifier: 17 lowercase letters and digits, like the vendor's.
pub fn new_backup_file_id() -> String {
    format!("bf-{}", random_id(17))
}

pub fn random_id(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..n).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, the vendors' time format.
pub fn format_time(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.to_offset(time::UtcOffset::UTC).format(&f).unwrap_or_default()
}

pub fn parse_time(s: &str) -> Result<time::OffsetDateTime> {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(s, &f)
        .map(|p| p.assume_utc())
        .map_err(|_| Error::usage(format!("time {s:?} is not of the form YYYY-MM-DD HH:MM:SS")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_the_vendors() {
        let m = Manifest {
            status: Status::PartBackupFinished,
            identity: Identity { android_instance_id: "acp-1".into(), ..Default::default() },
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(v["Status"], "PART_BACKUP_FINISHED");
        assert_eq!(v["AndroidInstanceId"], "acp-1");
        for k in [
            "BackupFileId",
            "SourceFilePathList",
            "SourceAppInfoList",
            "GmtCreated",
            "BackupAll",
            "Sha256",
            "TaskId",
            "RegionId",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        let back = Manifest::from_json("m", &m.to_json()).unwrap();
        assert_eq!(back, m);
        assert!(v.get("AppDetails").is_none(), "only backup-app records app details");

        let details = crate::android::details::AppDetails {
            package: "com.example.app".into(),
            keystore_bound: true,
            ..Default::default()
        };
        let m = Manifest { source_app_info_list: vec!["com.example.app".into()], app_details: vec![details], ..m };
        let v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(v["AppDetails"][0]["Package"], "com.example.app");
        assert_eq!(v["AppDetails"][0]["KeystoreBound"], true);
        assert_eq!(Manifest::from_json("m", &m.to_json()).unwrap(), m);
    }

    #[test]
    fn times_round_trip() {
        let t = parse_time("2024-05-23 10:00:00").unwrap();
        assert_eq!(format_time(t), "2024-05-23 10:00:00");
        assert!(parse_time("2024-05-23T10:00:00Z").is_err());
        assert!(new_backup_file_id().starts_with("bf-"));
    }
}
