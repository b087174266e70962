//! Test support: running the binary, building trees with every case the archive must carry,
//! and comparing trees (content and metadata).

#![allow(dead_code)]

pub mod daemon;
pub mod faultproxy;
pub mod garage;
pub mod tree;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The cpbackup binary under test. `CPBACKUP_BIN` overrides it (used to run the same tests
/// against the aarch64 build under qemu).
pub fn bin() -> String {
    std::env::var("CPBACKUP_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cpbackup").to_string())
}

/// `bin()` split into program and arguments (`qemu-aarch64-static /path/cpbackup` is two), for
/// tests that start the binary through another program (setpriv, sh).
pub fn bin_argv() -> Vec<String> {
    bin().split_whitespace().map(str::to_string).collect()
}

/// A `cpbackup` command with a clean environment for what matters to it.
pub fn cpbackup() -> Command {
    let bin = bin();
    let mut parts = bin.split_whitespace();
    let mut c = Command::new(parts.next().expect("CPBACKUP_BIN is empty"));
    c.args(parts);
    c.env_remove("RUST_LOG").env_remove("AWS_CA_BUNDLE").stdin(Stdio::null());
    c
}

/// cpbackup's commands on a `Command` (`cpbackup()`, a Garage's, a fake phone's): each test
/// names the root, the paths and the destination, and adds only what is its own
/// (`cpbackup().export(root, &["/data/media/0"], to).arg("--json")`).
pub trait Cli {
    /// `export --root ROOT --include PATH… --to TO`
    fn export(&mut self, root: impl AsRef<OsStr>, includes: &[&str], to: impl AsRef<OsStr>) -> &mut Command;
    /// `import --root ROOT --from FROM`
    fn import(&mut self, root: impl AsRef<OsStr>, from: impl AsRef<OsStr>) -> &mut Command;
    /// `backup-app --app PKG… --root ROOT --to TO`
    fn backup_app(&mut self, root: impl AsRef<OsStr>, apps: &[&str], to: impl AsRef<OsStr>) -> &mut Command;
    /// `recover-app --root ROOT --from FROM`
    fn recover_app(&mut self, root: impl AsRef<OsStr>, from: impl AsRef<OsStr>) -> &mut Command;
    /// `cleanup --root ROOT`
    fn cleanup(&mut self, root: impl AsRef<OsStr>) -> &mut Command;
}

impl Cli for Command {
    fn export(&mut self, root: impl AsRef<OsStr>, includes: &[&str], to: impl AsRef<OsStr>) -> &mut Command {
        self.arg("export").arg("--root").arg(root).arg("--to").arg(to);
        for path in includes {
            self.args(["--include", path]);
        }
        self
    }

    fn import(&mut self, root: impl AsRef<OsStr>, from: impl AsRef<OsStr>) -> &mut Command {
        self.arg("import").arg("--root").arg(root).arg("--from").arg(from)
    }

    fn backup_app(&mut self, root: impl AsRef<OsStr>, apps: &[&str], to: impl AsRef<OsStr>) -> &mut Command {
        self.arg("backup-app").arg("--root").arg(root).arg("--to").arg(to);
        for app in apps {
            self.args(["--app", app]);
        }
        self
    }

    fn recover_app(&mut self, root: impl AsRef<OsStr>, from: impl AsRef<OsStr>) -> &mut Command {
        self.arg("recover-app").arg("--root").arg(root).arg("--from").arg(from)
    }

    fn cleanup(&mut self, root: impl AsRef<OsStr>) -> &mut Command {
        self.arg("cleanup").arg("--root").arg(root)
    }
}

/// Run and return the output, asserting the exit code.
pub fn run(cmd: &mut Command, code: i32) -> Output {
    let out = cmd.output().expect("spawn cpbackup");
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stderr:\n{}\nstdout:\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Is a command on PATH?
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Fail (never skip) when a tool a test needs is missing, saying how to get it.
pub fn require(tools: &[&str]) {
    for tool in tools {
        assert!(have(tool), "{tool} is not installed: .ci/run installs it (see its apt-get list)");
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// SIGKILL a child started in its own process group (`process_group(0)`) together with
/// everything it started (the fake `pm` scripts of an install), as init does when it stops a
/// service, and wait until none of them is left.
pub fn kill_group(child: &mut std::process::Child) {
    let pgid = child.id() as i32;
    // SAFETY: signalling a process group this test created.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // SAFETY: signal 0 only asks whether the group still has members.
    while unsafe { libc::kill(-pgid, 0) } == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
