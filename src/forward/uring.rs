//! io_uring setup: probe what the kernel offers, then build each forwarder's ring.
//!
//! Probing happens once, before any forwarder starts, so an operator whose kernel lacks
//! io_uring (too old, disabled by `kernel.io_uring_disabled`, blocked by seccomp) gets one
//! clear message and a non-zero exit instead of a forwarder dying later.

use std::fmt;
use std::io;

use io_uring::{IoUring, Probe, opcode};

/// What the probe found; decides the setup flags every forwarder uses.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// SINGLE_ISSUER with DEFER_TASKRUN: completions are processed only when the forwarder asks,
    /// in its own thread, which saves interrupts and cross-CPU task work.
    pub defer_taskrun: bool,
    /// `FutexWait` (Linux 6.7): the overflow tier sleeps on shared futex words in the ring.
    /// Without it, waits there become a 10 ms poll.
    pub futex: bool,
    /// Receive bundles (`IORING_FEAT_RECVSEND_BUNDLE`, Linux 6.10): one completion fills
    /// several buffers. Without them, each receive completion takes one buffer.
    pub bundles: bool,
    /// `IORING_OP_SPLICE` (Linux 5.7): bulk directions move through a pipe. Without it, they
    /// stay on buffers.
    pub splice: bool,
}

/// io_uring is missing or lacks an operation levee relies on.
#[derive(Debug)]
pub enum ProbeError {
    /// `io_uring_setup` itself failed.
    Unavailable(io::Error),
    /// The kernel has io_uring but not these operations.
    MissingOps(Vec<&'static str>),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(e) => {
                let hint = match e.raw_os_error() {
                    Some(libc::ENOSYS) => "the kernel was built without io_uring",
                    Some(libc::EPERM) => {
                        "io_uring is disabled: check sysctl kernel.io_uring_disabled (0 enables it) \
                         and any seccomp profile of the container"
                    }
                    Some(libc::ENOMEM) => "locked memory is exhausted: raise RLIMIT_MEMLOCK",
                    _ => "levee needs io_uring (Linux 6.0 or later)",
                };
                write!(f, "io_uring is unavailable ({e}): {hint}")
            }
            Self::MissingOps(ops) => write!(
                f,
                "this kernel's io_uring lacks {}: levee needs Linux 6.0 or later",
                ops.join(", ")
            ),
        }
    }
}

impl std::error::Error for ProbeError {}

/// Operations the data path uses; each must be supported.
const REQUIRED: &[(u8, &str)] = &[
    (opcode::AcceptMulti::CODE, "accept"),
    (opcode::RecvMulti::CODE, "recv"),
    (opcode::Send::CODE, "send"),
    (opcode::SendMsg::CODE, "sendmsg"),
    (opcode::Connect::CODE, "connect"),
    (opcode::LinkTimeout::CODE, "link timeout"),
    (opcode::Timeout::CODE, "timeout"),
    (opcode::AsyncCancel2::CODE, "async cancel"),
    (opcode::Close::CODE, "close"),
    (opcode::PollAdd::CODE, "poll"),
];

/// Checks that io_uring works here and has every operation levee needs.
///
/// Runs on a short-lived thread of its own: tearing a ring down queues task work to the thread
/// that created it, which interrupts that thread's next blocking socket call that has a timeout
/// (EINTR). The caller's thread is left alone.
pub fn probe() -> Result<Capabilities, ProbeError> {
    std::thread::Builder::new()
        .name("levee-probe".into())
        .spawn(probe_here)
        .map_err(ProbeError::Unavailable)?
        .join()
        .unwrap_or_else(|_| {
            Err(ProbeError::Unavailable(io::Error::other(
                "the probe panicked",
            )))
        })
}

fn probe_here() -> Result<Capabilities, ProbeError> {
    let ring = IoUring::new(8).map_err(ProbeError::Unavailable)?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(ProbeError::Unavailable)?;
    let missing: Vec<_> = REQUIRED
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, n)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(ProbeError::MissingOps(missing));
    }
    let futex = probe.is_supported(opcode::FutexWait::CODE);
    let bundles = ring.params().is_feature_recvsend_bundle();
    let splice = probe.is_supported(opcode::Splice::CODE);
    drop(ring);
    let defer_taskrun = IoUring::<io_uring::squeue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
        .is_ok();
    Ok(Capabilities {
        defer_taskrun,
        futex,
        bundles,
        splice,
    })
}

/// Builds a forwarder's ring. Must run on the thread that will submit to it (SINGLE_ISSUER).
pub fn build(caps: Capabilities, sq_entries: u32) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    // The completion queue is sized for bursts of multishot completions from many connections;
    // the kernel also keeps overflowed completions (FEAT_NODROP) rather than losing them.
    b.setup_cqsize(sq_entries.saturating_mul(4))
        .setup_submit_all();
    if caps.defer_taskrun {
        b.setup_single_issuer().setup_defer_taskrun();
    } else {
        b.setup_coop_taskrun();
    }
    let ring = b.build(sq_entries)?;
    // io_uring runs every splice on an io-wq thread, and would start as many as splices wait
    // (up to RLIMIT_NPROC). They never block (see `splice`), so a few per forwarder keep up;
    // a kernel without the call (before 5.15) keeps its own limit.
    let _ = ring
        .submitter()
        .register_iowq_max_workers(&mut [0, IOWQ_UNBOUND_MAX]);
    Ok(ring)
}

/// Most io-wq threads a forwarder's ring runs at once for unbound work (its splices).
const IOWQ_UNBOUND_MAX: u32 = 8;
