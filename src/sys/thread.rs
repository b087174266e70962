//! One thread's identity and priority: its id, its nice value and its I/O class, set and read
//! by the system calls that neither std nor rustix offers per thread (`setpriority` on a thread
//! id, `ioprio_set`, `ioprio_get`); and the nice value of the process's session as the
//! scheduler sees it (its autogroup). Part of `sys`, the crate's one home of `unsafe`; it
//! knows nothing of what the threads do.

use std::io;
use std::path::Path;

const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// The calling thread's id.
pub fn id() -> i32 {
    // SAFETY: gettid takes nothing and cannot fail.
    unsafe { libc::gettid() }
}

/// `setpriority(PRIO_PROCESS, tid, nice)`: on Linux, one thread's nice value.
pub fn set_nice(tid: i32, nice: i32) -> io::Result<()> {
    // SAFETY: plain integers in, an error code out.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `ioprio_set(IOPRIO_WHO_PROCESS, tid, value)`: one thread's I/O class and level.
pub fn set_ioprio(tid: i32, value: u32) -> io::Result<()> {
    // SAFETY: plain integers in, an error code out.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, value as libc::c_int) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `ioprio_get(IOPRIO_WHO_PROCESS, tid)`
pub fn ioprio(tid: i32) -> io::Result<u32> {
    // SAFETY: plain integers in, a value or an error code out.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u32)
    }
}

/// Whether the calling process leads its own session (`setsid`, as init starts services):
/// then the kernel's autogroup of that session holds this process and its children only.
/// A session made outside this PID namespace reads as session 0 (containers, some CI
/// machines), which is never ours; rustix's `getsid` asserts it is positive, so libc's is used.
pub fn leads_session() -> bool {
    // SAFETY: no arguments that point anywhere; getsid(0) is the caller's session or -1.
    let sid = unsafe { libc::getsid(0) };
    sid > 0 && sid == std::process::id() as libc::pid_t
}

const AUTOGROUP: &str = "/proc/self/autogroup";

/// The nice value of the calling process's autogroup (`/autogroup-N nice V`); `None` where the
/// kernel has none (`CONFIG_SCHED_AUTOGROUP` unset).
pub fn autogroup_nice() -> Option<i32> {
    autogroup_nice_of(Path::new(AUTOGROUP))
}

/// The nice value in an autogroup file such as `/proc/PID/autogroup`.
pub fn autogroup_nice_of(file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.split_whitespace().skip_while(|w| *w != "nice").nth(1)?.parse().ok()
}

/// Set the nice value of the calling process's autogroup: the weight the scheduler gives the
/// whole session against the other sessions (a nice below the current one needs
/// CAP_SYS_NICE).
pub fn set_autogroup_nice(nice: i32) -> io::Result<()> {
    std::fs::write(AUTOGROUP, nice.to_string())
}
