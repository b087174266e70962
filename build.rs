//! Embeds what the binary was built from: version, git commit, target triple, profile.
//! Shown by `cpbackup version` and written into every manifest.
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let target = std::env::var("TARGET").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_default();
    println!("cargo:rustc-env=CPBACKUP_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=CPBACKUP_TARGET={target}");
    println!("cargo:rustc-env=CPBACKUP_PROFILE={profile}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
