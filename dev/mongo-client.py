#!/usr/bin/env python3
"""Runs one MongoDB command with PyMongo, MongoDB's own Python driver, and prints the
reply as JSON. The tests use it to look at the MongoDB stand-ins independently of the
provider's client.

usage: mongo-client.py URI DB COMMAND_JSON
  exit 0: the reply on stdout
  exit 3: the server answered ok: 0 ({"code", "codeName", "errmsg"} on stdout)
  exit 4: no connection or authentication failed (the reason on stderr)
"""
import json
import sys

import pymongo
from bson import json_util
from pymongo.errors import OperationFailure, PyMongoError


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    uri, db, command = sys.argv[1:]
    cmd = json_util.loads(command)
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000)
    try:
        reply = client[db].command(cmd)
    except OperationFailure as e:
        details = e.details or {}
        print(json.dumps({"code": e.code, "codeName": details.get("codeName"), "errmsg": str(e)}))
        return 4 if e.code == 18 else 3
    except PyMongoError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 4
    finally:
        client.close()
    print(json_util.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
