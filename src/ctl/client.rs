//! `levee ctl`: the client side, with sysctl's habits.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{
    self,
    registry::{self, Lookup},
};

/// What `levee ctl` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `-a`: every key and counter.
    List,
    /// `KEY...`: these keys.
    Get(Vec<String>),
    /// `-w KEY=VALUE...`
    Set(Vec<String>),
    /// `-p FILE`: every key in a file in configuration syntax, set where it differs.
    Load(PathBuf),
}

/// Runs `action` against the levee listening on `socket`, printing `KEY = VALUE` lines (values
/// only with `values_only`) to stdout and errors to stderr. Returns the exit status: 0, 1 when
/// levee refused something, 2 when it could not be reached or the input was bad.
pub fn run(socket: &Path, action: &Action, values_only: bool) -> u8 {
    let requests = match requests(action) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("levee ctl: {e}");
            return 2;
        }
    };
    let replies = match exchange(socket, &requests) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}", unreachable("levee ctl", socket, &e));
            return 2;
        }
    };
    let mut status = 0;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for line in replies.iter().flatten() {
        if let Some(pair) = line.strip_prefix("= ") {
            let shown = if values_only {
                pair.split_once(" = ").map_or(pair, |(_, v)| v)
            } else {
                pair
            };
            let _ = writeln!(out, "{shown}");
        } else if let Some(err) = line.strip_prefix("! ") {
            eprintln!("levee ctl: {err}");
            status = 1;
        }
    }
    status
}

/// The value of one key of the levee listening on `socket`, for other commands of levee
/// (`levee worker` asks for `stats.overflow.dir`).
pub fn query(socket: &Path, key: &str) -> Result<String, String> {
    plain("key", key)?;
    let replies = exchange(socket, &[format!("get {key}")]).map_err(|e| e.to_string())?;
    for line in replies.iter().flatten() {
        if let Some(pair) = line.strip_prefix("= ") {
            return Ok(pair.split_once(" = ").map_or(pair, |(_, v)| v).to_string());
        }
        if let Some(err) = line.strip_prefix("! ") {
            return Err(err.to_string());
        }
    }
    Err(format!("no answer for {key}"))
}

/// Every key and counter of the levee listening on `socket`: the reply lines of one `list`
/// request (`= KEY = VALUE`), for `levee top`.
pub fn list(socket: &Path) -> io::Result<Vec<String>> {
    Ok(exchange(socket, &["list".to_string()])?
        .into_iter()
        .flatten()
        .collect())
}

/// What a command of levee (`command`: `levee ctl`, `levee top`) says when the levee on
/// `socket` cannot be reached.
pub fn unreachable(command: &str, socket: &Path, error: &dyn std::fmt::Display) -> String {
    format!(
        "{command}: cannot talk to levee on {}: {error} (is levee running, with ctl.socket set \
         to this path? -s PATH picks another)",
        socket.display()
    )
}

/// The protocol lines for an action.
fn requests(action: &Action) -> Result<Vec<String>, String> {
    Ok(match action {
        Action::List => vec!["list".into()],
        Action::Get(keys) => keys
            .iter()
            .map(|k| plain("key", k).map(|k| format!("get {}", k.trim())))
            .collect::<Result<_, _>>()?,
        Action::Set(pairs) => pairs
            .iter()
            .map(|p| match plain("argument", p)?.split_once('=') {
                Some((k, v)) => Ok(format!("set {} {}", k.trim(), v.trim())),
                None => Err(format!("`{p}`: expected KEY=VALUE")),
            })
            .collect::<Result<_, _>>()?,
        Action::Load(path) => load(path)?,
    })
}

/// `text` if it holds no control character. The protocol is one request per line: a newline
/// inside a key or value would end the request there and make the rest a second request, one
/// levee would perform and `levee ctl` not report.
fn plain<'a>(what: &str, text: &'a str) -> Result<&'a str, String> {
    match text.chars().find(|c| c.is_control()) {
        None => Ok(text),
        Some(c) => Err(format!(
            "{what} `{}` contains the control character {}; keys and values are plain text",
            text.escape_debug(),
            c.escape_debug()
        )),
    }
}

/// `set` requests for each `key = value` line of `path` whose value differs from the running
/// one is decided by levee; here only the syntax and the key names are checked, like sysctl -p.
/// Lines whose value already matches are sent too: levee answers them without change. The file
/// is read as levee reads a configuration: bounded in size and, for a pipe, in time.
fn load(path: &Path) -> Result<Vec<String>, String> {
    let text = config::read_text(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("{}: expected key = value", at()));
        };
        let (key, optional) = match key.trim() {
            k if k.starts_with('-') => (k[1..].trim(), true),
            k => (k, false),
        };
        plain("key", key).map_err(|e| format!("{}: {e}", at()))?;
        if !matches!(registry::lookup(key), Lookup::Found { .. }) {
            if optional {
                continue;
            }
            return Err(format!("{}: {key}: unknown key", at()));
        }
        let value = plain("value", value.trim()).map_err(|e| format!("{}: {e}", at()))?;
        out.push(format!("load {key} {value}"));
    }
    Ok(out)
}

/// Sends every request on one connection and collects each one's reply lines.
fn exchange(socket: &Path, requests: &[String]) -> io::Result<Vec<Vec<String>>> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut replies = Vec::with_capacity(requests.len());
    for request in requests {
        writeln!(writer, "{request}")?;
        let mut reply = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "levee closed the connection",
                ));
            }
            let line = line.trim_end_matches('\n');
            if line == "." {
                break;
            }
            reply.push(line.to_string());
        }
        replies.push(reply);
    }
    Ok(replies)
}

/// `levee ctl --reload`: asks the levee on `socket` to reload, then waits until a new levee
/// answers there (exit 0) or the reload was refused (exit 1, with levee's reasons); 2 when
/// levee cannot be reached.
pub fn reload(socket: &Path) -> u8 {
    let ask = |key: &str| query(socket, key);
    let (before_pid, before_failures) = match (ask("stats.pid"), ask("stats.reload.failures")) {
        (Ok(pid), Ok(failures)) => (pid, failures),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{}", unreachable("levee ctl", socket, &e));
            return 2;
        }
    };
    match exchange(socket, &["reload".to_string()]) {
        Ok(replies) => {
            if let Some(err) = replies.iter().flatten().find_map(|l| l.strip_prefix("! ")) {
                eprintln!("levee ctl: {err}");
                return 1;
            }
        }
        Err(e) => {
            eprintln!("levee ctl: reload: {e}");
            return 2;
        }
    }
    // A new levee answers on the same socket once it serves; a refusal is counted by the old
    // one. Either comes within the handover's own deadline (30 s) and a drain's start.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        match (ask("stats.pid"), ask("stats.reload.failures")) {
            (Ok(pid), _) if pid != before_pid => {
                println!("reloaded: levee {pid} serves now; levee {before_pid} drains and exits");
                return 0;
            }
            (Ok(_), Ok(failures)) if failures != before_failures => {
                let why = ask("stats.reload.last_error").unwrap_or_default();
                eprintln!("levee ctl: reload refused, the running configuration stays: {why}");
                return 1;
            }
            // Between the two levees, or busy: ask again.
            _ => {}
        }
    }
    eprintln!("levee ctl: no new levee answered within 60 s, and no refusal was counted");
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_character_in_a_key_or_value_is_refused() {
        let smuggled = "engine.idle_timeout=5s\nset engine.connect_timeout 1s".to_string();
        let err = requests(&Action::Set(vec![smuggled])).expect_err("newline");
        assert!(
            err.contains(r"`engine.idle_timeout=5s\nset engine.connect_timeout 1s`"),
            "{err}"
        );
        for bad in ["log.level\r", "log.level\0", "log\x1b.level"] {
            assert!(requests(&Action::Get(vec![bad.into()])).is_err(), "{bad:?}");
            assert!(requests(&Action::Set(vec![format!("{bad}=x")])).is_err());
        }
        assert!(query(Path::new("/nonexistent"), "a\nb").is_err_and(|e| e.contains("control")));
        assert_eq!(
            requests(&Action::Set(vec![" log.level = warn ".into()])),
            Ok(vec!["set log.level warn".to_string()])
        );
    }

    #[test]
    fn load_refuses_a_device() {
        let err = requests(&Action::Load("/dev/zero".into())).expect_err("a device");
        assert!(
            err.contains("/dev/zero") && err.contains("character device"),
            "{err}"
        );
    }
}
