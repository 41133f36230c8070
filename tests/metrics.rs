//! `GET /metrics` on `stats.listen` against a running `levee run`, read over real sockets and
//! parsed by a Prometheus text-format parser (`prometheus-parse`), then checked against what
//! `levee ctl` says and what the test itself did.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Backend, IO_TIMEOUT, levee, refused_addr, temp_dir, wait_until};
use prometheus_parse::{LineInfo, Scrape, Value};

/// What each backend answers, and what each client sends.
const REPLY: &[u8] = b"hello from the backend";
const REQUEST: &[u8] = b"hello from the client";

/// A running `levee run` in front of two backends that answer [`REPLY`] to each connection.
struct Running {
    child: Child,
    socket: PathBuf,
    addr: SocketAddr,
    /// A second listener, `api`, on the same pool.
    api: SocketAddr,
    metrics: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    _backends: [Backend; 2],
}

impl Running {
    /// With `/metrics` on a fresh loopback port, or, for `listen: false`, `stats.listen` left
    /// at its default.
    fn start(name: &str, listen: bool) -> Self {
        let backends = [reply_backend(), reply_backend()];
        let dir = temp_dir(&format!("metrics-{name}"));
        let socket = dir.join("ctl.sock");
        let addr = refused_addr();
        let api = refused_addr();
        let metrics = listen.then(refused_addr);
        let mut text = format!(
            "engine.cores = 0\nctl.socket = {}\nlistener.web.addr = {addr}\n\
             listener.web.pool = web\nlistener.api.addr = {api}\nlistener.api.pool = web\n\
             pool.web.balance = round_robin\n\
             pool.web.backend.a.addr = {}\npool.web.backend.b.addr = {}\n",
            socket.display(),
            backends[0].addr,
            backends[1].addr
        );
        if let Some(m) = metrics {
            text.push_str(&format!("stats.listen = {m}\n"));
        }
        let config = dir.join("levee.conf");
        std::fs::write(&config, text).expect("config");
        let mut child = levee()
            .arg("run")
            .arg("-c")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn levee");
        let log = Arc::new(Mutex::new(String::new()));
        {
            let log = log.clone();
            let pipe = child.stderr.take().expect("stderr");
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let mut running = Self {
            child,
            socket,
            addr,
            api,
            metrics,
            log,
            _backends: backends,
        };
        let deadline = Instant::now() + IO_TIMEOUT;
        while UnixStream::connect(&running.socket).is_err()
            || metrics.is_some_and(|m| TcpStream::connect(m).is_err())
        {
            assert!(
                Instant::now() < deadline && matches!(running.child.try_wait(), Ok(None)),
                "levee never answered; it said:\n{}",
                running.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        running
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `levee ctl -a`, as a map of key to value.
    fn ctl_all(&self) -> HashMap<String, String> {
        let out = levee()
            .args(["ctl", "-s"])
            .arg(&self.socket)
            .arg("-a")
            .output()
            .expect("levee ctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn stat(&self, key: &str) -> u64 {
        let all = self.ctl_all();
        let v = all.get(key).unwrap_or_else(|| panic!("{key} not listed"));
        v.parse().unwrap_or_else(|_| panic!("{key} = {v}"))
    }

    fn metrics(&self) -> SocketAddr {
        self.metrics.expect("started with stats.listen")
    }

    /// `count` connections through levee, each sending [`REQUEST`] and reading [`REPLY`].
    fn connections(&self, count: usize) {
        self.connections_to(self.addr, count);
    }

    /// As [`Running::connections`], to listener address `addr`.
    fn connections_to(&self, addr: SocketAddr, count: usize) {
        for _ in 0..count {
            let mut c = TcpStream::connect(addr).expect("connect through levee");
            c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            c.write_all(REQUEST).expect("send");
            c.shutdown(Shutdown::Write).expect("shutdown");
            let mut got = Vec::new();
            c.read_to_end(&mut got).expect("reply");
            assert_eq!(got, REPLY);
        }
    }

    /// Waits until every one of `count` connections is closed and in the histograms (they
    /// are handed over at a forwarder's tick).
    fn settled(&self, count: u64) {
        wait_until("every connection is closed and in the histograms", || {
            let all = self.ctl_all();
            let n = |k: &str| all.get(k).and_then(|v| v.parse::<u64>().ok());
            n("stats.active") == Some(0)
                && n("stats.closed.done") == Some(count)
                && n("stats.pool.web.duration_ms.count") == Some(count)
                && n("stats.pool.web.connect_time_us.count") == Some(count)
        });
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM, so levee removes its socket and shared memory; SIGKILL if it hangs.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + IO_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backend that reads the client's request to its end, then answers [`REPLY`] and closes.
fn reply_backend() -> Backend {
    Backend::spawn(|mut s| {
        let mut request = Vec::new();
        if s.read_to_end(&mut request).is_ok() {
            let _ = s.write_all(REPLY);
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// An HTTP response: status code, head, body.
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Sends `request` on a new connection to `addr` and reads the response to the end.
fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(request).expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    Response {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    }
}

fn get_metrics(addr: SocketAddr) -> String {
    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: levee\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        r.head
    );
    let length = format!("Content-Length: {}", r.body.len());
    assert!(r.head.contains(&length), "{} vs {length}", r.head);
    String::from_utf8(r.body).expect("utf-8")
}

/// Parses a scrape with the parser, having checked that it reads every line: the parser skips
/// lines it does not understand, which would hide a malformed one.
fn parse(text: &str) -> Scrape {
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        match LineInfo::parse(line) {
            LineInfo::Sample { value, .. } => {
                assert!(
                    value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN",
                    "{line}"
                );
            }
            other => panic!("not a sample line: {line:?} ({other:?})"),
        }
    }
    assert!(text.ends_with('\n'));
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("a Prometheus scrape")
}

/// A sample's plain value, whatever its type.
fn scalar(v: &Value) -> Option<f64> {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => Some(*x),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}

/// The `levee ctl` key a Prometheus series stands for, and what its value is in ctl's units
/// (1000 for seconds that ctl shows in milliseconds): the naming contract of the endpoint,
/// written out independently of levee's own table. `None` for a family this test does not
/// know, which fails the test.
fn ctl_key(metric: &str, labels: &HashMap<String, String>) -> Option<(String, f64)> {
    let l = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let (pool, backend) = (l("pool"), l("backend"));
    let queue = |what: &str| format!("stats.pool.{pool}.queue.{what}");
    let back = |what: &str| format!("stats.pool.{pool}.backend.{backend}.{what}");
    let plain = |key: &str| Some((key.to_string(), 1.0));
    match metric {
        "levee_accepted_connections_total" => plain("stats.accepted"),
        "levee_listener_accepted_connections_total" => {
            Some((format!("stats.listener.{}.accepted", l("listener")), 1.0))
        }
        "levee_active_connections" => plain("stats.active"),
        "levee_client_to_backend_bytes_total" => plain("stats.bytes_in"),
        "levee_backend_to_client_bytes_total" => plain("stats.bytes_out"),
        "levee_connect_attempts_total" => plain("stats.connect_attempts"),
        "levee_connect_failures_total" => plain("stats.connect_failures"),
        "levee_connect_timeouts_total" => plain("stats.connect_timeouts"),
        "levee_accept_errors_total" => plain("stats.accept_errors"),
        "levee_ring_errors_total" => plain("stats.ring_errors"),
        "levee_splices_total" => plain("stats.splices"),
        "levee_reload_failures_total" => plain("stats.reload.failures"),
        "levee_full_events_total" => plain("stats.full_events"),
        "levee_forwarders_full" => plain("stats.forwarders_full"),
        "levee_closed_connections_total" => Some((format!("stats.closed.{}", l("reason")), 1.0)),
        "levee_overflow_workers_attached" => plain("stats.overflow.workers_attached"),
        "levee_pool_queue_depth" => Some((queue("depth"), 1.0)),
        "levee_pool_queue_held_by_workers" => Some((queue("held_by_workers"), 1.0)),
        "levee_pool_queue_oldest_wait_seconds" => Some((queue("oldest_wait_ms"), 1000.0)),
        "levee_pool_queue_drain_rate" => Some((queue("drain_rate"), 1.0)),
        "levee_pool_queue_predicted_wait_seconds" => Some((queue("predicted_wait_ms"), 1000.0)),
        "levee_pool_queued_connections_total" => Some((queue("queued"), 1.0)),
        "levee_pool_queue_left_total" => Some((queue(&l("how")), 1.0)),
        "levee_pool_queue_refused_total" => Some((queue(&format!("refused.{}", l("why"))), 1.0)),
        "levee_pool_queue_requeued_total" => Some((queue("requeued"), 1.0)),
        "levee_pool_queue_dead_letters" => Some((queue("dead_letters"), 1.0)),
        "levee_pool_queue_wait_seconds_count" => Some((queue("wait_us.count"), 1.0)),
        "levee_pool_connect_time_seconds_count" => {
            Some((format!("stats.pool.{pool}.connect_time_us.count"), 1.0))
        }
        "levee_pool_connection_duration_seconds_count" => {
            Some((format!("stats.pool.{pool}.duration_ms.count"), 1.0))
        }
        "levee_pool_connection_client_to_backend_bytes_count" => {
            Some((format!("stats.pool.{pool}.bytes_in.count"), 1.0))
        }
        "levee_pool_connection_backend_to_client_bytes_count" => {
            Some((format!("stats.pool.{pool}.bytes_out.count"), 1.0))
        }
        "levee_backend_active_connections" => Some((back("active"), 1.0)),
        "levee_backend_effective_weight" => Some((back("effective_weight"), 1.0)),
        "levee_backend_checks_total" => Some((back(&format!("checks_{}", l("result"))), 1.0)),
        "levee_backend_downs_total" => Some((back("downs"), 1.0)),
        "levee_backend_ups_total" => Some((back("ups"), 1.0)),
        "levee_backend_ejections_total" => Some((back("ejections"), 1.0)),
        "levee_backend_ejections_held_back_total" => Some((back("ejections_held_back"), 1.0)),
        _ => None,
    }
}

/// `stats.*` keys ctl shows that /metrics need not: the setting, a path, and quantiles of
/// histograms that are exported whole.
fn ctl_only(key: &str) -> bool {
    key == "stats.listen"
        || key == "stats.overflow.dir"
        // The process, and the text of the last refused reload: no series of their own.
        || key == "stats.pid"
        || key == "stats.reload.last_error"
        || [".p50", ".p90", ".p99", ".p999", ".max"]
            .iter()
            .any(|q| key.ends_with(q))
        || (key.contains(".queue.wait_") && key.ends_with("_ms"))
}

/// (a) After traffic, every series /metrics serves equals what `levee ctl` says for the same
/// key at the same quiescent moment, and every counter and gauge ctl shows is served.
#[test]
fn metrics_parse_and_equal_what_ctl_reports() {
    let l = Running::start("equal", true);
    l.connections(12);
    l.settled(12);
    // Quiescent: ctl reads the same before and after the scrape.
    let mut tries = 0;
    let (before, text) = loop {
        let before = l.ctl_all();
        let text = get_metrics(l.metrics());
        if before == l.ctl_all() {
            break (before, text);
        }
        tries += 1;
        assert!(tries < 100, "levee's statistics never came to rest");
    };
    let scrape = parse(&text);
    let mut covered = std::collections::HashSet::new();
    let mut families = std::collections::HashSet::new();
    for sample in &scrape.samples {
        families.insert(sample.metric.clone());
        let labels: HashMap<String, String> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if sample.metric == "levee_backend_status" {
            let key = format!(
                "stats.pool.{}.backend.{}.status",
                labels["pool"], labels["backend"]
            );
            let on = before.get(&key) == Some(&labels["status"]);
            assert_eq!(
                scalar(&sample.value),
                Some(f64::from(u8::from(on))),
                "{key}"
            );
            covered.insert(key);
            continue;
        }
        if let Value::Histogram(buckets) = &sample.value {
            // Its _count is checked against ctl below; here, that it is a histogram.
            assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
            assert_eq!(buckets.last().map(|b| b.less_than), Some(f64::INFINITY));
            continue;
        }
        if sample.metric.ends_with("_sum") {
            continue;
        }
        let (key, per_unit) = ctl_key(&sample.metric, &labels)
            .unwrap_or_else(|| panic!("{} is not a family this test knows", sample.metric));
        let ctl = before.get(&key).unwrap_or_else(|| {
            panic!(
                "{} stands for {key}, which ctl does not list",
                sample.metric
            )
        });
        let want: f64 = ctl.parse().unwrap_or_else(|_| panic!("{key} = {ctl}"));
        let got = scalar(&sample.value).expect("a plain value");
        // Seconds times 1000 may miss a whole millisecond by a rounding error, no more.
        assert!(
            (got * per_unit - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{} = {got}, but ctl {key} = {ctl}",
            sample.metric
        );
        assert!(
            !matches!(sample.value, Value::Untyped(_)) || sample.metric.ends_with("_count"),
            "{} has no # TYPE",
            sample.metric
        );
        covered.insert(key);
    }
    for key in before.keys().filter(|k| k.starts_with("stats.")) {
        assert!(
            covered.contains(key) || ctl_only(key),
            "ctl shows {key}, /metrics does not"
        );
    }
    // The ones this run must have had something in.
    assert_eq!(before["stats.accepted"], "12");
    assert_eq!(before["stats.listener.web.accepted"], "12");
    assert_eq!(before["stats.listener.api.accepted"], "0");
    for family in [
        "levee_accepted_connections_total",
        "levee_listener_accepted_connections_total",
        "levee_closed_connections_total",
        "levee_backend_status",
        "levee_pool_connect_time_seconds",
        "levee_pool_connection_duration_seconds",
        "levee_overflow_workers_attached",
        "levee_pool_queue_depth",
        "levee_pool_queue_left_total",
        "levee_pool_queue_wait_seconds",
    ] {
        assert!(families.contains(family), "{family} missing");
        assert!(scrape.docs.contains_key(family), "{family} has no # HELP");
    }
}

/// (b) The histograms count every connection made, their byte sums equal the byte counters,
/// and a connect takes a measurable time.
#[test]
fn histograms_count_every_connection_and_sum_its_bytes() {
    let l = Running::start("histograms", true);
    let n = 25;
    l.connections(n);
    l.settled(n as u64);
    let scrape = parse(&get_metrics(l.metrics()));
    let find = |metric: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && s.labels.get("pool") == Some("web"))
            .unwrap_or_else(|| panic!("{metric} missing"))
    };
    for name in [
        "levee_pool_connect_time_seconds",
        "levee_pool_connection_duration_seconds",
        "levee_pool_connection_client_to_backend_bytes",
        "levee_pool_connection_backend_to_client_bytes",
    ] {
        let Value::Histogram(buckets) = &find(name).value else {
            panic!("{name} is not a histogram");
        };
        assert_eq!(
            buckets.last().map(|b| b.count),
            Some(n as f64),
            "{name} +Inf"
        );
        assert_eq!(
            scalar(&find(&format!("{name}_count")).value),
            Some(n as f64)
        );
    }
    let sum = |name: &str| scalar(&find(&format!("{name}_sum")).value).expect("a sum");
    let bytes_in = sum("levee_pool_connection_client_to_backend_bytes");
    let bytes_out = sum("levee_pool_connection_backend_to_client_bytes");
    assert_eq!(bytes_in, (n * REQUEST.len()) as f64);
    assert_eq!(bytes_out, (n * REPLY.len()) as f64);
    assert_eq!(l.stat("stats.bytes_in") as f64, bytes_in);
    assert_eq!(l.stat("stats.bytes_out") as f64, bytes_out);
    // Every connection carried the same bytes: its quantiles say so, to the histogram's
    // precision.
    let p50_in = l.stat("stats.pool.web.bytes_in.p50");
    assert!(p50_in.abs_diff(REQUEST.len() as u64) <= 1, "{p50_in}");
    assert!(l.stat("stats.pool.web.connect_time_us.p50") > 0);
    assert!(sum("levee_pool_connect_time_seconds") > 0.0);
    assert_eq!(l.stat("stats.pool.web.connect_time_us.count"), n as u64);
    assert_eq!(l.stat("stats.pool.web.bytes_out.count"), n as u64);
}

/// TCP ports `pid` listens on: its socket descriptors matched against the kernel's tables of
/// listening sockets.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state == "0A" && inodes.contains(*inode) {
                let port = local
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports.sort_unstable();
    ports
}

/// (c) With `stats.listen = none` (the default) levee listens on its listeners and nothing
/// else; with an address, on that one more.
#[test]
fn stats_listen_none_serves_nothing() {
    let off = Running::start("off", false);
    assert_eq!(off.ctl_all()["stats.listen"], "none");
    let mut want = vec![off.addr.port(), off.api.port()];
    want.sort_unstable();
    assert_eq!(listening_ports(off.child.id()), want);
    off.connections(1);

    let on = Running::start("on", true);
    assert_eq!(on.ctl_all()["stats.listen"], on.metrics().to_string());
    let mut want = vec![on.addr.port(), on.api.port(), on.metrics().port()];
    want.sort_unstable();
    assert_eq!(listening_ports(on.child.id()), want);
    // ctl reads the key and refuses to change it at runtime, as for any start-only key.
    let out = levee()
        .args(["ctl", "-s"])
        .arg(&on.socket)
        .args(["-w", "stats.listen=none"])
        .output()
        .expect("levee ctl");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stats.listen: cannot change at runtime"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (d) Garbage, a huge request and clients that send nothing do not keep the endpoint from
/// answering the next client; other paths and methods get 404 and 405.
#[test]
fn bad_clients_do_not_stop_the_endpoint() {
    let l = Running::start("bad", true);
    let addr = l.metrics();

    // A client that connects and never sends anything, held open throughout.
    let mut silent = TcpStream::connect(addr).expect("connect");
    silent.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");

    let r = exchange(addr, b"\x00\x01\x02 garbage\xff\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.head);
    let r = exchange(addr, b"GET /metrics HTTP/9.9\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.head);
    let r = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
    );
    assert_eq!(r.status, 405, "{}", r.head);
    assert!(r.head.contains("Allow: GET, HEAD"), "{}", r.head);
    let r = exchange(addr, b"GET /admin HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 404, "{}", r.head);
    let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.body.is_empty());

    // A request head of a megabyte: levee stops reading at its bound and answers 431; the
    // client may see that or a reset, as it keeps sending.
    let huge = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX-Filler: ");
        let _ = s.write_all(&vec![b'a'; 1 << 20]);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    });
    let got = huge.join().expect("huge client");
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // The silent one is still open, and the endpoint answers the next client.
    assert!(parse(&get_metrics(addr)).samples.len() > 10);

    // More silent clients than the endpoint holds at once: the oldest make room for new
    // ones, so a scraper still gets in.
    let crowd: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    assert!(parse(&get_metrics(addr)).samples.len() > 10);
    drop(crowd);

    // A client that never sends anything is closed in the end (here, or when the crowd
    // pushed it out), rather than held forever.
    let mut byte = [0u8; 1];
    match silent.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("the endpoint sent something to a client that asked nothing"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(parse(&get_metrics(addr)).samples.len() > 10);
    assert!(!l.log().contains("panicked"), "{}", l.log());
}

/// Each listener counts what it accepted: the counts split as the clients did, and /metrics
/// labels them by listener.
#[test]
fn each_listener_counts_what_it_accepted() {
    let l = Running::start("listeners", true);
    l.connections(3);
    l.connections_to(l.api, 2);
    l.settled(5);
    assert_eq!(l.stat("stats.listener.web.accepted"), 3);
    assert_eq!(l.stat("stats.listener.api.accepted"), 2);
    assert_eq!(l.stat("stats.accepted"), 5);
    let scrape = parse(&get_metrics(l.metrics()));
    let per_listener = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "levee_listener_accepted_connections_total"
                    && s.labels.get("listener") == Some(name)
            })
            .and_then(|s| scalar(&s.value))
    };
    assert_eq!(per_listener("web"), Some(3.0));
    assert_eq!(per_listener("api"), Some(2.0));
}
