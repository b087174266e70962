//! A task: one operation the control plane asked for, with its state as the vendors report it.
//! This is the journal's record format: every field has a default, so a task written by any
//! earlier version still loads (a fixture in the tests holds such a file).
//!
//! What it journals never holds a secret: credentials come from the environment, never from a
//! request; a request's decryption identity stays in the spec in memory (it does not
//! serialize), and `needs_identity` records only that there was one.

use serde::{Deserialize, Serialize};

use crate::spec::{BackupAppSpec, ExportSpec, ImportSpec, RecoverAppSpec};

/// ECP's TaskStatus. CPH's job status is derived from it (`cph_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TaskStatus {
    #[default]
    Waiting,
    Processing,
    Finished,
    PartFinished,
    Failed,
}

impl TaskStatus {
    pub fn is_final(self) -> bool {
        matches!(self, TaskStatus::Finished | TaskStatus::PartFinished | TaskStatus::Failed)
    }

    /// CPH job status: 1 running, 2 success, -1 failed.
    pub fn cph_status(self) -> i32 {
        match self {
            TaskStatus::Waiting | TaskStatus::Processing => 1,
            TaskStatus::Finished | TaskStatus::PartFinished => 2,
            TaskStatus::Failed => -1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Waiting => "Waiting",
            TaskStatus::Processing => "Processing",
            TaskStatus::Finished => "Finished",
            TaskStatus::PartFinished => "PartFinished",
            TaskStatus::Failed => "Failed",
        }
    }
}

/// Whose shapes a task answers in: the API that created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Alibaba ECP (`/ecp/ACTION`), and the schedules.
    #[default]
    Ecp,
    /// Huawei CPH (`/cph/…`).
    Cph,
}

/// ECP's TaskType, as DescribeTasks and the callbacks show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TaskType {
    /// ECP BackupFile, CPH batch-storage. (The default only fills a record that names none;
    /// every version wrote it.)
    #[default]
    BackupFile,
    /// ECP RecoveryFile, CPH batch-restore.
    RecoverFile,
    BackupApp,
    RecoverApp,
}

impl TaskType {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::BackupFile => "BackupFile",
            TaskType::RecoverFile => "RecoverFile",
            TaskType::BackupApp => "BackupApp",
            TaskType::RecoverApp => "RecoverApp",
        }
    }
}

/// What to do. Each variant runs the same function the command line runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "Kind")]
pub enum Work {
    /// ECP BackupFile, CPH batch-storage.
    Export { spec: ExportSpec },
    /// ECP RecoveryFile, CPH batch-restore. With a folder source, `backup_file_id` names the archive.
    Import {
        spec: ImportSpec,
        #[serde(default)]
        backup_file_id: Option<String>,
    },
    /// ECP BackupApp.
    BackupApp { spec: BackupAppSpec },
    /// ECP RecoverApp.
    RecoverApp {
        spec: RecoverAppSpec,
        #[serde(default)]
        backup_file_id: Option<String>,
    },
}

impl Work {
    /// ECP's TaskType.
    pub fn task_type(&self) -> TaskType {
        match self {
            Work::Export { .. } => TaskType::BackupFile,
            Work::Import { .. } => TaskType::RecoverFile,
            Work::BackupApp { .. } => TaskType::BackupApp,
            Work::RecoverApp { .. } => TaskType::RecoverApp,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskProgress {
    pub bytes: u64,
    pub total_bytes: u64,
    pub entries: u64,
    pub transferred_bytes: u64,
    pub percent: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Task {
    pub journal_version: u32,
    pub task_id: String,
    /// The batch task of the request (ECP's batch TaskId), when there is one.
    pub parent_task_id: String,
    /// The API call that created it (ECP InvokeId / CPH request_id).
    pub request_id: String,
    /// Idempotency key: the same token returns the same task.
    pub client_token: String,
    /// Whose shapes to answer with.
    pub api: Api,
    pub task_type: TaskType,
    pub status: TaskStatus,
    pub error_code: String,
    pub error_msg: String,
    /// ISO 8601 UTC (`2024-05-23T10:00:00Z`), as DescribeTasks and CPH jobs report.
    pub created_time: String,
    pub start_time: String,
    pub finish_time: String,
    /// JSON text of the result (the manifest or the restore report), ECP's `Result`.
    pub result: String,
    pub progress: TaskProgress,
    pub backup_file_id: String,
    /// Where the archive is (for deletes by id and for crash recovery).
    pub backup_file_path: String,
    pub instance_id: String,
    /// The schedule that started it, when one did.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub schedule_id: String,
    pub callback_url: String,
    /// Sequence of the last event queued for this task.
    pub event_seq: u64,
    pub cancel_requested: bool,
    /// The request handed over a decryption identity. It lives in memory only, so after a
    /// restart the task cannot run: it ends Failed, `IdentityRequired`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub needs_identity: bool,
    pub work: Option<Work>,
}

impl Default for Task {
    fn default() -> Self {
        Task {
            journal_version: 1,
            task_id: String::new(),
            parent_task_id: String::new(),
            request_id: String::new(),
            client_token: String::new(),
            api: Api::Ecp,
            task_type: TaskType::BackupFile,
            status: TaskStatus::Waiting,
            error_code: String::new(),
            error_msg: String::new(),
            created_time: String::new(),
            start_time: String::new(),
            finish_time: String::new(),
            result: String::new(),
            progress: TaskProgress::default(),
            backup_file_id: String::new(),
            backup_file_path: String::new(),
            instance_id: String::new(),
            schedule_id: String::new(),
            callback_url: String::new(),
            event_seq: 0,
            cancel_requested: false,
            needs_identity: false,
            work: None,
        }
    }
}

/// `2024-05-23T10:00:00Z`
pub fn iso_now() -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc().format(&f).unwrap_or_default()
}

pub fn new_task_id() -> String {
    format!("t-{}", crate::manifest::random_id(16))
}
