//! Shared pieces of the integration tests: real backends on loopback and a running engine.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use levee::config::{
    BackendConfig, Balance, Config, CoreSet, EngineConfig, HashKey, ListenerConfig, LogConfig,
    PoolConfig,
};
use levee::forward::Engine;

/// Generous bound on every blocking socket call in the tests, so a bug fails a test instead of
/// hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        cores: CoreSet::List(vec![0]),
        ring_entries: 1024,
        buffer_size: 16 * 1024,
        buffers: 1024,
        max_conns: 4096,
        backlog: 1024,
        connect_timeout: Duration::from_secs(2),
        connect_retries: 2,
        idle_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(2),
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
        listeners: vec![ListenerConfig {
            name: "test".into(),
            addr: "127.0.0.1:0".parse().expect("literal"),
            pool: 0,
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
        let listener = TcpListener::bind(addr).expect("bind backend");
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
    pub fn echo() -> Self {
        Self::spawn(|mut s| {
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
        })
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

/// An address on loopback where nothing listens (bound once, then released).
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
