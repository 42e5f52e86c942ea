//! The PostgreSQL backend against the real server: every sslmode, and the admin calls.

use crate::common;

use std::time::Duration;

use terraform_provider_circleci::testing::postgres::{
    verify_login, PgAdmin, PgConfig, SslMode, Tls,
};
use terraform_provider_circleci::testing::Secret;

fn admin(s: &common::Servers, mode: SslMode, ca: Option<&str>) -> PgAdmin {
    PgAdmin::new(PgConfig {
        host: "127.0.0.1".into(),
        port: s.pg_port(),
        user: "postgres".into(),
        password: Secret::new(s.get("CIRCLECI_TEST_PG_PASSWORD")),
        database: "postgres".into(),
        sslmode: mode,
        sslrootcert: ca.map(|c| s.get(c).into()),
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(60),
        lock_timeout: Duration::from_secs(1),
        route: Default::default(),
    })
}

#[tokio::test]
async fn every_sslmode_behaves_like_libpq() {
    let s = common::servers();
    for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require] {
        admin(&s, mode, None)
            .check()
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
    }
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        admin(&s, mode, Some("CIRCLECI_TEST_PG_CA"))
            .check()
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let e = admin(&s, mode, Some("CIRCLECI_TEST_PG_WRONG_CA"))
            .check()
            .await
            .unwrap_err();
        assert!(e.is_connect(), "{e}");
        assert!(e.to_string().contains("certificate"), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("127.0.0.1:{}", s.pg_port())),
            "{e}"
        );
    }
    // Without a CA the verifying modes refuse to start at all.
    assert!(admin(&s, SslMode::VerifyFull, None).check().await.is_err());
}

#[tokio::test]
async fn wrong_admin_password_is_a_clear_error_without_the_password() {
    let s = common::servers();
    let mut cfg = admin(&s, SslMode::Require, None).config().clone();
    cfg.password = Secret::new("not-the-password-xyzzy");
    let e = PgAdmin::new(cfg).check().await.unwrap_err();
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );
    assert!(!e.to_string().contains("xyzzy"), "{e}");
}

#[tokio::test]
async fn role_database_extension_calls_are_idempotent() {
    let s = common::servers();
    let a = admin(&s, SslMode::VerifyFull, Some("CIRCLECI_TEST_PG_CA"));
    let (role, db) = ("it_backend_role", "it_backend db");
    s.psql(
        "postgres",
        "DROP DATABASE IF EXISTS \"it_backend db\" WITH (FORCE)",
    );
    s.psql("postgres", "DROP ROLE IF EXISTS it_backend_role");

    assert!(
        a.ensure_role(role, "pw 1").await.unwrap(),
        "first call creates"
    );
    assert!(
        !a.ensure_role(role, "pw 2").await.unwrap(),
        "second call updates"
    );
    a.create_database(db, role).await.unwrap();
    assert_eq!(a.databases(&[db.to_string()]).await.unwrap()[db], role);
    a.ensure_extensions(db, &["uuid-ossp".into(), "pgcrypto".into()])
        .await
        .unwrap();
    a.ensure_extensions(db, &["uuid-ossp".into()])
        .await
        .unwrap();
    let exts = a.installed_extensions(db).await.unwrap();
    assert!(exts.contains(&"uuid-ossp".to_string()) && exts.contains(&"pgcrypto".to_string()));

    // The role logs in with the latest password only; the verifier was hashed here.
    let tls = Tls::new(
        SslMode::VerifyFull,
        Some(std::path::Path::new(s.get("CIRCLECI_TEST_PG_CA"))),
    )
    .unwrap();
    let t = Duration::from_secs(5);
    verify_login(&tls, "127.0.0.1", s.pg_port(), role, "pw 2", db, t)
        .await
        .unwrap();
    assert!(
        verify_login(&tls, "127.0.0.1", s.pg_port(), role, "pw 1", db, t)
            .await
            .is_err()
    );
    let stored = s.psql(
        "postgres",
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'it_backend_role'",
    );
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");

    assert_eq!(
        a.live_connections(db).await.unwrap(),
        0,
        "our own connection is closed first"
    );
    a.drop_database(db).await.unwrap();
    a.drop_role(role).await.unwrap();
    assert!(a.databases(&[db.to_string()]).await.unwrap().is_empty());
    assert!(!a.role_exists(role).await.unwrap());
}

/// A role change blocked by another session's open transaction gives up after the
/// admin session's lock_timeout (1s here), with an error that says so, instead of
/// waiting for as long as that transaction stays open.
#[tokio::test]
async fn a_lock_wait_ends_at_lock_timeout() {
    let s = common::servers();
    let pg = admin(&s, SslMode::Disable, None);
    let role = "circleci_lock_wait_test";
    pg.ensure_role(role, "first-password").await.unwrap();
    // Another session updates the role and keeps its transaction open.
    let mut holder = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{{ echo 'BEGIN; ALTER ROLE {role} CONNECTION LIMIT 5;'; sleep 20; }} | \
             PGPASSWORD={} psql -h 127.0.0.1 -p {} -U postgres -d postgres -q",
            s.get("CIRCLECI_TEST_PG_PASSWORD"),
            s.pg_port()
        ))
        .spawn()
        .unwrap();
    // Wait until that transaction holds the row.
    let mut held = false;
    for _ in 0..100 {
        let n = s.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' \
             AND query LIKE '%circleci_lock_wait_test%'",
        );
        if n.trim() != "0" {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held, "the holding transaction did not start");
    let started = std::time::Instant::now();
    let e = pg
        .ensure_role(role, "second-password")
        .await
        .expect_err("the role is locked by another transaction");
    let took = started.elapsed();
    s.psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE state = 'idle in transaction' AND query LIKE '%{role}%'"
        ),
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(took < Duration::from_secs(10), "waited {took:?}");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "{e}"
    );
    let m = e.to_string();
    assert!(m.contains("lock_timeout, 1s"), "{m}");
    assert!(m.contains(role), "{m}");
    assert!(!m.contains("second-password"), "{m}");
    pg.drop_role(role).await.unwrap();
}

/// Connections to different databases open side by side: a gate in front of the
/// server lets no connection through until two are waiting (or 10 s pass, then it
/// lets them through and reports that they came one at a time).
#[tokio::test]
async fn connections_to_different_databases_open_side_by_side() {
    use tokio::net::{TcpListener, TcpStream};
    let s = common::servers();
    // A database of its own beside `postgres` (template1 would hold up other tests'
    // CREATE DATABASE while connected to).
    let db = "it_side_by_side";
    s.psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
    s.psql("postgres", &format!("CREATE DATABASE {db}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_port = listener.local_addr().unwrap().port();
    let server = s.pg_port();
    let gate = tokio::spawn(async move {
        let mut waiting = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while waiting.len() < 2 {
            match tokio::time::timeout_at(deadline, listener.accept()).await {
                Ok(Ok((c, _))) => waiting.push(c),
                _ => break,
            }
        }
        let together = waiting.len() >= 2;
        let forward = move |mut c: TcpStream| {
            tokio::spawn(async move {
                let mut up = TcpStream::connect(("127.0.0.1", server)).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
            })
        };
        for c in waiting {
            forward(c);
        }
        // Any later connection goes straight through.
        tokio::spawn(async move {
            while let Ok((c, _)) = listener.accept().await {
                forward(c);
            }
        });
        together
    });
    let a = PgAdmin::new(PgConfig {
        host: "127.0.0.1".into(),
        port: gate_port,
        user: "postgres".into(),
        password: Secret::new(s.get("CIRCLECI_TEST_PG_PASSWORD")),
        database: "postgres".into(),
        sslmode: SslMode::Require,
        sslrootcert: None,
        connect_timeout: Duration::from_secs(30),
        statement_timeout: Duration::from_secs(60),
        lock_timeout: Duration::from_secs(1),
        route: Default::default(),
    });
    let (x, y) = tokio::join!(
        a.installed_extensions("postgres"),
        a.installed_extensions(db)
    );
    x.unwrap();
    y.unwrap();
    drop(a);
    s.psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
    assert!(
        gate.await.unwrap(),
        "the second database's connection waited for the first's"
    );
}
