#!/usr/bin/env bash
# Fuzzes levee-rings' segment readers for a while (default 60 s): arbitrary bytes as a segment
# file, or written over a live segment's control and data areas (rings/tests/harness/reader.rs).
# Any panic, fault or input taking over 10 s (a hang) fails the run.
#
# Needs cargo-fuzz (installed from crates.io if missing). libFuzzer's flags are nightly-only;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. No sanitizer: the rings live in mmap'd
# memory that ASan does not instrument; debug assertions check every shared-memory offset instead.
set -euo pipefail
cd "$(dirname "$0")/../rings"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
scratch_glob="/dev/shm/levee-rings-fuzz-*"
trap 'rm -rf $scratch_glob' EXIT
mkdir -p fuzz/corpus/segment_reader
exec_status=0
timeout $((secs + 600)) cargo fuzz run segment_reader --sanitizer none --debug-assertions -- \
    -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 || exec_status=$?
exit "$exec_status"
