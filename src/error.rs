//! The crate's one error type. It owns the wording a user sees and the split between
//! "bad input" (exit 2) and "the work failed" (exit 1). It must never carry a secret
//! (credentials, tokens): messages quote paths, names and the tool output only.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user asked for something that cannot be done as asked: a path that breaks a rule,
    /// a destination that does not parse, a format that is unknown.
    #[error("{0}")]
    Usage(String),

    /// A path given by the user breaks one of the selection rules.
    #[error("path {path:?}: {rule}")]
    PathRule { path: String, rule: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// The archive is not what it claims to be: corrupt, truncated, hostile or unsupported.
    #[error("archive {what}: {reason}")]
    Archive { what: String, reason: String },

    /// The archive's SHA-256 differs from the manifest's.
    #[error("checksum mismatch for {what}: the manifest says {expected}, the archive hashes to {actual}; the archive is corrupt or was replaced, nothing was restored")]
    Checksum { what: String, expected: String, actual: String },

    /// Not enough room where the data would be written.
    #[error("not enough free space under {path:?}: {needed} bytes needed, {available} available; free some space or restore elsewhere")]
    NoSpace { path: PathBuf, needed: u64, available: u64 },

    /// The manifest beside an archive does not allow using it.
    #[error("manifest {what}: {reason}")]
    Manifest { what: String, reason: String },

    /// The object store refused or failed a request.
    #[error("store {what}: {reason}")]
    Store { what: String, reason: String, retryable: bool },

    /// A device command (pm, am, getprop, restorecon…) failed or said `Failure`.
    #[error("`{command}` failed: {output}")]
    Device { command: String, output: String },

    /// The archive is encrypted and none of the keys given opens it: no key, the wrong key,
    /// or a wrong passphrase. Names the flag to pass, never a key.
    #[error("{what}: {reason}")]
    Key { what: String, reason: String },

    #[error("cancelled")]
    Cancelled,

    /// Something in the agent itself went wrong (a stage that panicked, a state file it cannot
    /// write): neither the user's input nor the remote side. Exit 1, `InternalError`.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    pub fn path_rule(path: impl Into<String>, rule: impl Into<String>) -> Self {
        Error::PathRule { path: path.into(), rule: rule.into() }
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    pub fn archive(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Archive { what: what.into(), reason: reason.into() }
    }

    /// True when the fault is in what the user gave us (exit code 2), not in the work.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Error::Usage(_)
                | Error::PathRule { .. }
                | Error::Archive { .. }
                | Error::Checksum { .. }
                | Error::Manifest { .. }
                | Error::Key { .. }
        )
    }

    /// True when trying the same request again may succeed (network faults, 5xx, SlowDown).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { retryable, .. } => *retryable,
            Error::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::Interrupted
            ),
            _ => false,
        }
    }

    /// A short machine-readable code for manifests, task records and API answers.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Usage(_) | Error::PathRule { .. } => "InvalidParameter",
            Error::Io { source, .. } if is_no_space(source) => "NoSpace",
            Error::Io { .. } => "IoError",
            Error::Archive { .. } => "InvalidArchive",
            Error::Checksum { .. } => "ChecksumMismatch",
            Error::NoSpace { .. } => "NoSpace",
            Error::Manifest { .. } => "InvalidManifest",
            Error::Store { .. } => "StoreError",
            Error::Device { .. } => "DeviceCommandFailed",
            Error::Key { .. } => "DecryptionFailed",
            Error::Cancelled => "Cancelled",
            Error::Internal(_) => "InternalError",
        }
    }
}

/// Our own error, when an io::Error only carries it across a `Read` (an object store's download
/// failing under a decompressor); the io::Error itself otherwise.
pub fn extract_ours(e: io::Error) -> std::result::Result<Error, io::Error> {
    if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return Err(e);
    }
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(ours)) => Ok(*ours),
        Some(Err(other)) => Err(io::Error::new(kind, other)),
        None => Err(io::Error::from(kind)),
    }
}

pub fn is_no_space(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT)
}

/// Attach "what we were doing" to an io::Error, the one way the crate wraps them.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, io::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| {
            let context = context();
            if is_no_space(&source) {
                Error::Io {
                    context: format!("{context} (the filesystem is full; free some space and try again)"),
                    source,
                }
            } else {
                Error::Io { context, source }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_carried_through_io_comes_back_whole() {
        let store =
            Error::Store { what: "GetObject s3://b/k".into(), reason: "SlowDown (HTTP 503)".into(), retryable: true };
        let back = extract_ours(io::Error::other(store)).expect("ours");
        assert!(matches!(back, Error::Store { retryable: true, .. }), "{back}");
        assert!(!back.is_input(), "a store failure is not bad input");
        let plain = extract_ours(io::Error::new(io::ErrorKind::InvalidData, "bad zstd frame")).unwrap_err();
        assert_eq!(plain.kind(), io::ErrorKind::InvalidData);
        assert_eq!(plain.to_string(), "bad zstd frame");
    }
}
