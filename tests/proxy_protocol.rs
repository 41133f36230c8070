//! `pool.NAME.proxy_protocol`: levee sends the PROXY header first to each backend connection,
//! with the client's address and the address it connected to. The backend here reads the
//! header with its own small reader, written from HAProxy's specification and not from
//! levee's code, and answers with what it read.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{IO_TIMEOUT, levee, temp_dir, wait_until};

/// What the backend read: the header's source and destination, then the first payload bytes.
fn read_header(s: &mut TcpStream) -> Result<(SocketAddr, SocketAddr), String> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).map_err(|e| e.to_string())?;
    if first[0] == b'P' {
        // Version 1: one text line up to CRLF.
        let mut line = vec![first[0]];
        while !line.ends_with(b"\r\n") {
            s.read_exact(&mut first).map_err(|e| e.to_string())?;
            line.push(first[0]);
            if line.len() > 107 {
                return Err("v1 line too long".into());
            }
        }
        let text = String::from_utf8(line).map_err(|_| "not text")?;
        let f: Vec<&str> = text.trim_end().split(' ').collect();
        if f.len() != 6 || f[0] != "PROXY" || !matches!(f[1], "TCP4" | "TCP6") {
            return Err(format!("bad v1 line {text:?}"));
        }
        let ip = |t: &str| t.parse::<IpAddr>().map_err(|_| format!("bad address {t}"));
        let port = |t: &str| t.parse::<u16>().map_err(|_| format!("bad port {t}"));
        return Ok((
            SocketAddr::new(ip(f[2])?, port(f[4])?),
            SocketAddr::new(ip(f[3])?, port(f[5])?),
        ));
    }
    // Version 2: 16 fixed bytes, then the address block.
    let mut head = [0u8; 16];
    head[0] = first[0];
    s.read_exact(&mut head[1..]).map_err(|e| e.to_string())?;
    if head[..12] != *b"\r\n\r\n\0\r\nQUIT\n" || head[12] != 0x21 {
        return Err(format!("bad v2 head {head:?}"));
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    let mut block = vec![0u8; len];
    s.read_exact(&mut block).map_err(|e| e.to_string())?;
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match head[13] {
        0x11 if len >= 12 => {
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            Ok((
                SocketAddr::new(ip(&block[0..4]), port(&block[8..10])),
                SocketAddr::new(ip(&block[4..8]), port(&block[10..12])),
            ))
        }
        0x21 if len >= 36 => {
            let ip = |b: &[u8]| {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Ok((
                SocketAddr::new(ip(&block[0..16]), port(&block[32..34])),
                SocketAddr::new(ip(&block[16..32]), port(&block[34..36])),
            ))
        }
        other => Err(format!("bad v2 family {other:#x} with {len} bytes")),
    }
}

/// A backend that reads the header, then answers `SOURCE DESTINATION PAYLOAD` (the payload
/// being whatever the client sent, up to its FIN), or `ERROR what`. A client whose payload is
/// `first` is answered only once `hold` clears (to fill `max_conns`).
struct HeaderBackend {
    addr: SocketAddr,
}

impl HeaderBackend {
    fn start(bind: &str, hold: Arc<AtomicBool>) -> Self {
        let listener = TcpListener::bind(bind).expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let hold = hold.clone();
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                    let mut payload = String::new();
                    let answer = match read_header(&mut s) {
                        Ok((src, dst)) => {
                            let _ = s.read_to_string(&mut payload);
                            format!("{src} {dst} {payload}")
                        }
                        Err(e) => format!("ERROR {e}"),
                    };
                    while payload == "first" && hold.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(5));
                    }
                    let _ = s.write_all(answer.as_bytes());
                });
            }
        });
        Self { addr }
    }
}

struct Levee {
    child: Child,
}

impl Drop for Levee {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(name: &str, text: &str, listen: SocketAddr) -> Levee {
    let dir = temp_dir(name);
    let config = dir.join("levee.conf");
    std::fs::write(&config, text).expect("config");
    let child = levee()
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn levee");
    let levee = Levee { child };
    wait_until("levee listens", || TcpStream::connect(listen).is_ok());
    levee
}

/// A port nobody listens on, on `ip`.
fn free_addr(ip: &str) -> SocketAddr {
    let l = TcpListener::bind(format!("{ip}:0")).expect("bind");
    l.local_addr().expect("addr")
}

/// One client through levee: what the backend says it read.
fn through(addr: SocketAddr, payload: &str) -> (SocketAddr, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let me = s.local_addr().expect("local");
    s.write_all(payload.as_bytes()).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    (me, answer)
}

fn config(listen: SocketAddr, backend: SocketAddr, version: &str, extra: &str) -> String {
    format!(
        "engine.cores = 0\nctl.socket = none\nlistener.web.addr = {listen}\n\
         listener.web.pool = web\npool.web.backend.b.addr = {backend}\n\
         pool.web.proxy_protocol = {version}\n{extra}"
    )
}

#[test]
fn the_backend_reads_the_clients_address_in_both_versions_over_ipv4_and_ipv6() {
    let free = Arc::new(AtomicBool::new(false));
    for (ip, version) in [
        ("127.0.0.1", "v1"),
        ("127.0.0.1", "v2"),
        ("[::1]", "v1"),
        ("[::1]", "v2"),
    ] {
        let backend = HeaderBackend::start(&format!("{ip}:0"), free.clone());
        let listen = free_addr(ip);
        let _levee = run(
            &format!("proxy-{version}-{}", ip.len()),
            &config(listen, backend.addr, version, ""),
            listen,
        );
        let (me, answer) = through(listen, "hello");
        assert_eq!(
            answer,
            format!("{me} {listen} hello"),
            "{version} over {ip}: the backend read the client's address, then its bytes"
        );
    }
}

#[test]
fn none_sends_no_header() {
    let free = Arc::new(AtomicBool::new(false));
    let backend = HeaderBackend::start("127.0.0.1:0", free);
    let listen = free_addr("127.0.0.1");
    let _levee = run(
        "proxy-none",
        &config(listen, backend.addr, "none", ""),
        listen,
    );
    let (_, answer) = through(listen, "hello");
    assert!(
        answer.starts_with("ERROR"),
        "the backend saw the client's bytes first: {answer}"
    );
}

/// A client that waited in the queue and was served by a worker process: the header still
/// names that client, as the worker reads it from the socket it took over.
#[test]
fn a_queued_client_served_by_a_worker_is_named_too() {
    let hold = Arc::new(AtomicBool::new(true));
    let backend = HeaderBackend::start("127.0.0.1:0", hold.clone());
    let listen = free_addr("127.0.0.1");
    let ctl = temp_dir("proxy-queue-ctl").join("ctl.sock");
    let text = config(
        listen,
        backend.addr,
        "v2",
        "pool.web.backend.b.max_conns = 1\noverflow.workers = 1\n",
    )
    .replace(
        "ctl.socket = none",
        &format!("ctl.socket = {}", ctl.display()),
    );
    let _levee = run("proxy-queue", &text, listen);
    wait_until("the worker serves", || {
        stat(&ctl, "stats.overflow.workers_attached") == 1
    });
    // The first connection fills the backend (held open); the second waits in the queue.
    let first = thread::spawn(move || through(listen, "first"));
    wait_until("the backend is full", || {
        stat(&ctl, "stats.pool.web.backend.b.active") == 1
    });
    let queued = thread::spawn(move || through(listen, "queued"));
    wait_until("the second client is queued", || {
        stat(&ctl, "stats.pool.web.queue.depth") == 1
    });
    // Released: the first answers, its slot frees, the worker serves the queued one.
    hold.store(false, Ordering::SeqCst);
    let (me1, a1) = first.join().expect("first");
    let (me2, a2) = queued.join().expect("queued");
    assert_eq!(a1, format!("{me1} {listen} first"));
    assert_eq!(a2, format!("{me2} {listen} queued"));
    // Counted once levee reads the worker's notice.
    wait_until("levee counts it handed to the worker", || {
        stat(&ctl, "stats.closed.handed_off") == 1
    });
}

fn stat(ctl: &std::path::Path, key: &str) -> u64 {
    let out = levee()
        .args(["ctl", "-s"])
        .arg(ctl)
        .args(["-n", key])
        .output()
        .expect("levee ctl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}
