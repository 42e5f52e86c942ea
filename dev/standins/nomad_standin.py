#!/usr/bin/env python3
"""A Nomad HTTP API STAND-IN, for tests only: no Nomad agent can be installed from the
package registries this project reaches. Written from Nomad's public HTTP API docs, it
implements just what circleci_external_nomad uses, and refuses everything else:

  GET /v1/status/leader  -> the first of --peers (a JSON string), or 500 "No cluster leader"
  GET /v1/status/peers   -> --peers (default ["127.0.0.1:4647"]), or [] without a leader
  GET /v1/agent/self     -> a minimal agent description; config.Version is --version
                            (default 0.5.6): a string before 0.7, {"Version": ...} after,
                            as the agent's own changed in 0.7
  GET /v1/nodes          -> with --nodes-dir D: one node stub per D/NAME.json, as the
                            nodes list of Nomad's HTTP API documents it (ID, Name,
                            Address, Status, ModifyIndex, ...). D/NAME.json is written by
                            dev/standins/nomad_agent_standin.py, the systemctl/service stand-in on
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
  GET /v1/node/ID/allocations -> the allocations on that node (an allocation file's
                            NodeID may name the node instead of giving its ID)
  GET /v1/node/ID        -> that node as the node API documents it: the stub's fields
                            and HTTPAddr, Datacenter and Attributes (kernel.name,
                            unique.network.ip-address, and whatever NAME.json's
                            "Attributes" adds, e.g. unique.platform.aws.instance-id as
                            Nomad's AWS fingerprint reports it)
  Drains, with --nodes-dir and --allocs-dir, by the version's API:
    before 0.8: POST /v1/node/ID/drain?enable=true|false. Enabling stops the node's
                running allocations AT ONCE (Nomad migrates them): each is "complete"
                from then on, with DesiredStatus "stop", and one line goes to
                A/stopped-by-drain.log. The node lists "Drain": true until disabled.
                (NAME.json keeps "DrainedAt", when the last drain was enabled, for tests.)
    0.8 on:     POST /v1/node/ID/drain {"DrainSpec": {"Deadline": NS, ...} | null,
                "MarkEligible": bool} and POST /v1/node/ID/eligibility {"Eligibility":
                "eligible"|"ineligible"}. A drain makes the node ineligible; its
                allocations run on until they end or the deadline passes (then they are
                stopped, and logged as above; a Deadline of 0 is none, below 0 is now);
                once none runs the drain is complete ("Drain": false, a new
                ModifyIndex) and the node stays ineligible until made eligible, which
                is refused while it drains.
                Before 0.8 the eligibility endpoint does not exist (404).
  --app-state S          -> the EMBEDDED Nomad of the simulated Services machine: it runs
                            only while the simulator's app (S/app.json) is started, as
                            Replicated stops CircleCI's nomad container with the app.
                            Otherwise every connection is closed without an answer.
  X-Nomad-Token          -> checked when --token is given: 403 "Permission denied"
  anything else          -> 404; methods other than GET and those POSTs -> 405

Usage: nomad_standin.py --port N [--token T] [--no-leader] [--tls-cert F --tls-key F]
                        [--nodes-dir D] [--allocs-dir A] [--app-state S] [--pidfile F]
                        [--peers A:P,B:P] [--version V]
Binds 127.0.0.1 only.
"""

import argparse
import glob
import json
import os
import ssl
import sys
import time
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LEADER = "127.0.0.1:4647"  # the default --peers
REGISTER_SECONDS = 0.6


LOCK = threading.Lock()


def version_tuple(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def node_id(name):
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, name))


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # missing, or being written


def write_json(path, value):
    tmp = path + ".standin.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def node_files(nodes_dir):
    for path in sorted(glob.glob(os.path.join(nodes_dir, "*.json"))):
        n = read_json(path)
        if n is not None:
            yield path, n


def alloc_files(allocs_dir):
    for path in sorted(glob.glob(os.path.join(allocs_dir, "*.json"))):
        a = read_json(path)
        if a is not None:
            yield path, a


def alloc_running(a, nodes):
    """Whether allocation a runs now: until its EndsAt, unless a drain stopped it (at
    once before 0.8; at the drain's deadline from 0.8 on)."""
    if a.get("StoppedByDrain"):
        return False
    node = nodes.get(a.get("NodeID", ""))
    deadline = node.get("DrainDeadline") if node else None
    now = time.time()
    return now < float(a.get("EndsAt", 0)) and (deadline is None or now < deadline)


def nodes_by_key(nodes_dir):
    """Each node's JSON by its ID and by its name, with its path."""
    out = {}
    if not nodes_dir:
        return out
    for path, n in node_files(nodes_dir):
        n = dict(n, _path=path)
        out[node_id(n["Name"])] = n
        out[n["Name"]] = n
    return out


def settle(args):
    """Applies what time did: allocations a 0.8 drain's deadline stopped are logged, and
    a 0.8 drain with nothing left running is complete (Drain false, its own change of
    the node's ModifyIndex; the node stays ineligible)."""
    if not (args.nodes_dir and args.allocs_dir) or version_tuple(args.version) < (0, 8):
        return
    with LOCK:
        nodes = nodes_by_key(args.nodes_dir)
        for path, a in alloc_files(args.allocs_dir):
            node = nodes.get(a.get("NodeID", ""))
            deadline = node.get("DrainDeadline") if node else None
            if (deadline is not None and not a.get("StoppedByDrain")
                    and deadline <= time.time() < float(a.get("EndsAt", 0))):
                stop_by_drain(args, path, a)
        for key, n in nodes.items():
            if key != n["Name"] or not n.get("Drain"):
                continue
            busy = any(alloc_running(a, nodes) for _, a in alloc_files(args.allocs_dir)
                       if nodes.get(a.get("NodeID", "")) is n)
            if not busy:
                update_node(n["_path"], {"Drain": False, "DrainDeadline": None,
                                         "DrainChanges": int(n.get("DrainChanges", 0)) + 1})


def stop_by_drain(args, path, a):
    a = dict(a, StoppedByDrain=True, StoppedAt=time.time())
    write_json(path, a)
    with open(os.path.join(args.allocs_dir, "stopped-by-drain.log"), "a") as f:
        f.write(f"{a['ID']} on {a.get('NodeID', '')}\n")


def update_node(path, changes):
    n = read_json(path) or {}
    n.update(changes)
    write_json(path, n)


def node_stubs(args):
    out = []
    spec = version_tuple(args.version) >= (0, 8)
    for _, n in node_files(args.nodes_dir):
        ready = time.time() - n.get("RestartedAt", 0) >= REGISTER_SECONDS
        restarts = int(n.get("Restarts", 0))
        stub = {
            "ID": node_id(n["Name"]),
            "Datacenter": "dc1",
            "Name": n["Name"],
            "NodeClass": "",
            "Address": n.get("Address", "127.0.0.1"),
            "Drain": bool(n.get("Drain", False)),
            "Status": "ready" if ready else "initializing",
            "StatusDescription": "",
            "Version": args.version,
            "CreateIndex": 10,
            "ModifyIndex": 100 + 2 * restarts + (1 if ready else 0) + 10 * int(n.get("DrainChanges", 0)),
        }
        if spec:
            stub["SchedulingEligibility"] = n.get("Eligibility", "eligible")
        out.append(stub)
    return out


def alloc_stubs(args, node=None):
    out = []
    nodes = nodes_by_key(args.nodes_dir)
    for _, a in alloc_files(args.allocs_dir):
        n = nodes.get(a.get("NodeID", ""))
        nid = node_id(n["Name"]) if n else a.get("NodeID", "")
        if node is not None and nid != node:
            continue
        running = alloc_running(a, nodes)
        out.append({
            "ID": a["ID"],
            "EvalID": str(uuid.uuid5(uuid.NAMESPACE_URL, a["ID"])),
            "Name": a.get("Name", a["ID"]),
            "NodeID": nid,
            "JobID": a.get("JobID", a["ID"]),
            "TaskGroup": "build",
            "DesiredStatus": "stop" if a.get("StoppedByDrain") else "run",
            "DesiredDescription": "alloc is being migrated" if a.get("StoppedByDrain") else "",
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
            settle(args)
            path = self.path.split("?", 1)[0]
            routes = {"/v1/status/leader", "/v1/status/peers", "/v1/agent/self"}
            if args.nodes_dir:
                routes.add("/v1/nodes")
            if args.allocs_dir:
                routes.add("/v1/allocations")
            m = re.fullmatch(r"/v1/node/([0-9a-f-]{36})/allocations", path)
            one = re.fullmatch(r"/v1/node/([0-9a-f-]{36})", path)
            if path not in routes and not (m and args.nodes_dir and args.allocs_dir) \
                    and not (one and args.nodes_dir):
                return self.send(404, "404 page not found\n", "text/plain")
            if not self.authorized():
                return self.send(403, "Permission denied\n", "text/plain")
            peers = args.peers.split(",")
            if one:
                stub = next((n for n in node_stubs(args) if n["ID"] == one.group(1)), None)
                if stub is None:
                    return self.send(404, "node not found\n", "text/plain")
                n = nodes_by_key(args.nodes_dir)[one.group(1)]
                attrs = {"kernel.name": "linux", "unique.network.ip-address": stub["Address"]}
                attrs.update(n.get("Attributes") or {})
                detail = {k: v for k, v in stub.items() if k != "Address"}
                detail.update(HTTPAddr=stub["Address"] + ":4646", Attributes=attrs)
                return self.send(200, json.dumps(detail))
            if m:
                if m.group(1) not in nodes_by_key(args.nodes_dir):
                    return self.send(404, "node not found\n", "text/plain")
                return self.send(200, json.dumps(alloc_stubs(args, m.group(1))))
            if path == "/v1/status/leader":
                if args.no_leader:
                    return self.send(500, "No cluster leader\n", "text/plain")
                return self.send(200, json.dumps(peers[0]))
            if path == "/v1/nodes":
                return self.send(200, json.dumps(node_stubs(args)))
            if path == "/v1/allocations":
                return self.send(200, json.dumps(alloc_stubs(args)))
            if path == "/v1/status/peers":
                return self.send(200, json.dumps([] if args.no_leader else peers))
            version = args.version if version_tuple(args.version) < (0, 7) else {"Version": args.version}
            return self.send(200, json.dumps({
                "config": {"Region": "global", "Datacenter": "dc1", "Version": version},
                "member": {"Name": "standin.global", "Addr": "127.0.0.1", "Port": 4648, "Status": "alive"},
                "stats": {},
            }))

        def do_POST(self):
            if args.app_state and not app_started(args.app_state):
                self.close_connection = True
                return
            path, _, query = self.path.partition("?")
            m = re.fullmatch(r"/v1/node/([0-9a-f-]{36})/(drain|eligibility)", path)
            spec = version_tuple(args.version) >= (0, 8)
            if not (m and args.nodes_dir and args.allocs_dir) or (m.group(2) == "eligibility" and not spec):
                return self.send(404, "404 page not found\n", "text/plain")
            if not self.authorized():
                return self.send(403, "Permission denied\n", "text/plain")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            with LOCK:
                nodes = nodes_by_key(args.nodes_dir)
                node = nodes.get(m.group(1))
                if node is None:
                    return self.send(404, "node not found\n", "text/plain")
                changes = {"DrainChanges": int(node.get("DrainChanges", 0)) + 1}
                if m.group(2) == "eligibility":
                    try:
                        e = json.loads(raw)["Eligibility"]
                    except (ValueError, KeyError, TypeError):
                        return self.send(400, "invalid eligibility request\n", "text/plain")
                    if e not in ("eligible", "ineligible"):
                        return self.send(400, f"invalid scheduling eligibility {e!r}\n", "text/plain")
                    if e == "eligible" and node.get("Drain"):
                        return self.send(500, "can not set node's scheduling eligibility to eligible while it is draining\n", "text/plain")
                    changes["Eligibility"] = e
                elif not spec:
                    enable = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("enable")
                    if enable not in ("true", "false"):
                        return self.send(400, "invalid enable value\n", "text/plain")
                    changes["Drain"] = enable == "true"
                    if enable == "true":
                        changes["DrainedAt"] = time.time()
                        for apath, a in alloc_files(args.allocs_dir):
                            if nodes.get(a.get("NodeID", "")) is node and alloc_running(a, nodes):
                                stop_by_drain(args, apath, a)
                else:
                    try:
                        req = json.loads(raw or b"{}")
                        ds = req.get("DrainSpec")
                        deadline = None if ds is None else int(ds["Deadline"])
                    except (ValueError, KeyError, TypeError, AttributeError):
                        return self.send(400, "invalid drain request\n", "text/plain")
                    if deadline is None:
                        changes.update(Drain=False, DrainDeadline=None)
                        if req.get("MarkEligible"):
                            changes["Eligibility"] = "eligible"
                    else:
                        # As Nomad's DrainStrategy: < 0 forces (now), 0 has no deadline.
                        at = time.time() if deadline < 0 else (None if deadline == 0 else time.time() + deadline / 1e9)
                        changes.update(Drain=True, DrainDeadline=at, Eligibility="ineligible",
                                       DrainedAt=time.time())
                update_node(node["_path"], changes)
            settle(args)
            return self.send(200, json.dumps({"EvalIDs": [], "EvalCreateIndex": 0,
                                              "NodeModifyIndex": 300, "Index": 300}))

        def refuse(self):
            self.send(405, "Method not allowed\n", "text/plain")

        do_PUT = do_DELETE = do_PATCH = do_HEAD = refuse

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
    p.add_argument("--peers", default=LEADER)
    p.add_argument("--version", default="0.5.6")
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
