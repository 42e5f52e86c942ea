"""Temporary containers for the CircleCI Services-machine simulator (dev/standins/circleci_sim.py):
what CircleCI's own export script (server-scripts, migrate/2.19-export.sh) starts over
the embedded data with the app stopped.

  docker run [--rm] --name N -d -v HOSTDIR:/var/lib/postgresql/data [-v HOSTDIR:/DIR ...] postgres:9.5.8
      -> the REAL PostgreSQL server installed here (15, not 9.5.8: a named gap) on that
         data directory, as user postgres, listening on a Unix socket only, without what
         9.5 does not have and would cost CPU here: parallel query and JIT
  docker exec [-i] N psql|pg_dump|pg_dumpall|pg_restore ARGS...
      -> the real client binaries against it (pg_dump behind dev/standins/pg95_dump_standin.py:
         its custom-format archives rewritten as 9.5 writes them, `CREATE SCHEMA public`
         and all, unless the "pg95_archives" setting is false); a container path under a mount in
         ARGS is mapped to the host directory (other mounts are made writable for the
         server's user, as root's would be in a container)
  docker exec [-i] N bash -c SCRIPT [ARG...]
      -> bash with PGHOST/PGPORT pointing at it and the PostgreSQL binaries on PATH
         (pg_dump: the same 9.5 stand-in)
  docker run [--rm] --name N -d -v HOSTDIR:/data/db [-v HOSTDIR:/DIR ...] mongo:3.6.6
      -> the MongoDB STAND-IN (dev/standins/mongo_standin) in 3.6 mode over that directory
         (--dbpath), without logins as the embedded MongoDB runs, on a free loopback port
  docker exec [-i] N mongodump|mongorestore|mongo ARGS...
      -> dev/standins/mongo_tools_standin.py: PyMongo stand-ins for those tools (see its header)
  docker exec [-i] N bash -c SCRIPT [ARG...]   (mongo:3.6.6)
      -> bash as root, the image's shell (the export's seal; a dump under umask 077),
         with the tool stand-ins on PATH as mongodump, mongorestore and mongo
  docker run [--rm] --name N -d [-v HOSTDIR:/DIR ...] postgres:X|mongo:X sleep infinity
      -> a restore container: nothing runs; X is the tag's release (or the "images"
         setting's, {"IMAGE": "postgres:X"}, for a tag that names none; any other image is
         "pull access denied")
  docker exec [-i] N psql|pg_restore ARGS... / bash -c SCRIPT [ARG...]   (postgres:X)
      -> dev/standins/pg_client_standin.py: the host's clients behind release X's differences
         (its --version; SCRAM refused before 10; 9.5 dumps refused before 9.5)
  docker exec [-i] N mongorestore ARGS... / bash -c SCRIPT [ARG...]   (mongo:X)
      -> the tool stand-ins as release X's tools (the legacy ones before 4.4)
A mount given as HOSTDIR:/DIR:ro is mounted as is (nothing here writes to it).
  docker rm -f N        -> as Docker's, everything `docker exec` runs in N killed first (SIGKILL to each
                           exec's process group); then pg_ctl stop -m fast (PostgreSQL), or the stand-in
                           killed (MongoDB) ("No such container", status 1, for an unknown N)
  docker ps             -> also lists these

Anything else (other images, other mounts, other options) is refused with status 64.
"""

import atexit
import glob
import json
import os
import signal
import shlex
import shutil
import tempfile
import subprocess
import sys
import time

PG_BIN = "/usr/lib/postgresql/15/bin"
PG_IMAGE = "postgres:9.5.8"
PG_MOUNT = "/var/lib/postgresql/data"
PG_TOOLS = ("psql", "pg_dump", "pg_dumpall", "pg_restore")
MONGO_IMAGE = "mongo:3.6.6"
MONGO_MOUNT = "/data/db"
MONGO_TOOLS = ("mongodump", "mongorestore", "mongo")
HERE = os.path.dirname(os.path.abspath(__file__))
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


def run(state, refuse, args, to_host):
    name, detach, mounts, image, rest = None, False, {}, None, list(args)
    read_only = set()
    while rest:
        a = rest.pop(0)
        if a == "--name" and rest:
            name = rest.pop(0)
        elif a == "-d":
            detach = True
        elif a == "--rm":
            pass
        elif a == "-v" and rest:
            spec = rest.pop(0)
            host_dir, _, inside = spec.partition(":")
            if inside.endswith(":ro"):
                inside = inside[:-3]  # read-only: the tools here only read such mounts
                read_only.add(inside)
            if not inside.startswith("/") or not host_dir.startswith("/") or ":" in inside:
                refuse("docker run -v " + spec)
            mounts[inside] = to_host(host_dir)
        elif not a.startswith("-") and image is None:
            image = a
            if rest == ["sleep", "infinity"] and name and detach:
                return _run_tools(state, name, image, mounts)
            if rest:
                refuse("docker run ... " + " ".join(rest))
        else:
            refuse("docker run " + " ".join(args))
    if image == MONGO_IMAGE and name and detach and MONGO_MOUNT in mounts:
        return _run_mongo(state, name, mounts)
    if image != PG_IMAGE or not name or not detach or PG_MOUNT not in mounts:
        refuse("docker run " + " ".join(args))
    host = mounts[PG_MOUNT]
    for inside, d in mounts.items():
        if inside in read_only:
            # As Docker's -v: a missing source is made, as an empty directory.
            os.makedirs(d, exist_ok=True) if not os.path.exists(d) else None
        elif inside != PG_MOUNT:
            os.makedirs(d, exist_ok=True)
            # The tools run as the server's user here, as root in a real container: that
            # user owns the mount, so it may write dumps there and chmod it, as root could.
            shutil.chown(d, "postgres", "postgres")
    if not os.path.isfile(os.path.join(host, "PG_VERSION")):
        print(f"docker: the simulator runs {PG_IMAGE} only over a data directory mounted at {PG_MOUNT} "
              f"({host} holds none)", file=sys.stderr)
        sys.exit(125)
    if _record(state, name):
        print(f'docker: Error response from daemon: Conflict. The container name "/{name}" is already in use.',
              file=sys.stderr)
        sys.exit(125)
    # A fresh socket directory per run: a lock file a crashed server left cannot block. It is
    # a short temporary path, not under the state directory: a Unix socket's path is limited
    # to 107 bytes, which a clone in a deep directory would pass (`docker rm` and
    # services-down remove it).
    sock = tempfile.mkdtemp(prefix="ccsim-pg-")
    os.chmod(sock, 0o777)
    log = os.path.join(_dir(state), f"{name}.log")
    open(log, "a").close()
    os.chmod(log, 0o666)
    # As 9.5 runs a query: one process, no plan compiled. Parallel query came in 9.6 and
    # JIT in 11; left on, 15 spreads the provider's checksum scans over workers that a
    # real 9.5 never starts (1.5 to 2.8 times the CPU here, on the cores the restore shares).
    r = _as_postgres([f"{PG_BIN}/pg_ctl", "-D", host, "-l", log, "-w", "-t", "60", "-o",
                      f"-c listen_addresses='' -k {sock} -p 5432 -c max_parallel_workers_per_gather=0 "
                      "-c max_parallel_maintenance_workers=0 -c jit=off", "start"],
                     capture_output=True, text=True)
    if r.returncode != 0:
        print(f"docker: the simulated {PG_IMAGE} did not start: {r.stdout}{r.stderr}", file=sys.stderr)
        sys.exit(125)
    json.dump({"image": image, "host": host, "mounts": mounts, "sock": sock, "started": time.time()},
              open(os.path.join(_dir(state), f"{name}.json"), "w"))
    print(f"{name}0123456789abcdef")


def _settings(state):
    try:
        with open(os.path.join(state, "settings.json")) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def _tools_of(state, image):
    """(family, release) of a restore image: its tag's, or, for one whose tag names no
    release, the image the "images" setting says it is ({"IMAGE": "postgres:9.6"})."""
    image = str(_settings(state).get("images", {}).get(image, image))
    repo, _, tag = image.rpartition(":")
    version = tag.split("-")[0]
    if "/" in tag or not version[:1].isdigit():
        return None, None
    return repo.rsplit("/", 1)[-1], version


def _run_tools(state, name, image, mounts):
    family, version = _tools_of(state, image)
    if family not in ("postgres", "mongo") or version is None:
        print(f"docker: Error response from daemon: pull access denied for {image}, repository does not exist "
              f"or may require 'docker login'", file=sys.stderr)
        sys.exit(125)
    if _record(state, name):
        print(f'docker: Error response from daemon: Conflict. The container name "/{name}" is already in use.',
              file=sys.stderr)
        sys.exit(125)
    for inside, d in mounts.items():
        if not os.path.exists(d):
            os.makedirs(d, exist_ok=True)
            if family == "postgres":
                shutil.chown(d, "postgres", "postgres")
    json.dump({"image": image, "tools": family, "version": version, "mounts": mounts, "started": time.time()},
              open(os.path.join(_dir(state), f"{name}.json"), "w"))
    print(f"{name}0123456789abcdef")


def _scripts_dir(state, name, scripts):
    """STATE's directory `name` (searchable by all) holding one executable shell
    script per tool name in `scripts` ({tool: text}), each rewritten only when its text
    changed (atomically: a tool may be running from it)."""
    d = os.path.join(_dir(state), name)
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    for tool, text in scripts.items():
        p = os.path.join(d, tool)
        if not os.path.exists(p) or open(p).read() != text:
            tmp = p + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o755)
            os.replace(tmp, p)
    return d


def _pg_client_bin(state):
    """A directory of psql and pg_restore: the client stand-in, by those names."""
    # The system's python3 (the standard library is all it needs): the tools run as
    # the server's user, who may not reach a virtualenv under the checkout.
    script = shlex.quote(os.path.join(HERE, "pg_client_standin.py"))
    return _scripts_dir(state, "pg-client-bin", {
        tool: f'#!/bin/sh\nexec /usr/bin/python3 {script} {tool} "$@"\n' for tool in ("psql", "pg_restore")})


def _pg95_bin(state):
    """A directory of pg_dump: 9.5's stand-in (dev/standins/pg95_dump_standin.py), by that name."""
    script = shlex.quote(os.path.join(HERE, "pg95_dump_standin.py"))
    return _scripts_dir(state, "pg95-bin", {"pg_dump": f'#!/bin/sh\nexec /usr/bin/python3 {script} "$@"\n'})


def _exec_tools(state, refuse, rec, args, tool, targs):
    def mapped(a):
        for inside, d in sorted(rec["mounts"].items(), key=lambda m: -len(m[0])):
            a = a.replace(inside, d)
        return a
    targs = [mapped(a) for a in targs]
    if rec["tools"] == "postgres":
        env = {"PATH": f"{_pg_client_bin(state)}:{PG_BIN}:/usr/bin:/bin", "HOME": "/tmp",
               "CIRCLECI_SIM_TOOLS_VERSION": rec["version"], "CIRCLECI_SIM_PG_BIN": PG_BIN}
        if tool in ("psql", "pg_restore"):
            r = _as_postgres([os.path.join(_pg_client_bin(state), tool)] + targs, env=env)
        elif tool == "bash" and targs[:1] == ["-c"] and len(targs) >= 2:
            r = _as_postgres(["bash"] + targs, env=env)
        else:
            refuse("docker exec " + " ".join(args))
        sys.exit(r.returncode)
    env = dict(os.environ, CIRCLECI_SIM_TOOLS_VERSION=rec["version"])
    if tool == "bash" and targs[:1] == ["-c"] and len(targs) >= 2:
        env["PATH"] = _mongo_tools_bin(state) + ":" + env.get("PATH", "/usr/bin:/bin")
        sys.exit(subprocess.run(["bash"] + targs, env=env).returncode)
    if tool not in MONGO_TOOLS:
        refuse("docker exec " + " ".join(args))
    sys.exit(subprocess.run([sys.executable, os.path.join(HERE, "mongo_tools_standin.py"), tool] + targs,
                            env=env).returncode)


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_mongo(state, name, mounts):
    if _record(state, name):
        print(f'docker: Error response from daemon: Conflict. The container name "/{name}" is already in use.',
              file=sys.stderr)
        sys.exit(125)
    standin = os.environ.get("CIRCLECI_SIM_MONGO_STANDIN", "")
    if not os.access(standin, os.X_OK):
        print(f"docker: the simulator needs the MongoDB stand-in (CIRCLECI_SIM_MONGO_STANDIN={standin!r})",
              file=sys.stderr)
        sys.exit(125)
    for d in mounts.values():
        os.makedirs(d, exist_ok=True)
    port = _free_port()
    log = open(os.path.join(_dir(state), f"{name}.log"), "a")
    p = subprocess.Popen([standin, "--port", str(port), "--mode", "3.6", "--noauth", "--dbpath",
                          mounts[MONGO_MOUNT]], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    import socket
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    json.dump({"image": MONGO_IMAGE, "pid": p.pid, "port": port, "mounts": mounts, "started": time.time()},
              open(os.path.join(_dir(state), f"{name}.json"), "w"))
    print(f"{name}0123456789abcdef")


def _mongo_tools_bin(state):
    """A directory of mongodump, mongorestore and mongo: the stand-ins, by those names."""
    script = shlex.quote(os.path.join(HERE, "mongo_tools_standin.py"))
    return _scripts_dir(state, "mongo-bin", {
        tool: f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {script} {tool} "$@"\n' for tool in MONGO_TOOLS})


def _track(state, name):
    """This exec's process group, noted for `docker rm -f` (Docker kills what runs in a
    container it removes: a restore cut off by the provider's deadline must not commit
    later); the note goes when the exec ends."""
    try:
        os.setpgrp()
    except OSError:
        pass  # a session leader already leads its own group
    mark = os.path.join(_dir(state), f"{name}.exec.{os.getpgrp()}")
    open(mark, "w").close()
    atexit.register(lambda: os.path.exists(mark) and os.remove(mark))


def _kill_execs(state, name):
    for mark in glob.glob(os.path.join(_dir(state), f"{glob.escape(name)}.exec.*")):
        pgid = int(mark.rsplit(".", 1)[1])
        try:
            # Only if that group still runs this container's exec (not a reused id): its
            # leader leads the group and has `exec` and exactly this name among its words.
            with open(f"/proc/{pgid}/cmdline", "rb") as f:
                words = f.read().split(b"\0")
            with open(f"/proc/{pgid}/stat") as f:
                group = int(f.read().rsplit(")", 1)[1].split()[2])
            if group == pgid != os.getpgrp() and b"exec" in words and name.encode() in words:
                os.killpg(pgid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
        try:
            os.remove(mark)
        except FileNotFoundError:
            pass


def exec_(state, refuse, args):
    rest = [a for a in args if a != "-i"]
    if not rest:
        refuse("docker exec")
    rec = _record(state, rest[0])
    if rec is None:
        return False
    if "-i" not in args[:args.index(rest[0])]:
        # As Docker: without -i the exec's standard input is not attached (it reads
        # end of file at once), whatever the caller's stdin holds.
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    _track(state, rest[0])
    tool, targs = rest[1] if len(rest) > 1 else "", rest[2:]
    if rec.get("tools"):
        return _exec_tools(state, refuse, rec, args, tool, targs)
    if rec.get("image") == MONGO_IMAGE:
        def map_mongo(a):
            for inside, d in sorted(rec["mounts"].items(), key=lambda m: -len(m[0])):
                a = a.replace(inside, d)
            return a
        env = dict(os.environ, CIRCLECI_SIM_MONGO_PORT=str(rec["port"]), CIRCLECI_SIM_TOOLS_VERSION="3.6.6")
        if tool == "bash" and targs[:1] == ["-c"] and len(targs) >= 2:
            # The image's shell, as root (the export's seal): the script as given, its
            # arguments with the container's paths mapped to the mounts, and the image's
            # tools (their stand-ins) on PATH.
            env["PATH"] = _mongo_tools_bin(state) + ":" + env.get("PATH", "/usr/bin:/bin")
            r = subprocess.run(["bash", "-c", targs[1]] + [map_mongo(a) for a in targs[2:]], env=env)
            sys.exit(r.returncode)
        if tool not in MONGO_TOOLS:
            refuse("docker exec " + " ".join(args))
        r = subprocess.run([sys.executable, os.path.join(HERE, "mongo_tools_standin.py"), tool]
                           + [map_mongo(a) for a in targs], env=env)
        sys.exit(r.returncode)
    env = {"PATH": f"{_pg95_bin(state)}:{PG_BIN}:/usr/bin:/bin", "PGHOST": rec["sock"], "PGPORT": "5432",
           "HOME": "/tmp", "CIRCLECI_SIM_PG_BIN": PG_BIN,
           "CIRCLECI_SIM_PG95": "0" if _settings(state).get("pg95_archives") is False else "1"}
    def map_paths(a):
        for inside, d in sorted(rec.get("mounts", {PG_MOUNT: rec["host"]}).items(), key=lambda m: -len(m[0])):
            a = a.replace(inside, d)
        return a
    mapped = [map_paths(a) for a in targs]
    if tool == "pg_dump":
        r = _as_postgres([os.path.join(_pg95_bin(state), tool)] + mapped, env=env)
    elif tool in PG_TOOLS:
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
    _kill_execs(state, rest[0])
    if rec.get("tools"):
        os.remove(os.path.join(_dir(state), f"{rest[0]}.json"))
        print(rest[0])
        return True
    if rec.get("image") == MONGO_IMAGE:
        try:
            os.kill(rec["pid"], 9)
        except ProcessLookupError:
            pass
        os.remove(os.path.join(_dir(state), f"{rest[0]}.json"))
        print(rest[0])
        return True
    _as_postgres([f"{PG_BIN}/pg_ctl", "-D", rec["host"], "-m", "fast", "-w", "stop"], capture_output=True)
    shutil.rmtree(rec["sock"], ignore_errors=True)
    os.remove(os.path.join(_dir(state), f"{rest[0]}.json"))
    print(rest[0])
    return True
