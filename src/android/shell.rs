//! The only module that starts processes. Commands are found on `PATH` (so tests can put fake
//! Android tools first) and run with an argument vector, never through a shell.
//!
//! It never interprets output beyond trimming it: parsing lives in pure functions elsewhere
//! (`pm.rs`). A tool that cannot be started or exits non-zero becomes `Error::Device` quoting
//! the command line and what the tool printed.

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// `getprop KEY`, trimmed; `None` when getprop is missing or fails.
pub fn getprop(key: &str) -> Option<String> {
    let out = Command::new("getprop").arg(key).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// How a command line is shown in messages and logs.
pub fn shown(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Run `program args…`, feeding `stdin` when given, and return stdout and stderr joined (pm
/// prints `Failure [...]` on either, depending on the Android version). A start failure or a
/// non-zero exit is an `Error::Device` that quotes the output.
pub fn run(program: &str, args: &[&str], stdin: Option<&mut dyn Read>) -> Result<String> {
    let cmd = shown(program, args);
    tracing::debug!("running {cmd}");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Device {
            command: cmd.clone(),
            output: if e.kind() == io::ErrorKind::NotFound {
                format!("{program} not found on PATH")
            } else {
                format!("cannot start: {e}")
            },
        })?;
    let fed = match (stdin, child.stdin.take()) {
        (Some(src), Some(mut pipe)) => {
            // Stream the input; a tool that exits early closes the pipe, which is reported
            // together with what it printed.
            let r = io::copy(src, &mut pipe).and_then(|_| pipe.flush());
            drop(pipe);
            r.err()
        }
        _ => None,
    };
    let out = child.wait_with_output().map_err(|e| Error::Device { command: cmd.clone(), output: e.to_string() })?;
    let mut text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim();
    if !err.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(err);
    }
    if !out.status.success() {
        let code = out.status.code().map(|c| format!("exit code {c}")).unwrap_or_else(|| "killed by a signal".into());
        let output = if text.is_empty() { code } else { format!("{text} ({code})") };
        return Err(Error::Device { command: cmd, output });
    }
    if let Some(e) = fed {
        return Err(Error::Device { command: cmd, output: format!("could not feed its input: {e}; it said: {text}") });
    }
    Ok(text)
}
