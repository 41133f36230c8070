//! levee-rings across processes against rtrb and crossbeam's `ArrayQueue` between threads, with
//! 64-byte records, in one criterion binary:
//!
//! - `spsc_throughput`: levee-rings SPSC (parent produces, a child process consumes) vs rtrb
//!   `RingBuffer<[u8; 64]>` (two threads);
//! - `mpmc_throughput`: levee-rings MPMC (parent produces, a child process claims and acks) vs
//!   crossbeam `ArrayQueue<[u8; 64]>` (two threads);
//! - `round_trip`: ping-pong of one record there and back, for all four.
//!
//! The measuring side is pinned to CPU 0 and the other side (child process or thread) to CPU 1,
//! when the machine has two CPUs. Both sides poll (no parking) for every contender, so the rings
//! are compared, not waiting strategies. The child is this binary re-executed with
//! `LEVEE_RINGS_BENCH_CHILD` set; it dies with its parent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use crossbeam_queue::ArrayQueue;
use levee_rings::mpmc::{self, Queue};
use levee_rings::spsc;

type Msg = [u8; 64];

const CHILD_ENV: &str = "LEVEE_RINGS_BENCH_CHILD";
/// Slots of every queue (and 64 KiB of data for the SPSC byte ring: 910 records of 72 bytes).
const SLOTS: usize = 1024;
const SPSC_BYTES: usize = 64 * 1024;

/// Pins the calling thread to `cpu`, when the machine has two CPUs online. Threads and children
/// inherit their creator's mask, so this names CPUs directly rather than picking from the mask.
fn pin(cpu: usize) {
    if std::env::var_os("LEVEE_RINGS_BENCH_NO_PIN").is_some() {
        return;
    }
    // SAFETY: sysconf has no memory effects.
    if unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } < 2 {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity get a valid
    // pointer to it and its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn msg(i: u64) -> Msg {
    let mut m = [0u8; 64];
    m[..8].copy_from_slice(&i.to_le_bytes());
    m
}

// ---- the child process ----

fn child_main(role: &str) {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    pin(1);
    let dir = PathBuf::from(std::env::var("LEVEE_RINGS_BENCH_DIR").expect("bench dir"));
    match role {
        "spsc-sink" => spsc_sink(&dir),
        "spsc-echo" => spsc_echo(&dir),
        "mpmc-sink" => mpmc_sink(&dir),
        "mpmc-echo" => mpmc_echo(&dir),
        _ => panic!("unknown bench child role {role}"),
    }
}

/// Reads a batch count `n` (an 8-byte record), pops `n` records, reports `n` back; 0 quits.
fn spsc_sink(dir: &Path) {
    let wait = Duration::from_secs(10);
    let mut data = spsc::Consumer::open_with(dir.join("data"), wait).expect("data ring");
    let mut reply = spsc::Producer::open_with(dir.join("reply"), wait).expect("reply ring");
    loop {
        let n = loop {
            if let Some(r) = data.peek().expect("data ring") {
                let n = u64::from_le_bytes(r[..8].try_into().expect("count"));
                r.release();
                break n;
            }
            std::hint::spin_loop();
        };
        if n == 0 {
            return;
        }
        let mut got = 0;
        while got < n {
            if let Some(r) = data.peek().expect("data ring") {
                std::hint::black_box(r[0]);
                r.release();
                got += 1;
            } else {
                std::hint::spin_loop();
            }
        }
        while reply.push(&n.to_le_bytes()).is_err() {
            std::hint::spin_loop();
        }
    }
}

/// Sends every record straight back; an empty record quits.
fn spsc_echo(dir: &Path) {
    let wait = Duration::from_secs(10);
    let mut req = spsc::Consumer::open_with(dir.join("data"), wait).expect("request ring");
    let mut reply = spsc::Producer::open_with(dir.join("reply"), wait).expect("reply ring");
    let mut buf = Vec::with_capacity(64);
    loop {
        if !req.pop(&mut buf).expect("request ring") {
            std::hint::spin_loop();
            continue;
        }
        if buf.is_empty() {
            return;
        }
        while reply.push(&buf).is_err() {
            std::hint::spin_loop();
        }
    }
}

fn mpmc_sink(dir: &Path) {
    let wait = Duration::from_secs(10);
    let q = Queue::open_with(dir.join("data"), wait).expect("queue");
    let mut c = q.consumer().expect("consumer");
    let mut reply = spsc::Producer::open_with(dir.join("reply"), wait).expect("reply ring");
    loop {
        let n = loop {
            if let Some(claim) = c.claim().expect("queue") {
                let n = u64::from_le_bytes(claim[..8].try_into().expect("count"));
                claim.ack();
                break n;
            }
            std::hint::spin_loop();
        };
        if n == 0 {
            return;
        }
        let mut got = 0;
        while got < n {
            if let Some(claim) = c.claim().expect("queue") {
                std::hint::black_box(claim[0]);
                claim.ack();
                got += 1;
            } else {
                std::hint::spin_loop();
            }
        }
        while reply.push(&n.to_le_bytes()).is_err() {
            std::hint::spin_loop();
        }
    }
}

fn mpmc_echo(dir: &Path) {
    let wait = Duration::from_secs(10);
    let req = Queue::open_with(dir.join("data"), wait).expect("request queue");
    let rep = Queue::open_with(dir.join("reply"), wait).expect("reply queue");
    let mut c = req.consumer().expect("consumer");
    let mut p = rep.producer().expect("producer");
    let mut buf = [0u8; 64];
    loop {
        let Some(claim) = c.claim().expect("request queue") else {
            std::hint::spin_loop();
            continue;
        };
        let len = claim.len();
        buf[..len].copy_from_slice(&claim);
        claim.ack();
        if len == 0 {
            return;
        }
        while p.push(&buf[..len]).is_err() {
            std::hint::spin_loop();
        }
    }
}

// ---- the parent's side of the cross-process pairs ----

/// A scratch directory under /dev/shm and the child process working in it.
struct Peer {
    dir: PathBuf,
    child: Child,
}

impl Peer {
    fn start(role: &str) -> Peer {
        let dir = PathBuf::from(format!(
            "/dev/shm/levee-rings-bench-{}-{role}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench dir");
        let child = Command::new(std::env::current_exe().expect("bench exe"))
            .env(CHILD_ENV, role)
            .env("LEVEE_RINGS_BENCH_DIR", &dir)
            .spawn()
            .expect("spawn bench child");
        Peer { dir, child }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The child quits on its own after the quit record; this is the backstop.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spin_push_spsc(p: &mut spsc::Producer, rec: &[u8]) {
    while p.push(rec).is_err() {
        std::hint::spin_loop();
    }
}

fn spin_pop_spsc(c: &mut spsc::Consumer, out: &mut Vec<u8>) {
    while !c.pop(out).expect("ring") {
        std::hint::spin_loop();
    }
}

fn spin_push_mpmc(p: &mut mpmc::Producer, rec: &[u8]) {
    while p.push(rec).is_err() {
        std::hint::spin_loop();
    }
}

fn queue_config() -> mpmc::Config {
    mpmc::Config {
        capacity: SLOTS,
        max_record: 64,
        dead_letter_capacity: 2,
        max_attempts: 3,
        max_handles: 4,
    }
}

// ---- the thread pairs ----

/// A peer thread pinned to CPU 1, stopped by the closure's own protocol.
fn thread_peer(f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::spawn(move || {
        pin(1);
        f()
    })
}

fn spsc_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("spsc_throughput");
    g.throughput(Throughput::Elements(1));
    pin(0);

    {
        let peer = Peer::start("spsc-sink");
        let mut data = spsc::Producer::create(peer.path("data"), SPSC_BYTES).expect("data ring");
        let mut reply = spsc::Consumer::create(peer.path("reply"), 4096).expect("reply ring");
        let m = msg(1);
        let mut out = Vec::new();
        g.bench_function("levee_rings_processes", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                spin_push_spsc(&mut data, &iters.to_le_bytes());
                for _ in 0..iters {
                    spin_push_spsc(&mut data, &m);
                }
                spin_pop_spsc(&mut reply, &mut out);
                start.elapsed()
            })
        });
        spin_push_spsc(&mut data, &0u64.to_le_bytes());
    }

    {
        let (mut data, mut data_rx) = rtrb::RingBuffer::<Msg>::new(SLOTS);
        let (mut ctl, mut ctl_rx) = rtrb::RingBuffer::<u64>::new(4);
        let (mut reply_tx, mut reply) = rtrb::RingBuffer::<u64>::new(4);
        let peer = thread_peer(move || {
            loop {
                let n = loop {
                    if let Ok(n) = ctl_rx.pop() {
                        break n;
                    }
                    std::hint::spin_loop();
                };
                if n == 0 {
                    return;
                }
                let mut got = 0;
                while got < n {
                    if let Ok(m) = data_rx.pop() {
                        std::hint::black_box(m[0]);
                        got += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
                while reply_tx.push(n).is_err() {
                    std::hint::spin_loop();
                }
            }
        });
        let m = msg(1);
        g.bench_function("rtrb_threads", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                while ctl.push(iters).is_err() {}
                for _ in 0..iters {
                    while data.push(m).is_err() {
                        std::hint::spin_loop();
                    }
                }
                while reply.pop().is_err() {
                    std::hint::spin_loop();
                }
                start.elapsed()
            })
        });
        while ctl.push(0).is_err() {}
        peer.join().expect("rtrb peer");
    }
    g.finish();
}

fn mpmc_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("mpmc_throughput");
    g.throughput(Throughput::Elements(1));
    pin(0);

    {
        let peer = Peer::start("mpmc-sink");
        let q = Queue::create(peer.path("data"), &queue_config()).expect("queue");
        let mut p = q.producer().expect("producer");
        let mut reply = spsc::Consumer::create(peer.path("reply"), 4096).expect("reply ring");
        let m = msg(1);
        let mut out = Vec::new();
        g.bench_function("levee_rings_processes", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                spin_push_mpmc(&mut p, &iters.to_le_bytes());
                for _ in 0..iters {
                    spin_push_mpmc(&mut p, &m);
                }
                spin_pop_spsc(&mut reply, &mut out);
                start.elapsed()
            })
        });
        spin_push_mpmc(&mut p, &0u64.to_le_bytes());
    }

    {
        let data = Arc::new(ArrayQueue::<Msg>::new(SLOTS));
        let ctl = Arc::new(ArrayQueue::<u64>::new(4));
        let reply = Arc::new(ArrayQueue::<u64>::new(4));
        let (d, cq, r) = (data.clone(), ctl.clone(), reply.clone());
        let peer = thread_peer(move || {
            loop {
                let n = loop {
                    if let Some(n) = cq.pop() {
                        break n;
                    }
                    std::hint::spin_loop();
                };
                if n == 0 {
                    return;
                }
                let mut got = 0;
                while got < n {
                    if let Some(m) = d.pop() {
                        std::hint::black_box(m[0]);
                        got += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
                while r.push(n).is_err() {
                    std::hint::spin_loop();
                }
            }
        });
        let m = msg(1);
        g.bench_function("crossbeam_array_queue_threads", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                while ctl.push(iters).is_err() {}
                for _ in 0..iters {
                    while data.push(m).is_err() {
                        std::hint::spin_loop();
                    }
                }
                while reply.pop().is_none() {
                    std::hint::spin_loop();
                }
                start.elapsed()
            })
        });
        while ctl.push(0).is_err() {}
        peer.join().expect("crossbeam peer");
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    pin(0);

    {
        let peer = Peer::start("spsc-echo");
        let mut req = spsc::Producer::create(peer.path("data"), SPSC_BYTES).expect("ring");
        let mut rep = spsc::Consumer::create(peer.path("reply"), SPSC_BYTES).expect("ring");
        let m = msg(1);
        let mut out = Vec::with_capacity(64);
        g.bench_function("levee_rings_spsc_processes", |b| {
            b.iter(|| {
                spin_push_spsc(&mut req, &m);
                spin_pop_spsc(&mut rep, &mut out);
            })
        });
        spin_push_spsc(&mut req, &[]);
    }

    {
        let dir = PathBuf::from(format!(
            "/dev/shm/levee-rings-bench-{}-t",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench dir");
        let (mut req, mut req_rx) = spsc::create(dir.join("a"), SPSC_BYTES).expect("ring");
        let (mut rep_tx, mut rep) = spsc::create(dir.join("b"), SPSC_BYTES).expect("ring");
        let peer = thread_peer(move || {
            let mut buf = Vec::with_capacity(64);
            loop {
                if !req_rx.pop(&mut buf).expect("ring") {
                    std::hint::spin_loop();
                    continue;
                }
                if buf.is_empty() {
                    return;
                }
                spin_push_spsc(&mut rep_tx, &buf);
            }
        });
        let m = msg(1);
        let mut out = Vec::with_capacity(64);
        g.bench_function("levee_rings_spsc_threads", |b| {
            b.iter(|| {
                spin_push_spsc(&mut req, &m);
                spin_pop_spsc(&mut rep, &mut out);
            })
        });
        spin_push_spsc(&mut req, &[]);
        peer.join().expect("levee peer");
        let _ = std::fs::remove_dir_all(&dir);
    }

    {
        let (mut req, mut req_rx) = rtrb::RingBuffer::<Msg>::new(SLOTS);
        let (mut rep_tx, mut rep) = rtrb::RingBuffer::<Msg>::new(SLOTS);
        let peer = thread_peer(move || {
            loop {
                let Ok(m) = req_rx.pop() else {
                    std::hint::spin_loop();
                    continue;
                };
                if m[8] == 0xff {
                    return;
                }
                while rep_tx.push(m).is_err() {
                    std::hint::spin_loop();
                }
            }
        });
        let m = msg(1);
        g.bench_function("rtrb_threads", |b| {
            b.iter(|| {
                while req.push(m).is_err() {}
                loop {
                    if let Ok(r) = rep.pop() {
                        std::hint::black_box(r);
                        break;
                    }
                    std::hint::spin_loop();
                }
            })
        });
        let mut quit = msg(0);
        quit[8] = 0xff;
        while req.push(quit).is_err() {}
        peer.join().expect("rtrb peer");
    }

    {
        let peer = Peer::start("mpmc-echo");
        let req = Queue::create(peer.path("data"), &queue_config()).expect("queue");
        let rep = Queue::create(peer.path("reply"), &queue_config()).expect("queue");
        let mut p = req.producer().expect("producer");
        let mut c = rep.consumer().expect("consumer");
        let m = msg(1);
        g.bench_function("levee_rings_mpmc_processes", |b| {
            b.iter(|| {
                spin_push_mpmc(&mut p, &m);
                loop {
                    if let Some(claim) = c.claim().expect("queue") {
                        std::hint::black_box(claim[0]);
                        claim.ack();
                        break;
                    }
                    std::hint::spin_loop();
                }
            })
        });
        spin_push_mpmc(&mut p, &[]);
    }

    {
        let req = Arc::new(ArrayQueue::<Msg>::new(SLOTS));
        let rep = Arc::new(ArrayQueue::<Msg>::new(SLOTS));
        let (rq, rp) = (req.clone(), rep.clone());
        let peer = thread_peer(move || {
            loop {
                let Some(m) = rq.pop() else {
                    std::hint::spin_loop();
                    continue;
                };
                if m[8] == 0xff {
                    return;
                }
                while rp.push(m).is_err() {
                    std::hint::spin_loop();
                }
            }
        });
        let m = msg(1);
        g.bench_function("crossbeam_array_queue_threads", |b| {
            b.iter(|| {
                while req.push(m).is_err() {}
                loop {
                    if let Some(r) = rep.pop() {
                        std::hint::black_box(r);
                        break;
                    }
                    std::hint::spin_loop();
                }
            })
        });
        let mut quit = msg(0);
        quit[8] = 0xff;
        while req.push(quit).is_err() {}
        peer.join().expect("crossbeam peer");
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = spsc_throughput, mpmc_throughput, round_trip
}

fn main() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        child_main(&role);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
