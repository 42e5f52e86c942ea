//! circleci_external_rabbitmq (real RabbitMQ) and circleci_external_nomad (the Nomad
//! stand-in, dev/standins/nomad_standin.py) end to end through the terraform CLI.

use crate::common;

use common::{closed_port, hcl_str, mode_of, servers, NomadStandin, Tf};

fn mq(path: &std::path::Path, port: u16, pw: &str) -> String {
    format!(
        "\nresource \"circleci_external_rabbitmq\" \"mq\" {{\n  host        = \"127.0.0.1\"\n  port        = {port}\n  \
         username    = \"circle\"\n  password_wo = {}\n  password_wo_version = 1\n  config_path = {path:?}\n}}\n",
        hcl_str(pw)
    )
}

fn nomad(endpoint: &str, ca: &str, token: &str, path: &std::path::Path) -> String {
    format!(
        "\nresource \"circleci_external_nomad\" \"nomad\" {{\n  endpoint     = {endpoint:?}\n  ca_cert_file = {ca:?}\n  \
         acl_token_wo = {token:?}\n  config_path  = {path:?}\n}}\n"
    )
}

fn sourced(path: &std::path::Path, var: &str) -> String {
    String::from_utf8(common::bash(&format!(
        "source {path:?}; printf '%s' \"${var}\""
    )))
    .unwrap()
}

#[test]
fn both_lifecycles_apply_drift_import_destroy() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let mq_path = root.path().join("etc/circleconfig/shared/rabbitmq");
    let nomad_path = root.path().join("etc/circleconfig/shared/nomad");
    let pw = s.get("CIRCLECI_TEST_MQ_PASSWORD");
    let main = format!(
        "{}{}{}",
        s.provider_block(""),
        mq(&mq_path, s.mq_port(), pw),
        nomad(
            s.get("CIRCLECI_TEST_NOMAD_ADDR"),
            s.get("CIRCLECI_TEST_TLS_CA"),
            s.get("CIRCLECI_TEST_NOMAD_TOKEN"),
            &nomad_path
        )
    );
    let tf = Tf::new(&main);
    // The plan shows each server's version, read before anything is written.
    let plan = common::flat(&tf.ok(&["plan", "-no-color"]));
    assert!(plan.contains("+ server_version = \"0.5.6\""), "{plan}");
    assert!(plan.contains("+ server_version = \"3."), "{plan}");
    assert!(
        !plan.contains("server_version = (known after apply)"),
        "{plan}"
    );
    tf.apply();
    assert_eq!(mode_of(&mq_path), 0o600);
    assert_eq!(sourced(&mq_path, "RABBITMQ_HOST"), "127.0.0.1");
    assert_eq!(sourced(&mq_path, "RABBITMQ_PORT"), s.mq_port().to_string());
    assert_eq!(sourced(&mq_path, "RABBITMQ_USERNAME"), "circle");
    assert_eq!(sourced(&mq_path, "RABBITMQ_PASSWORD"), pw);
    assert_eq!(
        sourced(&nomad_path, "NOMAD_API_ENDPOINT"),
        s.get("CIRCLECI_TEST_NOMAD_ADDR")
    );
    let state = std::fs::read_to_string(tf.path().join("terraform.tfstate")).unwrap();
    assert!(
        !state.contains(pw),
        "the write-only password is in the state"
    );
    assert!(
        !state.contains(s.get("CIRCLECI_TEST_NOMAD_TOKEN")),
        "the write-only token is in the state"
    );
    assert!(state.contains("\"leader\": \"127.0.0.1:4647\""), "{state}");
    assert!(state.contains("\"server_version\": \"0.5.6\""), "{state}");
    assert!(state.contains("\"server_version\": \"3."), "{state}");
    assert_eq!(tf.plan_code(), 0);

    // The file holds the password: the state keeps a keyed digest of it (the key is
    // only on the Services machine, see e2e_file_digest), never its plain SHA-256
    // (computed here by coreutils), which would let a reader of the state test password
    // guesses offline.
    let plain = String::from_utf8(common::bash(&format!(
        "sha256sum {mq_path:?} | cut -d' ' -f1"
    )))
    .unwrap();
    assert_eq!(plain.trim().len(), 64);
    assert!(
        !state.contains(plain.trim()),
        "the plain SHA-256 of the file is in the state"
    );
    assert!(state.contains("\"file_sha256\": \"hmac-sha256$"), "{state}");

    // Out-of-band edits are drift; apply repairs them.
    std::fs::write(&mq_path, "export RABBITMQ_HOST=\"elsewhere\"\n").unwrap();
    std::fs::write(
        &nomad_path,
        "export NOMAD_API_ENDPOINT=\"https://other:4646\"\n",
    )
    .unwrap();
    assert_eq!(tf.plan_code(), 2);
    tf.apply();
    assert_eq!(sourced(&mq_path, "RABBITMQ_HOST"), "127.0.0.1");
    assert_eq!(
        sourced(&nomad_path, "NOMAD_API_ENDPOINT"),
        s.get("CIRCLECI_TEST_NOMAD_ADDR")
    );
    assert_eq!(tf.plan_code(), 0);

    // A removed file is drift, written again by an in-place update.
    std::fs::remove_file(&nomad_path).unwrap();
    let out = tf.run(&["plan", "-no-color", "-detailed-exitcode"]);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{plan}");
    assert!(
        plan.contains("circleci_external_nomad.nomad will be updated in-place"),
        "{plan}"
    );
    tf.apply();
    assert!(nomad_path.exists());

    // Import both by path.
    tf.ok(&[
        "state",
        "rm",
        "circleci_external_rabbitmq.mq",
        "circleci_external_nomad.nomad",
    ]);
    tf.ok(&[
        "import",
        "-no-color",
        "circleci_external_rabbitmq.mq",
        mq_path.to_str().unwrap(),
    ]);
    tf.ok(&[
        "import",
        "-no-color",
        "circleci_external_nomad.nomad",
        nomad_path.to_str().unwrap(),
    ]);
    let plan = tf.run(&["plan", "-no-color", "-detailed-exitcode"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    // Only what no file records may differ (the rotation counter of the write-only
    // password, the CA file the check uses); the files themselves match.
    assert!(!text.contains("file_sha256"), "{text}");
    assert!(!text.contains("must be replaced"), "{text}");
    assert!(text.contains("+ password_wo_version = 1"), "{text}");
    assert!(text.contains("+ ca_cert_file"), "{text}");
    tf.apply();
    assert_eq!(tf.plan_code(), 0);

    // Destroy removes the blocks. The lines written into the RabbitMQ file out of band
    // are not the provider's and stay; the Nomad file (re-created by the provider after
    // it was removed) held only the block and goes.
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(
        std::fs::read_to_string(&mq_path).unwrap(),
        "export RABBITMQ_HOST=\"elsewhere\"\n"
    );
    assert!(!nomad_path.exists());
}

#[test]
fn rabbitmq_bad_password_or_down_is_clear_and_writes_nothing() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("rabbitmq");
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        mq(&path, s.mq_port(), "not-the-password")
    ));
    let out = tf.fails(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.contains("RabbitMQ login refused"), "{out}");
    assert!(
        out.contains("password_wo"),
        "the error points at the password: {out}"
    );
    // Neither our message nor Terraform's quote of a configuration line shows the
    // password: the diagnostic is on the resource, not on password_wo.
    assert_eq!(out.matches("not-the-password").count(), 0, "{out}");
    assert!(!path.exists());

    let port = closed_port();
    tf.write_main(&format!("{}{}", s.provider_block(""), mq(&path, port, "x")));
    let out = tf.fails(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.contains("RabbitMQ is not reachable"), "{out}");
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    assert!(!path.exists());
}

#[test]
fn nomad_no_leader_403_tls_and_down_each_have_their_message() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("nomad");
    let ca = s.get("CIRCLECI_TEST_TLS_CA");
    let try_apply = |endpoint: &str, ca: &str, token: &str| {
        let tf = Tf::new(&format!(
            "{}{}",
            s.provider_block(""),
            nomad(endpoint, ca, token, &path)
        ));
        let out = tf.fails(&["apply", "-auto-approve", "-no-color"]);
        assert!(!path.exists(), "nothing may be written: {out}");
        out
    };

    let no_leader = NomadStandin::start(&s, &["--no-leader"]);
    let out = try_apply(&no_leader.endpoint(), ca, "t");
    assert!(out.contains("Nomad has no cluster leader"), "{out}");

    let guarded = NomadStandin::start(&s, &["--token", "right"]);
    let out = try_apply(&guarded.endpoint(), ca, "wrong");
    assert!(out.contains("Nomad refused the request (403)"), "{out}");
    assert_eq!(
        out.matches("\"wrong\"").count(),
        0,
        "the token is shown: {out}"
    );

    let out = try_apply(
        &guarded.endpoint(),
        s.get("CIRCLECI_TEST_PG_WRONG_CA"),
        "right",
    );
    assert!(out.contains("TLS certificate is not trusted"), "{out}");

    let port = closed_port();
    let out = try_apply(&format!("https://127.0.0.1:{port}"), ca, "right");
    assert!(out.contains("Nomad is not reachable"), "{out}");
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");

    // The stand-in refuses what it does not implement.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            ca,
        ])
        .arg(format!("{}/v1/jobs", guarded.endpoint()))
        .output();
    if let Ok(o) = out {
        if o.status.success() {
            assert_eq!(String::from_utf8_lossy(&o.stdout), "404");
        }
    }
}

/// A server older than the one CircleCI Server 2.17 runs is refused at plan, on the
/// attribute that names it, with its version and CircleCI's; the apply's own check
/// refuses it too (a plan made before a downgrade). `verify = false` skips the check.
#[test]
fn a_nomad_older_than_circleci_runs_is_refused_at_plan_and_apply() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("nomad");
    let ca = s.get("CIRCLECI_TEST_TLS_CA");
    let old = NomadStandin::start(&s, &["--version", "0.4.1"]);
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        nomad(&old.endpoint(), ca, "t", &path)
    ));
    for cmd in [
        &["plan", "-no-color"][..],
        &["apply", "-auto-approve", "-no-color"],
    ] {
        let out = common::flat(&tf.fails(cmd));
        assert!(
            out.contains("Nomad too old for CircleCI Server 2.17"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "Nomad at {} runs 0.4.1, older than 0.5",
                old.endpoint()
            )),
            "{out}"
        );
        assert!(
            out.contains("CircleCI Server 2.17 runs Nomad 0.5.6"),
            "{out}"
        );
        assert!(
            out.contains("endpoint ="),
            "the diagnostic is on endpoint: {out}"
        );
        assert!(!path.exists(), "a file was written");
    }

    // Past the plan (a plan file made against a newer server): the apply's check refuses.
    let newer = NomadStandin::start(&s, &["--version", "0.5.6"]);
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        nomad(&newer.endpoint(), ca, "t", &path)
    ));
    tf.ok(&["plan", "-no-color", "-out=p.tfplan"]);
    let port = newer.port;
    drop(newer);
    let _old_in_its_place = NomadStandin::start_on(&s, port, &["--version", "0.4.1"]);
    let out = common::flat(&tf.fails(&["apply", "-auto-approve", "-no-color", "p.tfplan"]));
    assert!(
        out.contains("Nomad too old for CircleCI Server 2.17"),
        "{out}"
    );
    assert!(!path.exists(), "a file was written");

    // Without a check, nothing is read and the file is written.
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        nomad(&old.endpoint(), ca, "t", &path).replace("\n}\n", "\n  verify = false\n}\n")
    ));
    tf.apply();
    assert!(path.exists());
    let state = std::fs::read_to_string(tf.path().join("terraform.tfstate")).unwrap();
    assert!(state.contains("\"server_version\": \"\""), "{state}");
}

/// CircleCI 2.17's RabbitMQ file has no TLS setting: `tls = true` would write a TLS port
/// into a file CircleCI reads as plain AMQP. Refused at plan, on `tls`, nothing written.
#[test]
fn rabbitmq_tls_is_refused_at_plan_and_nothing_is_written() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("rabbitmq");
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        mq(&path, s.mq_port(), "pw").replace(
            "  password_wo_version = 1\n",
            "  password_wo_version = 1\n  tls = true\n"
        )
    ));
    let out = common::flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        out.contains("CircleCI Server 2.17 cannot use TLS to RabbitMQ"),
        "{out}"
    );
    assert!(out.contains("plain AMQP"), "{out}");
    assert!(
        out.contains("tls = true"),
        "the diagnostic is on tls: {out}"
    );
    assert!(!path.exists(), "a file was written");
}
