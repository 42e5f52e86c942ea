//! examples/complete, exactly as shipped, applied through terraform against the real
//! servers and the CircleCI Services-machine simulator: every config file, the CAs, the
//! Nomad clients, the data migration from the simulator's embedded PostgreSQL and
//! Vault, then the restart, whose runbook checks must all pass and be listed.

use crate::common;

use std::os::unix::fs::PermissionsExt;

use common::sim::{NomadFixture, Sim, SIMULATOR};
use common::{flat, servers, Tf};
use serde_json::{json, Value as Json};
use terraform_provider_circleci::testing::restart::files;

#[test]
fn the_complete_example_externalizes_and_every_check_passes() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    s.fresh_runbook_targets();
    let root = s.embedded_root("300");
    let sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let main =
        std::fs::read_to_string(common::repo_root().join("examples/complete/main.tf")).unwrap();
    let tf = Tf::new(&main);

    // The Nomad client group enterprise-setup would have made, on moto.
    let group = format!("complete-example-{}", std::process::id());
    let user_data = s.get("CIRCLECI_TEST_NOMAD_USER_DATA").to_string();
    let made = s.aws_fixture(&[
        "setup",
        "--name",
        &group,
        "--kind",
        "lc",
        "--user-data-file",
        &user_data,
    ]);

    let g = |k: &str| s.get(k).to_string();
    std::fs::write(
        tf.path().join("terraform.tfvars"),
        format!(
            r#"services_host      = "127.0.0.1"
services_port      = {ssh}
services_user      = "root"
private_key_file   = {key:?}
known_hosts_file   = {known:?}
redis_host         = "127.0.0.1"
redis_port         = {redis}
slanger_redis_host = "127.0.0.1"
slanger_redis_port = {redis}
config_root        = {root:?}
postgres_host      = "127.0.0.1"
postgres_port      = {pg}
postgres_ca_file   = {pgca:?}
vault_address      = {vault:?}
vault_ca_file      = {vca:?}
rabbitmq_host      = "127.0.0.1"
rabbitmq_port      = {mq}
nomad_endpoint     = {nomad:?}
nomad_ca_file      = {ca:?}
mongo_hosts        = ["127.0.0.1:{mongo}"]
mongo_tls          = false
aws_endpoint       = {aws:?}
nomad_clients_asg  = {group:?}
nomad_servers      = ["nomad-1.internal:4647", "nomad-2.internal:4647"]
services_ca_files  = {{ "dev-vault" = {vca:?}, "dev-services" = {ca:?} }}
embedded_vault_address = {evault:?}
embedded_nomad_endpoint = {enomad:?}
verify_timeout     = "15s"
via_services_host  = true
"#,
            ssh = g("CIRCLECI_TEST_SSH_PORT"),
            key = g("CIRCLECI_TEST_SSH_KEY_FILE"),
            known = g("CIRCLECI_TEST_SSH_KNOWN_HOSTS"),
            redis = g("CIRCLECI_TEST_REDIS_PORT"),
            root = root.path().to_str().unwrap(),
            pg = g("CIRCLECI_TEST_PG_PORT"),
            pgca = g("CIRCLECI_TEST_PG_CA"),
            vault = g("CIRCLECI_TEST_VAULT_ADDR"),
            vca = g("CIRCLECI_TEST_VAULT_CA"),
            mq = g("CIRCLECI_TEST_MQ_PORT"),
            nomad = g("CIRCLECI_TEST_CI_NOMAD_ADDR"),
            ca = g("CIRCLECI_TEST_TLS_CA"),
            mongo = g("CIRCLECI_TEST_MONGO_PORT"),
            aws = g("CIRCLECI_TEST_AWS_ENDPOINT"),
            evault = g("CIRCLECI_TEST_EMBEDDED_VAULT_ADDR"),
            enomad = g("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"),
        ),
    )
    .unwrap();
    let secrets = [
        (
            "TF_VAR_postgres_admin_password",
            g("CIRCLECI_TEST_PG_PASSWORD"),
        ),
        ("TF_VAR_mongo_admin_uri", s.mongo_admin_uri()),
        ("TF_VAR_mongo_password", "complete example p@ss".to_string()),
        ("TF_VAR_rabbitmq_password", g("CIRCLECI_TEST_MQ_PASSWORD")),
        ("TF_VAR_nomad_token", g("CIRCLECI_TEST_NOMAD_TOKEN")),
        ("TF_VAR_vault_token", g("CIRCLECI_TEST_VAULT_TOKEN")),
        (
            "TF_VAR_embedded_vault_token",
            g("CIRCLECI_TEST_EMBEDDED_VAULT_TOKEN"),
        ),
        (
            "TF_VAR_circle_db_password",
            "complete 'circle' password $1".to_string(),
        ),
    ];
    // Where a test makes a step fail on cue (src/fault_point.rs).
    let faults = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut c = tf.cmd(args);
        c.env("CIRCLECI_PROVIDER_FAULT_DIR", faults.path());
        for (k, v) in &secrets {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        eprintln!(
            "$ terraform {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };

    let ssh_log = g("CIRCLECI_TEST_SSH_LOG");
    let log_from = std::fs::metadata(&ssh_log).unwrap().len() as usize;
    // The runbook files as the embedded install has them, and CircleCI running.
    let runbook_files = || -> Vec<Option<Vec<u8>>> {
        files::ALL
            .iter()
            .map(|f| std::fs::read(root.path().join(f)).ok())
            .collect()
    };
    let before = runbook_files();
    sim.start();

    // A failed try undone: CircleCI `how` (restarted or started) on the files as they
    // were, observed as before the stop, and the clients back on the embedded Nomad.
    let undone = |err: &str, how: &str| {
        assert!(
            err.contains("CircleCI is back as it was before this apply"),
            "{err}"
        );
        assert!(
            err.contains(&format!("CircleCI was {how} on them")),
            "{err}"
        );
        // What the runbook's checks observe (the embedded hosts) is as before the stop.
        assert!(
            err.contains("the 8 observations of the runbook's checks are as before the cutover"),
            "{err}"
        );
        assert_eq!(runbook_files(), before, "the files are not as they were");
        assert_eq!(sim.state(), "started");
        // The clients followed CircleCI back to its embedded Nomad: the group is on its
        // original launch configuration, its instances replaced from it.
        let now = s.aws_fixture(&["group", "--name", &group]);
        assert_eq!(
            now["launch_configuration"], made["launch_configuration"],
            "{now}"
        );
        assert!(
            err.contains(&format!(
                "Nomad clients moved back: Auto Scaling group {group} is back on launch configuration {}",
                made["launch_configuration"].as_str().unwrap()
            )),
            "{err}"
        );
    };

    // The plan says, on the migration, that the apply stops CircleCI: the steps while
    // it is down, the builds, the estimate, the licence and the target's version.
    let plan = run(&["plan", "-no-color", "-input=false"]);
    assert!(plan.status.success());
    let text = flat(&String::from_utf8_lossy(&plan.stdout));
    for want in [
        "Warning: This apply stops CircleCI",
        "(1) this migration exports the embedded PostgreSQL and MongoDB",
        "(2) the resources that depend on it run",
        "(3) circleci_services_restart starts CircleCI",
        "No build runs on the Nomad servers CircleCI uses now.",
        "Expected migration time about",
        "CircleCI's license must allow external services",
        "(CircleCI Server 2.17 runs 9.5.8; 9.5 or later is accepted)",
        "(CircleCI Server 2.17 runs 3.6.6; 3.6 or later is accepted)",
        "versions show as server_version in their own resources' plans",
    ] {
        assert!(text.contains(want), "{want:?} not in the plan:\n{text}");
    }
    // Redis (shared and Slanger), RabbitMQ, Nomad and Vault: each server's version,
    // read through the Services machine before anything is written.
    assert_eq!(text.matches("+ server_version = \"").count(), 5, "{text}");

    // First try: one of the external Nomad's two clients is draining, so the restart's
    // capacity check fails (1 < the embedded Nomad's 2). The cutover is undone.
    let mut ci_nomad = NomadFixture::new(&s, "CIRCLECI_TEST_CI_NOMAD_DIR");
    ci_nomad.client("external-client-2", true);
    let apply = run(&["apply", "-auto-approve", "-no-color", "-input=false"]);
    assert!(
        !apply.status.success(),
        "the first apply should have failed"
    );
    let err = flat(&String::from_utf8_lossy(&apply.stderr));
    assert!(err.contains("CircleCI check failed: nomad"), "{err}");
    undone(&err, "restarted");
    // The clients moved while CircleCI was stopped: after the migration stopped it,
    // before the restart started it.
    let text = String::from_utf8_lossy(&apply.stdout).into_owned();
    let at = |what: &str| {
        text.find(what)
            .unwrap_or_else(|| panic!("{what:?} not in the apply's output:\n{text}"))
    };
    assert!(
        at("circleci_data_migration.this: Creation complete")
            < at("circleci_nomad_client_launch_config.clients: Creating...")
    );
    assert!(
        at("circleci_nomad_client_launch_config.clients: Creation complete")
            < at("circleci_services_restart.this: Creating...")
    );

    // Second try, the client back: the migration no longer holds (CircleCI went back to
    // its embedded data), so it runs again over the copies the first try wrote, and the
    // clients move again; their roll fails half-way. The cutover is undone again, the
    // clients with it.
    drop(ci_nomad);
    std::fs::write(
        faults
            .path()
            .join("circleci_nomad_client_launch_config.rollout.fail"),
        "the roll stops after its first batch",
    )
    .unwrap();
    let apply = run(&["apply", "-auto-approve", "-no-color", "-input=false"]);
    assert!(
        !apply.status.success(),
        "the second apply should have failed"
    );
    let err = flat(&String::from_utf8_lossy(&apply.stderr));
    assert!(err.contains("Rollout interrupted"), "{err}");
    assert!(
        err.contains("injected failure at circleci_nomad_client_launch_config.rollout"),
        "{err}"
    );
    undone(&err, "started");

    // Third try: the cutover completes.
    let apply = run(&["apply", "-auto-approve", "-no-color", "-input=false"]);
    assert!(apply.status.success(), "the second apply failed");
    let text = String::from_utf8_lossy(&apply.stdout).into_owned();
    assert!(
        text.contains("circleci_data_migration.this: Creation complete"),
        "{text}"
    );
    // Every backend was reached through the Services machine (via_services_host).
    let log = std::fs::read(&ssh_log).unwrap();
    let log = String::from_utf8_lossy(&log[log_from..]);
    let port_of = |url: String| url.rsplit(':').next().unwrap().to_string();
    for (what, port) in [
        ("PostgreSQL", g("CIRCLECI_TEST_PG_PORT")),
        ("MongoDB", g("CIRCLECI_TEST_MONGO_PORT")),
        ("Redis", g("CIRCLECI_TEST_REDIS_PORT")),
        ("RabbitMQ", g("CIRCLECI_TEST_MQ_PORT")),
        ("Vault", port_of(g("CIRCLECI_TEST_VAULT_ADDR"))),
        (
            "the embedded Vault",
            port_of(g("CIRCLECI_TEST_EMBEDDED_VAULT_ADDR")),
        ),
        ("Nomad", port_of(g("CIRCLECI_TEST_CI_NOMAD_ADDR"))),
        (
            "the embedded Nomad",
            port_of(g("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR")),
        ),
    ] {
        assert!(
            log.contains(&format!("target 127.0.0.1 port {port}")),
            "no channel to {what} (port {port}) in sshd's log"
        );
    }
    let out = run(&["output", "-json", "restart"]);
    let restart: Json = serde_json::from_slice(&out.stdout).unwrap();
    let checks: Vec<String> = serde_json::from_value(restart["checks_passed"].clone()).unwrap();
    for service in [
        "postgresql",
        "mongodb",
        "vault",
        "redis",
        "slanger",
        "rabbitmq",
        "nomad",
    ] {
        assert!(
            checks
                .iter()
                .any(|c| c.starts_with(&format!("{service}: "))),
            "{service} not checked: {checks:?}"
        );
    }
    assert_eq!(checks.len(), 9, "{checks:?}");
    // The capacity check compared the external Nomad's clients with those before the
    // stop (the stand-ins' fixture clients: two each).
    assert!(
        checks.iter().any(|c| c.starts_with(&format!(
            "nomad: 2 ready, eligible clients at {}; 2 before the stop",
            g("CIRCLECI_TEST_CI_NOMAD_ADDR")
        ))),
        "{checks:?}"
    );
    assert_eq!(restart["version"], "2.17.3");
    assert!(restart["downtime"].as_str().unwrap().ends_with('s'));
    assert!(sim
        .docker_logs("context-service")
        .contains("Successfully retrieved current auth token"));

    // The embedded data is in the external PostgreSQL, every table verified, and the
    // context secrets the embedded Vault encrypted decrypt through the external one.
    let out = run(&["output", "-json", "migration"]);
    let migration: Json = serde_json::from_slice(&out.stdout).unwrap();
    let tables = migration["tables"].as_object().unwrap();
    assert_eq!(tables.len(), 9, "{tables:?}");
    assert!(tables["vms.public.tasks"]
        .as_str()
        .unwrap()
        .starts_with("300 rows, checksum "));
    assert_eq!(s.psql("vms", "SELECT count(*) FROM tasks").trim(), "300");
    // MongoDB's four databases, every collection counted and hashed on both sides.
    let collections = migration["collections"].as_object().unwrap();
    assert_eq!(collections.len(), 7, "{collections:?}");
    assert!(collections["circle_ghe.builds"]
        .as_str()
        .unwrap()
        .starts_with("30 documents, checksum "));
    let n = s
        .pymongo(
            &s.mongo_admin_uri(),
            "circle_ghe",
            serde_json::json!({"count": "builds"}),
        )
        .unwrap();
    assert_eq!(n["n"], 30, "{n}");
    let secrets = s.decrypted_context_secrets("transit");
    assert_eq!(secrets.len(), 6, "{secrets:?}");
    assert!(secrets
        .iter()
        .all(|(_, p)| p.ends_with("of the embedded install")));

    let plan = run(&["plan", "-detailed-exitcode", "-no-color", "-input=false"]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "a second plan changes something"
    );
    // The way back: the first cutover kept what CircleCI ran with before (0600), and
    // the destroy plan says what the destroy will do.
    let way_back = root
        .path()
        .join("data/circle/external-services-cutover/before-first-cutover.json");
    assert_eq!(
        std::fs::metadata(&way_back).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let plan = run(&["plan", "-destroy", "-no-color", "-input=false"]);
    assert!(plan.status.success());
    let text = flat(&String::from_utf8_lossy(&plan.stdout));
    assert!(
        text.contains("This destroy stops CircleCI and takes it back to before the cutover"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Auto Scaling group {group} back on")),
        "{text}"
    );
    assert!(text.contains("stays there"), "{text}");
    // `terraform destroy` takes CircleCI back: the files as the embedded install had
    // them, the clients on its embedded Nomad, what its checks observe as before.
    let destroy = run(&["destroy", "-auto-approve", "-no-color", "-input=false"]);
    assert!(destroy.status.success());
    let text = flat(&String::from_utf8_lossy(&destroy.stdout));
    assert!(
        text.contains("CircleCI is back as it was before its first cutover"),
        "{text}"
    );
    assert!(
        text.contains("the 8 observations of the runbook's checks are as before the cutover"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Nomad clients moved back: Auto Scaling group {group} is back on launch configuration {}",
            made["launch_configuration"].as_str().unwrap()
        )),
        "{text}"
    );
    assert_eq!(runbook_files(), before, "the files are not as they were");
    assert_eq!(sim.state(), "started");
    let now = s.aws_fixture(&["group", "--name", &group]);
    assert_eq!(
        now["launch_configuration"], made["launch_configuration"],
        "{now}"
    );
    let cutover = root.path().join("data/circle/external-services-cutover");
    assert!(!way_back.exists(), "the way back was left");
    assert!(!cutover.join("record.json").exists(), "the record was left");
    assert!(
        std::fs::read_dir(cutover.join("kept")).map_or(true, |mut d| d.next().is_none()),
        "kept originals were left"
    );
    // The databases were retained (deletion_policy), with the data: destroy never
    // touches data. Dropped here, as a fresh server would have none.
    assert_eq!(s.psql("vms", "SELECT count(*) FROM tasks").trim(), "300");
    s.fresh_runbook_targets();
}
