//! The cutover's configurations, shared by its end-to-end tests and the fault suite.

use std::path::Path;

use super::Servers;

pub(crate) const PW: &str = "migr-Pw-1-'\"$x";

/// Where the migration's tests put the external PostgreSQL's CA on the Services machine.
pub(crate) const PG_CA: &str = "/etc/ssl/circleci-test-pg-ca.pem";

/// The external PostgreSQL and MongoDB (their runbook files under `root`) and the
/// migration of the embedded data into them, the Vault key into transit mount `mount`;
/// `extra` goes into the migration's block. Output `m`: the migration. The restore
/// checks the external PostgreSQL's certificate (`verify-full`) against the dev CA,
/// copied onto the Services machine (under `root`) as `PG_CA`.
pub(crate) fn migration_tf(s: &Servers, root: &Path, mount: &str, extra: &str) -> String {
    let ca = root.join(PG_CA.trim_start_matches('/'));
    std::fs::create_dir_all(ca.parent().unwrap()).unwrap();
    std::fs::copy(s.get("CIRCLECI_TEST_PG_CA"), &ca).unwrap();
    format!(
        r#"{provider}
resource "circleci_postgres_databases" "pg" {{
  host                   = "127.0.0.1"
  port                   = {pg}
  password_wo            = {pw}
  password_wo_version    = 1
  deletion_policy        = "drop"
  drop_adopted_databases = true
  config_path            = "{root}/etc/circleconfig/shared/postgresql"
}}
resource "circleci_external_mongo" "mongo" {{
  hosts                = ["127.0.0.1:{mport}"]
  username             = "circle-migr"
  password_wo          = {pw}
  password_wo_version  = 1
  tls                  = false
  drop_user_on_destroy = true
  config_path          = "{root}/etc/circle-installation-customizations"
}}
resource "circleci_data_migration" "m" {{
  config_root  = "{root}"
  stop_timeout = "30s"
  embedded_nomad_endpoint = {enomad:?}
  {extra}
  postgres {{
    host        = circleci_postgres_databases.pg.host
    port        = circleci_postgres_databases.pg.port
    user        = circleci_postgres_databases.pg.user
    password_wo = {pw}
    sslmode     = "verify-full"
    ca_file     = "{PG_CA}"
  }}
  mongo {{
    hosts       = circleci_external_mongo.mongo.hosts
    username    = circleci_external_mongo.mongo.username
    password_wo = {pw}
    tls         = false
  }}
  vault_transit_key {{
    # The embedded Vault as the Services machine reaches it, through it.
    source_address    = {vaddr:?}
    source_token_wo   = {vtoken:?}
    target_mount      = {mount:?}
    via_services_host = true
  }}
}}
output "m" {{
  value     = circleci_data_migration.m
  sensitive = true
}}
"#,
        provider = s.provider_block(""),
        pg = s.pg_port(),
        mport = s.get("CIRCLECI_TEST_MONGO_PORT"),
        pw = super::hcl_str(PW),
        root = root.to_str().unwrap(),
        vaddr = s.get("CIRCLECI_TEST_EMBEDDED_VAULT_ADDR"),
        vtoken = s.get("CIRCLECI_TEST_EMBEDDED_VAULT_TOKEN"),
        enomad = s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"),
    )
}
