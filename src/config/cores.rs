//! `engine.cores`: which CPUs run a forwarder thread.

/// A set of CPUs, as written in `engine.cores`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSet {
    /// Every CPU this process may run on (sched_getaffinity).
    Auto,
    /// These CPU ids, ascending, without duplicates.
    List(Vec<usize>),
}

impl CoreSet {
    /// The CPU ids to run forwarders on.
    pub fn resolve(&self) -> Result<Vec<usize>, String> {
        match self {
            Self::List(ids) => Ok(ids.clone()),
            Self::Auto => {
                Ok((0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect())
            }
        }
    }
}
