//! Arbitrary bytes as a ring segment, or over a live segment's control and data areas: the
//! readers must return values or errors, never fault, read out of bounds, or hang.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/harness/reader.rs"]
mod harness;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(format!("/dev/shm/levee-rings-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir in /dev/shm");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    harness::run(scratch(), data);
});
