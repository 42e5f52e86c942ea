#!/usr/bin/env bash
# The embedded PostgreSQL of a CircleCI 2.17 Services machine, for the simulator: a real
# data directory at ROOT/data/circle/postgres/9.5/data (made by PostgreSQL 15's initdb,
# not 9.5.8's: a named gap) holding the runbook's nine databases with CircleCI-shaped
# tables (circle_migrations, build_jobs, contexts, qrtz_blob_triggers, tasks, the ones
# CircleCI's export script checks for, and others) and ROWS rows in each big table.
# With EMBEDDED_VAULT_ADDR, EMBEDDED_VAULT_TOKEN and BAO (the bao binary) set, each of
# six contexts gets a secret FIXTURE_SECRET_<n> encrypted by that Vault's transit key
# context-service (the odd ones with version 1, the even with the latest), its
# ciphertext in contexts_service_production.env_vars, as the context service stores them.
# Its tables use the types CircleCI's do (bigint, int, text, uuid, jsonb, bytea,
# timestamptz, float, numeric, bool, arrays, NULLs), and builds has a dropped column.
# With MONGO_STANDIN (dev/mongo-standin's binary) and PYTHON (with PyMongo) set, it also
# fills the embedded MongoDB's directory, ROOT/data/circle/mongo, through the stand-in
# (--noauth --dbpath): the runbook's four databases with ROWS/10 documents in
# circle_ghe.builds and a few in the others.
# Usage: dev/embedded-fixture.sh ROOT [ROWS]   (ROOT must be world-searchable)
set -euo pipefail
ROOT=${1:?usage: embedded-fixture.sh ROOT [ROWS]}
ROWS=${2:-1000}
PG_BIN=/usr/lib/postgresql/15/bin
DATA=$ROOT/data/circle/postgres/9.5/data
make_pg() {
mkdir -p "$DATA"
for d in "$ROOT/data" "$ROOT/data/circle" "$ROOT/data/circle/postgres" "$ROOT/data/circle/postgres/9.5"; do chmod 0755 "$d"; done
chown postgres:postgres "$DATA"; chmod 0700 "$DATA"
runuser -u postgres -- $PG_BIN/initdb -D "$DATA" -A trust -U postgres --no-sync >/dev/null
SOCK=$(mktemp -d); chmod 0777 "$SOCK"
runuser -u postgres -- $PG_BIN/pg_ctl -D "$DATA" -w -o "-c listen_addresses='' -k $SOCK -c fsync=off" -l "$SOCK/log" start >/dev/null
trap 'runuser -u postgres -- $PG_BIN/pg_ctl -D "$DATA" -m fast -w stop >/dev/null; rm -rf "$SOCK"' EXIT
q() { runuser -u postgres -- $PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -U postgres -d "$1" -c "$2"; }
for db in circle contexts conductor_production contexts_service_production cron_service_production domain federations permissions vms; do
  q postgres "CREATE DATABASE $db"
done
q circle "CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\";
  CREATE TABLE circle_migrations (id text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
  INSERT INTO circle_migrations SELECT 'migration-' || g FROM generate_series(1, 120) g;
  CREATE TABLE builds (id bigserial PRIMARY KEY, legacy text, project text, num int, status text, log text);
  ALTER TABLE builds DROP COLUMN legacy;
  INSERT INTO builds (project, num, status, log) SELECT 'gh/acme/app-' || (g % 17), g, (ARRAY['success','failed','canceled'])[1 + g % 3], repeat(md5(g::text), 8) FROM generate_series(1, $ROWS) g;"
q conductor_production "CREATE TABLE build_jobs (id uuid PRIMARY KEY, build_id bigint, name text, payload jsonb);
  INSERT INTO build_jobs SELECT md5(g::text)::uuid, g, 'job-' || (g % 5), jsonb_build_object('step', g, 'ok', g % 2 = 0) FROM generate_series(1, $ROWS) g;"
q contexts_service_production "CREATE TABLE contexts (id uuid PRIMARY KEY, org text, name text);
  INSERT INTO contexts SELECT md5('ctx' || g)::uuid, 'acme', 'context-' || g FROM generate_series(1, 25) g;
  CREATE TABLE env_vars (context_id uuid REFERENCES contexts, name text, ciphertext text, PRIMARY KEY (context_id, name));"
q cron_service_production "CREATE TABLE qrtz_blob_triggers (sched_name text, trigger_name text, trigger_group text, blob_data bytea);
  INSERT INTO qrtz_blob_triggers SELECT 'scheduler', 'trigger-' || g, 'group', decode(md5(g::text), 'hex') FROM generate_series(1, 40) g;"
q vms "CREATE TABLE tasks (id bigserial PRIMARY KEY, vm text, state text, created timestamptz DEFAULT now());
  INSERT INTO tasks (vm, state) SELECT 'vm-' || g, 'done' FROM generate_series(1, $ROWS) g;"
q domain "CREATE TABLE projects (id bigserial PRIMARY KEY, slug text UNIQUE, score float8, cost numeric(12,4), public bool, settings jsonb, tags text[]);
  INSERT INTO projects (slug, score, cost, public, settings, tags) SELECT 'gh/acme/app-' || g, g / 3.0, g * 1.25, g % 2 = 0,
    CASE WHEN g % 4 = 0 THEN NULL ELSE jsonb_build_object('parallelism', g) END, ARRAY['t' || g, 'x'] FROM generate_series(1, 17) g;"
q permissions "CREATE TABLE grants (id bigserial PRIMARY KEY, subject text, permission text); INSERT INTO grants (subject, permission) SELECT 'user-' || g, 'read' FROM generate_series(1, 50) g;"
if [ -n "${EMBEDDED_VAULT_ADDR:-}" ]; then
  for n in 1 2 3 4 5 6; do
    pt=$(printf 'context secret %s of the embedded install' "$n" | base64 -w0)
    ct=$(BAO_ADDR=$EMBEDDED_VAULT_ADDR BAO_TOKEN=$EMBEDDED_VAULT_TOKEN "$BAO" write -field=ciphertext \
      transit/encrypt/context-service plaintext="$pt" key_version=$((2 - n % 2)))
    q contexts_service_production "INSERT INTO env_vars VALUES (md5('ctx' || $n)::uuid, 'FIXTURE_SECRET_$n', '$ct')"
  done
fi
runuser -u postgres -- $PG_BIN/pg_ctl -D "$DATA" -m fast -w stop >/dev/null; rm -rf "$SOCK"; trap - EXIT
echo "embedded-fixture: $DATA ($ROWS rows per big table)" >&2
}
# Each part is made once: an existing one is reused as it is.
if [ -f "$DATA/PG_VERSION" ]; then echo "embedded-fixture: $DATA exists" >&2; else make_pg; fi
MDATA=$ROOT/data/circle/mongo
if [ -n "${MONGO_STANDIN:-}" ] && [ -d "$MDATA" ]; then
  echo "embedded-fixture: $MDATA exists" >&2
elif [ -n "${MONGO_STANDIN:-}" ]; then
  mkdir -p "$MDATA"
  MPORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$MONGO_STANDIN" --port "$MPORT" --mode 3.6 --noauth --dbpath "$MDATA" 2>/dev/null &
  MPID=$!
  "$PYTHON" - "$MPORT" "$ROWS" <<'PY'
import sys, time
import pymongo
port, rows = int(sys.argv[1]), int(sys.argv[2])
c = pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=10000, directConnection=True)
g = c["circle_ghe"]
g.builds.insert_many([{"build_num": i, "vcs_url": "https://github.com/acme/app-%d" % (i % 17),
                       "steps": [{"name": "step-%d" % k, "ok": k % 3 != 0} for k in range(3)],
                       "outcome": None if i % 9 == 0 else "success"} for i in range(max(rows // 10, 10))])
g.builds.create_index([("build_num", 1)], name="build_num_1")
g.users.insert_many([{"_id": "user-%d" % i, "login": "dev%d" % i, "admin": i == 0} for i in range(12)])
# A capped collection and a view, as an install may hold: the migration compares the
# first by its count and the second by what it shows and what it is on.
g.create_collection("action_logs", capped=True, size=1 << 20)
# (inserted against _id order: 3.6 hashes it in _id order, later versions in storage order)
g.action_logs.insert_many([{"_id": i, "action": "login", "by": "dev%d" % (i % 3)} for i in reversed(range(8))])
g.command({"create": "recent_builds", "viewOn": "builds",
           "pipeline": [{"$project": {"build_num": 1, "outcome": 1}}]})
c["build_state_dev_ghe"].states.insert_many([{"_id": i, "state": "finished"} for i in range(30)])
c["containers_dev_ghe"].containers.insert_many([{"name": "c%d" % i} for i in range(5)])
c["remote_containers_dev_ghe"].remote.insert_one({"name": "r0"})
PY
  kill -9 "$MPID"; wait "$MPID" 2>/dev/null || true
  echo "embedded-fixture: $MDATA (the MongoDB stand-in's documents)" >&2
fi
