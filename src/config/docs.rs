//! `docs/config.md`, generated from the registry so the reference cannot drift from the parser.

use std::fmt::Write;

use super::parse::MAX_ERRORS;
use super::registry::KEYS;

/// A configuration showing every kind of object; the docs print it and a test parses it.
pub const EXAMPLE: &str = "\
# Forwarders on CPUs 0-3, each with its own io_uring.
engine.cores = 0-3
engine.idle_timeout = 2m
log.level = info

listener.web.addr = 0.0.0.0:8080
listener.web.pool = web
listener.web6.addr = [2001:db8::10]:8080
listener.web6.pool = web

pool.web.balance = maglev
pool.web.bound = 1.25
pool.web.backend.b1.addr = 10.0.0.1:80
pool.web.backend.b1.max_conns = 512
pool.web.backend.b2.addr = 10.0.0.2:80
pool.web.backend.b2.weight = 50

# Needed only by levee versions that know this key; older ones skip the line.
-pool.web.slow_start = 30s
";

/// A configuration with a mistake of each common kind; the docs print what levee says.
pub const BAD_EXAMPLE: &str = "\
engine.ring_entries = 5000
engine.idle_timeout = 30
pool.web.balanse = maglev
listener.web.addr = 0.0.0.0:8080
listener.web.pool = webb
pool.web.backend.b1.weight = 10
engine.ring_entries = 4096
";

pub fn docs_markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "# Configuration reference\n\
         \n\
         <!-- Generated from src/config/registry.rs; regenerate with\n\
         \x20    LEVEE_BLESS=1 cargo test --test config\n\
         \x20    rather than editing by hand. -->\n\
         \n\
         levee reads one configuration file in the syntax of sysctl.conf:\n\
         \n\
         - One `key = value` per line. Whitespace around `=` and at either end of a line is\n\
         \x20 ignored; the value is everything after the first `=`.\n\
         - A line whose first non-blank character is `#` or `;` is a comment; blank lines are\n\
         \x20 ignored. Comments take a whole line: in `engine.backlog = 1024 # note` the value\n\
         \x20 would be `1024 # note`, which is an error.\n\
         - Keys are dotted. `NAME` in the keys below stands for a name you choose: 1 to 64\n\
         \x20 characters from `A-Z`, `a-z`, `0-9`, `_` and `-`. Names are case-sensitive.\n\
         - A `-` before a key (`-pool.web.slow_start = 30s`) skips the line if this version of\n\
         \x20 levee does not know the key, as in sysctl.conf. A known key with a bad value is\n\
         \x20 still an error.\n\
         - Each key may be set once. A key that is not set takes its default.\n\
         - Sizes are bytes, or a whole number with `K`, `M` or `G` (times 1024): `16K`, `1M`.\n\
         - Durations are a whole number with `ms`, `s`, `m` or `h`: `250ms`, `30s`, `5m`, `1h`.\n\
         \x20 Only `0` may go without a unit.\n\
         - Addresses are `IP:port`, IPv6 in brackets: `10.0.0.1:80`, `[::1]:80`. Host names\n\
         \x20 are not resolved.\n\
         \n\
         ## Listeners, pools and backends\n\
         \n\
         A listener accepts client connections on one address and hands them to one pool; the\n\
         pool picks one of its backends for each connection. Every listener needs `addr` and\n\
         `pool`, every backend needs `addr`, every pool needs a backend and a listener that\n\
         uses it, and two listeners may not share an address. Listeners, pools and backends\n\
         keep the order of their first line in the file.\n\
         \n\
         ```\n",
    );
    out.push_str(EXAMPLE);
    let _ = write!(
        out,
        "```\n\
         \n\
         ## Errors\n\
         \n\
         levee reads the whole file before it starts anything and reports every problem at\n\
         once, one per line, sorted by line, as `FILE:LINE: key: what was expected`. Problems\n\
         with the whole file have no line; past {MAX_ERRORS} problems the rest are only counted.\n\
         With any problem levee starts nothing. For this file:\n\
         \n\
         ```\n",
    );
    out.push_str(BAD_EXAMPLE);
    out.push_str("```\n\nit says:\n\n```\n");
    match super::parse(BAD_EXAMPLE, "levee.conf") {
        Err(errors) => {
            let _ = writeln!(out, "{errors}");
        }
        Ok(_) => out.push_str("(nothing: the example is valid)\n"),
    }
    out.push_str(
        "```\n\
         \n\
         ## Keys\n\
         \n\
         Keys marked runtime can change while levee runs; the others are read at start.\n\
         \n\
         | key | type | default | unit | runtime | description |\n\
         |---|---|---|---|---|---|\n",
    );
    for spec in KEYS {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} |",
            spec.name,
            spec.type_text(),
            spec.default
                .map_or("required".to_string(), |d| format!("`{d}`")),
            spec.unit,
            if spec.is_runtime() { "yes" } else { "no" },
            spec.description,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_valid() {
        let parsed = super::super::parse(EXAMPLE, "example");
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn the_bad_example_shows_several_errors() {
        let errors = super::super::parse(BAD_EXAMPLE, "example").expect_err("it is bad");
        assert!(errors.errors().len() >= 5, "{errors}");
    }

    #[test]
    fn every_key_has_a_row() {
        let docs = docs_markdown();
        for spec in KEYS {
            assert!(
                docs.contains(&format!("| `{}` |", spec.name)),
                "{}",
                spec.name
            );
        }
    }
}
