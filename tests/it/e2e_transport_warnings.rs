//! Weak transport is said at plan time, on the attribute that causes it: a PostgreSQL
//! sslmode below verify-full with a password, http:// Vault and Nomad addresses, and a
//! MongoDB admin connection without TLS while a password is being set. A diagnostic
//! about a secret (a literal password, the admin connection string) is never attached
//! to it: Terraform prints the source line of the attribute a diagnostic is on.

use crate::common;

use common::{servers, Tf};

#[test]
fn weak_transport_is_a_warning_on_the_attribute() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let p = |n: &str| root.path().join(n);
    let mongodb = format!(
        "\n  mongodb {{\n    uri = \"mongodb://admin:x@127.0.0.1:{}/?authSource=admin\"\n  }}",
        s.get("CIRCLECI_TEST_MONGO_PORT")
    );
    let pg = format!(
        "\n  postgres {{\n    host     = \"127.0.0.1\"\n    port     = {}\n    username = \"postgres\"\n    \
         password = \"x\"\n    sslmode  = \"require\"\n  }}{}{mongodb}",
        s.pg_port(),
        s.vault_block(),
    );
    let tf = Tf::new(&format!(
        r#"{}
resource "circleci_external_nomad" "n" {{
  endpoint    = "http://nomad.internal:4646"
  verify      = false
  config_path = {:?}
}}

resource "circleci_vault_transit_client" "v" {{
  address_for_services = "http://vault.internal:8200"
  config_path          = {:?}
}}

resource "circleci_external_mongo" "m" {{
  hosts       = ["127.0.0.1:27017"]
  password_wo = "new password"
  config_path = {:?}
}}
"#,
        s.provider_block_with("", &pg),
        p("nomad"),
        p("vault"),
        p("customizations"),
    ));
    let out = tf.run(&["plan", "-no-color"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for (summary, attr) in [
        ("PostgreSQL server identity not checked", "sslmode"),
        ("Nomad endpoint without TLS", "endpoint"),
        ("Vault address without TLS", "address_for_services"),
        // On the resource (password_wo is write-only), the attribute named in words.
        (
            "MongoDB admin connection without TLS",
            "This is about password_wo",
        ),
    ] {
        let at = text
            .find(&format!("Warning: {summary}"))
            .unwrap_or_else(|| panic!("no warning {summary:?} in:\n{text}"));
        let block = &text[at..text[at..].find("\n\n\n").map_or(text.len(), |e| at + e)];
        assert!(
            block.contains(attr),
            "{summary} must point at {attr}:\n{block}"
        );
    }
}

/// Terraform's output (both streams) of `args`, and whether it succeeded.
fn output(tf: &Tf, args: &[&str]) -> (bool, String) {
    let out = tf.run(args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Warnings and errors about a literal password and a literal admin connection string,
/// through the terraform CLI: the diagnostics are there, the secrets are not.
#[test]
fn diagnostics_about_secrets_never_print_them() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let mongo_port = s.get("CIRCLECI_TEST_MONGO_PORT");
    let provider = |uri: &str| {
        s.provider_block_with("", &format!("\n  mongodb {{\n    uri = \"{uri}\"\n  }}"))
    };
    let mongo = format!(
        "\nresource \"circleci_external_mongo\" \"m\" {{\n  hosts       = [\"127.0.0.1:27017\"]\n  \
         password    = \"Literal-Mongo-Pw-8c1\"\n  config_path = {:?}\n}}\n",
        root.path().join("customizations")
    );
    let check = |tf: &Tf, args: &[&str], ok: bool, needles: &[&str], secrets: &[&str]| {
        let (success, text) = output(tf, args);
        assert_eq!(success, ok, "{text}");
        for x in secrets {
            assert!(!text.contains(x), "{x:?} is printed:\n{text}");
        }
        let flat = common::flat(&text);
        for n in needles {
            assert!(flat.contains(n), "missing {n:?} in:\n{text}");
        }
    };

    // A literal password with a warning on it (the admin connection has no TLS).
    let plain = format!("mongodb://admin:Uri-Secret-3f9@127.0.0.1:{mongo_port}/?authSource=admin");
    let tf = Tf::new(&format!("{}{mongo}", provider(&plain)));
    check(
        &tf,
        &["plan", "-no-color"],
        true,
        &[
            "Warning: MongoDB admin connection without TLS",
            "This is about password",
        ],
        &["Literal-Mongo-Pw-8c1", "Uri-Secret-3f9"],
    );

    // The admin connection string with a warning (certificate checks off) and with an
    // error (a password holding an unencoded '/').
    let insecure = format!(
        "mongodb://admin:Uri-Secret-3f9@127.0.0.1:{mongo_port}/?authSource=admin&tls=true&tlsInsecure=true"
    );
    tf.write_main(&format!("{}{mongo}", provider(&insecure)));
    check(
        &tf,
        &["plan", "-no-color"],
        true,
        &[
            "Warning: MongoDB certificate checks turned off",
            "tlsInsecure",
        ],
        &["Uri-Secret-3f9"],
    );
    let bad = format!("mongodb://admin:Uri/Secret?3f9@127.0.0.1:{mongo_port}/?authSource=admin");
    tf.write_main(&format!("{}{mongo}", provider(&bad)));
    check(
        &tf,
        &["plan", "-no-color"],
        false,
        &["Error: Invalid connection string", "percent-encode"],
        &["Uri/Secret", "Secret?3f9", "Uri-Secret"],
    );

    // A literal password with an error on it: the login refused at apply.
    let tf = Tf::new(&format!(
        "{}\nresource \"circleci_external_rabbitmq\" \"mq\" {{\n  host        = \"127.0.0.1\"\n  port        = {}\n  \
         username    = \"circle\"\n  password    = \"Literal-Mq-Pw-77e\"\n  config_path = {:?}\n}}\n",
        s.provider_block(""),
        s.mq_port(),
        root.path().join("rabbitmq")
    ));
    check(
        &tf,
        &["apply", "-auto-approve", "-no-color"],
        false,
        &["Error: RabbitMQ login refused", "This is about password"],
        &["Literal-Mq-Pw-77e"],
    );
    assert!(!root.path().join("rabbitmq").exists());
}
