//! `levee top`: its frame against a recorded pair of snapshots, and the command against a real
//! `levee run` as an operator runs it.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Backend, IO_TIMEOUT, levee, read_all, refused_addr, temp_dir};
use levee::top::{Snapshot, render};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/top")
        .join(name)
}

fn snapshot(name: &str) -> Snapshot {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture");
    Snapshot::from_lines(text.lines())
}

/// The frame of two recorded `levee ctl -a` readings, 2 s apart, is exactly the committed one
/// (how the readings were made and edited: tests/fixtures/top/README.md).
#[test]
fn the_frame_of_two_recorded_snapshots_is_the_golden_one() {
    let frame = render(
        &snapshot("before.txt"),
        &snapshot("after.txt"),
        Duration::from_secs(2),
        100,
    );
    let golden = fixture("frame.txt");
    if std::env::var_os("LEVEE_BLESS").is_some() {
        std::fs::write(&golden, &frame).expect("write frame.txt");
    }
    let expected = std::fs::read_to_string(&golden).expect("frame.txt");
    assert!(
        frame == expected,
        "the frame differs from tests/fixtures/top/frame.txt (LEVEE_BLESS=1 writes it):\n\
         --- got\n{frame}--- expected\n{expected}"
    );
    // The README shows this frame as its example: it stays the frame levee draws.
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    assert!(
        readme.contains(&format!("```\n{expected}```\n")),
        "README.md's example frame is not tests/fixtures/top/frame.txt"
    );
}

/// A levee in front of two answering backends, `a` (capped) and `b`, and a third, `gone`,
/// where nothing listens, which its health checks take down.
struct Running {
    child: Child,
    socket: PathBuf,
    addr: SocketAddr,
    log: Output,
    _backends: [Backend; 2],
}

impl Running {
    fn start(name: &str) -> Self {
        let backends = [Backend::named("a"), Backend::named("b")];
        let dir = temp_dir(name);
        let socket = dir.join("ctl.sock");
        let config = dir.join("levee.conf");
        let addr = refused_addr();
        std::fs::write(
            &config,
            format!(
                "engine.cores = 0\nengine.drain_timeout = 1s\nctl.socket = {}\n\
                 overflow.workers = 0\n\
                 listener.web.addr = {addr}\nlistener.web.pool = web\n\
                 pool.web.balance = round_robin\npool.web.check.type = tcp\n\
                 pool.web.check.interval = 100ms\npool.web.check.fall = 1\n\
                 pool.web.backend.a.addr = {}\npool.web.backend.a.max_conns = 16\n\
                 pool.web.backend.b.addr = {}\npool.web.backend.gone.addr = {}\n",
                socket.display(),
                backends[0].addr,
                backends[1].addr,
                refused_addr(),
            ),
        )
        .expect("config");
        let mut child = levee()
            .arg("run")
            .arg("-c")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn levee");
        let log = Output::collect(child.stderr.take().expect("stderr"));
        let running = Self {
            child,
            socket,
            addr,
            log,
            _backends: backends,
        };
        running.wait_for("the control socket", || {
            UnixStream::connect(&running.socket).is_ok()
        });
        running
    }

    /// One key's value, read with `levee ctl -n`.
    fn get(&self, key: &str) -> String {
        let out = levee()
            .args(["ctl", "-n", "-s"])
            .arg(&self.socket)
            .arg(key)
            .output()
            .expect("levee ctl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Polls `done` until it holds; fails the test, with levee's log, past [`IO_TIMEOUT`] or
    /// when levee exits.
    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + IO_TIMEOUT;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {IO_TIMEOUT:?}; levee said:\n{}",
                self.log.text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn top(&self, args: &[&str]) -> std::process::Command {
        let mut top = levee();
        top.arg("top").arg("-s").arg(&self.socket).args(args);
        top
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a child wrote to a pipe so far, read by a thread of its own.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<String>>);

impl Output {
    fn collect(pipe: impl Read + Send + 'static) -> Self {
        let out = Self::default();
        let text = out.0.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            loop {
                let mut chunk = Vec::new();
                match reader.read_until(b'\n', &mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => text
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&String::from_utf8_lossy(&chunk)),
                }
            }
        });
        out
    }

    fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, signal).expect("kill");
}

/// The words of the frame's row for `backend`.
fn row<'a>(frame: &'a str, backend: &str) -> Vec<&'a str> {
    frame
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.first() == Some(&backend))
        .unwrap_or_else(|| panic!("no row for backend {backend} in:\n{frame}"))
}

#[test]
fn once_shows_each_backend_with_its_state_after_traffic() {
    let l = Running::start("top-once");
    l.wait_for("backend gone down", || {
        l.get("stats.pool.web.backend.gone.status") == "down"
    });
    let mut answers = Vec::new();
    for _ in 0..4 {
        let mut c = common::connect(l.addr);
        answers.push(String::from_utf8_lossy(&read_all(&mut c).expect("read")).into_owned());
    }
    assert!(answers.iter().all(|a| a == "a" || a == "b"), "{answers:?}");
    l.wait_for("4 connections accepted", || {
        l.get("stats.accepted").parse::<u64>().unwrap_or(0) >= 4
    });

    let out = l
        .top(&["--once", "--interval", "100ms"])
        .output()
        .expect("levee top");
    let frame = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !frame.contains('\x1b'),
        "--once writes no escapes: {frame:?}"
    );
    assert!(
        frame.starts_with(&format!("levee {}  accepted ", l.child.id())),
        "{frame}"
    );
    assert!(
        frame
            .lines()
            .any(|line| line.starts_with("pool web ") && line.contains("  queue 0  ")),
        "{frame}"
    );
    let (a, b, gone) = (row(&frame, "a"), row(&frame, "b"), row(&frame, "gone"));
    assert_eq!(a[1], "up", "{frame}");
    assert_eq!(b[1], "up", "{frame}");
    assert_eq!(gone[1], "down", "{frame}");
    // ACTIVE/MAX: a capped backend shows its cap, an uncapped one a dash.
    assert!(a[4].ends_with("/16"), "{frame}");
    assert!(b[4].ends_with("/-"), "{frame}");
}

#[test]
fn a_levee_that_cannot_be_reached_is_said_like_ctl_and_exits_2() {
    let socket = temp_dir("top-nobody").join("nobody.sock");
    for args in [&["--once"][..], &[][..]] {
        let out = levee()
            .arg("top")
            .arg("-s")
            .arg(&socket)
            .args(args)
            .output()
            .expect("levee top");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with(&format!(
                "levee top: cannot talk to levee on {}: ",
                socket.display()
            )) && err.contains("-s PATH picks another"),
            "{err}"
        );
    }
}

#[test]
fn redraws_until_ctrl_c_and_exits_1_when_levee_goes_away() {
    const CLEAR: &str = "\x1b[H\x1b[2J";
    let mut l = Running::start("top-watch");
    let frames = |out: &Output| out.text().matches(CLEAR).count();

    let mut top = l
        .top(&["--interval", "100ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("levee top");
    let out = Output::collect(top.stdout.take().expect("stdout"));
    l.wait_for("a second frame", || frames(&out) >= 2);
    let last = out.text();
    let last = &last[last.rfind(CLEAR).unwrap_or(0)..];
    assert!(last.contains("BACKEND"), "{last:?}");
    signal(&top, nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        common::wait_exit(&mut top, "levee top after SIGINT").code(),
        Some(0)
    );

    let mut top = l
        .top(&["--interval", "100ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("levee top");
    let out = Output::collect(top.stdout.take().expect("stdout"));
    let err = Output::collect(top.stderr.take().expect("stderr"));
    l.wait_for("a first frame", || frames(&out) >= 1);
    signal(&l.child, nix::sys::signal::Signal::SIGTERM);
    assert!(common::wait_exit(&mut l.child, "levee after SIGTERM").success());
    let status = common::wait_exit(&mut top, "levee top after levee stopped");
    assert_eq!(status.code(), Some(1), "{}", err.text());
    // The pipe's reader may still hold the last line.
    l.wait_for("levee top's message", || err.text().ends_with('\n'));
    assert!(
        err.text().starts_with(&format!(
            "levee top: levee on {} went away: ",
            l.socket.display()
        )),
        "{}",
        err.text()
    );
}
