#!/usr/bin/env python3
"""STAND-INS for MongoDB's mongodump, mongorestore and mongo shell, as the CircleCI
Services-machine simulator runs them in its temporary `mongo:3.6.6` container
(dev/standins/circleci_sim_run.py). Not MongoDB's tools: small PyMongo programs written from
their documentation, for the options the data migration uses; anything else is refused
with status 64.

  mongodump [--host H] [--port P] --db D --out DIR
      every collection of D as DIR/D/C.bson (the documents' BSON one after another,
      byte for byte as the server sent them) and DIR/D/C.metadata.json
      ({"options": {...}, "indexes": [...]}), as mongodump lays them out; a view
      as its metadata alone (options viewOn and pipeline), as mongodump does
      without --viewsAsCollections
  mongorestore [--host H] [--port P] [--username U --authenticationDatabase A]
               [--ssl [--sslCAFile F]] [--drop] --db D DIR
      DIR's collections into D (capped ones created capped, indexes from the
      metadata), then its views; with a username and no
      --password, the password is read from standard input up to the first newline,
      as mongo-tools do when standard input is not a terminal
  mongo --quiet --norc [--host H] [--port P] D --eval SCRIPT
      only the data migration's own SCRIPT (STATS_SCRIPT below): one line per
      collection, `kind<TAB>name<TAB>count<TAB>checksum` (the dbHash md5; nothing
      for a capped collection; a view's viewOn)

  TOOL --version
      "TOOL version: rX" for the tools of release X before 4.4 (the legacy tools),
      "TOOL version: 100.9.4" from 4.4 (the Database Tools); X is
      CIRCLECI_SIM_TOOLS_VERSION (the image's tag)

The legacy tools (before 4.4) against a server of wire version 14 or later (MongoDB
5.1, which removed the legacy opcodes) fail as the server answers them: "Unsupported
OP_QUERY command". --host is HOST[:PORT] or [SET/]HOST:PORT,HOST:PORT as the tools take it. The host
defaults to the container's own server (localhost:27017 inside a real
container: here the stand-in's port, from CIRCLECI_SIM_MONGO_PORT).
"""

import json
import os
import sys

import pymongo
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

STATS_SCRIPT = ("var h = db.runCommand({dbHash: 1}); "
                "db.getCollectionInfos().forEach(function (i) { "
                "var v = i.type === 'view', k = v ? 'view' : (i.options && i.options.capped ? 'capped' : 'collection'); "
                "print(k + '\\t' + i.name + '\\t' + db.getCollection(i.name).count() + '\\t' + "
                "(v ? i.options.viewOn : (k === 'capped' ? '' : (h.collections[i.name] || '')))); });")


def release():
    v = os.environ.get("CIRCLECI_SIM_TOOLS_VERSION", "3.6.6")
    return tuple(int(p) for p in v.split(".")[:2] if p.isdigit()) + (0,)


def legacy():
    return release()[:2] < (4, 4)


def refuse(what):
    print(f"mongo-tools stand-in: {what}: not implemented by the stand-in", file=sys.stderr)
    sys.exit(64)


def options(args, flags, valued):
    """(options, positional) from `args`; anything unknown is refused."""
    opts, pos, i = {}, [], 0
    while i < len(args):
        a = args[i]
        if a in flags:
            opts[a] = True
        elif a in valued and i + 1 < len(args):
            opts[a] = args[i + 1]
            i += 1
        elif "=" in a and a.split("=", 1)[0] in valued:
            k, v = a.split("=", 1)
            opts[k] = v
        elif a.startswith("-"):
            refuse(a)
        else:
            pos.append(a)
        i += 1
    return opts, pos


def client(opts, password=None):
    """--host as the tools take it: HOST[:PORT], or [SET/]HOST:PORT,HOST:PORT,..."""
    spec = opts.get("--host", "127.0.0.1")
    rs, _, seeds = spec.rpartition("/")
    port = opts.get("--port", os.environ.get("CIRCLECI_SIM_MONGO_PORT", "27017"))
    hosts = [h if ":" in h else f"{h}:{port}" for h in seeds.split(",")]
    kw = {"serverSelectionTimeoutMS": 10000}
    if rs:
        kw["replicaSet"] = rs
    elif len(hosts) == 1:
        kw["directConnection"] = True
    if "--username" in opts:
        kw.update(username=opts["--username"], password=password,
                  authSource=opts.get("--authenticationDatabase", "admin"))
    if "--ssl" in opts:
        kw["tls"] = True
        if "--sslCAFile" in opts:
            kw["tlsCAFile"] = opts["--sslCAFile"]
    return pymongo.MongoClient(hosts, **kw)


def mongodump(args):
    opts, pos = options(args, set(), {"--host", "--port", "--db", "--out"})
    if pos or "--db" not in opts or "--out" not in opts:
        refuse("mongodump " + " ".join(args))
    c = client(opts)
    db = c.get_database(opts["--db"], codec_options=CodecOptions(document_class=RawBSONDocument))
    out = os.path.join(opts["--out"], opts["--db"])
    os.makedirs(out, exist_ok=True)
    for info in sorted(db.list_collections(), key=lambda i: i["name"]):
        name, copts = info["name"], dict(info.get("options", {}))
        if info.get("type") == "view":
            with open(os.path.join(out, f"{name}.metadata.json"), "w") as f:
                json.dump({"options": json.loads(json.dumps(copts, default=str)), "indexes": []}, f)
            print(f"done dumping {opts['--db']}.{name} (view)", file=sys.stderr)
            continue
        n = 0
        with open(os.path.join(out, f"{name}.bson"), "wb") as f:
            for d in db[name].find({}, batch_size=1000):
                f.write(d.raw)
                n += 1
        indexes = [json.loads(json.dumps(dict(i), default=str)) for i in c[opts["--db"]][name].list_indexes()]
        with open(os.path.join(out, f"{name}.metadata.json"), "w") as f:
            json.dump({"options": json.loads(json.dumps(copts, default=str)), "indexes": indexes}, f)
        print(f"done dumping {opts['--db']}.{name} ({n} documents)", file=sys.stderr)


def read_password():
    """Up to the first newline of standard input, as mongo-tools read it off a pipe."""
    print("Enter password:", file=sys.stderr)
    raw = sys.stdin.buffer.readline()
    return raw.rstrip(b"\r\n").decode()


def mongorestore(args):
    opts, pos = options(args, {"--ssl", "--drop"},
                        {"--host", "--port", "--username", "--authenticationDatabase", "--sslCAFile", "--db"})
    if len(pos) != 1 or "--db" not in opts or "--password" in opts:
        refuse("mongorestore " + " ".join(a for a in args))
    password = read_password() if "--username" in opts else None
    c = client(opts, password)
    if legacy() and c.admin.command("isMaster").get("maxWireVersion", 0) >= 14:
        print(f"Failed: {opts['--db']}: error running create command: Unsupported OP_QUERY command: insert. "
              "The client driver may require an upgrade. For more details see "
              "https://dochub.mongodb.org/core/legacy-opcode-removal", file=sys.stderr)
        sys.exit(1)
    db = c.get_database(opts["--db"])
    src = pos[0]
    total = 0
    views = []
    for f in sorted(os.listdir(src)):
        if f.endswith(".metadata.json") and not os.path.exists(os.path.join(src, f[:-14] + ".bson")):
            views.append(f[:-14])
    for f in sorted(os.listdir(src)):
        if not f.endswith(".bson"):
            continue
        name = f[:-5]
        if "--drop" in opts:
            db.drop_collection(name)
        meta = os.path.join(src, f"{name}.metadata.json")
        copts = json.load(open(meta)).get("options", {}) if os.path.exists(meta) else {}
        if copts.get("capped"):
            db.create_collection(name, capped=True, size=copts["size"],
                                 **({"max": copts["max"]} if "max" in copts else {}))
        elif copts:
            refuse(f"collection options {sorted(copts)}")
        with open(os.path.join(src, f), "rb") as fh:
            data = fh.read()
        docs, at = [], 0
        while at + 4 <= len(data):
            size = int.from_bytes(data[at:at + 4], "little")
            docs.append(RawBSONDocument(data[at:at + size]))
            at += size
        for i in range(0, len(docs), 1000):
            db[name].insert_many(docs[i:i + 1000], ordered=True)
        total += len(docs)
        meta = os.path.join(src, f"{name}.metadata.json")
        if os.path.exists(meta):
            for ix in json.load(open(meta)).get("indexes", []):
                if ix.get("name") != "_id_":
                    db[name].create_index(list(ix["key"].items()), name=ix["name"])
        print(f"restored {opts['--db']}.{name} ({len(docs)} documents)", file=sys.stderr)
    for name in views:
        if "--drop" in opts:
            db.drop_collection(name)
        vopts = json.load(open(os.path.join(src, f"{name}.metadata.json")))["options"]
        if "viewOn" not in vopts:
            refuse(f"metadata of {name} without documents or viewOn")
        db.command({"create": name, "viewOn": vopts["viewOn"], "pipeline": vopts.get("pipeline", [])})
        print(f"restored view {opts['--db']}.{name}", file=sys.stderr)
    print(f"{total} document(s) restored successfully. 0 document(s) failed to restore.", file=sys.stderr)


def mongo(args):
    opts, pos = options(args, {"--quiet", "--norc"}, {"--host", "--port", "--eval"})
    if len(pos) != 1 or opts.get("--eval") != STATS_SCRIPT:
        refuse("mongo " + " ".join(args)[:200])
    db = client(opts)[pos[0]]
    h = db.command("dbHash")["collections"]
    for info in db.list_collections():
        name, copts = info["name"], info.get("options", {})
        kind = "view" if info.get("type") == "view" else "capped" if copts.get("capped") else "collection"
        n = db.command("count", name)["n"]
        sum_ = copts["viewOn"] if kind == "view" else "" if kind == "capped" else h.get(name, "")
        print(f"{kind}\t{name}\t{n}\t{sum_}")


def main():
    if len(sys.argv) < 2:
        refuse("no tool")
    tool, args = sys.argv[1], sys.argv[2:]
    if args == ["--version"]:
        v = os.environ.get("CIRCLECI_SIM_TOOLS_VERSION", "3.6.6")
        print(f"{tool} version: " + (f"r{v}" if legacy() else "100.9.4"))
        print("git version: stand-in")
        return
    {"mongodump": mongodump, "mongorestore": mongorestore, "mongo": mongo}.get(
        tool, lambda a: refuse(tool))(args)


if __name__ == "__main__":
    main()
