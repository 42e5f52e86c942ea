"""`make bench`, case (g): what `via_services_host` costs per resource, side by side with
the direct route, and 40 resources in parallel on the one SSH connection.

Each resource is a circleci_external_redis with verify on: its apply PINGs Redis (a
channel through the Services machine when tunnelled) and writes its file over SFTP.
For each route, the median of RUNS applies of 1 and of 40 resources (each apply from
nothing, -parallelism=40, destroyed after), and the marginal cost (t40 - t1) / 39.
From sshd's log (DEBUG1) during one tunnelled 40-resource apply: how many channels
went to Redis, and the most open at once ("nchannels" at each channel's free; the
test sshd keeps the default MaxSessions of 10).
"""

import os
import re
import shutil
import statistics
import tempfile
import time

from bench_common import E, STATE, cli_config, provider, redis_resources, tf

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
N = 40


def sshd_log_size():
    return os.path.getsize(E["CIRCLECI_TEST_SSH_LOG"])


def sshd_log_since(offset):
    with open(E["CIRCLECI_TEST_SSH_LOG"], "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def applies(plugin_dir, files, via, n):
    """Median seconds of RUNS applies of n resources from nothing (destroyed after),
    and sshd's log of the last one."""
    d = tempfile.mkdtemp(prefix="bench-tunnel-", dir=STATE)
    try:
        extra = "  via_services_host = true\n" if via else ""
        with open(os.path.join(d, "main.tf"), "w") as f:
            f.write(provider(extra) + redis_resources(n, f"{files}/tunnel-{via}-{n}"))
        cfg = cli_config(d, plugin_dir)
        times, log = [], ""
        for _ in range(RUNS):
            before = sshd_log_size()
            t = time.perf_counter()
            tf(d, cfg, "apply", "-auto-approve", "-input=false", "-no-color", "-parallelism=40")
            times.append(time.perf_counter() - t)
            log = sshd_log_since(before)
            tf(d, cfg, "destroy", "-auto-approve", "-input=false", "-no-color")
        return statistics.median(times), log
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(plugin_dir, files):
    """Prints case (g); True when 40 tunnelled resources each got their channel."""
    t = {}
    logs = {}
    for via in (False, True):
        for n in (1, N):
            t[(via, n)], logs[(via, n)] = applies(plugin_dir, files, via, n)
    port = E["CIRCLECI_TEST_REDIS_PORT"]
    log = logs[(True, N)]
    channels = log.count(f"target 127.0.0.1 port {port}")
    most = max((int(x) for x in re.findall(r"free: direct-tcpip, nchannels (\d+)", log)), default=0)
    direct_m = (t[(False, N)] - t[(False, 1)]) / (N - 1)
    tunnel_m = (t[(True, N)] - t[(True, 1)]) / (N - 1)
    print(f"(g) apply of circleci_external_redis (verify: PING), -parallelism={N}, median of {RUNS}:")
    print("                                  direct        via_services_host")
    print(f"    1 resource                    {t[(False, 1)]:7.3f} s     {t[(True, 1)]:7.3f} s")
    print(f"    {N} resources                  {t[(False, N)]:7.3f} s     {t[(True, N)]:7.3f} s")
    print(f"    marginal per resource         {direct_m * 1000:7.2f} ms    {tunnel_m * 1000:7.2f} ms"
          f"   (tunnel adds {(tunnel_m - direct_m) * 1000:+.2f} ms)")
    print(f"    one tunnelled {N}-resource apply: {channels} channels to Redis, at most {most} channels open at once"
          " (sessions included) on the one SSH connection; sshd keeps the default MaxSessions of 10")
    return channels >= N
