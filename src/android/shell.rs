//! The only module that starts processes. Commands are found on `PATH` (so tests can put fake
//! Android tools first) and run with an argument vector, never through a shell.
//!
//! It never interprets output beyond trimming it: parsing lives in pure functions elsewhere.

use std::process::{Command, Stdio};

/// `getprop KEY`, trimmed; `None` when getprop is missing or fails.
pub fn getprop(key: &str) -> Option<String> {
    let out = Command::new("getprop")
        .arg(key)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
