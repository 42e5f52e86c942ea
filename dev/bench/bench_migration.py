#!/usr/bin/env python3
"""`make bench`, the data migration: circleci_data_migration against a plain pipe.

On the Services-machine simulator, over the embedded PostgreSQL fixture of
dev/fixtures/embedded_fixture.sh with BENCH_MIGRATION_ROWS rows per big table (default 1,700,000:
1.07 GB in pg_database_size; less than 1 GB fails the benchmark), in the same run:
  (m) terraform apply of circleci_postgres_databases + circleci_data_migration +
      circleci_services_restart: the provider's migration (export kept, every table
      counted and checksummed on both sides, sealed) and the whole cutover, from
      CircleCI stopped to the restart's checks passing
  (p) the plain pipe over the same data, in the same temporary container:
      pg_dump -Fc DB | pg_restore --no-owner --no-privileges -d DB, per database,
      into fresh databases, nothing kept, nothing verified
Both timed from the temporary container's start to its removal (the provider's
postgres_elapsed; its whole elapsed also stops CircleCI).
(m) runs once per parallelism in BENCH_PARALLELISM (default 1), then at the provider's
default BENCH_MIGRATION_PAIRS times (default 3; an even number is raised by one), each
of those between two runs of (p): this machine's speed drifts by 10 % and more within
minutes, so each default run is compared with the pipe's time interpolated to the middle
of its apply, and the medians of those ratios and downtimes are the figures (the run
with the median ratio has its cutover shown part by part).
Prints MB/s and rows/s of both, the ratio (p time / m time; target >= 1.3), the speed-up
against the parallelism, and the cutover's downtime (CircleCI stopped -> checks passed,
the simulator's start transition apart; target <= 0.8 x the plain pipe). Then the
second fixture, BENCH_ONE_TABLE_ROWS (default 5,000,000) rows in circle.builds alone:
the plain pipe and (m) at the default parallelism, side by side, no target. Imported by
dev/bench/bench.py; runnable alone with a built provider (BIN=path/to/terraform-provider-circleci).
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from bench_common import E, ROOT, STATE, cli_config, provider, tf

DATABASES = ["circle", "contexts", "conductor_production", "contexts_service_production",
             "cron_service_production", "domain", "federations", "permissions", "vms"]
CONTAINER = "bench-plain-pipe"
# The simulated CircleCI's stop and start take this long (seconds): Replicated's own
# time on a real Services machine, not the provider's.
TRANSITION = 1




def psql(db, sql):
    r = subprocess.run(
        ["psql", "-X", "-q", "-tA", "-h", "127.0.0.1", "-p", E["CIRCLECI_TEST_PG_PORT"], "-U", "postgres",
         "-d", db, "-c", sql],
        env=dict(os.environ, PGPASSWORD=E["CIRCLECI_TEST_PG_PASSWORD"]), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"psql {db}: {sql}: {r.stderr}")
    return r.stdout.strip()


def bao(*args):
    return subprocess.run(
        [E["CIRCLECI_TEST_BAO"], *args], capture_output=True, text=True,
        env=dict(os.environ, BAO_ADDR=E["CIRCLECI_TEST_VAULT_ADDR"], BAO_CACERT=E["CIRCLECI_TEST_VAULT_CA"],
                 BAO_TOKEN=E["CIRCLECI_TEST_VAULT_TOKEN"]))


MONGO_DATABASES = ["circle_ghe", "build_state_dev_ghe", "containers_dev_ghe", "remote_containers_dev_ghe"]


def fresh_targets(prefix=""):
    """No runbook database (with `prefix`) in the dev PostgreSQL, no context-service key,
    none of the four MongoDB databases in the dev MongoDB stand-in."""
    for db in DATABASES:
        psql("postgres", f"DROP DATABASE IF EXISTS {prefix}{db} WITH (FORCE)")
    if not prefix:
        bao("write", "transit/keys/context-service/config", "deletion_allowed=true")
        bao("delete", "transit/keys/context-service")
        uri = (f"mongodb://{E['CIRCLECI_TEST_MONGO_USER']}:{E['CIRCLECI_TEST_MONGO_PASSWORD']}"
               f"@127.0.0.1:{E['CIRCLECI_TEST_MONGO_PORT']}/?authSource=admin")
        for db in MONGO_DATABASES:
            subprocess.run([E["CIRCLECI_TEST_PYTHON"], E["CIRCLECI_TEST_MONGO_CLIENT"], uri, db,
                            '{"dropDatabase": 1}'], check=True, stdout=subprocess.DEVNULL)


def fixture(root, rows, mongo=False, shape="spread"):
    """The embedded data under simulator root `root` (made once, then reused); with
    `mongo`, the embedded MongoDB's documents too; `shape` "one-table" puts the rows in
    one table only (dev/fixtures/embedded_fixture.sh)."""
    os.makedirs(root, exist_ok=True)
    # The server runs as postgres: every directory down to the data must be searchable.
    d = root
    while d.startswith(STATE) and d != STATE:
        os.chmod(d, os.stat(d).st_mode | 0o755)
        d = os.path.dirname(d)
    subprocess.run(
        [os.path.join(ROOT, "dev", "fixtures", "embedded_fixture.sh"), root, str(rows), shape], check=True,
        env=dict(os.environ, EMBEDDED_VAULT_ADDR=E["CIRCLECI_TEST_EMBEDDED_VAULT_ADDR"],
                 EMBEDDED_VAULT_TOKEN=E["CIRCLECI_TEST_EMBEDDED_VAULT_TOKEN"], BAO=E["CIRCLECI_TEST_BAO"],
                 **({"MONGO_STANDIN": E["CIRCLECI_TEST_MONGO_STANDIN"], "PYTHON": E["CIRCLECI_TEST_PYTHON"]}
                    if mongo else {})))


def simulator(root):
    """Points the simulator at `root`, with one-second transitions, and starts CircleCI
    (stopped first: an app an earlier run left started runs containers booted on that
    run's files, and a start would not boot them again). The embedded pg_dump's
    archives stay as 15 writes them: the stand-in's rewrite into 9.5's shape copies the
    data, a cost a real 9.5 pg_dump does not have."""
    simulator_stopped({"root": root, "transition": TRANSITION, "pg95_archives": False})
    sim(["replicatedctl", "app", "start"])
    for _ in range(100):
        st = json.loads(sim(["replicatedctl", "app", "status", "-o", "json"]))[0]
        if st["State"] == "started" and not st["IsTransitioning"]:
            return
        time.sleep(0.2)
    sys.exit("the simulated CircleCI did not start")


def sim(argv, stdin=None):
    r = subprocess.run([os.path.join(E["CIRCLECI_TEST_SIM"], argv[0]), *argv[1:]], input=stdin,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv[:3])}: {r.stderr}")
    return r.stdout


def simulator_stopped(settings=None):
    """The simulator with `settings` (else its own root and one-second transitions),
    and CircleCI stopped."""
    with open(os.path.join(E["CIRCLECI_TEST_SIM_STATE"], "settings.json"), "w") as f:
        json.dump(settings or {"transition": 1}, f)
    sim(["replicatedctl", "app", "stop"])
    for _ in range(100):
        if json.loads(sim(["replicatedctl", "app", "status", "-o", "json"]))[0]["State"] == "stopped":
            return
        time.sleep(0.2)
    sys.exit("the simulated CircleCI did not stop")


def simulator_reset():
    try:
        os.remove(os.path.join(E["CIRCLECI_TEST_SIM_STATE"], "settings.json"))
    except FileNotFoundError:
        pass


def plain_pipe():
    """pg_dump -Fc | pg_restore per database, in a temporary container over the same data."""
    for db in DATABASES:
        psql("postgres", f"CREATE DATABASE bench_plain_{db} TEMPLATE template0")
    export = tempfile.mkdtemp(prefix="bench-plain-", dir="/tmp")
    subprocess.run([os.path.join(E["CIRCLECI_TEST_SIM"], "docker"), "rm", "-f", CONTAINER], capture_output=True)
    script = ('IFS= read -r PGPASSWORD; export PGPASSWORD; for db in "${@:3}"; do '
              'pg_dump -U postgres -Fc "$db" | pg_restore --no-owner --no-privileges --exit-on-error '
              '-h "$1" -p "$2" -U postgres -d "bench_plain_$db" || exit 1; done')
    t = time.perf_counter()
    sim(["docker", "run", "--name", CONTAINER, "-d", "-v",
         "/data/circle/postgres/9.5/data:/var/lib/postgresql/data", "-v", f"{export}:/export", "postgres:9.5.8"])
    sim(["docker", "exec", "-i", CONTAINER, "bash", "-c", script, "pipe", "127.0.0.1", E["CIRCLECI_TEST_PG_PORT"],
         *DATABASES], stdin=E["CIRCLECI_TEST_PG_PASSWORD"] + "\n")
    sim(["docker", "rm", "-f", CONTAINER])
    took = time.perf_counter() - t
    mid = time.monotonic() - took / 2
    shutil.rmtree(export, ignore_errors=True)
    rows = sum(int(psql(f"bench_plain_{db}", f"SELECT count(*) FROM {t}"))
               for db, t in [("circle", "builds"), ("circle", "circle_migrations"),
                             ("conductor_production", "build_jobs"), ("vms", "tasks")])
    fresh_targets("bench_plain_")
    return took, rows, mid


def main_tf(root, parallelism):
    pg = f'''  postgres {{
    host     = "127.0.0.1"
    port     = {E["CIRCLECI_TEST_PG_PORT"]}
    password = "{E["CIRCLECI_TEST_PG_PASSWORD"]}"
    sslmode  = "require"
  }}
'''
    return provider(pg) + f'''
resource "circleci_postgres_databases" "pg" {{
  host        = "127.0.0.1"
  port        = {E["CIRCLECI_TEST_PG_PORT"]}
  password    = "bench-circle-pw"
  config_path = "{root}/etc/circleconfig/shared/postgresql"
}}
resource "circleci_data_migration" "m" {{
  config_root = "{root}"
  parallelism = {parallelism}
  embedded_nomad_endpoint = "{E["CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"]}"
  postgres {{
    host     = circleci_postgres_databases.pg.host
    port     = circleci_postgres_databases.pg.port
    password = "bench-circle-pw"
  }}
}}
resource "circleci_services_restart" "r" {{
  config_root    = "{root}"
  embedded_nomad_endpoint = "{E["CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"]}"
  stop_timeout   = "1m"
  start_timeout  = "2m"
  verify_timeout = "1m"
  triggers = {{
    migration = circleci_data_migration.m.migrated_at
    postgres  = circleci_postgres_databases.pg.file_sha256
  }}
}}
output "m" {{
  value     = circleci_data_migration.m
  sensitive = true
}}
output "r" {{
  value = circleci_services_restart.r
}}
'''


TIMING = re.compile(r"^(\S+) \[INFO\]\s+provider\.terraform-provider-circleci: timing: ([^:]+): ([0-9.]+) s")


def timings(log):
    """The provider's `timing: PART: N s` lines: (end, part, seconds), in order."""
    out = []
    with open(log) as f:
        for line in f:
            m = TIMING.match(line)
            if m:
                end = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                out.append((end, m.group(2), float(m.group(3))))
    return out


def provider_migration(plugin_dir, root, parallelism):
    d = tempfile.mkdtemp(prefix="bench-migration-", dir=STATE)
    with open(os.path.join(d, "main.tf"), "w") as f:
        f.write(main_tf(root, parallelism))
    cfg = cli_config(d, plugin_dir)
    log = os.path.join(d, "apply.log")
    env = dict(os.environ, TF_CLI_CONFIG_FILE=cfg, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1",
               TF_LOG_PROVIDER="info", TF_LOG_PATH=log)
    env.pop("TF_LOG", None)
    t = time.perf_counter()
    r = subprocess.run(["terraform", "apply", "-auto-approve", "-input=false", "-no-color"], cwd=d, env=env,
                       capture_output=True, text=True)
    apply = time.perf_counter() - t
    mid = time.monotonic() - apply / 2
    if r.returncode != 0:
        sys.exit(f"terraform apply failed in {d}:\n{r.stdout}\n{r.stderr}")
    parts = timings(log)
    m = json.loads(tf(d, cfg, "output", "-json", "m").stdout)
    r = json.loads(tf(d, cfg, "output", "-json", "r").stdout)
    tf(d, cfg, "destroy", "-auto-approve", "-input=false", "-no-color")
    shutil.rmtree(os.path.join(root, "data", "circle", "external-services-export"), ignore_errors=True)
    shutil.rmtree(d, ignore_errors=True)
    return apply, m, r, parts, mid


def seconds(s):
    return float(s.rstrip("s"))


def run(plugin_dir):
    rows = int(os.environ.get("BENCH_MIGRATION_ROWS", "1700000"))
    # Other parallelisms first, for the speed-up; then the provider's default, in PAIRS
    # runs (odd: the median is one of them), each between two runs of the pipe.
    sweep = [int(x) for x in os.environ.get("BENCH_PARALLELISM", "1").split(",") if x]
    pairs = max(1, int(os.environ.get("BENCH_MIGRATION_PAIRS", "3"))) | 1
    one_rows = int(os.environ.get("BENCH_ONE_TABLE_ROWS", "5000000"))
    root = os.path.join(STATE, f"bench-embedded-{rows}")
    one_root = os.path.join(STATE, f"bench-embedded-one-table-{one_rows}")
    fixture(root, rows)
    fresh_targets("bench_plain_")
    runs, defaults, pipes = {}, [], []

    def again():
        simulator(root)
        fresh_targets()

    try:
        for n in sweep:
            again()
            runs[n] = provider_migration(plugin_dir, root, n)
        # This machine's speed drifts by 10 % and more within minutes (a shared host):
        # each default run is compared with the pipe's time interpolated, between the
        # pipe's run before it and after it, to the middle of its apply, and the median
        # of those comparisons is the figure.
        again()
        pipes.append(plain_pipe())
        for _ in range(pairs):
            again()
            defaults.append(provider_migration(plugin_dir, root, "null"))
            again()
            pipes.append(plain_pipe())
        # The second fixture: one big table, which no per-database parallelism splits.
        fixture(one_root, one_rows, shape="one-table")
        simulator(one_root)
        fresh_targets()
        one_plain, one_plain_rows, _ = plain_pipe()
        one_table = provider_migration(plugin_dir, one_root, "null")
    finally:
        fresh_targets()
        simulator_reset()

    def pipe_at(at):
        """The pipe's time interpolated to the moment `at` between its runs around it."""
        (pa, _, a), (pb, _, b) = next((x, y) for x, y in zip(pipes, pipes[1:]) if x[2] <= at <= y[2])
        return pa + (pb - pa) * (at - a) / (b - a)

    plain_rows = pipes[0][1]
    paired = []
    for apply, m, r, parts, at in defaults:
        plain = pipe_at(at)
        paired.append((plain / seconds(m["postgres_elapsed"]), plain, apply, m, r, parts))
    ratios = sorted(x[0] for x in paired)
    ratio = ratios[len(ratios) // 2]
    # The run whose ratio is the median is the one shown in full.
    _, plain, apply, m, r, parts = next(x for x in paired if x[0] == ratio)
    took = seconds(m["postgres_elapsed"])
    mb = m["postgres_bytes"] / 1e6
    stopped = datetime.datetime.fromisoformat(m["app_stopped_at"].replace("Z", "+00:00"))
    restarted = datetime.datetime.fromisoformat(r["restarted_at"].replace("Z", "+00:00"))
    big_enough = m["postgres_bytes"] >= 1e9
    print(f"migration fixture: {mb:.0f} MB in the nine databases (pg_database_size), {m['postgres_rows']} rows, "
          f"export {m['export_bytes'] / 1e6:.0f} MB")
    print(f"runs in turn, the pipe's ({len(pipes)}) and the provider's at its default ({len(defaults)}), "
          "each of those against the pipe interpolated to its middle:")
    print("  " + "  ".join(f"pipe {p[0]:.1f} s" + (f"  provider {seconds(x[3]['postgres_elapsed']):.1f} s "
                                                  f"({x[0]:.2f} x)" if x else "")
                          for p, x in zip(pipes, paired + [None])))
    print("  the median run (by its ratio) is the one shown below")
    print(f"(p) plain pg_dump -Fc | pg_restore, 9 databases: {plain:7.1f} s   {mb / plain:6.1f} MB/s  "
          f"{m['postgres_rows'] / plain:9.0f} rows/s  (interpolated; {plain_rows} rows in the big tables)")
    print(f"(m) circleci_data_migration (kept, verified; parallelism {m['parallelism']}, "
          f"compression {m['postgres']['compression']}):")
    print(f"                                                {took:7.1f} s   {mb / took:6.1f} MB/s  "
          f"{m['postgres_rows'] / took:9.0f} rows/s  (its own figure: {m['throughput']})")
    print(f"ratio plain / provider (median of {len(ratios)}):     {ratio:7.2f}     (target >= 1.30)")
    print("speed-up against the parallelism (the same migration, parallelism set):")
    one = seconds(runs[1][1]["postgres_elapsed"]) if 1 in runs else None
    shown = [(n, x[4], x[1]) for n, x in runs.items()] + [(x[3]["parallelism"], d[4], x[3])
                                                         for d, x in zip(defaults, paired)]
    for n, at, mn in sorted(shown, key=lambda x: x[0]):
        t = seconds(mn["postgres_elapsed"])
        vs1 = f", {one / t:.2f} x parallelism 1" if one else ""
        # The sweep runs before the first pipe: against that one.
        vs = (f"{pipe_at(at) / t:.2f} x the plain pipe" if pipes[0][2] <= at <= pipes[-1][2]
              else f"{pipes[0][0] / t:.2f} x the first pipe")
        print(f"  parallelism {n}: {t:7.1f} s  {mb / t:6.1f} MB/s  {vs}{vs1}")
    print(f"cutover: CircleCI stopped {m['app_stopped_at']} -> checks passed {r['restarted_at']}: "
          f"{(restarted - stopped).total_seconds():.0f} s (migration {m['elapsed']} + restart {r['downtime']}; "
          f"whole apply {apply:.1f} s); {len(r['checks'])} checks passed")
    print_downtime(parts, plain)
    downs = [downtime_of(x[5]) for x in paired]
    missing = [i + 1 for i, d in enumerate(downs) if d is None]
    downtime_ok = not missing
    if missing:
        print(f"downtime: run(s) {missing} at the default lack the provider's stop, start or checks timing line")
    else:
        rel = [d / x[1] for d, x in zip(downs, paired)]
        down = sorted(rel)[len(rel) // 2]
        downtime_ok = down <= 0.8
        print(f"downtime without the start transition, each run against its pipe: "
              f"{' '.join(f'{x:.2f}' for x in rel)} x; median {down:.2f} x (target <= 0.80)")
    print_one_table(one_rows, one_plain, one_plain_rows, one_table)
    if not big_enough:
        print(f"the fixture is under 1 GB ({mb:.0f} MB): raise BENCH_MIGRATION_ROWS")
    return ratio >= 1.3 and big_enough and downtime_ok


def print_one_table(rows, plain, plain_rows, run):
    """The second fixture: its plain pipe and the provider's migration at its default
    parallelism, side by side (no target: what it shows is what parallelism cannot do)."""
    _, m, r, parts, _ = run
    took = seconds(m["postgres_elapsed"])
    mb = m["postgres_bytes"] / 1e6
    xs = {p.split(" ")[0]: sec for _, p, sec in parts if p.endswith(" circle")}
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in xs.items())
    print(f"second fixture: {rows} rows in one table (circle.builds; {plain_rows} rows in the big tables), "
          f"{mb:.0f} MB in the nine databases")
    print(f"  (p) plain pipe {plain:7.1f} s   {mb / plain:6.1f} MB/s;   (m) provider (parallelism "
          f"{m['parallelism']}) {took:7.1f} s   {mb / took:6.1f} MB/s;   ratio {plain / took:.2f}")
    print(f"  the big table's database, step by step: {steps or 'no timing lines'}")
    print("  one table is one pg_dump and one pg_restore --single-transaction: no per-database")
    print("  parallelism can split it; its steps run one after the other")


def downtime_of(parts):
    """CircleCI stopped -> checks passed, less the simulator's start transition (seconds),
    from the provider's timing lines; None when they are missing."""
    ends = {}
    for end, p, _ in parts:
        ends.setdefault(p, end)
    if not all(p in ends for p in ("stop", "start", "checks")):
        return None
    return ends["checks"] - ends["stop"] - TRANSITION


def print_downtime(parts, plain):
    """The cutover's parts from the provider's timing lines, and the downtime (CircleCI
    stopped -> checks passed) against the plain pipe; the simulator's transitions
    (TRANSITION seconds per stop and per start: a setting of the simulator, not the
    provider's cost) apart."""
    def one(name):
        return next(((end, sec) for end, p, sec in parts if p == name), None)

    def each(prefix):
        # "import and verify DB" (a shell without EPOCHREALTIME) is neither step alone.
        return [(end, p, sec) for end, p, sec in parts
                if p.startswith(prefix) and not p.startswith("import and verify ")]

    stop, start, checks = one("stop"), one("start"), one("checks")
    if not (stop and start and checks):
        print(f"downtime: the provider's timing lines are missing ({[p for _, p, _ in parts]})")
        return
    print("cutover, part by part (the provider's `timing:` lines; databases run side by side, so a step's")
    print("time is given summed over its databases and as the span from its first start to its last end):")
    builds = one("wait for builds")
    print(f"  wait for builds (before the stop)          {builds[1] if builds else 0:7.2f} s")
    print(f"  stop (simulator transition {TRANSITION:.0f} s)          {stop[1]:7.2f} s")
    for step in ("export", "import", "verify"):
        xs = each(step + " ")
        if xs:
            span = max(e for e, _, _ in xs) - min(e - sec for e, _, sec in xs)
            print(f"  {step:7} {len(xs)} databases                       {sum(x[2] for x in xs):7.2f} s summed, "
                  f"{span:6.2f} s span")
    migration = one("migration")
    start_begin = start[0] - start[1]
    if migration:
        print(f"  migration, all of it                       {migration[1]:7.2f} s")
        print(f"  files and the restart's own checks before the start:"
              f" {start_begin - migration[0]:7.2f} s")
    print(f"  start (simulator transition {TRANSITION:.0f} s)         {start[1]:7.2f} s")
    print(f"  checks                                     {checks[1]:7.2f} s")
    down = checks[0] - stop[0]
    own = down - TRANSITION
    print(f"downtime, CircleCI stopped -> checks passed: {down:7.2f} s; without the simulator's start transition "
          f"{own:.2f} s = {own / plain:.2f} x the plain pipe's {plain:.1f} s")


if __name__ == "__main__":
    binary = os.environ.get("BIN", os.path.join(ROOT, "target", "release", "terraform-provider-circleci"))
    sys.exit(0 if run(os.path.dirname(os.path.abspath(binary))) else 1)
