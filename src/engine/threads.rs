//! The forwarder threads as the engine keeps them: who they are, for what `levee ctl` changes
//! on them from outside.

use std::io;
use std::sync::{Mutex, PoisonError};

use crate::config::SchedPolicy;

/// Kernel thread ids of the running forwarders, 0 for one not (or no longer) running; touched
/// at a forwarder's start and end and by `levee ctl` only.
#[derive(Debug, Default)]
pub struct Threads {
    tids: Mutex<Vec<libc::pid_t>>,
}

impl Threads {
    /// Gives every forwarder thread `policy`, or says which one refused.
    pub fn set_sched_policy(&self, policy: SchedPolicy) -> io::Result<()> {
        let tids = self.tids.lock().unwrap_or_else(PoisonError::into_inner);
        for (index, &tid) in tids.iter().enumerate() {
            // 0 would name the calling thread: skip forwarders that are not running.
            if tid == 0 {
                continue;
            }
            set_sched_policy(tid, policy)
                .map_err(|e| io::Error::new(e.kind(), format!("forwarder {index}: {e}")))?;
        }
        Ok(())
    }

    /// Records the calling thread as forwarder `index`, for [`Self::set_sched_policy`], until
    /// the returned guard is dropped: a thread id that ended may be given to another thread.
    pub(crate) fn register(&self, index: usize) -> Registered<'_> {
        // SAFETY: gettid(2) has no preconditions.
        self.set_tid(index, unsafe { libc::gettid() });
        Registered {
            threads: self,
            index,
        }
    }

    fn set_tid(&self, index: usize, tid: libc::pid_t) {
        let mut tids = self.tids.lock().unwrap_or_else(PoisonError::into_inner);
        if tids.len() <= index {
            tids.resize(index + 1, 0);
        }
        tids[index] = tid;
    }
}

/// A forwarder thread's entry in [`Threads`], cleared on drop.
pub(crate) struct Registered<'a> {
    threads: &'a Threads,
    index: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.threads.set_tid(self.index, 0);
    }
}

/// Gives thread `tid` (0: the calling thread) `policy`. A forwarder gathers every completion that
/// is ready in one turn of its loop, so under `batch` a wakeup waits for the task running on its
/// CPU (often the backend it relays to) to sleep or use up its slice, and one turn then handles
/// what arrived meanwhile; under `normal` each wakeup may preempt that task, and both pay for the
/// extra context switches.
pub(super) fn set_sched_policy(tid: libc::pid_t, policy: SchedPolicy) -> io::Result<()> {
    let raw = match policy {
        SchedPolicy::Batch => libc::SCHED_BATCH,
        SchedPolicy::Normal => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system call on a thread id; `param` outlives the call.
    if unsafe { libc::sched_setscheduler(tid, raw, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
