//! `levee ctl` against a running levee: reading and changing runtime keys over the control
//! socket, as an operator does.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Backend, IO_TIMEOUT, levee, refused_addr, temp_dir};

/// A running levee in front of two named backends, with its control socket.
struct Running {
    child: Child,
    socket: PathBuf,
    config: PathBuf,
    addr: SocketAddr,
    log: Log,
    _backends: [Backend; 2],
}

impl Running {
    fn start(name: &str) -> Self {
        Self::start_with(name, [Backend::named("a"), Backend::named("b")], "")
    }

    /// levee in front of `backends` (named `a` and `b`), with `extra` configuration lines.
    fn start_with(name: &str, backends: [Backend; 2], extra: &str) -> Self {
        let [a, b] = &backends;
        let dir = temp_dir(name);
        let socket = dir.join("ctl.sock");
        let addr = refused_addr();
        let config = dir.join("levee.conf");
        std::fs::write(
            &config,
            format!(
                "engine.cores = 0\nctl.socket = {}\nlistener.web.addr = {addr}\nlistener.web.pool = web\n\
                 pool.web.balance = round_robin\npool.web.backend.a.addr = {}\n\
                 pool.web.backend.b.addr = {}\n{extra}",
                socket.display(),
                a.addr,
                b.addr
            ),
        )
        .expect("config");
        let (child, log) = spawn_run(&config);
        let mut running = Self {
            child,
            socket,
            config,
            addr,
            log,
            _backends: backends,
        };
        let deadline = Instant::now() + IO_TIMEOUT;
        while UnixStream::connect(&running.socket).is_err() {
            assert!(
                Instant::now() < deadline && matches!(running.child.try_wait(), Ok(None)),
                "the control socket never appeared; levee said:\n{}",
                running.log.text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        running
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

    fn set(&self, key: &str, value: &str) {
        let out = self.ctl(&["-w", &format!("{key}={value}")]);
        assert!(out.status.success(), "{key}={value}: {}", stderr(&out));
    }

    fn answers(&self) -> String {
        let mut c = TcpStream::connect(self.addr).expect("connect");
        c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut got = String::new();
        c.read_to_string(&mut got).expect("read");
        got
    }

    /// Stops levee as an operator does (SIGTERM), so that it cleans up after itself.
    fn stop(mut self) -> ExitStatus {
        terminate(&mut self.child)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `levee run -c config`, its log (stderr) collected as it comes.
fn spawn_run(config: &Path) -> (Child, Log) {
    let mut child = levee()
        .arg("run")
        .arg("-c")
        .arg(config)
        // The configuration's log.level decides, whatever the environment of the tests.
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn levee");
    let log = Log::collect(child.stderr.take().expect("stderr"));
    (child, log)
}

/// SIGTERM, then the exit status (SIGKILL if it does not exit within [`IO_TIMEOUT`]).
fn terminate(child: &mut Child) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    common::wait_exit(child, "levee after SIGTERM")
}

/// What a process wrote to a pipe so far, read by a thread of its own (so the process never
/// blocks on a full pipe).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<String>>, Arc<AtomicBool>);

impl Log {
    fn collect(pipe: impl Read + Send + 'static) -> Self {
        let log = Self::default();
        let (text, ended) = (log.0.clone(), log.1.clone());
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = text.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
            ended.store(true, Ordering::Release);
        });
        log
    }

    /// Whether the writer has closed the pipe and everything it wrote is read.
    fn ended(&self) -> bool {
        self.1.load(Ordering::Acquire)
    }

    fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

/// Each runtime key of the registry is set to a value other than the one in effect, and the
/// change is read back from the engine: a setter that reaches nothing fails here. `get` reads
/// a runtime key from the part of the engine that applies it (the forwarders' tunables, the
/// pool's shared load table, the health state, the overflow settings row, the supervisor's
/// worker target, the listener's gate; see `Live::read_back`), never from a stored copy of what
/// was written; the two settings the engine cannot report (the scheduling policy and the log
/// level) are read from their effect. The match names every `Apply` with no catch-all, so a
/// runtime key added without a check here does not compile. Effects further on (a drained
/// backend's traffic, a changed `proxy_from`) have tests of their own.
#[test]
fn every_runtime_key_applies_to_the_running_engine() {
    use levee::config::registry::{Apply, GateRule, KEYS, OverflowSetting, instantiate};
    let l = Running::start("every");
    // With a cap somewhere, the pool could overflow: the supervisor starts its workers.
    l.set("pool.web.backend.b.max_conns", "10");
    for spec in KEYS {
        let Some(apply) = spec.runtime else { continue };
        let key = instantiate(spec.name, &["web", "a"]);
        let before = l.get(&key);
        let change = |value: &str| set_and_read(&l, &key, &before, value);
        match apply {
            // The forwarders' tunables, read per new connection and per tick.
            Apply::ConnectTimeout => change("7s"),
            Apply::ConnectRetries => change("4"),
            Apply::IdleTimeout => change("30s"),
            // The supervisor's target; and the supervisor acts on it: a second worker attaches.
            Apply::OverflowWorkers => {
                change("2");
                common::wait_until("a second worker attaches", || {
                    l.get("stats.overflow.workers_attached") == "2"
                });
            }
            // The overflow settings row in shared memory, which forwarders and workers read.
            Apply::OverflowSettings(OverflowSetting::QueueTimeout) => change("3s"),
            Apply::OverflowSettings(OverflowSetting::Discipline) => change("codel"),
            Apply::OverflowSettings(OverflowSetting::CodelTarget) => change("7ms"),
            Apply::OverflowSettings(OverflowSetting::CodelInterval) => change("150ms"),
            // The bound in the pool's load table, which ranking and reservation read.
            Apply::PoolBound => change("1.5"),
            // The rules in the listener's gate, which the forwarders read for each client; and
            // they do: denied, a client is reset and counted, and served again once lifted.
            Apply::Gate(GateRule::Deny) => {
                change("127.0.0.0/8");
                let mut c = TcpStream::connect(l.addr).expect("connect");
                c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                let mut got = String::new();
                assert!(c.read_to_string(&mut got).is_err(), "denied, yet: {got:?}");
                common::wait_until("the refusal is counted", || {
                    l.get("stats.closed.denied") == "1"
                });
                l.set(&key, "");
                assert!(!l.answers().is_empty(), "served once the range is lifted");
            }
            Apply::Gate(GateRule::Allow) => change("127.0.0.0/8,::1/128"),
            Apply::Gate(GateRule::ProxyFrom) => change("10.0.0.0/8"),
            Apply::Gate(GateRule::RatePerSource) => change("1000"),
            Apply::Gate(GateRule::BurstPerSource) => change("2000"),
            Apply::Gate(GateRule::MaxConnsPerSource) => change("500"),
            // The cap in the shared load table that every acquisition checks.
            Apply::BackendMaxConns => change("3"),
            // The drain flag the monitor reads; and it does: the backend's status follows.
            Apply::BackendState => {
                change("drain");
                common::wait_until("the monitor drains a", || {
                    l.get("stats.pool.web.backend.a.status") == "drain"
                });
            }
            // The weight the health monitor applies; and it does: the effective weight follows.
            Apply::BackendWeight => {
                change("50");
                common::wait_until("the monitor applies the weight", || {
                    l.get("stats.pool.web.backend.a.effective_weight") == "50"
                });
            }
            // A property of the forwarder threads, which the kernel reports.
            Apply::SchedPolicy => {
                change("normal");
                assert_eq!(
                    common::forwarder_policies(l.child.id()),
                    vec![libc::SCHED_OTHER as u32]
                );
            }
            // Inside the log filter: at `warn`, levee no longer logs the info line each change
            // makes. Setting it back to `info` logs one: once that is in the log, the lines
            // before it are too, and the ones made at `warn` must be missing.
            Apply::LogLevel => {
                change("warn");
                l.set("engine.idle_timeout", "31s");
                l.set(&key, "info");
                common::wait_until("the change back to info is logged", || {
                    l.log.text().contains("ctl: log.level = info")
                });
                let log = l.log.text();
                assert!(!log.contains("ctl: log.level = warn"), "{log}");
                assert!(!log.contains("ctl: engine.idle_timeout = 31s"), "{log}");
            }
        }
    }
}

/// Sets `key` to `value` (which must differ from `before`), then reads it back.
fn set_and_read(l: &Running, key: &str, before: &str, value: &str) {
    assert_ne!(before, value, "{key}: the test must change the value");
    let out = l.ctl(&["-w", &format!("{key}={value}")]);
    assert!(out.status.success(), "{key}: {}", stderr(&out));
    assert_eq!(stdout(&out), format!("{key} = {value}\n"));
    assert_eq!(
        l.get(key),
        value,
        "{key}: the engine does not hold the new value"
    );
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

/// A configuration for a levee whose control socket is `socket`, whatever is there.
fn config_with_socket(dir: &Path, socket: &Path) -> PathBuf {
    let config = dir.join("levee.conf");
    std::fs::write(
        &config,
        format!(
            "engine.cores = 0\nctl.socket = {}\nlistener.web.addr = {}\nlistener.web.pool = web\n\
             pool.web.backend.a.addr = 127.0.0.1:9\n",
            socket.display(),
            refused_addr()
        ),
    )
    .expect("config");
    config
}

/// Starts levee with `ctl.socket` on a path that holds something else than a socket, waits
/// until it has dealt with it (refused it, or, as levee once did, replaced it), stops levee and
/// returns what it logged.
fn run_on_occupied_socket_path(dir: &Path, socket: &Path) -> String {
    let (mut child, log) = spawn_run(&config_with_socket(dir, socket));
    common::wait_until("levee deals with the path", || {
        log.text().contains("runtime control is off")
            || UnixStream::connect(socket).is_ok()
            || !matches!(child.try_wait(), Ok(None))
    });
    let _ = terminate(&mut child);
    // The process may have exited before the reader thread took its last lines.
    common::wait_until("levee's log is read to its end", || log.ended());
    log.text()
}

/// `ctl.socket` naming an operator's file or a symbolic link: levee neither replaces it at
/// start nor deletes it at exit, and says what is in the way.
#[test]
fn a_file_or_symlink_at_the_socket_path_is_never_replaced() {
    let dir = temp_dir("occupied");
    let file = dir.join("notes");
    std::fs::write(&file, "an operator's data").expect("write");
    let log = run_on_occupied_socket_path(&dir, &file);
    assert_eq!(
        std::fs::read_to_string(&file).ok().as_deref(),
        Some("an operator's data"),
        "{log}"
    );
    assert!(
        log.contains(&file.display().to_string()) && log.contains("is a regular file"),
        "{log}"
    );

    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&file, &link).expect("symlink");
    let log = run_on_occupied_socket_path(&dir, &link);
    let meta = std::fs::symlink_metadata(&link).expect("the link is still there");
    assert!(meta.file_type().is_symlink(), "{log}");
    assert!(
        log.contains(&link.display().to_string()) && log.contains("is a symbolic link"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).ok().as_deref(),
        Some("an operator's data")
    );
}

/// At exit levee removes its socket, and only its socket: a file put at the path since is
/// left alone.
#[test]
fn at_exit_only_levees_own_socket_is_removed() {
    let l = Running::start("exit-own");
    let socket = l.socket.clone();
    assert!(l.stop().success());
    assert!(std::fs::symlink_metadata(&socket).is_err(), "socket left");

    let l = Running::start("exit-other");
    std::fs::remove_file(&l.socket).expect("remove the socket");
    std::fs::write(&l.socket, "put here since").expect("write");
    let socket = l.socket.clone();
    assert!(l.stop().success());
    assert_eq!(
        std::fs::read_to_string(&socket).ok().as_deref(),
        Some("put here since")
    );
}

/// A client that sends a byte every two seconds, never a whole line, holds up no one, and
/// is closed once its line is overdue.
#[test]
fn a_trickling_client_locks_no_one_out() {
    let l = Running::start("trickle");
    let mut slow = UnixStream::connect(&l.socket).expect("connect");
    slow.write_all(b"l").expect("write");
    let (closed, closed_rx) = mpsc::channel();
    thread::spawn(move || {
        // The read timeout paces the trickle: a byte each time nothing came back.
        slow.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match slow.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if slow.write_all(b"i").is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = closed.send(String::from_utf8_lossy(&got).into_owned());
    });
    let out = l.ctl(&["-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("stats.accepted = "));
    let farewell = closed_rx
        .recv_timeout(IO_TIMEOUT)
        .expect("the trickling client is never closed");
    assert!(farewell.starts_with("! request not complete"), "{farewell}");
}

/// 500 connections that send nothing: `levee ctl` still gets in at once, and every one of
/// them is closed in the end (evicted for newer ones, or idle too long).
#[test]
fn idle_connections_lock_no_one_out() {
    let l = Running::start("idle-ctl");
    let (opened, opened_rx) = mpsc::channel();
    let socket = l.socket.clone();
    thread::spawn(move || {
        let idle: Vec<UnixStream> = (0..500)
            .map(|_| UnixStream::connect(&socket).expect("connect"))
            .collect();
        let _ = opened.send(idle);
    });
    let idle = opened_rx
        .recv_timeout(IO_TIMEOUT)
        .expect("500 connections never got through connect");
    let out = l.ctl(&["-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("stats.accepted = "));
    for mut c in idle {
        c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut buf = [0u8; 64];
        assert_eq!(
            c.read(&mut buf).ok(),
            Some(0),
            "an idle connection stays open"
        );
    }
}

/// A client that sends request after request and never reads a reply is not buffered for
/// without bound: it is closed, and `levee ctl` is served meanwhile.
#[test]
fn a_client_that_never_reads_is_closed() {
    let l = Running::start("greedy");
    let mut greedy = UnixStream::connect(&l.socket).expect("connect");
    greedy.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let (closed, closed_rx) = mpsc::channel();
    thread::spawn(move || {
        let requests = b"list\n".repeat(1000);
        while greedy.write_all(&requests).is_ok() {}
        let _ = closed.send(());
    });
    let out = l.ctl(&["-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    closed_rx
        .recv_timeout(IO_TIMEOUT)
        .expect("the client that never reads is never closed");
    assert_eq!(l.get("log.level"), "info");
}

/// Lowers the open-file limit (soft and hard) of process `pid`.
fn limit_open_files(pid: u32, limit: u64) {
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit(2) reads `rlim`, a valid rlimit that outlives the call, and writes
    // nothing (the old-limit pointer is null).
    let rc = unsafe {
        libc::prlimit(
            libc::pid_t::try_from(pid).expect("pid"),
            libc::RLIMIT_NOFILE,
            &rlim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The descriptors process `pid` holds: how many, and the highest.
fn open_files(pid: u32) -> (u64, u64) {
    let fds = descriptors(pid);
    (fds.len() as u64, fds.iter().copied().max().unwrap_or(0))
}

/// How many of the descriptors below `limit` process `pid` holds: at `limit`, none is left.
fn used_below(pid: u32, limit: u64) -> u64 {
    descriptors(pid).iter().filter(|&&fd| fd < limit).count() as u64
}

fn descriptors(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// A backend that holds each connection until its client goes.
fn holding() -> Backend {
    Backend::spawn(|mut s| {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    })
}

/// Clients take every descriptor levee may open, so that its forwarder fails to accept more;
/// `levee ctl` still gets in (levee keeps a spare for it), again and again.
#[test]
fn ctl_gets_in_when_levee_is_out_of_descriptors() {
    let l = Running::start_with(
        "nofile",
        [holding(), holding()],
        "pool.web.overflow = reject\n",
    );
    let pid = l.child.id();
    assert_eq!(l.get("stats.accept_errors"), "0");
    // No room above the highest descriptor open now, and an even number of free ones below
    // it (the holes included): each client holds two in levee, its own and the backend's.
    let (open, highest) = open_files(pid);
    let limit = open.max(highest + 1) + 6;
    let limit = limit + (limit - open) % 2;
    limit_open_files(pid, limit);
    let most = (limit - open) / 2 + 8;
    let mut clients = Vec::new();
    while used_below(pid, limit) < limit {
        assert!(
            clients.len() < most as usize,
            "levee's descriptors never ran out: {} of {limit} used",
            used_below(pid, limit)
        );
        let before = open_files(pid).0;
        clients.push(TcpStream::connect(l.addr).expect("connect"));
        common::wait_until("levee takes the client", || open_files(pid).0 > before);
    }
    // Two more: an accept the forwarder had armed before the limit came down may still take
    // one (io_uring reads the limit when an accept is prepared), then it finds no descriptor
    // for the backend and accepts again, under the limit now, and fails on the other.
    for _ in 0..2 {
        clients.push(TcpStream::connect(l.addr).expect("connect"));
    }
    let out = l.ctl(&["-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("stats.accept_errors = "));
    // Again and again: the spare comes back after each.
    common::wait_until("the forwarder counts failed accepts", || {
        l.get("stats.accept_errors") != "0"
    });
    assert_eq!(l.get("pool.web.overflow"), "reject");
    assert_eq!(
        used_below(pid, limit),
        limit,
        "levee is no longer at its limit"
    );
    drop(clients);
}

/// A newline (or any control character) inside a key or value would end the request there and
/// make the rest a second request, performed and not reported: refused before anything is sent.
#[test]
fn control_characters_in_keys_and_values_are_refused() {
    let l = Running::start("newline");
    let out = l.ctl(&[
        "-w",
        "engine.idle_timeout=30s\nset engine.connect_timeout 1s",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(r"`engine.idle_timeout=30s\nset engine.connect_timeout 1s`")
            && stderr(&out).contains("control character"),
        "{}",
        stderr(&out)
    );
    let out = l.ctl(&["log.level\nset engine.connect_timeout 1s"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = l.ctl(&["-w", "engine.idle_timeout=30s\r"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let file = l.config.with_file_name("cr.conf");
    std::fs::write(
        &file,
        "engine.idle_timeout = 30s\rset engine.connect_timeout 1s\n",
    )
    .expect("write");
    let out = l.ctl(&["-p", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cr.conf:1"), "{}", stderr(&out));
    // Nothing changed, neither the first key nor the smuggled one.
    assert_eq!(l.get("engine.idle_timeout"), "5m");
    assert_eq!(l.get("engine.connect_timeout"), "5s");
    // Defence in depth: the server refuses a control character inside a request line.
    let mut s = UnixStream::connect(&l.socket).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(b"set engine.idle_timeout 30s\x00\n")
        .expect("write");
    let reply = BufReader::new(s)
        .lines()
        .next()
        .expect("reply")
        .expect("line");
    assert!(
        reply.starts_with("! request contains the control character"),
        "{reply}"
    );
    assert_eq!(l.get("engine.idle_timeout"), "5m");
}

/// `-p` with a device: refused at once, without reading it (it reads forever). The client
/// runs under an address-space limit, so that a regression dies rather than eat the machine.
#[test]
fn load_refuses_a_device_without_reading_it() {
    use std::os::unix::process::CommandExt;
    let mut cmd = levee();
    cmd.args(["ctl", "-s", "/nonexistent/levee.sock", "-p", "/dev/zero"]);
    // SAFETY: the closure runs in the child between fork and exec and only calls setrlimit(2),
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, 1 << 30, 1 << 30)
                .map_err(std::io::Error::from)
        });
    }
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/dev/zero") && stderr(&out).contains("a character device"),
        "{}",
        stderr(&out)
    );
}

/// The forwarders' full and ring counters are listed and move: with two connection slots
/// held, the forwarder is full, and counted so, until a slot frees.
#[test]
fn the_forwarder_counters_are_listed() {
    let l = Running::start_with("full", [holding(), holding()], "engine.max_conns = 2\n");
    let all = stdout(&l.ctl(&["-a"]));
    for key in [
        "stats.ring_errors = 0\n",
        "stats.full_events = 0\n",
        "stats.forwarders_full = 0\n",
    ] {
        assert!(all.contains(key), "{key}: {all}");
    }
    let clients: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(l.addr).expect("connect"))
        .collect();
    common::wait_until("the forwarder is full", || {
        l.get("stats.forwarders_full") == "1"
    });
    assert_ne!(l.get("stats.full_events"), "0");
    drop(clients);
    common::wait_until("the forwarder has room again", || {
        l.get("stats.forwarders_full") == "0"
    });
    assert_eq!(l.get("stats.ring_errors"), "0");
}
