//! Nothing of the operator's is lost: every file the provider writes starts out with
//! the operator's own lines, bytes that are not UTF-8 among them; apply, an update and
//! destroy leave those bytes exactly as they were. The provider writes only its block.

use crate::common;

use common::{hcl_str, servers, Tf};

const OPERATOR: &[u8] =
    b"# the operator's own settings\nexport JVM_OPTS='-Xmx2g'\n# \xff\xfe latin-1 caf\xe9\n";

#[test]
fn operator_lines_survive_apply_update_and_destroy() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let files = [
        "redis",
        "slanger",
        "rabbitmq",
        "nomad",
        "postgresql",
        "context-service",
        "customizations",
    ];
    for f in files {
        std::fs::write(root.path().join(f), OPERATOR).unwrap();
    }
    let p = |f: &str| root.path().join(f);
    s.psql(
        "postgres",
        "DROP DATABASE IF EXISTS e2e_keep_db WITH (FORCE)",
    );
    s.psql("postgres", "DROP ROLE IF EXISTS e2e_keep");
    let main = |version: i32| {
        format!(
            r#"{provider}
resource "circleci_external_redis" "shared" {{
  host        = "127.0.0.1"
  port        = {redis}
  config_path = {f_redis:?}
}}
resource "circleci_external_redis" "slanger" {{
  host        = "127.0.0.1"
  port        = {redis}
  purpose     = "slanger"
  config_path = {f_slanger:?}
}}
resource "circleci_external_rabbitmq" "mq" {{
  host                = "127.0.0.1"
  port                = {mq}
  username            = "circle"
  password_wo         = {mq_pw}
  password_wo_version = {version}
  config_path         = {f_mq:?}
}}
resource "circleci_external_nomad" "nomad" {{
  endpoint    = "https://nomad-{version}.internal:4646"
  verify      = false
  config_path = {f_nomad:?}
}}
resource "circleci_postgres_databases" "pg" {{
  host                 = "127.0.0.1"
  port                 = {pg}
  user                 = "e2e_keep"
  password_wo          = "keep pw {version}"
  password_wo_version  = {version}
  databases            = ["e2e_keep_db"]
  create_user_database = false
  extensions           = {{ "*" = [] }}
  deletion_policy      = "drop"
  config_path          = {f_pg:?}
}}
resource "circleci_vault_transit_client" "cs" {{
  key_name     = "e2e-keep"
  token_period = "{period}h"
  config_path  = {f_vault:?}
}}
resource "circleci_external_mongo" "m" {{
  hosts                = ["127.0.0.1:{mongo}"]
  username             = "e2e-keep"
  password_wo          = "keep mongo {version}"
  password_wo_version  = {version}
  tls                  = false
  drop_user_on_destroy = true
  config_path          = {f_mongo:?}
}}
"#,
            provider = s.provider_block(""),
            redis = s.redis_port(),
            mq = s.mq_port(),
            mq_pw = hcl_str(s.get("CIRCLECI_TEST_MQ_PASSWORD")),
            pg = s.pg_port(),
            period = 100 + version,
            mongo = s.get("CIRCLECI_TEST_MONGO_PORT"),
            f_redis = p("redis"),
            f_slanger = p("slanger"),
            f_mq = p("rabbitmq"),
            f_nomad = p("nomad"),
            f_pg = p("postgresql"),
            f_vault = p("context-service"),
            f_mongo = p("customizations"),
        )
    };
    let kept = |when: &str| {
        for f in files {
            let bytes = std::fs::read(p(f)).unwrap();
            assert!(
                bytes.starts_with(OPERATOR),
                "{when}: {f} lost the operator's bytes:\n{}",
                String::from_utf8_lossy(&bytes)
            );
            assert!(
                String::from_utf8_lossy(&bytes).contains("# BEGIN terraform-provider-circleci"),
                "{when}: {f} has no block"
            );
        }
    };
    let tf = Tf::new(&main(1));
    tf.apply();
    kept("after apply");
    assert_eq!(tf.plan_code(), 0);
    // An update of every resource (new passwords, endpoint, token period).
    tf.write_main(&main(2));
    tf.apply();
    kept("after update");
    assert!(
        String::from_utf8_lossy(&std::fs::read(p("nomad")).unwrap()).contains("nomad-2.internal")
    );
    assert_eq!(tf.plan_code(), 0);
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    for f in files {
        assert_eq!(
            std::fs::read(p(f)).unwrap(),
            OPERATOR,
            "after destroy, {f} must be exactly the operator's bytes again"
        );
    }
}
