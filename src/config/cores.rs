//! `engine.cores`: which CPUs run a forwarder thread.
//!
//! Written as `auto` or as a list of ids and ranges (`0-3`, `0,2,5-7`), the syntax of
//! `/sys/devices/system/cpu/online` and `taskset -c`. Parsing checks only the syntax; whether
//! the CPUs exist and this process may use them is checked by [`CoreSet::resolve`] when the
//! forwarders start, since a config file may be checked on another machine.

use std::fmt;
use std::io;

/// Highest CPU id accepted plus one: the kernel's largest `NR_CPUS`. Bounds the memory a
/// hostile range like `0-4000000000` could ask for.
pub const MAX_CPUS: usize = 8192;

/// A set of CPUs, as written in `engine.cores`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSet {
    /// Every CPU this process may run on (sched_getaffinity).
    Auto,
    /// These CPU ids, ascending, without duplicates.
    List(Vec<usize>),
}

impl CoreSet {
    /// Reads `auto` or a CPU list. Overlapping ranges are merged; the list is kept ascending.
    pub fn parse(text: &str) -> Result<CoreSet, String> {
        let expected = "expected auto or a list of CPU ids and ranges, like 0-3 or 0,2,5-7";
        if text == "auto" {
            return Ok(CoreSet::Auto);
        }
        let mut present = vec![false; MAX_CPUS];
        for item in text.split(',') {
            let item = item.trim();
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (cpu_id(a.trim()), cpu_id(b.trim())),
                None => (cpu_id(item), cpu_id(item)),
            };
            let (first, last) = match (first, last) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(IdError::TooLarge), _) | (_, Err(IdError::TooLarge)) => {
                    return Err(format!(
                        "expected CPU ids from 0 to {}, {}",
                        MAX_CPUS - 1,
                        super::value::found(item)
                    ));
                }
                _ => return Err(format!("{expected}, {}", super::value::found(text))),
            };
            if first > last {
                return Err(format!(
                    "{expected}; the range `{first}-{last}` runs backwards (write `{last}-{first}`)"
                ));
            }
            present[first..=last].fill(true);
        }
        Ok(CoreSet::List(
            present
                .iter()
                .enumerate()
                .filter_map(|(id, &on)| on.then_some(id))
                .collect(),
        ))
    }

    /// The CPU ids to run forwarders on: for `auto` every CPU in this process's affinity mask
    /// (so taskset and cgroup cpusets are honoured); for a list the list itself, after checking
    /// that the process may run on each of them.
    pub fn resolve(&self) -> Result<Vec<usize>, String> {
        let allowed = affinity()
            .map_err(|e| format!("engine.cores: cannot read this process's CPU affinity: {e}"))?;
        match self {
            CoreSet::Auto if allowed.is_empty() => {
                Err("engine.cores: the CPU affinity mask is empty".to_string())
            }
            CoreSet::Auto => Ok(allowed),
            CoreSet::List(ids) => {
                if ids.is_empty() {
                    return Err("engine.cores: the CPU list is empty".to_string());
                }
                match ids.iter().find(|id| allowed.binary_search(id).is_err()) {
                    Some(missing) => Err(format!(
                        "engine.cores: CPU {missing} is not available to this process, which may \
                         run on {}; list only those CPUs or use auto",
                        CoreSet::List(allowed)
                    )),
                    None => Ok(ids.clone()),
                }
            }
        }
    }
}

enum IdError {
    Syntax,
    TooLarge,
}

fn cpu_id(text: &str) -> Result<usize, IdError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdError::Syntax);
    }
    match text.parse::<usize>() {
        Ok(id) if id < MAX_CPUS => Ok(id),
        _ => Err(IdError::TooLarge),
    }
}

/// The CPUs in this process's affinity mask, ascending.
fn affinity() -> io::Result<Vec<usize>> {
    const WORD_BITS: usize = libc::c_ulong::BITS as usize;
    // The kernel's mask is an array of unsigned longs; sized for MAX_CPUS rather than
    // cpu_set_t's 1024 so machines with more CPUs work too.
    let mut mask = [0 as libc::c_ulong; MAX_CPUS / WORD_BITS];
    // SAFETY: `mask` is a live, writable buffer of exactly `size_of_val(&mask)` bytes, the length
    // passed; the kernel writes at most that many bytes. cpu_set_t is itself an array of
    // unsigned longs, so the pointer is suitably aligned.
    let rc = unsafe {
        libc::sched_getaffinity(
            0,
            std::mem::size_of_val(&mask),
            mask.as_mut_ptr().cast::<libc::cpu_set_t>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..MAX_CPUS)
        .filter(|&cpu| mask[cpu / WORD_BITS] & (1 << (cpu % WORD_BITS)) != 0)
        .collect())
}

/// The canonical text: `auto`, or ids with runs of three or more written as ranges
/// (`0-3,5,7-9`), which [`CoreSet::parse`] reads back to the same set.
impl fmt::Display for CoreSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = match self {
            CoreSet::Auto => return f.write_str("auto"),
            CoreSet::List(ids) => ids,
        };
        let mut i = 0;
        while i < ids.len() {
            if i > 0 {
                f.write_str(",")?;
            }
            let start = ids[i];
            let mut end = start;
            while i + 1 < ids.len() && Some(ids[i + 1]) == end.checked_add(1) {
                i += 1;
                end = ids[i];
            }
            match end - start {
                0 => write!(f, "{start}")?,
                1 => write!(f, "{start},{end}")?,
                _ => write!(f, "{start}-{end}")?,
            }
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(ids: &[usize]) -> CoreSet {
        CoreSet::List(ids.to_vec())
    }

    #[test]
    fn parses_auto_ids_and_ranges() {
        assert_eq!(CoreSet::parse("auto"), Ok(CoreSet::Auto));
        assert_eq!(CoreSet::parse("0-3"), Ok(list(&[0, 1, 2, 3])));
        assert_eq!(CoreSet::parse("0,2,5-7"), Ok(list(&[0, 2, 5, 6, 7])));
        assert_eq!(CoreSet::parse("3, 1 ,2"), Ok(list(&[1, 2, 3])));
        assert_eq!(CoreSet::parse("0-3,2-5"), Ok(list(&[0, 1, 2, 3, 4, 5])));
        assert_eq!(CoreSet::parse("8191"), Ok(list(&[8191])));
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in [
            "", "Auto", "0,", ",0", "a", "1-", "-1", "0-1-2", "0 1", "0x1", "+1",
        ] {
            assert!(CoreSet::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            CoreSet::parse("0,5-3"),
            Err("expected auto or a list of CPU ids and ranges, like 0-3 or 0,2,5-7; the range `5-3` runs backwards (write `3-5`)".into())
        );
        assert_eq!(
            CoreSet::parse("0-4000000000"),
            Err("expected CPU ids from 0 to 8191, found `0-4000000000`".into())
        );
    }

    #[test]
    fn displays_canonically() {
        assert_eq!(CoreSet::Auto.to_string(), "auto");
        assert_eq!(list(&[0, 1, 2, 3, 5, 7, 8, 9]).to_string(), "0-3,5,7-9");
        assert_eq!(list(&[0, 1, 4]).to_string(), "0,1,4");
        assert_eq!(list(&[6]).to_string(), "6");
        assert_eq!(list(&[usize::MAX]).to_string(), usize::MAX.to_string());
        // Hand-built lists need not be canonical; each id still shows once per entry.
        assert_eq!(list(&[1, 0, 1]).to_string(), "1,0,1");
        for text in ["auto", "0-3,5,7-9", "0,1,4", "2"] {
            assert_eq!(CoreSet::parse(text).map(|c| c.to_string()), Ok(text.into()));
        }
    }

    #[test]
    fn resolves_against_the_affinity_mask() {
        let all = CoreSet::Auto
            .resolve()
            .expect("this process has an affinity mask");
        assert!(!all.is_empty());
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(list(&all[..1]).resolve(), Ok(all[..1].to_vec()));
        let missing = (0..MAX_CPUS)
            .find(|id| !all.contains(id))
            .unwrap_or(MAX_CPUS - 1);
        let err = list(&[all[0], missing])
            .resolve()
            .expect_err("a CPU outside the mask");
        assert!(
            err.starts_with(&format!(
                "engine.cores: CPU {missing} is not available to this process"
            )),
            "{err}"
        );
        assert!(list(&[]).resolve().is_err());
    }
}
