//! `levee ctl` against a running levee: reading and changing runtime keys over the control
//! socket, as an operator does.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Backend, IO_TIMEOUT, levee, refused_addr, temp_dir};

/// A running levee in front of two named backends, with its control socket.
struct Running {
    child: Child,
    socket: PathBuf,
    config: PathBuf,
    addr: SocketAddr,
    _backends: [Backend; 2],
}

impl Running {
    fn start(name: &str) -> Self {
        let a = Backend::named("a");
        let b = Backend::named("b");
        let dir = temp_dir(name);
        let socket = dir.join("ctl.sock");
        let addr = refused_addr();
        let config = dir.join("levee.conf");
        std::fs::write(
            &config,
            format!(
                "engine.cores = 0\nctl.socket = {}\nlistener.web.addr = {addr}\nlistener.web.pool = web\n\
                 pool.web.balance = round_robin\npool.web.backend.a.addr = {}\n\
                 pool.web.backend.b.addr = {}\n",
                socket.display(),
                a.addr,
                b.addr
            ),
        )
        .expect("config");
        let child = levee()
            .arg("run")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn levee");
        let deadline = Instant::now() + IO_TIMEOUT;
        while UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the control socket never appeared"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            socket,
            config,
            addr,
            _backends: [a, b],
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        levee()
            .arg("ctl")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("levee ctl")
    }

    fn get(&self, key: &str) -> String {
        let out = self.ctl(&["-n", key]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn answers(&self) -> String {
        let mut c = TcpStream::connect(self.addr).expect("connect");
        c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut got = String::new();
        c.read_to_string(&mut got).expect("read");
        got
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn reads_keys_like_sysctl() {
    let l = Running::start("read");
    let out = l.ctl(&["pool.web.backend.a.weight", "engine.connect_timeout"]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out),
        "pool.web.backend.a.weight = 100\nengine.connect_timeout = 5s\n"
    );
    assert_eq!(l.get("pool.web.balance"), "round_robin");
    let all = stdout(&l.ctl(&["-a"]));
    assert!(all.contains("listener.web.pool = web\n"), "{all}");
    assert!(
        all.contains("stats.pool.web.backend.b.status = up\n"),
        "{all}"
    );
    // The control socket is the operator's alone.
    let mode = std::fs::metadata(&l.socket).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.ok(), Some(0o600));
}

#[test]
fn drain_through_ctl_keeps_new_connections_away() {
    let l = Running::start("drain");
    let out = l.ctl(&["-w", "pool.web.backend.b.state=drain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "pool.web.backend.b.state = drain\n");
    common::wait_until("b drains", || {
        l.get("stats.pool.web.backend.b.status") == "drain"
    });
    for _ in 0..10 {
        assert_eq!(l.answers(), "a");
    }
    assert!(
        l.ctl(&["-w", "pool.web.backend.b.state=up"])
            .status
            .success()
    );
    common::wait_until("b is back", || {
        l.get("stats.pool.web.backend.b.status") == "up"
    });
    let names: Vec<String> = (0..10).map(|_| l.answers()).collect();
    assert!(names.iter().any(|n| n == "b"), "{names:?}");
    common::wait_until("every connection counted as done", || {
        l.get("stats.closed.done") == "20"
    });
}

#[test]
fn every_runtime_key_applies_to_the_running_engine() {
    let l = Running::start("every");
    for spec in levee::config::registry::KEYS.iter().filter(|k| k.runtime) {
        let key = levee::config::registry::instantiate(spec.name, &["web", "a"]);
        let current = l.get(&key);
        let out = l.ctl(&["-w", &format!("{key}={current}")]);
        assert!(out.status.success(), "{key}: {}", stderr(&out));
    }
}

#[test]
fn the_scheduling_policy_changes_on_the_running_forwarders() {
    let l = Running::start("sched");
    let pid = l.child.id();
    assert_eq!(
        common::forwarder_policies(pid),
        vec![libc::SCHED_BATCH as u32]
    );
    let out = l.ctl(&["-w", "engine.sched_policy=normal"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "engine.sched_policy = normal\n");
    assert_eq!(
        common::forwarder_policies(pid),
        vec![libc::SCHED_OTHER as u32]
    );
    let out = l.ctl(&["-w", "engine.sched_policy=fifo"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("engine.sched_policy: expected one of batch, normal"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        common::forwarder_policies(pid),
        vec![libc::SCHED_OTHER as u32]
    );
    assert_eq!(l.answers(), "a");
}

#[test]
fn refuses_what_cannot_change_and_bad_values_and_changes_nothing() {
    let l = Running::start("refuse");
    let out = l.ctl(&["-w", "listener.web.addr=127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("listener.web.addr: cannot change at runtime"),
        "{}",
        stderr(&out)
    );
    let out = l.ctl(&["-w", "pool.web.backend.a.weight=lots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("pool.web.backend.a.weight: expected"),
        "{}",
        stderr(&out)
    );
    assert_eq!(l.get("pool.web.backend.a.weight"), "100");
    let out = l.ctl(&["pool.web.backend.z.weight"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no backend named `web.z`"),
        "{}",
        stderr(&out)
    );
    let out = l.ctl(&["-w", "stats.accepted=0"]);
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
}

#[test]
fn load_applies_only_what_differs() {
    let l = Running::start("load");
    // The running file itself changes nothing, even its start-only keys.
    let out = l.ctl(&["-p", &l.config.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let changes = l.config.with_file_name("changes.conf");
    std::fs::write(
        &changes,
        "# runtime changes\nengine.idle_timeout = 30s\n-engine.not_a_key = 1\npool.web.backend.a.max_conns = 3\n",
    )
    .expect("write");
    let out = l.ctl(&["-p", &changes.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(l.get("engine.idle_timeout"), "30s");
    assert_eq!(l.get("pool.web.backend.a.max_conns"), "3");
}

#[test]
fn the_protocol_survives_garbage() {
    let l = Running::start("garbage");
    let mut s = UnixStream::connect(&l.socket).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(b"frobnicate\n").expect("write");
    s.write_all(&vec![b'x'; 10_000]).expect("write");
    s.write_all(b"\n").expect("write");
    let mut lines = BufReader::new(s).lines().map_while(Result::ok);
    let first = lines.next().expect("reply");
    assert!(
        first.starts_with("! unknown request `frobnicate`"),
        "{first}"
    );
    assert_eq!(lines.next().as_deref(), Some("."));
    let second = lines.next().expect("reply");
    assert!(second.starts_with("! request longer than"), "{second}");
    // Still serving.
    assert_eq!(l.get("log.level"), "info");
}

#[test]
fn an_unreachable_socket_is_a_clear_error() {
    let out = levee()
        .args(["ctl", "-s", "/nonexistent/levee.sock", "-a"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot talk to levee on /nonexistent/levee.sock"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = temp_dir("stale");
    let socket = dir.join("ctl.sock");
    // A socket file nobody answers on, as a crashed levee leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(Path::new(&socket).exists());
    let addr = refused_addr();
    let config = dir.join("levee.conf");
    std::fs::write(
        &config,
        format!(
            "engine.cores = 0\nctl.socket = {}\nlistener.web.addr = {addr}\nlistener.web.pool = web\n\
             pool.web.backend.a.addr = 127.0.0.1:9\n",
            socket.display()
        ),
    )
    .expect("config");
    let mut child = levee()
        .arg("run")
        .arg("-c")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    common::wait_until("levee answers on the old path", || {
        UnixStream::connect(&socket).is_ok()
    });
    let _ = child.kill();
    let _ = child.wait();
}
