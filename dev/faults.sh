#!/usr/bin/env bash
# `make faults`: the fault suite (tests/faults.rs) against the real servers, then its
# table. The servers are stopped again if this script started them.
set -euo pipefail
cd "$(dirname "$0")/.."
started=0
if [ ! -f dev/.state/sshd.pid ] || ! kill -0 "$(cat dev/.state/sshd.pid)" 2>/dev/null; then started=1; fi
cleanup() { if [ $started = 1 ]; then dev/services/down.sh; fi; }
trap cleanup EXIT
dev/services/up.sh
rm -f dev/.state/faults.txt dev/.state/faults-cutover.txt
status=0
cargo test --locked --test faults -- --nocapture >dev/.state/faults.log 2>&1 || status=$?
for t in faults faults-cutover; do if [ -f dev/.state/$t.txt ]; then cat dev/.state/$t.txt; fi; done
if [ $status != 0 ]; then
  echo "make faults: the suite failed; its log is dev/.state/faults.log" >&2
  grep -A12 "panicked" dev/.state/faults.log >&2 || true
fi
exit $status
