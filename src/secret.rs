//! Secrets the agent is handed: SSE-C keys, age identities, passphrases, tokens read from
//! files. Owns the one type that holds a secret's bytes (`Secret`, whose `Debug` never shows
//! them and which wipes them when dropped) and the reading of secret files, with a warning when
//! others on the phone can read the file.
//!
//! It must never put a secret's value into a log line, an error message or anything serialized:
//! errors name the file and what it should hold, never what it holds.

use std::fmt;
use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Secret files are small: a key, a passphrase, a few identities.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Bytes that must not be shown: wiped on drop, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    /// The value, for the one place that uses it (a signer, a cipher).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A file holding a secret that others on the phone may read: the warning that says so and
/// what to do, or None when it is private (or cannot be examined).
pub fn exposure(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} holds a secret and is open to other users (mode {mode:04o}): chmod 600 {}",
            path.display(),
            path.display()
        )
    })
}

/// Log the warning of `exposure`, if any.
pub fn warn_if_exposed(path: &Path) {
    if let Some(w) = exposure(path) {
        tracing::warn!("{w}");
    }
}

/// Read a secret file whole (at most 64 KiB), warning when others can read it. `what` says
/// what the file should hold, for the error message (`"--sse-c-key-file"`).
pub fn read_file(path: &Path, what: &str) -> Result<Secret> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::usage(format!("{what} {}: cannot be read: {e}", path.display())))?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::usage(format!("{what} {}: cannot be read: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(Error::usage(format!(
            "{what} {}: is over {MAX_SECRET_FILE} bytes, too large for a key or passphrase file",
            path.display()
        )));
    }
    warn_if_exposed(path);
    Ok(Secret(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_itself() {
        let s = Secret::new(b"hunter2-recognisable".to_vec());
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(s.expose(), b"hunter2-recognisable");
    }

    #[test]
    fn secret_files_are_read_and_bounded() {
        use std::os::unix::fs::PermissionsExt;
        // Who may read the file is checked by daemon::config::tests::secrets_open_to_others_are_named.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, b"0123").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_file(&p, "--x-file").unwrap().expose(), b"0123");
        std::fs::write(&p, vec![b'a'; 70_000]).unwrap();
        let e = read_file(&p, "--x-file").unwrap_err().to_string();
        assert!(e.contains("--x-file") && e.contains("too large") && !e.contains("aaaa"), "{e}");
        let e = read_file(&dir.path().join("missing"), "--x-file").unwrap_err().to_string();
        assert!(e.contains("--x-file") && e.contains("missing"), "{e}");
    }
}
