#!/usr/bin/env python3
"""`make bench`: what the provider costs Terraform, measured with the real CLI.

In one run, median of N (default 5) each (BENCH_RUNS; a and b, a1 and a, c1 and c50 are
planned in turn, 2 N + 1 pairs, and their differences are medians of the pairs'):
  (a) terraform plan of 50 terraform_data resources (Terraform alone, no plugin)
  (b) the same plus our provider, configured, with zero resources of its own
  (c) 1 and 50 circleci_external_redis resources after apply (distinct files, refresh on)
  (d) the complete example (examples/complete: every resource type) after apply
  (e) 1 circleci_nomad_client_launch_config after apply (refresh: 2 AWS calls to moto)
  (g) the marginal cost per resource with and without via_services_host, side by side,
      and 40 resources in parallel on the one SSH connection (dev/bench/bench_tunnel.py)
  (f) the data migration against a plain pg_dump | pg_restore pipe, and the cutover's
      downtime (dev/bench/bench_migration.py: the provider's default three times, each
      between two runs of the pipe, the medians taken; each run moves over a gigabyte)
Prints the times, the provider's fixed cost per plan (b - a), its marginal cost per
resource ((c50 - c1) / 49, and Terraform's own per terraform_data beside it), where (d)'s
time goes per resource type (the provider's debug lines), the handshake time, the
provider's peak RSS (a plan of c50, the apply of the complete example) and the number of
SSH logins one plan makes. Targets (issue 28): fixed <= 0.015 s, marginal <= 1.5 ms per
resource, (d) <= 0.30 s, release binary <= 30 MB. The fixed cost's target is checked on
the provider's own part: (b - a) less the time Terraform itself spends, before it starts
any plugin, making that plugin's AutoMTLS client certificate (read from its debug log,
printed beside it).

Needs the servers of dev/services/up.sh and a release build (dev/bench.sh does both).
"""

import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import bench_migration
import bench_tunnel
from bench_common import E, ROOT, STATE, cli_config, provider, redis_resources, tf

BIN = os.path.join(ROOT, "target", "release", "terraform-provider-circleci")
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
COOKIE = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2"

# moto takes any credentials; nothing from the machine's own AWS set-up.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_EC2_METADATA_DISABLED="true",
    AWS_CONFIG_FILE="/nonexistent",
    AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
)


def nomad_group(name):
    """A Nomad client Auto Scaling group on moto, as enterprise-setup makes it."""
    subprocess.run(
        [E["CIRCLECI_TEST_AWS_PYTHON"], E["CIRCLECI_TEST_AWS_FIXTURE"], "setup", "--name", name,
         "--user-data-file", E["CIRCLECI_TEST_NOMAD_USER_DATA"]],
        check=True, capture_output=True,
        env=dict(os.environ, CIRCLECI_TEST_AWS_ENDPOINT=E["CIRCLECI_TEST_AWS_ENDPOINT"], AWS_REGION="us-east-1"),
    )
    return name


def launch_config_resource(group):
    """The launch configuration on moto, with the Services machine (it reads whether
    CircleCI runs: the simulator's app is stopped first, so the clients move freely)."""
    return provider(f'  aws {{\n    region = "us-east-1"\n    endpoint = "{E["CIRCLECI_TEST_AWS_ENDPOINT"]}"\n  }}\n') + (
        f'resource "circleci_nomad_client_launch_config" "c" {{\n  autoscaling_group_name = "{group}"\n'
        '  nomad_servers = ["nomad-1.internal:4647"]\n}\n'
    )


PROVIDER = provider()


def data_resources(n):
    return "".join(f'resource "terraform_data" "r{i}" {{\n  input = {i}\n}}\n' for i in range(n))


def workspace(main_tf, plugin_dir):
    d = tempfile.mkdtemp(prefix="bench-", dir=STATE)
    with open(os.path.join(d, "main.tf"), "w") as f:
        f.write(main_tf)
    cfg = cli_config(d, plugin_dir)
    tf(d, cfg, "apply", "-auto-approve", "-input=false", "-no-color")
    return d, cfg


def complete_example(plugin_dir, files):
    """examples/complete against the dev servers, applied: the simulator's root holds
    the embedded data its migration carries over."""
    d = tempfile.mkdtemp(prefix="bench-complete-", dir=STATE)
    sim_root = f"{files}/complete"
    bench_migration.fixture(sim_root, 300, mongo=True)
    bench_migration.simulator(sim_root)
    bench_migration.fresh_targets()
    with open(os.path.join(ROOT, "examples", "complete", "main.tf")) as f:
        main = f.read()
    with open(os.path.join(d, "main.tf"), "w") as f:
        f.write(main)
    with open(os.path.join(d, "terraform.tfvars"), "w") as f:
        f.write(
            f'services_host = "127.0.0.1"\nservices_port = {E["CIRCLECI_TEST_SSH_PORT"]}\nservices_user = "root"\n'
            f'private_key_file = "{E["CIRCLECI_TEST_SSH_KEY_FILE"]}"\nknown_hosts_file = "{E["CIRCLECI_TEST_SSH_KNOWN_HOSTS"]}"\n'
            f'redis_host = "127.0.0.1"\nredis_port = {E["CIRCLECI_TEST_REDIS_PORT"]}\n'
            f'slanger_redis_host = "127.0.0.1"\nslanger_redis_port = {E["CIRCLECI_TEST_REDIS_PORT"]}\n'
            f'postgres_host = "127.0.0.1"\npostgres_port = {E["CIRCLECI_TEST_PG_PORT"]}\n'
            f'postgres_ca_file = "{E["CIRCLECI_TEST_PG_CA"]}"\npostgres_admin_password = "{E["CIRCLECI_TEST_PG_PASSWORD"]}"\n'
            f'circle_db_password = "bench-password"\nconfig_root = "{files}/complete"\n'
            f'vault_address = "{E["CIRCLECI_TEST_VAULT_ADDR"]}"\nvault_token = "{E["CIRCLECI_TEST_VAULT_TOKEN"]}"\n'
            f'vault_ca_file = "{E["CIRCLECI_TEST_VAULT_CA"]}"\n'
            f'rabbitmq_host = "127.0.0.1"\nrabbitmq_port = {E["CIRCLECI_TEST_MQ_PORT"]}\n'
            f'rabbitmq_password = "{E["CIRCLECI_TEST_MQ_PASSWORD"]}"\nnomad_endpoint = "{E["CIRCLECI_TEST_CI_NOMAD_ADDR"]}"\n'
            f'nomad_ca_file = "{E["CIRCLECI_TEST_TLS_CA"]}"\nnomad_token = "{E["CIRCLECI_TEST_NOMAD_TOKEN"]}"\n'
            f'mongo_hosts = ["127.0.0.1:{E["CIRCLECI_TEST_MONGO_PORT"]}"]\nmongo_tls = false\nmongo_password = "bench-mongo"\n'
            f'aws_endpoint = "{E["CIRCLECI_TEST_AWS_ENDPOINT"]}"\nnomad_servers = ["nomad-1.internal:4647"]\n'
            f'nomad_clients_asg = "{nomad_group(f"bench-complete-{os.getpid()}")}"\n'
            f'services_ca_files = {{ "dev-vault" = "{E["CIRCLECI_TEST_VAULT_CA"]}", "dev-services" = "{E["CIRCLECI_TEST_TLS_CA"]}" }}\n'
            f'embedded_vault_address = "{E["CIRCLECI_TEST_EMBEDDED_VAULT_ADDR"]}"\n'
            f'embedded_nomad_endpoint = "{E["CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"]}"\n'
            f'embedded_vault_token = "{E["CIRCLECI_TEST_EMBEDDED_VAULT_TOKEN"]}"\n'
            f'mongo_admin_uri = "mongodb://{E["CIRCLECI_TEST_MONGO_USER"]}:{E["CIRCLECI_TEST_MONGO_PASSWORD"]}@127.0.0.1:{E["CIRCLECI_TEST_MONGO_PORT"]}/?authSource=admin"\n'
        )
    cfg = cli_config(d, plugin_dir)
    tf(d, cfg, "apply", "-auto-approve", "-input=false", "-no-color")
    return d, cfg


def one_plan(d, cfg):
    t = time.perf_counter()
    r = tf(d, cfg, "plan", "-input=false", "-no-color", "-detailed-exitcode")
    took = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"plan in {d} was not empty:\n{r.stdout}")
    return took


def median_plan(d, cfg):
    return statistics.median(one_plan(d, cfg) for _ in range(RUNS))


def paired_plans(x, y):
    """Plans of workspaces x and y (each a (dir, cfg)) taken in turn, 2 * RUNS + 1
    pairs, which of the two goes first alternating: the median of each, and the
    median of the pairs' differences (y - x). The machine's speed drifts within
    minutes; a difference taken pair by pair does not carry that drift, as two medians
    taken one after the other do."""
    xs, ys, diffs = [], [], []
    for i in range(2 * RUNS + 1):
        if i % 2:
            ty, tx = one_plan(*y), one_plan(*x)
        else:
            tx, ty = one_plan(*x), one_plan(*y)
        xs.append(tx)
        ys.append(ty)
        diffs.append(ty - tx)
    return statistics.median(xs), statistics.median(ys), statistics.median(diffs)


def breakdown(d, cfg):
    """One more plan of `d`, with the provider's debug log: each call's time per
    resource type (the provider logs it), and the SSH connection's set-up time."""
    log = os.path.join(d, "breakdown.log")
    if os.path.exists(log):
        os.remove(log)
    env = dict(os.environ, TF_CLI_CONFIG_FILE=cfg, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1",
               TF_LOG_PROVIDER="debug", TF_LOG_PATH=log)
    env.pop("TF_LOG", None)
    subprocess.run(["terraform", "plan", "-input=false", "-no-color"], cwd=d, env=env, capture_output=True)
    calls, ssh = {}, []
    with open(log) as f:
        for line in f:
            m = re.search(r"(ReadResource|PlanResourceChange) (\w+): ([0-9.]+) ms", line)
            if m:
                calls.setdefault(m.group(2), {}).setdefault(m.group(1), []).append(float(m.group(3)))
            m = re.search(r"SSH connection to \S+ ready \(transport, login, SFTP\): ([0-9.]+) ms", line)
            if m:
                ssh.append(float(m.group(1)))
    return calls, ssh


def print_breakdown(calls, ssh):
    print("    where (d)'s time goes, per resource type (ms; the refreshes that wait for the SSH connection")
    print("    include it; Terraform runs a type's refresh after those it depends on):")
    print(f"    {'resource type':42} {'n':>2} {'refresh max':>12} {'plan max':>9}")
    for t, c in sorted(calls.items(), key=lambda kv: -max(kv[1].get("ReadResource", [0]))):
        r, p = c.get("ReadResource", [0]), c.get("PlanResourceChange", [0])
        print(f"    {t:42} {len(r):>2} {max(r):>12.1f} {max(p):>9.1f}")
    print(f"    SSH connection set-up (transport, login, SFTP): {', '.join(f'{x:.1f}' for x in ssh) or 'none'} ms")


def terraform_certificates(d, cfg):
    """Terraform's own time per plan making its AutoMTLS client certificate, which it
    does for every plugin it starts, before starting it (go-plugin: an ECDSA P-521 key
    and a self-signed certificate; the log's "configuring client automatic mTLS" to
    "starting plugin"): median over RUNS debug-logged plans of `d`, and the plugin
    starts per plan. No plugin can avoid it; the provider's fixed cost is the rest."""
    log = os.path.join(d, "certificates.log")
    env = dict(os.environ, TF_CLI_CONFIG_FILE=cfg, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1",
               TF_LOG="debug", TF_LOG_PATH=log)
    stamp = re.compile(r"^(\S+) \[\w+\]\s+provider: (configuring client automatic mTLS|starting plugin)")
    totals, starts = [], 0
    for _ in range(RUNS):
        if os.path.exists(log):
            os.remove(log)
        r = subprocess.run(["terraform", "plan", "-input=false", "-no-color"], cwd=d, env=env,
                           capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(log):
            sys.exit(f"the debug-logged plan of {d} failed:\n{r.stdout}\n{r.stderr}")
        total, began, starts = 0.0, None, 0
        with open(log) as f:
            for line in f:
                m = stamp.match(line)
                if not m:
                    continue
                t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                if m.group(2).startswith("configuring"):
                    if began is not None:
                        sys.exit(f"two plugin starts overlap in Terraform's log of {d}: cannot pair them")
                    began = t
                elif began is not None:
                    total, began, starts = total + t - began, None, starts + 1
        if not starts:
            sys.exit(f"no plugin start in Terraform's debug log of a plan of {d}")
        totals.append(total)
    return statistics.median(totals), starts


def handshake_time():
    pem = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521", "-sha512",
         "-nodes", "-keyout", "/dev/null", "-subj", "/O=HashiCorp/CN=localhost", "-days", "1"],
        capture_output=True, text=True, check=True).stdout
    env = dict(os.environ, TF_PLUGIN_MAGIC_COOKIE=COOKIE, PLUGIN_PROTOCOL_VERSIONS="5,6", PLUGIN_CLIENT_CERT=pem)
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        p = subprocess.Popen([BIN], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = p.stdout.readline()
        times.append(time.perf_counter() - t)
        p.terminate()
        p.wait()
        assert line.startswith(b"1|6|tcp|127.0.0.1:"), line
    return statistics.median(times)


def rss_wrapper_dir():
    """A plugin dir whose 'binary' runs the real one and records its peak RSS."""
    d = tempfile.mkdtemp(prefix="rss-", dir=STATE)
    log = os.path.join(d, "maxrss")
    w = os.path.join(d, "terraform-provider-circleci")
    with open(w, "w") as f:
        f.write(
            f"#!{sys.executable}\n"
            "import resource, subprocess, sys\n"
            f"rc = subprocess.call([{BIN!r}] + sys.argv[1:])\n"
            f"open({log!r}, 'a').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) + '\\n')\n"
            "sys.exit(rc)\n"
        )
    os.chmod(w, 0o755)
    return d, log


def ssh_logins():
    try:
        with open(os.path.join(STATE, "sshd.log")) as f:
            return len(re.findall(r"Accepted publickey", f.read()))
    except FileNotFoundError:
        return 0


def main():
    plugin_dir = os.path.dirname(BIN)
    files = tempfile.mkdtemp(prefix="files-", dir=STATE)
    a_dir, a_cfg = workspace(data_resources(50), plugin_dir)
    a1_dir, a1_cfg = workspace(data_resources(1), plugin_dir)
    b_dir, b_cfg = workspace(PROVIDER + data_resources(50), plugin_dir)
    c1_dir, c1_cfg = workspace(PROVIDER + redis_resources(1, files + "/c1"), plugin_dir)
    c50_dir, c50_cfg = workspace(PROVIDER + redis_resources(50, files + "/c50"), plugin_dir)

    a, b, fixed = paired_plans((a_dir, a_cfg), (b_dir, b_cfg))
    a1, _, tf_span = paired_plans((a1_dir, a1_cfg), (a_dir, a_cfg))
    c1, c50, span = paired_plans((c1_dir, c1_cfg), (c50_dir, c50_cfg))
    # Applied through the RSS wrapper: the provider's peak memory during the complete
    # example's apply (every resource type, a migration); then planned with the binary.
    apply_rss_dir, apply_rss_log = rss_wrapper_dir()
    d_dir, _ = complete_example(apply_rss_dir, files)
    with open(apply_rss_log) as f:
        apply_rss = [int(x) for x in f.read().split()]
    d_cfg = cli_config(d_dir, plugin_dir)
    d = median_plan(d_dir, d_cfg)
    d_calls, d_ssh = breakdown(d_dir, d_cfg)
    bench_migration.simulator_stopped()
    e_dir, e_cfg = workspace(launch_config_resource(nomad_group(f"bench-e-{os.getpid()}")), plugin_dir)
    e = median_plan(e_dir, e_cfg)
    hs = handshake_time()
    certs, cert_starts = terraform_certificates(b_dir, b_cfg)

    before = ssh_logins()
    tf(c50_dir, c50_cfg, "plan", "-input=false", "-no-color")
    logins = ssh_logins() - before

    rss_dir, rss_log = rss_wrapper_dir()
    rss_cfg = cli_config(c50_dir, rss_dir)
    tf(c50_dir, rss_cfg, "plan", "-input=false", "-no-color")
    with open(rss_log) as f:
        rss = [int(x) for x in f.read().split()]

    own_fixed = fixed - certs
    marginal = span / 49
    print(f"runs per case (median): {RUNS}; (a) and (b), (a1) and (a), (c1) and (c50) in turn, {2 * RUNS + 1} pairs,"
          " each difference the median of the pairs' differences")
    print(f"(a) plan, 50 terraform_data, no plugin:          {a:.3f} s")
    print(f"(b) (a) + circleci provider, 0 own resources:    {b:.3f} s")
    print(f"(c1) plan, 1 circleci_external_redis (refresh):  {c1:.3f} s")
    print(f"(c50) plan, 50 circleci_external_redis:          {c50:.3f} s")
    print(f"(d) plan, examples/complete (every type):      {d:.3f} s   ({d - a:+.3f} s vs (a); target <= 0.300 s)")
    print_breakdown(d_calls, d_ssh)
    print(f"(e) plan, 1 circleci_nomad_client_launch_config: {e:.3f} s   (refresh: AWS chain + 2 calls to moto)")
    print(f"fixed cost per plan (b - a, pair by pair):       {fixed:.3f} s")
    print(f"  Terraform's own AutoMTLS client certificate, made before it starts any plugin"
          f" ({cert_starts} start(s) per plan): {certs:.3f} s")
    print(f"  the provider's own (b - a - that):             {own_fixed:.3f} s   (target <= 0.015 s)")
    print(f"marginal cost per resource ((c50 - c1) / 49):    {marginal * 1000:.2f} ms (target <= 1.5 ms; pair by pair)")
    tf_marginal = tf_span / 49
    print(f"  Terraform's own, per terraform_data ((a - a1) / 49, a1 = {a1:.3f} s): {tf_marginal * 1000:.2f} ms;"
          f" the provider's beyond it: {(marginal - tf_marginal) * 1000:.2f} ms")
    size = os.path.getsize(BIN) / 1e6
    print(f"release binary (stripped by the profile):        {size:.1f} MB (target <= 30 MB)")
    print(f"handshake (start to handshake line, AutoMTLS):   {hs * 1000:.1f} ms")
    print(f"provider processes in one c50 plan:              {len(rss)}")
    print(f"provider peak RSS (max over those processes):    {max(rss) / 1024:.1f} MiB")
    print(f"SSH logins during one c50 plan:                  {logins}")
    print(f"provider peak RSS, apply of examples/complete:   {max(apply_rss) / 1024:.1f} MiB "
          f"(max over its {len(apply_rss)} processes)")
    ok = own_fixed <= 0.015 and marginal <= 0.0015 and d <= 0.30 and size <= 30
    print("targets met" if ok else "TARGETS MISSED")
    for w, cfg in ((c1_dir, c1_cfg), (c50_dir, c50_cfg), (d_dir, d_cfg), (e_dir, e_cfg)):
        tf(w, cfg, "destroy", "-auto-approve", "-input=false", "-no-color")
    print()
    tunnel_ok = bench_tunnel.run(plugin_dir, files)
    print("tunnel: every resource had its channel" if tunnel_ok else "TUNNEL: RESOURCES WITHOUT A CHANNEL")
    for w in (a_dir, a1_dir, b_dir, c1_dir, c50_dir, d_dir, e_dir, rss_dir, apply_rss_dir, files):
        shutil.rmtree(w, ignore_errors=True)
    bench_migration.fresh_targets()
    bench_migration.simulator_reset()
    print()
    migration_ok = bench_migration.run(plugin_dir)
    print("migration target met" if migration_ok else "MIGRATION TARGET MISSED")
    return 0 if ok and migration_ok and tunnel_ok else 1


if __name__ == "__main__":
    sys.exit(main())
