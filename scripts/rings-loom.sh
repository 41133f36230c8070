#!/usr/bin/env bash
# Runs the loom models of levee-rings' index protocols.
# Its own target dir keeps `--cfg loom` from invalidating the normal build.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-loom}"
exec timeout 900 cargo test -p levee-rings --release --test loom -- --test-threads=2 "$@"
