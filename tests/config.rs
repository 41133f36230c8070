//! The configuration parser through the library API: syntax, units, defaults, every class of
//! error with its exact message, the listing round trip, the generated docs, and no panics on
//! any input.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use levee::config::registry::{self, KEYS, Scope};
use levee::config::{
    self, Balance, Config, ConfigErrors, CoreSet, ErrorKind, HashKey, LogLevel, SchedPolicy,
};
use proptest::prelude::*;

const MINIMAL: &str = "\
listener.web.addr = 0.0.0.0:8080
listener.web.pool = web
pool.web.backend.b1.addr = 10.0.0.1:80
";

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    config::parse(text, "levee.conf")
}

fn parse_ok(text: &str) -> Config {
    match parse(text) {
        Ok(cfg) => cfg,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

/// The error report for `text`, one line per error.
fn errors(text: &str) -> String {
    match parse(text) {
        Ok(cfg) => panic!("expected errors, got {cfg:#?}"),
        Err(errors) => errors.to_string(),
    }
}

fn kinds(text: &str) -> Vec<ErrorKind> {
    parse(text)
        .err()
        .map(|e| e.errors().iter().map(|e| e.kind).collect())
        .unwrap_or_default()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---- syntax ----------------------------------------------------------------------------------

/// The defaults as typed values, written out by hand on purpose: an oracle for what the
/// registry's default text parses to. The one place outside the registry that states them.
#[test]
fn defaults_fill_in_what_the_file_leaves_out() {
    let cfg = parse_ok(MINIMAL);
    let e = &cfg.engine;
    assert_eq!(e.cores, CoreSet::Auto);
    assert_eq!(
        (
            e.ring_entries,
            e.buffer_size,
            e.buffers,
            e.max_conns,
            e.backlog
        ),
        (4096, 16384, 2048, 16384, 4096)
    );
    assert_eq!(e.connect_timeout, ms(5000));
    assert_eq!(e.connect_retries, 2);
    assert_eq!(e.idle_timeout, ms(300_000));
    assert_eq!(e.drain_timeout, ms(10_000));
    assert_eq!(cfg.log.level, LogLevel::Info);
    assert_eq!(cfg.log.format, config::LogFormat::Text);
    assert_eq!(cfg.listeners.len(), 1);
    assert_eq!(cfg.listeners[0].name, "web");
    assert_eq!(cfg.listeners[0].addr, addr("0.0.0.0:8080"));
    assert_eq!(cfg.listeners[0].pool, 0);
    let pool = &cfg.pools[0];
    assert_eq!(pool.name, "web");
    assert_eq!(pool.balance, Balance::Maglev);
    assert_eq!(pool.hash_key, HashKey::SourceIp);
    assert_eq!(pool.table_size, 65537);
    assert_eq!(pool.bound, None);
    let backend = &pool.backends[0];
    assert_eq!(backend.name, "b1");
    assert_eq!(backend.addr, addr("10.0.0.1:80"));
    assert_eq!((backend.weight, backend.max_conns), (100, 0));
    assert_eq!(backend.state, config::AdminState::Up);
    assert_eq!(e.sched_policy, config::SchedPolicy::Batch);
    assert_eq!(*e, levee::config::EngineConfig::default());
    // The rest of the defaults, written out here rather than taken from the registry, so that
    // a changed default fails here as well as in docs/config.md.
    assert_eq!(cfg.ctl.socket, Some(PathBuf::from("/run/levee.sock")));
    assert_eq!((&cfg.ctl.owner, &cfg.ctl.group), (&None, &None));
    assert_eq!(cfg.stats.listen, None);
    let o = &cfg.overflow;
    assert_eq!(o.dir, None);
    assert_eq!((o.workers, o.max_workers), (1, 15));
    assert_eq!(o.cores, CoreSet::Auto);
    assert_eq!(o.handoff, config::Handoff::Auto);
    assert_eq!((o.queue_timeout, o.max_queue), (ms(10_000), 4096));
    assert_eq!(o.discipline, config::Discipline::Fifo);
    assert_eq!((o.codel_target, o.codel_interval), (ms(5), ms(100)));
    assert_eq!(o.max_attempts, 3);
    let l = &cfg.listeners[0];
    assert_eq!(l.refuse_payload, b"");
    assert_eq!(l.proxy_protocol, config::ProxyProtocol::None);
    assert_eq!(l.proxy_timeout, ms(5000));
    assert!(l.proxy_from.is_empty() && l.allow.is_empty() && l.deny.is_empty());
    assert_eq!(
        (
            l.rate_per_source,
            l.burst_per_source,
            l.max_conns_per_source
        ),
        (0, 0, 0)
    );
    assert_eq!(pool.overflow, config::Overflow::Queue);
    assert_eq!(pool.proxy_protocol, config::ProxyProtocol::None);
    assert!(pool.source.is_empty());
    let h = &pool.health;
    assert_eq!(h.check, config::CheckKind::None);
    assert_eq!((h.interval, h.timeout), (ms(2000), ms(1000)));
    assert_eq!((h.rise, h.fall), (2, 3));
    assert_eq!(
        (h.send.as_slice(), h.expect.as_slice()),
        (&b""[..], &b""[..])
    );
    assert_eq!((h.eject_failures, h.eject_max_percent), (5, 50));
    assert_eq!((h.eject_time, h.eject_max_time), (ms(10_000), ms(300_000)));
    assert_eq!(h.slowstart, ms(0));
    assert_eq!(h.all_down, config::AllDown::Refuse);
}

#[test]
fn every_key_lands_in_its_field() {
    let cfg = parse_ok(
        "engine.cores = 0,2,5-7
         engine.ring_entries = 64
         engine.buffer_size = 1M
         engine.buffers = 32768
         engine.max_conns = 1048576
         engine.backlog = 65535
         engine.connect_timeout = 250ms
         engine.connect_retries = 7
         engine.idle_timeout = 0
         engine.drain_timeout = 1h
         log.level = trace
         log.format = json
         engine.user = nobody
         engine.group = nogroup
         ctl.owner = root
         ctl.group = adm
         listener.web.addr = 127.0.0.1:0
         listener.web.pool = web
         pool.web.balance = least_conn
         pool.web.hash_key = src_ip_port
         pool.web.table_size = 7
         pool.web.bound = 1.125
         pool.web.backend.b1.addr = 10.0.0.1:80
         pool.web.backend.b1.weight = 0
         pool.web.backend.b1.max_conns = 512",
    );
    let e = &cfg.engine;
    assert_eq!(e.cores, CoreSet::List(vec![0, 2, 5, 6, 7]));
    assert_eq!(
        (
            e.ring_entries,
            e.buffer_size,
            e.buffers,
            e.max_conns,
            e.backlog
        ),
        (64, 1 << 20, 32768, 1 << 20, 65535)
    );
    assert_eq!(
        (
            e.connect_timeout,
            e.connect_retries,
            e.idle_timeout,
            e.drain_timeout
        ),
        (ms(250), 7, Duration::ZERO, ms(3_600_000))
    );
    assert_eq!(cfg.log.level, LogLevel::Trace);
    assert_eq!(cfg.log.format, config::LogFormat::Json);
    assert_eq!(cfg.engine.user.as_deref(), Some("nobody"));
    assert_eq!(cfg.engine.group.as_deref(), Some("nogroup"));
    assert_eq!(cfg.ctl.owner.as_deref(), Some("root"));
    assert_eq!(cfg.ctl.group.as_deref(), Some("adm"));
    assert_eq!(cfg.listeners[0].addr, addr("127.0.0.1:0"));
    let pool = &cfg.pools[0];
    assert_eq!(
        (pool.balance, pool.hash_key, pool.table_size, pool.bound),
        (Balance::LeastConn, HashKey::SourceIpPort, 7, Some(1.125))
    );
    let b = &pool.backends[0];
    assert_eq!((b.weight, b.max_conns), (0, 512));
}

#[test]
fn comments_blank_lines_and_whitespace_are_ignored() {
    let text = "\u{feff}# a comment\r\n\
                ; another comment\r\n\
                \x20   # indented comment\r\n\
                \r\n\
                \t\r\n\
                \x20 listener.web.addr\t=   0.0.0.0:8080  \r\n\
                listener.web.pool=web\r\n\
                pool.web.backend.b1.addr =10.0.0.1:80";
    let cfg = parse_ok(text);
    assert_eq!(cfg, parse_ok(MINIMAL));
}

#[test]
fn comments_take_a_whole_line() {
    assert_eq!(
        errors(&format!("{MINIMAL}engine.backlog = 1024 # keep it small\n")),
        "levee.conf:4: engine.backlog: expected a whole number from 1 to 65535, \
         found `1024 # keep it small`; comments must be on a line of their own"
    );
}

#[test]
fn the_value_is_everything_after_the_first_equals_sign() {
    assert_eq!(
        errors(&format!("{MINIMAL}log.level = info = debug\n")),
        "levee.conf:4: log.level: expected one of error, warn, info, debug, trace, found `info = debug`"
    );
}

#[test]
fn a_dash_skips_unknown_keys_only() {
    let cfg = parse_ok(&format!(
        "{MINIMAL}-engine.future_key = whatever\n- pool.web.slow_start = 30s\n-engine.backlog = 128\n"
    ));
    assert_eq!(cfg.engine.backlog, 128);
    assert_eq!(
        errors(&format!("{MINIMAL}-engine.backlog = lots\n")),
        "levee.conf:4: engine.backlog: expected a whole number from 1 to 65535, found `lots`"
    );
    // A dash does not hide a bad name in a key of known shape.
    assert_eq!(
        kinds(&format!("{MINIMAL}-pool.w!b.balance = p2c\n")),
        [ErrorKind::InvalidName]
    );
    // Nor does it let a known key be set twice.
    assert_eq!(
        kinds(&format!(
            "{MINIMAL}engine.backlog = 1\n-engine.backlog = 2\n"
        )),
        [ErrorKind::Duplicate]
    );
}

#[test]
fn sizes_take_units_and_bounds() {
    let size = |v: &str| {
        parse(&format!("{MINIMAL}engine.buffer_size = {v}\n")).map(|c| c.engine.buffer_size)
    };
    assert_eq!(size("16K").ok(), Some(16 << 10));
    assert_eq!(size("64k").ok(), Some(64 << 10));
    assert_eq!(size("1M").ok(), Some(1 << 20));
    assert_eq!(size("1024").ok(), Some(1024));
    assert_eq!(size("5000").ok(), Some(5000));
    assert_eq!(
        errors(&format!("{MINIMAL}engine.buffer_size = 1G\n")),
        "levee.conf:4: engine.buffer_size: expected a size from 1K to 1M, found `1G`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}engine.buffer_size = 1023\n")),
        "levee.conf:4: engine.buffer_size: expected a size from 1K to 1M, found `1023`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}engine.buffer_size = 16KB\n")),
        "levee.conf:4: engine.buffer_size: expected a size: a number of bytes, optionally with \
         K, M or G (x1024), like 16K, found `16KB`"
    );
}

#[test]
fn durations_need_units_and_stay_in_bounds() {
    let timeout = |v: &str| {
        parse(&format!("{MINIMAL}engine.connect_timeout = {v}\n")).map(|c| c.engine.connect_timeout)
    };
    assert_eq!(timeout("250ms").ok(), Some(ms(250)));
    assert_eq!(timeout("30s").ok(), Some(ms(30_000)));
    assert_eq!(timeout("5m").ok(), Some(ms(300_000)));
    assert_eq!(timeout("1ms").ok(), Some(ms(1)));
    assert_eq!(
        errors(&format!("{MINIMAL}engine.connect_timeout = 30\n")),
        "levee.conf:4: engine.connect_timeout: expected a duration with a unit, like 250ms or 30s \
         (only 0 may go without one), found `30`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}engine.connect_timeout = 0\n")),
        "levee.conf:4: engine.connect_timeout: expected a duration from 1ms to 5m, found `0`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}engine.connect_timeout = 1h\n")),
        "levee.conf:4: engine.connect_timeout: expected a duration from 1ms to 5m, found `1h`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}engine.drain_timeout = 10 s\n")),
        "levee.conf:4: engine.drain_timeout: expected a duration: a whole number with ms, s, m or h, \
         like 250ms or 30s, found `10 s`"
    );
    let idle = parse_ok(&format!("{MINIMAL}engine.idle_timeout = 0\n"));
    assert_eq!(idle.engine.idle_timeout, Duration::ZERO);
    let idle = parse_ok(&format!("{MINIMAL}engine.idle_timeout = 24h\n"));
    assert_eq!(idle.engine.idle_timeout, ms(86_400_000));
    assert_eq!(
        kinds(&format!("{MINIMAL}engine.idle_timeout = 1441m\n")),
        [ErrorKind::BadValue]
    );
}

#[test]
fn counts_enforce_powers_of_two_and_primes() {
    assert_eq!(
        errors(&format!("{MINIMAL}engine.buffers = 1000\n")),
        "levee.conf:4: engine.buffers: expected a power of two from 16 to 32768, found `1000`, \
         which is not one (the nearest are 512 and 1024)"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}pool.web.table_size = 65536\n")),
        "levee.conf:4: pool.web.table_size: expected a prime from 7 to 1000003, found `65536`, \
         which is not prime (the nearest are 65521 and 65537)"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}engine.connect_retries = 8\n")),
        "levee.conf:4: engine.connect_retries: expected a whole number from 0 to 7, found `8`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}pool.web.bound = 0.5\n")),
        "levee.conf:4: pool.web.bound: expected 0 (none) or a number from 1 to 100 with at most 3 \
         decimals, like 1.25, found `0.5`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}pool.web.balance = Maglev\n")),
        "levee.conf:4: pool.web.balance: expected one of maglev, round_robin, weighted, least_conn, \
         p2c, source_hash, found `Maglev`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}engine.sched_policy = fifo\n")),
        "levee.conf:4: engine.sched_policy: expected one of batch, normal, found `fifo`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}engine.cores = 3-1\n")),
        "levee.conf:4: engine.cores: expected auto or a list of CPU ids and ranges, like 0-3 or \
         0,2,5-7; the range `3-1` runs backwards (write `1-3`)"
    );
}

#[test]
fn ipv6_addresses() {
    let cfg = parse_ok(
        "listener.v6.addr = [::]:443
         listener.v6.pool = p
         listener.lo.addr = [::1]:8443
         listener.lo.pool = p
         pool.p.backend.a.addr = [2001:db8::1]:8080
         pool.p.backend.b.addr = [fe80::1%2]:80",
    );
    assert_eq!(cfg.listeners[0].addr, addr("[::]:443"));
    assert_eq!(cfg.listeners[1].addr, addr("[::1]:8443"));
    assert_eq!(cfg.pools[0].backends[0].addr, addr("[2001:db8::1]:8080"));
    assert_eq!(cfg.pools[0].backends[1].addr.to_string(), "[fe80::1%2]:80");
    assert_eq!(
        errors(&format!("{MINIMAL}pool.web.backend.b2.addr = ::1:80\n")),
        "levee.conf:4: pool.web.backend.b2.addr: expected an IP address and port, like 10.0.0.1:80 \
         or [::1]:80 (host names are not resolved), found `::1:80`"
    );
}

#[test]
fn several_listeners_and_pools_keep_file_order() {
    let cfg = parse_ok(
        "pool.api.backend.a1.addr = 10.0.1.1:9000
         listener.web.addr = 0.0.0.0:80
         listener.web.pool = web
         listener.api.addr = 0.0.0.0:9000
         listener.api.pool = api
         listener.web-tls.addr = 0.0.0.0:443
         listener.web-tls.pool = web
         pool.web.balance = round_robin
         pool.web.backend.w2.addr = 10.0.0.2:80
         pool.web.backend.w1.addr = 10.0.0.1:80
         pool.api.backend.a2.addr = 10.0.1.2:9000
         pool.web.backend.w2.weight = 5",
    );
    let listeners: Vec<&str> = cfg.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(listeners, ["web", "api", "web-tls"]);
    let pools: Vec<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pools, ["api", "web"]);
    let pool_of = |l: usize| cfg.pools[cfg.listeners[l].pool].name.as_str();
    assert_eq!((pool_of(0), pool_of(1), pool_of(2)), ("web", "api", "web"));
    let web = &cfg.pools[1];
    assert_eq!(web.balance, Balance::RoundRobin);
    let backends: Vec<&str> = web.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(backends, ["w2", "w1"]);
    assert_eq!(web.backends[0].weight, 5);
    assert_eq!(cfg.pools[0].backends.len(), 2);
}

#[test]
fn names_may_repeat_across_kinds_and_are_case_sensitive() {
    let cfg = parse_ok(
        "listener.web.addr = 0.0.0.0:80
         listener.web.pool = web
         listener.Web.addr = 0.0.0.0:81
         listener.Web.pool = Web
         pool.web.backend.web.addr = 10.0.0.1:80
         pool.Web.backend.backend.addr = 10.0.0.2:80",
    );
    assert_eq!(cfg.listeners.len(), 2);
    assert_eq!(cfg.pools.len(), 2);
    assert_eq!(cfg.pools[1].backends[0].name, "backend");
}

#[test]
fn port_zero_listeners_do_not_collide() {
    let cfg = parse_ok(
        "listener.a.addr = 127.0.0.1:0
         listener.a.pool = p
         listener.b.addr = 127.0.0.1:0
         listener.b.pool = p
         pool.p.backend.x.addr = 127.0.0.1:9",
    );
    assert_eq!(cfg.listeners.len(), 2);
}

// ---- errors, one class at a time -------------------------------------------------------------

#[test]
fn unknown_key_suggests_the_nearest() {
    assert_eq!(
        errors(&format!("{MINIMAL}engine.ring_entires = 1024\n")),
        "levee.conf:4: engine.ring_entires: unknown key; did you mean `engine.ring_entries`?"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}pool.web.backend.b1.wieght = 5\n")),
        "levee.conf:4: pool.web.backend.b1.wieght: unknown key; did you mean \
         `pool.web.backend.b1.weight`?"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}frobnicate = yes\n")),
        "levee.conf:4: frobnicate: unknown key; docs/config.md lists every key"
    );
}

#[test]
fn bad_value() {
    assert_eq!(
        errors(&format!("{MINIMAL}engine.ring_entries = 5000\n")),
        "levee.conf:4: engine.ring_entries: expected a power of two from 64 to 32768, found `5000`, \
         which is not one (the nearest are 4096 and 8192)"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}engine.backlog =\n")),
        "levee.conf:4: engine.backlog: expected a whole number from 1 to 65535, found nothing"
    );
}

#[test]
fn duplicate_key_names_the_first_line() {
    assert_eq!(
        errors(&format!(
            "engine.backlog = 10\n{MINIMAL}engine.backlog = 20\n"
        )),
        "levee.conf:5: engine.backlog: set again; it was first set on line 1, and a key may be set \
         only once"
    );
}

#[test]
fn a_pool_no_listener_reaches_points_at_its_first_line() {
    assert_eq!(
        errors(&format!(
            "{MINIMAL}\npool.spare.balance = p2c\npool.spare.backend.s1.addr = 10.0.9.1:80\n"
        )),
        "levee.conf:5: pool.spare: no listener sends connections to this pool; point one at it \
         with `listener.NAME.pool = spare`, or remove the pool"
    );
}

#[test]
fn a_listener_naming_a_missing_pool() {
    assert_eq!(
        errors(&MINIMAL.replace("listener.web.pool = web", "listener.web.pool = wbe")),
        "levee.conf:2: listener.web.pool: no pool named `wbe` is defined; did you mean `web`?"
    );
    assert_eq!(
        errors(&MINIMAL.replace("listener.web.pool = web", "listener.web.pool = api")),
        "levee.conf:2: listener.web.pool: no pool named `api` is defined; define its backends with \
         `pool.api.backend.NAME.addr = IP:PORT`"
    );
}

#[test]
fn missing_required_keys() {
    assert_eq!(
        errors("listener.web.pool = web\npool.web.backend.b1.addr = 10.0.0.1:80\n"),
        "levee.conf:1: listener.web.addr: not set, and every listener needs it; add \
         `listener.web.addr = IP:PORT`"
    );
    assert_eq!(
        errors("listener.web.addr = 0.0.0.0:80\npool.web.backend.b1.addr = 10.0.0.1:80\n"),
        "levee.conf:1: listener.web.pool: not set, and every listener needs it; add \
         `listener.web.pool = POOL`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}pool.web.backend.b2.weight = 10\n")),
        "levee.conf:4: pool.web.backend.b2.addr: not set, and every backend needs it; add \
         `pool.web.backend.b2.addr = IP:PORT`"
    );
}

#[test]
fn a_pool_without_backends() {
    assert_eq!(
        errors("listener.web.addr = 0.0.0.0:80\nlistener.web.pool = web\npool.web.balance = p2c\n"),
        "levee.conf:3: pool.web: has no backends; add one with `pool.web.backend.NAME.addr = IP:PORT`"
    );
}

#[test]
fn two_listeners_on_one_address() {
    assert_eq!(
        errors(&format!(
            "{MINIMAL}listener.again.addr = 0.0.0.0:8080\nlistener.again.pool = web\n"
        )),
        "levee.conf:4: listener.again.addr: 0.0.0.0:8080 is already the address of listener `web` \
         (line 1); each listener needs its own"
    );
}

#[test]
fn a_backend_that_is_levees_own_listener() {
    let own = "listener.web.addr = 127.0.0.1:8080\nlistener.web.pool = web\n\
               pool.web.backend.a.addr = 127.0.0.1:8080\n";
    assert_eq!(
        errors(own),
        "levee.conf:3: pool.web.backend.a.addr: 127.0.0.1:8080 is where listener `web` (line 1) \
         listens: levee would connect to itself, and every connection would loop back in until \
         descriptors run out"
    );
    // A wildcard listener is reached through loopback and through the wildcard, in either
    // family where the listener is IPv6 (levee's [::] sockets take IPv4 too).
    for (listen, backend) in [
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.9.9.9:8080"),
        ("0.0.0.0:8080", "0.0.0.0:8080"),
        ("[::]:8080", "[::1]:8080"),
        ("[::]:8080", "127.0.0.1:8080"),
    ] {
        let text = format!(
            "listener.web.addr = {listen}\nlistener.web.pool = web\n\
             pool.web.backend.a.addr = {backend}\n"
        );
        assert_eq!(
            kinds(&text),
            vec![ErrorKind::SelfLoop],
            "{listen} <- {backend}"
        );
    }
    // Another port, another address, or a v4 wildcard and a v6 backend: no loop.
    for (listen, backend) in [
        ("127.0.0.1:8080", "127.0.0.1:8081"),
        ("127.0.0.1:8080", "127.0.0.2:8080"),
        ("0.0.0.0:8080", "10.0.0.1:8080"),
        ("0.0.0.0:8080", "[::1]:8080"),
    ] {
        let text = format!(
            "listener.web.addr = {listen}\nlistener.web.pool = web\n\
             pool.web.backend.a.addr = {backend}\n"
        );
        parse_ok(&text);
    }
}

#[test]
fn no_listener_at_all() {
    assert_eq!(
        errors("# nothing here yet\n"),
        "levee.conf: no listener is defined; add one, like `listener.web.addr = 0.0.0.0:80` and \
         `listener.web.pool = web`"
    );
    assert_eq!(
        errors(""),
        "levee.conf: no listener is defined; add one, like `listener.web.addr = 0.0.0.0:80` and \
         `listener.web.pool = web`"
    );
    // Without listeners every pool is unused; saying so for each would only repeat the above.
    assert_eq!(
        kinds("pool.web.backend.b1.addr = 10.0.0.1:80\n"),
        [ErrorKind::NoListener]
    );
}

#[test]
fn a_line_without_equals_sign() {
    assert_eq!(
        errors(&format!("{MINIMAL}engine.backlog 1024\n")),
        "levee.conf:4: expected `key = value`, found `engine.backlog 1024`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}= 1024\n")),
        "levee.conf:4: expected a key before `=`"
    );
}

#[test]
fn an_invalid_name_segment() {
    assert_eq!(
        errors(&format!(
            "{MINIMAL}pool.web.backend.b/1.addr = 10.0.0.9:80\n"
        )),
        "levee.conf:4: pool.web.backend.b/1.addr: invalid backend name `b/1`: names are 1 to 64 \
         characters from A-Z, a-z, 0-9, _ and -"
    );
    let long = "x".repeat(65);
    assert_eq!(
        kinds(&format!("{MINIMAL}listener.{long}.addr = 0.0.0.0:1\n")),
        [ErrorKind::InvalidName]
    );
    assert_eq!(
        kinds(&format!("{MINIMAL}listener..addr = 0.0.0.0:1\n")),
        [ErrorKind::InvalidName]
    );
    assert_eq!(
        errors(&MINIMAL.replace("listener.web.pool = web", "listener.web.pool = w.b")),
        "levee.conf:2: listener.web.pool: expected a name of 1 to 64 characters from A-Z, a-z, \
         0-9, _ and -, found `w.b`"
    );
}

#[test]
fn a_table_smaller_than_the_pool() {
    let mut text =
        "listener.l.addr = 0.0.0.0:80\nlistener.l.pool = p\npool.p.table_size = 7\n".to_string();
    for i in 0..8 {
        text.push_str(&format!("pool.p.backend.b{i}.addr = 10.0.0.{i}:80\n"));
    }
    assert_eq!(
        errors(&text),
        "levee.conf:3: pool.p.table_size: 7 slots cannot hold the pool's 8 backends; use a prime \
         of at least 8, like 11"
    );
}

#[test]
fn a_backend_on_port_zero() {
    assert_eq!(
        errors(&MINIMAL.replace("10.0.0.1:80", "10.0.0.1:0")),
        "levee.conf:3: pool.web.backend.b1.addr: expected a port from 1 to 65535, found `10.0.0.1:0`"
    );
}

#[test]
fn control_characters_are_escaped_in_messages() {
    assert_eq!(
        errors(&format!("{MINIMAL}log.level = \u{1b}[2Jinfo\n")),
        "levee.conf:4: log.level: expected one of error, warn, info, debug, trace, found \
         `\\u{1b}[2Jinfo`"
    );
}

#[test]
fn every_error_at_once_sorted_by_line() {
    let text = "\
engine.ring_entries = 5000
listener.web.addr = 0.0.0.0:8080
listener.web.pool = web
engine.idle_timeout = 30
this line has no equals sign
pool.web.backend.b1.addr = 10.0.0.1:80
pool.web.balanse = maglev
listener.api.addr = 0.0.0.0:8080
listener.api.pool = web
pool.unused.backend.u1.addr = 10.0.0.9:80
engine.ring_entries = 4096
pool.web.backend.b2.weight = 10
";
    assert_eq!(
        errors(text),
        "\
levee.conf:1: engine.ring_entries: expected a power of two from 64 to 32768, found `5000`, which is not one (the nearest are 4096 and 8192)
levee.conf:4: engine.idle_timeout: expected a duration with a unit, like 250ms or 30s (only 0 may go without one), found `30`
levee.conf:5: expected `key = value`, found `this line has no equals sign`
levee.conf:7: pool.web.balanse: unknown key; did you mean `pool.web.balance`?
levee.conf:8: listener.api.addr: 0.0.0.0:8080 is already the address of listener `web` (line 2); each listener needs its own
levee.conf:10: pool.unused: no listener sends connections to this pool; point one at it with `listener.NAME.pool = unused`, or remove the pool
levee.conf:11: engine.ring_entries: set again; it was first set on line 1, and a key may be set only once
levee.conf:12: pool.web.backend.b2.addr: not set, and every backend needs it; add `pool.web.backend.b2.addr = IP:PORT`"
    );
    let err = parse(text).expect_err("bad config");
    let lines: Vec<Option<usize>> = err.errors().iter().map(|e| e.line).collect();
    assert_eq!(
        lines,
        [
            Some(1),
            Some(4),
            Some(5),
            Some(7),
            Some(8),
            Some(10),
            Some(11),
            Some(12)
        ]
    );
    let first = &err.errors()[0];
    assert_eq!(first.file, "levee.conf");
    assert_eq!(first.key.as_deref(), Some("engine.ring_entries"));
    assert_eq!(first.kind, ErrorKind::BadValue);
}

#[test]
fn a_flood_of_errors_is_cut_short_and_counted() {
    let text: String = (0..150).map(|i| format!("junk.key{i} = 1\n")).collect();
    let err = parse(&text).expect_err("bad config");
    assert_eq!(err.errors().len(), config::MAX_ERRORS + 1);
    assert_eq!(err.errors()[99].line, Some(100));
    let last = err.errors().last().expect("a closing line");
    assert_eq!(last.kind, ErrorKind::Truncated);
    // 150 unknown keys and no listener: 100 shown, 51 counted.
    assert_eq!(
        last.to_string(),
        "levee.conf: 51 more problems not shown; fix the ones above, or check that this is the \
         right file"
    );
}

#[test]
fn a_rejected_value_does_not_cause_follow_on_errors() {
    // The bad address is reported once: not again as missing, nor as a shared address.
    let text = "listener.a.addr = nowhere\nlistener.a.pool = p\nlistener.b.addr = nowhere\n\
                listener.b.pool = p\npool.p.backend.x.addr = 10.0.0.1:80\n";
    assert_eq!(kinds(text), [ErrorKind::BadValue, ErrorKind::BadValue]);
    // A listener whose pool is unusable does not make the other pools look unused.
    let text = format!(
        "{MINIMAL}listener.x.addr = 0.0.0.0:1\nlistener.x.pool = ?\npool.y.backend.z.addr = 10.0.0.2:80\n"
    );
    assert_eq!(kinds(&text), [ErrorKind::BadValue]);
    // A bad table size is not also compared with the number of backends.
    assert_eq!(
        kinds(&format!("{MINIMAL}pool.web.table_size = 4\n")),
        [ErrorKind::BadValue]
    );
}

// ---- files -------------------------------------------------------------------------------------

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("levee-config-{}-{name}", std::process::id()))
}

#[test]
fn load_reads_a_file_and_names_it_in_messages() {
    let path = temp_path("good.conf");
    std::fs::write(&path, MINIMAL).expect("write temp file");
    assert_eq!(config::load(&path), Ok(parse_ok(MINIMAL)));
    std::fs::write(&path, "engine.backlog = 0\n").expect("write temp file");
    let err = config::load(&path).expect_err("bad config").to_string();
    let name = path.display();
    assert_eq!(
        err,
        format!(
            "{name}:1: engine.backlog: expected a whole number from 1 to 65535, found `0`\n\
             {name}: no listener is defined; add one, like `listener.web.addr = 0.0.0.0:80` and \
             `listener.web.pool = web`"
        )
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_unreadable_file_names_the_os_reason() {
    let path = temp_path("does-not-exist.conf");
    let err = config::load(&path).expect_err("missing file");
    assert_eq!(err.errors().len(), 1);
    assert_eq!(err.errors()[0].kind, ErrorKind::Unreadable);
    assert_eq!(
        err.to_string(),
        format!(
            "{}: cannot read the configuration file: No such file or directory (os error 2)",
            path.display()
        )
    );
    let dir = std::env::temp_dir();
    assert_eq!(
        config::load(&dir).map_err(|e| e.to_string()),
        Err(format!(
            "{}: is a directory, not a configuration file",
            dir.display()
        ))
    );
}

#[test]
fn a_file_that_is_not_text() {
    let path = temp_path("binary.conf");
    std::fs::write(&path, b"engine.backlog = 1\nlog.level = \xff\xfe\n").expect("write temp file");
    let err = config::load(&path).expect_err("not text");
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2: not UTF-8 text (byte 32 of the file); configuration files are plain text",
            path.display()
        )
    );
    let _ = std::fs::remove_file(&path);
}

// ---- listing and runtime access ---------------------------------------------------------------

#[test]
fn listing_shows_every_effective_key_in_registry_order() {
    let cfg = parse_ok(
        "pool.web.backend.b1.addr = [::1]:80
         listener.web.pool = web
         listener.web.addr = 0.0.0.0:8080
         engine.idle_timeout = 300s
         pool.web.bound = 1.50
         engine.cores = 3,0-2,7",
    );
    // The values this file sets, in canonical form; every other key shows its default. The
    // defaults are the registry's to own: docs/config.md pins their text (a change shows in
    // its diff), and `defaults_fill_in_what_the_file_leaves_out` checks what they parse to.
    let set = [
        ("engine.cores", "0-3,7"),
        ("engine.idle_timeout", "5m"),
        ("listener.web.addr", "0.0.0.0:8080"),
        ("listener.web.pool", "web"),
        ("pool.web.bound", "1.5"),
        ("pool.web.backend.b1.addr", "[::1]:80"),
    ];
    let want: String = KEYS
        .iter()
        .map(|spec| {
            let key = registry::instantiate(spec.name, &["web", "b1"]);
            let value = set
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .or(spec.default)
                .unwrap_or_else(|| panic!("{key} is required: the test must set it"));
            format!("{key} = {value}\n")
        })
        .collect();
    assert_eq!(want.lines().count(), 74, "one line per key");
    assert_eq!(config::listing(&cfg), want);
}

#[test]
fn get_and_set_runtime_keys() {
    let mut cfg = parse_ok(MINIMAL);
    assert_eq!(cfg.get("engine.idle_timeout").as_deref(), Ok("5m"));
    assert_eq!(cfg.get("listener.web.pool").as_deref(), Ok("web"));
    assert_eq!(
        cfg.get("pool.web.backend.b1.addr").as_deref(),
        Ok("10.0.0.1:80")
    );
    assert_eq!(
        cfg.get("pool.nope.balance"),
        Err("pool.nope.balance: no pool named `nope`".into())
    );
    assert_eq!(
        cfg.get("engine.idle_timout"),
        Err("engine.idle_timout: unknown key; did you mean `engine.idle_timeout`?".into())
    );

    assert_eq!(cfg.set_runtime("pool.web.backend.b1.weight", "0"), Ok(()));
    assert_eq!(cfg.pools[0].backends[0].weight, 0);
    assert_eq!(cfg.set_runtime("log.level", "debug"), Ok(()));
    assert_eq!(cfg.log.level, LogLevel::Debug);
    assert_eq!(cfg.set_runtime("pool.web.bound", "2"), Ok(()));
    assert_eq!(cfg.pools[0].bound, Some(2.0));
    assert_eq!(
        cfg.set_runtime("engine.idle_timeout", "30"),
        Err(
            "engine.idle_timeout: expected a duration with a unit, like 250ms or 30s (only 0 may \
             go without one), found `30`"
                .into()
        )
    );
    assert_eq!(cfg.engine.idle_timeout, ms(300_000));
    assert_eq!(
        cfg.set_runtime("engine.cores", "0"),
        Err(
            "engine.cores: cannot change at runtime; change it in the configuration file and \
             restart"
                .into()
        )
    );
    assert_eq!(
        cfg.set_runtime("pool.web.backend.b9.weight", "1"),
        Err("pool.web.backend.b9.weight: no backend named `web.b9`".into())
    );
}

#[test]
fn stats_listen_is_an_address_with_a_port_or_none() {
    assert_eq!(parse_ok(MINIMAL).stats.listen, None);
    let cfg = parse_ok(&format!("{MINIMAL}stats.listen = 127.0.0.1:9100\n"));
    assert_eq!(cfg.stats.listen, Some(addr("127.0.0.1:9100")));
    let cfg = parse_ok(&format!("{MINIMAL}stats.listen = [::1]:9100\n"));
    assert_eq!(cfg.stats.listen, Some(addr("[::1]:9100")));
    assert!(config::listing(&cfg).contains("\nstats.listen = [::1]:9100\n"));
    let cfg = parse_ok(&format!("{MINIMAL}stats.listen = none\n"));
    assert_eq!(cfg.stats.listen, None);
    assert_eq!(
        errors(&format!("{MINIMAL}stats.listen = 127.0.0.1:0\n")),
        "levee.conf:4: stats.listen: expected a port from 1 to 65535, found `127.0.0.1:0`"
    );
    assert!(
        errors(&format!("{MINIMAL}stats.listen = localhost:9100\n"))
            .starts_with("levee.conf:4: stats.listen: expected none, or an IP address and port"),
    );
    for bad in ["Root", "9lives", "a b", "x;rm", &"u".repeat(33)] {
        assert!(
            errors(&format!("{MINIMAL}engine.user = {bad}\n"))
                .starts_with("levee.conf:4: engine.user: expected a user or group name"),
            "{bad}"
        );
    }
}

// ---- the registry and the docs -----------------------------------------------------------------

#[test]
fn the_registry_describes_every_key() {
    assert_eq!(KEYS.len(), 74);
    let runtime: Vec<&str> = KEYS
        .iter()
        .filter(|k| k.is_runtime())
        .map(|k| k.name)
        .collect();
    assert_eq!(
        runtime,
        [
            "engine.connect_timeout",
            "engine.connect_retries",
            "engine.idle_timeout",
            "engine.sched_policy",
            "log.level",
            "overflow.workers",
            "overflow.queue_timeout",
            "overflow.discipline",
            "overflow.codel_target",
            "overflow.codel_interval",
            "listener.NAME.proxy_from",
            "listener.NAME.allow",
            "listener.NAME.deny",
            "listener.NAME.rate_per_source",
            "listener.NAME.burst_per_source",
            "listener.NAME.max_conns_per_source",
            "pool.NAME.bound",
            "pool.NAME.backend.NAME.weight",
            "pool.NAME.backend.NAME.max_conns",
            "pool.NAME.backend.NAME.state",
        ]
    );
    let required: Vec<&str> = KEYS
        .iter()
        .filter(|k| k.is_required())
        .map(|k| k.name)
        .collect();
    assert_eq!(
        required,
        [
            "listener.NAME.addr",
            "listener.NAME.pool",
            "pool.NAME.backend.NAME.addr"
        ]
    );
    let spec = KEYS
        .iter()
        .find(|k| k.name == "engine.buffer_size")
        .expect("listed");
    assert_eq!(spec.scope(), Scope::Engine);
    assert_eq!(spec.check("64K").as_deref(), Ok("64K"));
    assert_eq!(spec.check("65536").as_deref(), Ok("64K"));
    assert!(spec.check("2M").is_err());
    assert!(matches!(
        registry::lookup("pool.a.backend.b.max_conns"),
        registry::Lookup::Found { .. }
    ));
}

#[test]
fn docs_config_md_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md");
    let want = config::docs_markdown();
    if std::env::var_os("LEVEE_BLESS").is_some() {
        std::fs::write(&path, &want).expect("write docs/config.md");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/config.md is out of date with the key registry; regenerate it with\n\
         \x20   LEVEE_BLESS=1 cargo test --test config\n\
         and commit the result"
    );
}

// ---- properties ------------------------------------------------------------------------------

/// Lines built from real keys, names and values, some of them broken, so the parser's deeper
/// paths (references, duplicates, required keys) get exercised, not only line splitting.
fn line_strategy() -> impl Strategy<Value = String> {
    let keys: Vec<String> = KEYS
        .iter()
        .flat_map(|k| {
            [
                registry::instantiate(k.name, &["a", "b"]),
                registry::instantiate(k.name, &["b", "a"]),
                registry::instantiate(k.name, &["a", "é"]),
                registry::instantiate(k.name, &["", "a"]),
            ]
        })
        .collect();
    let values = prop::sample::select(vec![
        "0",
        "1",
        "7",
        "64",
        "4096",
        "16K",
        "1M",
        "1G",
        "5s",
        "250ms",
        "30",
        "0-3",
        "auto",
        "3-1",
        "maglev",
        "p2c",
        "src_ip",
        "info",
        "1.25",
        "0.5",
        "a",
        "b",
        "c",
        "[::1]:80",
        "0.0.0.0:80",
        "10.0.0.1:0",
        "127.0.0.1:9",
        "",
        "65537",
        "99999999999999999999",
    ]);
    prop_oneof![
        (
            prop::sample::select(keys),
            values,
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(key, value, dash, junk)| {
                let dash = if dash { "-" } else { "" };
                let junk = if junk { " # x" } else { "" };
                format!("{dash}{key} = {value}{junk}")
            }),
        "[ -~]{0,40}",
        Just("# comment".to_string()),
        Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_arbitrary_text(text in "\\PC*(\\n\\PC*){0,8}") {
        let _ = config::parse(&text, "fuzz.conf");
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = config::parse(&text, "fuzz.conf");
    }

    #[test]
    fn never_panics_on_near_miss_configs(lines in prop::collection::vec(line_strategy(), 0..24)) {
        let text = lines.join("\n");
        match config::parse(&text, "fuzz.conf") {
            // Whatever parses must also survive the round trip.
            Ok(cfg) => prop_assert_eq!(config::parse(&config::listing(&cfg), "listing"), Ok(cfg)),
            Err(errors) => {
                prop_assert!(!errors.errors().is_empty());
                let lines: Vec<usize> =
                    errors.errors().iter().map(|e| e.line.unwrap_or(usize::MAX)).collect();
                prop_assert!(lines.windows(2).all(|w| w[0] <= w[1]), "not sorted: {}", errors);
            }
        }
    }

    #[test]
    fn listing_round_trips(cfg in config_strategy()) {
        let text = config::listing(&cfg);
        prop_assert_eq!(config::parse(&text, "listing"), Ok(cfg), "listing:\n{}", text);
    }
}

const PRIMES: [u32; 6] = [7, 11, 257, 4093, 65537, 1_000_003];

fn name_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{0,20}"
}

fn ip_strategy() -> impl Strategy<Value = std::net::IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
        any::<[u16; 8]>().prop_map(std::net::IpAddr::from),
    ]
}

fn backend_strategy() -> impl Strategy<Value = config::BackendConfig> {
    (
        ip_strategy(),
        1..=u16::MAX,
        0..=1_000_000u32,
        0..=(1u32 << 20),
        prop::sample::select(config::AdminState::NAMES),
        duration_strategy(0, 3_600_000),
        0..=100u32,
    )
        .prop_map(|(ip, port, weight, max_conns, state, interval, rise)| {
            let mut b = config::BackendConfig::new("", SocketAddr::new(ip, port));
            b.weight = weight;
            b.max_conns = max_conns;
            b.state = config::AdminState::from_name(state).unwrap_or(config::AdminState::Up);
            b.check_interval = interval;
            b.check_rise = rise;
            b
        })
}

fn health_strategy() -> impl Strategy<Value = config::HealthConfig> {
    (
        prop::sample::select(config::CheckKind::NAMES),
        duration_strategy(10, 3_600_000),
        1..=100u32,
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(any::<u8>(), 0..40),
        0..=10_000u32,
        duration_strategy(0, 3_600_000),
        prop::sample::select(config::AllDown::NAMES),
    )
        .prop_map(
            |(check, interval, fall, send, expect, failures, slowstart, all_down)| {
                config::HealthConfig {
                    check: config::CheckKind::from_name(check).unwrap_or(config::CheckKind::None),
                    interval,
                    fall,
                    send,
                    expect,
                    eject_failures: failures,
                    slowstart,
                    all_down: config::AllDown::from_name(all_down)
                        .unwrap_or(config::AllDown::Refuse),
                    ..config::HealthConfig::default()
                }
            },
        )
}

fn pool_strategy() -> impl Strategy<Value = config::PoolConfig> {
    (
        prop::sample::select(Balance::NAMES),
        prop::sample::select(HashKey::NAMES),
        prop::sample::select(PRIMES.to_vec()),
        prop_oneof![
            Just(None),
            (1000..=100_000u32).prop_map(|k| Some(f64::from(k) / 1000.0))
        ],
        name_strategy(),
        prop::collection::vec(backend_strategy(), 1..7),
        health_strategy(),
        prop::sample::select(config::Overflow::NAMES),
        prop::sample::select(config::ProxyProtocol::NAMES),
    )
        .prop_map(
            |(
                balance,
                hash_key,
                table_size,
                bound,
                prefix,
                mut backends,
                health,
                overflow,
                proxy_protocol,
            )| {
                for (i, b) in backends.iter_mut().enumerate() {
                    b.name = format!("{prefix}{i}");
                }
                config::PoolConfig {
                    name: String::new(),
                    balance: Balance::from_name(balance).unwrap_or(Balance::Maglev),
                    hash_key: HashKey::from_name(hash_key).unwrap_or(HashKey::SourceIp),
                    table_size,
                    bound,
                    overflow: config::Overflow::from_name(overflow)
                        .unwrap_or(config::Overflow::Queue),
                    proxy_protocol: config::ProxyProtocol::from_name(proxy_protocol)
                        .unwrap_or(config::ProxyProtocol::None),
                    source: Vec::new(),
                    health,
                    backends,
                }
            },
        )
}

fn overflow_strategy() -> impl Strategy<Value = config::OverflowConfig> {
    (
        prop_oneof![
            Just(None),
            "/[a-z]{1,20}(/[a-z0-9._-]{1,12}){0,3}".prop_map(|p| Some(PathBuf::from(p))),
        ],
        (1..=127u32, any::<prop::sample::Index>()),
        prop_oneof![
            Just(CoreSet::Auto),
            prop::collection::btree_set(0..64usize, 1..10)
                .prop_map(|ids| CoreSet::List(ids.into_iter().collect())),
        ],
        prop::sample::select(config::Handoff::NAMES),
        duration_strategy(1, 3_600_000),
        1..=(1u32 << 20),
        prop::sample::select(config::Discipline::NAMES),
        (duration_strategy(1, 60_000), duration_strategy(1, 60_000)),
        1..=100u32,
    )
        .prop_map(
            |(
                dir,
                (max_workers, workers),
                cores,
                handoff,
                queue_timeout,
                max_queue,
                discipline,
                (codel_target, codel_interval),
                max_attempts,
            )| config::OverflowConfig {
                dir,
                workers: workers.index(max_workers.min(64) as usize + 1) as u32,
                max_workers,
                cores,
                handoff: config::Handoff::from_name(handoff).unwrap_or(config::Handoff::Auto),
                queue_timeout,
                max_queue,
                discipline: config::Discipline::from_name(discipline)
                    .unwrap_or(config::Discipline::Fifo),
                codel_target,
                codel_interval,
                max_attempts,
            },
        )
}

fn duration_strategy(min_ms: u64, max_ms: u64) -> impl Strategy<Value = Duration> {
    prop_oneof![
        (min_ms..=max_ms).prop_map(Duration::from_millis),
        (min_ms.div_ceil(1000)..=max_ms / 1000).prop_map(Duration::from_secs),
    ]
}

fn engine_strategy() -> impl Strategy<Value = config::EngineConfig> {
    (
        prop_oneof![
            Just(CoreSet::Auto),
            prop::collection::btree_set(0..64usize, 1..10)
                .prop_map(|ids| CoreSet::List(ids.into_iter().collect())),
        ],
        (6..=15u32).prop_map(|s| 1 << s),
        prop_oneof![1024..=(1u32 << 20), (1..=1024u32).prop_map(|k| k * 1024)],
        (4..=15u32).prop_map(|s| 1 << s),
        (
            1..=64u32,
            1..=64u32,
            prop_oneof![
                Just(0u32),
                0..=(1u32 << 30),
                (0..=1024u32).prop_map(|k| k * 1024)
            ],
            1..=65536u32,
            (4u32 << 10)..=(1 << 20),
        ),
        1..=(1u32 << 20),
        1..=65535u32,
        duration_strategy(1, 300_000),
        0..=7u32,
        duration_strategy(0, 86_400_000),
        duration_strategy(0, 3_600_000),
        prop::sample::select(SchedPolicy::NAMES),
    )
        .prop_map(
            |(
                cores,
                ring_entries,
                buffer_size,
                buffers,
                (recv_bundle, send_batch, splice_after, splice_pipes, splice_pipe_size),
                max_conns,
                backlog,
                connect_timeout,
                connect_retries,
                idle_timeout,
                drain_timeout,
                sched_policy,
            )| config::EngineConfig {
                cores,
                ring_entries,
                buffer_size,
                buffers,
                recv_bundle,
                send_batch,
                splice_after,
                splice_pipes,
                splice_pipe_size,
                max_conns,
                backlog,
                connect_timeout,
                connect_retries,
                idle_timeout,
                drain_timeout,
                sched_policy: SchedPolicy::from_name(sched_policy).expect("a listed name"),
                // Both forms of each value, with the CPU count.
                user: (ring_entries % 2 == 0).then(|| "nobody".to_string()),
                group: (ring_entries % 4 == 0).then(|| "nogroup".to_string()),
            },
        )
}

/// Valid configurations: every pool is used by some listener, listener addresses are distinct.
fn config_strategy() -> impl Strategy<Value = Config> {
    (
        engine_strategy(),
        prop::sample::select(LogLevel::NAMES),
        prop::collection::vec(pool_strategy(), 1..4),
        prop::collection::vec((ip_strategy(), any::<prop::sample::Index>()), 0..4),
        name_strategy(),
        name_strategy(),
        overflow_strategy(),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(
            |(engine, level, mut pools, extra, pool_prefix, listener_prefix, overflow, payload)| {
                for (i, p) in pools.iter_mut().enumerate() {
                    p.name = format!("{pool_prefix}{i}");
                }
                // One listener per pool, then extra ones on any pool; ports keep addresses distinct.
                let targets =
                    (0..pools.len()).chain(extra.iter().map(|(_, idx)| idx.index(pools.len())));
                let ips = pools
                    .iter()
                    .map(|_| std::net::IpAddr::from([0u8, 0, 0, 0]))
                    .chain(extra.iter().map(|(ip, _)| *ip));
                let listeners = targets
                    .zip(ips)
                    .enumerate()
                    .map(|(i, (pool, ip))| config::ListenerConfig {
                        name: format!("{listener_prefix}{i}"),
                        addr: SocketAddr::new(ip, 1000 + i as u16),
                        pool,
                        refuse_payload: if i % 2 == 0 {
                            payload.clone()
                        } else {
                            Vec::new()
                        },
                        proxy_protocol: config::ProxyProtocol::from_name(
                            config::ProxyProtocol::NAMES[i % 3],
                        )
                        .unwrap_or(config::ProxyProtocol::None),
                        proxy_timeout: std::time::Duration::from_millis(1 + i as u64),
                        proxy_from: if i % 4 == 1 {
                            vec![config::cidr::Cidr::parse("172.16.0.0/12").expect("range")]
                        } else {
                            Vec::new()
                        },
                        allow: if i % 2 == 0 {
                            vec![config::cidr::Cidr::parse("10.0.0.0/8").expect("range")]
                        } else {
                            Vec::new()
                        },
                        deny: if i % 3 == 0 {
                            vec![
                                config::cidr::Cidr::parse("2001:db8::/32").expect("range"),
                                config::cidr::Cidr::parse("192.0.2.7").expect("range"),
                            ]
                        } else {
                            Vec::new()
                        },
                        rate_per_source: i as u32 * 7,
                        burst_per_source: i as u32,
                        max_conns_per_source: i as u32 * 3,
                    })
                    .collect::<Vec<_>>();
                let listeners_len = listeners.len();
                Config {
                    engine,
                    log: config::LogConfig {
                        level: LogLevel::from_name(level).unwrap_or(LogLevel::Info),
                        // Alternates with the listener count, so both values round-trip.
                        format: if listeners_len % 2 == 0 {
                            config::LogFormat::Text
                        } else {
                            config::LogFormat::Json
                        },
                    },
                    // Alternates with the pool count so both forms of the value round-trip.
                    ctl: config::CtlConfig {
                        socket: (pools.len() % 2 == 0)
                            .then(|| std::path::PathBuf::from(format!("/run/{pool_prefix}.sock"))),
                        owner: (pools.len() % 3 == 0).then(|| "root".to_string()),
                        group: (pools.len() % 3 == 1).then(|| "adm".to_string()),
                    },
                    // Both forms of the value, IPv4 and IPv6, with the listener count.
                    stats: config::StatsConfig {
                        listen: match listeners_len % 3 {
                            0 => None,
                            1 => Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
                            _ => Some(SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 9100))),
                        },
                    },
                    overflow,
                    listeners,
                    pools,
                }
            },
        )
}

// ---- health keys -------------------------------------------------------------------------------

#[test]
fn health_checks_take_escaped_bytes_and_backend_overrides() {
    let cfg = parse_ok(&format!(
        "{MINIMAL}pool.web.check.type = tcp
pool.web.check.send = GET /health HTTP/1.0\\r\\n\\r\\n
pool.web.check.expect = HTTP/1.\\x30
pool.web.check.interval = 250ms
pool.web.slowstart = 30s
pool.web.all_down = try_anyway
pool.web.backend.b1.state = drain
pool.web.backend.b1.check.fall = 7
"
    ));
    let h = &cfg.pools[0].health;
    assert_eq!(h.check, config::CheckKind::Tcp);
    assert_eq!(h.send, b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(h.expect, b"HTTP/1.0");
    assert_eq!(h.interval, ms(250));
    assert_eq!(h.slowstart, ms(30_000));
    assert_eq!(h.all_down, config::AllDown::TryAnyway);
    let b = &cfg.pools[0].backends[0];
    assert_eq!(b.state, config::AdminState::Drain);
    assert_eq!((b.check_fall, b.check_rise), (7, 0));
    assert!(
        config::listing(&cfg).contains("pool.web.check.send = GET /health HTTP/1.0\\r\\n\\r\\n\n")
    );
}

#[test]
fn bad_escapes_and_long_check_strings_are_errors() {
    assert_eq!(
        errors(&format!("{MINIMAL}pool.web.check.send = a\\qb\n")),
        "levee.conf:4: pool.web.check.send: expected an escape among \\r \\n \\t \\\\ \\xHH, found `a\\qb`"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}pool.web.check.expect = \\x4\n")),
        "levee.conf:4: pool.web.check.expect: expected two hex digits after \\x, found `\\x4`"
    );
    assert_eq!(
        errors(&format!(
            "{MINIMAL}pool.web.check.send = {}\n",
            "a".repeat(1025)
        )),
        "levee.conf:4: pool.web.check.send: expected at most 1024 bytes, found 1025"
    );
}

// ---- overflow keys -----------------------------------------------------------------------------

#[test]
fn overflow_keys_parse_and_check_each_other() {
    let cfg = parse_ok(&format!(
        "{MINIMAL}overflow.dir = /dev/shm/edge
overflow.workers = 3
overflow.queue_timeout = 2500ms
overflow.discipline = codel
overflow.handoff = scm_rights
pool.web.overflow = reject
listener.web.refuse_payload = HTTP/1.1 503 Service Unavailable\\r\\n\\r\\n
"
    ));
    let o = &cfg.overflow;
    assert_eq!(o.dir.as_deref(), Some(Path::new("/dev/shm/edge")));
    assert_eq!((o.workers, o.max_workers), (3, 15));
    assert_eq!(o.queue_timeout, ms(2500));
    assert_eq!(o.discipline, config::Discipline::Codel);
    assert_eq!(o.handoff, config::Handoff::ScmRights);
    assert_eq!(cfg.pools[0].overflow, config::Overflow::Reject);
    assert_eq!(
        cfg.listeners[0].refuse_payload,
        b"HTTP/1.1 503 Service Unavailable\r\n\r\n"
    );
    assert_eq!(parse_ok(MINIMAL).overflow.dir, None);

    assert_eq!(
        errors(&format!(
            "{MINIMAL}overflow.max_workers = 2\noverflow.workers = 4\n"
        )),
        "levee.conf:5: overflow.workers: 4 workers, but overflow.max_workers allows 2: raise \
         overflow.max_workers or start fewer"
    );
    assert_eq!(
        errors(&format!("{MINIMAL}overflow.dir = shm\n")),
        "levee.conf:4: overflow.dir: expected auto, or an absolute path of at most 80 bytes, \
         found `shm`"
    );
}

#[test]
fn every_backend_needs_a_source_of_its_family() {
    let text = "listener.web.addr = 127.0.0.1:80\nlistener.web.pool = web\n\
                pool.web.backend.a.addr = 127.0.0.1:8080\npool.web.backend.b.addr = [::1]:8080\n\
                pool.web.source = 127.0.0.2, 127.0.0.3\n";
    let err = config::parse(text, "levee.conf").expect_err("no IPv6 source");
    assert!(
        err.to_string()
            .contains("pool.web.source: no IPv6 address for backend `b` ([::1]:8080)"),
        "{err}"
    );
    let ok = text.replace("127.0.0.3", "::1");
    let cfg = config::parse(&ok, "levee.conf").expect("one of each family");
    assert_eq!(cfg.pools[0].source.len(), 2);
    let bad = text.replace("127.0.0.3", "0.0.0.0");
    assert!(config::parse(&bad, "levee.conf").is_err());
}
