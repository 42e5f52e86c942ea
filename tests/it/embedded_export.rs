//! The embedded PostgreSQL of the Services-machine simulator, driven the way CircleCI's
//! export script drives it and the data migration will: over the provider's SSH
//! commands, a temporary `postgres:9.5.8` container on /data/circle/postgres/9.5/data
//! (dev/fixtures/embedded_fixture.sh made it), `pg_dump` inside it, the container removed.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::sim::{embedded_postgres_run, Removed, Sim, SIMULATOR};
use serde_json::json;
use terraform_provider_circleci::testing::ssh::{Program, RemoteCommand};

/// Removes the temporary container (stopping its server) even when a check fails.
/// The test cluster on `port`, as its superuser.
fn postgres_admin(
    s: &common::Servers,
    port: u16,
) -> terraform_provider_circleci::testing::postgres::PgAdmin {
    use terraform_provider_circleci::testing::postgres::{PgAdmin, PgConfig, SslMode};
    PgAdmin::new(PgConfig {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        password: terraform_provider_circleci::testing::Secret::new(
            s.get("CIRCLECI_TEST_PG_PASSWORD"),
        ),
        database: "postgres".into(),
        sslmode: SslMode::Disable,
        sslrootcert: None,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(60),
        lock_timeout: Duration::from_secs(10),
        route: Default::default(),
    })
}

fn docker(args: &[&str]) -> RemoteCommand {
    RemoteCommand::new(Program::Docker, args.iter().copied()).unwrap()
}

#[test]
fn a_temporary_postgres_container_dumps_the_embedded_databases() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(dumps_the_embedded_databases());
}

async fn dumps_the_embedded_databases() {
    let s = common::servers();
    let root = s.embedded_root("300");
    let _sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let h = s.services_host();
    let t = Duration::from_secs(60);
    let name = "circle-postgres-export";
    let _rm = Removed(
        std::path::Path::new(s.get("CIRCLECI_TEST_SIM")).join("docker"),
        name,
    );
    let run = h
        .run(&docker(&embedded_postgres_run(name)), None, t)
        .await
        .unwrap();
    assert!(run.success(), "{}", run.evidence());
    // One query through psql in the container, as the export script runs it.
    let psql = |sql: &'static str| {
        let cmd = docker(&["exec", name, "psql", "-U", "postgres", "-Atc", sql]);
        let h = &h;
        async move { h.run(&cmd, None, t).await.unwrap() }
    };
    let listed = psql("SELECT datname FROM pg_database ORDER BY 1").await;
    let dbs = listed.stdout_text();
    for db in [
        "circle",
        "conductor_production",
        "contexts_service_production",
        "cron_service_production",
        "vms",
    ] {
        assert!(dbs.lines().any(|l| l == db), "{db} missing: {dbs}");
    }
    // The stand-in runs queries as 9.5 does, in one process: parallel query (9.6) and
    // JIT (11) would spread the checksums over CPUs a real 9.5 leaves to the restore.
    let settings = psql(
        "SELECT concat_ws(' ', current_setting('max_parallel_workers_per_gather'), \
         current_setting('max_parallel_maintenance_workers'), current_setting('jit'))",
    )
    .await;
    assert_eq!(
        settings.stdout_text().trim(),
        "0 0 off",
        "{}",
        settings.evidence()
    );
    let dump = h
        .run(
            &docker(&[
                "exec",
                name,
                "pg_dump",
                "-U",
                "postgres",
                "-Fc",
                "conductor_production",
            ]),
            None,
            t,
        )
        .await
        .unwrap();
    assert!(dump.success(), "{}", dump.evidence());
    let rm = h.run(&docker(&["rm", "-f", name]), None, t).await.unwrap();
    assert!(rm.success(), "{}", rm.evidence());
    let ps = h
        .run(&docker(&["ps", "--format", "{{.Names}}"]), None, t)
        .await
        .unwrap();
    assert!(
        !ps.stdout_text().contains(name),
        "the container is still listed"
    );

    // The dump is a real pg_dump archive: pg_restore reads its table of contents.
    let file = root.path().join("conductor.dump");
    std::fs::write(&file, &dump.stdout).unwrap();
    let toc = Command::new("/usr/lib/postgresql/15/bin/pg_restore")
        .arg("-l")
        .arg(&file)
        .output()
        .unwrap();
    let toc = String::from_utf8_lossy(&toc.stdout);
    assert!(toc.contains("TABLE DATA public build_jobs"), "{toc}");
}

/// Export two embedded databases into the export directory, import them into
/// pre-created databases of the external PostgreSQL as their owner (no superuser), and
/// compare every table's row count and content digest on both sides.
#[test]
fn export_import_and_verify_every_table() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    use terraform_provider_circleci::testing::embedded_postgres::{
        EmbeddedPostgres, Source, Target,
    };
    use terraform_provider_circleci::testing::migration::{self as mig};
    use terraform_provider_circleci::testing::Secret;

    let s = common::servers();
    let root = s.embedded_root("500");
    let _sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let n = std::process::id();
    let role = format!("mig_{n}");
    let password = Secret::new(format!("mig-pw-{n}-'\"$x"));
    let pg = postgres_admin(&s, s.pg_port());
    let name = "circle-postgres-migrate";
    let _rm = Removed(
        std::path::Path::new(s.get("CIRCLECI_TEST_SIM")).join("docker"),
        name,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        pg.ensure_role(&role, password.expose()).await.unwrap();
        let h = s.services_host();
        let t = Duration::from_secs(60);
        let export = format!("/var/lib/circleci-export-{n}");
        let source = Source {
            image: mig::PG_IMAGE,
            restore_image: "postgres:15",
            data_dir: mig::PG_DATA,
            container: name,
            ca_file: None,
            // As when either server stores timestamps as floating point: this test
            // compares their text forms (the next one their values).
            target_integer_datetimes: false,
        };
        let e = EmbeddedPostgres::start(&h, &source, &export, t, t)
            .await
            .unwrap();
        assert!(!e.timestamps_by_value());
        // The databases as the readiness probe listed them, with their sizes.
        let listed = e.databases();
        for db in ["circle", "conductor_production", "vms"] {
            assert!(
                listed.iter().any(|(d, n)| d == db && *n > 1_000_000),
                "{db}: {listed:?}"
            );
        }
        let target = Target {
            host: "127.0.0.1",
            port: s.pg_port(),
            user: &role,
            password: &password,
            sslmode: "prefer",
        };
        // The `docker exec`s running in each container (the simulator notes each
        // while it runs).
        let run = std::path::Path::new(s.get("CIRCLECI_TEST_SIM_STATE")).join("run");
        let running = |c: &str| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&run)
                .unwrap()
                .filter_map(|f| f.ok()?.file_name().into_string().ok())
                .filter(|f| f.starts_with(&format!("{c}.exec.")))
                .collect();
            v.sort();
            v
        };
        let mut between = Vec::new();
        for db in ["circle", "conductor_production"] {
            let into = format!("mig_{n}_{db}");
            pg.create_database(&into, &role).await.unwrap();
            // As circleci_postgres_databases leaves them: the extensions already there.
            pg.ensure_extensions(&into, &["uuid-ossp".to_string()])
                .await
                .unwrap();
            // circle uncompressed (the default), conductor_production at zlib level 6.
            let level = if db == "circle" { 0 } else { 6 };
            let x = e.export(db, level).await.unwrap();
            assert_eq!(x.file, format!("{db}.dump"));
            let dump = root
                .path()
                .join(format!("var/lib/circleci-export-{n}/{db}.dump"));
            let header = std::process::Command::new("pg_restore")
                .arg("-l")
                .arg(&dump)
                .output()
                .unwrap();
            let header = String::from_utf8_lossy(&header.stdout).to_string();
            // pg_restore 15 prints the level; 16 and later the method.
            let method = if level == 0 { "none" } else { "gzip" };
            assert!(
                header.contains(&format!("Compression: {level}\n"))
                    || header.contains(&format!("Compression: {method}")),
                "{header}"
            );
            // As 9.5's pg_dump writes it (the simulator's stand-in): the restore below
            // has to leave out initdb's schema, or it fails on `CREATE SCHEMA public`.
            assert!(header.contains("Dump Version: 1.12-0"), "{header}");
            assert!(header.contains(" SCHEMA - public postgres\n"), "{header}");
            assert!(x.size > 0);
            let source = x.source;
            assert!(source.iter().any(|t| t.rows >= 120), "{source:?}");
            // The target, read back as the role from the container (the Services
            // machine's side), by the import and again on its own.
            let imported = e.import(db, &into, &target, false).await.unwrap();
            // The restore's own time, told apart from the comparison after it (the
            // downtime's parts in `make bench`), by the image's bash.
            assert!(
                imported.restore.is_some_and(|r| r > std::time::Duration::ZERO),
                "{:?}",
                imported.restore
            );
            let (sha256, imported) = (imported.sha256, imported.tables);
            // The dump's SHA-256, read by the import while it restored.
            assert_eq!(
                sha256,
                Some(terraform_provider_circleci::testing::file_sha256(
                    &std::fs::read(&dump).unwrap()
                ))
            );
            let target_stats = e.target_stats(&into, &target).await.unwrap();
            assert_eq!(imported, target_stats);
            // One value changed in the target: its table's checksum differs, the count not.
            let table = if db == "circle" { "builds" } else { "build_jobs" };
            let column = if db == "circle" { "status" } else { "name" };
            s.psql(&into, &format!("UPDATE {table} SET {column} = {column} || '.' WHERE ctid = (SELECT min(ctid) FROM {table})"));
            let changed = e.target_stats(&into, &target).await.unwrap();
            let diffs = mig::compare(db, &source, &changed);
            assert_eq!(diffs.len(), 1, "{diffs:?}");
            assert!(diffs[0].contains("rows on both sides, but their content differs"), "{diffs:?}");
            s.psql(&into, &format!("UPDATE {table} SET {column} = rtrim({column}, '.') WHERE {column} LIKE '%.'"));
            assert_eq!(e.target_stats(&into, &target).await.unwrap(), imported, "changed back");
            assert_eq!(
                mig::compare(db, &source, &target_stats),
                Vec::<String>::new()
            );
            assert_eq!(source.len(), target_stats.len());
            // The tables belong to the role, not to postgres: restored without ownership.
            let owners = pg
                .text_rows(
                    &into,
                    "owners",
                    "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
                )
                .await
                .unwrap();
            assert_eq!(owners, vec![vec![role.clone()]]);
            // A second import into the same database fails as a whole.
            let again = e.import(db, &into, &target, false).await.unwrap_err();
            assert!(
                again.to_string().contains("Could not import database"),
                "{again}"
            );
            assert!(
                !again.to_string().contains("mig-pw-"),
                "the password leaked: {again}"
            );
            between.push((running(name), running(&format!("{name}-restore"))));
        }
        // Issue 28: between databases one export and one import command wait for the
        // next job, the same ones throughout (the second database's level-6 export got
        // a command of its own, ended after its job: one of each kind is kept here),
        // and a failed import did not end its command.
        let (first, second) = (&between[0], &between[1]);
        assert_eq!((first.0.len(), first.1.len()), (1, 1), "{between:?}");
        assert_eq!(first, second, "not the same commands");
        e.end_jobs().await;
        assert_eq!(
            (running(name), running(&format!("{name}-restore"))),
            (vec![], vec![]),
            "commands left running after end_jobs"
        );
        // The dumps stay in the export directory on the Services machine.
        let kept = root
            .path()
            .join(format!("var/lib/circleci-export-{n}/circle.dump"));
        assert!(kept.exists());
        // Sealed: the directory 0700, the files 0600, their SHA-256 as sha2 computes it.
        let files = vec![
            "circle.dump".to_string(),
            "conductor_production.dump".to_string(),
        ];
        let sealed = e.seal(&files).await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(kept.parent().unwrap()), 0o700);
        assert_eq!(mode(&kept), 0o600);
        let bytes = std::fs::read(&kept).unwrap();
        assert_eq!(sealed[0].size, bytes.len() as u64);
        assert_eq!(
            sealed[0].sha256,
            terraform_provider_circleci::testing::file_sha256(&bytes)
        );
        assert!(
            !kept.with_extension("dump.list").exists(),
            "the restore list stayed"
        );
        e.remove(&files[..1]).await.unwrap();
        assert!(!kept.exists());
        e.stop().await;
        for db in ["circle", "conductor_production"] {
            pg.drop_database(&format!("mig_{n}_{db}")).await.unwrap();
        }
        pg.drop_role(&role).await.unwrap();
    });
}

/// The proof of equality, on real servers: the same dump restored into the two
/// PostgreSQL configurations this machine runs (SCRAM with the defaults, and md5 with
/// per-database settings that print every value differently) gives the source's
/// checksums on both; a value moved to another row, a sequence set back, a table only
/// in the target and a large object each make a named difference.
#[test]
fn the_checksums_agree_across_configurations_and_see_every_change() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    use terraform_provider_circleci::testing::embedded_postgres::{
        EmbeddedPostgres, Source, Target,
    };
    use terraform_provider_circleci::testing::migration::{self as mig};
    use terraform_provider_circleci::testing::Secret;

    let s = common::servers();
    let root = s.embedded_root("300");
    let _sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let n = std::process::id();
    let role = format!("sum_{n}");
    let password = Secret::new(format!("sum-pw-{n}"));
    let md5_port: u16 = s.get("CIRCLECI_TEST_PG_MD5_PORT").parse().unwrap();
    let admin = |port: u16| postgres_admin(&s, port);
    let name = "circle-postgres-sums";
    let _rm = Removed(
        std::path::Path::new(s.get("CIRCLECI_TEST_SIM")).join("docker"),
        name,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = s.services_host();
        let t = Duration::from_secs(60);
        let source = Source {
            image: mig::PG_IMAGE,
            restore_image: "postgres:15",
            data_dir: mig::PG_DATA,
            container: name,
            ca_file: None,
            target_integer_datetimes: true,
        };
        let e = EmbeddedPostgres::start(&h, &source, &format!("/var/lib/circleci-sums-{n}"), t, t)
            .await
            .unwrap();
        // Both servers store timestamps as integers: hashed by value, not as text.
        assert!(e.timestamps_by_value());
        let ports = [s.pg_port(), md5_port];
        for port in ports {
            admin(port).ensure_role(&role, password.expose()).await.unwrap();
        }
        let target = |port: u16| Target {
            host: "127.0.0.1",
            port,
            user: &role,
            password: &password,
            sslmode: "prefer",
        };
        // domain holds floats, numeric, jsonb, arrays and booleans; circle timestamps,
        // a bigserial and text.
        for db in ["domain", "circle"] {
            let x = e.export(db, 1).await.unwrap();
            let into = format!("sum_{n}_{db}");
            for port in ports {
                admin(port).create_database(&into, &role).await.unwrap();
            }
            // The first prints floats as 9.5 does by default (15 digits), the second
            // prints every value its own way (floats shortest-exact, as 12 and later).
            s.psql(
                "postgres",
                &format!("ALTER DATABASE {into} SET extra_float_digits = 0"),
            );
            s.psql_at(
                md5_port,
                "postgres",
                &format!(
                    "ALTER DATABASE {into} SET TimeZone = 'Pacific/Chatham'; \
                     ALTER DATABASE {into} SET DateStyle = 'SQL, DMY'; \
                     ALTER DATABASE {into} SET IntervalStyle = 'iso_8601'; \
                     ALTER DATABASE {into} SET bytea_output = 'escape'; \
                     ALTER DATABASE {into} SET extra_float_digits = 3"
                ),
            );
            for port in ports {
                let after = e.import(db, &into, &target(port), false).await.unwrap().tables;
                assert_eq!(mig::compare(db, &x.source, &after), Vec::<String>::new(), "port {port}");
                assert_eq!(after, x.source, "port {port}");
            }
            let stats = || async { e.target_stats(&into, &target(s.pg_port())).await.unwrap() };
            let diffs = |after: &[mig::TableStat]| mig::compare(db, &x.source, after);
            if db == "circle" {
                // The timestamps' hash is their value's (what the migration's speed
                // relies on), computed here by hand; a microsecond moved in either
                // column is seen.
                // On the server whose sessions start in Pacific/Chatham.
                let by_hand = s.psql_at(md5_port, &into, &common::circle_migrations_by_value(" "));
                let m = x
                    .source
                    .iter()
                    .find(|t| t.table == "public.circle_migrations")
                    .unwrap();
                assert_eq!(by_hand.trim(), format!("{} {}", m.rows, m.checksum));
                // What 9.5 shares with 15 (integer timestamps): the hash is that of the
                // microseconds since 2000-01-01, whatever the version's own code.
                assert_eq!(
                    s.psql(
                        &into,
                        "SELECT timestamp_hash('2000-01-01 00:00:00.000001') = hashint8(1) \
                         AND timestamp_hash('1999-12-31 23:59:59') = hashint8(-1000000)"
                    )
                    .trim(),
                    "t"
                );
                for column in ["applied_at", "checked_at"] {
                    let nudge = |by: &str| {
                        s.psql(
                            &into,
                            &format!(
                                "UPDATE circle_migrations SET {column} = {column} {by} interval '1 microsecond' \
                                 WHERE id = 'migration-5'"
                            ),
                        )
                    };
                    nudge("+");
                    let d = diffs(&stats().await);
                    assert_eq!(d.len(), 1, "{column}: {d:?}");
                    assert!(d[0].contains("circle_migrations: ") && d[0].contains("content differs"), "{d:?}");
                    nudge("-");
                    assert_eq!(diffs(&stats().await), Vec::<String>::new(), "{column} put back");
                }
            }
            let table = if db == "domain" { "projects" } else { "builds" };
            let column = if db == "domain" { "score" } else { "status" };
            // One column's values swapped between two rows: the counts and every
            // column's multiset of values stay the same; the rows do not.
            let pair = s.psql(
                &into,
                &format!(
                    "SELECT a.id || ' ' || b.id FROM {table} a JOIN {table} b ON a.{column} <> b.{column} \
                     ORDER BY a.id, b.id LIMIT 1"
                ),
            );
            let (a, b) = pair.trim().split_once(' ').unwrap();
            let swap = format!(
                "UPDATE {table} SET {column} = CASE id WHEN {a} THEN (SELECT {column} FROM {table} WHERE id = {b}) \
                 ELSE (SELECT {column} FROM {table} WHERE id = {a}) END WHERE id IN ({a}, {b})"
            );
            s.psql(&into, &swap);
            let d = diffs(&stats().await);
            assert_eq!(d.len(), 1, "{d:?}");
            assert!(
                d[0].starts_with(&format!("{db}.public.{table}: ")) && d[0].contains("content differs"),
                "{d:?}"
            );
            s.psql(&into, &swap);
            assert_eq!(diffs(&stats().await), Vec::<String>::new(), "swapped back");
            // The sequence set behind the source's: named; ahead: no danger.
            let seq = format!("{table}_id_seq");
            let at = s.psql(&into, &format!("SELECT last_value FROM {seq}"));
            s.psql(&into, &format!("SELECT setval('{seq}', 1)"));
            let d = diffs(&stats().await);
            assert_eq!(
                d,
                [format!(
                    "{db}.public.{seq} (sequence): at {} in the source, behind at 1 in the target",
                    at.trim()
                )]
            );
            s.psql(&into, &format!("SELECT setval('{seq}', {} + 5)", at.trim()));
            assert_eq!(diffs(&stats().await), Vec::<String>::new(), "ahead");
            // A table only the target has, and a large object: named.
            s.psql(
                &into,
                &format!(
                    "CREATE TABLE operator_notes (n int); INSERT INTO operator_notes VALUES (1); \
                     CREATE TABLE private_notes (n int); GRANT SELECT ON operator_notes TO {role}"
                ),
            );
            s.psql(&into, "SELECT lo_from_bytea(0, 'x')");
            let d = diffs(&stats().await);
            assert_eq!(
                d,
                [
                    format!("{db}: large objects: 0 large objects in the source, 1 in the target"),
                    format!("{db}.public.operator_notes: only in the target (1 rows)"),
                    format!(
                        "{db}.public.private_notes: only in the target (not readable by the restore's user)"
                    ),
                ]
            );
            for port in ports {
                admin(port).drop_database(&into).await.unwrap();
            }
        }
        e.stop().await;
        for port in ports {
            admin(port).drop_role(&role).await.unwrap();
        }
    });
}

/// The stand-in for 9.5's `pg_dump` leaves the archive to the page cache, as 9.5 did
/// (syncing came with 10's `--no-sync`): the 15 underneath is told not to sync,
/// which would otherwise cost the export a write-out a real Services machine never
/// waits for. And, as 9.5, it refuses `--no-sync` from its caller.
#[test]
fn the_9_5_pg_dump_stand_in_does_not_sync_its_archive() {
    use std::os::unix::fs::PermissionsExt;
    let s = common::servers();
    let dir = tempfile::tempdir().unwrap();
    // A pg_dump 15 that records its arguments and writes no archive.
    let fake = dir.path().join("pg_dump");
    std::fs::write(
        &fake,
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let standin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dev/standins/pg95_dump_standin.py"
    );
    let run = |args: &[&str], pg95: &str| {
        let _ = std::fs::remove_file(dir.path().join("args"));
        let out = Command::new(s.get("CIRCLECI_TEST_PYTHON"))
            .arg(standin)
            .args(args)
            .env("CIRCLECI_SIM_PG_BIN", dir.path())
            .env("CIRCLECI_SIM_PG95", pg95)
            .output()
            .unwrap();
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap_or_default();
        (out, args)
    };
    let file = dir.path().join("x.dump");
    let file = file.to_str().unwrap();
    // Both ways the stand-in runs 15: exec'd as it is (the bench's setting), and as a
    // child whose archive is then rewritten (the tests'; that rewrite fails here, the
    // fake wrote no archive: only the arguments it got are read).
    for pg95 in ["0", "1"] {
        let (out, args) = run(
            &["-U", "postgres", "-Fc", "-Z", "0", "-f", file, "circle"],
            pg95,
        );
        assert!(
            args.lines().any(|a| a == "--no-sync"),
            "CIRCLECI_SIM_PG95={pg95}: 15's pg_dump ran with {args:?}; {out:?}"
        );
    }
    // Not an archive to a file: nothing is synced either way, the arguments pass as
    // they are.
    let (_, args) = run(&["-U", "postgres", "-Fc", "circle"], "0");
    assert_eq!(args, "-U\npostgres\n-Fc\ncircle\n");
    let (out, args) = run(
        &["-U", "postgres", "-Fc", "--no-sync", "-f", file, "circle"],
        "0",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unrecognized option '--no-sync'"),
        "{out:?}"
    );
    assert_eq!(args, "", "the real pg_dump ran");
}
