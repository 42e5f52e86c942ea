//! circleci_external_mongo end to end: the terraform CLI, the MongoDB stand-in
//! (dev/standins/mongo_standin) in both its modes (current MongoDB, and MongoDB 3.6 as CircleCI
//! Server 2.17 runs it), and the real sshd. What the provider did is checked with
//! PyMongo, MongoDB's own Python driver (dev/fixtures/mongo_client.py), not with the provider's
//! client.

use crate::common;

use common::{closed_port, hcl_str, servers, Servers, Tf};
use serde_json::{json, Value};

const PW: &str = "m0ng@:/?#% \"$pw`";

/// Which stand-in: current MongoDB or 3.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Current,
    V36,
}

impl Mode {
    fn port(self, s: &Servers) -> String {
        s.get(match self {
            Mode::Current => "CIRCLECI_TEST_MONGO_PORT",
            Mode::V36 => "CIRCLECI_TEST_MONGO36_PORT",
        })
        .to_string()
    }

    fn admin_uri(self, s: &Servers) -> String {
        format!(
            "mongodb://{}:{}@127.0.0.1:{}/?authSource=admin",
            s.get("CIRCLECI_TEST_MONGO_USER"),
            s.get("CIRCLECI_TEST_MONGO_PASSWORD"),
            self.port(s)
        )
    }

    /// The provider block with this stand-in as the mongodb admin connection.
    fn provider(self, s: &Servers) -> String {
        s.provider_block_with(
            "",
            &format!(
                "{}{}\n  mongodb {{\n    uri = {:?}\n  }}",
                s.pg_block(),
                s.vault_block(),
                self.admin_uri(s)
            ),
        )
    }
}

fn resource(s: &Servers, mode: Mode, user: &str, path: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
resource "circleci_external_mongo" "circle" {{
  hosts       = ["127.0.0.1:{}"]
  username    = {user:?}
  password_wo = {}
  tls         = false
  options     = {{ maxIdleTimeMS = "600000" }}
  config_path = {path:?}
  {extra}
}}
"#,
        mode.port(s),
        hcl_str(PW)
    )
}

fn sourced(path: &std::path::Path, var: &str) -> String {
    String::from_utf8(common::bash(&format!(
        "source {path:?}; printf '%s' \"${var}\""
    )))
    .unwrap()
}

fn admin(s: &Servers, mode: Mode, cmd: Value) -> Result<Value, (i32, String)> {
    s.pymongo(&mode.admin_uri(s), "admin", cmd)
}

/// The user's document from usersInfo, as the server has it.
fn user_doc(s: &Servers, mode: Mode, user: &str) -> Option<Value> {
    let r = admin(s, mode, json!({"usersInfo": {"user": user, "db": "admin"}})).unwrap();
    r["users"].as_array().unwrap().first().cloned()
}

fn roles(s: &Servers, mode: Mode, user: &str) -> Option<Vec<(String, String)>> {
    let u = user_doc(s, mode, user)?;
    Some(
        u["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["role"].as_str().unwrap().to_string(),
                    r["db"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
    )
}

#[test]
fn lifecycle_current_mongodb() {
    lifecycle(Mode::Current, "e2e-mongo");
}

#[test]
fn lifecycle_mongodb_3_6() {
    lifecycle(Mode::V36, "e2e-mongo36");
}

#[test]
fn drop_user_on_destroy_current_mongodb() {
    drop_user_on_destroy(Mode::Current, "e2e-mongo-drop");
}

#[test]
fn drop_user_on_destroy_mongodb_3_6() {
    drop_user_on_destroy(Mode::V36, "e2e-mongo36-drop");
}

/// Apply, in-place role and password changes, drift, import, destroy.
fn lifecycle(mode: Mode, user: &str) {
    let s = servers();
    let _ = admin(&s, mode, json!({"dropUser": user}));
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("circle-installation-customizations");
    let mine = "# the operator's own settings\nexport JVM_OPTS='-Xmx2g'\n";
    std::fs::write(&path, mine).unwrap();
    let tf = Tf::new(&format!(
        "{}{}",
        mode.provider(&s),
        resource(&s, mode, user, &path, "")
    ));
    tf.apply();

    // The block follows the user's lines, which are untouched.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(mine), "{text}");
    let mut want: Vec<(String, String)> = [
        "circle_ghe",
        "build_state_dev_ghe",
        "containers_dev_ghe",
        "remote_containers_dev_ghe",
    ]
    .iter()
    .map(|d| ("readWrite".to_string(), d.to_string()))
    .collect();
    let mut have = roles(&s, mode, user).expect("user created");
    have.sort();
    want.sort();
    assert_eq!(have, want);

    // The credentials the server keeps: SCRAM-SHA-1 on 3.6 (the only kind it has), both
    // kinds on current MongoDB (no `mechanisms` was sent, so CircleCI's older drivers
    // can log in with SCRAM-SHA-1 too).
    let u = user_doc(&s, mode, user).unwrap();
    match mode {
        Mode::V36 => assert!(u.get("mechanisms").is_none(), "{u}"),
        Mode::Current => assert_eq!(u["mechanisms"], json!(["SCRAM-SHA-1", "SCRAM-SHA-256"])),
    }

    // Every URI, as bash sources it, parses with PyMongo and logs in.
    for var in [
        "CIRCLE_SECRETS_MONGODB_MAIN_URI",
        "CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI",
        "CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI",
        "CIRCLE_SECRETS_MONGODB_CONTAINERS_URI",
        "CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI",
    ] {
        let uri = sourced(&path, var);
        assert!(uri.contains("maxIdleTimeMS=600000"), "{uri}");
        let r = s
            .pymongo(&uri, "admin", json!({"connectionStatus": 1}))
            .unwrap_or_else(|e| panic!("{var}: {e:?}"));
        assert_eq!(
            r["authInfo"]["authenticatedUsers"][0]["user"], user,
            "{var}: {r}"
        );
    }
    let state = std::fs::read_to_string(tf.path().join("terraform.tfstate")).unwrap();
    assert!(
        !state.contains("m0ng@"),
        "the write-only password is in the state"
    );
    assert_eq!(tf.plan_code(), 0);

    // A role revoked out of band shows as drift and comes back in place: a role added
    // by someone else survives, so the user was not dropped and recreated.
    admin(
        &s,
        mode,
        json!({"grantRolesToUser": user, "roles": [{"role": "read", "db": "reporting"}]}),
    )
    .unwrap();
    admin(
        &s,
        mode,
        json!({"revokeRolesFromUser": user, "roles": [{"role": "readWrite", "db": "containers_dev_ghe"}]}),
    )
    .unwrap();
    let plan = tf.run(&["plan", "-no-color", "-detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("containers_dev_ghe"),
        "drift names the role"
    );
    tf.apply();
    let have = roles(&s, mode, user).unwrap();
    assert!(have.contains(&("readWrite".into(), "containers_dev_ghe".into())));
    assert!(
        have.contains(&("read".into(), "reporting".into())),
        "the user must not be recreated"
    );
    assert_eq!(tf.plan_code(), 0);

    // Lines the operator adds after the block survive an update.
    std::fs::write(
        &path,
        format!(
            "{}export AFTER=1\n",
            std::fs::read_to_string(&path).unwrap()
        ),
    )
    .unwrap();
    tf.write_main(
        &format!(
            "{}{}",
            mode.provider(&s),
            resource(&s, mode, user, &path, "replica_set = null")
        )
        .replace("600000", "900000"),
    );
    tf.apply();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with(mine) && text.ends_with("export AFTER=1\n"),
        "{text}"
    );
    assert!(sourced(&path, "CIRCLE_SECRETS_MONGODB_MAIN_URI").contains("900000"));

    // The block removed out of band (the operator's lines kept): drift, repaired in
    // place, the operator's lines still there.
    let without_block = format!("{mine}export AFTER=1\n");
    std::fs::write(&path, &without_block).unwrap();
    let out = tf.run(&["plan", "-no-color", "-detailed-exitcode"]);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{plan}");
    assert!(plan.contains("will be updated in-place"), "{plan}");
    assert!(plan.contains("the MongoDB block is missing from"), "{plan}");
    tf.apply();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(&without_block), "{text}");
    assert!(text.contains("CIRCLE_SECRETS_MONGODB_MAIN_URI"), "{text}");
    assert_eq!(tf.plan_code(), 0);

    // Import by path.
    tf.ok(&["state", "rm", "circleci_external_mongo.circle"]);
    tf.ok(&[
        "import",
        "-no-color",
        "circleci_external_mongo.circle",
        path.to_str().unwrap(),
    ]);
    assert_eq!(
        tf.plan_code(),
        0,
        "an imported resource must match its configuration"
    );

    // Destroy removes the block and only the block; the user stays by default.
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{mine}export AFTER=1\n")
    );
    assert!(roles(&s, mode, user).is_some());
}

#[test]
fn unreachable_mongodb_is_a_clear_error_and_nothing_is_written() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("customizations");
    let port = closed_port();
    let block = format!(
        "\n  mongodb {{\n    uri = \"mongodb://admin:x@127.0.0.1:{port}/?serverSelectionTimeoutMS=2000\"\n  }}"
    );
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block_with(
            &format!(
                "known_hosts_file = {:?}",
                s.get("CIRCLECI_TEST_SSH_KNOWN_HOSTS")
            ),
            &block
        ),
        resource(&s, Mode::Current, "e2e-down", &path, "")
    ));
    let out = tf.fails(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    assert!(
        !out.contains("admin:x@"),
        "the admin connection string must not be shown: {out}"
    );
    assert!(!path.exists());
}

fn drop_user_on_destroy(mode: Mode, user: &str) {
    let s = servers();
    let _ = admin(&s, mode, json!({"dropUser": user}));
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("customizations");
    let tf = Tf::new(&format!(
        "{}{}",
        mode.provider(&s),
        resource(&s, mode, user, &path, "drop_user_on_destroy = true")
    ));
    tf.apply();
    assert!(roles(&s, mode, user).is_some());
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert!(
        roles(&s, mode, user).is_none(),
        "drop_user_on_destroy = true drops the user"
    );
    assert!(
        !path.exists(),
        "the file held only the provider's block, so it goes with it"
    );
}
