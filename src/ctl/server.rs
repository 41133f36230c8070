//! The control socket: a thread answering `levee ctl` requests, one connection at a time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{info, warn};

use super::{Live, MAX_LINE, MAX_REQUESTS};

/// A client that stalls this long mid-request is dropped, so it cannot hold the socket.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The running control socket; dropping it stops the thread and removes the socket file.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `path`. A socket file left by a levee that is gone is replaced; one that a
    /// running process still answers on is an error.
    pub fn start(path: &Path, live: Arc<Live>) -> io::Result<Self> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process answers on it (another levee?); set ctl.socket to another path",
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("levee-ctl".into())
                .spawn(move || serve(&listener, &live, &stop))?
        };
        info!(socket = %path.display(), "runtime control: levee ctl -s {} -a", path.display());
        Ok(Self {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, live: &Live, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, live) {
                    warn!(error = %e, "control connection failed");
                }
            }
            // Polled so the thread notices `stop` without a wake-up channel; control traffic
            // is rare and 50 ms is no one's bottleneck.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Answers every request on one connection until it ends.
fn answer(stream: UnixStream, live: &Live) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut out = io::BufWriter::new(stream.try_clone()?);
    let mut reader = BufReader::new(stream.take(u64::MAX));
    let mut line = Vec::with_capacity(256);
    for _ in 0..MAX_REQUESTS {
        line.clear();
        // Bounded: a line longer than MAX_LINE is refused rather than buffered.
        let n = reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.len() > MAX_LINE {
            writeln!(out, "! request longer than {MAX_LINE} bytes\n.")?;
            break;
        }
        let text = String::from_utf8_lossy(&line);
        for reply in respond(text.trim_end_matches(['\n', '\r']), live) {
            writeln!(out, "{reply}")?;
        }
        writeln!(out, ".")?;
        out.flush()?;
    }
    out.flush()
}

/// The reply lines to one request (without the closing `.`).
fn respond(request: &str, live: &Live) -> Vec<String> {
    let (verb, rest) = request.split_once(' ').unwrap_or((request, ""));
    let rest = rest.trim();
    match verb {
        "get" if !rest.is_empty() => vec![match live.get(rest) {
            Ok(v) => format!("= {rest} = {v}"),
            Err(e) => format!("! {e}"),
        }],
        "set" => {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            vec![match live.set(key, value) {
                Ok(v) => {
                    info!("ctl: {key} = {v}");
                    format!("= {key} = {v}")
                }
                Err(e) => format!("! {e}"),
            }]
        }
        "load" => {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            vec![match live.load(key, value) {
                Ok(v) => format!("= {key} = {v}"),
                Err(e) => format!("! {e}"),
            }]
        }
        "list" => live
            .list()
            .into_iter()
            .map(|(k, v)| format!("= {k} = {v}"))
            .collect(),
        _ => vec![format!(
            "! unknown request `{}`: expected get KEY, set KEY VALUE or list",
            request.escape_debug()
        )],
    }
}
