//! Reading a configuration file: bounded in size, checked to be text, every failure reported
//! as a [`ConfigError`] naming the file.

use std::io::Read;
use std::path::Path;

use super::error::{ConfigError, ConfigErrors, ErrorKind};
use super::{Config, parse};

/// Largest file [`load`](super::load) reads: far above any real configuration, and it keeps a wrong path
/// (a log, a disk image, a device) from being read into memory.
pub const MAX_FILE_SIZE: u64 = 16 << 20;

pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let fail = |line, kind, message| {
        Err(ConfigErrors::new(vec![ConfigError {
            file: file.clone(),
            line,
            key: None,
            message,
            kind,
        }]))
    };
    let unreadable = |e: std::io::Error| format!("cannot read the configuration file: {e}");
    let mut handle = match std::fs::File::open(path) {
        Ok(handle) => handle,
        Err(e) => return fail(None, ErrorKind::Unreadable, unreadable(e)),
    };
    if handle.metadata().is_ok_and(|m| m.is_dir()) {
        let message = "is a directory, not a configuration file".to_string();
        return fail(None, ErrorKind::Unreadable, message);
    }
    // Read through a limit rather than trusting the size up front: pipes report none, and a
    // file can grow while it is read.
    let mut bytes = Vec::new();
    if let Err(e) = (&mut handle)
        .take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
    {
        return fail(None, ErrorKind::Unreadable, unreadable(e));
    }
    if bytes.len() as u64 > MAX_FILE_SIZE {
        let message = format!(
            "larger than {} MiB, too large for a configuration file; is it the right file?",
            MAX_FILE_SIZE >> 20
        );
        return fail(None, ErrorKind::NotText, message);
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => parse(text, &file),
        Err(e) => {
            let valid = e.valid_up_to();
            let line = bytes[..valid].iter().filter(|&&b| b == b'\n').count() + 1;
            let message = format!(
                "not UTF-8 text (byte {} of the file); configuration files are plain text",
                valid + 1
            );
            fail(Some(line), ErrorKind::NotText, message)
        }
    }
}
