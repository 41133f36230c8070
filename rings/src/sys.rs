//! Thin wrappers over the Linux calls the rings need: shared futexes, open-file-description
//! locks, and the identity of a process (pid, start time, boot id).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
#[cfg(not(loom))]
use std::time::Duration;

use crate::primitive::AtomicU32;

/// Sleeps while `*word == expected`, for at most `timeout`. Shared (not `FUTEX_PRIVATE_FLAG`), so a
/// waker in another process that maps the same file reaches it.
///
/// Returns when woken, when the value differs, on a signal, or at the timeout; callers re-check
/// their condition in every case.
#[cfg(not(loom))]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 in a mapping; the kernel only reads it and the
    // timespec, which outlives the call. Errors (EAGAIN, EINTR, ETIMEDOUT) all mean "re-check".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every waiter on `word`, in any process, whether it waits with `futex(2)` or with an
/// io_uring `FutexWait`.
#[cfg(not(loom))]
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; it neither reads nor writes through it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(loom)]
pub(crate) fn futex_wake_all(_word: &AtomicU32) {}

/// Byte offset of the first lock byte. Locks may lie beyond the end of the file; placing them far
/// out keeps them clear of any data and of any lock another program might take on the contents.
pub(crate) const LOCK_BASE: i64 = 1 << 40;

fn ofd_lock(
    file: &File,
    index: u32,
    kind: libc::c_int,
    cmd: libc::c_int,
) -> io::Result<libc::flock> {
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = LOCK_BASE + i64::from(index);
    fl.l_len = 1;
    fl.l_pid = 0; // required by F_OFD_*
    // SAFETY: fcntl with a valid fd and a pointer to a live flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fl)
    }
}

/// Takes the lock byte `index` for this open file description, without waiting. `Ok(false)`:
/// someone else — a live process, since the kernel drops a dead one's locks — holds it.
pub(crate) fn try_lock(file: &File, index: u32) -> io::Result<bool> {
    match ofd_lock(file, index, libc::F_WRLCK, libc::F_OFD_SETLK) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn unlock(file: &File, index: u32) -> io::Result<()> {
    ofd_lock(file, index, libc::F_UNLCK, libc::F_OFD_SETLK).map(|_| ())
}

/// Whether another open file description holds lock byte `index`.
pub(crate) fn is_locked(file: &File, index: u32) -> io::Result<bool> {
    let fl = ofd_lock(file, index, libc::F_WRLCK, libc::F_OFD_GETLK)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Who a process is, in a way PID reuse cannot fake: pid, start time in clock ticks since boot,
/// and the boot id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), so a reboot is noticed.
    pub boot_id: [u8; 16],
}

impl ProcessId {
    /// This process.
    pub fn current() -> io::Result<ProcessId> {
        let pid = std::process::id();
        Ok(ProcessId {
            pid,
            start_ticks: start_ticks(pid)?,
            boot_id: boot_id()?,
        })
    }

    /// Whether the process this names is still running: same boot, and a process with this pid
    /// and this start time exists.
    pub fn is_alive(&self) -> bool {
        match boot_id() {
            Ok(b) if b == self.boot_id => {}
            _ => return false,
        }
        matches!(start_ticks(self.pid), Ok(t) if t == self.start_ticks)
    }
}

fn start_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc stat"))?;
    // `rest` starts at field 3 (state); field 22 (starttime) is the 20th from there.
    rest.split_ascii_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no start time in /proc stat"))
}

fn boot_id() -> io::Result<[u8; 16]> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let hex: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    let mut id = [0u8; 16];
    if hex.len() != 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed boot_id",
        ));
    }
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| io::ErrorKind::InvalidData)?;
        id[i] = u8::from_str_radix(s, 16).map_err(|_| io::ErrorKind::InvalidData)?;
    }
    Ok(id)
}

#[cfg(not(loom))]
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
#[cfg(not(loom))]
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

#[cfg(not(loom))]
fn membarrier(cmd: libc::c_int) -> bool {
    // SAFETY: membarrier takes no pointers; a failure is reported through the return value.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0u32, 0i32) == 0 }
}

/// Registers this process so that another process's [`membarrier_global`] reaches its threads.
#[cfg(not(loom))]
pub(crate) fn membarrier_register() -> bool {
    membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)
}

/// A full memory barrier on every CPU running a thread of a registered process.
#[cfg(not(loom))]
pub(crate) fn membarrier_global() -> bool {
    membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)
}
