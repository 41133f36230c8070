//! What can go wrong, said so that an operator knows what to do next.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// An error opening, creating or using a ring segment.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A system call on the segment file failed.
    Io {
        /// What was being done ("open", "map", ...).
        op: &'static str,
        /// The segment file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `create` found a segment at the path already.
    AlreadyExists {
        /// The segment file.
        path: PathBuf,
        /// Whether its creator is still running.
        creator_alive: bool,
        /// Whether any handle is attached to it now.
        attached: bool,
    },
    /// The file is shorter than a segment header or than its own header says.
    Truncated {
        /// The segment file.
        path: PathBuf,
        /// Its size on disk.
        len: u64,
        /// The size it needs.
        expected: u64,
    },
    /// The file does not start with the segment magic: not a ring, or never published.
    NotARing {
        /// The segment file.
        path: PathBuf,
    },
    /// The segment was not published within the wait the caller allowed.
    NotPublished {
        /// The segment file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The segment has a layout version this build does not speak.
    Version {
        /// The segment file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build speaks.
        supported: u32,
    },
    /// The segment holds another kind of ring.
    WrongKind {
        /// The segment file.
        path: PathBuf,
        /// The kind found.
        found: &'static str,
        /// The kind asked for.
        expected: &'static str,
    },
    /// The header's checksum or parameters are inconsistent.
    BadHeader {
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value is out of range.
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The end of an SPSC ring asked for is held by a live handle.
    Busy {
        /// The segment file.
        path: PathBuf,
        /// "producer" or "consumer".
        role: &'static str,
    },
    /// Every handle slot of an MPMC queue (every holder entry of a table) is held by a live
    /// handle.
    TooManyHandles {
        /// The segment file.
        path: PathBuf,
        /// The segment's handle limit (a table's `holders`).
        max: u32,
    },
    /// Shared memory broke an invariant: the ring was corrupted (or written by a hostile peer).
    Corrupt {
        /// What was found.
        what: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    // Cold: kept out of line so the ring's hot paths stay short.
    #[cold]
    #[inline(never)]
    pub(crate) fn corrupt(what: impl Into<String>) -> Error {
        Error::Corrupt { what: what.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, source } => {
                write!(f, "ring segment {}: {op} failed: {source}", path.display())
            }
            Error::AlreadyExists {
                path,
                creator_alive,
                attached,
            } => {
                write!(f, "ring segment {} already exists", path.display())?;
                if *creator_alive || *attached {
                    write!(f, " and is in use; open it instead of creating it")
                } else {
                    write!(
                        f,
                        " but is stale (its creator is gone and nothing is attached); open it \
                         to drain its messages, or remove it with remove_stale"
                    )
                }
            }
            Error::Truncated {
                path,
                len,
                expected,
            } => write!(
                f,
                "ring segment {} is {len} bytes but needs {expected}: it was truncated or is not \
                 a ring; remove it and create it again",
                path.display()
            ),
            Error::NotARing { path } => write!(
                f,
                "{} is not a ring segment (no magic); check the path",
                path.display()
            ),
            Error::NotPublished { path, waited } => write!(
                f,
                "ring segment {} was not published within {waited:?}; is its creator running?",
                path.display()
            ),
            Error::Version {
                path,
                found,
                supported,
            } => write!(
                f,
                "ring segment {} has layout version {found}, this build speaks {supported}; \
                 recreate it, or use a matching build",
                path.display()
            ),
            Error::WrongKind {
                path,
                found,
                expected,
            } => write!(
                f,
                "ring segment {} is of kind {found}, not {expected}; check the path",
                path.display()
            ),
            Error::BadHeader { path, reason } => write!(
                f,
                "ring segment {} has a corrupt header ({reason}); remove it and create it again",
                path.display()
            ),
            Error::InvalidConfig { reason } => write!(f, "invalid ring configuration: {reason}"),
            Error::Busy { path, role } => write!(
                f,
                "the {role} end of ring {} is attached by a live process; only one may be",
                path.display()
            ),
            Error::TooManyHandles { path, max } => write!(
                f,
                "ring {} already has {max} live handles, its limit; create it with a higher \
                 max_handles (for a table: holders)",
                path.display()
            ),
            Error::Corrupt { what } => write!(
                f,
                "ring contents are corrupt ({what}); stop using this ring and recreate it"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why a record was not written.
#[derive(Debug)]
pub enum PushError {
    /// No room now. Nothing was written; retry later or wait for space.
    Full,
    /// The record is larger than the ring accepts at all.
    TooLarge {
        /// The record's length.
        len: usize,
        /// The largest length the ring accepts.
        max: usize,
    },
    /// The ring's shared state is corrupt.
    Corrupt(Error),
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full => write!(f, "ring is full; retry later or wait for space"),
            PushError::TooLarge { len, max } => {
                write!(f, "record of {len} bytes exceeds the ring's limit of {max}")
            }
            PushError::Corrupt(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PushError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PushError::Corrupt(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for PushError {
    fn from(e: Error) -> PushError {
        PushError::Corrupt(e)
    }
}

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
