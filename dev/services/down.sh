#!/usr/bin/env bash
# Stops the servers dev/services/up.sh started, by the PIDs it recorded.
set -uo pipefail
cd "$(dirname "$0")/../.."
D=$PWD/dev/.state
for name in sshd redis bao bao-embedded nomad nomad-embedded nomad-external mongo mongo36 moto; do
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
# Temporary containers the CircleCI simulator started (a PostgreSQL server each).
for f in "$D"/sim/state/run/*.json; do
  [ -f "$f" ] || continue
  pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("pid", ""))' "$f")
  if [ -n "$pid" ]; then
    kill -9 "$pid" 2>/dev/null || true   # the simulator's MongoDB stand-in
  else
    data=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["host"])' "$f")
    sock=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sock"])' "$f")
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    case "$sock" in */ccsim-pg-*) rm -rf "$sock" ;; esac
  fi
  rm -f "$f"
  echo "services-down: stopped the simulator's $(basename "$f" .json)" >&2
done
MQD=$D/rabbitmq
if [ -f "$MQD/rabbitmq.pid" ] && kill -0 "$(cat "$MQD/rabbitmq.pid")" 2>/dev/null; then
  MQ_PORT=$(sed -n 's/^listeners.tcp.default = 127.0.0.1://p' "$MQD/rabbitmq.conf")
  env HOME="$MQD" RABBITMQ_NODENAME=circleci-dev@localhost ERL_EPMD_PORT=$((MQ_PORT + 1)) \
    /usr/lib/rabbitmq/bin/rabbitmqctl shutdown >/dev/null 2>&1 || kill "$(cat "$MQD/rabbitmq.pid")"
  epmd -port $((MQ_PORT + 1)) -kill >/dev/null 2>&1 || true
  rm -f "$MQD/rabbitmq.pid"
  echo "services-down: stopped rabbitmq" >&2
fi
for c in pg pg-md5; do
  if [ -f "$D/$c/data/postmaster.pid" ]; then
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$D/$c/data" -m fast -w stop >/dev/null \
      && echo "services-down: stopped postgresql ($c)" >&2
  fi
done
