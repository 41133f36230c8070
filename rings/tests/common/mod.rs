//! Helpers shared by the integration tests: scratch directories, child processes that are this
//! very test binary re-executed with a role in the environment, bounded waits on what a test can
//! observe (a thread asleep on a futex word), and the rule for skipping a test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A directory under /dev/shm removed when dropped.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/dev/shm/levee-rings-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir in /dev/shm");
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process that is killed if the test lets go of it early (a failed assertion), so no
/// test leaves processes behind.
pub struct Proc(Option<Child>);

impl Proc {
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("child present").id()
    }

    fn take(mut self) -> Child {
        self.0.take().expect("child present")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts this test binary again, running only the ignored test `entry`, with `vars` set.
pub fn spawn(entry: &str, vars: &[(&str, String)]) -> Proc {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        entry,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("LEVEE_RINGS_CHILD", "1")
    .stdout(Stdio::null())
    .stdin(Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Proc(Some(cmd.spawn().expect("spawn child test process")))
}

/// Whether this process was started by `spawn` (child entries do nothing otherwise).
pub fn is_child() -> bool {
    std::env::var_os("LEVEE_RINGS_CHILD").is_some()
}

pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child needs {name}"))
}

pub fn var_u64(name: &str) -> u64 {
    var(name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

/// Waits (bounded) for a child to exit and asserts it succeeded.
pub fn join(child: Proc, what: &str) {
    let mut child = child.take();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match child.try_wait().expect("wait for child") {
            Some(status) => {
                assert!(status.success(), "{what} failed: {status}");
                return;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within 120 s");
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Waits (bounded) until `path` exists.
/// Writes `contents` to the file named by the READY variable at once, as a whole: written
/// aside, then renamed, so that a parent that sees the file also sees all of it.
pub fn signal_ready(contents: &[u8]) {
    let ready = var("READY");
    let aside = format!("{ready}.tmp");
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, &ready).unwrap();
}

pub fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kills a child with SIGKILL and reaps it.
pub fn kill9(child: Proc) {
    let mut child = child.take();
    child.kill().expect("SIGKILL child");
    let _ = child.wait();
}

/// The deterministic contents of message `id` of `len` bytes.
pub fn message(id: u64, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    fill(id, &mut m);
    m
}

pub fn fill(id: u64, m: &mut [u8]) {
    let head = id.to_le_bytes();
    for (i, b) in m.iter_mut().enumerate() {
        *b = if i < 8 {
            head[i]
        } else {
            (id as u8).wrapping_mul(31).wrapping_add(i as u8)
        };
    }
}

/// Checks a message's contents and returns its id.
pub fn check(m: &[u8]) -> u64 {
    assert!(m.len() >= 8, "message of {} bytes", m.len());
    let id = u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
    let mut want = vec![0u8; m.len()];
    fill(id, &mut want);
    assert_eq!(m, &want[..], "message {id} corrupted");
    id
}

/// The environment variable that lets a test whose kernel feature is missing pass as skipped.
pub const ALLOW_SKIP: &str = "LEVEE_ALLOW_SKIP";

/// A test cannot run here for `reason` (a missing kernel feature). It fails, so a test run never
/// passes without checking, unless `LEVEE_ALLOW_SKIP=1` is set: then it prints `SKIPPED: reason`
/// to stderr and the caller returns.
pub fn skip(reason: &str) {
    if std::env::var(ALLOW_SKIP).as_deref() == Ok("1") {
        eprintln!("SKIPPED: {reason}");
    } else {
        panic!("{reason}; set {ALLOW_SKIP}=1 to let the tests that need it pass as skipped");
    }
}

/// Waits (bounded) until `ready()` holds, polling an observable state.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 60 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The calling thread's id, for [`sleeps_on`] and [`sleeps`] from another thread.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// The system call thread `tid` of this process is blocked in, with its arguments, from
/// /proc/self/task/TID/syscall: `None` while it runs or when the kernel does not say.
fn blocked_in(tid: i32) -> Option<Vec<String>> {
    let line = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let fields: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    fields.first()?.parse::<i64>().ok()?;
    Some(fields)
}

/// Whether thread `tid` is asleep (state S), from /proc/self/task/TID/stat.
fn asleep(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|stat| {
            let i = stat.rfind(')')?;
            stat[i + 1..].trim_start().chars().next()
        })
        == Some('S')
}

/// Whether thread `tid` of this process sleeps in `futex(2)` on the word at address `word` (a
/// ring's, as [`levee_rings::FutexWait::word`] gives it); where the kernel does not say which
/// system call a thread is in, whether it sleeps at all.
pub fn sleeps_on(tid: i32, word: usize) -> bool {
    if !Path::new(&format!("/proc/self/task/{tid}/syscall")).exists() {
        return asleep(tid);
    }
    blocked_in(tid).is_some_and(|f| {
        f[0] == libc::SYS_futex.to_string() && f.get(1) == Some(&format!("{word:#x}"))
    })
}

/// Whether thread `tid` of this process sleeps in `nanosleep` (`std::thread::sleep`); where the
/// kernel does not say which system call a thread is in, whether it sleeps at all.
pub fn sleeps(tid: i32) -> bool {
    if !Path::new(&format!("/proc/self/task/{tid}/syscall")).exists() {
        return asleep(tid);
    }
    let calls = [libc::SYS_nanosleep, libc::SYS_clock_nanosleep].map(|c| c.to_string());
    blocked_in(tid).is_some_and(|f| calls.contains(&f[0]))
}
