//! Running under systemd: the readiness protocol against a stand-in `NOTIFY_SOCKET`, across a
//! start, a reload and a stop; and the unit file in scripts/systemd, checked by
//! `systemd-analyze verify`.

mod common;

use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Backend, levee, refused_addr, temp_dir, wait_until};

/// The next notification levee sends, as its lines.
fn next(socket: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn ctl_pid(ctl: &Path) -> Option<u32> {
    let out = levee()
        .arg("ctl")
        .arg("-s")
        .arg(ctl)
        .args(["-n", "stats.pid"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[test]
fn readiness_reload_and_stop_are_told_to_systemd() {
    let dir = temp_dir("notify");
    let notify_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).expect("stand-in NOTIFY_SOCKET");
    socket
        .set_read_timeout(Some(common::IO_TIMEOUT))
        .expect("timeout");
    let backend = Backend::named("a");
    let addr = refused_addr();
    let ctl = dir.join("ctl.sock");
    let config = dir.join("levee.conf");
    std::fs::write(
        &config,
        format!(
            "engine.cores = 0\nctl.socket = {}\nlistener.web.addr = {addr}\nlistener.web.pool = web\n\
             pool.web.overflow = reject\npool.web.backend.a.addr = {}\n",
            ctl.display(),
            backend.addr
        ),
    )
    .expect("config");
    let mut child = levee()
        .args(["run", "-c"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn levee");
    let first = child.id();

    // READY=1 comes only once levee listens and its control socket answers.
    assert_eq!(next(&socket), ["READY=1"]);
    assert!(TcpStream::connect(addr).is_ok(), "ready, but not listening");
    assert_eq!(ctl_pid(&ctl), Some(first), "ready, but no control socket");

    // A reload: RELOADING=1 from the old levee, then MAINPID= and READY=1 from the new one.
    let out = levee()
        .arg("ctl")
        .arg("-s")
        .arg(&ctl)
        .arg("--reload")
        .output()
        .expect("levee ctl --reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reloading = next(&socket);
    assert_eq!(reloading[0], "RELOADING=1", "{reloading:?}");
    assert!(
        reloading[1]
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "{reloading:?}"
    );
    let second = ctl_pid(&ctl).expect("the new levee answers");
    assert_ne!(second, first);
    assert_eq!(
        next(&socket),
        [format!("MAINPID={second}"), "READY=1".to_string()]
    );
    let status = child.wait().expect("the old levee exits");
    assert!(status.success(), "{status}");

    // A refused reload ends the reloading state with READY=1.
    std::fs::write(&config, "not a configuration\n").expect("bad config");
    let out = levee()
        .arg("ctl")
        .arg("-s")
        .arg(&ctl)
        .arg("--reload")
        .output()
        .expect("levee ctl --reload");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(next(&socket)[0], "RELOADING=1");
    assert_eq!(next(&socket), ["READY=1"]);

    // SIGTERM: STOPPING=1.
    // SAFETY: kill(2) with the pid levee reported, a process this test started.
    unsafe { libc::kill(second as i32, libc::SIGTERM) };
    assert_eq!(next(&socket), ["STOPPING=1"]);
    wait_until("the new levee exits", || {
        !Path::new(&format!("/proc/{second}")).exists()
            || std::fs::read_to_string(format!("/proc/{second}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
}

#[test]
fn an_abstract_notify_socket_is_told_too() {
    let name = format!("levee-test-notify-{}", std::process::id());
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let socket = UnixDatagram::bind_addr(&addr).expect("abstract stand-in");
    socket
        .set_read_timeout(Some(common::IO_TIMEOUT))
        .expect("timeout");
    let backend = Backend::named("a");
    let listen = refused_addr();
    let dir = temp_dir("notify-abstract");
    let config = dir.join("levee.conf");
    std::fs::write(
        &config,
        format!(
            "engine.cores = 0\nctl.socket = none\nlistener.web.addr = {listen}\n\
             listener.web.pool = web\npool.web.overflow = reject\npool.web.backend.a.addr = {}\n",
            backend.addr
        ),
    )
    .expect("config");
    let mut child = levee()
        .args(["run", "-c"])
        .arg(&config)
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn levee");
    let got = next(&socket);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got, ["READY=1"]);
}

#[test]
fn the_unit_file_verifies() {
    // `systemd-analyze verify` checks the unit's syntax, directives and that its binaries
    // exist: point it at this build and at a configuration that exists.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        common::skip("systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let dir = temp_dir("unit");
    let config = dir.join("levee.conf");
    std::fs::write(&config, "listener.web.addr = 127.0.0.1:1\nlistener.web.pool = web\npool.web.backend.a.addr = 127.0.0.1:2\n")
        .expect("config");
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/systemd/levee.service"),
    )
    .expect("scripts/systemd/levee.service");
    let unit = unit
        .replace("/usr/local/bin/levee", env!("CARGO_BIN_EXE_levee"))
        .replace("/etc/levee/levee.conf", &config.display().to_string());
    let path = dir.join("levee.service");
    std::fs::write(&path, unit).expect("unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
