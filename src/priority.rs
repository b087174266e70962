//! How hard the agent's work may press on the phone it runs on: a CPU nice value and an I/O
//! scheduling class and level (`ioprio_set`), set on the thread that is about to do a task's
//! work. Linux gives both to every thread that thread starts, so the walk, the pipeline's
//! stages, zstd's workers and the object store's runtime inherit them. The default, nice 10
//! and best-effort level 7, yields to the phone's user; `--foreground` leaves the thread as it
//! is (a manual run that should go flat out).
//!
//! A thread's nice value counts only against the threads of its own autogroup: where the
//! kernel schedules by session (`CONFIG_SCHED_AUTOGROUP`, on by default in desktop and server
//! kernels), it first divides the CPU evenly between sessions, so a nice-10 export started with
//! `setsid` (as init starts a service) would still take a whole share from the user's session.
//! While work runs, a process that leads its own session therefore also lowers its autogroup
//! to the task's nice ([`Priority::lower_session`]), and puts it back after.
//!
//! It never changes a thread other than the calling one, nor a session it does not lead (a
//! manual run in an `adb shell` leaves the shell's group alone): the daemon's HTTP threads
//! keep their nice value, because tasks run on threads of their own.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sys::thread;

/// The I/O scheduling classes of `ioprio_set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoClass {
    /// Only when no other process wants the disk.
    Idle,
    /// The ordinary class, levels 0 (first) to 7 (last).
    BestEffort,
    /// Ahead of everything (needs CAP_SYS_ADMIN).
    Realtime,
}

impl IoClass {
    pub fn parse(s: &str) -> Result<IoClass> {
        match s {
            "idle" => Ok(IoClass::Idle),
            "best-effort" => Ok(IoClass::BestEffort),
            "realtime" => Ok(IoClass::Realtime),
            other => Err(Error::usage(format!("I/O class {other:?}: use idle, best-effort or realtime"))),
        }
    }

    /// The kernel's number for the class (`IOPRIO_CLASS_*`).
    pub fn number(self) -> u32 {
        match self {
            IoClass::Realtime => 1,
            IoClass::BestEffort => 2,
            IoClass::Idle => 3,
        }
    }
}

/// A task's priorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    /// -20 (first) to 19 (last).
    pub nice: i32,
    pub io_class: IoClass,
    /// 0 (first) to 7 (last) within the class.
    pub io_level: u32,
}

impl Default for Priority {
    fn default() -> Self {
        Priority { nice: 10, io_class: IoClass::BestEffort, io_level: 7 }
    }
}

impl Priority {
    /// Check the values as given (`what` names where: `--nice` or `nice`).
    pub fn new(nice: i32, io_class: IoClass, io_level: u32) -> Result<Priority> {
        if !(-20..=19).contains(&nice) {
            return Err(Error::usage(format!("nice {nice}: use -20 (first) to 19 (last); the default is 10")));
        }
        if io_level > 7 {
            return Err(Error::usage(format!("I/O level {io_level}: use 0 (first) to 7 (last); the default is 7")));
        }
        Ok(Priority { nice, io_class, io_level })
    }

    /// `IOPRIO_PRIO_VALUE(class, level)`
    pub fn ioprio(&self) -> u32 {
        (self.io_class.number() << 13) | self.io_level
    }

    /// Set both on the calling thread. A refusal (a nice below the current one, the realtime
    /// class without the privilege) is logged and the work goes on as it is.
    pub fn apply_to_this_thread(&self) {
        let tid = thread::id();
        if let Err(e) = thread::set_nice(tid, self.nice) {
            tracing::warn!("cannot set nice {} on thread {tid}: {e}", self.nice);
        }
        if let Err(e) = thread::set_ioprio(tid, self.ioprio()) {
            tracing::warn!("cannot set I/O class {:?} level {} on thread {tid}: {e}", self.io_class, self.io_level);
        }
    }
}

/// The session's autogroup while work holds it lowered: how many hold it, and its nice value
/// before the first.
struct Session {
    holders: usize,
    before: i32,
}

static SESSION: Mutex<Session> = Mutex::new(Session { holders: 0, before: 0 });

fn session() -> std::sync::MutexGuard<'static, Session> {
    SESSION.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The session's autogroup held at a task's nice value; dropping the last one puts back the
/// value it had.
#[must_use = "the session's priority is restored when this is dropped"]
pub struct LoweredSession {
    held: bool,
}

impl Priority {
    /// Lower the autogroup of the session this process leads to the task's nice value, for as
    /// long as the returned guard (or another one) lives. Nothing changes when the process
    /// does not lead its session, when the kernel has no autogroups, or when the group is
    /// already at this nice value or lower.
    pub fn lower_session(&self) -> LoweredSession {
        if !thread::leads_session() {
            return LoweredSession { held: false };
        }
        let mut s = session();
        if s.holders == 0 {
            let Some(before) = thread::autogroup_nice() else { return LoweredSession { held: false } };
            if before >= self.nice {
                return LoweredSession { held: false };
            }
            if let Err(e) = thread::set_autogroup_nice(self.nice) {
                tracing::warn!("cannot set the session's autogroup to nice {}: {e}", self.nice);
                return LoweredSession { held: false };
            }
            tracing::debug!("session autogroup nice {before} -> {}", self.nice);
            s.before = before;
        }
        s.holders += 1;
        LoweredSession { held: true }
    }
}

impl Drop for LoweredSession {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let mut s = session();
        s.holders -= 1;
        if s.holders == 0 {
            if let Err(e) = thread::set_autogroup_nice(s.before) {
                tracing::debug!("cannot put the session's autogroup back to nice {}: {e}", s.before);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_and_the_threads_it_starts_take_the_priority() {
        let p = Priority::new(12, IoClass::Idle, 0).unwrap();
        let (mine, child) = std::thread::spawn(move || {
            p.apply_to_this_thread();
            let child = std::thread::spawn(|| (nice_of(thread::id()), thread::ioprio(thread::id()).unwrap()));
            ((nice_of(thread::id()), thread::ioprio(thread::id()).unwrap()), child.join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(mine, (12, (3 << 13)), "nice and idle class on the thread");
        assert_eq!(child, mine, "inherited by the threads it starts");
        assert_ne!(nice_of(thread::id()), 12, "the calling test thread is untouched");
        assert!(Priority::new(20, IoClass::BestEffort, 7).unwrap_err().to_string().contains("-20"));
        assert!(Priority::new(0, IoClass::BestEffort, 8).unwrap_err().to_string().contains("0 (first) to 7"));
        assert_eq!(Priority::default().ioprio(), (2 << 13) | 7);
    }

    #[test]
    fn a_session_the_process_does_not_lead_is_left_alone() {
        // The test runner shares the session of whoever started it, as a manual run shares
        // the adb shell's.
        if thread::leads_session() {
            eprintln!("skipped: the test process leads its session (started with setsid)");
            return;
        }
        let before = thread::autogroup_nice();
        let held = Priority::new(19, IoClass::Idle, 7).unwrap().lower_session();
        assert_eq!(thread::autogroup_nice(), before);
        drop(held);
    }

    /// Field 19 of /proc/self/task/TID/stat.
    fn nice_of(tid: i32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        after.split_whitespace().nth(16).unwrap().parse().unwrap()
    }
}
