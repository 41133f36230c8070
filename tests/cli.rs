//! The `levee` command as an operator runs it: real processes, real files, real signals.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Backend, IO_TIMEOUT, levee, refused_addr, temp_dir};

/// A configuration file in a fresh temporary directory.
fn config_file(name: &str, text: &str) -> PathBuf {
    let path = temp_dir(name).join("levee.conf");
    std::fs::write(&path, text).expect("write config");
    path
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run levee")
}

fn wait_for_listener(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("levee exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "levee never listened on {addr}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
}

/// Waits for a levee that was sent SIGTERM to exit 0, and returns what it logged.
fn stop_and_log(child: &mut Child) -> String {
    let status = common::wait_exit(child, "levee after SIGTERM");
    assert!(status.success(), "{status}");
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut log).expect("log");
    }
    log
}

#[test]
fn check_accepts_a_valid_file() {
    let path = config_file(
        "valid",
        "listener.web.addr = 127.0.0.1:18080\nlistener.web.pool = web\n\
         pool.web.backend.a.addr = 127.0.0.1:9\n",
    );
    let out = run(levee().arg("check").arg("-c").arg(&path));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok (1 listeners, 1 pools, 1 backends)"),
        "{stdout}"
    );
}

#[test]
fn check_reports_every_error_with_file_and_line_and_exits_2() {
    let path = config_file(
        "invalid",
        "engine.idle_timeout = 30\nlistener.web.addr = 127.0.0.1:18081\n\
         listener.web.pool = webb\npool.web.backend.a.addr = 127.0.0.1:9\npool.web.balanse = maglev\n",
    );
    let out = run(levee().arg("check").arg("-c").arg(&path));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}:1: engine.idle_timeout: expected a duration with a unit"),
        format!("{file}:3: listener.web.pool: no pool named `webb`"),
        format!("{file}:5: pool.web.balanse: unknown key; did you mean `pool.web.balance`?"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn run_refuses_a_bad_file_without_starting() {
    let addr = refused_addr();
    let path = config_file(
        "bad-run",
        &format!("listener.web.addr = {addr}\nlistener.web.pool = nope\n"),
    );
    // The port is held (without SO_REUSEPORT) while levee runs: a levee that bound before it
    // checked would fail on the bind instead, and say so.
    let held = TcpListener::bind(addr).expect("hold the listener's port");
    let out = run(levee().arg("run").arg("-c").arg(&path));
    drop(held);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listener.web.pool: no pool named `nope`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("cannot listen"),
        "levee tried to listen on a bad configuration: {stderr}"
    );
}

/// A configuration that maps more than this host's memory: `engine.buffers` × `buffer_size` at
/// their largest, 32 GiB a forwarder.
fn too_big_for_this_host() -> Option<PathBuf> {
    let forwarders = thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let host_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    if forwarders * (32 << 20) <= host_kib {
        eprintln!(
            "NOT CHECKED: this host's {host_kib} KiB hold {forwarders} forwarders' largest \
             buffers; the refusal of a configuration too big for memory cannot be seen here"
        );
        return None;
    }
    Some(config_file(
        "too-big",
        &format!(
            "listener.web.addr = {}\nlistener.web.pool = web\npool.web.backend.a.addr = \
             127.0.0.1:9\nengine.buffers = 32768\nengine.buffer_size = 1M\n",
            refused_addr()
        ),
    ))
}

#[test]
fn check_says_what_a_configuration_maps_and_refuses_more_than_the_host_has() {
    // The defaults: 2048 buffers of 16 KiB a forwarder.
    let path = config_file(
        "footprint",
        "listener.web.addr = 127.0.0.1:18080\nlistener.web.pool = web\n\
         pool.web.backend.a.addr = 127.0.0.1:9\n",
    );
    let out = run(levee().arg("check").arg("-c").arg(&path));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("memory: up to ") && stdout.contains("32.0 MiB of receive buffers"),
        "{stdout}"
    );

    let Some(path) = too_big_for_this_host() else {
        return;
    };
    for command in ["check", "run"] {
        let out = run(levee().arg(command).arg("-c").arg(&path));
        assert_eq!(out.status.code(), Some(2), "levee {command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("engine.buffers x engine.buffer_size: this configuration maps up to")
                && stderr.contains("32.0 GiB of receive buffers")
                && stderr.contains("more than this host's"),
            "levee {command}: {stderr}"
        );
    }
}

#[test]
fn check_names_an_unreadable_file() {
    let out = run(levee().args(["check", "-c", "/nonexistent/levee.conf"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("/nonexistent/levee.conf: "), "{stderr}");
}

#[test]
fn show_lists_effective_values_that_parse_back() {
    let path = config_file(
        "show",
        "listener.web.addr = 127.0.0.1:18082\nlistener.web.pool = web\n\
         pool.web.backend.a.addr = 127.0.0.1:9\npool.web.backend.a.weight = 7\n",
    );
    let out = run(levee().arg("show").arg("-c").arg(&path));
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listing.contains("pool.web.backend.a.weight = 7\n"),
        "{listing}"
    );
    assert!(
        listing.contains("engine.connect_timeout = 5s\n"),
        "defaults are listed: {listing}"
    );
    let again = config_file("show-again", &listing);
    assert!(
        run(levee().arg("check").arg("-c").arg(&again))
            .status
            .success()
    );
}

/// `levee run` with one forwarder, no control socket and one listener in front of `backend`,
/// plus the `extra` keys; returns once it listens, with the listener's address.
fn run_in_front_of(name: &str, backend: SocketAddr, extra: &str) -> (Child, SocketAddr) {
    let addr = refused_addr();
    let path = config_file(
        name,
        &format!(
            "engine.cores = 0\n{extra}ctl.socket = none\nlistener.web.addr = {addr}\n\
             listener.web.pool = web\npool.web.backend.a.addr = {backend}\n"
        ),
    );
    let mut child = levee()
        .arg("run")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_listener(addr, &mut child);
    (child, addr)
}

#[test]
fn run_serves_and_sigterm_drains_and_exits_zero() {
    let backend = Backend::named("through levee");
    let (mut child, addr) = run_in_front_of("serve", backend.addr, "");
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("read");
    assert_eq!(got, b"through levee");
    drop(c);
    sigterm(&child);
    let log = stop_and_log(&mut child);
    assert!(log.contains("stopped: accepted="), "{log}");
    assert!(
        log.contains("closed_drain_timeout=0"),
        "nothing was left to cut short: {log}"
    );
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let backend = Backend::named("json");
    let (mut child, addr) = run_in_front_of("json-log", backend.addr, "log.format = json\n");
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("read");
    drop(c);
    sigterm(&child);
    let log = stop_and_log(&mut child);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(line.get(key).is_some(), "no {key} in {line}");
        }
    }
    // The stop line, its message a field a shipper can index.
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("stopped: accepted="))),
        "{log}"
    );
}

#[test]
fn forwarders_run_under_the_configured_scheduling_policy() {
    let backend = Backend::named("scheduled");
    for (setting, policy) in [
        ("", libc::SCHED_BATCH),
        ("engine.sched_policy = normal\n", libc::SCHED_OTHER),
    ] {
        let (mut child, addr) = run_in_front_of("sched", backend.addr, setting);
        // A connection served through levee: its forwarder runs (and set its policy first).
        let mut got = String::new();
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.read_to_string(&mut got).expect("served");
        assert_eq!(got, "scheduled");
        let policies = common::forwarder_policies(child.id());
        sigterm(&child);
        let log = stop_and_log(&mut child);
        assert_eq!(policies, vec![policy as u32], "setting {setting:?}: {log}");
    }
}

#[test]
fn no_arguments_runs_the_built_in_default() {
    let default: SocketAddr = "127.0.0.1:8080".parse().expect("literal");
    if TcpListener::bind(default).is_err() {
        eprintln!("skipped: 127.0.0.1:8080 is in use on this machine");
        return;
    }
    let mut child = levee()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_listener(default, &mut child);
    let mut bodies = Vec::new();
    for _ in 0..6 {
        let mut c = TcpStream::connect(default).expect("connect");
        c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut got = String::new();
        c.read_to_string(&mut got).expect("read");
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        bodies.push(got);
    }
    assert!(
        bodies.iter().any(|b| b.contains("demo backend demo")),
        "{bodies:?}"
    );
    // A burst beyond the demo backends' caps (3 x 8) goes through the queue, all served.
    let burst: Vec<_> = (0..60)
        .map(|_| {
            let mut c = TcpStream::connect(default).expect("connect");
            thread::spawn(move || {
                c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .expect("write");
                let mut got = String::new();
                let _ = c.read_to_string(&mut got);
                got.starts_with("HTTP/1.1 200 OK")
            })
        })
        .collect();
    let served = burst
        .into_iter()
        .map(|h| matches!(h.join(), Ok(true)))
        .filter(|&ok| ok)
        .count();
    assert_eq!(served, 60);
    sigterm(&child);
    let log = stop_and_log(&mut child);
    assert!(
        log.contains("curl http://127.0.0.1:8080/"),
        "the log says how to try it: {log}"
    );
    assert!(
        log.contains("overflow it:"),
        "the log says how to overflow it: {log}"
    );
    assert!(log.contains("started 3 built-in HTTP backends"), "{log}");
    // levee's own closing line, not its worker's.
    let handed_off: u64 = log
        .lines()
        .find(|l| l.contains("levee: stopped:"))
        .and_then(|l| l.split("closed_handed_off=").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(handed_off > 0, "the burst went through the queue: {log}");
}

/// The state letter of process `pid` (`S` sleeping, `R` running, ...), from /proc.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// A FIFO in a fresh temporary directory.
fn fifo(name: &str) -> PathBuf {
    let path = temp_dir(name).join("levee.conf");
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    path
}

#[test]
fn ctrl_c_stops_check_waiting_on_a_fifo() {
    let path = fifo("fifo-sigint");
    let mut child = levee()
        .arg("check")
        .arg("-c")
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Asleep on the FIFO: past main's start, so a signal it blocked would stay blocked.
    common::wait_until("levee check waits on the FIFO", || {
        process_state(child.id()) == Some('S')
    });
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("kill");
    let status = common::wait_exit(&mut child, "levee check after SIGINT");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status}");
}

#[test]
fn check_reads_a_fifo_and_gives_up_on_a_silent_one() {
    let path = fifo("fifo-read");
    let writer = {
        let path = path.clone();
        thread::spawn(move || {
            // Blocks until levee opens the FIFO to read.
            std::fs::write(
                &path,
                "listener.web.addr = 127.0.0.1:18083\nlistener.web.pool = web\n\
                 pool.web.backend.a.addr = 127.0.0.1:9\n",
            )
            .expect("write FIFO");
        })
    };
    let out = run(levee().arg("check").arg("-c").arg(&path));
    writer.join().expect("writer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nobody writes: levee gives up after its deadline with a clear error.
    let out = run(levee().arg("check").arg("-c").arg(&path));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is a pipe or FIFO that did not deliver a whole configuration"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_a_device_without_reading_it() {
    let out = run(levee().args(["check", "-c", "/dev/zero"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr,
        "/dev/zero: is a character device, not a configuration file\n"
    );
}

#[test]
fn check_refuses_a_control_socket_path_that_is_a_file() {
    let dir = temp_dir("ctl-file");
    let precious = dir.join("precious.txt");
    std::fs::write(&precious, "an operator's data\n").expect("write");
    let path = config_file(
        "ctl-file-conf",
        &format!(
            "listener.web.addr = 127.0.0.1:18080\nlistener.web.pool = web\n\
             pool.web.backend.a.addr = 127.0.0.1:9\nctl.socket = {}\n",
            precious.display()
        ),
    );
    let out = run(levee().arg("check").arg("-c").arg(&path));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ctl.socket") && stderr.contains("is a regular file, not a socket"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&precious).expect("still there"),
        "an operator's data\n"
    );
}

/// The uid of every thread of process `pid`, from /proc.
fn thread_uids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| {
                    let status = std::fs::read_to_string(t.ok()?.path().join("status")).ok()?;
                    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
                    line.split_whitespace().nth(2)?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn engine_user_runs_levee_and_its_workers_as_that_user() {
    // Changing user needs root: elsewhere this fails, saying so, unless skips are allowed.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip(
            "engine.user needs levee to start as root, and these tests do not run as root",
        );
        return;
    }
    let backend = Backend::named("served");
    let dir = temp_dir("engine-user");
    let ctl = dir.join("ctl.sock");
    let addr = refused_addr();
    let path = config_file(
        "engine-user-conf",
        &format!(
            "engine.cores = 0\nengine.user = nobody\nengine.group = nogroup\nctl.socket = {}\n\
             ctl.group = nogroup\nlistener.web.addr = {addr}\nlistener.web.pool = web\n\
             pool.web.backend.a.addr = {}\npool.web.backend.a.max_conns = 1\n",
            ctl.display(),
            backend.addr
        ),
    );
    let mut child = levee()
        .arg("run")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_listener(addr, &mut child);
    let ctl_get = |key: &str| {
        let out = levee()
            .arg("ctl")
            .arg("-s")
            .arg(&ctl)
            .args(["-n", key])
            .output()
            .expect("levee ctl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Every thread runs as nobody (65534) once levee serves.
    common::wait_until("levee runs as nobody", || {
        let uids = thread_uids(child.id());
        !uids.is_empty() && uids.iter().all(|&u| u == 65534)
    });
    // The worker it started runs as nobody too, and serves the queue it shares with levee.
    common::wait_until("a worker attached", || {
        ctl_get("stats.overflow.workers_attached") == "1"
    });
    let workers: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rfind(')').is_some_and(|i| {
                    stat[i + 2..].split(' ').nth(1) == Some(&child.id().to_string())
                })
            })
        })
        .collect();
    assert!(!workers.is_empty(), "levee started no worker");
    for w in workers {
        assert!(
            thread_uids(w).iter().all(|&u| u == 65534),
            "worker {w} does not run as nobody"
        );
    }
    let clients: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                got
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().expect("client"), b"served");
    }
    // The control socket belongs to the group ctl.group names, which may use it.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&ctl).expect("ctl socket");
    assert_eq!(
        (meta.gid(), meta.permissions().mode() & 0o777),
        (65534, 0o660)
    );
    sigterm(&child);
    let log = stop_and_log(&mut child);
    assert!(log.contains("running as engine.user"), "{log}");
}
