//! Weak transport is said at plan time, on the attribute that causes it: a PostgreSQL
//! sslmode below verify-full with a password, http:// Vault and Nomad addresses, and a
//! MongoDB admin connection without TLS while a password is being set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

mod common;

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
        ("MongoDB admin connection without TLS", "password_wo"),
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
