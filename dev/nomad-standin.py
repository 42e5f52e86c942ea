#!/usr/bin/env python3
"""A Nomad HTTP API STAND-IN, for tests only: no Nomad agent can be installed from the
package registries this project reaches. Written from Nomad's public HTTP API docs, it
implements just what circleci_external_nomad uses, and refuses everything else:

  GET /v1/status/leader  -> "127.0.0.1:4647" (a JSON string), or 500 "No cluster leader"
  GET /v1/status/peers   -> ["127.0.0.1:4647"], or [] without a leader
  GET /v1/agent/self     -> a minimal agent description
  GET /v1/nodes          -> with --nodes-dir D: one node stub per D/NAME.json, as the
                            nodes list of Nomad's HTTP API documents it (ID, Name,
                            Address, Status, ModifyIndex, ...). D/NAME.json is written by
                            dev/nomad-agent-standin.py, the systemctl/service stand-in on
                            the test client machines, each time it "restarts" the agent:
                            {"Name", "Address", "Restarts", "RestartedAt"}. A node is
                            "initializing" for REGISTER_SECONDS after a restart, then
                            "ready"; its ModifyIndex grows with each restart and again
                            when it becomes ready. A NAME.json with "Drain": true
                            lists the node draining.
  GET /v1/allocations    -> with --allocs-dir A: one allocation stub per A/ID.json, as
                            the allocations list documents it (ID, EvalID, Name, NodeID,
                            JobID, TaskGroup, DesiredStatus, ClientStatus, ...). A test
                            writes {"ID", "Name", "JobID", "NodeID", "EndsAt"}: the
                            allocation is "running" until EndsAt (seconds since the
                            epoch), then "complete", as a build that finishes.
  --app-state S          -> the EMBEDDED Nomad of the simulated Services machine: it runs
                            only while the simulator's app (S/app.json) is started, as
                            Replicated stops CircleCI's nomad container with the app.
                            Otherwise every connection is closed without an answer.
  X-Nomad-Token          -> checked when --token is given: 403 "Permission denied"
  anything else          -> 404; methods other than GET -> 405

Usage: nomad-standin.py --port N [--token T] [--no-leader] [--tls-cert F --tls-key F]
                        [--nodes-dir D] [--allocs-dir A] [--app-state S] [--pidfile F]
Binds 127.0.0.1 only.
"""

import argparse
import glob
import json
import os
import ssl
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LEADER = "127.0.0.1:4647"
REGISTER_SECONDS = 0.6


def node_stubs(nodes_dir):
    out = []
    for path in sorted(glob.glob(os.path.join(nodes_dir, "*.json"))):
        try:
            with open(path) as f:
                n = json.load(f)
        except (OSError, ValueError):
            continue  # being written
        ready = time.time() - n.get("RestartedAt", 0) >= REGISTER_SECONDS
        restarts = int(n.get("Restarts", 0))
        out.append({
            "ID": str(uuid.uuid5(uuid.NAMESPACE_DNS, n["Name"])),
            "Datacenter": "dc1",
            "Name": n["Name"],
            "NodeClass": "",
            "Address": n.get("Address", "127.0.0.1"),
            "Drain": bool(n.get("Drain", False)),
            "Status": "ready" if ready else "initializing",
            "StatusDescription": "",
            "Version": "0.5.6",
            "CreateIndex": 10,
            "ModifyIndex": 100 + 2 * restarts + (1 if ready else 0),
        })
    return out


def alloc_stubs(allocs_dir):
    out = []
    for path in sorted(glob.glob(os.path.join(allocs_dir, "*.json"))):
        try:
            with open(path) as f:
                a = json.load(f)
        except (OSError, ValueError):
            continue  # being written
        running = time.time() < float(a.get("EndsAt", 0))
        out.append({
            "ID": a["ID"],
            "EvalID": str(uuid.uuid5(uuid.NAMESPACE_URL, a["ID"])),
            "Name": a.get("Name", a["ID"]),
            "NodeID": a.get("NodeID", ""),
            "JobID": a.get("JobID", a["ID"]),
            "TaskGroup": "build",
            "DesiredStatus": "run",
            "DesiredDescription": "",
            "ClientStatus": "running" if running else "complete",
            "ClientDescription": "",
            "CreateIndex": 200,
            "ModifyIndex": 200 if running else 201,
        })
    return out


def app_started(state_dir):
    try:
        with open(os.path.join(state_dir, "app.json")) as f:
            return json.load(f).get("desired") == "started"
    except (OSError, ValueError):
        return False


def handler(args):
    class Handler(BaseHTTPRequestHandler):
        server_version = "nomad-standin"

        def log_message(self, fmt, *a):  # quiet: tests read stdout/stderr elsewhere
            pass

        def send(self, code, body, content_type="application/json"):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if code == 200:
                self.send_header("X-Nomad-Knownleader", "false" if args.no_leader else "true")
            self.end_headers()
            self.wfile.write(data)

        def authorized(self):
            if args.token is None:
                return True
            return self.headers.get("X-Nomad-Token") == args.token

        def do_GET(self):
            if args.app_state and not app_started(args.app_state):
                self.close_connection = True  # the container is not running
                return
            path = self.path.split("?", 1)[0]
            routes = {"/v1/status/leader", "/v1/status/peers", "/v1/agent/self"}
            if args.nodes_dir:
                routes.add("/v1/nodes")
            if args.allocs_dir:
                routes.add("/v1/allocations")
            if path not in routes:
                return self.send(404, "404 page not found\n", "text/plain")
            if not self.authorized():
                return self.send(403, "Permission denied\n", "text/plain")
            if path == "/v1/status/leader":
                if args.no_leader:
                    return self.send(500, "No cluster leader\n", "text/plain")
                return self.send(200, json.dumps(LEADER))
            if path == "/v1/nodes":
                return self.send(200, json.dumps(node_stubs(args.nodes_dir)))
            if path == "/v1/allocations":
                return self.send(200, json.dumps(alloc_stubs(args.allocs_dir)))
            if path == "/v1/status/peers":
                return self.send(200, json.dumps([] if args.no_leader else [LEADER]))
            return self.send(200, json.dumps({
                "config": {"Region": "global", "Datacenter": "dc1", "Version": {"Version": "0.5.6"}},
                "member": {"Name": "standin.global", "Addr": "127.0.0.1", "Port": 4648, "Status": "alive"},
                "stats": {},
            }))

        def refuse(self):
            self.send(405, "Method not allowed\n", "text/plain")

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = refuse

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token")
    p.add_argument("--no-leader", action="store_true")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--nodes-dir")
    p.add_argument("--allocs-dir")
    p.add_argument("--app-state")
    p.add_argument("--pidfile")
    args = p.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), handler(args))
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(str(os.getpid()))
    print(f"nomad stand-in listening on 127.0.0.1:{srv.server_address[1]}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
