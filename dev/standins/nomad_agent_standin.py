#!/usr/bin/env python3
"""`systemctl` and `service` STAND-INS for the test Nomad client machines: no systemd
runs here, and no Nomad agent can be installed. Installed (as `systemctl` and `service`)
only in a directory that the test client sshds put first on their sessions' PATH,
never on the host's own.

It does exactly what circleci_nomad_client_static asks of it, and refuses the rest:
  systemctl restart nomad   |   service nomad restart
"Restarting" the agent re-registers its node with the Nomad stand-in
(dev/standins/nomad_standin.py --nodes-dir D): D/NAME.json gets one more restart and the time,
and D/NAME.restarts one more line, which the tests count. D and NAME come from the
session's environment: NOMAD_STANDIN_NODES and NOMAD_STANDIN_NODE (the client sshd sets
them with SetEnv). Any other command exits 1 with "not implemented by the stand-in".
While D/NAME.fail exists, a restart fails as a broken agent's would: it exits 1 with that
file's text on stderr and changes nothing.
"""

import json
import os
import sys
import time


def main():
    tool = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    if (tool, args) not in (("systemctl", ["restart", "nomad"]), ("service", ["nomad", "restart"])):
        print(f"{tool} {' '.join(args)}: not implemented by the stand-in", file=sys.stderr)
        return 1
    nodes, name = os.environ.get("NOMAD_STANDIN_NODES"), os.environ.get("NOMAD_STANDIN_NODE")
    if not nodes or not name:
        print("NOMAD_STANDIN_NODES / NOMAD_STANDIN_NODE not set", file=sys.stderr)
        return 1
    try:
        with open(os.path.join(nodes, name + ".fail")) as f:
            print(f"Job for nomad.service failed: {f.read().strip()}", file=sys.stderr)
        return 1
    except FileNotFoundError:
        pass
    path = os.path.join(nodes, name + ".json")
    try:
        with open(path) as f:
            node = json.load(f)
    except FileNotFoundError:
        node = {"Name": name, "Address": "127.0.0.1", "Restarts": 0}
    node["Restarts"] = int(node.get("Restarts", 0)) + 1
    node["RestartedAt"] = time.time()
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(node, f)
    os.replace(tmp, path)
    with open(os.path.join(nodes, name + ".restarts"), "a") as f:
        f.write(f"{tool} {' '.join(args)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
