#!/usr/bin/env bash
# Stops the servers dev/services-up.sh started, by the PIDs it recorded.
set -uo pipefail
cd "$(dirname "$0")/.."
D=$PWD/dev/.state
for name in sshd redis bao; do
  f=$D/$name.pid
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "services-down: stopped $name (pid $pid)" >&2
  fi
  rm -f "$f"
done
if [ -f "$D/pg/data/postmaster.pid" ]; then
  runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$D/pg/data" -m fast -w stop >/dev/null \
    && echo "services-down: stopped postgresql" >&2
fi
