#!/usr/bin/env python3
"""STAND-IN for the client tools of a `postgres:X` restore image, as the CircleCI
Services-machine simulator runs them in its temporary restore container
(dev/standins/circleci_sim_run.py): the host's PostgreSQL 15 `psql` and `pg_restore`, behind what
a client of release X does differently where the provider could be fooled. X comes
from CIRCLECI_SIM_TOOLS_VERSION (the image's tag).

  TOOL --version
      "TOOL (PostgreSQL) X", as the real tools print it
  TOOL ... -h HOST [-p PORT] [-U USER] [-d DB]   (X before 10)
      libpq before 10 knows no SCRAM-SHA-256: the server's first authentication
      request is read (after an SSLRequest when PGSSLMODE asks for TLS), and code 10
      (SASL) ends the tool as libpq does, "authentication method 10 not supported"
  pg_restore FILE   (X before 9.5)
      "unsupported version (1.12) in file header": older tools cannot read 9.5 dumps
Anything else: the real binary (exec) with the same arguments and environment.
"""

import os
import socket
import ssl
import struct
import sys

PG_BIN = os.environ.get("CIRCLECI_SIM_PG_BIN", "/usr/lib/postgresql/15/bin")


def release(v):
    parts = [int(p) for p in v.split(".") if p.isdigit()]
    return (parts[0], 0) if parts[0] >= 10 else (parts[0], parts[1] if len(parts) > 1 else 0)


def flag(args, short, long_, env):
    for i, a in enumerate(args):
        if a == short and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(long_ + "="):
            return a.split("=", 1)[1]
    return os.environ.get(env)


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise OSError("connection closed")
        b += c
    return b


def auth_code(host, port, user, db, sslmode):
    """The authentication method the server asks this login for (None: it asked for none)."""
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        if sslmode not in ("disable", "allow"):
            s.sendall(struct.pack("!ii", 8, 80877103))
            if recv_exact(s, 1) == b"S":
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                s = ctx.wrap_socket(s)
        params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
        s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        kind = recv_exact(s, 1)
        body = recv_exact(s, struct.unpack("!i", recv_exact(s, 4))[0] - 4)
        return struct.unpack("!i", body[:4])[0] if kind == b"R" else None
    finally:
        s.close()


def main():
    tool, args = sys.argv[1], sys.argv[2:]
    version = os.environ.get("CIRCLECI_SIM_TOOLS_VERSION", "15")
    if args == ["--version"]:
        print(f"{tool} (PostgreSQL) {version}")
        return 0
    rel = release(version)
    if tool == "pg_restore" and rel < (9, 5) and any(not a.startswith("-") for a in args):
        print("pg_restore: [archiver] unsupported version (1.12) in file header", file=sys.stderr)
        return 1
    host = flag(args, "-h", "--host", "PGHOST")
    if rel < (10, 0) and host and not host.startswith("/"):
        user = flag(args, "-U", "--username", "PGUSER") or "postgres"
        db = flag(args, "-d", "--dbname", "PGDATABASE") or user
        port = flag(args, "-p", "--port", "PGPORT") or "5432"
        try:
            code = auth_code(host, port, user, db, os.environ.get("PGSSLMODE", "prefer"))
        except OSError:
            code = None  # the real binary says why
        if code == 10:
            why = "authentication method 10 not supported"
            if tool == "psql":
                print(f"psql: {why}", file=sys.stderr)
                return 2
            print(f'{tool}: [archiver (db)] connection to database "{db}" failed: {why}', file=sys.stderr)
            return 1
    os.execv(os.path.join(PG_BIN, tool), [tool] + args)


if __name__ == "__main__":
    sys.exit(main())
