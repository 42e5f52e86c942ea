#!/usr/bin/env python3
"""A Nomad HTTP API STAND-IN, for tests only: no Nomad agent can be installed from the
package registries this project reaches. Written from Nomad's public HTTP API docs, it
implements just what circleci_external_nomad uses, and refuses everything else:

  GET /v1/status/leader  -> "127.0.0.1:4647" (a JSON string), or 500 "No cluster leader"
  GET /v1/status/peers   -> ["127.0.0.1:4647"], or [] without a leader
  GET /v1/agent/self     -> a minimal agent description
  X-Nomad-Token          -> checked when --token is given: 403 "Permission denied"
  anything else          -> 404; methods other than GET -> 405

Usage: nomad-standin.py --port N [--token T] [--no-leader] [--tls-cert F --tls-key F]
                        [--pidfile F]
Binds 127.0.0.1 only.
"""

import argparse
import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LEADER = "127.0.0.1:4647"


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
            path = self.path.split("?", 1)[0]
            routes = {"/v1/status/leader", "/v1/status/peers", "/v1/agent/self"}
            if path not in routes:
                return self.send(404, "404 page not found\n", "text/plain")
            if not self.authorized():
                return self.send(403, "Permission denied\n", "text/plain")
            if path == "/v1/status/leader":
                if args.no_leader:
                    return self.send(500, "No cluster leader\n", "text/plain")
                return self.send(200, json.dumps(LEADER))
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
