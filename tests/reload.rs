//! Reload: a new levee process takes the running one's listening sockets over, with the
//! configuration file as it is now; the old one drains what it has and exits. Real processes,
//! real sockets on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Backend, levee, refused_addr, temp_dir, wait_until};

/// A `levee run` started by the test, and every levee that took over from it since: all are
/// killed when the test ends, however it ends.
struct Running {
    child: Child,
    config: PathBuf,
    ctl: PathBuf,
    addr: SocketAddr,
}

impl Running {
    fn start(name: &str, text: impl Fn(&PathBuf, SocketAddr) -> String) -> Self {
        let dir = temp_dir(name);
        let ctl = dir.join("ctl.sock");
        let addr = refused_addr();
        let config = dir.join("levee.conf");
        std::fs::write(&config, text(&ctl, addr)).expect("config");
        let child = levee()
            .args(["run", "-c"])
            .arg(&config)
            // A reload's levee inherits these: none may hold the test's output open.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn levee");
        wait_until("levee listens", || TcpStream::connect(addr).is_ok());
        wait_until("levee's control socket is there", || ctl.exists());
        Self {
            child,
            config,
            ctl,
            addr,
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        levee()
            .arg("ctl")
            .arg("-s")
            .arg(&self.ctl)
            .args(args)
            .output()
            .expect("levee ctl")
    }

    /// The pid of the levee answering on the control socket now.
    fn pid(&self) -> u32 {
        self.try_pid().expect("stats.pid")
    }

    /// As [`Running::pid`], `None` while no levee answers (between two, a moment).
    fn try_pid(&self) -> Option<u32> {
        let out = self.ctl(&["-n", "stats.pid"]);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The levee the test started first, so that only a reload's answers on the control
        // socket; then that one.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let first = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match self.try_pid() {
                Some(pid) if pid != first => {
                    // SAFETY: kill(2) with a pid levee reported; at worst it is gone already.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return;
                }
                // The first one's socket is gone or still closing: ask again.
                _ => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// One connection: the name of the backend that answered.
fn name_of(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(common::IO_TIMEOUT))?;
    let mut got = String::new();
    s.read_to_string(&mut got)?;
    if got.is_empty() {
        return Err(std::io::Error::other("closed without an answer"));
    }
    Ok(got)
}

/// A steady stream of new connections, one at a time, until stopped (bounded in count): the
/// names that answered, in order, and the failures.
struct Stream {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    thread: thread::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Stream {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, served) = (stop.clone(), served.clone());
            thread::spawn(move || {
                let (mut names, mut failures) = (Vec::new(), Vec::new());
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed)
                    && names.len() + failures.len() < 200_000
                    && started.elapsed() < Duration::from_secs(120)
                {
                    match name_of(addr) {
                        Ok(name) => {
                            names.push(name);
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (names, failures)
            })
        };
        Self {
            stop,
            served,
            thread,
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("stream")
    }
}

/// `echo`: a second listener, and the echo backend behind it.
fn with_echo(text: String, echo: (SocketAddr, SocketAddr)) -> String {
    format!(
        "{text}listener.echo.addr = {}\nlistener.echo.pool = echo\npool.echo.overflow = reject\n\
         pool.echo.backend.e.addr = {}\n",
        echo.0, echo.1
    )
}

fn config_text(
    ctl: &std::path::Path,
    addr: SocketAddr,
    backends: &[(&str, SocketAddr, u32)],
) -> String {
    let mut text = format!(
        "engine.cores = 0\nctl.socket = {}\nlistener.web.addr = {addr}\nlistener.web.pool = web\n\
         pool.web.balance = weighted\npool.web.overflow = reject\n",
        ctl.display()
    );
    for (name, b, weight) in backends {
        text.push_str(&format!(
            "pool.web.backend.{name}.addr = {b}\npool.web.backend.{name}.weight = {weight}\n"
        ));
    }
    text
}

#[test]
fn a_reload_under_a_steady_stream_fails_no_connection_and_applies_the_whole_change() {
    let (a, b, c) = (
        Backend::named("a"),
        Backend::named("b"),
        Backend::named("c"),
    );
    let (a_addr, b_addr, c_addr) = (a.addr, b.addr, c.addr);
    let echo_backend = Backend::echo();
    let echo = (refused_addr(), echo_backend.addr);
    let mut levee = Running::start("reload-stream", |ctl, addr| {
        with_echo(
            config_text(ctl, addr, &[("a", a_addr, 1), ("b", b_addr, 1)]),
            echo,
        )
    });
    let first = levee.pid();
    // A connection established before the reload, still open after it.
    let mut held = TcpStream::connect(echo.0).expect("held connection");
    held.set_read_timeout(Some(common::IO_TIMEOUT))
        .expect("timeout");
    let mut byte = [0u8; 1];
    held.write_all(b"1").expect("write");
    held.read_exact(&mut byte).expect("echo before the reload");
    let stream = Stream::start(levee.addr);
    wait_until("the stream flows", || stream.served() >= 50);

    // Add c, remove b, raise a's weight.
    let text = with_echo(
        config_text(
            &levee.ctl,
            levee.addr,
            &[("a", a_addr, 3), ("c", c_addr, 1)],
        ),
        echo,
    );
    std::fs::write(&levee.config, text).expect("new config");
    let before = stream.served();
    let out = levee.ctl(&["--reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = levee.pid();
    assert_ne!(first, second, "a new levee answers");
    // The connection the old levee holds goes on, then it drains and exits on its own.
    held.write_all(b"2").expect("write after the reload");
    held.read_exact(&mut byte).expect("echo after the reload");
    assert_eq!(&byte, b"2");
    drop(held);
    let status = common::wait_exit(&mut levee.child, "the old levee");
    assert!(status.success(), "the old levee exited {status}");
    wait_until("the stream flows through the new levee", || {
        stream.served() >= before + 400
    });
    let (names, failures) = stream.finish();
    // Once the old levee is gone, only the new configuration answers.
    let after: Vec<String> = (0..100)
        .map(|_| name_of(levee.addr).expect("served"))
        .collect();
    let count = |n: &str| after.iter().filter(|&x| x == n).count();
    eprintln!(
        "FIGURE reload under a stream: {} connections, {} failed; after: a {} b {} c {}",
        names.len() + failures.len(),
        failures.len(),
        count("a"),
        count("b"),
        count("c")
    );
    assert!(failures.is_empty(), "failed: {failures:?}");
    assert_eq!(count("b"), 0, "b was removed");
    assert!(count("c") > 0, "c was added");
    assert!(count("a") >= 2 * count("c"), "a's weight went up to 3");
}

#[test]
fn a_bad_file_is_refused_whole_and_the_running_levee_stays() {
    let a = Backend::named("a");
    let a_addr = a.addr;
    let levee = Running::start("reload-bad", |ctl, addr| {
        config_text(ctl, addr, &[("a", a_addr, 1)])
    });
    let pid = levee.pid();
    let good = std::fs::read_to_string(&levee.config).expect("config");
    std::fs::write(
        &levee.config,
        format!("{good}pool.web.backend.z.addr = nowhere\nthis is not a key\n"),
    )
    .expect("bad config");
    let check = common::levee()
        .args(["check", "-c"])
        .arg(&levee.config)
        .output()
        .expect("levee check");
    let out = levee.ctl(&["--reload"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The same errors as levee check gives, each of them.
    for line in String::from_utf8_lossy(&check.stderr).lines() {
        let line = line.trim();
        if !line.is_empty() {
            assert!(stderr.contains(line), "{line:?} not in {stderr}");
        }
    }
    assert_eq!(levee.pid(), pid, "the same levee serves");
    assert_eq!(name_of(levee.addr).expect("still served"), "a");
}

#[test]
fn sighup_reloads_and_a_new_listener_serves() {
    let a = Backend::named("a");
    let a_addr = a.addr;
    let api = refused_addr();
    // A metrics endpoint too: the new levee must take its socket over, as it cannot bind it
    // while the old one holds it.
    let metrics = refused_addr();
    let levee = Running::start("reload-hup", |ctl, addr| {
        format!(
            "{}stats.listen = {metrics}\n",
            config_text(ctl, addr, &[("a", a_addr, 1)])
        )
    });
    let pid = levee.pid();
    let text = format!(
        "{}listener.api.addr = {api}\nlistener.api.pool = web\n",
        std::fs::read_to_string(&levee.config).expect("config")
    );
    std::fs::write(&levee.config, text).expect("new config");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_until("a new levee answers", || {
        levee.try_pid().is_some_and(|p| p != pid)
    });
    assert_eq!(name_of(api).expect("the new listener serves"), "a");
    let mut scrape = TcpStream::connect(metrics).expect("metrics");
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut page = String::new();
    let _ = scrape.read_to_string(&mut page);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert_eq!(name_of(levee.addr).expect("the old one still does"), "a");
    let mut s = TcpStream::connect(api).expect("connect");
    let _ = s.write_all(b"x");
}

#[test]
fn an_upgrade_runs_the_new_binary_and_fails_no_connection() {
    use std::os::unix::fs::MetadataExt;
    // levee started from a copy of the binary; the upgrade installs another file at that path
    // (a different one: a few bytes more at its end) and reloads.
    let dir = temp_dir("upgrade-bin");
    let exe = dir.join("levee");
    std::fs::copy(env!("CARGO_BIN_EXE_levee"), &exe).expect("copy levee");
    let a = Backend::named("a");
    let a_addr = a.addr;
    let ctl = dir.join("ctl.sock");
    let addr = refused_addr();
    let config = dir.join("levee.conf");
    std::fs::write(&config, config_text(&ctl, addr, &[("a", a_addr, 1)])).expect("config");
    let old = std::process::Command::new(&exe)
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn levee");
    wait_until("levee listens", || TcpStream::connect(addr).is_ok());
    wait_until("levee's control socket is there", || ctl.exists());
    let mut running = Running {
        child: old,
        config: config.clone(),
        ctl: ctl.clone(),
        addr,
    };
    let stream = Stream::start(addr);
    wait_until("the stream flows", || stream.served() >= 50);

    // Install the new binary as a package manager does: a new file renamed over the old.
    let staged = dir.join("levee.new");
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_levee")).expect("read levee");
    bytes.extend_from_slice(b"\nlevee upgrade test\n");
    std::fs::write(&staged, &bytes).expect("stage");
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::rename(&staged, &exe).expect("install");
    let installed = std::fs::metadata(&exe).expect("installed").ino();

    let before = stream.served();
    let out = levee()
        .arg("upgrade")
        .arg("-s")
        .arg(&running.ctl)
        .output()
        .expect("levee upgrade");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = running.pid();
    assert_ne!(new, running.child.id());
    // The new levee runs the file installed, not the one replaced.
    let running_exe = std::fs::metadata(format!("/proc/{new}/exe")).expect("its binary");
    assert_eq!(
        running_exe.ino(),
        installed,
        "the new levee runs the new binary"
    );
    let status = running.child.wait().expect("the old levee exits");
    assert!(status.success(), "{status}");
    wait_until("the stream flows through the new levee", || {
        stream.served() >= before + 200
    });
    let (names, failures) = stream.finish();
    eprintln!(
        "FIGURE upgrade under a stream: {} connections, {} failed",
        names.len() + failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed: {failures:?}");
}

#[test]
fn what_two_levees_cannot_share_is_named_in_the_refusal() {
    let a = Backend::named("a");
    let a_addr = a.addr;
    let shm = std::path::PathBuf::from(format!("/dev/shm/levee-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&shm);
    let levee = Running::start("reload-overflow-dir", |ctl, addr| {
        format!(
            "{}overflow.dir = {}\npool.web.backend.a.max_conns = 1\n",
            config_text(ctl, addr, &[("a", a_addr, 1)]).replace("pool.web.overflow = reject\n", ""),
            shm.display()
        )
    });
    let pid = levee.pid();
    let out = levee.ctl(&["--reload"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("overflow.dir") && stderr.contains("set overflow.dir = auto"),
        "{stderr}"
    );
    assert_eq!(levee.pid(), pid, "the same levee serves");
    drop(levee);
    let _ = std::fs::remove_dir_all(&shm);
}

/// One connection from source address `from`: the name of the backend that answered.
fn name_from(from: std::net::IpAddr, addr: SocketAddr) -> String {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(from, 0).into())
        .expect("bind source");
    s.connect(&addr.into()).expect("connect");
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(common::IO_TIMEOUT))
        .expect("timeout");
    let mut got = String::new();
    s.read_to_string(&mut got).expect("answer");
    got
}

#[test]
fn maglev_moves_only_the_flows_it_must_across_a_reload() {
    let backends: Vec<Backend> = ["a", "b", "c", "d"]
        .into_iter()
        .map(Backend::named)
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let text = |ctl: &std::path::Path, addr: SocketAddr, names: &[&str]| {
        let mut text = format!(
            "engine.cores = 0\nctl.socket = {}\nlistener.web.addr = {addr}\n\
             listener.web.pool = web\npool.web.balance = maglev\npool.web.overflow = reject\n",
            ctl.display()
        );
        for (name, b) in ["a", "b", "c", "d"].iter().zip(&addrs) {
            if names.contains(name) {
                text.push_str(&format!("pool.web.backend.{name}.addr = {b}\n"));
            }
        }
        text
    };
    let mut levee = Running::start("reload-maglev", |ctl, addr| {
        text(ctl, addr, &["a", "b", "c", "d"])
    });
    // 200 flows: maglev hashes the client's address, so each source address is one flow.
    let sources: Vec<std::net::IpAddr> = (1..=200u8)
        .map(|i| std::net::Ipv4Addr::new(127, 0, 1, i).into())
        .collect();
    let before: Vec<String> = sources
        .iter()
        .map(|&ip| name_from(ip, levee.addr))
        .collect();
    std::fs::write(
        &levee.config,
        text(&levee.ctl, levee.addr, &["a", "b", "c"]),
    )
    .expect("config");
    let pid = levee.pid();
    let out = levee.ctl(&["--reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(levee.pid(), pid);
    // Once the old levee is gone: its accepts could still answer a flow the old way.
    let status = common::wait_exit(&mut levee.child, "the old levee");
    assert!(status.success(), "the old levee exited {status}");
    let after: Vec<String> = sources
        .iter()
        .map(|&ip| name_from(ip, levee.addr))
        .collect();
    let on_d = before.iter().filter(|n| *n == "d").count();
    let others_moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| *b != "d" && b != a)
        .count();
    eprintln!(
        "FIGURE maglev across a reload: 200 flows over a, b, c, d; d removed: {on_d} flows of d \
         moved, {others_moved} of the other {} moved",
        200 - on_d
    );
    assert!(after.iter().all(|n| n != "d"), "d is gone");
    assert!(on_d > 0, "some flows were on d");
    // Maglev's table keeps almost every other flow where it was (a few may move: its promise is
    // minimal disruption, not none); a table built afresh without maglev would move most.
    assert!(
        others_moved * 20 <= 200 - on_d,
        "{others_moved} of {} flows moved that did not have to",
        200 - on_d
    );
}

/// The clients queued in the old levee move to the new one, which serves them in their order,
/// and the backend's `max_conns` holds across both levees while the old one drains: the
/// connection that fills the backend, relayed by the old levee, counts in the new one too.
#[test]
fn a_reload_moves_the_queue_to_the_new_levee_and_the_cap_holds_across_both() {
    const QUEUED: usize = 4;
    let (echo, most) = counting_echo();
    let echo_addr = echo.addr;
    let levee = Running::start("reload-queue", |ctl, addr| {
        one_slot_config(ctl, addr, echo_addr)
    });
    let old = levee.pid();
    let ctl = levee.ctl.clone();
    let get = |key: &str| -> u64 {
        let out = common::levee()
            .args(["ctl", "-s"])
            .arg(&ctl)
            .args(["-n", key])
            .output()
            .expect("levee ctl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    // The one backend slot, held through the reload.
    let mut holder = hold_slot(levee.addr);
    let mut one = [0u8; 1];
    let mut queued = Vec::new();
    for i in 0..QUEUED {
        let mut s = TcpStream::connect(levee.addr).expect("connect");
        s.set_read_timeout(Some(common::IO_TIMEOUT))
            .expect("timeout");
        s.write_all(format!("q{i}").as_bytes()).expect("write");
        queued.push(s);
        wait_until("the client is queued", || {
            get("stats.pool.web.queue.depth") == i as u64 + 1
        });
    }

    let out = levee.ctl(&["--reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = levee.pid();
    assert_ne!(new, old);
    // All of them wait in the new levee's queue: the backend is full, by the old levee's count.
    wait_until("the queue has moved", || {
        get("stats.pool.web.queue.depth") == QUEUED as u64
    });
    assert_eq!(
        get("stats.pool.web.backend.e.active"),
        1,
        "the old levee's connection counts here"
    );
    // SAFETY: kill(2) with signal 0 only asks whether the process exists.
    let alive = unsafe { libc::kill(old as i32, 0) } == 0;
    assert!(alive, "the old levee still runs");
    holder.write_all(b"h").expect("the holder still writes");
    holder
        .read_exact(&mut one)
        .expect("the old levee still relays the holder");
    // Its end frees the slot, in the new levee too, and the old levee exits.
    drop(holder);
    let mut running = levee;
    let status = common::wait_exit(&mut running.child, "the old levee");
    assert!(status.success(), "{status}");

    // In their order: each is answered, and closed, before the next can have the slot.
    for (i, s) in queued.iter_mut().enumerate() {
        let mut got = [0u8; 2];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("queued client {i} is served by the new levee: {e}"));
        assert_eq!(&got, format!("q{i}").as_bytes());
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let _ = s.read(&mut got);
    }
    let (arrived, most) = (get("stats.accepted"), most.load(Ordering::SeqCst));
    eprintln!(
        "FIGURE queue moved on reload: {QUEUED} queued in the old levee, {arrived} arrived in \
         the new and were served in order; at most {most} backend connection at once (max_conns 1)"
    );
    assert_eq!(
        arrived, QUEUED as u64,
        "the new levee took every queued client"
    );
    assert_eq!(most, 1, "max_conns held across the two levees");
}

/// Reloads while clients keep arriving at a pool whose backend is full, so that some wait in
/// the queue at every reload: none fails, whichever levee queued it.
#[test]
fn reloads_under_a_stream_through_the_queue_fail_no_connection() {
    const CLIENTS: usize = 6;
    const RELOADS: usize = 3;
    let echo = common::Backend::echo();
    let echo_addr = echo.addr;
    let levee = Running::start("reload-queue-stream", |ctl, addr| {
        format!(
            "engine.cores = 0\nctl.socket = {}\nlistener.web.addr = {addr}\n\
             listener.web.pool = web\npool.web.backend.e.addr = {echo_addr}\n\
             pool.web.backend.e.max_conns = 2\noverflow.workers = 1\n\
             overflow.queue_timeout = 30s\n",
            ctl.display()
        )
    });
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, served, addr) = (stop.clone(), served.clone(), levee.addr);
            thread::spawn(move || {
                let mut failures = Vec::new();
                let started = Instant::now();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed)
                    && n < 20_000
                    && started.elapsed() < Duration::from_secs(60)
                {
                    n += 1;
                    let message = format!("{c}.{n}");
                    let answer = (|| -> std::io::Result<String> {
                        let mut s = TcpStream::connect(addr)?;
                        s.set_read_timeout(Some(common::IO_TIMEOUT))?;
                        s.write_all(message.as_bytes())?;
                        s.shutdown(std::net::Shutdown::Write)?;
                        let mut got = String::new();
                        s.read_to_string(&mut got)?;
                        Ok(got)
                    })();
                    match answer {
                        Ok(got) if got == message => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(got) => failures.push(format!("{message}: answered {got:?}")),
                        Err(e) => failures.push(format!("{message}: {e}")),
                    }
                }
                failures
            })
        })
        .collect();
    wait_until("the stream flows", || served.load(Ordering::Relaxed) >= 100);
    let mut queued_at_reload = Vec::new();
    for _ in 0..RELOADS {
        let before = levee.pid();
        let depth = levee.ctl(&["-n", "stats.pool.web.queue.queued"]);
        queued_at_reload.push(String::from_utf8_lossy(&depth.stdout).trim().to_string());
        let out = levee.ctl(&["--reload"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(levee.pid(), before);
        let now = served.load(Ordering::Relaxed);
        wait_until("the stream flows through the new levee", || {
            served.load(Ordering::Relaxed) >= now + 100
        });
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    eprintln!(
        "FIGURE {RELOADS} reloads under {CLIENTS} clients through a queue (max_conns 2): {} \
         served, {} failed; queued so far by each levee replaced: {queued_at_reload:?}",
        served.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "failed: {failures:?}");
}

/// Whether process `pid` has exited (gone, or a zombie its parent has not reaped yet: a
/// reload's levee is the child of the one it replaced).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// An echo backend that records the most connections it held at once.
fn counting_echo() -> (common::Backend, Arc<AtomicUsize>) {
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let backend = {
        let most = most.clone();
        common::Backend::spawn(move |mut s| {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(n, Ordering::SeqCst);
            let mut buf = [0u8; 256];
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 || s.write_all(&buf[..k]).is_err() {
                    break;
                }
            }
            now.fetch_sub(1, Ordering::SeqCst);
        })
    };
    (backend, most)
}

/// One pool `web` in front of `backend` with `max_conns = 1` and a queue.
fn one_slot_config(ctl: &std::path::Path, addr: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "engine.cores = 0\nengine.drain_timeout = 60s\nctl.socket = {}\n\
         listener.web.addr = {addr}\nlistener.web.pool = web\n\
         pool.web.backend.e.addr = {backend}\npool.web.backend.e.max_conns = 1\n\
         overflow.workers = 1\noverflow.queue_timeout = 60s\n",
        ctl.display()
    )
}

/// A client that holds the one backend slot: served, and kept open.
fn hold_slot(addr: SocketAddr) -> TcpStream {
    let mut holder = TcpStream::connect(addr).expect("holder");
    holder
        .set_read_timeout(Some(common::IO_TIMEOUT))
        .expect("timeout");
    holder.write_all(b"h").expect("holder writes");
    let mut one = [0u8; 1];
    holder.read_exact(&mut one).expect("the holder is served");
    holder
}

/// A queue larger than the handover socket's buffer moves whole: the old levee sends what the
/// socket takes and the rest as the new levee reads, none refused.
#[test]
fn a_queue_larger_than_the_socket_buffer_moves_whole() {
    const QUEUED: usize = 1200;
    let (echo, _) = counting_echo();
    let echo_addr = echo.addr;
    let levee = Running::start("reload-big-queue", |ctl, addr| {
        one_slot_config(ctl, addr, echo_addr)
    });
    let _holder = hold_slot(levee.addr);
    let queued: Vec<TcpStream> = (0..QUEUED)
        .map(|i| {
            let mut s = TcpStream::connect(levee.addr).expect("connect");
            s.write_all(format!("q{i}").as_bytes()).expect("write");
            s
        })
        .collect();
    let depth = || {
        let out = levee.ctl(&["-n", "stats.pool.web.queue.depth"]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
    };
    wait_until("every client is queued", || depth() == QUEUED);
    let old = levee.pid();
    let out = levee.ctl(&["--reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(levee.pid(), old);
    wait_until("the whole queue has moved", || depth() == QUEUED);
    let open = queued
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).expect("nonblocking");
            let mut b = [0u8; 1];
            matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    eprintln!(
        "FIGURE big queue moved on reload: {QUEUED} queued, {} queued in the new levee, {open} still open",
        depth()
    );
    assert_eq!(open, QUEUED, "no queued client was refused");
}

/// Two reloads while the first levee still relays: the third levee counts the first one's
/// connection, although the second one, which handed it over, has exited.
#[test]
fn max_conns_holds_across_two_reloads_while_the_first_levee_drains() {
    let (echo, most) = counting_echo();
    let echo_addr = echo.addr;
    let levee = Running::start("reload-three", |ctl, addr| {
        one_slot_config(ctl, addr, echo_addr)
    });
    let get = |key: &str| -> u64 {
        let out = levee.ctl(&["-n", key]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let mut holder = hold_slot(levee.addr);
    let first = levee.pid();
    assert!(levee.ctl(&["--reload"]).status.success());
    let second = levee.pid();
    assert!(levee.ctl(&["--reload"]).status.success());
    let third = levee.pid();
    assert!(first != second && second != third);
    // The second levee has nothing of its own to drain.
    wait_until("the second levee exits", || exited(second));
    assert!(!exited(first), "the first levee still relays the holder");
    assert_eq!(
        get("stats.pool.web.backend.e.active"),
        1,
        "the first levee's connection counts in the third"
    );
    let mut newcomer = TcpStream::connect(levee.addr).expect("newcomer");
    newcomer
        .set_read_timeout(Some(common::IO_TIMEOUT))
        .expect("timeout");
    newcomer.write_all(b"n").expect("write");
    wait_until("the newcomer queues", || {
        get("stats.pool.web.queue.depth") == 1
    });
    drop(holder.write_all(b"h"));
    let mut one = [0u8; 1];
    holder
        .read_exact(&mut one)
        .expect("the first levee still relays");
    drop(holder);
    newcomer
        .read_exact(&mut one)
        .expect("the newcomer is served once the slot is free");
    eprintln!(
        "FIGURE two reloads while the first levee drains: at most {} backend connection at once (max_conns 1)",
        most.load(Ordering::SeqCst)
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "max_conns held across three levees"
    );
}
