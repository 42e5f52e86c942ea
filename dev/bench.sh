#!/usr/bin/env bash
# `make bench`: release build, real servers, then dev/bench/bench.py prints the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
dev/services/up.sh
cargo build --locked --release
python3 dev/bench/bench.py
