//! Lock-free SPSC and MPMC rings in shared memory, safe across processes.
