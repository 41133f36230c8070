//! The registry: every configuration key, once.
//!
//! Each [`KeySpec`] holds a key's name pattern, type and bounds, default, unit, description,
//! what it changes in a running levee (if it may change at runtime), and where its value lands
//! in [`Config`]. The parser, the
//! error messages, the listing of effective values, runtime `get`/`set` and `docs/config.md`
//! are all driven by [`KEYS`]. Adding a key means adding one entry here (and, for a new
//! setting, its field in the typed struct).
//!
//! [`Config`]: super::Config

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::value::{self, CountRule};
use super::{
    AdminState, AllDown, BackendConfig, Balance, CheckKind, CoreSet, CtlConfig, Discipline,
    EngineConfig, Handoff, HashKey, HealthConfig, ListenerConfig, LogConfig, LogFormat, LogLevel,
    Overflow, OverflowConfig, PoolConfig, ProxyProtocol, SchedPolicy, StatsConfig,
};

/// Which object a key belongs to, which also says how many `NAME` segments its pattern has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Engine,
    Log,
    Ctl,
    Stats,
    Overflow,
    Listener,
    Pool,
    Backend,
}

impl Scope {
    /// What an object of this scope is called in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Scope::Engine => "engine",
            Scope::Log => "log",
            Scope::Ctl => "ctl",
            Scope::Stats => "stats",
            Scope::Overflow => "overflow",
            Scope::Listener => "listener",
            Scope::Pool => "pool",
            Scope::Backend => "backend",
        }
    }
}

/// The setting of the running engine that a runtime key changes, and where `levee ctl` reads it
/// back from. Each runtime key has its own; `ctl` applies and reads back with an exhaustive
/// `match` on it, so a key cannot be marked runtime without saying what it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// The forwarders' connect timeout.
    ConnectTimeout,
    /// How many more backends the forwarders try after a failed connect.
    ConnectRetries,
    /// The forwarders' idle timeout.
    IdleTimeout,
    /// The scheduling policy of the forwarder threads.
    SchedPolicy,
    /// The log filter's level.
    LogLevel,
    /// How many overflow workers the supervisor keeps running.
    OverflowWorkers,
    /// One field of the overflow settings row, which forwarders and workers read.
    OverflowSettings(OverflowSetting),
    /// One rule of a listener's gate.
    Gate(GateRule),
    /// A pool's load bound, in its load table.
    PoolBound,
    /// A backend's weight, which the health monitor applies.
    BackendWeight,
    /// A backend's connection cap, in its pool's load table.
    BackendMaxConns,
    /// A backend's drain flag, which the health monitor reads.
    BackendState,
}

/// A field of the overflow settings row (see [`Apply::OverflowSettings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowSetting {
    QueueTimeout,
    Discipline,
    CodelTarget,
    CodelInterval,
}

/// A rule of a listener's gate (see [`Apply::Gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateRule {
    ProxyFrom,
    Allow,
    Deny,
    RatePerSource,
    BurstPerSource,
    MaxConnsPerSource,
}

/// One configuration key.
pub struct KeySpec {
    /// Dotted name; each `NAME` segment stands for a listener, pool or backend name.
    pub name: &'static str,
    /// Canonical default text; `None` when the key must be set.
    pub default: Option<&'static str>,
    /// What the value measures, for the docs (empty where nothing applies).
    pub unit: &'static str,
    /// What a running levee changes to take a new value without a restart; `None` for a key
    /// read only at start.
    pub runtime: Option<Apply>,
    /// One line for the docs and the listing.
    pub description: &'static str,
    pub(crate) slot: Slot,
}

/// Where a key's value lands: the scope picks the struct, the field picks the member.
pub(crate) enum Slot {
    Engine(Field<EngineConfig>),
    Log(Field<LogConfig>),
    Ctl(Field<CtlConfig>),
    Stats(Field<StatsConfig>),
    Overflow(Field<OverflowConfig>),
    Listener(Field<ListenerDraft>),
    Pool(Field<PoolConfig>),
    Backend(Field<BackendConfig>),
}

/// A listener while its file is read: the pool is still a name, resolved to an index into
/// [`Config::pools`](super::Config::pools) once every pool is known.
#[derive(Debug, Clone)]
pub(crate) struct ListenerDraft {
    pub(crate) config: ListenerConfig,
    pub(crate) pool: String,
}

/// A value type with its bounds, and how to read and write it in a `T`.
pub(crate) enum Field<T: 'static> {
    Cores {
        get: fn(&T) -> &CoreSet,
        set: fn(&mut T, CoreSet),
    },
    Count {
        min: u32,
        max: u32,
        rule: CountRule,
        get: fn(&T) -> u32,
        set: fn(&mut T, u32),
    },
    /// Bytes, written with an optional K, M or G.
    Size {
        min: u32,
        max: u32,
        get: fn(&T) -> u32,
        set: fn(&mut T, u32),
    },
    /// Whole milliseconds, written with ms, s, m or h.
    Duration {
        min: Duration,
        max: Duration,
        get: fn(&T) -> Duration,
        set: fn(&mut T, Duration),
    },
    /// `0` for none, else a decimal in `min..=max`.
    Factor {
        min: f64,
        max: f64,
        get: fn(&T) -> Option<f64>,
        set: fn(&mut T, Option<f64>),
    },
    /// One of `names`; `set` returns false for a name it does not know.
    Choice {
        names: &'static [&'static str],
        get: fn(&T) -> &'static str,
        set: fn(&mut T, &str) -> bool,
    },
    Addr {
        /// Listeners may bind port 0 (the kernel picks one); backends cannot be reached there.
        port_zero: bool,
        get: fn(&T) -> SocketAddr,
        set: fn(&mut T, SocketAddr),
    },
    /// An address with a port of 1 or above, or `none`.
    OptionalAddr {
        get: fn(&T) -> Option<SocketAddr>,
        set: fn(&mut T, Option<SocketAddr>),
    },
    PoolName {
        get: fn(&T) -> &str,
        set: fn(&mut T, String),
    },
    /// A directory: an absolute path, or `auto` (`None`).
    Dir {
        get: fn(&T) -> Option<&std::path::Path>,
        set: fn(&mut T, Option<std::path::PathBuf>),
    },
    /// An absolute path, or `none`.
    Path {
        get: fn(&T) -> Option<&std::path::Path>,
        set: fn(&mut T, Option<std::path::PathBuf>),
    },
    /// A user or group name (as in /etc/passwd and /etc/group), or `none`.
    Account {
        get: fn(&T) -> Option<&str>,
        set: fn(&mut T, Option<String>),
    },
    /// IP addresses (no port), comma-separated; empty for none.
    Ips {
        get: fn(&T) -> &[std::net::IpAddr],
        set: fn(&mut T, Vec<std::net::IpAddr>),
    },
    /// Address ranges: `ADDR/LEN` or `ADDR`, comma-separated; empty for none.
    Cidrs {
        get: fn(&T) -> &[super::cidr::Cidr],
        set: fn(&mut T, Vec<super::cidr::Cidr>),
    },
    /// Bytes written as text with escapes, at most `max_len` of them.
    Bytes {
        max_len: usize,
        get: fn(&T) -> &[u8],
        set: fn(&mut T, Vec<u8>),
    },
}

impl<T> Field<T> {
    /// Reads `text` and stores the value in `target`, or says what was expected.
    pub(crate) fn parse_into(&self, target: &mut T, text: &str) -> Result<(), String> {
        match self {
            Field::Cores { set, .. } => set(target, CoreSet::parse(text)?),
            Field::Count {
                min,
                max,
                rule,
                set,
                ..
            } => set(target, value::parse_count(text, *min, *max, *rule)?),
            Field::Size { min, max, set, .. } => set(target, value::parse_size(text, *min, *max)?),
            Field::Duration { min, max, set, .. } => {
                set(target, value::parse_duration(text, *min, *max)?);
            }
            Field::Factor { min, max, set, .. } => {
                set(target, value::parse_factor(text, *min, *max)?);
            }
            Field::Choice { names, set, .. } => {
                if !set(target, text) {
                    return Err(format!(
                        "expected one of {}, {}",
                        names.join(", "),
                        value::found(text)
                    ));
                }
            }
            Field::Addr { port_zero, set, .. } => set(target, value::parse_addr(text, *port_zero)?),
            Field::OptionalAddr { set, .. } => match text {
                "none" => set(target, None),
                _ => set(
                    target,
                    Some(value::parse_addr(text, false).map_err(|e| {
                        match e.strip_prefix("expected an IP address") {
                            Some(rest) => format!("expected none, or an IP address{rest}"),
                            None => e,
                        }
                    })?),
                ),
            },
            Field::PoolName { set, .. } => set(target, value::parse_name(text)?),
            Field::Bytes { max_len, set, .. } => set(target, value::parse_bytes(text, *max_len)?),
            Field::Path { set, .. } => set(target, value::parse_path(text)?),
            Field::Cidrs { set, .. } => set(target, super::cidr::parse_list(text)?),
            Field::Ips { set, .. } => set(target, value::parse_ips(text)?),
            Field::Dir { set, .. } => set(target, value::parse_dir(text)?),
            Field::Account { set, .. } => set(target, value::parse_account(text)?),
        }
        Ok(())
    }

    /// The value in `target` as canonical text, which [`Field::parse_into`] reads back.
    pub(crate) fn format(&self, target: &T) -> String {
        match self {
            Field::Cores { get, .. } => get(target).to_string(),
            Field::Count { get, .. } => get(target).to_string(),
            Field::Size { get, .. } => value::format_size(get(target)),
            Field::Duration { get, .. } => value::format_duration(get(target)),
            Field::Factor { get, .. } => value::format_factor(get(target)),
            Field::Choice { get, .. } => get(target).to_string(),
            Field::Addr { get, .. } => get(target).to_string(),
            Field::OptionalAddr { get, .. } => {
                get(target).map_or_else(|| "none".to_string(), |a| a.to_string())
            }
            Field::PoolName { get, .. } => get(target).to_string(),
            Field::Bytes { get, .. } => value::format_bytes(get(target)),
            Field::Cidrs { get, .. } => super::cidr::format_list(get(target)),
            Field::Ips { get, .. } => get(target)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            Field::Path { get, .. } => {
                get(target).map_or_else(|| "none".to_string(), |p| p.display().to_string())
            }
            Field::Dir { get, .. } => {
                get(target).map_or_else(|| "auto".to_string(), |p| p.display().to_string())
            }
            Field::Account { get, .. } => get(target).unwrap_or("none").to_string(),
        }
    }

    fn type_text(&self) -> String {
        match self {
            Field::Cores { .. } => "CPU set: auto, or ids and ranges like 0-3,8".to_string(),
            Field::Count { min, max, rule, .. } => value::describe_count(*min, *max, *rule),
            Field::Size { min, max, .. } => format!(
                "size from {} to {} (bytes, or with K, M, G)",
                value::format_size(*min),
                value::format_size(*max)
            ),
            Field::Duration { min, max, .. } => format!(
                "duration from {} to {} (ms, s, m, h)",
                value::format_duration(*min),
                value::format_duration(*max)
            ),
            Field::Factor { min, max, .. } => {
                format!("0, or a decimal from {min} to {max} (up to 3 decimals)")
            }
            Field::Choice { names, .. } => format!("one of {}", names.join(", ")),
            Field::Addr {
                port_zero: true, ..
            } => "IP:port, IPv6 in brackets".to_string(),
            Field::Addr {
                port_zero: false, ..
            } => "IP:port (port 1 or above), IPv6 in brackets".to_string(),
            Field::OptionalAddr { .. } => {
                "IP:port (port 1 or above), IPv6 in brackets, or none".to_string()
            }
            Field::PoolName { .. } => "name of a pool".to_string(),
            Field::Path { .. } => "absolute path, or none".to_string(),
            Field::Ips { .. } => {
                format!(
                    "IP addresses, comma-separated, at most {}; empty for none",
                    value::MAX_IPS
                )
            }
            Field::Cidrs { .. } => format!(
                "address ranges (ADDR/LEN or ADDR), comma-separated, at most {}; empty for none",
                super::cidr::MAX_RANGES
            ),
            Field::Account { .. } => "a user or group name of this host, or none".to_string(),
            Field::Dir { .. } => format!(
                "auto, or an absolute path of at most {} bytes",
                value::MAX_DIR_LEN
            ),
            Field::Bytes { max_len, .. } => {
                format!("text of up to {max_len} bytes; escapes \\r \\n \\t \\\\ \\xHH")
            }
        }
    }

    /// What to write after `=` in a hint for a missing key.
    fn placeholder(&self) -> &'static str {
        match self {
            Field::Addr { .. } | Field::OptionalAddr { .. } => "IP:PORT",
            Field::PoolName { .. } => "POOL",
            _ => "VALUE",
        }
    }
}

/// A struct that keys of one scope write into: how to make a blank one and find its fields.
pub(crate) trait Target: Sized + 'static {
    /// Every member zero or empty; [`with_defaults`] then applies the registry's defaults.
    fn blank() -> Self;
    fn field(slot: &Slot) -> Option<&Field<Self>>;
}

/// A `T` holding every default from the registry; required members stay blank.
pub(crate) fn with_defaults<T: Target>() -> T {
    let mut target = T::blank();
    for spec in KEYS {
        if let (Some(field), Some(default)) = (T::field(&spec.slot), spec.default) {
            // Every default parses: the registry's tests check each one.
            let _ = field.parse_into(&mut target, default);
        }
    }
    target
}

const UNSPECIFIED: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

impl Target for EngineConfig {
    fn blank() -> Self {
        EngineConfig {
            cores: CoreSet::Auto,
            ring_entries: 0,
            buffer_size: 0,
            buffers: 0,
            recv_bundle: 0,
            send_batch: 0,
            splice_after: 0,
            splice_pipes: 0,
            splice_pipe_size: 0,
            max_conns: 0,
            backlog: 0,
            connect_timeout: Duration::ZERO,
            connect_retries: 0,
            idle_timeout: Duration::ZERO,
            drain_timeout: Duration::ZERO,
            sched_policy: SchedPolicy::Normal,
            user: None,
            group: None,
        }
    }
    fn field(slot: &Slot) -> Option<&Field<Self>> {
        match slot {
            Slot::Engine(field) => Some(field),
            _ => None,
        }
    }
}

impl Target for LogConfig {
    fn blank() -> Self {
        LogConfig {
            level: LogLevel::Info,
            format: LogFormat::Text,
        }
    }
    fn field(slot: &Slot) -> Option<&Field<Self>> {
        match slot {
            Slot::Log(field) => Some(field),
            _ => None,
        }
    }
}

impl Target for CtlConfig {
    fn blank() -> Self {
        CtlConfig {
            socket: None,
            owner: None,
            group: None,
        }
    }
    fn field(slot: &Slot) -> Option<&Field<Self>> {
        match slot {
            Slot::Ctl(field) => Some(field),
            _ => None,
        }
    }
}

impl Target for StatsConfig {
    fn blank() -> Self {
        StatsConfig { listen: None }
    }
    fn field(slot: &Slot) -> Option<&Field<Self>> {
        match slot {
            Slot::Stats(field) => Some(field),
            _ => None,
        }
    }
}

impl Target for OverflowConfig {
    fn blank() -> Self {
        OverflowConfig {
            dir: None,
            workers: 0,
            max_workers: 0,
            cores: CoreSet::Auto,
            handoff: Handoff::Auto,
            queue_timeout: Duration::ZERO,
            max_queue: 0,
            discipline: Discipline::Fifo,
            codel_target: Duration::ZERO,
            codel_interval: Duration::ZERO,
            max_attempts: 0,
        }
    }
    fn field(slot: &Slot) -> Option<&Field<Self>> {
        match slot {
            Slot::Overflow(field) => Some(field),
            _ => None,
        }
    }
}

impl Target for ListenerDraft {
    fn blank() -> Self {
        ListenerDraft {
            config: ListenerConfig {
                name: String::new(),
                addr: UNSPECIFIED,
                pool: 0,
                refuse_payload: Vec::new(),
                proxy_protocol: ProxyProtocol::None,
                proxy_timeout: Duration::ZERO,
                proxy_from: Vec::new(),
                allow: Vec::new(),
                deny: Vec::new(),
                rate_per_source: 0,
                burst_per_source: 0,
                max_conns_per_source: 0,
            },
            pool: String::new(),
        }
    }
    fn field(slot: &Slot) -> Option<&Field<Self>> {
        match slot {
            Slot::Listener(field) => Some(field),
            _ => None,
        }
    }
}

impl Target for PoolConfig {
    fn blank() -> Self {
        PoolConfig {
            name: String::new(),
            balance: Balance::Maglev,
            hash_key: HashKey::SourceIp,
            table_size: 0,
            bound: None,
            overflow: Overflow::Queue,
            proxy_protocol: ProxyProtocol::None,
            source: Vec::new(),
            health: HealthConfig {
                check: CheckKind::None,
                interval: Duration::ZERO,
                timeout: Duration::ZERO,
                rise: 0,
                fall: 0,
                send: Vec::new(),
                expect: Vec::new(),
                eject_failures: 0,
                eject_time: Duration::ZERO,
                eject_max_time: Duration::ZERO,
                eject_max_percent: 0,
                slowstart: Duration::ZERO,
                all_down: AllDown::Refuse,
            },
            backends: Vec::new(),
        }
    }
    fn field(slot: &Slot) -> Option<&Field<Self>> {
        match slot {
            Slot::Pool(field) => Some(field),
            _ => None,
        }
    }
}

impl Target for BackendConfig {
    fn blank() -> Self {
        BackendConfig {
            name: String::new(),
            addr: UNSPECIFIED,
            weight: 0,
            max_conns: 0,
            state: AdminState::Up,
            check_interval: Duration::ZERO,
            check_timeout: Duration::ZERO,
            check_rise: 0,
            check_fall: 0,
        }
    }
    fn field(slot: &Slot) -> Option<&Field<Self>> {
        match slot {
            Slot::Backend(field) => Some(field),
            _ => None,
        }
    }
}

/// Reads `text` into a scratch `T`, returning the canonical text of the value.
fn check_with<T: Target>(field: &Field<T>, text: &str) -> Result<String, String> {
    let mut scratch = T::blank();
    field.parse_into(&mut scratch, text)?;
    Ok(field.format(&scratch))
}

/// Runs `$body` with `$field` bound to the slot's field, whatever its scope.
macro_rules! with_field {
    ($slot:expr, $field:ident => $body:expr) => {
        match $slot {
            Slot::Engine($field) => $body,
            Slot::Log($field) => $body,
            Slot::Ctl($field) => $body,
            Slot::Stats($field) => $body,
            Slot::Overflow($field) => $body,
            Slot::Listener($field) => $body,
            Slot::Pool($field) => $body,
            Slot::Backend($field) => $body,
        }
    };
}

impl KeySpec {
    pub fn scope(&self) -> Scope {
        match self.slot {
            Slot::Engine(_) => Scope::Engine,
            Slot::Log(_) => Scope::Log,
            Slot::Ctl(_) => Scope::Ctl,
            Slot::Stats(_) => Scope::Stats,
            Slot::Overflow(_) => Scope::Overflow,
            Slot::Listener(_) => Scope::Listener,
            Slot::Pool(_) => Scope::Pool,
            Slot::Backend(_) => Scope::Backend,
        }
    }

    /// Whether a running levee can take a new value without a restart.
    pub fn is_runtime(&self) -> bool {
        self.runtime.is_some()
    }

    pub fn is_required(&self) -> bool {
        self.default.is_none()
    }

    /// The type and its bounds in words, like "power of two from 64 to 32768".
    pub fn type_text(&self) -> String {
        with_field!(&self.slot, field => field.type_text())
    }

    /// Checks a value for this key without a configuration to put it in; returns its
    /// canonical text or says what was expected.
    pub fn check(&self, text: &str) -> Result<String, String> {
        with_field!(&self.slot, field => check_with(field, text))
    }

    /// What to write after `=` in a hint, like `IP:PORT`.
    pub(crate) fn placeholder(&self) -> &'static str {
        with_field!(&self.slot, field => field.placeholder())
    }
}

/// The result of looking a key up in the registry.
#[derive(Debug, PartialEq)]
pub enum Lookup<'k> {
    /// The key is `spec`'s pattern with `names` in its `NAME` segments, in order.
    Found {
        spec: &'static KeySpec,
        names: Vec<&'k str>,
    },
    /// The key has a known shape but a name segment breaks the naming rule.
    BadName {
        spec: &'static KeySpec,
        /// What the name names: `listener`, `pool` or `backend`.
        role: &'k str,
        name: &'k str,
    },
    /// No key has this shape; [`suggest`] may find a near one.
    Unknown,
}

impl std::fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySpec").field("name", &self.name).finish()
    }
}

impl PartialEq for KeySpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// Placeholder segment in key patterns.
pub const NAME: &str = "NAME";

/// Longest key a "did you mean" is computed for; longer ones are not typos.
const MAX_SUGGEST_LEN: usize = 200;

pub fn lookup(key: &str) -> Lookup<'_> {
    let segments: Vec<&str> = key.split('.').collect();
    for spec in KEYS {
        let pattern = spec.name.split('.');
        if pattern.clone().count() != segments.len()
            || !pattern
                .clone()
                .zip(&segments)
                .all(|(p, s)| p == NAME || p == *s)
        {
            continue;
        }
        let mut names = Vec::new();
        for (i, (p, s)) in pattern.zip(&segments).enumerate() {
            if p != NAME {
                continue;
            }
            if !value::is_valid_name(s) {
                let role = match i.checked_sub(1).and_then(|r| segments.get(r)) {
                    Some(role) => *role,
                    None => "object",
                };
                return Lookup::BadName {
                    spec,
                    role,
                    name: s,
                };
            }
            names.push(*s);
        }
        return Lookup::Found { spec, names };
    }
    Lookup::Unknown
}

/// The known key nearest to `key`, with `key`'s own segments standing in for `NAME`s, when it
/// is near enough to be a typo.
pub fn suggest(key: &str) -> Option<String> {
    if key.len() > MAX_SUGGEST_LEN {
        return None;
    }
    let segments: Vec<&str> = key.split('.').collect();
    KEYS.iter()
        .map(|spec| {
            let candidate: Vec<&str> = spec
                .name
                .split('.')
                .enumerate()
                .map(|(i, p)| match (p, segments.get(i)) {
                    (NAME, Some(s)) if value::is_valid_name(s) => *s,
                    _ => p,
                })
                .collect();
            let candidate = candidate.join(".");
            (value::edit_distance(key, &candidate), candidate)
        })
        .filter(|(distance, candidate)| *distance <= 3 && *distance * 4 <= candidate.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// The key for `pattern` with `names` in its `NAME` segments, in order.
pub fn instantiate(pattern: &str, names: &[&str]) -> String {
    let mut names = names.iter();
    pattern
        .split('.')
        .map(|p| match p {
            NAME => names.next().copied().unwrap_or(NAME),
            _ => p,
        })
        .collect::<Vec<_>>()
        .join(".")
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const SECOND: u64 = 1000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

/// Every key, in listing order: engine, log, then per listener, per pool, per backend.
pub static KEYS: &[KeySpec] = &[
    KeySpec {
        name: "engine.cores",
        default: Some("auto"),
        unit: "CPUs",
        runtime: None,
        description: "CPUs that each run one pinned forwarder thread; auto means every CPU this process may use",
        slot: Slot::Engine(Field::Cores {
            get: |e| &e.cores,
            set: |e, v| e.cores = v,
        }),
    },
    KeySpec {
        name: "engine.ring_entries",
        default: Some("4096"),
        unit: "entries",
        runtime: None,
        description: "io_uring submission queue entries per forwarder",
        slot: Slot::Engine(Field::Count {
            min: 64,
            max: 32768,
            rule: CountRule::PowerOfTwo,
            get: |e| e.ring_entries,
            set: |e, v| e.ring_entries = v,
        }),
    },
    KeySpec {
        name: "engine.buffer_size",
        default: Some("16K"),
        unit: "bytes",
        runtime: None,
        description: "Size of each provided receive buffer; one buffer holds one read from a socket",
        slot: Slot::Engine(Field::Size {
            min: 1 << 10,
            max: 1 << 20,
            get: |e| e.buffer_size,
            set: |e, v| e.buffer_size = v,
        }),
    },
    KeySpec {
        name: "engine.buffers",
        default: Some("2048"),
        unit: "buffers",
        runtime: None,
        description: "Provided receive buffers per forwarder; with buffer_size, bounds its receive memory",
        slot: Slot::Engine(Field::Count {
            min: 16,
            max: 32768,
            rule: CountRule::PowerOfTwo,
            get: |e| e.buffers,
            set: |e, v| e.buffers = v,
        }),
    },
    KeySpec {
        name: "engine.recv_bundle",
        default: Some("1"),
        unit: "buffers",
        runtime: None,
        description: "Most receive buffers one receive completion fills (an io_uring bundle), up to half a direction's high-water mark; 1 fills one at a time. Above 1, a backend's reset that follows a burst was seen lost on Linux 6.18 (the client hangs): see docs/performance.md",
        slot: Slot::Engine(Field::Count {
            min: 1,
            max: 64,
            rule: CountRule::Any,
            get: |e| e.recv_bundle,
            set: |e, v| e.recv_bundle = v,
        }),
    },
    KeySpec {
        name: "engine.send_batch",
        default: Some("8"),
        unit: "buffers",
        runtime: None,
        description: "Most queued receive buffers one send takes (sendmsg with one iovec each); 1 sends them one at a time",
        slot: Slot::Engine(Field::Count {
            min: 1,
            max: 64,
            rule: CountRule::Any,
            get: |e| e.send_batch,
            set: |e, v| e.send_batch = v,
        }),
    },
    KeySpec {
        name: "engine.splice_after",
        default: Some("256K"),
        unit: "bytes",
        runtime: None,
        description: "A direction that has received this many bytes while the other received none, in reads of a quarter buffer or more on average (a bulk transfer), moves the rest with splice(2) through a pipe, without copying through levee; 0 never splices",
        slot: Slot::Engine(Field::Size {
            min: 0,
            max: 1 << 30,
            get: |e| e.splice_after,
            set: |e, v| e.splice_after = v,
        }),
    },
    KeySpec {
        name: "engine.splice_pipes",
        default: Some("256"),
        unit: "pipes",
        runtime: None,
        description: "Most pipes per forwarder for spliced directions (two descriptors and up to engine.splice_pipe_size of kernel memory each); past it, bulk directions stay on buffers",
        slot: Slot::Engine(Field::Count {
            min: 1,
            max: 65536,
            rule: CountRule::Any,
            get: |e| e.splice_pipes,
            set: |e, v| e.splice_pipes = v,
        }),
    },
    KeySpec {
        name: "engine.splice_pipe_size",
        default: Some("256K"),
        unit: "bytes",
        runtime: None,
        description: "What each splice pipe holds (rounded up by the kernel to a power of two pages; where the kernel refuses the size, its default of 64K): a spliced direction's share of kernel memory",
        slot: Slot::Engine(Field::Size {
            min: 4 << 10,
            max: 1 << 20,
            get: |e| e.splice_pipe_size,
            set: |e, v| e.splice_pipe_size = v,
        }),
    },
    KeySpec {
        name: "engine.max_conns",
        default: Some("16384"),
        unit: "connections",
        runtime: None,
        description: "Most client connections one forwarder holds at once",
        slot: Slot::Engine(Field::Count {
            min: 1,
            max: 1 << 20,
            rule: CountRule::Any,
            get: |e| e.max_conns,
            set: |e, v| e.max_conns = v,
        }),
    },
    KeySpec {
        name: "engine.backlog",
        default: Some("4096"),
        unit: "connections",
        runtime: None,
        description: "listen(2) backlog of each listener socket (the kernel caps it at net.core.somaxconn)",
        slot: Slot::Engine(Field::Count {
            min: 1,
            max: 65535,
            rule: CountRule::Any,
            get: |e| e.backlog,
            set: |e, v| e.backlog = v,
        }),
    },
    KeySpec {
        name: "engine.connect_timeout",
        default: Some("5s"),
        unit: "time",
        runtime: Some(Apply::ConnectTimeout),
        description: "Time allowed for reaching a backend, all retries included; each attempt gets an equal share of what is left",
        slot: Slot::Engine(Field::Duration {
            min: ms(1),
            max: ms(5 * MINUTE),
            get: |e| e.connect_timeout,
            set: |e, v| e.connect_timeout = v,
        }),
    },
    KeySpec {
        name: "engine.connect_retries",
        default: Some("2"),
        unit: "backends",
        runtime: Some(Apply::ConnectRetries),
        description: "Further backends tried after a connect fails or its share of connect_timeout runs out",
        slot: Slot::Engine(Field::Count {
            min: 0,
            max: 7,
            rule: CountRule::Any,
            get: |e| e.connect_retries,
            set: |e, v| e.connect_retries = v,
        }),
    },
    KeySpec {
        name: "engine.idle_timeout",
        default: Some("5m"),
        unit: "time",
        runtime: Some(Apply::IdleTimeout),
        description: "Close a connection after this long without a byte in either direction; 0 = never",
        slot: Slot::Engine(Field::Duration {
            min: Duration::ZERO,
            max: ms(24 * HOUR),
            get: |e| e.idle_timeout,
            set: |e, v| e.idle_timeout = v,
        }),
    },
    KeySpec {
        name: "engine.drain_timeout",
        default: Some("10s"),
        unit: "time",
        runtime: None,
        description: "On SIGTERM, time connections in flight get to finish before they are closed",
        slot: Slot::Engine(Field::Duration {
            min: Duration::ZERO,
            max: ms(HOUR),
            get: |e| e.drain_timeout,
            set: |e, v| e.drain_timeout = v,
        }),
    },
    KeySpec {
        name: "engine.sched_policy",
        default: Some("batch"),
        unit: "",
        runtime: Some(Apply::SchedPolicy),
        description: "Forwarder threads' scheduling: batch waits for the running task on its CPU, normal preempts it on every wakeup",
        slot: Slot::Engine(Field::Choice {
            names: SchedPolicy::NAMES,
            get: |e| e.sched_policy.name(),
            set: |e, v| {
                SchedPolicy::from_name(v)
                    .map(|v| e.sched_policy = v)
                    .is_some()
            },
        }),
    },
    KeySpec {
        name: "engine.user",
        default: Some("none"),
        unit: "",
        runtime: None,
        description: "User levee runs as once it has bound its sockets (it starts as root to bind); none keeps the user it started as",
        slot: Slot::Engine(Field::Account {
            get: |e| e.user.as_deref(),
            set: |e, v| e.user = v,
        }),
    },
    KeySpec {
        name: "engine.group",
        default: Some("none"),
        unit: "",
        runtime: None,
        description: "Group levee runs as with engine.user; none takes that user's own group",
        slot: Slot::Engine(Field::Account {
            get: |e| e.group.as_deref(),
            set: |e, v| e.group = v,
        }),
    },
    KeySpec {
        name: "log.level",
        default: Some("info"),
        unit: "",
        runtime: Some(Apply::LogLevel),
        description: "Least severe messages logged",
        slot: Slot::Log(Field::Choice {
            names: LogLevel::NAMES,
            get: |l| l.level.name(),
            set: |l, v| LogLevel::from_name(v).map(|v| l.level = v).is_some(),
        }),
    },
    KeySpec {
        name: "log.format",
        default: Some("text"),
        unit: "",
        runtime: None,
        description: "text for people, or json: one object per line (timestamp, level, target, fields) for log shippers",
        slot: Slot::Log(Field::Choice {
            names: LogFormat::NAMES,
            get: |l| l.format.name(),
            set: |l, v| LogFormat::from_name(v).map(|v| l.format = v).is_some(),
        }),
    },
    KeySpec {
        name: "ctl.socket",
        default: Some("/run/levee.sock"),
        unit: "",
        runtime: None,
        description: "Unix socket levee ctl talks to (mode 0600); none turns runtime control off",
        slot: Slot::Ctl(Field::Path {
            get: |c| c.socket.as_deref(),
            set: |c, v| c.socket = v,
        }),
    },
    KeySpec {
        name: "ctl.owner",
        default: Some("none"),
        unit: "",
        runtime: None,
        description: "User that owns the control socket; none leaves it to the user levee starts as",
        slot: Slot::Ctl(Field::Account {
            get: |c| c.owner.as_deref(),
            set: |c, v| c.owner = v,
        }),
    },
    KeySpec {
        name: "ctl.group",
        default: Some("none"),
        unit: "",
        runtime: None,
        description: "Group that owns the control socket; set, the socket is mode 0660 and its members may use levee ctl",
        slot: Slot::Ctl(Field::Account {
            get: |c| c.group.as_deref(),
            set: |c, v| c.group = v,
        }),
    },
    KeySpec {
        name: "stats.listen",
        default: Some("none"),
        unit: "",
        runtime: None,
        description: "Address levee run serves GET /metrics on over HTTP (Prometheus text format); none serves nothing",
        slot: Slot::Stats(Field::OptionalAddr {
            get: |s| s.listen,
            set: |s, v| s.listen = v,
        }),
    },
    KeySpec {
        name: "overflow.dir",
        default: Some("auto"),
        unit: "",
        runtime: None,
        description: "Directory of the overflow tier's shared memory (queues, backend load, notices); auto is /dev/shm/levee.PID, removed at exit",
        slot: Slot::Overflow(Field::Dir {
            get: |o| o.dir.as_deref(),
            set: |o, v| o.dir = v,
        }),
    },
    KeySpec {
        name: "overflow.workers",
        default: Some("1"),
        unit: "processes",
        runtime: Some(Apply::OverflowWorkers),
        description: "Worker processes levee run starts and restarts to serve queued connections; 0 leaves it to workers started on their own",
        slot: Slot::Overflow(Field::Count {
            min: 0,
            max: 64,
            rule: CountRule::Any,
            get: |o| o.workers,
            set: |o, v| o.workers = v,
        }),
    },
    KeySpec {
        name: "overflow.max_workers",
        default: Some("15"),
        unit: "processes",
        runtime: None,
        description: "Workers that may be attached at once, supervised or started on their own",
        slot: Slot::Overflow(Field::Count {
            min: 1,
            max: 127,
            rule: CountRule::Any,
            get: |o| o.max_workers,
            set: |o, v| o.max_workers = v,
        }),
    },
    KeySpec {
        name: "overflow.cores",
        default: Some("auto"),
        unit: "",
        runtime: None,
        description: "CPUs the supervised workers are pinned to, one each in turn; auto leaves them unpinned",
        slot: Slot::Overflow(Field::Cores {
            get: |o| &o.cores,
            set: |o, v| o.cores = v,
        }),
    },
    KeySpec {
        name: "overflow.handoff",
        default: Some("auto"),
        unit: "",
        runtime: None,
        description: "How a worker takes a client socket: pidfd (pidfd_getfd), scm_rights (sent over a Unix socket), or auto (pidfd where permitted)",
        slot: Slot::Overflow(Field::Choice {
            names: Handoff::NAMES,
            get: |o| o.handoff.name(),
            set: |o, v| Handoff::from_name(v).map(|v| o.handoff = v).is_some(),
        }),
    },
    KeySpec {
        name: "overflow.queue_timeout",
        default: Some("10s"),
        unit: "time",
        runtime: Some(Apply::OverflowSettings(OverflowSetting::QueueTimeout)),
        description: "A connection queued longer than this is closed; one predicted to wait longer is refused at once",
        slot: Slot::Overflow(Field::Duration {
            min: ms(1),
            max: ms(HOUR),
            get: |o| o.queue_timeout,
            set: |o, v| o.queue_timeout = v,
        }),
    },
    KeySpec {
        name: "overflow.max_queue",
        default: Some("4096"),
        unit: "connections",
        runtime: None,
        description: "Connections one pool's queue holds; past it new ones are refused",
        slot: Slot::Overflow(Field::Count {
            min: 1,
            max: 1 << 20,
            rule: CountRule::Any,
            get: |o| o.max_queue,
            set: |o, v| o.max_queue = v,
        }),
    },
    KeySpec {
        name: "overflow.discipline",
        default: Some("fifo"),
        unit: "",
        runtime: Some(Apply::OverflowSettings(OverflowSetting::Discipline)),
        description: "fifo serves in arrival order; codel also sheds connections that waited long while the queue stands above codel_target",
        slot: Slot::Overflow(Field::Choice {
            names: Discipline::NAMES,
            get: |o| o.discipline.name(),
            set: |o, v| Discipline::from_name(v).map(|v| o.discipline = v).is_some(),
        }),
    },
    KeySpec {
        name: "overflow.codel_target",
        default: Some("5ms"),
        unit: "time",
        runtime: Some(Apply::OverflowSettings(OverflowSetting::CodelTarget)),
        description: "CoDel: the queueing delay the queue may keep standing",
        slot: Slot::Overflow(Field::Duration {
            min: ms(1),
            max: ms(MINUTE),
            get: |o| o.codel_target,
            set: |o, v| o.codel_target = v,
        }),
    },
    KeySpec {
        name: "overflow.codel_interval",
        default: Some("100ms"),
        unit: "time",
        runtime: Some(Apply::OverflowSettings(OverflowSetting::CodelInterval)),
        description: "CoDel: the window over which the minimum queueing delay is taken",
        slot: Slot::Overflow(Field::Duration {
            min: ms(1),
            max: ms(MINUTE),
            get: |o| o.codel_interval,
            set: |o, v| o.codel_interval = v,
        }),
    },
    KeySpec {
        name: "overflow.max_attempts",
        default: Some("3"),
        unit: "deliveries",
        runtime: None,
        description: "Deliveries of one queued connection to workers that died before taking it over; then it is closed",
        slot: Slot::Overflow(Field::Count {
            min: 1,
            max: 100,
            rule: CountRule::Any,
            get: |o| o.max_attempts,
            set: |o, v| o.max_attempts = v,
        }),
    },
    KeySpec {
        name: "listener.NAME.addr",
        default: None,
        unit: "",
        runtime: None,
        description: "Address and port to accept client connections on; port 0 lets the kernel pick",
        slot: Slot::Listener(Field::Addr {
            port_zero: true,
            get: |l| l.config.addr,
            set: |l, v| l.config.addr = v,
        }),
    },
    KeySpec {
        name: "listener.NAME.pool",
        default: None,
        unit: "",
        runtime: None,
        description: "Pool whose backends serve this listener's connections",
        slot: Slot::Listener(Field::PoolName {
            get: |l| &l.pool,
            set: |l, v| l.pool = v,
        }),
    },
    KeySpec {
        name: "listener.NAME.refuse_payload",
        default: Some(""),
        unit: "",
        runtime: None,
        description: "Bytes written to a client before it is refused (queue full, timed out, rejected), like an HTTP 503; ${retry_after} in it becomes the predicted wait in seconds; empty: reset at once",
        slot: Slot::Listener(Field::Bytes {
            max_len: 4096,
            get: |l| &l.config.refuse_payload,
            set: |l, v| l.config.refuse_payload = v,
        }),
    },
    KeySpec {
        name: "listener.NAME.proxy_protocol",
        default: Some("none"),
        unit: "",
        runtime: None,
        description: "PROXY protocol header its clients send first (an upstream balancer's, such as HAProxy's send-proxy): none, v1 or v2; the header's client address then drives hashing, the queue and the PROXY header sent to backends, and a client without a valid one is reset (stats.closed.proxy_header_bad)",
        slot: Slot::Listener(Field::Choice {
            names: ProxyProtocol::NAMES,
            get: |l| l.config.proxy_protocol.name(),
            set: |l, v| {
                ProxyProtocol::from_name(v)
                    .map(|v| l.config.proxy_protocol = v)
                    .is_some()
            },
        }),
    },
    KeySpec {
        name: "listener.NAME.proxy_timeout",
        default: Some("5s"),
        unit: "time",
        runtime: None,
        description: "How long a client of a listener with proxy_protocol has to send its whole header; later it is reset (stats.closed.proxy_header_timeout), checked at least once a second",
        slot: Slot::Listener(Field::Duration {
            min: Duration::from_millis(1),
            max: Duration::from_secs(3600),
            get: |l| l.config.proxy_timeout,
            set: |l, v| l.config.proxy_timeout = v,
        }),
    },
    KeySpec {
        name: "listener.NAME.proxy_from",
        default: Some(""),
        unit: "",
        runtime: Some(Apply::Gate(GateRule::ProxyFrom)),
        description: "The balancers allowed to send a PROXY header to a listener that takes one, as address ranges, checked on the connection's own address before the header is read; others are reset (stats.closed.denied). Empty: anyone, and then a client that reaches the port directly can name any address in its header, so set it unless only the balancers can reach the port",
        slot: Slot::Listener(Field::Cidrs {
            get: |l| &l.config.proxy_from,
            set: |l, v| l.config.proxy_from = v,
        }),
    },
    KeySpec {
        name: "listener.NAME.allow",
        default: Some(""),
        unit: "",
        runtime: Some(Apply::Gate(GateRule::Allow)),
        description: "Only clients in these address ranges are served (the PROXY header's client on a listener that takes one); empty: everyone; others are reset (stats.closed.denied)",
        slot: Slot::Listener(Field::Cidrs {
            get: |l| &l.config.allow,
            set: |l, v| l.config.allow = v,
        }),
    },
    KeySpec {
        name: "listener.NAME.deny",
        default: Some(""),
        unit: "",
        runtime: Some(Apply::Gate(GateRule::Deny)),
        description: "Clients in these address ranges are reset (stats.closed.denied), whatever allow says",
        slot: Slot::Listener(Field::Cidrs {
            get: |l| &l.config.deny,
            set: |l, v| l.config.deny = v,
        }),
    },
    KeySpec {
        name: "listener.NAME.rate_per_source",
        default: Some("0"),
        unit: "connections/s",
        runtime: Some(Apply::Gate(GateRule::RatePerSource)),
        description: "New connections per second one source address may open (a token bucket, before a backend is chosen); past it they are reset (stats.closed.source_rate); 0: no limit",
        slot: Slot::Listener(Field::Count {
            min: 0,
            max: 1_000_000,
            rule: CountRule::Any,
            get: |l| l.config.rate_per_source,
            set: |l, v| l.config.rate_per_source = v,
        }),
    },
    KeySpec {
        name: "listener.NAME.burst_per_source",
        default: Some("0"),
        unit: "connections",
        runtime: Some(Apply::Gate(GateRule::BurstPerSource)),
        description: "How many new connections one source may open at once before rate_per_source holds it back; 0: as rate_per_source",
        slot: Slot::Listener(Field::Count {
            min: 0,
            max: 1_000_000,
            rule: CountRule::Any,
            get: |l| l.config.burst_per_source,
            set: |l, v| l.config.burst_per_source = v,
        }),
    },
    KeySpec {
        name: "listener.NAME.max_conns_per_source",
        default: Some("0"),
        unit: "connections",
        runtime: Some(Apply::Gate(GateRule::MaxConnsPerSource)),
        description: "Connections one source address (an IPv6 /64) may hold in this levee at once: relayed, waiting for a slot or queued (not those a worker took over); more are reset before a backend is chosen (stats.closed.source_conns); 0: no limit",
        slot: Slot::Listener(Field::Count {
            min: 0,
            max: 1_000_000,
            rule: CountRule::Any,
            get: |l| l.config.max_conns_per_source,
            set: |l, v| l.config.max_conns_per_source = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.balance",
        default: Some("maglev"),
        unit: "",
        runtime: None,
        description: "How a backend is chosen for each new connection",
        slot: Slot::Pool(Field::Choice {
            names: Balance::NAMES,
            get: |p| p.balance.name(),
            set: |p, v| Balance::from_name(v).map(|v| p.balance = v).is_some(),
        }),
    },
    KeySpec {
        name: "pool.NAME.hash_key",
        default: Some("src_ip"),
        unit: "",
        runtime: None,
        description: "What maglev and source_hash hash: the client's IP, or its IP and port",
        slot: Slot::Pool(Field::Choice {
            names: HashKey::NAMES,
            get: |p| p.hash_key.name(),
            set: |p, v| HashKey::from_name(v).map(|v| p.hash_key = v).is_some(),
        }),
    },
    KeySpec {
        name: "pool.NAME.table_size",
        default: Some("65537"),
        unit: "slots",
        runtime: None,
        description: "Maglev lookup table size; at least the number of backends, ideally 100 times it",
        slot: Slot::Pool(Field::Count {
            min: 7,
            max: 1_000_003,
            rule: CountRule::Prime,
            get: |p| p.table_size,
            set: |p, v| p.table_size = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.bound",
        default: Some("0"),
        unit: "x mean load",
        runtime: Some(Apply::PoolBound),
        description: "Bounded load: skip a backend holding more than bound times the pool's mean connections; 0 = no bound",
        slot: Slot::Pool(Field::Factor {
            min: 1.0,
            max: 100.0,
            get: |p| p.bound,
            set: |p, v| p.bound = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.overflow",
        default: Some("queue"),
        unit: "",
        runtime: None,
        description: "When no backend has room: queue (wait for a worker to serve it) or reject (close at once)",
        slot: Slot::Pool(Field::Choice {
            names: Overflow::NAMES,
            get: |p| p.overflow.name(),
            set: |p, v| Overflow::from_name(v).map(|v| p.overflow = v).is_some(),
        }),
    },
    KeySpec {
        name: "pool.NAME.proxy_protocol",
        default: Some("none"),
        unit: "",
        runtime: None,
        description: "PROXY protocol header sent to backends first, with the client's address: none, v1 (text) or v2 (binary), as HAProxy's send-proxy and send-proxy-v2",
        slot: Slot::Pool(Field::Choice {
            names: ProxyProtocol::NAMES,
            get: |p| p.proxy_protocol.name(),
            set: |p, v| {
                ProxyProtocol::from_name(v)
                    .map(|v| p.proxy_protocol = v)
                    .is_some()
            },
        }),
    },
    KeySpec {
        name: "pool.NAME.source",
        default: Some(""),
        unit: "",
        runtime: None,
        description: "Local addresses levee connects to backends from, taken in turn per connection (bound with IP_BIND_ADDRESS_NO_PORT, so each has its own ephemeral ports toward a backend: more connections to one backend than one address allows); every backend needs one of its family; empty: the kernel's choice",
        slot: Slot::Pool(Field::Ips {
            get: |p| &p.source,
            set: |p, v| p.source = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.check.type",
        default: Some("none"),
        unit: "",
        runtime: None,
        description: "Active health checks: none, or tcp (connect; then send check.send and expect check.expect when set)",
        slot: Slot::Pool(Field::Choice {
            names: CheckKind::NAMES,
            get: |p| p.health.check.name(),
            set: |p, v| {
                CheckKind::from_name(v)
                    .map(|v| p.health.check = v)
                    .is_some()
            },
        }),
    },
    KeySpec {
        name: "pool.NAME.check.interval",
        default: Some("2s"),
        unit: "time",
        runtime: None,
        description: "Time between the starts of two checks of one backend",
        slot: Slot::Pool(Field::Duration {
            min: ms(10),
            max: ms(HOUR),
            get: |p| p.health.interval,
            set: |p, v| p.health.interval = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.check.timeout",
        default: Some("1s"),
        unit: "time",
        runtime: None,
        description: "A check not passed within this time has failed",
        slot: Slot::Pool(Field::Duration {
            min: ms(1),
            max: ms(MINUTE),
            get: |p| p.health.timeout,
            set: |p, v| p.health.timeout = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.check.rise",
        default: Some("2"),
        unit: "checks",
        runtime: None,
        description: "Consecutive passed checks that bring a down backend up",
        slot: Slot::Pool(Field::Count {
            min: 1,
            max: 100,
            rule: CountRule::Any,
            get: |p| p.health.rise,
            set: |p, v| p.health.rise = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.check.fall",
        default: Some("3"),
        unit: "checks",
        runtime: None,
        description: "Consecutive failed checks that take an up backend down",
        slot: Slot::Pool(Field::Count {
            min: 1,
            max: 100,
            rule: CountRule::Any,
            get: |p| p.health.fall,
            set: |p, v| p.health.fall = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.check.send",
        default: Some(""),
        unit: "",
        runtime: None,
        description: "Bytes a tcp check sends once connected, like GET /health HTTP/1.0\\r\\n\\r\\n; empty sends nothing",
        slot: Slot::Pool(Field::Bytes {
            max_len: 1024,
            get: |p| &p.health.send,
            set: |p, v| p.health.send = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.check.expect",
        default: Some(""),
        unit: "",
        runtime: None,
        description: "A tcp check passes only if the reply starts with these bytes, like HTTP/1.1 200; empty: connecting is enough",
        slot: Slot::Pool(Field::Bytes {
            max_len: 1024,
            get: |p| &p.health.expect,
            set: |p, v| p.health.expect = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.eject.failures",
        default: Some("5"),
        unit: "failures",
        runtime: None,
        description: "Consecutive failures that eject a backend: connects refused or timed out, or connections the backend reset before sending a byte (a reset after it answered may be a client's doing and does not count); 0 = never",
        slot: Slot::Pool(Field::Count {
            min: 0,
            max: 10_000,
            rule: CountRule::Any,
            get: |p| p.health.eject_failures,
            set: |p, v| p.health.eject_failures = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.eject.time",
        default: Some("10s"),
        unit: "time",
        runtime: None,
        description: "How long a first ejection lasts; each repeat offence doubles it",
        slot: Slot::Pool(Field::Duration {
            min: ms(1),
            max: ms(HOUR),
            get: |p| p.health.eject_time,
            set: |p, v| p.health.eject_time = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.eject.max_time",
        default: Some("5m"),
        unit: "time",
        runtime: None,
        description: "The longest an ejection lasts, however often the backend offends",
        slot: Slot::Pool(Field::Duration {
            min: ms(1),
            max: ms(24 * HOUR),
            get: |p| p.health.eject_max_time,
            set: |p, v| p.health.eject_max_time = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.eject.max_percent",
        default: Some("50"),
        unit: "% of backends",
        runtime: None,
        description: "Most of the pool's backends ejected at once; at least one may always be ejected unless 0",
        slot: Slot::Pool(Field::Count {
            min: 0,
            max: 100,
            rule: CountRule::Any,
            get: |p| p.health.eject_max_percent,
            set: |p, v| p.health.eject_max_percent = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.slowstart",
        default: Some("0"),
        unit: "time",
        runtime: None,
        description: "A backend coming up ramps its share from nothing to full over this time; 0 = at once",
        slot: Slot::Pool(Field::Duration {
            min: Duration::ZERO,
            max: ms(HOUR),
            get: |p| p.health.slowstart,
            set: |p, v| p.health.slowstart = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.all_down",
        default: Some("refuse"),
        unit: "",
        runtime: None,
        description: "When no backend is up: refuse new connections at once, or try_anyway (ignore health; drained backends excepted)",
        slot: Slot::Pool(Field::Choice {
            names: AllDown::NAMES,
            get: |p| p.health.all_down.name(),
            set: |p, v| {
                AllDown::from_name(v)
                    .map(|v| p.health.all_down = v)
                    .is_some()
            },
        }),
    },
    KeySpec {
        name: "pool.NAME.backend.NAME.addr",
        default: None,
        unit: "",
        runtime: None,
        description: "Address and port of the backend",
        slot: Slot::Backend(Field::Addr {
            port_zero: false,
            get: |b| b.addr,
            set: |b, v| b.addr = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.backend.NAME.weight",
        default: Some("100"),
        unit: "share",
        runtime: Some(Apply::BackendWeight),
        description: "Relative share of new connections; 0 drains the backend (no new connections)",
        slot: Slot::Backend(Field::Count {
            min: 0,
            max: 1_000_000,
            rule: CountRule::Any,
            get: |b| b.weight,
            set: |b, v| b.weight = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.backend.NAME.max_conns",
        default: Some("0"),
        unit: "connections",
        runtime: Some(Apply::BackendMaxConns),
        description: "Most connections open to the backend from this host, all processes together; 0 = no cap",
        slot: Slot::Backend(Field::Count {
            min: 0,
            max: 1 << 20,
            rule: CountRule::Any,
            get: |b| b.max_conns,
            set: |b, v| b.max_conns = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.backend.NAME.state",
        default: Some("up"),
        unit: "",
        runtime: Some(Apply::BackendState),
        description: "up, or drain: no new connections while established ones continue to their end",
        slot: Slot::Backend(Field::Choice {
            names: AdminState::NAMES,
            get: |b| b.state.name(),
            set: |b, v| AdminState::from_name(v).map(|v| b.state = v).is_some(),
        }),
    },
    KeySpec {
        name: "pool.NAME.backend.NAME.check.interval",
        default: Some("0"),
        unit: "time",
        runtime: None,
        description: "This backend's own check.interval; 0 takes the pool's",
        slot: Slot::Backend(Field::Duration {
            min: Duration::ZERO,
            max: ms(HOUR),
            get: |b| b.check_interval,
            set: |b, v| b.check_interval = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.backend.NAME.check.timeout",
        default: Some("0"),
        unit: "time",
        runtime: None,
        description: "This backend's own check.timeout; 0 takes the pool's",
        slot: Slot::Backend(Field::Duration {
            min: Duration::ZERO,
            max: ms(MINUTE),
            get: |b| b.check_timeout,
            set: |b, v| b.check_timeout = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.backend.NAME.check.rise",
        default: Some("0"),
        unit: "checks",
        runtime: None,
        description: "This backend's own check.rise; 0 takes the pool's",
        slot: Slot::Backend(Field::Count {
            min: 0,
            max: 100,
            rule: CountRule::Any,
            get: |b| b.check_rise,
            set: |b, v| b.check_rise = v,
        }),
    },
    KeySpec {
        name: "pool.NAME.backend.NAME.check.fall",
        default: Some("0"),
        unit: "checks",
        runtime: None,
        description: "This backend's own check.fall; 0 takes the pool's",
        slot: Slot::Backend(Field::Count {
            min: 0,
            max: 100,
            rule: CountRule::Any,
            get: |b| b.check_fall,
            set: |b, v| b.check_fall = v,
        }),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn name_count(scope: Scope) -> usize {
        match scope {
            Scope::Engine | Scope::Log | Scope::Ctl | Scope::Stats | Scope::Overflow => 0,
            Scope::Listener | Scope::Pool => 1,
            Scope::Backend => 2,
        }
    }

    #[test]
    fn patterns_fit_their_scope() {
        for spec in KEYS {
            let names = spec.name.split('.').filter(|s| *s == NAME).count();
            assert_eq!(names, name_count(spec.scope()), "{}", spec.name);
            let prefix = match spec.scope() {
                Scope::Engine => "engine.",
                Scope::Log => "log.",
                Scope::Ctl => "ctl.",
                Scope::Stats => "stats.",
                Scope::Overflow => "overflow.",
                Scope::Listener => "listener.NAME.",
                Scope::Pool => "pool.NAME.",
                Scope::Backend => "pool.NAME.backend.NAME.",
            };
            assert!(spec.name.starts_with(prefix), "{}", spec.name);
            assert!(!spec.description.is_empty() && !spec.description.contains('\n'));
            assert!(!spec.description.contains('|'), "breaks the docs table");
        }
    }

    #[test]
    fn keys_are_in_scope_order_and_unique() {
        assert!(KEYS.windows(2).all(|w| w[0].scope() <= w[1].scope()));
        for (i, a) in KEYS.iter().enumerate() {
            for b in &KEYS[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn no_key_matches_two_patterns() {
        for spec in KEYS {
            let key = instantiate(spec.name, &["a", "b"]);
            let matching: Vec<&str> = KEYS
                .iter()
                .filter(|other| {
                    let p: Vec<&str> = other.name.split('.').collect();
                    let k: Vec<&str> = key.split('.').collect();
                    p.len() == k.len() && p.iter().zip(&k).all(|(p, k)| *p == NAME || p == k)
                })
                .map(|s| s.name)
                .collect();
            assert_eq!(matching, [spec.name]);
        }
    }

    /// `ctl` reads a runtime key back through its [`Apply`] alone: two keys sharing one would
    /// read back the same setting, and one in the wrong scope would find no object to read.
    #[test]
    fn each_runtime_key_changes_a_setting_of_its_own_in_its_scope() {
        let runtime: Vec<(&str, Apply)> = KEYS
            .iter()
            .filter_map(|k| k.runtime.map(|a| (k.name, a)))
            .collect();
        for (i, (name, apply)) in runtime.iter().enumerate() {
            assert!(
                runtime[i + 1..].iter().all(|(_, other)| other != apply),
                "{name}: {apply:?} is another key's"
            );
        }
        for spec in KEYS {
            let Some(apply) = spec.runtime else { continue };
            let scope = match apply {
                Apply::ConnectTimeout
                | Apply::ConnectRetries
                | Apply::IdleTimeout
                | Apply::SchedPolicy => Scope::Engine,
                Apply::LogLevel => Scope::Log,
                Apply::OverflowWorkers | Apply::OverflowSettings(_) => Scope::Overflow,
                Apply::Gate(_) => Scope::Listener,
                Apply::PoolBound => Scope::Pool,
                Apply::BackendWeight | Apply::BackendMaxConns | Apply::BackendState => {
                    Scope::Backend
                }
            };
            assert_eq!(spec.scope(), scope, "{}", spec.name);
        }
    }

    #[test]
    fn every_default_is_valid_and_canonical() {
        for spec in KEYS {
            if let Some(default) = spec.default {
                assert_eq!(spec.check(default).as_deref(), Ok(default), "{}", spec.name);
            }
        }
    }

    #[test]
    fn every_choice_round_trips() {
        for spec in KEYS {
            with_field!(&spec.slot, field => {
                if let Field::Choice { names, .. } = field {
                    for name in *names {
                        assert_eq!(spec.check(name).as_deref(), Ok(*name), "{}", spec.name);
                    }
                }
            });
        }
    }

    /// Each default, in every scope, is what a fresh struct holds. What the defaults are, and
    /// what their text means as typed values, is checked once, in tests/config.rs
    /// (`defaults_fill_in_what_the_file_leaves_out`), against values written out by hand.
    #[test]
    fn defaults_land_in_the_structs() {
        for spec in KEYS {
            let Some(default) = spec.default else {
                continue;
            };
            let held = with_field!(&spec.slot, field => field.format(&with_defaults()));
            assert_eq!(held, default, "{}", spec.name);
        }
    }

    #[test]
    fn lookup_finds_names_and_rejects_bad_ones() {
        match lookup("pool.web.backend.b-1.weight") {
            Lookup::Found { spec, names } => {
                assert_eq!(spec.name, "pool.NAME.backend.NAME.weight");
                assert_eq!(names, ["web", "b-1"]);
            }
            other => panic!("{other:?}"),
        }
        match lookup("pool.web.backend.b!.addr") {
            Lookup::BadName { role, name, .. } => assert_eq!((role, name), ("backend", "b!")),
            other => panic!("{other:?}"),
        }
        match lookup("listener..addr") {
            Lookup::BadName { role, name, .. } => assert_eq!((role, name), ("listener", "")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lookup_suggests_near_keys_only() {
        let suggestion = |key| match lookup(key) {
            Lookup::Unknown => suggest(key),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            suggestion("engine.ring_entires").as_deref(),
            Some("engine.ring_entries")
        );
        assert_eq!(
            suggestion("pool.web.balanse").as_deref(),
            Some("pool.web.balance")
        );
        assert_eq!(
            suggestion("pool.web.backend.b1.wieght").as_deref(),
            Some("pool.web.backend.b1.weight")
        );
        assert_eq!(
            suggestion("pol.web.balance").as_deref(),
            Some("pool.web.balance")
        );
        assert_eq!(suggestion("engine.threads"), None);
        assert_eq!(suggestion("x"), None);
        assert_eq!(suggestion(&"a.".repeat(1000)), None);
    }

    #[test]
    fn instantiates_patterns() {
        assert_eq!(
            instantiate("pool.NAME.backend.NAME.addr", &["web", "b1"]),
            "pool.web.backend.b1.addr"
        );
        assert_eq!(instantiate("engine.cores", &[]), "engine.cores");
    }
}
