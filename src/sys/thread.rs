//! One thread's identity and priority: its id, its nice value and its I/O class, set and read
//! by the system calls that neither std nor rustix offers per thread (`setpriority` on a thread
//! id, `ioprio_set`, `ioprio_get`). Part of `sys`, the crate's one home of `unsafe`; it knows
//! nothing of what the threads do.

use std::io;

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
