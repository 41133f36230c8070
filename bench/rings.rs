//! levee-rings against rtrb and crossbeam's `ArrayQueue`, with 64-byte records, in one criterion
//! binary. levee-rings runs twice in each group: across processes (what levee does: a forwarder
//! and a worker process) and between threads, as the peers run, so that the process boundary's
//! cost is measured apart from the rings':
//!
//! - `spsc_throughput`: levee-rings SPSC (parent produces, a child process or a thread consumes)
//!   vs rtrb `RingBuffer<[u8; 64]>` (two threads);
//! - `mpmc_throughput`: levee-rings MPMC (parent produces, a child process or a thread claims and
//!   acks) vs crossbeam `ArrayQueue<[u8; 64]>` (two threads);
//! - `round_trip`: ping-pong of one record there and back, for all of them.
//!
//! The measuring side is pinned to CPU 0 and the other side (child process or thread) to CPU 1,
//! when the machine has two CPUs. Both sides poll (no parking) for every contender, so the rings
//! are compared, not waiting strategies. The consuming side runs the same function whether it is
//! a thread or the child; the child is this binary re-executed with `LEVEE_RINGS_BENCH_CHILD`
//! set, and dies with its parent.
//!
//! Rounds: `scripts/bench rings` runs this binary once per round with `LEVEE_RINGS_BENCH_ROUND`
//! set to the round's number (from 1); each group's contenders start at a different one each
//! round (rotated by the round's number), so that none always runs first, or always right after
//! the same other one.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group};
use crossbeam_queue::ArrayQueue;
use levee_rings::mpmc::{self, Queue};
use levee_rings::spsc;

type Msg = [u8; 64];

const CHILD_ENV: &str = "LEVEE_RINGS_BENCH_CHILD";
const ROUND_ENV: &str = "LEVEE_RINGS_BENCH_ROUND";
/// Slots of every queue (and 64 KiB of data for the SPSC byte ring: 910 records of 72 bytes).
const SLOTS: usize = 1024;
const SPSC_BYTES: usize = 64 * 1024;
/// Data bytes of a ring that carries only 8-byte batch counts back.
const REPLY_BYTES: usize = 4096;

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

/// One contender of a group: registers its benchmark in the group, with whatever peer it needs
/// started before and stopped after.
type Contender = fn(&mut BenchmarkGroup<'_, WallTime>);

/// Runs `contenders` in order, starting at the round's own one (`LEVEE_RINGS_BENCH_ROUND`; the
/// first when it is not set).
fn run_rotated(g: &mut BenchmarkGroup<'_, WallTime>, contenders: &[Contender]) {
    let round = std::env::var(ROUND_ENV)
        .ok()
        .and_then(|r| r.parse::<usize>().ok())
        .unwrap_or(1);
    let k = round.saturating_sub(1) % contenders.len();
    for f in contenders[k..].iter().chain(&contenders[..k]) {
        f(&mut *g);
    }
}

// ---- the consuming side: the same code in a child process or a thread ----

fn child_main(role: &str) {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    pin(1);
    let dir = PathBuf::from(std::env::var("LEVEE_RINGS_BENCH_DIR").expect("bench dir"));
    let wait = Duration::from_secs(10);
    let reply = || spsc::Producer::open_with(dir.join("reply"), wait).expect("reply ring");
    match role {
        "spsc-sink" => spsc_sink(
            spsc::Consumer::open_with(dir.join("data"), wait).expect("data ring"),
            reply(),
        ),
        "spsc-echo" => spsc_echo(
            spsc::Consumer::open_with(dir.join("data"), wait).expect("request ring"),
            reply(),
        ),
        "mpmc-sink" => {
            let q = Queue::open_with(dir.join("data"), wait).expect("queue");
            mpmc_sink(q.consumer().expect("consumer"), reply())
        }
        "mpmc-echo" => {
            let req = Queue::open_with(dir.join("data"), wait).expect("request queue");
            let rep = Queue::open_with(dir.join("reply"), wait).expect("reply queue");
            mpmc_echo(
                req.consumer().expect("consumer"),
                rep.producer().expect("producer"),
            )
        }
        _ => panic!("unknown bench child role {role}"),
    }
}

/// Reads a batch count `n` (an 8-byte record), pops `n` records, reports `n` back; 0 quits.
fn spsc_sink(mut data: spsc::Consumer, mut reply: spsc::Producer) {
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
        spin_push_spsc(&mut reply, &n.to_le_bytes());
    }
}

/// Sends every record straight back; an empty record quits.
fn spsc_echo(mut req: spsc::Consumer, mut reply: spsc::Producer) {
    let mut buf = Vec::with_capacity(64);
    loop {
        if !req.pop(&mut buf).expect("request ring") {
            std::hint::spin_loop();
            continue;
        }
        if buf.is_empty() {
            return;
        }
        spin_push_spsc(&mut reply, &buf);
    }
}

fn mpmc_sink(mut c: mpmc::Consumer, mut reply: spsc::Producer) {
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
        spin_push_spsc(&mut reply, &n.to_le_bytes());
    }
}

fn mpmc_echo(mut c: mpmc::Consumer, mut p: mpmc::Producer) {
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
        spin_push_mpmc(&mut p, &buf[..len]);
    }
}

// ---- where the segments live, and the other side's process or thread ----

/// A scratch directory under /dev/shm for one contender's segments, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = PathBuf::from(format!(
            "/dev/shm/levee-rings-bench-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The child process working in a scratch directory.
struct Peer {
    child: Child,
    // Dropped after the child has gone (fields drop in order after `drop`).
    dir: Scratch,
}

impl Peer {
    fn start(role: &str) -> Peer {
        let dir = Scratch::new(role);
        let child = Command::new(std::env::current_exe().expect("bench exe"))
            .env(CHILD_ENV, role)
            .env("LEVEE_RINGS_BENCH_DIR", &dir.0)
            .spawn()
            .expect("spawn bench child");
        Peer { child, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
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
    }
}

/// A peer thread pinned to CPU 1, stopped by the closure's own protocol.
fn thread_peer(f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::spawn(move || {
        pin(1);
        f()
    })
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

// ---- spsc_throughput ----

/// The measuring side of levee-rings throughput, whatever runs the sink: `push` sends a batch
/// count, the batch, then the sink's reply comes back on `reply`.
fn measure_throughput(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut push: impl FnMut(&[u8]),
    reply: &mut spsc::Consumer,
) {
    let m = msg(1);
    let mut out = Vec::new();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            push(&iters.to_le_bytes());
            for _ in 0..iters {
                push(&m);
            }
            spin_pop_spsc(reply, &mut out);
            start.elapsed()
        })
    });
    push(&0u64.to_le_bytes());
}

fn spsc_throughput_levee_processes(g: &mut BenchmarkGroup<'_, WallTime>) {
    let peer = Peer::start("spsc-sink");
    let mut data = spsc::Producer::create(peer.path("data"), SPSC_BYTES).expect("data ring");
    let mut reply = spsc::Consumer::create(peer.path("reply"), REPLY_BYTES).expect("reply ring");
    measure_throughput(
        g,
        "levee_rings_processes",
        |r| spin_push_spsc(&mut data, r),
        &mut reply,
    );
}

fn spsc_throughput_levee_threads(g: &mut BenchmarkGroup<'_, WallTime>) {
    let dir = Scratch::new("spsc-sink-t");
    let (mut data, data_rx) = spsc::create(dir.path("data"), SPSC_BYTES).expect("data ring");
    let (reply_tx, mut reply) = spsc::create(dir.path("reply"), REPLY_BYTES).expect("reply ring");
    let peer = thread_peer(move || spsc_sink(data_rx, reply_tx));
    measure_throughput(
        g,
        "levee_rings_threads",
        |r| spin_push_spsc(&mut data, r),
        &mut reply,
    );
    peer.join().expect("levee-rings peer");
}

fn spsc_throughput_rtrb(g: &mut BenchmarkGroup<'_, WallTime>) {
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

fn spsc_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("spsc_throughput");
    g.throughput(Throughput::Elements(1));
    pin(0);
    run_rotated(
        &mut g,
        &[
            spsc_throughput_levee_processes,
            spsc_throughput_levee_threads,
            spsc_throughput_rtrb,
        ],
    );
    g.finish();
}

// ---- mpmc_throughput ----

fn mpmc_throughput_levee_processes(g: &mut BenchmarkGroup<'_, WallTime>) {
    let peer = Peer::start("mpmc-sink");
    let q = Queue::create(peer.path("data"), &queue_config()).expect("queue");
    let mut p = q.producer().expect("producer");
    let mut reply = spsc::Consumer::create(peer.path("reply"), REPLY_BYTES).expect("reply ring");
    measure_throughput(
        g,
        "levee_rings_processes",
        |r| spin_push_mpmc(&mut p, r),
        &mut reply,
    );
}

fn mpmc_throughput_levee_threads(g: &mut BenchmarkGroup<'_, WallTime>) {
    let dir = Scratch::new("mpmc-sink-t");
    let q = Queue::create(dir.path("data"), &queue_config()).expect("queue");
    let mut p = q.producer().expect("producer");
    let consumer = q.consumer().expect("consumer");
    let (reply_tx, mut reply) = spsc::create(dir.path("reply"), REPLY_BYTES).expect("reply ring");
    let peer = thread_peer(move || mpmc_sink(consumer, reply_tx));
    measure_throughput(
        g,
        "levee_rings_threads",
        |r| spin_push_mpmc(&mut p, r),
        &mut reply,
    );
    peer.join().expect("levee-rings peer");
}

fn mpmc_throughput_crossbeam(g: &mut BenchmarkGroup<'_, WallTime>) {
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

fn mpmc_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("mpmc_throughput");
    g.throughput(Throughput::Elements(1));
    pin(0);
    run_rotated(
        &mut g,
        &[
            mpmc_throughput_levee_processes,
            mpmc_throughput_levee_threads,
            mpmc_throughput_crossbeam,
        ],
    );
    g.finish();
}

// ---- round_trip ----

fn measure_spsc_round_trip(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    req: &mut spsc::Producer,
    rep: &mut spsc::Consumer,
) {
    let m = msg(1);
    let mut out = Vec::with_capacity(64);
    g.bench_function(name, |b| {
        b.iter(|| {
            spin_push_spsc(req, &m);
            spin_pop_spsc(rep, &mut out);
        })
    });
    spin_push_spsc(req, &[]);
}

fn measure_mpmc_round_trip(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    p: &mut mpmc::Producer,
    c: &mut mpmc::Consumer,
) {
    let m = msg(1);
    g.bench_function(name, |b| {
        b.iter(|| {
            spin_push_mpmc(p, &m);
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
    spin_push_mpmc(p, &[]);
}

fn round_trip_levee_spsc_processes(g: &mut BenchmarkGroup<'_, WallTime>) {
    let peer = Peer::start("spsc-echo");
    let mut req = spsc::Producer::create(peer.path("data"), SPSC_BYTES).expect("ring");
    let mut rep = spsc::Consumer::create(peer.path("reply"), SPSC_BYTES).expect("ring");
    measure_spsc_round_trip(g, "levee_rings_spsc_processes", &mut req, &mut rep);
}

fn round_trip_levee_spsc_threads(g: &mut BenchmarkGroup<'_, WallTime>) {
    let dir = Scratch::new("spsc-echo-t");
    let (mut req, req_rx) = spsc::create(dir.path("data"), SPSC_BYTES).expect("ring");
    let (rep_tx, mut rep) = spsc::create(dir.path("reply"), SPSC_BYTES).expect("ring");
    let peer = thread_peer(move || spsc_echo(req_rx, rep_tx));
    measure_spsc_round_trip(g, "levee_rings_spsc_threads", &mut req, &mut rep);
    peer.join().expect("levee-rings peer");
}

fn round_trip_rtrb(g: &mut BenchmarkGroup<'_, WallTime>) {
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

fn round_trip_levee_mpmc_processes(g: &mut BenchmarkGroup<'_, WallTime>) {
    let peer = Peer::start("mpmc-echo");
    let req = Queue::create(peer.path("data"), &queue_config()).expect("queue");
    let rep = Queue::create(peer.path("reply"), &queue_config()).expect("queue");
    let mut p = req.producer().expect("producer");
    let mut c = rep.consumer().expect("consumer");
    measure_mpmc_round_trip(g, "levee_rings_mpmc_processes", &mut p, &mut c);
}

fn round_trip_levee_mpmc_threads(g: &mut BenchmarkGroup<'_, WallTime>) {
    let dir = Scratch::new("mpmc-echo-t");
    let req = Queue::create(dir.path("data"), &queue_config()).expect("queue");
    let rep = Queue::create(dir.path("reply"), &queue_config()).expect("queue");
    let mut p = req.producer().expect("producer");
    let mut c = rep.consumer().expect("consumer");
    let (echo_in, echo_out) = (
        req.consumer().expect("consumer"),
        rep.producer().expect("producer"),
    );
    let peer = thread_peer(move || mpmc_echo(echo_in, echo_out));
    measure_mpmc_round_trip(g, "levee_rings_mpmc_threads", &mut p, &mut c);
    peer.join().expect("levee-rings peer");
}

fn round_trip_crossbeam(g: &mut BenchmarkGroup<'_, WallTime>) {
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

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    pin(0);
    run_rotated(
        &mut g,
        &[
            round_trip_levee_spsc_processes,
            round_trip_levee_spsc_threads,
            round_trip_rtrb,
            round_trip_levee_mpmc_processes,
            round_trip_levee_mpmc_threads,
            round_trip_crossbeam,
        ],
    );
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
