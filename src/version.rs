//! What this binary is: version, git commit, target triple and build profile, embedded by
//! `build.rs`. Shown by `cpbackup version` and stamped into every manifest.

use crate::manifest::Manifest;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("CPBACKUP_GIT_COMMIT");
pub const TARGET: &str = env!("CPBACKUP_TARGET");
pub const PROFILE: &str = env!("CPBACKUP_PROFILE");

/// `cpbackup 0.1.0 (commit abc123, aarch64-unknown-linux-musl, release)`
pub fn long() -> String {
    format!("cpbackup {VERSION} (commit {COMMIT}, {TARGET}, {PROFILE})")
}

/// Record the agent's identity in a manifest.
pub fn stamp(mut m: Manifest) -> Manifest {
    m.agent_version = VERSION.to_string();
    m.agent_commit = COMMIT.to_string();
    m.agent_target = TARGET.to_string();
    m
}
