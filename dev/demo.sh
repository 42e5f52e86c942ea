#!/usr/bin/env bash
# `make demo`: start the real servers on loopback, build and install the provider into
# a local filesystem mirror, `terraform init` + `apply` examples/complete against them,
# and show the files it wrote on the (loopback) Services machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
D=$ROOT/dev/.state
command -v terraform >/dev/null || { echo "make demo: terraform (>= 1.11) is not on PATH" >&2; exit 1; }

dev/services-up.sh
# shellcheck disable=SC1091
set -a; source "$D/env"; set +a
make --no-print-directory install PLUGIN_DIR="$D/plugins" >&2

# The CLI configuration a user would write: our provider from the local mirror,
# everything else from the registry.
cat > "$D/demo.tfrc" <<CFG
provider_installation {
  filesystem_mirror {
    path    = "$D/plugins"
    include = ["registry.terraform.io/circleci/circleci"]
  }
  direct {
    exclude = ["registry.terraform.io/circleci/circleci"]
  }
}
CFG

W=$D/demo
mkdir -p "$W"
cp examples/complete/*.tf "$W/"
cat > "$W/terraform.tfvars" <<VARS
services_host      = "$CIRCLECI_TEST_SSH_HOST"
services_port      = $CIRCLECI_TEST_SSH_PORT
services_user      = "$CIRCLECI_TEST_SSH_USER"
private_key_file   = "$CIRCLECI_TEST_SSH_KEY_FILE"
known_hosts_file   = "$CIRCLECI_TEST_SSH_KNOWN_HOSTS"
redis_host         = "$CIRCLECI_TEST_REDIS_HOST"
redis_port         = $CIRCLECI_TEST_REDIS_PORT
slanger_redis_host = "$CIRCLECI_TEST_REDIS_HOST"
slanger_redis_port = $CIRCLECI_TEST_REDIS_PORT
config_root        = "$CIRCLECI_TEST_SERVICES_ROOT"
VARS

export TF_CLI_CONFIG_FILE=$D/demo.tfrc CHECKPOINT_DISABLE=1
cd "$W"
rm -f .terraform.lock.hcl   # the binary changes with every build
terraform init -input=false -no-color >/dev/null
terraform apply -auto-approve -input=false -no-color

echo
echo "== Files written on the Services machine (sshd on 127.0.0.1:$CIRCLECI_TEST_SSH_PORT; root is $CIRCLECI_TEST_SERVICES_ROOT):"
find "$CIRCLECI_TEST_SERVICES_ROOT" -type f | sort | while read -r f; do
  echo
  echo "-- ${f#"$CIRCLECI_TEST_SERVICES_ROOT"} ($(stat -c '%A %U' "$f"))"
  cat "$f"
done
echo
echo "== A second plan finds nothing to change:"
terraform plan -detailed-exitcode -input=false -no-color | tail -n 3
echo
echo "The servers keep running for you to explore (state in $W)."
echo "Stop them with: make services-down"
