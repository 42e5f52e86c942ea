//! circleci_external_mongo end to end: the terraform CLI, the MongoDB stand-in
//! (dev/mongo-standin) through the official driver, and the real sshd.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

mod common;

use common::{closed_port, hcl_str, servers, Servers, Tf};
use mongodb::bson::doc;

const PW: &str = "m0ng@:/?#% \"$pw`";

fn resource(s: &Servers, user: &str, path: &std::path::Path, extra: &str) -> String {
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
        s.get("CIRCLECI_TEST_MONGO_PORT"),
        hcl_str(PW)
    )
}

fn sourced(path: &std::path::Path, var: &str) -> String {
    String::from_utf8(common::bash(&format!(
        "source {path:?}; printf '%s' \"${var}\""
    )))
    .unwrap()
}

async fn admin(s: &Servers) -> mongodb::Client {
    mongodb::Client::with_uri_str(s.mongo_admin_uri())
        .await
        .unwrap()
}

async fn roles(s: &Servers, user: &str) -> Option<Vec<(String, String)>> {
    let r = admin(s)
        .await
        .database("admin")
        .run_command(doc! {"usersInfo": {"user": user, "db": "admin"}})
        .await
        .unwrap();
    let users = r.get_array("users").unwrap();
    let u = users.first()?.as_document()?;
    Some(
        u.get_array("roles")
            .unwrap()
            .iter()
            .map(|r| {
                let r = r.as_document().unwrap();
                (
                    r.get_str("role").unwrap().to_string(),
                    r.get_str("db").unwrap().to_string(),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_block_user_roles_in_place_import_destroy() {
    let s = servers();
    let user = "e2e-mongo";
    let _ = admin(&s)
        .await
        .database("admin")
        .run_command(doc! {"dropUser": user})
        .await;
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("circle-installation-customizations");
    let mine = "# the operator's own settings\nexport JVM_OPTS='-Xmx2g'\n";
    std::fs::write(&path, mine).unwrap();
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        resource(&s, user, &path, "")
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
    let mut have = roles(&s, user).await.expect("user created");
    have.sort();
    want.sort();
    assert_eq!(have, want);

    // Every URI, as bash sources it, parses with the driver and logs in.
    for var in [
        "CIRCLE_SECRETS_MONGODB_MAIN_URI",
        "CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI",
        "CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI",
        "CIRCLE_SECRETS_MONGODB_CONTAINERS_URI",
        "CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI",
    ] {
        let uri = sourced(&path, var);
        assert!(uri.contains("maxIdleTimeMS=600000"), "{uri}");
        let c = mongodb::Client::with_uri_str(&uri).await.unwrap();
        c.database("admin")
            .run_command(doc! {"usersInfo": user})
            .await
            .unwrap_or_else(|e| panic!("{var}: {e}"));
    }
    let state = std::fs::read_to_string(tf.path().join("terraform.tfstate")).unwrap();
    assert!(
        !state.contains("m0ng@"),
        "the write-only password is in the state"
    );
    assert_eq!(tf.plan_code(), 0);

    // A role revoked out of band shows as drift and comes back in place: a role added
    // by someone else survives, so the user was not dropped and recreated.
    let a = admin(&s).await;
    a.database("admin")
        .run_command(
            doc! {"grantRolesToUser": user, "roles": [{"role": "read", "db": "reporting"}]},
        )
        .await
        .unwrap();
    a.database("admin")
        .run_command(doc! {"revokeRolesFromUser": user, "roles": [{"role": "readWrite", "db": "containers_dev_ghe"}]})
        .await
        .unwrap();
    let plan = tf.run(&["plan", "-no-color", "-detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("containers_dev_ghe"),
        "drift names the role"
    );
    tf.apply();
    let have = roles(&s, user).await.unwrap();
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
            s.provider_block(""),
            resource(&s, user, &path, "replica_set = null")
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
    assert!(roles(&s, user).await.is_some());
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
        resource(&s, "e2e-down", &path, "")
    ));
    let out = tf.fails(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    assert!(
        !out.contains("admin:x@"),
        "the admin connection string must not be shown: {out}"
    );
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_user_on_destroy_drops_only_when_asked() {
    let s = servers();
    let user = "e2e-mongo-drop";
    let _ = admin(&s)
        .await
        .database("admin")
        .run_command(doc! {"dropUser": user})
        .await;
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("customizations");
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        resource(&s, user, &path, "drop_user_on_destroy = true")
    ));
    tf.apply();
    assert!(roles(&s, user).await.is_some());
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert!(
        roles(&s, user).await.is_none(),
        "drop_user_on_destroy = true drops the user"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "",
        "only the block was in the file"
    );
}
