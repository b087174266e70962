//! Embeds what the binary was built from: version, git commit, target triple, profile.
//! Shown by `cpbackup version` and written into every manifest.
use std::process::Command;

fn main() {
    // A build without git (cross-rs containers, tarballs) can pass the commit in.
    println!("cargo:rerun-if-env-changed=CPBACKUP_GIT_COMMIT");
    let given = std::env::var("CPBACKUP_GIT_COMMIT").ok().filter(|c| !c.is_empty());
    let commit = given.unwrap_or_else(git_commit);
    let target = std::env::var("TARGET").unwrap_or_default();
    // PROFILE says only "debug" or "release"; a custom profile's own name is the
    // directory OUT_DIR sits in: target/[TRIPLE/]NAME/build/cpbackup-HASH/out.
    let profile = std::env::var("OUT_DIR")
        .ok()
        .and_then(|o| {
            std::path::Path::new(&o)
                .ancestors()
                .nth(3)
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| std::env::var("PROFILE").unwrap_or_default());
    println!("cargo:rustc-env=CPBACKUP_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=CPBACKUP_TARGET={target}");
    println!("cargo:rustc-env=CPBACKUP_PROFILE={profile}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}
