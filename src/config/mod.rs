//! Configuration in sysctl.conf syntax.
//!
//! One registry of keys ([`registry`]) drives the parser, the error messages, the listing of
//! effective values and `docs/config.md`. The parser produces the typed [`Config`] below; nothing
//! else in levee reads configuration text.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub mod cidr;
pub mod cores;
mod docs;
mod effective;
mod error;
mod file;
mod names;
mod parse;
pub mod registry;
mod value;

pub use cores::CoreSet;
pub use error::{ConfigError, ConfigErrors, ErrorKind};
pub use file::{MAX_FILE_SIZE, PIPE_DEADLINE};
pub use parse::{MAX_BACKENDS, MAX_ERRORS};
pub use value::{is_prime, parse_duration};

/// Reads and parses the configuration file at `path`; messages name the file as given.
/// Reports every problem at once; a file that cannot be read is one problem without a line.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    file::load(path)
}

/// The text of a file in configuration syntax, read as [`load`] reads one: bounded in size,
/// and for a pipe or FIFO in time; devices and directories refused. For `levee ctl -p`.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    file::read_text(path)
}

/// Parses configuration text; `file` names it in messages. Reports every problem at once.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    parse::parse(text, file)
}

/// Every effective key with its value, one `key = value` per line in registry order (engine,
/// log, each listener, each pool followed by its backends). [`parse`] reads it back to the
/// same configuration.
pub fn listing(cfg: &Config) -> String {
    effective::listing(cfg)
}

/// Every effective key with its value in canonical text, in the order of [`listing`].
pub fn listing_entries(cfg: &Config) -> Vec<(String, String)> {
    effective::entries(cfg)
}

/// The content of `docs/config.md`: the syntax, an example, the error format and every key.
pub fn docs_markdown() -> String {
    docs::docs_markdown()
}

/// A whole, validated configuration. Constructed only by the parser, so a
/// value of this type has passed every check the registry describes.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub engine: EngineConfig,
    pub log: LogConfig,
    pub ctl: CtlConfig,
    pub stats: StatsConfig,
    pub overflow: OverflowConfig,
    /// In the order their first key appeared in the file.
    pub listeners: Vec<ListenerConfig>,
    /// In the order their first key appeared in the file.
    pub pools: Vec<PoolConfig>,
}

/// `engine.*`: the forwarder threads and their io_uring instances.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// `engine.cores`: which CPUs get a forwarder thread.
    pub cores: CoreSet,
    /// `engine.ring_entries`: submission queue entries per forwarder (power of two).
    pub ring_entries: u32,
    /// `engine.buffer_size`: bytes in each provided receive buffer.
    pub buffer_size: u32,
    /// `engine.buffers`: provided receive buffers per forwarder (power of two).
    pub buffers: u32,
    /// `engine.recv_bundle`: most buffers one receive completion fills.
    pub recv_bundle: u32,
    /// `engine.send_batch`: most queued buffers one send takes.
    pub send_batch: u32,
    /// `engine.splice_after`: bytes in a row in whole buffers before a direction is spliced
    /// through a pipe; 0: never.
    pub splice_after: u32,
    /// `engine.splice_pipes`: most pipes a forwarder holds for spliced directions.
    pub splice_pipes: u32,
    /// `engine.splice_pipe_size`: what each of those pipes holds.
    pub splice_pipe_size: u32,
    /// `engine.max_conns`: client connections one forwarder holds at once.
    pub max_conns: u32,
    /// `engine.backlog`: listen(2) backlog of each listener socket.
    pub backlog: u32,
    /// `engine.connect_timeout`: budget for reaching a backend, all retries included.
    pub connect_timeout: Duration,
    /// `engine.connect_retries`: further backends tried after a failed connect.
    pub connect_retries: u32,
    /// `engine.idle_timeout`: a connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// `engine.drain_timeout`: on SIGTERM, how long connections in flight may take to finish.
    pub drain_timeout: Duration,
    /// `engine.sched_policy`: the scheduling policy of the forwarder threads.
    pub sched_policy: SchedPolicy,
    /// `engine.user`: who levee runs as once its sockets are bound; `None` stays as started.
    pub user: Option<String>,
    /// `engine.group`: the group with `engine.user`; `None` is that user's own.
    pub group: Option<String>,
}

/// Every engine setting at its default.
impl Default for EngineConfig {
    fn default() -> Self {
        registry::with_defaults()
    }
}

/// `log.*`
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `log.level`: least severe messages logged.
    pub level: LogLevel,
    /// `log.format`: lines of text, or one JSON object per line for log shippers.
    pub format: LogFormat,
}

/// Every log setting at its default.
impl Default for LogConfig {
    fn default() -> Self {
        registry::with_defaults()
    }
}

/// `ctl.*`: the control socket `levee ctl` talks to.
#[derive(Debug, Clone, PartialEq)]
pub struct CtlConfig {
    /// `ctl.socket`: path of the Unix socket, or `None` for no runtime control.
    pub socket: Option<std::path::PathBuf>,
    /// `ctl.owner`: the user that owns the socket; `None` leaves it as levee made it.
    pub owner: Option<String>,
    /// `ctl.group`: the group that owns the socket, which may then use it (mode 0660).
    pub group: Option<String>,
}

/// Every control setting at its default.
impl Default for CtlConfig {
    fn default() -> Self {
        registry::with_defaults()
    }
}

/// `stats.*` settings (the other `stats.*` keys are the counters `levee ctl` reads).
#[derive(Debug, Clone, PartialEq)]
pub struct StatsConfig {
    /// `stats.listen`: where `GET /metrics` is served, or `None` for nowhere.
    pub listen: Option<SocketAddr>,
}

/// Every stats setting at its default.
impl Default for StatsConfig {
    fn default() -> Self {
        registry::with_defaults()
    }
}

/// `overflow.*`: the queue that takes connections no backend has room for, and the worker
/// processes that drain it.
#[derive(Debug, Clone, PartialEq)]
pub struct OverflowConfig {
    /// `overflow.dir`: where the shared memory lives; `None` is `auto`, a directory of this
    /// process's own under /dev/shm.
    pub dir: Option<std::path::PathBuf>,
    /// `overflow.workers`: worker processes `levee run` starts and keeps running.
    pub workers: u32,
    /// `overflow.max_workers`: workers that may attach at once, supervised or started on
    /// their own.
    pub max_workers: u32,
    /// `overflow.cores`: CPUs the supervised workers are pinned to, one each in turn.
    pub cores: CoreSet,
    /// `overflow.handoff`: how a worker takes a client's socket from a forwarder.
    pub handoff: Handoff,
    /// `overflow.queue_timeout`: a connection waiting longer than this is closed.
    pub queue_timeout: Duration,
    /// `overflow.max_queue`: connections one pool's queue holds at most.
    pub max_queue: u32,
    /// `overflow.discipline`: which waiting connections are served, and which shed.
    pub discipline: Discipline,
    /// `overflow.codel_target`: CoDel's acceptable standing queue delay.
    pub codel_target: Duration,
    /// `overflow.codel_interval`: CoDel's window for the minimum delay.
    pub codel_interval: Duration,
    /// `overflow.max_attempts`: deliveries of one ticket to workers that died before taking
    /// it over, after which its client is closed.
    pub max_attempts: u32,
}

/// Every overflow setting at its default.
impl Default for OverflowConfig {
    fn default() -> Self {
        registry::with_defaults()
    }
}

/// `overflow.handoff`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// `pidfd_getfd(2)` where the kernel allows it, else `SCM_RIGHTS`; decided when a worker
    /// attaches.
    Auto,
    /// The worker pulls the socket with `pidfd_getfd(2)`.
    Pidfd,
    /// The forwarder sends the socket over a Unix socket (`SCM_RIGHTS`).
    ScmRights,
}

/// `overflow.discipline`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discipline {
    /// First come, first served; a connection leaves unserved only at `queue_timeout`.
    Fifo,
    /// FIFO, shedding connections that waited long while the queue stands above its target
    /// (CoDel, as in folly's `Codel`).
    Codel,
}

/// `pool.NAME.overflow`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Wait in the pool's queue for a worker to serve it.
    Queue,
    /// Close it at once, counted.
    Reject,
}

/// `pool.NAME.proxy_protocol`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    None,
    V1,
    V2,
}

impl ProxyProtocol {
    /// The version to write, `None` for none.
    pub fn version(self) -> Option<crate::proxy_protocol::Version> {
        match self {
            Self::None => None,
            Self::V1 => Some(crate::proxy_protocol::Version::V1),
            Self::V2 => Some(crate::proxy_protocol::Version::V2),
        }
    }
}

/// `log.level`, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `time LEVEL target: message key=value ...`, as a person reads it.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`.
    Json,
}

/// `engine.sched_policy`: how the kernel schedules a forwarder thread against the other tasks
/// on its CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedPolicy {
    /// `SCHED_BATCH`: a forwarder that wakes does not preempt the task running on its CPU; it
    /// runs when that task sleeps or its slice ends, and then handles everything that arrived.
    Batch,
    /// `SCHED_OTHER`: a forwarder may preempt the running task as soon as a completion wakes it.
    Normal,
}

/// `listener.NAME.*`
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    /// `listener.NAME.addr`
    pub addr: SocketAddr,
    /// `listener.NAME.pool`, resolved: an index into [`Config::pools`].
    pub pool: usize,
    /// `listener.NAME.refuse_payload`: bytes written to a client before it is refused.
    pub refuse_payload: Vec<u8>,
    /// `listener.NAME.proxy_protocol`: the PROXY header its clients send first, if any.
    pub proxy_protocol: ProxyProtocol,
    /// `listener.NAME.proxy_timeout`: how long a client has for that header.
    pub proxy_timeout: std::time::Duration,
    /// `listener.NAME.proxy_from`: who may send it (the balancers in front); empty: anyone.
    pub proxy_from: Vec<cidr::Cidr>,
    /// `listener.NAME.allow` and `deny`: who is served.
    pub allow: Vec<cidr::Cidr>,
    pub deny: Vec<cidr::Cidr>,
    /// `listener.NAME.rate_per_source`, `burst_per_source`: new connections per second per
    /// source address, and the bucket (0: none; 0: as the rate).
    pub rate_per_source: u32,
    pub burst_per_source: u32,
    /// `listener.NAME.max_conns_per_source`: connections one source may hold at once (0: none).
    pub max_conns_per_source: u32,
}

/// `pool.NAME.*`
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    /// `pool.NAME.balance`
    pub balance: Balance,
    /// `pool.NAME.hash_key`: what consistent hashing hashes.
    pub hash_key: HashKey,
    /// `pool.NAME.table_size`: maglev lookup table size, a prime.
    pub table_size: u32,
    /// `pool.NAME.bound`: bounded load factor; a backend above `bound × mean` is skipped.
    /// `None` (the key set to 0) means only `max_conns` bounds a backend.
    pub bound: Option<f64>,
    /// `pool.NAME.overflow`: what a connection gets when no backend has room.
    pub overflow: Overflow,
    /// `pool.NAME.proxy_protocol`: the PROXY header sent first to a backend, if any.
    pub proxy_protocol: ProxyProtocol,
    /// `pool.NAME.source`: local addresses to connect from, in turn; empty: the kernel's.
    pub source: Vec<std::net::IpAddr>,
    /// Health checks, passive ejection, slow start.
    pub health: HealthConfig,
    /// In the order their first key appeared in the file.
    pub backends: Vec<BackendConfig>,
}

impl PoolConfig {
    /// A pool with every setting at its default and these backends.
    pub fn new(name: impl Into<String>, backends: Vec<BackendConfig>) -> Self {
        let mut pool: Self = registry::with_defaults();
        pool.name = name.into();
        pool.backends = backends;
        pool
    }
}

impl BackendConfig {
    /// A backend with every setting at its default.
    pub fn new(name: impl Into<String>, addr: SocketAddr) -> Self {
        let mut backend: Self = registry::with_defaults();
        backend.name = name.into();
        backend.addr = addr;
        backend
    }
}

/// `pool.NAME.check.*`, `pool.NAME.eject.*`, `pool.NAME.slowstart`, `pool.NAME.all_down`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// `check.type`: how backends are probed, if at all.
    pub check: CheckKind,
    /// `check.interval`: time between the starts of two checks of one backend.
    pub interval: Duration,
    /// `check.timeout`: a check not passed within this time has failed.
    pub timeout: Duration,
    /// `check.rise`: consecutive passed checks that bring a down backend up.
    pub rise: u32,
    /// `check.fall`: consecutive failed checks that take an up backend down.
    pub fall: u32,
    /// `check.send`: bytes sent once connected (empty: send nothing).
    pub send: Vec<u8>,
    /// `check.expect`: the reply must start with these bytes (empty: connecting is enough).
    pub expect: Vec<u8>,
    /// `eject.failures`: consecutive connect failures, or consecutive resets, seen by the
    /// forwarders that eject a backend; 0 turns passive ejection off.
    pub eject_failures: u32,
    /// `eject.time`: cool-down of a first ejection; it doubles with each repeat offence.
    pub eject_time: Duration,
    /// `eject.max_time`: the longest cool-down.
    pub eject_max_time: Duration,
    /// `eject.max_percent`: share of the pool's backends that may be ejected at once.
    pub eject_max_percent: u32,
    /// `slowstart`: a backend coming up ramps its weight from nothing to full over this time.
    pub slowstart: Duration,
    /// `all_down`: what a new connection gets when no backend is up.
    pub all_down: AllDown,
}

/// Every health setting at its default.
impl Default for HealthConfig {
    fn default() -> Self {
        registry::with_defaults::<PoolConfig>().health
    }
}

/// `pool.NAME.check.type`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// No active checks: only passive ejection and the operator change a backend's state.
    None,
    /// Connect (then send and expect, when set).
    Tcp,
}

/// `pool.NAME.all_down`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllDown {
    /// Close the client's connection at once (RST), counted as `no_backend`.
    Refuse,
    /// Ignore health and try the backends anyway, as if all were up (drained ones excepted).
    TryAnyway,
}

/// `pool.NAME.backend.NAME.state`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Up,
    /// No new connections; established ones continue to their end.
    Drain,
}

/// `pool.NAME.backend.NAME.*`
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub name: String,
    /// `pool.P.backend.B.addr`
    pub addr: SocketAddr,
    /// `pool.P.backend.B.weight`: relative share; 0 takes no new connections (drain).
    pub weight: u32,
    /// `pool.P.backend.B.max_conns`: connections this host opens to it at once; 0 = no cap.
    pub max_conns: u32,
    /// `pool.P.backend.B.state`: the operator's say.
    pub state: AdminState,
    /// `pool.P.backend.B.check.*`: this backend's own check settings; 0 takes the pool's.
    pub check_interval: Duration,
    pub check_timeout: Duration,
    pub check_rise: u32,
    pub check_fall: u32,
}

/// `pool.NAME.balance`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Maglev consistent hashing with bounded load (the default).
    Maglev,
    RoundRobin,
    /// Smooth weighted round robin.
    Weighted,
    LeastConn,
    /// Power of two random choices.
    P2c,
    /// Source-IP hash modulo the number of backends.
    SourceHash,
}

/// `pool.NAME.hash_key`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    SourceIp,
    SourceIpPort,
}
