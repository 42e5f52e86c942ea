#!/usr/bin/env bash
# `make test`: start the real servers, run every test, stop the servers (by PID) even
# when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "make test: cargo is not installed (Rust stable is needed)" >&2; exit 1; }
command -v terraform >/dev/null || { echo "make test: terraform (>= 1.11) is not on PATH" >&2; exit 1; }
started=0
if [ ! -f dev/.state/sshd.pid ] || ! kill -0 "$(cat dev/.state/sshd.pid)" 2>/dev/null; then started=1; fi
cleanup() { if [ $started = 1 ]; then dev/services/down.sh; fi; }
trap cleanup EXIT
dev/services/up.sh
cargo test --locked --workspace --all-targets 2>&1
# The habits CI enforces: formatting, clippy without warnings, formatted examples.
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
terraform fmt -check -recursive examples
