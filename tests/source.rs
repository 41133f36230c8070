//! `pool.NAME.source`: levee connects to backends from the addresses listed, in turn, each
//! bound with IP_BIND_ADDRESS_NO_PORT, so one backend can hold more connections from levee than
//! one address has ephemeral ports. Run in a network namespace of the test's own thread, whose
//! ephemeral range is cut down to 8 ports.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};

use common::{IO_TIMEOUT, levee, temp_dir, wait_until};

/// Ports in the namespace's ephemeral range.
const PORTS: usize = 8;
/// Connections held open at once: more than one address's ports.
const CLIENTS: usize = 12;

struct Levee(Child);

impl Drop for Levee {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Puts this thread (and what it starts from now on) in a new network namespace with
/// loopback up and `PORTS` ephemeral ports; `false` (the test then skips, loudly) where the
/// machine does not allow it.
fn own_namespace() -> bool {
    // SAFETY: unshare(2) with one flag; it changes only this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        common::skip(&format!(
            "a network namespace cannot be made here ({}); it needs root or CAP_SYS_ADMIN",
            std::io::Error::last_os_error()
        ));
        return false;
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    if !up.is_ok_and(|s| s.success()) {
        common::skip("`ip link set lo up` failed in the namespace (iproute2 missing?)");
        return false;
    }
    // Per namespace: this thread's.
    std::fs::write(
        "/proc/sys/net/ipv4/ip_local_port_range",
        format!("40000 {}", 40000 + PORTS - 1),
    )
    .expect("ip_local_port_range");
    true
}

fn run(name: &str, listen: SocketAddr, backends: &[SocketAddr], source: &str) -> Levee {
    let dir = temp_dir(name);
    let config = dir.join("levee.conf");
    let mut text = format!(
        "engine.cores = 0\nctl.socket = none\nlistener.web.addr = {listen}\n\
         listener.web.pool = web\npool.web.balance = round_robin\n\
         pool.web.source = {source}\n"
    );
    for (i, b) in backends.iter().enumerate() {
        text.push_str(&format!("pool.web.backend.b{i}.addr = {b}\n"));
    }
    std::fs::write(&config, text).expect("config");
    let child = levee()
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn levee");
    let l = Levee(child);
    wait_until("levee listens", || {
        // From a port outside the ephemeral range: the range is for levee's connections.
        client(listen, 39_000).is_ok()
    });
    l
}

/// A client from `port` on 127.0.0.1 that sends one byte: answered, it stays open.
fn client(to: SocketAddr, port: u16) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    s.connect(&to.into())?;
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"x")?;
    let mut echo = [0u8; 1];
    s.read_exact(&mut echo)?;
    Ok(s)
}

/// `CLIENTS` connections held at once through levee: how many were answered.
fn held(listen: SocketAddr, first_port: u16) -> usize {
    let open: Vec<TcpStream> = (0..CLIENTS)
        .filter_map(|i| client(listen, first_port + i as u16).ok())
        .collect();
    open.len()
}

#[test]
fn more_connections_to_one_backend_than_one_source_address_has_ports() {
    if !own_namespace() {
        return;
    }
    let echo = |port: u16| common::Backend::echo_on(SocketAddr::from(([127, 0, 0, 1], port)));
    let a = echo(9000);
    let with: SocketAddr = "127.0.0.1:8080".parse().expect("literal");
    let without: SocketAddr = "127.0.0.1:8081".parse().expect("literal");
    let served = {
        let _levee = run("source-two", with, &[a.addr], "127.0.0.2, 127.0.0.3");
        held(with, 41_000)
    };
    // The same without sources: the kernel's one address, PORTS ports toward the backend.
    let alone = {
        let _levee = run("source-none", without, &[a.addr], "");
        held(without, 42_000)
    };
    eprintln!(
        "FIGURE {CLIENTS} connections held to one backend with {PORTS} ephemeral ports: {served} \
         served from two source addresses, {alone} from the kernel's one"
    );
    assert_eq!(served, CLIENTS, "two source addresses hold them all");
    assert!(alone <= PORTS, "one address cannot: {alone} served");
}

/// One source address toward two backends: its ports are per backend (the kernel picks the
/// port at connect time, for the whole 4-tuple), not reserved for any peer as a plain bind
/// would, so it holds more than its ports' worth across the two.
#[test]
fn a_source_addresss_ports_are_per_backend() {
    if !own_namespace() {
        return;
    }
    let echo = |port: u16| common::Backend::echo_on(SocketAddr::from(([127, 0, 0, 1], port)));
    let (a, b) = (echo(9000), echo(9001));
    let listen: SocketAddr = "127.0.0.1:8080".parse().expect("literal");
    let _levee = run("source-per-backend", listen, &[a.addr, b.addr], "127.0.0.2");
    let served = held(listen, 41_000);
    eprintln!(
        "FIGURE {CLIENTS} connections over two backends from one source address with {PORTS} \
         ephemeral ports: {served} served"
    );
    assert_eq!(served, CLIENTS);
}
