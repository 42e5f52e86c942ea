//! circleci_data_migration through terraform, on the Services-machine simulator: the
//! embedded PostgreSQL is a real data directory (dev/fixtures/embedded_fixture.sh) served by a
//! real server in the simulator's temporary container, the embedded Vault is a second
//! OpenBao whose context-service key encrypted the fixture's context secrets, the
//! embedded MongoDB is the MongoDB stand-in over the fixture's directory (with the
//! stand-ins of mongodump, mongorestore and the mongo shell), the targets are the test
//! PostgreSQL, the dev MongoDB stand-in (logins on) and the dev OpenBao.

use crate::common;

use std::path::Path;

use common::sim::{epoch_now, NomadFixture, Sim, SIMULATOR};
use common::{flat, servers, Servers, Tf};
use serde_json::json;

/// Every file under `dir`, after checking each is 0600 and each directory 0700.
fn private_tree(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        assert_eq!(common::mode_of(&d), 0o700, "{} is not private", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                assert_eq!(common::mode_of(&p), 0o600, "{} is not private", p.display());
                files.push(p.display().to_string());
            }
        }
    }
    files
}

fn main_tf(s: &Servers, root: &Path, mount: &str, extra: &str) -> String {
    common::cutover::migration_tf(s, root, mount, extra)
}

fn app_state(sim: &Sim) -> String {
    sim.state()
}

fn start_app(sim: &Sim) {
    sim.start();
}

fn output(tf: &Tf) -> serde_json::Value {
    serde_json::from_str(&tf.ok(&["output", "-json", "m"])).unwrap()
}

fn documents(s: &Servers, db: &str, collection: &str) -> i64 {
    s.pymongo(&s.mongo_admin_uri(), db, json!({"count": collection}))
        .unwrap()["n"]
        .as_i64()
        .unwrap()
}

fn count(s: &Servers, db: &str, table: &str) -> i64 {
    s.psql(db, &format!("SELECT count(*) FROM {table}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn migrates_verifies_refuses_to_overwrite_and_converges() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    s.fresh_runbook_targets();
    let root = s.embedded_root("700");
    let sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    start_app(&sim);
    let mount = format!("transit-mig-{}", std::process::id());
    let tf = Tf::new(&main_tf(&s, root.path(), &mount, ""));

    // A target that already holds data while CircleCI runs: the migration refuses, and
    // the runbook files this apply wrote before it are put back as they were (none), so
    // that nothing points CircleCI at the external services.
    s.pymongo(
        &s.mongo_admin_uri(),
        "circle_ghe",
        json!({"insert": "stray", "documents": [{"x": 1}]}),
    )
    .unwrap();
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(err.contains("circle_ghe"), "{err}");
    assert!(
        err.contains("CircleCI was not stopped: it still runs as it did before this apply"),
        "{err}"
    );
    assert!(!root
        .path()
        .join("etc/circleconfig/shared/postgresql")
        .exists());
    assert!(!root
        .path()
        .join("etc/circle-installation-customizations")
        .exists());
    assert_eq!(app_state(&sim), "started");
    s.pymongo(&s.mongo_admin_uri(), "circle_ghe", json!({"drop": "stray"}))
        .unwrap();

    // A build runs on the embedded Nomad for a few more seconds: the plan says the
    // apply stops CircleCI and names it; the stop waits for it.
    let mut nomad = NomadFixture::new(&s, "CIRCLECI_TEST_EMBEDDED_NOMAD_DIR");
    let ends = epoch_now() + 6.0;
    nomad.build("build-mig", "node-1", ends);
    let plan = flat(&tf.ok(&["plan", "-no-color"]));
    assert!(plan.contains("This apply stops CircleCI"), "{plan}");
    assert!(
        plan.contains("build-mig.build[0] (job build-mig, running"),
        "{plan}"
    );

    let ssh_log = s.get("CIRCLECI_TEST_SSH_LOG");
    let log_from = std::fs::metadata(ssh_log).unwrap().len() as usize;
    let out = tf.apply();
    assert!(
        out.contains("circleci_data_migration.m: Creation complete"),
        "{out}"
    );
    let stopped_at = output(&tf)["app_stopped_at"].as_str().unwrap().to_string();
    let stopped_at = humantime::parse_rfc3339(&stopped_at)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // app_stopped_at is in whole seconds, taken after the stop.
    assert!(stopped_at + 1.0 >= ends, "stopped before the build ended");
    drop(nomad);
    // What the Nomad servers showed before the stop waits for the restart, private.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            root.path()
                .join("data/circle/external-services-cutover/record.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["nomad_clients"].as_array().unwrap().len(),
        2,
        "{record}"
    );
    // The embedded Vault was reached through the Services machine.
    let embedded_port = s
        .get("CIRCLECI_TEST_EMBEDDED_VAULT_ADDR")
        .rsplit(':')
        .next()
        .unwrap();
    let log = std::fs::read(ssh_log).unwrap();
    assert!(
        String::from_utf8_lossy(&log[log_from..])
            .contains(&format!("target 127.0.0.1 port {embedded_port}")),
        "no channel to the embedded Vault in sshd's log"
    );
    assert_eq!(
        app_state(&sim),
        "stopped",
        "the migration leaves CircleCI stopped"
    );
    let m = output(&tf);
    let tables = m["postgres_tables"].as_object().unwrap();
    for t in [
        "circle.public.circle_migrations",
        "circle.public.builds",
        "conductor_production.public.build_jobs",
        "contexts_service_production.public.env_vars",
        "cron_service_production.public.qrtz_blob_triggers",
        "vms.public.tasks",
    ] {
        assert!(tables.contains_key(t), "{t} not recorded: {tables:?}");
    }
    assert_eq!(
        tables["vms.public.tasks"]
            .as_str()
            .unwrap()
            .split(' ')
            .next(),
        Some("700")
    );
    // Both servers store timestamps as integers (the probe read the embedded one's
    // setting, the check before the stop the target's, through the restore's tools):
    // the recorded checksum is the one by value, computed here by hand.
    assert_eq!(
        tables["circle.public.circle_migrations"].as_str().unwrap(),
        s.psql(
            "circle",
            &common::circle_migrations_by_value(" rows, checksum ")
        )
        .trim()
    );
    // The rows are really in the external server, owned by the role.
    assert_eq!(count(&s, "circle", "builds"), 700);
    assert_eq!(count(&s, "conductor_production", "build_jobs"), 700);
    assert_eq!(
        s.psql(
            "vms",
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        )
        .trim(),
        "circle"
    );
    let total: i64 = tables
        .values()
        .map(|v| {
            v.as_str()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(m["postgres_rows"].as_i64(), Some(total));
    assert!(m["throughput"].as_str().unwrap().contains("MB/s"), "{m}");
    assert_eq!(m["skipped"], json!([]));

    // MongoDB: every collection of the four databases, counted and hashed on both
    // sides; the documents are in the external MongoDB.
    let collections = m["mongo_collections"].as_object().unwrap();
    assert_eq!(collections.len(), 7, "{collections:?}");
    // The view and the capped collection in the source do not fail the comparison:
    // one is compared by what it shows and what it is on, the other by its count.
    assert_eq!(
        collections["circle_ghe.recent_builds"],
        json!("view on builds, showing 70 documents"),
        "{collections:?}"
    );
    assert_eq!(
        collections["circle_ghe.action_logs"],
        json!("8 documents, capped (compared by count)"),
        "{collections:?}"
    );
    let views = s
        .pymongo(
            &s.mongo_admin_uri(),
            "circle_ghe",
            json!({"listCollections": 1}),
        )
        .unwrap()["cursor"]["firstBatch"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "view")
        .map(|c| (c["name"].clone(), c["options"]["viewOn"].clone()))
        .collect::<Vec<_>>();
    assert_eq!(views, [(json!("recent_builds"), json!("builds"))]);
    assert!(
        collections["circle_ghe.builds"]
            .as_str()
            .unwrap()
            .starts_with("70 documents, checksum "),
        "{collections:?}"
    );
    assert_eq!(
        m["mongo_documents"].as_i64(),
        Some(70 + 12 + 8 + 30 + 5 + 1)
    );
    assert_eq!(documents(&s, "circle_ghe", "builds"), 70);
    assert_eq!(documents(&s, "remote_containers_dev_ghe", "remote"), 1);
    let indexes = s
        .pymongo(
            &s.mongo_admin_uri(),
            "circle_ghe",
            json!({"listIndexes": "builds"}),
        )
        .unwrap()
        .to_string();
    assert!(indexes.contains("build_num_1"), "{indexes}");

    // The export stays, sealed, with the SHA-256 recorded: a dump per PostgreSQL
    // database, and mongodump's files per collection.
    let files = m["export_sha256"].as_object().unwrap();
    assert_eq!(
        files.keys().filter(|f| f.ends_with(".dump")).count(),
        9,
        "{files:?}"
    );
    assert!(
        files.contains_key("/data/circle/external-services-export/mongo/circle_ghe/builds.bson"),
        "{files:?}"
    );
    // A view is dumped as its metadata alone.
    assert_eq!(files.len(), 9 + 2 * 6 + 1, "{files:?}");
    for (path, sha) in files {
        let local = root.path().join(path.trim_start_matches('/'));
        let bytes = std::fs::read(&local).unwrap();
        assert_eq!(
            sha.as_str().unwrap(),
            terraform_provider_circleci::testing::file_sha256(&bytes)
        );
        assert_eq!(common::mode_of(&local), 0o600, "{path}");
        assert_eq!(common::mode_of(local.parent().unwrap()), 0o700, "{path}");
    }

    // Every context secret the embedded Vault encrypted (key versions 1 and 2)
    // decrypts through the external Vault, read from the external database.
    let secrets = s.decrypted_context_secrets(&mount);
    assert_eq!(secrets.len(), 6, "{secrets:?}");
    for (name, plain) in secrets {
        let n = name.trim_start_matches("FIXTURE_SECRET_");
        assert_eq!(plain, format!("context secret {n} of the embedded install"));
    }
    assert_eq!(tf.plan_code(), 0, "a second plan migrates nothing");

    // CircleCI ran on the external database (a row more), and runs: a new migration
    // is refused before anything changes.
    start_app(&sim);
    s.psql(
        "vms",
        "INSERT INTO tasks (vm, state) VALUES ('new-vm', 'running')",
    );
    tf.write_main(&main_tf(
        &s,
        root.path(),
        &mount,
        "triggers = { n = \"2\" }",
    ));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(err.contains("Target database not empty"), "{err}");
    assert!(err.contains("CircleCI is running"), "{err}");
    assert!(err.contains("overwrite_existing"), "{err}");
    assert_eq!(count(&s, "vms", "tasks"), 701, "nothing was changed");
    assert_eq!(app_state(&sim), "started", "CircleCI was not stopped");
    // CircleCI was started by hand on the external files since the first migration:
    // the failed one puts nothing back (that would move it back onto the embedded data).
    assert!(
        err.contains("Nothing was put back: CircleCI was started or stopped outside this cutover"),
        "{err}"
    );
    assert!(root
        .path()
        .join("etc/circleconfig/shared/postgresql")
        .exists());

    // Stopped, and the target differs from the embedded data: refused again.
    sim.replicatedctl(&["app", "stop"]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(err.contains("differ from the embedded"), "{err}");
    assert_eq!(count(&s, "vms", "tasks"), 701);
    assert!(root
        .path()
        .join("etc/circleconfig/shared/postgresql")
        .exists());

    // The same data on both sides (as after an interrupted apply): left as it is.
    s.psql("vms", "DELETE FROM tasks WHERE vm = 'new-vm'");
    let out = tf.apply();
    assert!(out.contains("Modifications complete"), "{out}");
    let skipped = output(&tf)["skipped"].as_array().unwrap().clone();
    // The seven databases with tables, the four MongoDB databases and the key
    // (contexts and federations hold no tables: nothing to compare, they were simply
    // restored again).
    assert_eq!(skipped.len(), 12, "{skipped:?}");
    assert!(skipped.contains(&json!("postgres:vms")), "{skipped:?}");
    assert!(skipped.contains(&json!("mongo:circle_ghe")), "{skipped:?}");
    assert!(
        skipped.contains(&json!(format!("vault:{mount}/context-service"))),
        "{skipped:?}"
    );

    // A MongoDB target that differs, CircleCI stopped: refused, naming the database.
    s.pymongo(
        &s.mongo_admin_uri(),
        "circle_ghe",
        json!({"insert": "builds", "documents": [{"build_num": 9999, "outcome": "failed"}]}),
    )
    .unwrap();
    tf.write_main(&main_tf(
        &s,
        root.path(),
        &mount,
        "triggers = { n = \"2b\" }",
    ));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(err.contains("MongoDB database \"circle_ghe\""), "{err}");
    assert!(err.contains("differ from the embedded"), "{err}");
    assert_eq!(documents(&s, "circle_ghe", "builds"), 71);

    // overwrite_existing restores over a changed target; a table only the target has
    // stays, named in a warning.
    s.psql("circle", "DELETE FROM builds WHERE num <= 100");
    s.psql("circle", "CREATE TABLE operator_notes (n int)");
    tf.write_main(&main_tf(
        &s,
        root.path(),
        &mount,
        "triggers = { n = \"3\" }\n  overwrite_existing = true",
    ));
    let out = flat(&tf.apply());
    assert!(
        out.contains("The targets hold more than the embedded data"),
        "{out}"
    );
    assert!(
        out.contains(
            "circle.public.operator_notes: only in the target (not readable by the restore's user)"
        ),
        "{out}"
    );
    s.psql("circle", "DROP TABLE operator_notes");
    assert_eq!(count(&s, "circle", "builds"), 700);
    assert_eq!(documents(&s, "circle_ghe", "builds"), 70);
    assert_eq!(tf.plan_code(), 0);

    // Destroy touches no data and keeps the export.
    tf.ok(&[
        "destroy",
        "-auto-approve",
        "-target",
        "circleci_data_migration.m",
    ]);
    assert_eq!(count(&s, "circle", "builds"), 700);
    assert!(root
        .path()
        .join("data/circle/external-services-export/circle.dump")
        .exists());
    tf.ok(&["destroy", "-auto-approve"]);
    drop(sim);
}

/// Ctrl-C in the middle (once three databases are imported): the imports under way
/// finish, none starts, the container is removed and nothing is recorded; the next
/// apply leaves the databases already imported as they are and imports the rest.
#[test]
fn an_interrupted_migration_converges() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    s.fresh_runbook_targets();
    let root = s.embedded_root("400");
    let sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let mount = format!("transit-int-{}", std::process::id());
    // keep_export = false: what the interrupted run exported is removed. One database
    // at a time, the largest first (the order the assertions below read).
    let tf = Tf::new(&main_tf(
        &s,
        root.path(),
        &mount,
        "keep_export = false\nparallelism = 1",
    ));
    let faults = tempfile::tempdir().unwrap();
    let point = "circleci_data_migration.database_loop";
    std::fs::write(faults.path().join(format!("{point}.armed")), b"").unwrap();
    // Let two databases pass first: the point is re-armed after each is reached.
    let child = common::spawn_apply_with_faults(&tf, faults.path());
    let reached = faults.path().join(format!("{point}.reached"));
    for round in 0..3 {
        common::wait_reached(faults.path(), point, 120);
        std::fs::remove_file(&reached).unwrap();
        if round < 2 {
            std::fs::write(faults.path().join(format!("{point}.armed")), b"").unwrap();
            std::fs::write(faults.path().join(format!("{point}.go")), b"").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            std::fs::remove_file(faults.path().join(format!("{point}.go"))).unwrap();
        }
    }
    let (ok, text) = common::interrupt(child, faults.path(), point);
    assert!(!ok, "{text}");
    assert!(
        text.contains("asked the provider to stop before database"),
        "{text}"
    );
    assert!(
        flat(&text).contains("Partial PostgreSQL export removed"),
        "{text}"
    );
    let export = root.path().join("data/circle/external-services-export");
    let left = private_tree(&export);
    assert!(
        !left
            .iter()
            .any(|f| f.ends_with(".dump") || f.ends_with(".list")),
        "the partial export is left: {left:?}"
    );
    let ps = std::process::Command::new(Path::new(s.get("CIRCLECI_TEST_SIM")).join("docker"))
        .args(["ps", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("circleci-data-migration"),
        "the temporary container was left running"
    );
    // The largest go first (circle, conductor_production, vms); the small ones after
    // them, cron_service_production among the last, are not in.
    assert_eq!(count(&s, "circle", "builds"), 400);
    assert_eq!(
        s.psql(
            "cron_service_production",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        .trim(),
        "0"
    );

    let out = tf.apply();
    assert!(out.contains("Creation complete"), "{out}");
    let m = output(&tf);
    let skipped = m["skipped"].as_array().unwrap();
    assert!(skipped.contains(&json!("postgres:circle")), "{m}");
    assert!(
        !skipped.contains(&json!("postgres:cron_service_production")),
        "{m}"
    );
    assert_eq!(
        count(&s, "cron_service_production", "qrtz_blob_triggers"),
        40
    );
    assert_eq!(count(&s, "vms", "tasks"), 400);
    assert_eq!(documents(&s, "circle_ghe", "builds"), 40);
    assert_eq!(tf.plan_code(), 0);
    tf.ok(&["destroy", "-auto-approve"]);
    drop(sim);
}

/// Someone writes to a MongoDB target database after the preflight found it empty
/// (here once its dump is written, right before its restore): the restore into it is
/// refused and nothing of theirs is dropped; once it is empty again, the next apply
/// converges.
#[test]
fn a_mongo_target_written_to_since_the_preflight_is_never_dropped() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    s.fresh_runbook_targets();
    let root = s.embedded_root("200");
    let sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let mount = format!("transit-late-{}", std::process::id());
    // One database at a time: circle_ghe, the first MongoDB database, is the one
    // held below.
    let tf = Tf::new(&main_tf(
        &s,
        root.path(),
        &mount,
        "keep_export = false\nparallelism = 1",
    ));
    let faults = tempfile::tempdir().unwrap();
    // circle_ghe is dumped: the preflight is past, the re-check before its restore
    // not yet.
    let point = "circleci_data_migration.mongo_dumped";
    std::fs::write(faults.path().join(format!("{point}.armed")), b"").unwrap();
    let child = common::spawn_apply_with_faults(&tf, faults.path());
    common::wait_reached(faults.path(), point, 120);
    s.pymongo(
        &s.mongo_admin_uri(),
        "circle_ghe",
        json!({"insert": "builds", "documents": [{"_id": "theirs", "note": "written during the migration"}]}),
    )
    .unwrap();
    std::fs::write(faults.path().join(format!("{point}.go")), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = flat(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ));
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("Target database written to during the migration"),
        "{text}"
    );
    assert!(
        text.contains("was empty when this apply checked it, and now holds 1 (builds)"),
        "{text}"
    );
    // The PostgreSQL part, beside it, took no database after the failure.
    assert!(
        text.contains("PostgreSQL databases not carried over"),
        "{text}"
    );
    assert_eq!(
        documents(&s, "circle_ghe", "builds"),
        1,
        "their document was dropped"
    );
    let export = root.path().join("data/circle/external-services-export");
    let left = private_tree(&export);
    assert!(
        !left.iter().any(|f| f.contains("/mongo/")),
        "the partial MongoDB export is left: {left:?}"
    );

    // Their collection moved away: the next apply converges.
    s.pymongo(
        &s.mongo_admin_uri(),
        "circle_ghe",
        json!({"drop": "builds"}),
    )
    .unwrap();
    let out = tf.apply();
    assert!(out.contains("Creation complete"), "{out}");
    assert_eq!(documents(&s, "circle_ghe", "builds"), 20);
    tf.ok(&["destroy", "-auto-approve"]);
    drop(sim);
}

/// A target that refuses writes half-way, CircleCI running: the migration fails, the
/// runbook files go back, CircleCI is started again on its embedded data and checked,
/// and the targets the failed attempt wrote are listed on the Services machine. With
/// the cause removed, the next apply restores over those copies (one changed since, as
/// CircleCI kept writing to its embedded data) without overwrite_existing.
#[test]
fn a_failed_migration_starts_circleci_again_and_the_retry_converges() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    s.fresh_runbook_targets();
    let root = s.embedded_root("300");
    let sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    start_app(&sim);
    let mount = format!("transit-half-{}", std::process::id());
    // One database at a time, the largest first: cron_service_production is among
    // the last imported, and the larger ones are in when it fails.
    let pin = "parallelism = 1";
    let tf = Tf::new(&main_tf(&s, root.path(), &mount, pin));
    tf.ok(&[
        "apply",
        "-auto-approve",
        "-target",
        "circleci_postgres_databases.pg",
    ]);
    s.psql(
        "postgres",
        "ALTER DATABASE cron_service_production SET default_transaction_read_only = on",
    );
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(err.contains("cron_service_production"), "{err}");
    assert!(err.contains("read-only transaction"), "{err}");
    assert!(
        err.contains("CircleCI is back as it was before this apply"),
        "{err}"
    );
    assert!(err.contains("CircleCI was started on them"), "{err}");
    // What the runbook's checks observe (the embedded hosts) is as before the stop.
    assert!(
        err.contains("the 8 observations of the runbook's checks are as before the cutover"),
        "{err}"
    );
    assert_eq!(app_state(&sim), "started");
    assert!(!root
        .path()
        .join("etc/circleconfig/shared/postgresql")
        .exists());
    assert!(!root
        .path()
        .join("etc/circle-installation-customizations")
        .exists());
    assert_eq!(count(&s, "circle", "builds"), 300);
    let ps = std::process::Command::new(Path::new(s.get("CIRCLECI_TEST_SIM")).join("docker"))
        .args(["ps", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("circleci-data-migration"),
        "a temporary container was left running"
    );
    let written = root
        .path()
        .join("data/circle/external-services-cutover/written.json");
    assert_eq!(common::mode_of(&written), 0o600);
    // The export (the dumps of every database carried before the failure) and what the
    // cutover keeps are private, though no seal ran.
    let export = root.path().join("data/circle/external-services-export");
    assert_eq!(common::mode_of(&export), 0o700, "the export is readable");
    assert_eq!(common::mode_of(written.parent().unwrap()), 0o700);
    // Every dump written before the failure was private from its first byte (umask
    // 077 in the container), not only after a seal that never ran.
    let kept = private_tree(&export);
    assert!(kept.iter().any(|f| f.ends_with("circle.dump")), "{kept:?}");
    assert!(err.contains("Partial PostgreSQL export kept"), "{err}");
    let w: serde_json::Value = serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
    let pg = format!("postgres://127.0.0.1:{}/circle", s.pg_port());
    assert!(w["targets"].as_array().unwrap().contains(&json!(pg)), "{w}");
    assert!(
        !root
            .path()
            .join("data/circle/external-services-cutover/record.json")
            .exists(),
        "the cutover's record is closed once CircleCI is back"
    );

    // CircleCI, back on its embedded data, wrote to it; here the copy differs instead.
    s.psql("circle", "DELETE FROM builds WHERE num <= 50");
    s.psql(
        "postgres",
        "ALTER DATABASE cron_service_production RESET default_transaction_read_only",
    );
    let out = tf.apply();
    assert!(
        out.contains("circleci_data_migration.m: Creation complete"),
        "{out}"
    );
    assert_eq!(count(&s, "circle", "builds"), 300);
    assert_eq!(
        count(&s, "cron_service_production", "qrtz_blob_triggers"),
        40
    );
    let skipped = output(&tf)["skipped"].as_array().unwrap().clone();
    assert!(!skipped.contains(&json!("postgres:circle")), "{skipped:?}");
    assert!(skipped.contains(&json!("postgres:vms")), "{skipped:?}");
    assert_eq!(tf.plan_code(), 0);

    // Started by hand since, on these files: the copies are CircleCI's data now, and
    // a new migration refuses them again.
    start_app(&sim);
    tf.write_main(&main_tf(
        &s,
        root.path(),
        &mount,
        &format!("{pin}\ntriggers = {{ n = \"2\" }}"),
    ));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(err.contains("Target database not empty"), "{err}");
    tf.ok(&["destroy", "-auto-approve"]);
    drop(sim);
}

#[test]
fn a_database_missing_in_the_embedded_data_fails_before_any_is_carried() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    s.fresh_runbook_targets();
    s.psql(
        "postgres",
        "DROP DATABASE IF EXISTS no_such_db WITH (FORCE)",
    );
    let root = s.embedded_root("300");
    let sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    start_app(&sim);
    let mount = format!("transit-miss-{}", std::process::id());
    // The target has a tenth database, the embedded data does not: it would be the
    // smallest (no size) and so the last carried.
    let list: Vec<String> = common::RUNBOOK_DATABASES
        .iter()
        .chain(&["no_such_db"])
        .map(|d| format!("{d:?}"))
        .collect();
    let text = main_tf(&s, root.path(), &mount, "");
    let (pg_block, migration_block) = (
        "  deletion_policy        = \"drop\"",
        "    user        = circleci_postgres_databases.pg.user",
    );
    assert!(text.contains(pg_block) && text.contains(migration_block));
    let text = text
        .replacen(
            pg_block,
            &format!("  databases = [{}]\n{pg_block}", list.join(", ")),
            1,
        )
        .replacen(
            migration_block,
            &format!("{migration_block}\n    databases = circleci_postgres_databases.pg.databases"),
            1,
        );
    let tf = Tf::new(&text);
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        err.contains("Database missing in the embedded PostgreSQL"),
        "{err}"
    );
    assert!(err.contains("has no database \"no_such_db\""), "{err}");
    // Found before the first database was carried: nothing restored, nothing exported.
    for db in common::RUNBOOK_DATABASES {
        let tables = s.psql(
            db,
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public'",
        );
        assert_eq!(tables.trim(), "0", "{db} was restored into");
    }
    let export = root.path().join("data/circle/external-services-export");
    let dumps: Vec<String> = std::fs::read_dir(&export)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(".dump"))
                .collect()
        })
        .unwrap_or_default();
    assert!(dumps.is_empty(), "{dumps:?}");
    assert_eq!(app_state(&sim), "started");
    tf.ok(&["destroy", "-auto-approve"]);
    s.psql(
        "postgres",
        "DROP DATABASE IF EXISTS no_such_db WITH (FORCE)",
    );
    drop(sim);
}

#[test]
fn bad_input_names_the_attribute() {
    let s = servers();
    let root = common::searchable_tempdir();
    let tf = Tf::new(&main_tf(
        &s,
        root.path(),
        "transit",
        "export_dir = \"relative/dir\"",
    ));
    let err = tf.fails(&["validate", "-no-color"]);
    assert!(err.contains("export_dir"), "{err}");
    // The migration's own directory: never a system directory, nor the embedded data
    // (its default place), a parent of it or inside it.
    for (dir, why) in [
        ("/tmp", "\"/tmp\" is a system directory"),
        (
            "/data/circle/mongo",
            "is mongo.data_dir (/data/circle/mongo)",
        ),
        ("/data/circle/postgres", "contains postgres.data_dir"),
        ("/data/circle/mongo/export", "is inside mongo.data_dir"),
    ] {
        tf.write_main(&main_tf(
            &s,
            root.path(),
            "transit",
            &format!("export_dir = {dir:?}"),
        ));
        let err = flat(&tf.fails(&["validate", "-no-color"]));
        assert!(err.contains("Unsafe export directory"), "{err}");
        assert!(err.contains(why), "{why:?} not in {err}");
        assert!(
            err.contains(&format!("export_dir = {dir:?}")),
            "not on export_dir: {err}"
        );
    }
    // The embedded Vault over plain HTTP to another machine: a warning on
    // source_address (its root token and the key's backup would travel in clear); on
    // the Services machine's loopback, none.
    let base = main_tf(&s, root.path(), "transit", "");
    let vaddr = s.get("CIRCLECI_TEST_EMBEDDED_VAULT_ADDR");
    assert!(base.contains(&format!("{vaddr:?}")));
    tf.write_main(&base.replace(&format!("{vaddr:?}"), "\"http://services.internal:8200\""));
    let out = flat(&tf.ok(&["validate", "-no-color"]));
    assert!(
        out.contains("Warning: Embedded Vault reached in plain text"),
        "{out}"
    );
    assert!(
        out.contains("source_address = \"http://services.internal:8200\""),
        "{out}"
    );
    assert!(
        out.contains("via_services_host = true in this block"),
        "{out}"
    );
    tf.write_main(&base);
    let out = tf.ok(&["validate", "-no-color"]);
    assert!(!out.contains("plain text"), "{out}");

    // The restore's TLS: verify-ca and verify-full need the CA on the Services machine;
    // anything below verify-full is a warning on sslmode (the default, require, too).
    let pg_ca = format!("ca_file     = \"{}\"", common::cutover::PG_CA);
    assert!(base.contains(&pg_ca));
    tf.write_main(&base.replace(&pg_ca, ""));
    let err = flat(&tf.fails(&["validate", "-no-color"]));
    assert!(err.contains("CA certificate needed"), "{err}");
    assert!(err.contains("sslmode = \"verify-full\" checks"), "{err}");
    let restore_tls = format!("sslmode     = \"verify-full\"\n    {pg_ca}");
    assert!(base.contains(&restore_tls));
    tf.write_main(&base.replace(&restore_tls, ""));
    let out = flat(&tf.ok(&["validate", "-no-color"]));
    assert!(
        out.contains("Warning: PostgreSQL server identity not checked by the restore"),
        "{out}"
    );
    assert!(out.contains("sslmode = \"require\" (the default)"), "{out}");
    tf.write_main(&base);
    let out = tf.ok(&["validate", "-no-color"]);
    assert!(!out.contains("identity not checked"), "{out}");

    let bad = main_tf(&s, root.path(), "transit", "")
        .replacen(
            "    password_wo = ",
            "    image       = \"postgres:9.5.8; rm -rf /\"\n    password_wo = ",
            1,
        )
        .replace(
            "sslmode     = \"verify-full\"\n    ca_file",
            "sslmode     = \"verify-none\"\n    ca_file",
        );
    tf.write_main(&bad);
    let err = tf.fails(&["validate", "-no-color"]);
    assert!(err.contains("Invalid image"), "{err}");
    assert!(
        err.contains("image       = \"postgres:9.5.8; rm -rf /\""),
        "{err}"
    );
    assert!(err.contains("Invalid sslmode"), "{err}");

    // How many databases at once, and the dumps' zlib level: whole numbers in range,
    // each error on its own line.
    let bad = main_tf(&s, root.path(), "transit", "parallelism = 0").replacen(
        "    password_wo = ",
        "    compression = 10\n    password_wo = ",
        1,
    );
    tf.write_main(&bad);
    let err = tf.fails(&["validate", "-no-color"]);
    assert!(err.contains("Invalid parallelism"), "{err}");
    assert!(err.contains("parallelism = 0"), "{err}");
    assert!(err.contains("0 is not a whole number from 1 to 8"), "{err}");
    assert!(err.contains("Invalid compression"), "{err}");
    assert!(err.contains("compression = 10"), "{err}");

    let bad = main_tf(&s, root.path(), "transit", "").replace(
        "    hosts       = circleci_external_mongo.mongo.hosts",
        "    hosts       = [\"a:27017\", \"b:27017\"]\n    databases   = [\"circle_ghe\", \"admin\"]\n    data_dir    = \"/data/x:/etc\"",
    );
    tf.write_main(&bad);
    let err = flat(&tf.fails(&["validate", "-no-color"]));
    assert!(err.contains("Replica set name missing"), "{err}");
    assert!(err.contains("\"admin\" is MongoDB's own database"), "{err}");
    assert!(err.contains("must not contain \":\""), "{err}");
    assert!(
        err.contains("databases = [\"circle_ghe\", \"admin\"]"),
        "{err}"
    );
}

/// The export cannot fit on its volume: the plan says so on export_dir, with the sizes,
/// before anything is created or stopped; with room, the plan's warning estimates the
/// downtime from the embedded data's size and names the licence prerequisite.
#[test]
fn a_too_small_export_volume_is_an_error_at_plan() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = s.embedded_root("100");
    let sim = Sim::new(
        &s,
        json!({"root": root.path(), "transition": 1, "disk_avail": 4096}),
    );
    start_app(&sim);
    let tf = Tf::new(&main_tf(&s, root.path(), "transit", ""));
    let err = flat(&tf.fails(&["plan", "-no-color"]));
    assert!(err.contains("Not enough space for the export"), "{err}");
    assert!(err.contains("0 MB free"), "{err}");
    assert!(
        err.contains("/data/circle/external-services-export is expected to need about"),
        "{err}"
    );
    // Uncompressed dumps (the default) may outgrow the data directory: counted twice,
    // and the error says how to need less.
    assert!(err.contains("PostgreSQL's twice"), "{err}");
    assert!(err.contains("set postgres.compression to 1-9"), "{err}");
    assert!(
        err.contains("resource \"circleci_data_migration\" \"m\""),
        "{err}"
    );
    assert_eq!(app_state(&sim), "started");

    sim.set(json!({"root": root.path(), "transition": 1}));
    let plan = flat(&tf.ok(&["plan", "-no-color"]));
    assert!(plan.contains("This apply stops CircleCI"), "{plan}");
    assert!(
        plan.contains("Embedded data to carry: PostgreSQL "),
        "{plan}"
    );
    assert!(plan.contains("Expected migration time about"), "{plan}");
    assert!(
        plan.contains("CircleCI's license must allow external services"),
        "{plan}"
    );
    drop(sim);
}

/// The restore's client tools: chosen for the target's release (the state records
/// them), and refused when they cannot log in to it or speak its protocol: at plan
/// when the image's tag names a release, else before the stop from what the tools
/// say they are, with nothing stopped and no container left.
#[test]
fn restore_tools_follow_the_target_and_are_refused_before_the_stop() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    s.fresh_runbook_targets();
    let root = s.embedded_root("50");
    // An image whose tag names no release: the simulator knows what its tools are.
    let opaque = "registry.internal/pg-client:stable";
    let sim = Sim::new(
        &s,
        json!({"root": root.path(), "transition": 1, "images": {opaque: "postgres:9.6.24"}}),
    );
    start_app(&sim);
    let mount = format!("transit-tools-{}", std::process::id());
    let base = main_tf(&s, root.path(), &mount, "");
    let with = |pg: &str, mongo: &str| {
        let pg_at = "    user        = circleci_postgres_databases.pg.user\n";
        let mongo_at = "    username    = circleci_external_mongo.mongo.username\n";
        assert!(base.contains(pg_at) && base.contains(mongo_at));
        base.replacen(pg_at, &format!("{pg_at}{pg}"), 1).replacen(
            mongo_at,
            &format!("{mongo_at}{mongo}"),
            1,
        )
    };
    let tf = Tf::new(&with("    restore_image = \"postgres:9.6\"\n", ""));
    let out = flat(&tf.fails(&["plan", "-no-color"]));
    assert!(
        out.contains("postgres.restore_image \"postgres:9.6\" cannot restore into PostgreSQL 15"),
        "{out}"
    );
    assert!(
        out.contains("libpq 9.6 cannot authenticate with SCRAM-SHA-256"),
        "{out}"
    );
    assert!(
        out.contains("restore_image = \"postgres:9.6\""),
        "not on the attribute: {out}"
    );

    tf.write_main(&with("", "    restore_image = \"mongo:3.6.6\"\n"));
    let out = flat(&tf.fails(&["plan", "-no-color"]));
    assert!(
        out.contains("mongo.restore_image \"mongo:3.6.6\" cannot restore into MongoDB 6.0"),
        "{out}"
    );
    assert!(out.contains("legacy opcodes"), "{out}");

    // Tools newer than the target: a caution, not a refusal.
    tf.write_main(&with("    restore_image = \"postgres:17\"\n", ""));
    let out = flat(&tf.ok(&["plan", "-no-color"]));
    assert!(
        out.contains("The restore's tools are newer than the target"),
        "{out}"
    );
    assert!(
        out.contains("pg_restore 17 is newer than the target's PostgreSQL 15"),
        "{out}"
    );

    // The tag says nothing: the plan passes, and the apply asks the tools themselves.
    tf.write_main(&with(&format!("    restore_image = {opaque:?}\n"), ""));
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        out.contains(&format!(
            "postgres.restore_image {opaque:?} cannot restore into PostgreSQL 15"
        )),
        "{out}"
    );
    assert!(out.contains("libpq 9.6 cannot authenticate"), "{out}");
    assert!(out.contains("Nothing was stopped or changed"), "{out}");
    assert_eq!(app_state(&sim), "started");
    assert_eq!(sim.migration_containers(), Vec::<String>::new());

    // Left out: the target's own release, in the plan already and in the state.
    tf.write_main(&with("", ""));
    let plan = flat(&tf.ok(&["plan", "-no-color"]));
    assert!(plan.contains("restore_image = \"postgres:15\""), "{plan}");
    assert!(plan.contains("restore_image = \"mongo:6.0\""), "{plan}");
    tf.apply();
    let m = output(&tf);
    assert_eq!(m["postgres"]["restore_image"], "postgres:15");
    assert_eq!(m["mongo"]["restore_image"], "mongo:6.0");
    assert_eq!(sim.migration_containers(), Vec::<String>::new());
    let empty = flat(&tf.ok(&["plan", "-no-color", "-detailed-exitcode"]));
    assert!(empty.contains("No changes"), "{empty}");
}

/// A CircleCI version the runbook is not for: the migration refuses on
/// allowed_versions, as the restart does, before it stops or reads anything.
#[test]
fn another_circleci_version_is_refused_before_anything_stops() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = common::searchable_tempdir();
    let sim = Sim::new(
        &s,
        json!({"root": root.path(), "transition": 1, "version": "2.19.1"}),
    );
    start_app(&sim);
    let before = sim.replicatedctl(&["app", "status"])[0]["LastModifiedAt"].clone();
    let config = |extra: &str| {
        format!(
            "{}\nresource \"circleci_data_migration\" \"m\" {{\n  config_root = {:?}\n  \
             embedded_nomad_endpoint = {:?}\n{extra}  postgres {{\n    \
             host        = \"127.0.0.1\"\n    port        = {}\n    password_wo = \"x\"\n  }}\n}}\n",
            s.provider_block(""),
            root.path().to_str().unwrap(),
            s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"),
            s.pg_port()
        )
    };
    let tf = Tf::new(&config(""));
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(out.contains("CircleCI version not allowed"), "{out}");
    assert!(out.contains("runs CircleCI 2.19.1"), "{out}");
    assert!(out.contains("Nothing was stopped or changed"), "{out}");
    assert_eq!(app_state(&sim), "started");
    assert_eq!(
        sim.replicatedctl(&["app", "status"])[0]["LastModifiedAt"],
        before,
        "the app was touched"
    );
    // A bad pattern is an error at plan, on the attribute.
    tf.write_main(&config("  allowed_versions = [\"2.17.\"]\n"));
    let out = flat(&tf.fails(&["validate", "-no-color"]));
    assert!(out.contains("Invalid version pattern"), "{out}");
    // A CA the restore would check the target against, missing on the Services
    // machine: refused before the stop (Docker would mount an empty directory there).
    sim.set(json!({"root": root.path(), "transition": 1}));
    let with_ca = config("").replace(
        "    password_wo = \"x\"\n",
        "    password_wo = \"x\"\n    sslmode     = \"verify-full\"\n    ca_file     = \"/etc/ssl/missing-ca.pem\"\n",
    );
    tf.write_main(&with_ca);
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(out.contains("CA certificate not found"), "{out}");
    assert!(
        out.contains("/etc/ssl/missing-ca.pem is not a PEM certificate file"),
        "{out}"
    );
    assert!(
        out.contains("ca_file = \"/etc/ssl/missing-ca.pem\""),
        "not on ca_file: {out}"
    );
    assert_eq!(app_state(&sim), "started");
}

/// A temporary container an earlier run left over the embedded data (a provider
/// killed mid-migration): the next plan names it; an apply removes it before anything
/// else; one that cannot be removed stops the apply (the migration's, the restart's),
/// naming it, before anything is stopped: CircleCI never runs next to it.
#[test]
fn a_left_migration_container_is_named_removed_and_never_shares_the_data() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    s.fresh_runbook_targets();
    let root = s.embedded_root("50");
    let sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    start_app(&sim);
    let docker = |args: &[&str]| sim.docker(args);
    let name = "circleci-data-migration-postgres";
    let leave_one = || {
        sim.run_over_embedded_data(name);
        assert!(docker(&["ps", "--format", "{{.Names}}"]).contains(name));
    };
    leave_one();
    let mount = format!("transit-left-{}", std::process::id());
    let tf = Tf::new(&main_tf(&s, root.path(), &mount, ""));
    let plan = flat(&tf.ok(&["plan", "-no-color"]));
    assert!(
        plan.contains("Warning: A migration container was left running"),
        "{plan}"
    );
    assert!(plan.contains(&format!("{name} still run(s)")), "{plan}");

    // It cannot be removed: the apply stops before anything else.
    sim.set(json!({"root": root.path(), "transition": 1, "rm_refused": [name]}));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(err.contains("A migration container still runs"), "{err}");
    assert!(err.contains(name), "{err}");
    assert!(err.contains("Nothing was stopped or changed."), "{err}");
    assert_eq!(app_state(&sim), "started");

    // Nor does a restart, which checks before it stops anything.
    let restart = Tf::new(&format!(
        "{}\nresource \"circleci_services_restart\" \"r\" {{\n  config_root             = {:?}\n  \
         embedded_nomad_endpoint = {:?}\n  start_timeout           = \"30s\"\n  verify_timeout          = \"10s\"\n  \
         triggers = {{ t = \"1\" }}\n}}\n",
        s.provider_block(""),
        root.path().to_str().unwrap(),
        s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"),
    ));
    let err = flat(&restart.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(err.contains("A migration container still runs"), "{err}");
    assert!(
        err.contains("CircleCI is not started while it runs"),
        "{err}"
    );
    assert!(err.contains("Nothing was stopped or changed."), "{err}");
    assert_eq!(app_state(&sim), "started", "the restart stopped CircleCI");

    // Nor with CircleCI already stopped (as a migration leaves it): the apply ends at
    // that check, before any file is put back or anything started.
    sim.replicatedctl(&["app", "stop"]);
    for _ in 0..100 {
        if app_state(&sim) == "stopped" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(app_state(&sim), "stopped");
    let err = flat(&restart.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(err.contains("A migration container still runs"), "{err}");
    assert!(err.contains("Nothing was stopped or changed."), "{err}");
    assert!(!err.contains("CircleCI was not started"), "{err}");
    assert_eq!(app_state(&sim), "stopped", "the restart started CircleCI");
    start_app(&sim);

    // Removable: the apply removes it first and migrates.
    sim.set(json!({"root": root.path(), "transition": 1}));
    let out = tf.apply();
    assert!(
        out.contains("circleci_data_migration.m: Creation complete"),
        "{out}"
    );
    assert!(!docker(&["ps", "--format", "{{.Names}}"]).contains("circleci-data-migration"));
    tf.ok(&["destroy", "-auto-approve"]);
    drop(sim);
}

/// A migration's own container whose `docker rm -f` fails at its end (a busy daemon):
/// the migration lists its containers again, tries once more, and stops there, naming
/// it; CircleCI stays stopped, never started next to a server over its data. Each
/// part in turn (each reports its own failed removal), then, once the containers can
/// go, the next apply removes what is left and converges. (The end of a migration
/// whose every removal succeeded skips that listing: this is the path that must still
/// take it.)
#[test]
fn a_migration_container_that_will_not_go_keeps_circleci_stopped() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    s.fresh_runbook_targets();
    let root = s.embedded_root("50");
    let (pg, mongo) = (
        "circleci-data-migration-postgres",
        "circleci-data-migration-mongo",
    );
    // Removed however the test ends (dropped after `sim`, whose settings refuse it).
    let docker = Path::new(s.get("CIRCLECI_TEST_SIM")).join("docker");
    let _left = [
        common::sim::Removed(docker.clone(), pg),
        common::sim::Removed(docker, mongo),
    ];
    let sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    start_app(&sim);
    let mount = format!("transit-stays-{}", std::process::id());
    let tf = Tf::new(&main_tf(&s, root.path(), &mount, ""));
    // The second round begins with the first's container left: removed before
    // anything else, as its rm is no longer refused.
    for (stays, goes) in [(pg, mongo), (mongo, pg)] {
        sim.set(json!({"root": root.path(), "transition": 1, "rm_refused": [stays]}));
        let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
        assert!(err.contains("A migration container still runs"), "{err}");
        // The error's words (the plan's warning names what an earlier round left).
        let named = |c: &str| {
            format!("{c} still run(s) on the Services machine over the embedded data; docker rm")
        };
        assert!(err.contains(&named(stays)), "{err}");
        assert!(!err.contains(&named(goes)), "{err}");
        assert!(err.contains("The migration stops here."), "{err}");
        assert_eq!(
            app_state(&sim),
            "stopped",
            "CircleCI started next to {stays}"
        );
        let ps = sim.docker(&["ps", "--format", "{{.Names}}"]);
        assert!(ps.lines().any(|l| l == stays), "{ps}");
        assert!(!ps.lines().any(|l| l == goes), "{ps}");
        // The tools' containers went.
        assert!(!ps.contains("-restore"), "{ps}");
    }

    sim.set(json!({"root": root.path(), "transition": 1}));
    let out = tf.apply();
    assert!(
        out.contains("circleci_data_migration.m: Creation complete"),
        "{out}"
    );
    assert!(!sim
        .docker(&["ps", "--format", "{{.Names}}"])
        .contains("circleci-data-migration"));
    tf.ok(&["destroy", "-auto-approve"]);
    drop(sim);
}

/// Issue 28: the PostgreSQL and MongoDB parts run at the same time, under one bound.
/// PostgreSQL's first verified database is held at its fault point, its worker keeping
/// one of the two permits (`parallelism = 2`): the other lets a MongoDB database be
/// restored and verified meanwhile. (Before, MongoDB began only after the last
/// PostgreSQL database.) Released, the migration completes.
#[test]
fn postgres_and_mongo_databases_are_carried_at_once() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    s.fresh_runbook_targets();
    let root = s.embedded_root("100");
    let sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let mount = format!("transit-both-{}", std::process::id());
    let tf = Tf::new(&main_tf(&s, root.path(), &mount, "parallelism = 2"));
    let faults = tempfile::tempdir().unwrap();
    let (pg, mongo) = (
        "circleci_data_migration.database_loop",
        "circleci_data_migration.mongo_loop",
    );
    for p in [pg, mongo] {
        std::fs::write(faults.path().join(format!("{p}.armed")), b"").unwrap();
    }
    let child = common::spawn_apply_with_faults(&tf, faults.path());
    common::wait_reached(faults.path(), pg, 120);
    // A point holds for two minutes: a MongoDB database verified within one is one
    // carried while PostgreSQL's is still held. (Not asserted here: the apply is
    // released and waited for first, so that a failure leaves nothing running.)
    let reached = faults.path().join(format!("{mongo}.reached"));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reached.exists() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let overlapped = reached.exists();
    for p in [pg, mongo] {
        std::fs::write(faults.path().join(format!("{p}.go")), b"").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = flat(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ));
    assert!(
        overlapped,
        "no MongoDB database was carried while a PostgreSQL database was held"
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(count(&s, "circle", "builds"), 100);
    assert_eq!(documents(&s, "circle_ghe", "builds"), 10);
    assert_eq!(tf.plan_code(), 0);
    tf.ok(&["destroy", "-auto-approve"]);
    drop(sim);
}

/// The provider's debug log of an apply: every command it ran on the Services machine,
/// in order, as (command line, exit status).
fn commands_in(log: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(": `")?;
            let (cmd, status) = rest.rsplit_once("` exited with ")?;
            let status = status.split(':').next()?.to_string();
            Some((cmd.to_string(), status))
        })
        .collect()
}

#[test]
fn a_container_name_taken_after_the_preflight_is_freed_and_none_is_removed_unasked() {
    // The downtime waits for every command: a container's `docker rm` runs only when
    // its `docker run` was refused (the name taken), never before each run in case.
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    s.fresh_runbook_targets();
    let root = s.embedded_root("100");
    let sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let mount = format!("transit-taken-{}", std::process::id());
    let tf = Tf::new(&main_tf(&s, root.path(), &mount, ""));
    let faults = tempfile::tempdir().unwrap();
    let point = "circleci_data_migration.before_containers";
    std::fs::write(faults.path().join(format!("{point}.armed")), b"").unwrap();
    let log = faults.path().join("provider.log");
    let child = common::spawn_apply_with_faults_env(
        &tf,
        faults.path(),
        &[
            ("TF_LOG_PROVIDER", "debug".as_ref()),
            ("TF_LOG_PATH", log.as_os_str()),
        ],
    );
    common::wait_reached(faults.path(), point, 120);
    // CircleCI stopped, the preflight's check for leftovers passed: a container of the
    // migration's name appears over the embedded data (a second apply, by hand).
    let name = "circleci-data-migration-postgres";
    sim.run_over_embedded_data(name);
    std::fs::write(faults.path().join(format!("{point}.go")), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = flat(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ));
    assert!(out.status.success(), "{text}");
    assert_eq!(count(&s, "circle", "builds"), 100);

    let cmds = commands_in(&log);
    let runs: Vec<&(String, String)> = cmds
        .iter()
        .filter(|(c, _)| c.starts_with(&format!("docker 'run' '--name' '{name}'")))
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_ne!(
        runs[0].1, "Some(0)",
        "the first run took a taken name: {runs:?}"
    );
    assert_eq!(runs[1].1, "Some(0)", "{runs:?}");
    // Every `docker rm` of a name follows a `docker run` of it: refused (the name was
    // taken) or done (the container's own removal at the end).
    let mut ran = std::collections::HashSet::new();
    for (c, _) in &cmds {
        if let Some(rest) = c.strip_prefix("docker 'run' '--name' '") {
            ran.insert(rest.split('\'').next().unwrap().to_string());
        }
        if let Some(rest) = c.strip_prefix("docker 'rm' '-f' '") {
            let n = rest.split('\'').next().unwrap();
            assert!(ran.contains(n), "`{c}` before any run of {n}: {cmds:#?}");
        }
    }
    assert!(
        cmds.iter()
            .any(|(c, _)| c == &format!("docker 'rm' '-f' '{name}'")),
        "the taken name was never freed: {cmds:#?}"
    );
    tf.ok(&["destroy", "-auto-approve"]);
    drop(sim);
}
