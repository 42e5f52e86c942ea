#!/usr/bin/env python3
"""A CircleCI Server 2.17 Services-machine SIMULATOR, for tests only: CircleCI's
Services machine (Replicated, Docker, CircleCI's own containers) cannot be installed
here. It answers the commands circleci_services_restart runs over SSH, as the
`replicatedctl` and `docker` on the test sshd's PATH (wrappers made by
dev/services/up.sh), and refuses everything else with exit status 64.

What it does for real: on `replicatedctl app start`, each simulated container reads the
config files the way CircleCI does (bash `source` of /etc/circleconfig/... and
/etc/circle-installation-customizations, under CIRCLECI_SIM_ROOT) and connects, with
real clients, to what they name: psql to each of the 9 PostgreSQL databases, PyMongo to
each of the 5 MongoDB URIs (authenticate, ping), Vault's HTTP API (token lookup-self,
then transit encrypt and decrypt with key context-service), Redis (PING), RabbitMQ (an
AMQP login with pika), Nomad (GET /v1/status/leader). TLS trusts the system's CAs plus
the *.crt files in ROOT/usr/local/share/ca-certificates (where the runbook says to put
a CA). Each container logs the lines the runbook quotes on success, and on failure the
exceptions the runbook warns about (e.g. org.postgresql.util.PSQLException) with the
client's real error. A service with no external config uses the embedded one, and its
lines name it the same way, by the host name Replicated's Docker network gives the
embedded container (postgres, mongodb, vault, redis, rabbitmq, nomad: the simulator's
choice, not checked against a real install); nothing is connected to then, as the
embedded servers do not run here.

What it cannot show: CircleCI's own code. The log lines are the runbook's, written by
this script; the Nomad line ("Connected to Nomad ... leader ...") is the simulator's
own, as the runbook has no log check for Nomad.

  du -s -B1 -- PATH, df -B1 --output=avail -- PATH  -> coreutils' own, PATH under ROOT
                                                   (setting disk_avail: df reports that)
  update-ca-certificates [--fresh]               -> ROOT/etc/ssl/certs/ca-certificates.crt
                                                   from the system's CAs and ROOT's
                                                   /usr/local/share/ca-certificates/*.crt
                                                   (the host's own trust store is never
                                                   touched)

Commands (JSON shapes from Replicated's replicatedctl reference; CircleCI's 2.x docs):
  replicatedctl app status [inspect] [-o json]  -> [{AppID, Sequence, State, DesiredState,
                                                    Error, IsCancellable, IsTransitioning,
                                                    LastModifiedAt}]
  replicatedctl app inspect [-o json]           -> [{ID, Sequence, VersionLabel, ...}]
  replicatedctl app stop | start                -> return at once; the transition takes
                                                   CIRCLECI_SIM_TRANSITION seconds (and,
                                                   for start, the containers' checks)
  docker ps [-q] [--filter name=N] [--format '{{.Names}}']
  docker logs [--timestamps] [--since RFC3339] NAME   (stdout and stderr apart, as Docker)
  docker inspect --format '{{.State.StartedAt}}' | '{{.State.FinishedAt}}' NAME
  docker exec NAME bash -c 'source /.circlerc; ...'   (/.circlerc is the container's env)
  docker run / exec / rm of postgres:9.5.8 over ROOT/data/circle/...: see circleci_sim_run.py

Environment: CIRCLECI_SIM_STATE (state directory), CIRCLECI_SIM_ROOT (the machine's
"/"). Settings (STATE/settings.json, else CIRCLECI_SIM_<NAME>): root (as CIRCLECI_SIM_ROOT), transition (seconds,
default 1), version (default 2.17.3), stuck ("started" or "stopped": the app never gets
there), rm_refused (container names whose docker rm fails, as a daemon's does when it cannot
remove one: the container keeps running), pg95_archives (settings.json only; default true: the embedded pg_dump's
custom-format archives rewritten as 9.5 writes them; false leaves them as 15 writes them, for
`make bench`: the rewrite copies the data). Usage: circleci_sim.py replicatedctl|docker|boot ARGS...
"""

import fcntl
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.parse

# ssl and urllib.request are imported where the checks and the CA bundle use them: at
# the top they were 26 ms of every command's start, which a real replicatedctl (a Go
# binary) does not have, and which a plan's `replicatedctl app status` paid.

import circleci_sim_run as temporary  # temporary containers (postgres:9.5.8), next to this file

STATE = os.environ.get("CIRCLECI_SIM_STATE", "/nonexistent")


def setting(name, default):
    """STATE/settings.json (tests write it) over the environment over the default."""
    try:
        with open(os.path.join(STATE, "settings.json")) as f:
            v = json.load(f).get(name)
            if v is not None:
                return v
    except (FileNotFoundError, ValueError):
        pass
    return os.environ.get(f"CIRCLECI_SIM_{name.upper()}", default)


ROOT = str(setting("root", "/"))
TRANSITION = float(setting("transition", "1"))
VERSION = str(setting("version", "2.17.3"))
# "never": the app does not reach the state asked for (to test deadlines).
STUCK = str(setting("stuck", ""))
APP_ID = "4f9c2a67d1e3b8a0c5d2e1f07a6b9c3d"
# The runbook's nine databases.
DATABASES = ["circle", "contexts", "conductor_production", "contexts_service_production",
             "cron_service_production", "domain", "federations", "permissions", "vms"]
CONTAINERS = ["frontend", "context-service", "domain-service", "picard-output-processor", "slanger",
              "workflows-conductor"]
CHECK_TIMEOUT = 5


def refuse(what):
    print(f"circleci-sim: {what}: not implemented by the simulator", file=sys.stderr)
    sys.exit(64)


def path(p):
    return os.path.join(ROOT, p.lstrip("/"))


def now():
    # As Go marshals a time.Time (RFC 3339 with nanoseconds, trailing zeros cut):
    # Replicated is written in Go. Two changes in one second stay apart.
    ns = time.time_ns()
    frac = ("%09d" % (ns % 1_000_000_000)).rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + \
        ("." + frac if frac else "") + "Z"


# ------------------------------------------------------------------ app state

def load():
    try:
        with open(os.path.join(STATE, "app.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"desired": "stopped", "since": 0, "sequence": 1, "modified": now(), "boot": None}


def save(app):
    tmp = os.path.join(STATE, "app.json.tmp")
    with open(tmp, "w") as f:
        json.dump(app, f)
    os.replace(tmp, os.path.join(STATE, "app.json"))


def booted(app):
    b = app.get("boot")
    return b is not None and os.path.exists(os.path.join(STATE, f"boot-{b}.done"))


def current(app):
    """(State, IsTransitioning)."""
    elapsed = time.time() - app["since"]
    if STUCK == app["desired"]:
        return ("stopping" if app["desired"] == "stopped" else "starting", True)
    if app["desired"] == "stopped":
        return ("stopped", False) if elapsed >= TRANSITION else ("stopping", True)
    if elapsed >= TRANSITION and booted(app):
        return ("started", False)
    return ("starting", True)


def replicatedctl(args):
    words = [a for a in args if a not in ("-o", "json", "--output", "--output=json")]
    if words[:1] != ["app"] or len(words) < 2:
        refuse("replicatedctl " + " ".join(args))
    os.makedirs(STATE, exist_ok=True)
    app = load()
    verb = words[1]
    if verb == "status":
        state, moving = current(app)
        print(json.dumps([{
            "AppID": APP_ID, "Sequence": app["sequence"], "State": state,
            "DesiredState": app["desired"], "Error": "", "IsCancellable": moving,
            "IsTransitioning": moving, "LastModifiedAt": app["modified"],
        }], indent=2))
    elif verb == "inspect":
        print(json.dumps([{
            "ID": APP_ID, "Sequence": app["sequence"], "VersionLabel": VERSION,
            "ReleaseNotes": "CircleCI Server (simulated)", "CreatedAt": app["modified"],
        }], indent=2))
    elif verb == "stop":
        if app["desired"] != "stopped":
            app.update(desired="stopped", since=time.time(), modified=now(), boot=None)
            save(app)
    elif verb == "start":
        if app["desired"] != "started":
            boot = f"{int(time.time() * 1000)}-{os.getpid()}"
            app.update(desired="started", since=time.time(), modified=now(), boot=boot)
            save(app)
            # The containers come up in the background, as Replicated's do.
            subprocess.Popen([sys.executable, os.path.abspath(__file__), "boot", boot],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(STATE, "boot.err"), "a"),
                             start_new_session=True)
    else:
        refuse("replicatedctl " + " ".join(args))


# ------------------------------------------------------------------ containers' config

def source(files):
    """The environment after bash sources `files` (those that exist), as CircleCI does."""
    script = "set -a\n" + "".join(f"[ -f {shlex.quote(f)} ] && . {shlex.quote(f)}\n" for f in files) + "env -0\n"
    out = subprocess.run(["bash", "-c", script], capture_output=True, env={"PATH": "/usr/bin:/bin"},
                         timeout=CHECK_TIMEOUT)
    env = {}
    for item in out.stdout.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def config_files(container):
    shared = [path("/etc/circle-installation-customizations")]
    shared += [path(f"/etc/circleconfig/shared/{n}") for n in ("postgresql", "redis", "rabbitmq", "nomad")]
    own = {"context-service": ["/etc/circleconfig/context-service/customizations"],
           "slanger": ["/etc/circleconfig/slanger/customizations"]}.get(container, [])
    return shared + [path(p) for p in own]


def tls_context():
    import ssl
    ctx = ssl.create_default_context()
    d = path("/usr/local/share/ca-certificates")
    if os.path.isdir(d):
        for name in sorted(os.listdir(d)):
            if name.endswith(".crt"):
                try:
                    ctx.load_verify_locations(os.path.join(d, name))
                except (ssl.SSLError, OSError):
                    pass
    return ctx


def ca_file():
    """The CAs as one file, for clients that take a path (psql, PyMongo)."""
    import ssl
    d = path("/usr/local/share/ca-certificates")
    bundle = os.path.join(STATE, "ca-bundle.pem")
    parts = []
    system = ssl.get_default_verify_paths().cafile
    if system and os.path.exists(system):
        parts.append(open(system).read())
    if os.path.isdir(d):
        parts += [open(os.path.join(d, n)).read() for n in sorted(os.listdir(d)) if n.endswith(".crt")]
    with open(bundle, "w") as f:
        f.write("\n".join(parts))
    return bundle


# ------------------------------------------------------------------ checks, real clients

def check_postgres(env, log):
    host, port, user = env["POSTGRES_HOST"], env.get("POSTGRES_PORT", "5432"), env.get("POSTGRES_USER", "circle")
    log(f"INFO circle.db.config POSTGRES_HOST={host} POSTGRES_PORT={port} POSTGRES_USER={user}")
    for db in DATABASES:
        r = subprocess.run(["psql", "-X", "-q", "-At", "-c", "SELECT 1"],
                           env={"PATH": "/usr/bin:/bin", "PGHOST": host, "PGPORT": port, "PGUSER": user,
                                "PGPASSWORD": env.get("POSTGRES_PASSWORD", ""), "PGDATABASE": db,
                                "PGCONNECT_TIMEOUT": str(CHECK_TIMEOUT), "PGSSLMODE": "prefer"},
                           capture_output=True, text=True, timeout=CHECK_TIMEOUT * 2)
        if r.returncode == 0:
            log(f"INFO circle.db.pool connected to database {db} at {host}:{port}")
        else:
            err = " ".join(r.stderr.split())
            log(f"ERROR org.postgresql.util.PSQLException: {err} (database {db})")


def check_mongo(env, log):
    import pymongo  # the venv's PyMongo 4.8, MongoDB's own driver
    n = 0
    for var in ("CIRCLE_SECRETS_MONGODB_MAIN_URI", "CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI",
                "CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI", "CIRCLE_SECRETS_MONGODB_CONTAINERS_URI",
                "CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI"):
        uri = env.get(var)
        if not uri:
            log(f"ERROR com.mongodb.MongoConfigurationException: {var} is not set")
            continue
        hosts = urllib.parse.urlsplit(uri).netloc.rsplit("@", 1)[-1]
        try:
            client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=CHECK_TIMEOUT * 1000,
                                         connectTimeoutMS=CHECK_TIMEOUT * 1000, tlsCAFile=ca_file()
                                         if "ssl=true" in uri or "tls=true" in uri else None)
            client.get_default_database().command("ping")
            # As the Java driver logs it: servers the seed's member list names are
            # "discovered", and connections are opened to the names the driver uses
            # (a replica set's own names, which may not be the seed list's).
            seeds = hosts.split(",")
            nodes = sorted(f"{h}:{p}" for h, p in client.nodes)
            for h in nodes:
                if h not in seeds:
                    log(f"INFO org.mongodb.driver.cluster Adding discovered server {h} to client view of cluster")
            if client.primary and "replicaSet=" in uri:
                log(f"INFO org.mongodb.driver.cluster Discovered replica set primary {client.primary[0]}:{client.primary[1]}")
            for h in nodes:
                n += 1
                log(f"INFO org.mongodb.driver.connection Opened connection [connectionId{{localValue:{n}}}] to {h}")
            client.close()
        except Exception as e:  # noqa: BLE001 -- every driver error is evidence
            kind = "MongoSecurityException" if "auth" in str(e).lower() else "MongoTimeoutException"
            log(f"ERROR com.mongodb.{kind}: {' '.join(str(e).split())} ({var}, {hosts})")


def check_vault(env, log):
    import ssl
    import urllib.request

    url, token, mount = env.get("VAULT__URL", ""), env.get("VAULT__TOKEN", ""), env.get("VAULT__MOUNT__TRANSIT", "transit")
    ctx = tls_context()

    def call(method, p, body=None):
        req = urllib.request.Request(f"{url}/v1/{p}", method=method, headers={"X-Vault-Token": token},
                                     data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(req, timeout=CHECK_TIMEOUT, context=ctx) as r:
            return json.loads(r.read() or b"{}")

    try:
        call("GET", "auth/token/lookup-self")
        plain = "c2ltdWxhdG9yIHJvdW5kIHRyaXA="
        ct = call("POST", f"{mount}/encrypt/context-service", {"plaintext": plain})["data"]["ciphertext"]
        back = call("POST", f"{mount}/decrypt/context-service", {"ciphertext": ct})["data"]["plaintext"]
        if back != plain:
            raise ValueError("decrypt did not give back the plaintext")
        log("INFO circleci.backplane.secrets.backend.vault Successfully retrieved current auth token;")
    except Exception as e:  # noqa: BLE001
        detail = e.read().decode(errors="replace") if hasattr(e, "read") else str(e)
        if isinstance(getattr(e, "reason", None), ssl.SSLError):
            detail = f"PKIX path building failed: {e.reason}"
        log(f"ERROR circleci.backplane.secrets.backend.vault {' '.join(detail.split())} (at {url})")


def redis_ping(host, port):
    with socket.create_connection((host, int(port)), timeout=CHECK_TIMEOUT) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = s.recv(64)
    if not reply.startswith(b"+PONG"):
        raise OSError(f"unexpected reply {reply!r}")


def check_redis(env, log):
    host, port = env["REDIS_HOST"], env.get("REDIS_PORT", "6379")
    try:
        redis_ping(host, port)
        log(f"INFO domain-service.redis Reconnected to {host}:{port}")
    except OSError as e:
        log(f"ERROR domain-service.redis Could not connect to Redis at {host}:{port}: {e}")


def check_rabbitmq(env, log, lines):
    import pika  # the venv's pika 1.3, a real AMQP 0-9-1 client
    host = env["RABBITMQ_HOST"]
    params = pika.ConnectionParameters(
        host=host, port=int(env.get("RABBITMQ_PORT", "5672")), socket_timeout=CHECK_TIMEOUT,
        blocked_connection_timeout=CHECK_TIMEOUT, connection_attempts=1,
        credentials=pika.PlainCredentials(env.get("RABBITMQ_USERNAME", ""), env.get("RABBITMQ_PASSWORD", "")))
    try:
        pika.BlockingConnection(params).close()
        for line in lines:
            log(f"INFO {line} on host {host}")
    except Exception as e:  # noqa: BLE001
        log(f"ERROR com.rabbitmq.client.AuthenticationFailureException: {type(e).__name__} {e} (host {host})")


def check_nomad(env, log):
    import urllib.request

    endpoint = env["NOMAD_API_ENDPOINT"].rstrip("/")
    try:
        req = urllib.request.Request(f"{endpoint}/v1/status/leader")
        if env.get("NOMAD_TOKEN"):
            req.add_header("X-Nomad-Token", env["NOMAD_TOKEN"])
        with urllib.request.urlopen(req, timeout=CHECK_TIMEOUT, context=tls_context()) as r:
            leader = json.loads(r.read())
        log(f"INFO circle.nomad Connected to Nomad at {endpoint}, leader {leader}")
    except Exception as e:  # noqa: BLE001
        log(f"ERROR circle.nomad Could not reach Nomad at {endpoint}: {e}")


def rfc3339_nano(ns):
    """Docker's timestamp form (RFC 3339, nanoseconds, UTC), from this machine's clock."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def parse_rfc3339(t):
    """Nanoseconds since the epoch of an RFC 3339 UTC timestamp (any number of fraction digits)."""
    import calendar
    base, _, frac = t.rstrip("Z").partition(".")
    secs = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return secs * 10**9 + int((frac + "000000000")[:9] or 0)


def boot_container(name, d):
    env = source(config_files(name))
    # Like a container restarted rather than recreated, the log keeps the lines of
    # earlier starts: `docker logs` shows them unless given --since. Each record keeps
    # its stream: a JVM logs exceptions (ERROR lines here) on stderr.
    # Docker's State: FinishedAt is when the previous run ended (the zero time for a
    # container that never stopped), StartedAt when this one began.
    started = time.time_ns()
    if os.path.exists(os.path.join(d, "started_at")):
        with open(os.path.join(d, "finished_at"), "w") as f:
            f.write(rfc3339_nano(started - 1))
    with open(os.path.join(d, "started_at"), "w") as f:
        f.write(rfc3339_nano(started))
    logf = open(os.path.join(d, "log"), "a")

    def log(line):
        stream = "stderr" if line.startswith(("ERROR", "FATAL")) else "stdout"
        text = f"{time.strftime('%b %d %H:%M:%S', time.gmtime())}.000:+0000 {line}"
        logf.write(json.dumps({"t": time.time_ns(), "stream": stream, "line": text}) + "\n")
        logf.flush()

    log(f"INFO {name} starting (CircleCI Server {VERSION}, simulated)")
    circlerc = dict(env)
    if name == "frontend":
        if env.get("POSTGRES_HOST"):
            check_postgres(env, log)
        else:
            log("INFO circle.db.config POSTGRES_HOST=postgres POSTGRES_PORT=5432 POSTGRES_USER=circle")
        if env.get("CIRCLE_SECRETS_MONGODB_MAIN_URI"):
            check_mongo(env, log)
        else:
            log("INFO org.mongodb.driver.connection Opened connection [connectionId{localValue:1}] "
                "to mongodb:27017")
        if env.get("NOMAD_API_ENDPOINT"):
            check_nomad(env, log)
        else:
            log("INFO circle.nomad Connected to Nomad at http://nomad:4646")
        lines = ["Configuring usage-queue-events queue", "Configuring exchange picard-build-signals"]
        if env.get("RABBITMQ_HOST"):
            check_rabbitmq(env, log, lines)
        else:
            for line in lines:
                log(f"INFO {line} on host rabbitmq")
    elif name == "workflows-conductor":
        lines = ["Configuring workflow-messages queue", "Configuring workflow-notifications queue"]
        if env.get("RABBITMQ_HOST"):
            check_rabbitmq(env, log, lines)
        else:
            for line in lines:
                log(f"INFO {line} on host rabbitmq")
    elif name == "context-service":
        if env.get("VAULT__URL"):
            check_vault(env, log)
        else:
            log("INFO circleci.backplane.secrets.backend.vault Successfully retrieved current auth token;")
    elif name == "domain-service":
        if env.get("REDIS_HOST"):
            check_redis(env, log)
        else:
            log("INFO domain-service.redis Reconnected to redis:6379")
    elif name == "picard-output-processor":
        if env.get("REDIS_HOST"):
            circlerc["OUTPUT_PROCESSOR_SIGNALS_REDIS"] = f"redis://{env['REDIS_HOST']}:{env.get('REDIS_PORT', '6379')}/10"
        else:
            circlerc["OUTPUT_PROCESSOR_SIGNALS_REDIS"] = "redis://redis:6379/10"
    elif name == "slanger":
        host, port = env.get("REDIS_HOST"), env.get("REDIS_PORT", "6379")
        circlerc["REDIS_PORT_6379_TCP_ADDR"] = host or "redis"
        circlerc["REDIS_PORT_6379_TCP_PORT"] = port if host else "6379"
        log(f"INFO slanger REDIS_PORT_6379_TCP_ADDR={circlerc['REDIS_PORT_6379_TCP_ADDR']} "
            f"REDIS_PORT_6379_TCP_PORT={circlerc['REDIS_PORT_6379_TCP_PORT']}")
    with open(os.path.join(d, "circlerc"), "w") as f:
        f.writelines(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(circlerc.items()))
    logf.close()


def boot(token):
    run = os.path.join(STATE, "containers")
    os.makedirs(run, exist_ok=True)
    for name in CONTAINERS:
        d = os.path.join(run, name)
        os.makedirs(d, exist_ok=True)
        try:
            boot_container(name, d)
        except Exception as e:  # noqa: BLE001 -- a container that crashes logs why
            with open(os.path.join(d, "log"), "a") as f:
                f.write(json.dumps({"t": time.time_ns(), "stream": "stderr",
                                    "line": f"FATAL {name} crashed: {type(e).__name__}: {e}"}) + "\n")
    open(os.path.join(STATE, f"boot-{token}.done"), "w").close()


# ------------------------------------------------------------------ docker

def running():
    app = load()
    return app["desired"] == "started" and current(app)[0] == "started"


def docker(args):
    if not args:
        refuse("docker")
    cmd, rest = args[0], args[1:]
    if cmd == "run":
        return temporary.run(STATE, refuse, rest, path)
    if cmd == "exec" and rest and temporary.exec_(STATE, refuse, rest) is not False:
        return
    refused = setting("rm_refused", [])
    if isinstance(refused, str):  # from the environment: names separated by commas
        refused = refused.split(",")
    if cmd == "rm" and [a for a in rest if a != "-f"] and \
            [a for a in rest if a != "-f"][0] in refused:
        # As the daemon answers when it cannot remove a container (a busy mount, a
        # removal already in progress): the container keeps running.
        name = [a for a in rest if a != "-f"][0]
        print(f"Error response from daemon: could not remove container {name}: device or resource busy",
              file=sys.stderr)
        sys.exit(1)
    if cmd == "rm" and temporary.rm(STATE, refuse, rest):
        return
    if cmd == "rm" and len([a for a in rest if a != "-f"]) == 1 \
            and [a for a in rest if a != "-f"][0] not in CONTAINERS:
        name = [a for a in rest if a != "-f"][0]
        print(f"Error: No such container: {name}", file=sys.stderr)
        sys.exit(1)
    if cmd == "ps":
        names = (list(CONTAINERS) if running() else []) + temporary.names(STATE)
        quiet, fmt, i = False, None, 0
        while i < len(rest):
            a = rest[i]
            if a == "-q":
                quiet = True
            elif a == "--filter" and i + 1 < len(rest) and rest[i + 1].startswith("name="):
                want = rest[i + 1][5:]
                names = [n for n in names if want in n]
                i += 1
            elif a == "--format" and i + 1 < len(rest) and rest[i + 1] == "{{.Names}}":
                fmt = "names"
                i += 1
            else:
                refuse("docker ps " + " ".join(rest))
            i += 1
        if quiet:
            print("\n".join(n for n in names))
        elif fmt == "names":
            print("\n".join(names))
        else:
            print("CONTAINER ID   IMAGE   STATUS   NAMES")
            for n in names:
                print(f"{n:<14} circleci/{n}   Up   {n}")
        return
    timestamps, since = False, None
    if cmd == "logs":
        while rest and rest[0].startswith("-"):
            if rest[0] in ("-t", "--timestamps"):
                timestamps, rest = True, rest[1:]
            elif rest[0] == "--since" and len(rest) > 1:
                try:
                    since = parse_rfc3339(rest[1])
                except ValueError:
                    refuse(f"docker logs --since {rest[1]} (only RFC 3339 UTC timestamps)")
                rest = rest[2:]
            else:
                refuse("docker logs " + " ".join(rest))
    if cmd == "inspect":
        fields = {"{{.State.StartedAt}}": "started_at", "{{.State.FinishedAt}}": "finished_at"}
        if len(rest) != 3 or rest[0] != "--format" or rest[1] not in fields:
            refuse("docker inspect " + " ".join(rest))
        name = rest[2]
        d = os.path.join(STATE, "containers", name)
        if name not in CONTAINERS or not running() or not os.path.isdir(d):
            print(f"Error: No such object: {name}", file=sys.stderr)
            sys.exit(1)
        f = os.path.join(d, fields[rest[1]])
        print(open(f).read() if os.path.exists(f) else "0001-01-01T00:00:00Z")
        return
    if cmd in ("logs", "exec"):
        if not rest or rest[0].startswith("-"):
            refuse(f"docker {cmd} " + " ".join(rest))
        name = rest[0]
        d = os.path.join(STATE, "containers", name)
        if name not in CONTAINERS or not running() or not os.path.isdir(d):
            print(f"Error: No such container: {name}", file=sys.stderr)
            sys.exit(1)
        if cmd == "logs":
            if len(rest) != 1:
                refuse("docker logs " + " ".join(rest))
            # Each stream on its own, as Docker replays them; --timestamps prefixes
            # each line with its time, --since leaves out what came before.
            for raw in open(os.path.join(d, "log")):
                try:
                    rec = json.loads(raw)
                except ValueError:  # a log from before records had streams
                    rec = {"t": 0, "stream": "stdout", "line": raw.rstrip("\n")}
                if since is not None and rec["t"] < since:
                    continue
                out = sys.stderr if rec["stream"] == "stderr" else sys.stdout
                out.write((rfc3339_nano(rec["t"]) + " " if timestamps else "") + rec["line"] + "\n")
                out.flush()
            return
        if rest[1:3] != ["bash", "-c"] or len(rest) != 4:
            refuse("docker exec " + " ".join(rest))
        script = rest[3].replace("/.circlerc", os.path.join(d, "circlerc"))
        r = subprocess.run(["bash", "-c", script], env={"PATH": "/usr/bin:/bin"}, timeout=30)
        sys.exit(r.returncode)
    refuse("docker " + " ".join(args))


def update_ca_certificates(args):
    """Debian's update-ca-certificates, confined to ROOT: ROOT/etc/ssl/certs/ca-certificates.crt
    becomes the system's CAs plus ROOT/usr/local/share/ca-certificates/*.crt."""
    if args not in ([], ["--fresh"]):
        refuse("update-ca-certificates " + " ".join(args))
    # Two resources may run it at once (Terraform applies in parallel): one at a time,
    # each writing the whole bundle from the directory as it then is.
    os.makedirs(STATE, exist_ok=True)
    lock = open(os.path.join(STATE, "update-ca-certificates.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    local = path("/usr/local/share/ca-certificates")
    crts = sorted(n for n in os.listdir(local) if n.endswith(".crt")) if os.path.isdir(local) else []
    out = path("/etc/ssl/certs/ca-certificates.crt")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    import ssl

    system = ssl.get_default_verify_paths().cafile
    parts = [open(system).read()] if system and os.path.exists(system) else []
    parts += [open(os.path.join(local, n)).read() for n in crts]
    listed = os.path.join(STATE, "local-cas.json")
    before = set(json.load(open(listed))) if os.path.exists(listed) else set()
    with open(out + ".tmp", "w") as f:
        f.write("\n".join(parts))
    os.replace(out + ".tmp", out)
    with open(listed, "w") as f:
        json.dump(crts, f)
    print("Updating certificates in /etc/ssl/certs...")
    print(f"{len(set(crts) - before)} added, {len(before - set(crts))} removed; done.")


def disk(tool, args):
    """coreutils' du and df, in the one form each the provider runs, over a path under
    ROOT (the machine's disks are this one's). Setting disk_avail (bytes) makes the
    export's volume that small, as a nearly full /data would be."""
    forms = {"du": ["-s", "-B1", "--"], "df": ["-B1", "--output=avail", "--"]}
    if args[:-1] != forms[tool] or not args or not os.path.realpath(args[-1]).startswith(
            os.path.realpath(path("/"))):
        refuse(f"{tool} " + " ".join(args))
    avail = setting("disk_avail", "")
    if tool == "df" and avail != "" and os.path.exists(args[-1]):
        print(f"    Avail\n{int(avail)}")
        return
    # The system's own, not this wrapper again (the session's PATH starts with it).
    r = subprocess.run([tool] + args, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    sys.exit(r.returncode)


def main():
    if len(sys.argv) < 2:
        refuse("no command")
    tool, args = sys.argv[1], sys.argv[2:]
    if tool == "replicatedctl":
        replicatedctl(args)
    elif tool == "docker":
        docker(args)
    elif tool == "update-ca-certificates":
        update_ca_certificates(args)
    elif tool in ("du", "df"):
        disk(tool, args)
    elif tool == "boot":
        boot(args[0])
    else:
        refuse(tool)


if __name__ == "__main__":
    main()
