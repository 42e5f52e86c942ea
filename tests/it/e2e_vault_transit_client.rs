//! circleci_vault_transit_client end to end: the real terraform CLI, a real Vault API
//! (OpenBao in dev mode, TLS with its own CA) and the real sshd.

use crate::common;

use common::{closed_port, mode_of, servers, Servers, Tf};

fn resource(key: &str, path: &std::path::Path, extra: &str) -> String {
    format!(
        "\nresource \"circleci_vault_transit_client\" \"cs\" {{\n  key_name    = {key:?}\n  config_path = {path:?}\n  {extra}\n}}\n"
    )
}

fn token_in(path: &std::path::Path) -> String {
    String::from_utf8(common::bash(&format!(
        "source {path:?}; printf '%s' \"$VAULT__TOKEN\""
    )))
    .unwrap()
}

/// Encrypts and decrypts with `token`; true when both work.
fn can_use_key(s: &Servers, token: &str, key: &str) -> bool {
    let out = s.bao(
        token,
        &[
            "write",
            "-field=ciphertext",
            &format!("transit/encrypt/{key}"),
            "plaintext=aGVsbG8=",
        ],
    );
    if !out.status.success() {
        return false;
    }
    let ct = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = s.bao(
        token,
        &[
            "write",
            "-field=plaintext",
            &format!("transit/decrypt/{key}"),
            &format!("ciphertext={ct}"),
        ],
    );
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "aGVsbG8="
}

fn token_valid(s: &Servers, token: &str) -> bool {
    s.bao(token, &["token", "lookup"]).status.success()
}

#[test]
fn lifecycle_token_never_in_state_revoke_renew_import_destroy() {
    let s = servers();
    let key = "e2e-lifecycle";
    let root = tempfile::tempdir().unwrap();
    let path = root
        .path()
        .join("etc/circleconfig/context-service/customizations");
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        resource(key, &path, "")
    ));
    tf.apply();

    // The file, as bash sources it, with a working token.
    assert_eq!(mode_of(&path), 0o600);
    let token = token_in(&path);
    assert!(token.len() > 10);
    let vars = String::from_utf8(common::bash(&format!(
        "source {path:?}; printf '%s|%s|%s|%s|%s' \"$VAULT__SCHEME\" \"$VAULT__HOST\" \"$VAULT__PORT\" \"$VAULT__URL\" \"$VAULT__MOUNT__TRANSIT\""
    )))
    .unwrap();
    let addr = s.get("CIRCLECI_TEST_VAULT_ADDR");
    let port = addr.rsplit(':').next().unwrap();
    assert_eq!(vars, format!("https|127.0.0.1|{port}|{addr}|transit"));
    assert!(
        can_use_key(&s, &token, key),
        "the token must encrypt and decrypt with its key"
    );
    // Policy enforced: nothing else.
    s.bao_ok(&["write", "-f", "transit/keys/e2e-other"]);
    assert!(
        !can_use_key(&s, &token, "e2e-other"),
        "the token must not use another key"
    );
    assert!(!s.bao(&token, &["policy", "list"]).status.success());
    // An orphan periodic token with default + the policy.
    let lookup = s.bao_ok(&["token", "lookup", "-format=json", &token]);
    let j: serde_json::Value = serde_json::from_str(&lookup).unwrap();
    assert_eq!(j["data"]["orphan"], true);
    assert_eq!(j["data"]["period"], 168 * 3600);
    let policies: Vec<&str> = j["data"]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(policies, ["default", "e2e-lifecycle_policy"]);

    // The token is in neither the state nor `terraform show -json`.
    let state = std::fs::read_to_string(tf.path().join("terraform.tfstate")).unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&s.bao_ok(&["status", "-format=json"])).unwrap();
    let version = status["version"].as_str().unwrap();
    assert!(
        state.contains(&format!("\"server_version\": \"{version}\"")),
        "{state}"
    );
    assert!(!state.contains(&token), "token in terraform.tfstate");
    let show = tf.ok(&["show", "-json", "-no-color"]);
    assert!(!show.contains(&token), "token in terraform show -json");
    assert!(
        state.contains(j["data"]["accessor"].as_str().unwrap()),
        "the accessor is kept"
    );
    assert_eq!(tf.plan_code(), 0);

    // TF_LOG=trace shows nothing of the token either.
    let out = tf
        .cmd(&["plan", "-no-color"])
        .env("TF_LOG", "trace")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains("provider.terraform-provider-circleci"),
        "provider logs expected in the trace"
    );
    assert!(!log.contains(&token), "token in TF_LOG=trace output");

    // The policy changed out of band: plan shows it, apply restores it.
    let other = root.path().join("other.hcl");
    std::fs::write(
        &other,
        "path \"secret/x\" {\n  capabilities = [\"read\"]\n}\n",
    )
    .unwrap();
    s.bao_ok(&[
        "policy",
        "write",
        "e2e-lifecycle_policy",
        other.to_str().unwrap(),
    ]);
    assert!(
        !can_use_key(&s, &token, key),
        "the edited policy no longer allows the key"
    );
    assert_eq!(tf.plan_code(), 2);
    tf.apply();
    assert!(can_use_key(&s, &token, key));

    // Revoked out of band: plan wants a new token, apply writes one that works.
    s.bao_ok(&["token", "revoke", &token]);
    let plan = tf.run(&["plan", "-no-color", "-detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("token_accessor"), "{text}");
    assert!(text.contains("revoked or has expired"), "{text}");
    tf.apply();
    let token2 = token_in(&path);
    assert_ne!(token2, token);
    assert!(can_use_key(&s, &token2, key));
    assert_eq!(tf.plan_code(), 0);

    // Import by config path: the token in the file names the accessor.
    tf.ok(&["state", "rm", "circleci_vault_transit_client.cs"]);
    tf.ok(&[
        "import",
        "-no-color",
        "circleci_vault_transit_client.cs",
        path.to_str().unwrap(),
    ]);
    assert_eq!(
        tf.plan_code(),
        0,
        "an imported resource must match its configuration"
    );

    // Destroy: token revoked, policy and file gone, key kept.
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert!(!path.exists());
    assert!(!token_valid(&s, &token2));
    assert!(!s
        .bao(
            s.get("CIRCLECI_TEST_VAULT_TOKEN"),
            &["policy", "read", "e2e-lifecycle_policy"]
        )
        .status
        .success());
    s.bao_ok(&["read", &format!("transit/keys/{key}")]);
}

#[test]
fn refresh_renews_a_token_near_expiry_and_destroy_can_delete_the_key() {
    let s = servers();
    let key = "e2e-renew";
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("customizations");
    // Its own transit engine, enabled by the resource (create_mount).
    let extra = "token_period = \"10m\"\n  token_renew_before = \"9m58s\"\n  delete_key_on_destroy = true\n  \
                 transit_mount = \"e2e-transit-renew\"\n  create_mount = true";
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        resource(key, &path, extra)
    ));
    tf.apply();
    assert!(
        s.bao_ok(&["secrets", "list"])
            .contains("e2e-transit-renew/"),
        "create_mount enables the engine"
    );
    let token = token_in(&path);
    let ttl = |s: &Servers| -> i64 {
        let j: serde_json::Value =
            serde_json::from_str(&s.bao_ok(&["token", "lookup", "-format=json", &token])).unwrap();
        j["data"]["ttl"].as_i64().unwrap()
    };
    std::thread::sleep(std::time::Duration::from_secs(3));
    let before = ttl(&s);
    assert!(before <= 597, "ttl {before}");
    tf.ok(&["apply", "-refresh-only", "-auto-approve", "-no-color"]);
    let after = ttl(&s);
    assert!(
        after > before,
        "refresh must renew the token: ttl {before} -> {after}"
    );
    assert_eq!(token_in(&path), token, "renewal keeps the token");

    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert!(!s
        .bao(
            s.get("CIRCLECI_TEST_VAULT_TOKEN"),
            &["read", &format!("e2e-transit-renew/keys/{key}")]
        )
        .status
        .success());
}

#[test]
fn vault_unreachable_or_untrusted_fails_naming_the_address_and_writes_nothing() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("customizations");
    let port = closed_port();
    let vault = format!(
        "\n  vault {{\n    address = \"https://127.0.0.1:{port}\"\n    token = \"root\"\n    ca_cert_file = {:?}\n  }}",
        s.get("CIRCLECI_TEST_VAULT_CA")
    );
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block_with(
            &format!(
                "known_hosts_file = {:?}",
                s.get("CIRCLECI_TEST_SSH_KNOWN_HOSTS")
            ),
            &vault
        ),
        resource("e2e-unreach", &path, "")
    ));
    let out = tf.fails(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.contains(&format!("https://127.0.0.1:{port}")), "{out}");
    assert!(!path.exists());

    // The right address with a CA that did not sign Vault's certificate.
    let vault = format!(
        "\n  vault {{\n    address = {:?}\n    token = \"root\"\n    ca_cert_file = {:?}\n  }}",
        s.get("CIRCLECI_TEST_VAULT_ADDR"),
        s.get("CIRCLECI_TEST_PG_WRONG_CA")
    );
    tf.write_main(&format!(
        "{}{}",
        s.provider_block_with(
            &format!(
                "known_hosts_file = {:?}",
                s.get("CIRCLECI_TEST_SSH_KNOWN_HOSTS")
            ),
            &vault
        ),
        resource("e2e-unreach", &path, "")
    ));
    let out = tf.fails(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    assert!(!path.exists());
    assert!(!s
        .bao(
            s.get("CIRCLECI_TEST_VAULT_TOKEN"),
            &["read", "transit/keys/e2e-unreach"]
        )
        .status
        .success());
}
