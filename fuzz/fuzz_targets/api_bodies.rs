//! Fuzz target: the daemon's request bodies (`daemon::api::check_request`), the JSON a control
//! plane POSTs: ECP's actions (BackupFile, BackupApp, RecoveryFile, RecoverApp,
//! DescribeBackupFiles, DeleteBackupFile, DescribeTasks) and CPH's batch-storage and
//! batch-restore, parsed and checked by the handlers' own functions, nothing submitted.
//!
//! Input: the first byte picks the route, the rest is the body. A body that is wrong must be a
//! 400 (or 404 for an unknown route) with a message, never a panic or a 5xx.

#![no_main]

use cpbackup::daemon::api::check_request;
use libfuzzer_sys::fuzz_target;

/// The phone the agent is, as in tests/it/daemon.rs.
const INSTANCE: &str = "acp-test0001";

const ROUTES: &[&str] = &[
    "/ecp/BackupFile",
    "/ecp/BackupApp",
    "/ecp/RecoveryFile",
    "/ecp/RecoverApp",
    "/ecp/DescribeBackupFiles",
    "/ecp/DeleteBackupFile",
    "/ecp/DescribeTasks",
    "/cph/batch-storage",
    "/cph/batch-restore",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let route = ROUTES[pick as usize % ROUTES.len()];
    if let Err((status, code, message)) = check_request(INSTANCE, route, body) {
        assert!(status == 400 || status == 404, "{route}: {status} {code} {message}");
        assert!(!code.is_empty() && !message.is_empty(), "{route}: {status} {code:?} {message:?}");
    }
});
