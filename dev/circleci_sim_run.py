"""Temporary containers for the CircleCI Services-machine simulator (dev/circleci-sim.py):
what CircleCI's own export script (server-scripts, migrate/2.19-export.sh) starts over
the embedded data with the app stopped.

  docker run [--rm] --name N -d -v HOSTDIR:/var/lib/postgresql/data postgres:9.5.8
      -> the REAL PostgreSQL server installed here (15, not 9.5.8: a named gap) on that
         data directory, as user postgres, listening on a Unix socket only
  docker exec [-i] N psql|pg_dump|pg_dumpall|pg_restore ARGS...
      -> the real client binaries against it; a container path under
         /var/lib/postgresql/data in ARGS is mapped to the host directory
  docker exec [-i] N bash -c SCRIPT [ARG...]
      -> bash with PGHOST/PGPORT pointing at it and the PostgreSQL binaries on PATH
  docker rm -f N        -> pg_ctl stop -m fast
  docker ps             -> also lists these

Anything else (other images, other mounts, other options) is refused with status 64.
"""

import json
import os
import shutil
import subprocess
import sys
import time

PG_BIN = "/usr/lib/postgresql/15/bin"
PG_IMAGE = "postgres:9.5.8"
PG_MOUNT = "/var/lib/postgresql/data"
PG_TOOLS = ("psql", "pg_dump", "pg_dumpall", "pg_restore")
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"


def _dir(state):
    d = os.path.join(state, "run")
    os.makedirs(d, exist_ok=True)
    return d


def _record(state, name):
    p = os.path.join(_dir(state), f"{name}.json")
    return json.load(open(p)) if os.path.exists(p) else None


def names(state):
    return sorted(n[:-5] for n in os.listdir(_dir(state)) if n.endswith(".json"))


def _as_postgres(argv, env=None, **kw):
    return subprocess.run([RUNUSER, "-u", "postgres", "--"] + argv, env=env, cwd="/tmp", **kw)


def run(state, refuse, args):
    name, detach, volume, image, rest = None, False, None, None, list(args)
    while rest:
        a = rest.pop(0)
        if a == "--name" and rest:
            name = rest.pop(0)
        elif a == "-d":
            detach = True
        elif a == "--rm":
            pass
        elif a == "-v" and rest:
            volume = rest.pop(0)
        elif not a.startswith("-") and image is None:
            image = a
            if rest:
                refuse("docker run ... " + " ".join(rest))
        else:
            refuse("docker run " + " ".join(args))
    if image != PG_IMAGE or not name or not detach or not volume:
        refuse("docker run " + " ".join(args))
    host, _, inside = volume.partition(":")
    if inside != PG_MOUNT or not os.path.isfile(os.path.join(host, "PG_VERSION")):
        print(f"docker: the simulator runs {PG_IMAGE} only over a data directory mounted at {PG_MOUNT} "
              f"({host} holds none)", file=sys.stderr)
        sys.exit(125)
    if _record(state, name):
        print(f'docker: Error response from daemon: Conflict. The container name "/{name}" is already in use.',
              file=sys.stderr)
        sys.exit(125)
    sock = os.path.join(_dir(state), f"{name}.sock")
    os.makedirs(sock, exist_ok=True)
    os.chmod(sock, 0o777)
    log = os.path.join(_dir(state), f"{name}.log")
    open(log, "a").close()
    os.chmod(log, 0o666)
    r = _as_postgres([f"{PG_BIN}/pg_ctl", "-D", host, "-l", log, "-w", "-t", "60", "-o",
                      f"-c listen_addresses='' -k {sock} -p 5432", "start"], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"docker: the simulated {PG_IMAGE} did not start: {r.stdout}{r.stderr}", file=sys.stderr)
        sys.exit(125)
    json.dump({"image": image, "host": host, "sock": sock, "started": time.time()},
              open(os.path.join(_dir(state), f"{name}.json"), "w"))
    print(f"{name}0123456789abcdef")


def exec_(state, refuse, args):
    rest = [a for a in args if a != "-i"]
    if not rest:
        refuse("docker exec")
    rec = _record(state, rest[0])
    if rec is None:
        return False
    tool, targs = rest[1] if len(rest) > 1 else "", rest[2:]
    env = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "PGHOST": rec["sock"], "PGPORT": "5432", "HOME": "/tmp"}
    mapped = [a.replace(PG_MOUNT, rec["host"]) for a in targs]
    if tool in PG_TOOLS:
        r = _as_postgres([f"{PG_BIN}/{tool}"] + mapped, env=env)
    elif tool == "bash" and targs[:1] == ["-c"] and len(targs) >= 2:
        r = _as_postgres(["bash", "-c", mapped[1]] + mapped[2:], env=env)
    else:
        refuse("docker exec " + " ".join(args))
    sys.exit(r.returncode)


def rm(state, refuse, args):
    rest = [a for a in args if a != "-f"]
    if len(rest) != 1:
        refuse("docker rm " + " ".join(args))
    rec = _record(state, rest[0])
    if rec is None:
        return False
    _as_postgres([f"{PG_BIN}/pg_ctl", "-D", rec["host"], "-m", "fast", "-w", "stop"], capture_output=True)
    os.remove(os.path.join(_dir(state), f"{rest[0]}.json"))
    print(rest[0])
    return True
