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

// ---- accepting the header: listener.NAME.proxy_protocol ----------------------------------------

/// A levee whose listener takes `accept` and whose pool sends `send`, with a control socket.
fn accepting(
    name: &str,
    listen: SocketAddr,
    backends: &[SocketAddr],
    accept: &str,
    send: &str,
    extra: &str,
) -> (Levee, std::path::PathBuf) {
    let ctl = temp_dir(&format!("{name}-ctl")).join("ctl.sock");
    let mut text = format!(
        "engine.cores = 0\nctl.socket = {}\nlistener.web.addr = {listen}\n\
         listener.web.pool = web\nlistener.web.proxy_protocol = {accept}\n\
         pool.web.proxy_protocol = {send}\n{extra}",
        ctl.display()
    );
    for (i, b) in backends.iter().enumerate() {
        text.push_str(&format!("pool.web.backend.b{i}.addr = {b}\n"));
    }
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
    let running = Levee { child };
    // Not a TCP probe: it would have to send a header.
    wait_until("levee answers on its control socket", || {
        ctl.exists() && stat_text(&ctl, "stats.pid").is_some()
    });
    (running, ctl)
}

fn stat_text(ctl: &std::path::Path, key: &str) -> Option<String> {
    let out = levee()
        .args(["ctl", "-s"])
        .arg(ctl)
        .args(["-n", key])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A client that sends `header` (in pieces split at `split`, if given), then `payload` and
/// its FIN: what came back, or the error reading it.
fn with_header(
    addr: SocketAddr,
    header: &[u8],
    split: Option<usize>,
    payload: &str,
) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    match split {
        Some(k) => {
            // Two writes, two segments (no Nagle): the header may arrive in two pieces, or
            // together if levee looks late; either way it is read whole. The partial path
            // itself is held open by tests/faults.rs (`clients_stuck_in_a_partial_...`) and by
            // the half-close test below.
            s.set_nodelay(true)?;
            s.write_all(&header[..k])?;
            s.write_all(&header[k..])?;
        }
        None => s.write_all(header)?,
    }
    s.write_all(payload.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

fn v1(source: &str, destination: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) =
        (source.parse().expect("s"), destination.parse().expect("d"));
    let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

fn v2(source: &str, destination: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) =
        (source.parse().expect("s"), destination.parse().expect("d"));
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match (s.ip(), d.ip()) {
        (IpAddr::V4(si), IpAddr::V4(di)) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&si.octets());
            h.extend_from_slice(&di.octets());
        }
        (IpAddr::V6(si), IpAddr::V6(di)) => {
            h.extend_from_slice(&[0x21, 0x21, 0, 36]);
            h.extend_from_slice(&si.octets());
            h.extend_from_slice(&di.octets());
        }
        _ => panic!("one family"),
    }
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

/// The header's client goes on to the backend, whichever version came in and goes out, also
/// when it came in two pieces.
#[test]
fn the_client_a_header_names_is_the_one_the_backend_hears_of() {
    let free = Arc::new(AtomicBool::new(false));
    let backend = HeaderBackend::start("127.0.0.1:0", free);
    for (accept, send, header, split) in [
        ("v1", "v1", v1("203.0.113.7:1234", "192.0.2.1:80"), None),
        ("v2", "v1", v2("203.0.113.7:1234", "192.0.2.1:80"), None),
        (
            "v1",
            "v2",
            v1("[2001:db8::7]:1234", "[2001:db8::1]:443"),
            Some(9),
        ),
        (
            "v2",
            "v2",
            v2("[2001:db8::7]:1234", "[2001:db8::1]:443"),
            Some(14),
        ),
    ] {
        let listen = free_addr("127.0.0.1");
        let (_levee, _) = accepting(
            &format!("accept-{accept}-{send}-{}", split.is_some()),
            listen,
            &[backend.addr],
            accept,
            send,
            "",
        );
        let text = String::from_utf8_lossy(&header).to_string();
        let want = if header.starts_with(b"PROXY") {
            let f: Vec<&str> = text.trim_end().split(' ').collect();
            let ip = |t: &str| t.parse::<IpAddr>().expect("ip");
            format!(
                "{} {} hello",
                SocketAddr::new(ip(f[2]), f[4].parse().expect("port")),
                SocketAddr::new(ip(f[3]), f[5].parse().expect("port"))
            )
        } else if header.len() == 28 {
            "203.0.113.7:1234 192.0.2.1:80 hello".to_string()
        } else {
            "[2001:db8::7]:1234 [2001:db8::1]:443 hello".to_string()
        };
        let got = with_header(listen, &header, split, "hello").expect("served");
        assert_eq!(got, want, "{accept} in, {send} out, split {split:?}");
    }
}

/// A missing, malformed or other-version header, and one that never comes: reset, counted by
/// reason, and the listener goes on serving.
#[test]
fn a_client_without_a_good_header_is_reset_and_counted() {
    let free = Arc::new(AtomicBool::new(false));
    let backend = HeaderBackend::start("127.0.0.1:0", free);
    let listen = free_addr("127.0.0.1");
    let (_levee, ctl) = accepting(
        "accept-bad",
        listen,
        &[backend.addr],
        "v1",
        "v1",
        "listener.web.proxy_timeout = 300ms\n",
    );
    let count = |reason: &str| -> u64 {
        stat_text(&ctl, &format!("stats.closed.{reason}"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let refused = |header: &[u8]| match with_header(listen, header, None, "x") {
        Ok(answer) => panic!("served without a good header: {answer:?}"),
        Err(e) => e.kind(),
    };
    for (i, bad) in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        &v2("203.0.113.7:1234", "192.0.2.1:80"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(refused(bad), std::io::ErrorKind::ConnectionReset, "{bad:?}");
        wait_until("it is counted", || {
            count("proxy_header_bad") == i as u64 + 1
        });
    }
    // Silent: reset once the timeout has passed (the tick looks at least once a second).
    let mut silent = TcpStream::connect(listen).expect("connect");
    silent.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut byte = [0u8; 1];
    let err = silent.read(&mut byte).expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    wait_until("the timeout is counted", || {
        count("proxy_header_timeout") == 1
    });
    assert_eq!(count("done"), 0);
    let ok = with_header(listen, &v1("198.51.100.2:5", "192.0.2.1:80"), None, "ok")
        .expect("a good client after them is served");
    assert_eq!(ok, "198.51.100.2:5 192.0.2.1:80 ok");
}

/// The header's client, not the balancer's address, is what consistent hashing sees: all the
/// connections come from 127.0.0.1, yet clients the headers name spread over both backends,
/// each always to the same one.
#[test]
fn hashing_follows_the_headers_client() {
    let (a, b) = (common::Backend::named("a"), common::Backend::named("b"));
    let listen = free_addr("127.0.0.1");
    let (_levee, _) = accepting("accept-hash", listen, &[a.addr, b.addr], "v2", "none", "");
    let which = |client: &str| -> String {
        let mut s = TcpStream::connect(listen).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.write_all(&v2(client, "192.0.2.1:80")).expect("header");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("answer");
        answer
    };
    let clients: Vec<String> = (1..=40).map(|i| format!("198.51.100.{i}:4000")).collect();
    let first: Vec<String> = clients.iter().map(|c| which(c)).collect();
    for (c, f) in clients.iter().zip(&first) {
        assert_eq!(&which(c), f, "{c} goes to the same backend again");
    }
    let on_a = first.iter().filter(|n| *n == "a").count();
    eprintln!(
        "FIGURE hashing by the PROXY header's client: 40 clients, {on_a} on a, {} on b",
        40 - on_a
    );
    assert!(on_a > 0 && on_a < 40, "both backends serve: {first:?}");
}

/// A client whose header a listener read, queued and then served by a worker process: the
/// header levee sends names the client the incoming header named (the ticket carries it).
#[test]
fn a_queued_client_keeps_the_address_its_header_named() {
    let hold = Arc::new(AtomicBool::new(true));
    let backend = HeaderBackend::start("127.0.0.1:0", hold.clone());
    let listen = free_addr("127.0.0.1");
    let (_levee, ctl) = accepting(
        "accept-queue",
        listen,
        &[backend.addr],
        "v1",
        "v2",
        "pool.web.backend.b0.max_conns = 1\noverflow.workers = 1\n",
    );
    let get = |key: &str| -> u64 {
        stat_text(&ctl, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    wait_until("the worker serves", || {
        get("stats.overflow.workers_attached") == 1
    });
    let first = thread::spawn(move || {
        with_header(listen, &v1("198.51.100.1:1", "192.0.2.1:80"), None, "first")
    });
    wait_until("the backend is full", || {
        get("stats.pool.web.backend.b0.active") == 1
    });
    let queued = thread::spawn(move || {
        with_header(
            listen,
            &v1("198.51.100.2:2", "192.0.2.1:80"),
            None,
            "queued",
        )
    });
    wait_until("the second client is queued", || {
        get("stats.pool.web.queue.depth") == 1
    });
    hold.store(false, Ordering::SeqCst);
    assert_eq!(
        first.join().expect("first").expect("served"),
        "198.51.100.1:1 192.0.2.1:80 first"
    );
    assert_eq!(
        queued.join().expect("queued").expect("served"),
        "198.51.100.2:2 192.0.2.1:80 queued"
    );
    wait_until("a worker served it", || get("stats.closed.handed_off") == 1);
}

/// A client whose header was read, queued, then moved to a new levee by a reload: the new
/// levee sends on the address the header named (the move carries it).
#[test]
fn a_moved_client_keeps_the_address_its_header_named() {
    let hold = Arc::new(AtomicBool::new(true));
    let backend = HeaderBackend::start("127.0.0.1:0", hold.clone());
    let listen = free_addr("127.0.0.1");
    let (_levee, ctl) = accepting(
        "accept-moved",
        listen,
        &[backend.addr],
        "v2",
        "v1",
        "pool.web.backend.b0.max_conns = 1\noverflow.workers = 1\nengine.drain_timeout = 30s\n",
    );
    let get = |key: &str| -> u64 {
        stat_text(&ctl, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let first = thread::spawn(move || {
        with_header(listen, &v2("198.51.100.1:1", "192.0.2.1:80"), None, "first")
    });
    wait_until("the backend is full", || {
        get("stats.pool.web.backend.b0.active") == 1
    });
    let queued = thread::spawn(move || {
        with_header(
            listen,
            &v2("198.51.100.2:2", "192.0.2.1:80"),
            None,
            "queued",
        )
    });
    wait_until("the second client is queued", || {
        get("stats.pool.web.queue.depth") == 1
    });
    let old = get("stats.pid");
    let out = levee()
        .args(["ctl", "-s"])
        .arg(&ctl)
        .arg("--reload")
        .output()
        .expect("reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = get("stats.pid");
    assert_ne!(new, old);
    // The new levee has it queued, waiting for the slot the old one's connection holds.
    wait_until("the queue has moved", || {
        get("stats.pool.web.queue.depth") == 1
    });
    hold.store(false, Ordering::SeqCst);
    assert_eq!(
        first.join().expect("first").expect("served"),
        "198.51.100.1:1 192.0.2.1:80 first"
    );
    assert_eq!(
        queued.join().expect("queued").expect("served"),
        "198.51.100.2:2 192.0.2.1:80 queued"
    );
    // SAFETY: kill(2) on the levee this test's reload started.
    unsafe { libc::kill(new as i32, libc::SIGKILL) };
}

// ---- who a listener lets in: allow, deny, rate per source ---------------------------------------

/// Behind a balancer, the lists judge the client its header names, not the balancer.
#[test]
fn allow_and_deny_judge_the_headers_client() {
    let free = Arc::new(AtomicBool::new(false));
    let backend = HeaderBackend::start("127.0.0.1:0", free);
    let listen = free_addr("127.0.0.1");
    let (_levee, ctl) = accepting(
        "gate-lists",
        listen,
        &[backend.addr],
        "v1",
        "v1",
        "listener.web.allow = 10.0.0.0/8, 2001:db8::/32\nlistener.web.deny = 10.9.0.0/16\n",
    );
    let count = |reason: &str| -> u64 {
        stat_text(&ctl, &format!("stats.closed.{reason}"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let ask = |client: &str| with_header(listen, &v1(client, "192.0.2.1:80"), None, "x");
    assert_eq!(
        ask("10.1.1.1:5").expect("allowed"),
        "10.1.1.1:5 192.0.2.1:80 x"
    );
    let v6 = with_header(
        listen,
        &v1("[2001:db8::5]:5", "[2001:db8::1]:80"),
        None,
        "x",
    );
    assert_eq!(v6.expect("allowed"), "[2001:db8::5]:5 [2001:db8::1]:80 x");
    for (i, refused) in ["192.0.2.9:5", "10.9.0.1:5"].into_iter().enumerate() {
        let err = ask(refused).expect_err("not allowed");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{refused}");
        wait_until("it is counted", || count("denied") == i as u64 + 1);
    }
}

/// One source past its rate is held back, counted; another source is served all the same.
#[test]
fn a_source_past_its_rate_is_refused_and_others_are_not() {
    const TRIES: u64 = 6;
    let free = Arc::new(AtomicBool::new(false));
    let backend = HeaderBackend::start("127.0.0.1:0", free);
    let listen = free_addr("127.0.0.1");
    let (_levee, ctl) = accepting(
        "gate-rate",
        listen,
        &[backend.addr],
        "v1",
        "v1",
        "listener.web.rate_per_source = 1\nlistener.web.burst_per_source = 2\n",
    );
    let ask = |client: &str| with_header(listen, &v1(client, "192.0.2.1:80"), None, "x");
    let started = std::time::Instant::now();
    let served = (0..TRIES)
        .filter(|_| ask("198.51.100.66:1").is_ok())
        .count() as u64;
    let elapsed = started.elapsed().as_secs();
    // The burst, and one more per whole second the tries took (at most one more at its edge).
    assert!(
        (2..=3 + elapsed).contains(&served),
        "{served} of {TRIES} served in {elapsed} s"
    );
    wait_until("each refusal is counted", || {
        stat_text(&ctl, "stats.closed.source_rate").as_deref()
            == Some(&(TRIES - served).to_string())
    });
    assert!(
        ask("198.51.100.77:1").is_ok(),
        "another source has its own bucket"
    );
    eprintln!(
        "FIGURE rate_per_source 1, burst 2: {served} of {TRIES} quick connections from one source served, another source served"
    );
}

/// `proxy_from` says who may send a header: a connection from elsewhere is refused before its
/// header is read, whatever address it names; once its address is listed, it is served.
#[test]
fn only_the_balancers_listed_may_name_a_client() {
    let free = Arc::new(AtomicBool::new(false));
    let backend = HeaderBackend::start("127.0.0.1:0", free);
    let listen = free_addr("127.0.0.1");
    let (_levee, ctl) = accepting(
        "gate-upstream",
        listen,
        &[backend.addr],
        "v1",
        "v1",
        "listener.web.proxy_from = 10.0.0.0/8\n",
    );
    let header = v1("198.51.100.5:5", "192.0.2.1:80");
    let err = with_header(listen, &header, None, "x").expect_err("not a listed balancer");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    wait_until("it is counted", || {
        stat_text(&ctl, "stats.closed.denied").as_deref() == Some("1")
    });
    let out = levee()
        .args(["ctl", "-s"])
        .arg(&ctl)
        .args(["-w", "listener.web.proxy_from=127.0.0.0/8"])
        .output()
        .expect("ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        with_header(listen, &header, None, "x").expect("listed now"),
        "198.51.100.5:5 192.0.2.1:80 x"
    );
}

/// A client that half-closes inside its header is done sending: it is reset and counted at
/// once (its FIN wakes the forwarder, which must not look at it again and again).
#[test]
fn a_client_that_closes_inside_its_header_is_reset_at_once() {
    const CLIENTS: usize = 20;
    let free = Arc::new(AtomicBool::new(false));
    let backend = HeaderBackend::start("127.0.0.1:0", free);
    let listen = free_addr("127.0.0.1");
    let (_levee, ctl) = accepting(
        "accept-half",
        listen,
        &[backend.addr],
        "v1",
        "none",
        "listener.web.proxy_timeout = 1h\n",
    );
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut s = TcpStream::connect(listen).expect("connect");
            s.write_all(b"PROXY TCP4 198.51.100.").expect("part");
            s.shutdown(std::net::Shutdown::Write).expect("half-close");
            s
        })
        .collect();
    wait_until("each is counted bad", || {
        stat_text(&ctl, "stats.closed.proxy_header_bad") == Some(CLIENTS.to_string())
    });
    drop(clients);
}

/// One source may hold `max_conns_per_source` connections at once: more are refused, counted,
/// while another source is served; once its connections end, it is served again.
#[test]
fn a_source_holds_no_more_than_its_share_of_connections() {
    let hold = Arc::new(AtomicBool::new(true));
    let backend = HeaderBackend::start("127.0.0.1:0", hold.clone());
    let listen = free_addr("127.0.0.1");
    let (_levee, ctl) = accepting(
        "gate-conns",
        listen,
        &[backend.addr],
        "v1",
        "v1",
        "listener.web.max_conns_per_source = 2\n",
    );
    let get = |key: &str| -> u64 {
        stat_text(&ctl, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let abuser = v1("198.51.100.66:1", "192.0.2.1:80");
    // Two held open by the backend (their payload is `first`).
    let held: Vec<_> = (0..2)
        .map(|_| {
            let h = abuser.clone();
            thread::spawn(move || with_header(listen, &h, None, "first"))
        })
        .collect();
    wait_until("both reach the backend", || {
        get("stats.pool.web.backend.b0.active") == 2
    });
    let err = with_header(listen, &abuser, None, "x").expect_err("a third from the same source");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    wait_until("it is counted", || get("stats.closed.source_conns") == 1);
    assert_eq!(
        with_header(listen, &v1("198.51.100.77:1", "192.0.2.1:80"), None, "x")
            .expect("another source is served"),
        "198.51.100.77:1 192.0.2.1:80 x"
    );
    hold.store(false, Ordering::SeqCst);
    for h in held {
        h.join().expect("held").expect("served in the end");
    }
    wait_until("their slots are free", || {
        get("stats.pool.web.backend.b0.active") == 0
    });
    assert!(
        with_header(listen, &abuser, None, "x").is_ok(),
        "served again once its connections ended"
    );
}

/// A queued connection counts against its source too, and gives its place back once a worker
/// has taken it over.
#[test]
fn queued_connections_count_against_their_source() {
    let hold = Arc::new(AtomicBool::new(true));
    let backend = HeaderBackend::start("127.0.0.1:0", hold.clone());
    let listen = free_addr("127.0.0.1");
    let (_levee, ctl) = accepting(
        "gate-conns-queue",
        listen,
        &[backend.addr],
        "v1",
        "v1",
        "listener.web.max_conns_per_source = 2\npool.web.backend.b0.max_conns = 1\n\
         overflow.workers = 1\n",
    );
    let get = |key: &str| -> u64 {
        stat_text(&ctl, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    wait_until("the worker serves", || {
        get("stats.overflow.workers_attached") == 1
    });
    let abuser = v1("198.51.100.66:1", "192.0.2.1:80");
    let first = {
        let h = abuser.clone();
        thread::spawn(move || with_header(listen, &h, None, "first"))
    };
    wait_until("the backend is full", || {
        get("stats.pool.web.backend.b0.active") == 1
    });
    let queued = {
        let h = abuser.clone();
        thread::spawn(move || with_header(listen, &h, None, "queued"))
    };
    wait_until("the second is queued", || {
        get("stats.pool.web.queue.depth") == 1
    });
    let err = with_header(listen, &abuser, None, "x").expect_err("a third: one held, one queued");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    wait_until("it is counted", || get("stats.closed.source_conns") == 1);
    hold.store(false, Ordering::SeqCst);
    first.join().expect("first").expect("served");
    queued
        .join()
        .expect("queued")
        .expect("served by the worker");
    wait_until("the worker's handover is counted", || {
        get("stats.closed.handed_off") == 1
    });
    assert!(
        with_header(listen, &abuser, None, "x").is_ok(),
        "served again: the queued one gave its place back"
    );
}
