//! No secret leaks, for every resource that handles one: the passwords and tokens go
//! in as ephemeral variables (so Terraform itself keeps them out of saved plans), and
//! after apply, `plan -out` + `show -json`, refresh, import and destroy with
//! `TF_LOG=trace`, none of them — nor its SHA-256, SHA-1 or MD5 (hex or base64), nor its
//! percent-encoding — is in the state (and its backup), the saved plan (every file in
//! it), its JSON, any command's output, or the log. The Vault client token, which the
//! provider makes, is scanned for too.

use crate::common;

use base64::Engine;
use common::{servers, Tf};

/// The forms of `secret` a careless provider might store or print.
fn forms(secret: &str) -> Vec<String> {
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let sha1 = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        secret.as_bytes(),
    );
    let md5 = String::from_utf8(common::bash(&format!(
        "printf '%s' {} | md5sum | cut -d' ' -f1",
        shell_quote(secret)
    )))
    .unwrap()
    .trim()
    .to_string();
    let pct: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    vec![
        secret.to_string(),
        hex(sha256.as_ref()),
        b64(sha256.as_ref()),
        hex(sha1.as_ref()),
        b64(sha1.as_ref()),
        md5,
        pct,
    ]
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn no_secret_in_state_plan_output_or_log() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let p = |f: &str| root.path().join(f);
    s.psql(
        "postgres",
        "DROP DATABASE IF EXISTS e2e_scan_db WITH (FORCE)",
    );
    s.psql("postgres", "DROP ROLE IF EXISTS e2e_scan");
    let mq_pw = s.get("CIRCLECI_TEST_MQ_PASSWORD").to_string();
    let pg_pw = "scan-pg-Secret-7f3a9";
    let mongo_pw = "scan-mongo-Secret-c41e2";
    let nomad_token = s.get("CIRCLECI_TEST_NOMAD_TOKEN").to_string();
    let main = format!(
        r#"{provider}
variable "mq_pw" {{
  type      = string
  ephemeral = true
}}
variable "pg_pw" {{
  type      = string
  ephemeral = true
}}
variable "mongo_pw" {{
  type      = string
  ephemeral = true
}}
variable "nomad_token" {{
  type      = string
  ephemeral = true
}}
resource "circleci_external_rabbitmq" "mq" {{
  host                = "127.0.0.1"
  port                = {mq}
  username            = "circle"
  password_wo         = var.mq_pw
  password_wo_version = 1
  config_path         = {f_mq:?}
}}
resource "circleci_postgres_databases" "pg" {{
  host                 = "127.0.0.1"
  port                 = {pg}
  user                 = "e2e_scan"
  password_wo          = var.pg_pw
  password_wo_version  = 1
  databases            = ["e2e_scan_db"]
  create_user_database = false
  extensions           = {{ "*" = [] }}
  deletion_policy      = "drop"
  config_path          = {f_pg:?}
}}
resource "circleci_external_mongo" "m" {{
  hosts                = ["127.0.0.1:{mongo}"]
  username             = "e2e-scan"
  password_wo          = var.mongo_pw
  password_wo_version  = 1
  tls                  = false
  drop_user_on_destroy = true
  config_path          = {f_mongo:?}
}}
resource "circleci_external_nomad" "n" {{
  endpoint     = {nomad:?}
  ca_cert_file = {ca:?}
  acl_token_wo = var.nomad_token
  config_path  = {f_nomad:?}
}}
resource "circleci_vault_transit_client" "v" {{
  key_name    = "e2e-scan"
  config_path = {f_vault:?}
}}
"#,
        provider = s.provider_block(""),
        mq = s.mq_port(),
        pg = s.pg_port(),
        mongo = s.get("CIRCLECI_TEST_MONGO_PORT"),
        nomad = s.get("CIRCLECI_TEST_NOMAD_ADDR"),
        ca = s.get("CIRCLECI_TEST_TLS_CA"),
        f_mq = p("rabbitmq"),
        f_pg = p("postgresql"),
        f_mongo = p("customizations"),
        f_nomad = p("nomad"),
        f_vault = p("context-service"),
    );
    let tf = Tf::new(&main);
    let log = p("tf.log");
    let run = |args: &[&str]| {
        let out = tf
            .cmd(args)
            .env("TF_LOG", "trace")
            .env("TF_LOG_PATH", &log)
            .env("TF_VAR_mq_pw", &mq_pw)
            .env("TF_VAR_pg_pw", pg_pw)
            .env("TF_VAR_mongo_pw", mongo_pw)
            .env("TF_VAR_nomad_token", &nomad_token)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "terraform {args:?}:\n{text}");
        text
    };
    let mut outputs = String::new();
    outputs += &run(&["apply", "-auto-approve", "-no-color", "-input=false"]);
    let vault_token = String::from_utf8(common::bash(&format!(
        "source {:?}; printf '%s' \"$VAULT__TOKEN\"",
        p("context-service")
    )))
    .unwrap();
    assert!(vault_token.len() > 8, "the Vault token is in its file");
    // The files that hold a secret, and the provider's blocks in them: their plain
    // digests would let a reader test guesses as well as the secret's own.
    let mut file_forms: Vec<(String, String)> = Vec::new();
    for f in [
        "rabbitmq",
        "postgresql",
        "customizations",
        "context-service",
    ] {
        let bytes = std::fs::read(p(f)).unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let start = text.find('\n').map_or(0, |i| i + 1);
        let end = text.rfind("# END").unwrap_or(text.len());
        for (what, b) in [
            ("file", bytes.as_slice()),
            ("block", &text.as_bytes()[start..end]),
        ] {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
            let hex: String = d.as_ref().iter().map(|x| format!("{x:02x}")).collect();
            file_forms.push((format!("plain SHA-256 of the {f} {what}"), hex));
        }
    }
    outputs += &run(&["plan", "-no-color", "-input=false", "-out", "scan.plan"]);
    outputs += &run(&["show", "-json", "scan.plan"]);
    outputs += &run(&[
        "apply",
        "-refresh-only",
        "-auto-approve",
        "-no-color",
        "-input=false",
    ]);
    outputs += &run(&["state", "rm", "circleci_external_rabbitmq.mq"]);
    outputs += &run(&[
        "import",
        "-no-color",
        "-input=false",
        "circleci_external_rabbitmq.mq",
        p("rabbitmq").to_str().unwrap(),
    ]);
    let state = std::fs::read_to_string(tf.path().join("terraform.tfstate")).unwrap();
    assert!(
        state.contains("circleci_vault_transit_client"),
        "the state is there"
    );
    let backup = std::fs::read_to_string(tf.path().join("terraform.tfstate.backup")).unwrap();
    // Every file in the saved plan (a zip), as bytes.
    let plan_files = common::bash(&format!(
        "cd {:?} && python3 -c 'import zipfile,sys; z=zipfile.ZipFile(\"scan.plan\"); [sys.stdout.buffer.write(z.read(n)) for n in z.namelist()]'",
        tf.path()
    ));
    assert!(!plan_files.is_empty());
    let plan_text = String::from_utf8_lossy(&plan_files).into_owned();
    outputs += &run(&["destroy", "-auto-approve", "-no-color", "-input=false"]);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.len() > 10_000, "the trace log is there");
    for (name, secret) in [
        ("RabbitMQ password", mq_pw.as_str()),
        ("PostgreSQL password", pg_pw),
        ("MongoDB password", mongo_pw),
        ("Nomad ACL token", nomad_token.as_str()),
        ("Vault client token", vault_token.as_str()),
    ] {
        for form in forms(secret) {
            for (place, text) in [
                ("the state", &state),
                ("the state backup", &backup),
                ("the saved plan", &plan_text),
                ("command output and plan JSON", &outputs),
                ("the trace log", &log_text),
            ] {
                assert!(
                    !text.contains(&form),
                    "the {name} (as {form:?}) is in {place}"
                );
            }
        }
    }
    for (name, form) in &file_forms {
        for (place, text) in [
            ("the state", &state),
            ("the state backup", &backup),
            ("the saved plan", &plan_text),
            ("command output and plan JSON", &outputs),
            ("the trace log", &log_text),
        ] {
            assert!(!text.contains(form.as_str()), "the {name} is in {place}");
        }
    }
    s.psql(
        "postgres",
        "DROP DATABASE IF EXISTS e2e_scan_db WITH (FORCE)",
    );
    s.psql("postgres", "DROP ROLE IF EXISTS e2e_scan");
}
