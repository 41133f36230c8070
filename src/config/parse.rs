//! The parser: sysctl.conf lines in, a validated [`Config`] or every problem at once out.
//!
//! Two passes. The first reads each line into drafts of the engine, listeners, pools and
//! backends, each starting from the registry's defaults. The second checks what single lines
//! cannot show: required keys, references between listeners and pools, shared addresses, table
//! sizes. A key whose value was rejected is remembered, so the second pass does not pile
//! follow-on errors onto it.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::error::{ConfigError, ConfigErrors, ErrorKind};
use super::registry::{self, KeySpec, ListenerDraft, Lookup, Scope, Slot};
use super::value;
use super::{
    BackendConfig, Config, CtlConfig, EngineConfig, ListenerConfig, LogConfig, OverflowConfig,
    PoolConfig, StatsConfig,
};

/// Most backends one pool may hold: selectors rank backends by `u16` index.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// Keys the cross-checks read, by pattern; a test ties each to its registry entry.
const LISTENER_ADDR: &str = "listener.NAME.addr";
const LISTENER_POOL: &str = "listener.NAME.pool";
const POOL_TABLE_SIZE: &str = "pool.NAME.table_size";
const BACKEND_ADDR: &str = "pool.NAME.backend.NAME.addr";
const POOL_SOURCE: &str = "pool.NAME.source";

/// Most problems reported for one file; the rest are counted. A file with more is likely not
/// a configuration at all, and the list stays bounded in memory and on screen.
pub const MAX_ERRORS: usize = 100;

/// Longest key echoed in a message.
const MAX_KEY_ECHO: usize = 120;

/// A listener, pool or backend: its name, the line of its first key, its settings.
struct Object<T> {
    name: String,
    line: usize,
    value: T,
}

struct PoolDraft {
    object: Object<PoolConfig>,
    backends: Vec<Object<BackendConfig>>,
    backend_index: HashMap<String, usize>,
}

/// A key set in the file: where, and whether its value was accepted.
struct Assignment {
    line: usize,
    accepted: bool,
}

struct Parser<'f> {
    file: &'f str,
    errors: Vec<ConfigError>,
    /// Problems found beyond [`MAX_ERRORS`].
    suppressed: usize,
    engine: EngineConfig,
    log: LogConfig,
    ctl: CtlConfig,
    stats: StatsConfig,
    overflow: OverflowConfig,
    listeners: Vec<Object<ListenerDraft>>,
    listener_index: HashMap<String, usize>,
    pools: Vec<PoolDraft>,
    pool_index: HashMap<String, usize>,
    assigned: HashMap<String, Assignment>,
}

pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut parser = Parser {
        file,
        errors: Vec::new(),
        suppressed: 0,
        engine: registry::with_defaults(),
        log: registry::with_defaults(),
        ctl: registry::with_defaults(),
        stats: registry::with_defaults(),
        overflow: registry::with_defaults(),
        listeners: Vec::new(),
        listener_index: HashMap::new(),
        pools: Vec::new(),
        pool_index: HashMap::new(),
        assigned: HashMap::new(),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.lines().enumerate() {
        parser.line(i + 1, line);
    }
    parser.finish()
}

impl Parser<'_> {
    fn error(&mut self, line: Option<usize>, key: Option<&str>, kind: ErrorKind, message: String) {
        if self.errors.len() >= MAX_ERRORS {
            self.suppressed += 1;
            return;
        }
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            key: key.map(|k| value::sanitize(k, MAX_KEY_ECHO)),
            message,
            kind,
        });
    }

    fn line(&mut self, number: usize, raw: &str) {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            return;
        }
        let Some((key, text)) = line.split_once('=') else {
            let message = format!("expected `key = value`, {}", value::found(line));
            self.error(Some(number), None, ErrorKind::Syntax, message);
            return;
        };
        let (optional, key) = match key.trim().strip_prefix('-') {
            Some(key) => (true, key.trim()),
            None => (false, key.trim()),
        };
        let text = text.trim();
        if key.is_empty() {
            let message = "expected a key before `=`".to_string();
            self.error(Some(number), None, ErrorKind::Syntax, message);
            return;
        }
        match registry::lookup(key) {
            Lookup::Unknown if optional => {}
            // Past the cap the error is only counted, so skip the costly suggestion.
            Lookup::Unknown if self.errors.len() >= MAX_ERRORS => self.suppressed += 1,
            Lookup::Unknown => {
                let message = match registry::suggest(key) {
                    Some(near) => format!("unknown key; did you mean `{near}`?"),
                    None => "unknown key; docs/config.md lists every key".to_string(),
                };
                self.error(Some(number), Some(key), ErrorKind::UnknownKey, message);
            }
            Lookup::BadName { role, name, .. } => {
                let message = format!(
                    "invalid {role} name `{}`: names are {}",
                    value::sanitize(name, MAX_KEY_ECHO),
                    value::NAME_RULE
                );
                self.error(Some(number), Some(key), ErrorKind::InvalidName, message);
            }
            Lookup::Found { spec, names } => self.assign(number, key, spec, &names, text),
        }
    }

    fn assign(&mut self, number: usize, key: &str, spec: &KeySpec, names: &[&str], text: &str) {
        if let Some(first) = self.assigned.get(key) {
            let message = format!(
                "set again; it was first set on line {}, and a key may be set only once",
                first.line
            );
            self.error(Some(number), Some(key), ErrorKind::Duplicate, message);
            return;
        }
        let result = match (&spec.slot, names) {
            (Slot::Engine(field), []) => field.parse_into(&mut self.engine, text),
            (Slot::Log(field), []) => field.parse_into(&mut self.log, text),
            (Slot::Ctl(field), []) => field.parse_into(&mut self.ctl, text),
            (Slot::Stats(field), []) => field.parse_into(&mut self.stats, text),
            (Slot::Overflow(field), []) => field.parse_into(&mut self.overflow, text),
            (Slot::Listener(field), [listener]) => {
                let listener = self.listener(listener, number);
                field.parse_into(listener, text)
            }
            (Slot::Pool(field), [pool]) => {
                let pool = self.pool(pool, number);
                field.parse_into(&mut pool.object.value, text)
            }
            (Slot::Backend(field), [pool, backend]) => {
                let pool = self.pool(pool, number);
                let backend = backend_in(pool, backend, number);
                field.parse_into(backend, text)
            }
            // The registry's tests pin each scope's number of names, so this cannot happen.
            _ => Err(format!("registry entry {} is malformed", spec.name)),
        };
        let accepted = match result {
            Ok(()) => true,
            Err(message) => {
                let message = format!("{message}{}", value::comment_hint(text));
                self.error(Some(number), Some(key), ErrorKind::BadValue, message);
                false
            }
        };
        let assignment = Assignment {
            line: number,
            accepted,
        };
        self.assigned.insert(key.to_string(), assignment);
    }

    /// The listener called `name`, created with defaults on its first key.
    fn listener(&mut self, name: &str, line: usize) -> &mut ListenerDraft {
        let index = *self
            .listener_index
            .entry(name.to_string())
            .or_insert_with(|| {
                let mut value: ListenerDraft = registry::with_defaults();
                value.config.name = name.to_string();
                self.listeners.push(Object {
                    name: name.to_string(),
                    line,
                    value,
                });
                self.listeners.len() - 1
            });
        &mut self.listeners[index].value
    }

    /// The pool called `name`, created with defaults on its first key (its backends' keys
    /// included).
    fn pool(&mut self, name: &str, line: usize) -> &mut PoolDraft {
        let index = *self.pool_index.entry(name.to_string()).or_insert_with(|| {
            let mut value: PoolConfig = registry::with_defaults();
            value.name = name.to_string();
            self.pools.push(PoolDraft {
                object: Object {
                    name: name.to_string(),
                    line,
                    value,
                },
                backends: Vec::new(),
                backend_index: HashMap::new(),
            });
            self.pools.len() - 1
        });
        &mut self.pools[index]
    }

    /// Where `key` was set, if its value was accepted.
    fn accepted(&self, key: &str) -> Option<usize> {
        self.assigned
            .get(key)
            .filter(|a| a.accepted)
            .map(|a| a.line)
    }

    /// Reports each required key of `scope` that the object never set.
    fn require(&mut self, scope: Scope, names: &[&str], line: usize) {
        for spec in registry::KEYS {
            if spec.scope() != scope || !spec.is_required() {
                continue;
            }
            let key = registry::instantiate(spec.name, names);
            if !self.assigned.contains_key(&key) {
                let message = format!(
                    "not set, and every {} needs it; add `{key} = {}`",
                    scope.noun(),
                    spec.placeholder()
                );
                self.error(Some(line), Some(&key), ErrorKind::MissingKey, message);
            }
        }
    }

    /// Keys of the overflow tier that must agree with each other.
    fn check_overflow(&mut self) {
        let o = &self.overflow;
        if o.workers > o.max_workers {
            let message = format!(
                "{} workers, but overflow.max_workers allows {}: raise overflow.max_workers or start fewer",
                o.workers, o.max_workers
            );
            let line = self.assigned.get("overflow.workers").map(|a| a.line);
            self.error(line, Some("overflow.workers"), ErrorKind::BadValue, message);
        }
    }

    fn finish(mut self) -> Result<Config, ConfigErrors> {
        let listeners = std::mem::take(&mut self.listeners);
        let pools = std::mem::take(&mut self.pools);
        let references = self.check_listeners(&listeners);
        self.check_pools(&pools, &references);
        self.check_loops(&listeners, &pools);
        self.check_sources(&pools);
        self.check_overflow();
        if listeners.is_empty() {
            let message = "no listener is defined; add one, like `listener.web.addr = 0.0.0.0:80` and `listener.web.pool = web`".to_string();
            self.error(None, None, ErrorKind::NoListener, message);
        }
        if !self.errors.is_empty() {
            let mut errors = ConfigErrors::new(self.errors);
            if self.suppressed > 0 {
                errors.push_last(ConfigError {
                    file: self.file.to_string(),
                    line: None,
                    key: None,
                    message: format!(
                        "{} more problems not shown; fix the ones above, or check that this is the right file",
                        self.suppressed
                    ),
                    kind: ErrorKind::Truncated,
                });
            }
            return Err(errors);
        }
        Ok(Config {
            engine: self.engine,
            log: self.log,
            ctl: self.ctl,
            stats: self.stats,
            overflow: self.overflow,
            listeners: references.listeners,
            pools: pools
                .into_iter()
                .map(|pool| PoolConfig {
                    backends: pool.backends.into_iter().map(|b| b.value).collect(),
                    ..pool.object.value
                })
                .collect(),
        })
    }

    /// Required keys, shared addresses and pool references of every listener.
    fn check_listeners(&mut self, listeners: &[Object<ListenerDraft>]) -> References {
        let mut references = References {
            listeners: Vec::with_capacity(listeners.len()),
            pool_used: vec![false; self.pool_index.len()],
            complete: !listeners.is_empty(),
        };
        let mut addresses: HashMap<SocketAddr, (&str, usize)> = HashMap::new();
        for listener in listeners {
            let name = listener.name.as_str();
            self.require(Scope::Listener, &[name], listener.line);

            let addr_key = registry::instantiate(LISTENER_ADDR, &[name]);
            let addr = listener.value.config.addr;
            // Port 0 binds a fresh port each time, so two such listeners do not collide.
            if let Some(line) = self.accepted(&addr_key).filter(|_| addr.port() != 0) {
                if let Some((other, other_line)) = addresses.get(&addr) {
                    let message = format!(
                        "{addr} is already the address of listener `{other}` (line {other_line}); each listener needs its own"
                    );
                    self.error(
                        Some(line),
                        Some(&addr_key),
                        ErrorKind::AddressTaken,
                        message,
                    );
                } else {
                    addresses.insert(addr, (name, line));
                }
            }

            let pool_key = registry::instantiate(LISTENER_POOL, &[name]);
            let pool_name = &listener.value.pool;
            match (self.accepted(&pool_key), self.pool_index.get(pool_name)) {
                (Some(_), Some(&index)) => {
                    references.pool_used[index] = true;
                    references.listeners.push(ListenerConfig {
                        pool: index,
                        ..listener.value.config.clone()
                    });
                }
                (Some(line), None) => {
                    references.complete = false;
                    let message = self.unknown_pool(pool_name);
                    self.error(Some(line), Some(&pool_key), ErrorKind::UnknownPool, message);
                }
                // Not set, or set to a bad name: reported already.
                (None, _) => references.complete = false,
            }
        }
        references
    }

    fn unknown_pool(&self, pool: &str) -> String {
        let near = self
            .pool_index
            .keys()
            .map(|p| (value::edit_distance(pool, p), p))
            .filter(|(d, _)| *d <= 2)
            .min();
        match near {
            Some((_, near)) => format!("no pool named `{pool}` is defined; did you mean `{near}`?"),
            None => format!(
                "no pool named `{pool}` is defined; define its backends with `pool.{pool}.backend.NAME.addr = IP:PORT`"
            ),
        }
    }

    /// Backends, table sizes and use of every pool, and the backends' required keys.
    fn check_pools(&mut self, pools: &[PoolDraft], references: &References) {
        for (index, pool) in pools.iter().enumerate() {
            let name = pool.object.name.as_str();
            let line = pool.object.line;
            let object_key = format!("pool.{name}");
            let backends = pool.backends.len();
            if backends == 0 {
                let message = format!(
                    "has no backends; add one with `pool.{name}.backend.NAME.addr = IP:PORT`"
                );
                self.error(Some(line), Some(&object_key), ErrorKind::EmptyPool, message);
            }
            if backends > MAX_BACKENDS {
                let message = format!(
                    "has {backends} backends, more than the {MAX_BACKENDS} a pool can hold; split it into several pools"
                );
                self.error(
                    Some(line),
                    Some(&object_key),
                    ErrorKind::TooManyBackends,
                    message,
                );
            }

            let table_key = registry::instantiate(POOL_TABLE_SIZE, &[name]);
            let table_size = pool.object.value.table_size;
            let table_rejected =
                self.assigned.contains_key(&table_key) && self.accepted(&table_key).is_none();
            if !table_rejected && backends > table_size as usize {
                let at = self.accepted(&table_key).unwrap_or(line);
                let next = (backends..)
                    .find(|&n| u32::try_from(n).is_ok_and(value::is_prime))
                    .unwrap_or(backends);
                let message = format!(
                    "{table_size} slots cannot hold the pool's {backends} backends; use a prime of at least {backends}, like {next}"
                );
                self.error(
                    Some(at),
                    Some(&table_key),
                    ErrorKind::TooManyBackends,
                    message,
                );
            }

            // Reported only when every listener's pool is known: otherwise a typo in one
            // listener's pool would show up a second time here.
            if references.complete && !references.pool_used.get(index).copied().unwrap_or(false) {
                let message = format!(
                    "no listener sends connections to this pool; point one at it with `listener.NAME.pool = {name}`, or remove the pool"
                );
                self.error(
                    Some(line),
                    Some(&object_key),
                    ErrorKind::UnusedPool,
                    message,
                );
            }

            for backend in &pool.backends {
                self.require(Scope::Backend, &[name, &backend.name], backend.line);
            }
        }
    }
}

impl Parser<'_> {
    /// A backend that is one of levee's own listeners: each connection to it would come back
    /// in as a new client and connect again, until descriptors run out.
    fn check_loops(&mut self, listeners: &[Object<ListenerDraft>], pools: &[PoolDraft]) {
        for pool in pools {
            for backend in &pool.backends {
                let addr_key =
                    registry::instantiate(BACKEND_ADDR, &[&pool.object.name, &backend.name]);
                let Some(line) = self.accepted(&addr_key) else {
                    continue;
                };
                let target = backend.value.addr;
                let Some(listener) = listeners
                    .iter()
                    .find(|l| same_socket(l.value.config.addr, target))
                else {
                    continue;
                };
                let message = format!(
                    "{target} is where listener `{}` (line {}) listens: levee would connect to \
                     itself, and every connection would loop back in until descriptors run out",
                    listener.name, listener.line
                );
                self.error(Some(line), Some(&addr_key), ErrorKind::SelfLoop, message);
            }
        }
    }
}

impl Parser<'_> {
    /// With `pool.NAME.source` set, every backend needs a source address of its own family.
    fn check_sources(&mut self, pools: &[PoolDraft]) {
        for pool in pools {
            let sources = &pool.object.value.source;
            if sources.is_empty() {
                continue;
            }
            let key = registry::instantiate(POOL_SOURCE, &[&pool.object.name]);
            let Some(line) = self.accepted(&key) else {
                continue;
            };
            for backend in &pool.backends {
                let addr = backend.value.addr;
                if !sources.iter().any(|s| s.is_ipv4() == addr.is_ipv4()) {
                    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                    let message = format!(
                        "no {family} address for backend `{}` ({addr}): each backend needs a \
                         source of its own family",
                        backend.name
                    );
                    self.error(Some(line), Some(&key), ErrorKind::SourceFamily, message);
                }
            }
        }
    }
}

/// Whether a connection to `target` reaches a listener bound to `listen`: the same address,
/// or a wildcard listener of the same port and family reached through loopback or the wildcard.
fn same_socket(listen: SocketAddr, target: SocketAddr) -> bool {
    if listen.port() != target.port() || listen.port() == 0 {
        return false;
    }
    let ip = target.ip();
    if listen.ip().is_unspecified() {
        // A wildcard listener on [::] takes IPv4 too (levee does not set IPV6_V6ONLY): count
        // a v4 target as reaching it.
        let family = listen.is_ipv6() || target.is_ipv4();
        family && (ip.is_loopback() || ip.is_unspecified())
    } else {
        listen.ip() == ip
    }
}

/// What the listeners refer to.
struct References {
    /// The listeners whose pool resolved, with its index.
    listeners: Vec<ListenerConfig>,
    /// By pool index: whether some listener uses the pool.
    pool_used: Vec<bool>,
    /// Whether there are listeners and every one named a pool that exists.
    complete: bool,
}

/// The backend called `name` in `pool`, created with defaults on its first key.
fn backend_in<'p>(pool: &'p mut PoolDraft, name: &str, line: usize) -> &'p mut BackendConfig {
    let backends = &mut pool.backends;
    let index = *pool
        .backend_index
        .entry(name.to_string())
        .or_insert_with(|| {
            let mut value: BackendConfig = registry::with_defaults();
            value.name = name.to_string();
            backends.push(Object {
                name: name.to_string(),
                line,
                value,
            });
            backends.len() - 1
        });
    &mut backends[index].value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_checked_keys_are_in_the_registry() {
        for pattern in [LISTENER_ADDR, LISTENER_POOL, POOL_TABLE_SIZE] {
            assert!(
                registry::KEYS.iter().any(|k| k.name == pattern),
                "{pattern}"
            );
        }
    }
}
