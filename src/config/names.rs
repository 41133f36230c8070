//! The names operators write for enum values (`maglev`, `src_ip`, `info`), one table per enum, so
//! the parser, the listing and the docs can never disagree on spelling.

use std::fmt;

use super::{
    AdminState, AllDown, Balance, CheckKind, Discipline, Handoff, HashKey, LogFormat, LogLevel,
    Overflow, ProxyProtocol, SchedPolicy,
};

macro_rules! value_names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value's name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The name written in configuration files.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }

            /// The value with this exact (case-sensitive) name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

value_names!(Balance {
    Maglev => "maglev",
    RoundRobin => "round_robin",
    Weighted => "weighted",
    LeastConn => "least_conn",
    P2c => "p2c",
    SourceHash => "source_hash",
});

value_names!(HashKey {
    SourceIp => "src_ip",
    SourceIpPort => "src_ip_port",
});

value_names!(CheckKind {
    None => "none",
    Tcp => "tcp",
});

value_names!(AllDown {
    Refuse => "refuse",
    TryAnyway => "try_anyway",
});

value_names!(AdminState {
    Up => "up",
    Drain => "drain",
});

value_names!(SchedPolicy {
    Batch => "batch",
    Normal => "normal",
});

value_names!(Handoff {
    Auto => "auto",
    Pidfd => "pidfd",
    ScmRights => "scm_rights",
});

value_names!(Discipline {
    Fifo => "fifo",
    Codel => "codel",
});

value_names!(Overflow {
    Queue => "queue",
    Reject => "reject",
});

value_names!(ProxyProtocol {
    None => "none",
    V1 => "v1",
    V2 => "v2",
});

value_names!(LogFormat {
    Text => "text",
    Json => "json",
});

value_names!(LogLevel {
    Error => "error",
    Warn => "warn",
    Info => "info",
    Debug => "debug",
    Trace => "trace",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_maps_back_to_its_value() {
        for name in Balance::NAMES {
            assert_eq!(Balance::from_name(name).map(Balance::name), Some(*name));
        }
        for name in HashKey::NAMES {
            assert_eq!(HashKey::from_name(name).map(HashKey::name), Some(*name));
        }
        for name in LogLevel::NAMES {
            assert_eq!(LogLevel::from_name(name).map(LogLevel::name), Some(*name));
        }
        for name in SchedPolicy::NAMES {
            assert_eq!(
                SchedPolicy::from_name(name).map(SchedPolicy::name),
                Some(*name)
            );
        }
        assert_eq!(Balance::from_name("Maglev"), None);
        assert_eq!(HashKey::SourceIpPort.to_string(), "src_ip_port");
    }
}
