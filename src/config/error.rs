//! Configuration errors: each names the file, the line, the key, what was wrong and what to do.

use std::fmt;

/// What kind of problem a [`ConfigError`] reports, for callers that react to some differently
/// (a `ctl` command, tests); the message says the same in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read.
    Unreadable,
    /// The file is not UTF-8 text, or too large to be a configuration.
    NotText,
    /// A line is neither `key = value`, a comment nor blank.
    Syntax,
    /// No key in the registry has this name.
    UnknownKey,
    /// A listener, pool or backend name breaks the naming rule.
    InvalidName,
    /// The value does not fit the key's type or range.
    BadValue,
    /// The key was set on an earlier line.
    Duplicate,
    /// A required key (an address, a listener's pool) is not set.
    MissingKey,
    /// A listener names a pool that is not defined.
    UnknownPool,
    /// No listener sends connections to this pool.
    UnusedPool,
    /// A pool has no backends.
    EmptyPool,
    /// A pool has more backends than its table size, or than a pool can hold.
    TooManyBackends,
    /// Two listeners share an address.
    AddressTaken,
    /// The file defines no listener.
    NoListener,
    /// A backend is one of levee's own listeners.
    SelfLoop,
    /// A pool's source addresses have none of a backend's family.
    SourceFamily,
    /// Closes a report cut short at [`MAX_ERRORS`](super::MAX_ERRORS) problems; the
    /// message says how many more there were.
    Truncated,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the caller named it.
    pub file: String,
    /// 1-based line; `None` for a problem with the whole file.
    pub line: Option<usize>,
    /// The key (or object, like `pool.web`) the problem is about, when there is one.
    pub key: Option<String>,
    /// What was wrong and what was expected.
    pub message: String,
    pub kind: ErrorKind,
}

/// `FILE:LINE: key: message`, leaving out the parts that do not apply.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration file, sorted by line; problems with the whole file
/// (no line) come last. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Sorts by line, keeping the order of discovery within a line.
    pub(crate) fn new(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        ConfigErrors { errors }
    }

    /// Appends after the sorted errors, for a closing remark about the whole report.
    pub(crate) fn push_last(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }
}

/// One error per line, no trailing newline.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(line: Option<usize>, key: Option<&str>, message: &str) -> ConfigError {
        ConfigError {
            file: "levee.conf".into(),
            line,
            key: key.map(str::to_string),
            message: message.into(),
            kind: ErrorKind::BadValue,
        }
    }

    #[test]
    fn displays_each_part_that_applies() {
        assert_eq!(
            error(Some(3), Some("engine.backlog"), "expected x").to_string(),
            "levee.conf:3: engine.backlog: expected x"
        );
        assert_eq!(error(Some(3), None, "m").to_string(), "levee.conf:3: m");
        assert_eq!(error(None, None, "m").to_string(), "levee.conf: m");
    }

    #[test]
    fn sorts_by_line_with_whole_file_problems_last() {
        let errors = ConfigErrors::new(vec![
            error(None, None, "whole"),
            error(Some(9), None, "nine"),
            error(Some(2), None, "two a"),
            error(Some(2), None, "two b"),
        ]);
        assert_eq!(
            errors.to_string(),
            "levee.conf:2: two a\nlevee.conf:2: two b\nlevee.conf:9: nine\nlevee.conf: whole"
        );
    }
}
