#!/usr/bin/env bash
# `make demo`: start the real servers on loopback, build and install the provider into
# a local filesystem mirror, `terraform init` + `apply` examples/complete against them,
# show the files it wrote on the (loopback) Services machine, and CircleCI restarted
# on the Services-machine simulator with the runbook's checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
D=$ROOT/dev/.state
command -v terraform >/dev/null || { echo "make demo: terraform (>= 1.11) is not on PATH" >&2; exit 1; }

dev/services/up.sh
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
postgres_host      = "$CIRCLECI_TEST_PG_HOST"
postgres_port      = $CIRCLECI_TEST_PG_PORT
postgres_ca_file   = "$CIRCLECI_TEST_PG_CA"
vault_address      = "$CIRCLECI_TEST_VAULT_ADDR"
vault_ca_file      = "$CIRCLECI_TEST_VAULT_CA"
rabbitmq_host      = "127.0.0.1"
rabbitmq_port      = $CIRCLECI_TEST_MQ_PORT
nomad_endpoint     = "$CIRCLECI_TEST_CI_NOMAD_ADDR"
nomad_ca_file      = "$CIRCLECI_TEST_TLS_CA"
mongo_hosts        = ["127.0.0.1:$CIRCLECI_TEST_MONGO_PORT"]
mongo_tls          = false # the MongoDB stand-in has no TLS
aws_endpoint       = "$CIRCLECI_TEST_AWS_ENDPOINT" # moto
nomad_servers      = ["nomad-1.internal:4647", "nomad-2.internal:4647", "nomad-3.internal:4647"]
# The simulated CircleCI reaches Vault and Nomad over TLS with the dev CAs.
services_ca_files  = { "dev-vault" = "$CIRCLECI_TEST_VAULT_CA", "dev-services" = "$CIRCLECI_TEST_TLS_CA" }
# The simulator's embedded Vault: a second OpenBao on loopback.
embedded_vault_address = "$CIRCLECI_TEST_EMBEDDED_VAULT_ADDR"
# The simulator's embedded Nomad server (a stand-in that runs while CircleCI does).
embedded_nomad_endpoint = "$CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"
VARS
# moto holds the Nomad client Auto Scaling group enterprise-setup would have made: two
# clients on a launch configuration whose user_data names the Services machine.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
ASG=circleci_nomad_clients_asg
aws_fixture() { "$CIRCLECI_TEST_AWS_PYTHON" "$CIRCLECI_TEST_AWS_FIXTURE" "$@"; }
if [ "$(aws_fixture group --name $ASG | python3 -c 'import json,sys; print(json.load(sys.stdin)["exists"])')" != True ]; then
  aws_fixture setup --name $ASG --kind lc --user-data-file "$CIRCLECI_TEST_NOMAD_USER_DATA" >/dev/null
fi
# Secrets through the environment, as in a CI pipeline.
export TF_VAR_postgres_admin_password="$CIRCLECI_TEST_PG_PASSWORD"
export TF_VAR_mongo_admin_uri="mongodb://$CIRCLECI_TEST_MONGO_USER:$CIRCLECI_TEST_MONGO_PASSWORD@127.0.0.1:$CIRCLECI_TEST_MONGO_PORT/?authSource=admin"
export TF_VAR_mongo_password="demo mongo p@ss"
export TF_VAR_rabbitmq_password="$CIRCLECI_TEST_MQ_PASSWORD"
export TF_VAR_nomad_token="$CIRCLECI_TEST_NOMAD_TOKEN"
export TF_VAR_vault_token="$CIRCLECI_TEST_VAULT_TOKEN"
export TF_VAR_circle_db_password="demo 'circle' password \$1"
export TF_VAR_embedded_vault_token="$CIRCLECI_TEST_EMBEDDED_VAULT_TOKEN"

export TF_CLI_CONFIG_FILE=$D/demo.tfrc CHECKPOINT_DISABLE=1
cd "$W"
rm -f .terraform.lock.hcl   # the binary changes with every build
terraform init -input=false -no-color >/dev/null
# Every run starts from scratch: a previous demo is destroyed first (its Nomad client
# group put back, its files removed). `make test` in between resets the same servers,
# so a previous state may no longer describe them; whatever its destroy cannot undo,
# the reset below does.
if [ -s "$W/terraform.tfstate" ]; then
  echo "== Destroying the previous demo first" >&2
  terraform destroy -auto-approve -input=false -no-color >"$D/demo-destroy.log" 2>&1 ||
    echo "   (its destroy failed, see $D/demo-destroy.log; the reset below starts over anyway)" >&2
  rm -f "$W/terraform.tfstate" "$W/terraform.tfstate.backup"
fi
cd "$ROOT"

# The embedded data the migration carries over: a fresh fixture under the simulator's
# root whose context secrets the embedded OpenBao (in memory, so as old as this
# services-up) encrypted, and targets as a new external server has them: none of the
# runbook's databases, no context-service key.
if [ ! -f "$W/terraform.tfstate" ]; then
  EMB=$CIRCLECI_TEST_SERVICES_ROOT/data/circle
  rm -rf "$EMB/postgres" "$EMB/mongo" "$EMB/external-services-export" "$EMB/external-services-cutover"
  EMBEDDED_VAULT_ADDR=$CIRCLECI_TEST_EMBEDDED_VAULT_ADDR EMBEDDED_VAULT_TOKEN=$CIRCLECI_TEST_EMBEDDED_VAULT_TOKEN \
    BAO=$CIRCLECI_TEST_BAO MONGO_STANDIN=$CIRCLECI_TEST_MONGO_STANDIN PYTHON=$CIRCLECI_TEST_PYTHON \
    dev/fixtures/embedded_fixture.sh "$CIRCLECI_TEST_SERVICES_ROOT" 2000
  for db in circle_ghe build_state_dev_ghe containers_dev_ghe remote_containers_dev_ghe; do
    "$CIRCLECI_TEST_PYTHON" "$CIRCLECI_TEST_MONGO_CLIENT" "$TF_VAR_mongo_admin_uri" "$db" '{"dropDatabase": 1}' >/dev/null
  done
  for db in circle contexts conductor_production contexts_service_production cron_service_production domain federations permissions vms; do
    PGPASSWORD=$CIRCLECI_TEST_PG_PASSWORD psql -X -q -h 127.0.0.1 -p "$CIRCLECI_TEST_PG_PORT" -U postgres -d postgres \
      -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null
  done
  bao_dev() { BAO_ADDR=$CIRCLECI_TEST_VAULT_ADDR BAO_CACERT=$CIRCLECI_TEST_VAULT_CA BAO_TOKEN=$CIRCLECI_TEST_VAULT_TOKEN "$CIRCLECI_TEST_BAO" "$@"; }
  bao_dev write transit/keys/context-service/config deletion_allowed=true >/dev/null 2>&1 || true
  bao_dev delete transit/keys/context-service >/dev/null 2>&1 || true
fi

# The customizations file already holds the operator's own lines: they must survive.
mkdir -p "$CIRCLECI_TEST_SERVICES_ROOT/etc"
[ -f "$CIRCLECI_TEST_SERVICES_ROOT/etc/circle-installation-customizations" ] ||
  printf '# settings of my own, kept by Terraform\nexport JVM_OPTS="-Xmx4g"\n' > "$CIRCLECI_TEST_SERVICES_ROOT/etc/circle-installation-customizations"
cd "$W"
terraform apply -auto-approve -input=false -no-color

echo
echo "== Files written on the Services machine (sshd on 127.0.0.1:$CIRCLECI_TEST_SSH_PORT; root is $CIRCLECI_TEST_SERVICES_ROOT):"
# Not the embedded data or the export under /data (binary; the migration's figures follow).
find "$CIRCLECI_TEST_SERVICES_ROOT" -type f -not -path "*/etc/ssl/*" -not -path "$CIRCLECI_TEST_SERVICES_ROOT/data/*" | sort | while read -r f; do
  echo
  echo "-- ${f#"$CIRCLECI_TEST_SERVICES_ROOT"} ($(stat -c '%A %U' "$f"))"
  cat "$f"
done
echo
echo "== The databases on PostgreSQL (127.0.0.1:$CIRCLECI_TEST_PG_PORT), owner and extensions:"
for db in $(PGPASSWORD=$CIRCLECI_TEST_PG_PASSWORD psql -X -tA -h 127.0.0.1 -p "$CIRCLECI_TEST_PG_PORT" -U postgres -d postgres \
    -c "SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = 'circle' ORDER BY 1"); do
  printf '  %-28s %s\n' "$db" "$(PGPASSWORD=$CIRCLECI_TEST_PG_PASSWORD psql -X -tA -h 127.0.0.1 -p "$CIRCLECI_TEST_PG_PORT" \
    -U postgres -d "$db" -c "SELECT 'owner circle; ' || string_agg(extname, ', ' ORDER BY extname) FROM pg_extension WHERE extname <> 'plpgsql'")"
done
echo
echo "== The Nomad client Auto Scaling group $ASG on moto ($CIRCLECI_TEST_AWS_ENDPOINT):"
aws_fixture group --name $ASG | python3 -c '
import json, sys
g = json.load(sys.stdin)
print("  launch configuration:", g["launch_configuration"])
for i in g["instances"]:
    print("  instance", i["id"], i["state"])'
echo "  its user_data, against the original enterprise-setup one:"
LC=$(aws_fixture group --name $ASG | python3 -c 'import json,sys; print(json.load(sys.stdin)["launch_configuration"])')
aws_fixture lc --name "$LC" | python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin)["user_data"])' > "$D/demo-user-data.sh"
diff "$CIRCLECI_TEST_NOMAD_USER_DATA" "$D/demo-user-data.sh" | sed 's/^/    /' || true
echo
echo "== The embedded data carried over (the simulator's embedded PostgreSQL, MongoDB and Vault):"
terraform output -json migration | python3 -c '
import json, sys
m = json.load(sys.stdin)
print("  ", m["rows"], "rows in", len(m["tables"]), "tables verified on both sides, in", m["elapsed"], "(" + m["throughput"] + ")")
for t, v in sorted(m["tables"].items()):
    print(f"  {t:<52} {v}")
print("  ", m["documents"], "MongoDB documents in", len(m["collections"]), "collections verified on both sides:")
for c, v in sorted(m["collections"].items()):
    print(f"  {c:<52} {v}")
print("  export kept on the Services machine:")
for f, sha in sorted(m["export"].items()):
    print(f"    {f}  sha256 {sha[:16]}...")'
CT=$(PGPASSWORD=$CIRCLECI_TEST_PG_PASSWORD psql -X -tA -h 127.0.0.1 -p "$CIRCLECI_TEST_PG_PORT" -U postgres \
  -d contexts_service_production -c "SELECT ciphertext FROM env_vars WHERE name = 'FIXTURE_SECRET_1'")
PT=$(BAO_ADDR=$CIRCLECI_TEST_VAULT_ADDR BAO_CACERT=$CIRCLECI_TEST_VAULT_CA BAO_TOKEN=$CIRCLECI_TEST_VAULT_TOKEN \
  "$CIRCLECI_TEST_BAO" write -field=plaintext transit/decrypt/context-service ciphertext="$CT" | base64 -d)
echo "  a context secret the embedded Vault encrypted (${CT:0:24}...), decrypted by the external Vault: \"$PT\""
echo
echo "== CircleCI restarted (the Services-machine simulator, dev/standins/circleci_sim.py), the runbook's checks:"
terraform output -json restart | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("  CircleCI", r["version"], "- downtime", r["downtime"], "- checks passed at", r["restarted_at"])
for c in r["checks_passed"]:
    service, what = c.split(": ", 1)
    print(f"  {service:<11} ok  {what}")'
echo
echo "== A second plan finds nothing to change:"
terraform plan -detailed-exitcode -input=false -no-color | tail -n 3
echo
echo "The servers keep running for you to explore (state in $W)."
echo "Stop them with: make services-down"
