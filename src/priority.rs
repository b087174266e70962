//! How hard the agent's work may press on the phone it runs on: a CPU nice value and an I/O
//! scheduling class and level (`ioprio_set`), set on the thread that is about to do a task's
//! work. Linux gives both to every thread that thread starts, so the walk, the pipeline's
//! stages, zstd's workers and the object store's runtime inherit them. The default, nice 10
//! and best-effort level 7, yields to the phone's user; `--foreground` leaves the thread as it
//! is (a manual run that should go flat out).
//!
//! It never changes a thread other than the calling one: the daemon's HTTP server keeps its
//! priority, because tasks run on threads of their own.

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

    /// Field 19 of /proc/self/task/TID/stat.
    fn nice_of(tid: i32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        after.split_whitespace().nth(16).unwrap().parse().unwrap()
    }
}
