//! `engine.cores`: which CPUs run a forwarder thread.

/// A set of CPUs, as written in `engine.cores`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSet {
    /// Every CPU this process may run on (sched_getaffinity).
    Auto,
    /// These CPU ids, ascending, without duplicates.
    List(Vec<usize>),
}
