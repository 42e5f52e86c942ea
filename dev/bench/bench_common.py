"""What dev/bench/bench.py and dev/bench/bench_migration.py share: the servers' endpoints from
dev/.state/env, the CLI configuration that points Terraform at a built provider, a
terraform runner, and the provider block for the test Services machine."""

import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
STATE = os.path.join(ROOT, "dev", ".state")


def env_file():
    out = {}
    with open(os.path.join(STATE, "env")) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                k, v = line.rstrip("\n").split("=", 1)
                out[k] = v.strip('"')
    return out


E = env_file()


def cli_config(d, plugin_dir):
    """A CLI configuration in `d` whose dev_overrides use the provider in `plugin_dir`."""
    p = os.path.join(d, "cli.tfrc")
    with open(p, "w") as f:
        f.write(
            'provider_installation {\n  dev_overrides {\n'
            f'    "registry.terraform.io/circleci/circleci" = "{plugin_dir}"\n'
            "  }\n  direct {}\n}\n"
        )
    return p


def tf(d, cfg, *args, check=True):
    """terraform ARGS in `d`; exits on a failure (2 is plan's "changes", not one)."""
    env = dict(os.environ, TF_CLI_CONFIG_FILE=cfg, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1")
    env.pop("TF_LOG", None)
    r = subprocess.run(["terraform", *args], cwd=d, env=env, capture_output=True, text=True)
    if check and r.returncode not in (0, 2):
        sys.exit(f"terraform {' '.join(args)} failed in {d}:\n{r.stdout}\n{r.stderr}")
    return r


def provider(extra=""):
    """The terraform block and the provider with the test Services machine, `extra`
    (more provider blocks) inside."""
    return f'''
terraform {{
  required_providers {{
    circleci = {{ source = "circleci/circleci" }}
  }}
}}
provider "circleci" {{
  services_host {{
    host             = "127.0.0.1"
    port             = {E["CIRCLECI_TEST_SSH_PORT"]}
    user             = "root"
    private_key_file = "{E["CIRCLECI_TEST_SSH_KEY_FILE"]}"
    known_hosts_file = "{E["CIRCLECI_TEST_SSH_KNOWN_HOSTS"]}"
  }}
{extra}}}
'''


def redis_resources(n, root):
    """n circleci_external_redis resources on the dev Redis, their files under root."""
    return "".join(
        f'resource "circleci_external_redis" "r{i}" {{\n'
        f'  host        = "127.0.0.1"\n  port        = {E["CIRCLECI_TEST_REDIS_PORT"]}\n'
        f'  config_path = "{root}/r{i}/redis"\n}}\n'
        for i in range(n)
    )
