#!/usr/bin/env python3
"""STAND-IN for PostgreSQL 9.5's `pg_dump`, as the CircleCI Services-machine simulator
runs it in the embedded PostgreSQL's temporary container (dev/standins/circleci_sim_run.py): the
host's PostgreSQL 15 `pg_dump`, then its custom-format archive rewritten as 9.5's
pg_dump writes one, where a restore could tell them apart.

  pg_dump ... -Fc ... -f FILE      (or --format=c / --format=custom, --file=FILE)
      The archive is rewritten as archive version 1.12, the 9.x format: no table access
      method field in the TOC, "9.5.8" as both version strings, and the entries 9.5
      writes for what initdb made, which 11 and later no longer write:
        SCHEMA - public            CREATE SCHEMA public;   (9.x pg_restore skipped it;
                                                             11 and later run it, and
                                                             it fails: it exists)
        COMMENT - SCHEMA public    COMMENT ON SCHEMA public IS 'standard public schema';
        EXTENSION - plpgsql        CREATE EXTENSION IF NOT EXISTS plpgsql WITH SCHEMA pg_catalog;
        COMMENT - EXTENSION plpgsql
        ACL - public               REVOKE/GRANT on schema public (last)
      Data blocks are copied unchanged (same compression) into a new file of the
      same mode, renamed over the old one; their offsets move by what the TOC grew.
      The copy is a cost a real 9.5 pg_dump does not have (about 0.6 s of kernel time
      per 700 MB here): `make bench` turns the rewrite off (CIRCLECI_SIM_PG95=0, the
      simulator's "pg95_archives": false), its archives are then 15's.
  pg_dump ... -f FILE                (any format)
      15 runs with --no-sync: 9.5 leaves what it writes to the page cache (10 brought
      the sync at the end, and --no-sync to skip it). Syncing a 626 MB archive took
      0.3 to 0.75 s more here, a wait a real Services machine's export never has.
  pg_dump ... --no-sync
      Refused, "unrecognized option '--no-sync'", as 9.5 refuses it.
Anything else (other formats, stdout): the real pg_dump as it is (exec). The real
9.5 dump differs in more than this (no `SET default_table_access_method`, older
`CREATE` syntax in places): those differences do not reach a 15 restore.

Archive layout (PostgreSQL's src/bin/pg_dump/pg_backup_archiver.c, WriteHead/WriteToc,
and pg_backup_custom.c, _WriteExtraToc): integers are a sign byte and intSize
little-endian bytes, strings an integer length (-1 for NULL) and the bytes, a data
offset a state byte (1 not set, 2 set, 3 no data) and offSize little-endian bytes.
"""

import os
import signal
import sys

PG_BIN = os.environ.get("CIRCLECI_SIM_PG_BIN", "/usr/lib/postgresql/15/bin")
VERSION = b"9.5.8"
NO_DATA, POS_SET = 3, 2
SECTION_NONE, SECTION_PRE_DATA = 1, 2


class Reader:
    def __init__(self, f):
        self.f = f
        self.int_size = 4
        self.off_size = 8

    def byte(self):
        b = self.f.read(1)
        if not b:
            raise ValueError("unexpected end of archive")
        return b[0]

    def int(self):
        sign = self.byte()
        v = int.from_bytes(self.f.read(self.int_size), "little")
        return -v if sign else v

    def str(self):
        n = self.int()
        return None if n < 0 else self.f.read(n)

    def offset(self):
        state = self.byte()
        return state, int.from_bytes(self.f.read(self.off_size), "little")


class Writer:
    def __init__(self, int_size, off_size):
        self.out = bytearray()
        self.int_size = int_size
        self.off_size = off_size

    def byte(self, v):
        self.out.append(v)

    def int(self, v):
        self.byte(1 if v < 0 else 0)
        self.out += abs(v).to_bytes(self.int_size, "little")

    def str(self, s):
        if s is None:
            self.int(-1)
        else:
            self.int(len(s))
            self.out += s

    def offset(self, state, v):
        self.byte(state)
        self.out += v.to_bytes(self.off_size, "little")


def read_archive_head(f):
    """The header and TOC of a custom-format archive of version 1.12 to 1.14."""
    r = Reader(f)
    if f.read(5) != b"PGDMP":
        raise ValueError("not a custom-format archive")
    vmaj, vmin, vrev = r.byte(), r.byte(), r.byte()
    if (vmaj, vmin) < (1, 12) or (vmaj, vmin) > (1, 14):
        raise ValueError(f"archive version {vmaj}.{vmin} is not one this stand-in rewrites")
    r.int_size, r.off_size = r.byte(), r.byte()
    fmt = r.byte()
    if fmt != 1:
        raise ValueError("not a custom-format archive")
    head = {"int_size": r.int_size, "off_size": r.off_size, "compression": r.int(),
            "time": [r.int() for _ in range(7)], "dbname": r.str()}
    r.str(), r.str()  # the server's and pg_dump's versions
    entries = []
    for _ in range(r.int()):
        e = {"id": r.int(), "had_dumper": r.int(), "tableoid": r.str(), "oid": r.str(),
             "tag": r.str(), "desc": r.str(), "section": r.int(), "defn": r.str(),
             "drop": r.str(), "copy": r.str(), "namespace": r.str(), "tablespace": r.str()}
        if (vmaj, vmin) >= (1, 14):
            r.str()  # the table access method: 12 and later
        e["owner"] = r.str()
        e["with_oids"] = r.str()
        deps = []
        while (d := r.str()) is not None:
            deps.append(d)
        e["deps"] = deps
        e["state"], e["pos"] = r.offset()
        entries.append(e)
    return head, entries, f.tell()


def entry(dump_id, catalog, tag, desc, section, defn, drop, owner, deps):
    return {"id": dump_id, "had_dumper": 0, "tableoid": catalog[0], "oid": catalog[1],
            "tag": tag, "desc": desc, "section": section, "defn": defn, "drop": drop,
            "copy": None, "namespace": None, "tablespace": None, "owner": owner,
            "with_oids": b"false", "deps": deps, "state": NO_DATA, "pos": 0}


def as_95(entries):
    """The TOC with what 9.5 writes for initdb's objects added (once), and without
    15's SEARCHPATH entry (9.5 has none: its pg_restore sets each entry's schema)."""
    entries = [e for e in entries if e["desc"] != b"SEARCHPATH"]
    have = {(e["desc"], e["tag"]) for e in entries}
    next_id = max([e["id"] for e in entries], default=0) + 1
    front, back = [], []

    def add(where, *args):
        nonlocal next_id
        e = entry(next_id, *args)
        next_id += 1
        where.append(e)
        return str(e["id"]).encode()

    schema = None
    for e in entries:
        if (e["desc"], e["tag"]) == (b"SCHEMA", b"public"):
            e["defn"], e["drop"] = b"CREATE SCHEMA public;\n", b"DROP SCHEMA public;\n"
            schema = str(e["id"]).encode()
    if schema is None:
        schema = add(front, (b"2615", b"2200"), b"public", b"SCHEMA", SECTION_PRE_DATA,
                     b"CREATE SCHEMA public;\n", b"DROP SCHEMA public;\n", b"postgres", [])
    if (b"COMMENT", b"SCHEMA public") not in have:
        add(front, (b"0", b"0"), b"SCHEMA public", b"COMMENT", SECTION_NONE,
            b"COMMENT ON SCHEMA public IS 'standard public schema';\n", b"", b"postgres", [schema])
    if (b"EXTENSION", b"plpgsql") not in have:
        ext = add(front, (b"3079", b"12390"), b"plpgsql", b"EXTENSION", SECTION_PRE_DATA,
                  b"CREATE EXTENSION IF NOT EXISTS plpgsql WITH SCHEMA pg_catalog;\n",
                  b"DROP EXTENSION plpgsql;\n", b"", [])
        add(front, (b"0", b"0"), b"EXTENSION plpgsql", b"COMMENT", SECTION_NONE,
            b"COMMENT ON EXTENSION plpgsql IS 'PL/pgSQL procedural language';\n", b"", b"", [ext])
    if not {(b"ACL", b"public"), (b"ACL", b"SCHEMA public")} & have:
        add(back, (b"0", b"0"), b"public", b"ACL", SECTION_NONE,
            b"REVOKE ALL ON SCHEMA public FROM PUBLIC;\nREVOKE ALL ON SCHEMA public FROM postgres;\n"
            b"GRANT ALL ON SCHEMA public TO postgres;\nGRANT ALL ON SCHEMA public TO PUBLIC;\n",
            b"", b"postgres", [schema])
    return front + entries + back


def write_head(head, entries, shift):
    """Header and TOC as 1.12, data offsets moved by `shift`."""
    w = Writer(head["int_size"], head["off_size"])
    w.out += b"PGDMP"
    for b in (1, 12, 0, head["int_size"], head["off_size"], 1):
        w.byte(b)
    w.int(head["compression"])
    for t in head["time"]:
        w.int(t)
    w.str(head["dbname"])
    w.str(VERSION)
    w.str(VERSION)
    w.int(len(entries))
    for e in entries:
        w.int(e["id"])
        w.int(e["had_dumper"])
        for k in ("tableoid", "oid", "tag", "desc"):
            w.str(e[k])
        w.int(e["section"])
        for k in ("defn", "drop", "copy", "namespace", "tablespace", "owner", "with_oids"):
            w.str(e[k])
        for d in e["deps"]:
            w.str(d)
        w.str(None)
        w.offset(e["state"], e["pos"] + shift if e["state"] == POS_SET else e["pos"])
    return bytes(w.out)


def copy_data(src, dst, pos, end):
    """Bytes pos..end of `src` appended to `dst`: by the kernel where it can, else read
    and written."""
    try:
        while pos < end:
            n = os.copy_file_range(src.fileno(), dst.fileno(), end - pos, pos)
            if n <= 0:
                break
            pos += n
    except OSError:
        pass  # no copy_file_range here (kernel, filesystem): the plain way below
    src.seek(pos)
    while pos < end:
        chunk = src.read(min(1 << 20, end - pos))
        if not chunk:
            raise OSError(f"the archive ended at byte {pos} of {end}")
        dst.write(chunk)
        pos += len(chunk)


def rewrite(path):
    """The archive at `path` rewritten: the new header and TOC, then the data, into a
    file of mode 0600 renamed over it (removed again if the rewrite is cut off)."""
    with open(path, "rb") as f:
        head, entries, data_at = read_archive_head(f)
        entries = as_95(entries)
        # The TOC's length does not depend on the offsets' values: measure, then write.
        shift = len(write_head(head, entries, 0)) - data_at
        tmp = path + ".pg95"
        if os.path.lexists(tmp):
            os.remove(tmp)  # left by a rewrite that was killed
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(write_head(head, entries, shift))
                out.flush()
                copy_data(f, out, data_at, os.fstat(f.fileno()).st_size)
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def formats_and_file(args):
    """The format and the output FILE ARGS ask for (None where they name none)."""
    fmt, out = None, None
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-F", "--format", "-f", "--file") and i + 1 < len(args):
            if a in ("-F", "--format"):
                fmt = args[i + 1]
            else:
                out = args[i + 1]
            i += 2
            continue
        if a.startswith("--format="):
            fmt = a.split("=", 1)[1]
        elif a.startswith("--file="):
            out = a.split("=", 1)[1]
        elif a.startswith("-F") and len(a) > 2:
            fmt = a[2:]
        elif a.startswith("-f") and len(a) > 2:
            out = a[2:]
        i += 1
    return fmt, out


def custom_file(args):
    """FILE when ARGS ask for a custom-format archive written to a file, else None."""
    fmt, out = formats_and_file(args)
    return out if fmt and fmt.lower() in ("c", "custom") and out else None


def main():
    args = sys.argv[1:]
    real = os.path.join(PG_BIN, "pg_dump")
    # 9.5 has no --no-sync (10 brought it, with the sync it turns off): it refuses it,
    # and leaves what it writes to the page cache, so 15 is told not to sync.
    if any(a == "--no-sync" for a in args):
        print("pg_dump: unrecognized option '--no-sync'\n"
              "Try \"pg_dump --help\" for more information.", file=sys.stderr)
        sys.exit(1)
    if formats_and_file(args)[1] is not None:
        args = ["--no-sync"] + args
    path = custom_file(args)
    if path is None or os.environ.get("CIRCLECI_SIM_PG95") == "0":
        os.execv(real, [real] + args)
    import subprocess
    r = subprocess.run([real] + args)
    if r.returncode != 0:
        sys.exit(r.returncode)
    # A stop (the provider's deadline, `docker rm -f`) ends the rewrite through its
    # clean-up: no half-written copy stays in the export.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(143))
    try:
        rewrite(path)
    except (OSError, ValueError) as e:
        print(f"pg_dump: error: could not write the 9.5 archive {path}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
