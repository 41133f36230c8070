//! Shared pieces of the integration tests: real backends on loopback and a running engine.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use levee::config::{
    BackendConfig, Balance, Config, CoreSet, CtlConfig, EngineConfig, HashKey, ListenerConfig,
    LogConfig, OverflowConfig, PoolConfig, SchedPolicy, StatsConfig,
};
use levee::engine::Engine;

/// Generous bound on every blocking socket call in the tests, so a bug fails a test instead of
/// hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        cores: CoreSet::List(vec![0]),
        ring_entries: 1024,
        buffer_size: 16 * 1024,
        buffers: 1024,
        recv_bundle: 1,
        send_batch: 8,
        splice_after: 256 * 1024,
        splice_pipes: 256,
        splice_pipe_size: 256 * 1024,
        max_conns: 4096,
        backlog: 1024,
        // Generous: a test machine under load may retransmit a SYN (1 s, then 3 s).
        connect_timeout: Duration::from_secs(10),
        connect_retries: 2,
        idle_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(2),
        sched_policy: SchedPolicy::Batch,
        user: None,
        group: None,
    }
}

pub fn pool(name: &str, balance: Balance, backends: &[SocketAddr]) -> PoolConfig {
    let backends = backends
        .iter()
        .enumerate()
        .map(|(i, &addr)| BackendConfig::new(format!("b{i}"), addr))
        .collect();
    let mut pool = PoolConfig::new(name, backends);
    pool.balance = balance;
    pool.hash_key = HashKey::SourceIpPort;
    pool
}

/// One listener on an ephemeral loopback port in front of `pool`.
pub fn single(pool: PoolConfig) -> Config {
    Config {
        engine: engine_config(),
        log: LogConfig::default(),
        ctl: CtlConfig {
            socket: None,
            owner: None,
            group: None,
        },
        stats: StatsConfig { listen: None },
        overflow: OverflowConfig::default(),
        listeners: vec![ListenerConfig {
            name: "test".into(),
            addr: "127.0.0.1:0".parse().expect("literal"),
            pool: 0,
            refuse_payload: Vec::new(),
            proxy_protocol: levee::config::ProxyProtocol::None,
            proxy_timeout: std::time::Duration::from_secs(5),
            proxy_from: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            rate_per_source: 0,
            burst_per_source: 0,
            max_conns_per_source: 0,
        }],
        pools: vec![pool],
    }
}

pub fn start(cfg: &Config) -> Engine {
    Engine::start(cfg).unwrap_or_else(|e| panic!("engine failed to start: {e}"))
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// A backend on loopback that runs `serve` on each accepted connection in its own thread.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn spawn(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Self {
        Self::spawn_on("127.0.0.1:0".parse().expect("literal"), serve)
    }

    pub fn spawn_on(addr: SocketAddr, serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Self {
        let listener = backend_listener(addr);
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let serve = Arc::new(serve);
        let thread = {
            let stop = stop.clone();
            let accepted = accepted.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            s.set_nonblocking(false).expect("blocking");
                            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                            s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
                            let serve = serve.clone();
                            thread::spawn(move || serve(s));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(2));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Self {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Echoes everything back, and carries the client's FIN back as its own.
    /// A backend that sends `total` pattern bytes ([`send_pattern`]), then its FIN, reports
    /// their checksum, and reads until the client closes.
    pub fn downloading(total: u64) -> (Self, std::sync::mpsc::Receiver<u64>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let backend = Self::spawn(move |mut s| {
            let sum = send_pattern(&mut s, total);
            let _ = s.shutdown(Shutdown::Write);
            let _ = tx.send(sum);
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        (backend, rx)
    }

    pub fn echo() -> Self {
        Self::spawn(echo)
    }

    /// As [`Self::echo`], on `addr`.
    pub fn echo_on(addr: SocketAddr) -> Self {
        Self::spawn_on(addr, echo)
    }

    /// Answers each connection with its own name, then closes.
    pub fn named(name: &'static str) -> Self {
        Self::spawn(move |mut s| {
            let _ = s.write_all(name.as_bytes());
            let _ = s.shutdown(Shutdown::Write);
            let mut sink = [0u8; 64];
            let _ = s.read(&mut sink);
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echoes what `s` sends until its FIN, then sends its own.
fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// A listening socket for a test backend, reusable after a crash on the same address, with a
/// deep backlog: a burst of connects through levee must not overflow it (a dropped SYN costs a
/// second or more of retransmission, which looks like a slow backend).
fn backend_listener(addr: SocketAddr) -> TcpListener {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    socket.set_reuse_address(true).expect("reuseaddr");
    socket.bind(&addr.into()).expect("bind backend address");
    socket.listen(4096).expect("listen");
    socket.into()
}

/// An address on loopback where nothing listens (bound once, then released): for a backend
/// that refuses, a listener that must be known in advance, or a backend to be restarted on it.
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Reads until EOF.
pub fn read_all(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}

/// Environment variable that turns a test binary into a backend process (see
/// [`BackendProcess`]): `NAME|ADDR|MODE`.
pub const CHILD_BACKEND: &str = "LEVEE_TEST_BACKEND";

/// A backend in a process of its own, so a test can kill it like a real crash: the test binary
/// re-executed with [`CHILD_BACKEND`] set, running only the entry test named `entry`, which calls
/// [`child_backend_main`].
pub struct BackendProcess {
    child: Option<std::process::Child>,
    pub name: String,
    pub addr: SocketAddr,
}

/// How a [`BackendProcess`] treats each connection.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Answers each line it receives with its own name and a newline.
    Named,
    /// Accepts, then resets the connection at once.
    Reset,
    /// Accepts and holds every connection, never reading: thousands cost no thread each.
    Hold,
}

impl BackendProcess {
    pub fn spawn(entry: &str, name: &str, addr: SocketAddr, mode: Mode) -> Self {
        use std::io::BufRead;
        let mode = match mode {
            Mode::Named => "named",
            Mode::Reset => "reset",
            Mode::Hold => "hold",
        };
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", entry, "--nocapture", "--test-threads=1"])
            .env(CHILD_BACKEND, format!("{name}|{addr}|{mode}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn backend process");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = io::BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                // libtest prints "test NAME ... " without a newline just before.
                Some(Ok(line)) if line.ends_with("levee-test-backend ready") => break,
                Some(Ok(_)) => {}
                _ => panic!("backend process {name} exited before it was ready"),
            }
        }
        // Keep draining its stdout so it never blocks on a full pipe.
        thread::spawn(move || for _ in lines {});
        Self {
            child: Some(child),
            name: name.into(),
            addr,
        }
    }

    /// SIGKILL, as a crash would: the kernel closes its sockets.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The body of a backend process; returns at once when [`CHILD_BACKEND`] is not set, so the entry
/// test passes as a no-op in a normal run.
pub fn child_backend_main() {
    let Ok(spec) = std::env::var(CHILD_BACKEND) else {
        return;
    };
    let mut parts = spec.split('|');
    let (Some(name), Some(addr), Some(mode)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad {CHILD_BACKEND}: {spec}");
    };
    let listener = backend_listener(addr.parse().expect("backend address"));
    println!("levee-test-backend ready");
    let reply = format!("{name}\n").into_bytes();
    let mut held = Vec::new();
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        match mode {
            "hold" => held.push(s),
            "reset" => {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
            _ => {
                let reply = reply.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                                for _ in 0..lines {
                                    if s.write_all(&reply).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                });
            }
        }
    }
}

/// One request on a new connection to `addr`: send a line, read the name that answers.
/// `Err` for any failure, which the caller counts.
pub fn ask(addr: SocketAddr) -> io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    ask_on(&mut s)
}

/// One request on an open connection: send a line, read the name that answers.
pub fn ask_on(s: &mut TcpStream) -> io::Result<String> {
    s.write_all(b"who\n")?;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a reply",
                ));
            }
            _ if byte[0] == b'\n' => break,
            _ => got.push(byte[0]),
        }
    }
    String::from_utf8(got).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not text"))
}

/// A test cannot run here for `reason` (a missing tool, privilege or kernel feature). It fails,
/// so a test run never passes without checking, unless `LEVEE_ALLOW_SKIP=1` is set: then it
/// prints `SKIPPED: reason` and the caller returns.
pub fn skip(reason: &str) {
    if std::env::var("LEVEE_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {reason}");
    } else {
        panic!("{reason}; set LEVEE_ALLOW_SKIP=1 to let the test pass as skipped");
    }
}

/// Waits for `child` to exit and returns its status; past [`IO_TIMEOUT`] kills it and fails
/// the test, saying `what` did not exit.
pub fn wait_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let mut status = None;
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while status.is_none() {
        status = child.try_wait().expect("wait");
        if status.is_none() && std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {IO_TIMEOUT:?}");
        }
        if status.is_none() {
            thread::sleep(Duration::from_millis(10));
        }
    }
    status.expect("exited")
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after [`IO_TIMEOUT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The `levee` binary built for these tests.
pub fn levee() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_levee"))
}

/// A fresh directory of this test process's own under the system's temporary directory.
///
/// Directories outlive the tests that use them (their paths are handed around freely); the
/// first call in each test process instead removes those left by test processes that have
/// exited, so runs do not pile up copies of the binary and sockets in /tmp.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(sweep_dead_temp_dirs);
    let dir = std::env::temp_dir().join(format!("levee-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Removes `levee-test-PID-*` directories whose process is gone. Best effort: what cannot be
/// read or removed stays.
fn sweep_dead_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("levee-test-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The scheduling policy (field 41 of `/proc/PID/task/TID/stat`) of each of `pid`'s threads
/// whose name starts with `levee-fwd-`.
pub fn forwarder_policies(pid: u32) -> Vec<u32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("levee-fwd-") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
        // The name in parentheses may hold spaces; the fields after it are plain.
        let after_name = &stat[stat.rfind(')').expect("stat name") + 2..];
        let policy = after_name
            .split(' ')
            .nth(41 - 3)
            .and_then(|f| f.parse().ok())
            .expect("policy field");
        policies.push(policy);
    }
    policies
}

/// Deterministic bytes: position-dependent, so a reordered or repeated chunk changes the sum.
pub fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = (offset + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        *b = (x >> 56) as u8;
    }
}

/// Writes `total` pattern bytes to `s`, returning their checksum.
pub fn send_pattern(s: &mut TcpStream, total: u64) -> u64 {
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let n = (total - sent).min(buf.len() as u64) as usize;
        pattern(sent, &mut buf[..n]);
        s.write_all(&buf[..n]).expect("write pattern");
        h.write(&buf[..n]);
        sent += n as u64;
    }
    h.finish()
}

/// Reads to EOF, returning (length, checksum); an error ends it like EOF (a backend's view).
pub fn drain_until_fin(s: &mut TcpStream) -> (u64, u64) {
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
        total += n as u64;
    }
    (total, h.finish())
}

/// Reads to EOF, returning (length, checksum).
pub fn drain(s: &mut TcpStream) -> (u64, u64) {
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (total, h.finish()),
            Ok(n) => {
                h.write(&buf[..n]);
                total += n as u64;
            }
            Err(e) => panic!("read after {total} bytes: {e}"),
        }
    }
}
