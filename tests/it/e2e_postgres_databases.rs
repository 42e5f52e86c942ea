//! circleci_postgres_databases end to end: the real terraform CLI, a real PostgreSQL 15
//! (scram-sha-256, TLS verified against the dev CA) and the real sshd.

use crate::common;

use common::{closed_port, hcl_str, mode_of, servers, Tf};

use common::RUNBOOK_DATABASES as NINE;

fn sourced(path: &std::path::Path, var: &str) -> String {
    String::from_utf8(common::bash(&format!(
        "source {path:?}; printf '%s' \"${var}\""
    )))
    .unwrap()
}

fn state_text(tf: &Tf) -> String {
    // A missing state must fail the test, never pass a "secret not in the state" check.
    let st = std::fs::read_to_string(tf.path().join("terraform.tfstate")).unwrap();
    assert!(st.contains("\"resources\""), "not a state: {st}");
    st
}

/// The runbook's defaults: nine databases, role `circle`. The migration and complete
/// example tests use those names too, under the simulator's lock: this test takes it.
#[test]
fn defaults_drift_rotation_import_and_retain() {
    let _turn = common::sim::SIMULATOR
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let s = servers();
    // A clean slate, whatever earlier runs left (deletion_policy = "retain" keeps things).
    for db in NINE {
        s.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
        );
    }
    s.psql("postgres", "DROP ROLE IF EXISTS circle");
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("etc/circleconfig/shared/postgresql");
    let main = |pw: &str, version: i32| {
        format!(
            "{}\nresource \"circleci_postgres_databases\" \"circle\" {{\n  host = \"127.0.0.1\"\n  port = {}\n  \
             password_wo = {}\n  password_wo_version = {version}\n  config_path = {:?}\n}}\n",
            s.provider_block(""),
            s.pg_port(),
            hcl_str(pw),
            path
        )
    };
    let pw1 = "first \"pass\" $word; ünï";
    let tf = Tf::new(&main(pw1, 1));
    tf.apply();

    // Nine databases owned by circle, uuid-ossp everywhere, pgcrypto in circle.
    let owners = s.psql(
        "postgres",
        "SELECT datname || ':' || pg_get_userbyid(datdba) FROM pg_database WHERE datname NOT IN ('postgres','template0','template1') ORDER BY 1",
    );
    let mut want: Vec<String> = NINE.iter().map(|d| format!("{d}:circle")).collect();
    want.sort();
    for w in &want {
        assert!(owners.lines().any(|l| l == w), "{w} missing in:\n{owners}");
    }
    for db in NINE {
        let exts = s.psql(db, "SELECT extname FROM pg_extension ORDER BY 1");
        assert!(exts.lines().any(|l| l == "uuid-ossp"), "{db}: {exts}");
        assert_eq!(
            exts.lines().any(|l| l == "pgcrypto"),
            db == "circle",
            "{db}: {exts}"
        );
    }
    // The file, as bash sources it.
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(sourced(&path, "POSTGRES_HOST"), "127.0.0.1");
    assert_eq!(sourced(&path, "POSTGRES_PORT"), s.pg_port().to_string());
    assert_eq!(sourced(&path, "POSTGRES_USER"), "circle");
    assert_eq!(sourced(&path, "POSTGRES_PASSWORD"), pw1);
    assert!(s.can_login("circle", pw1, "vms"));
    // Write-only: the password is nowhere in the state.
    assert!(
        !state_text(&tf).contains("first"),
        "password leaked into the state"
    );
    assert_eq!(tf.plan_code(), 0);

    // Drift: a database and an extension dropped out of band.
    s.psql("postgres", "DROP DATABASE vms");
    s.psql("domain", "DROP EXTENSION \"uuid-ossp\"");
    s.psql("postgres", "ALTER DATABASE contexts OWNER TO postgres");
    let plan = tf.run(&["plan", "-no-color", "-detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains(r#"database \"vms\" is missing"#), "{text}");
    assert!(
        text.contains(r#"extension \"uuid-ossp\" is missing in database \"domain\""#),
        "{text}"
    );
    assert!(
        text.contains(r#"database \"contexts\" is owned by \"postgres\""#),
        "{text}"
    );
    tf.apply();
    let owner = s.psql(
        "postgres",
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'contexts'",
    );
    assert_eq!(owner.trim(), "circle");
    assert_eq!(
        s.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'vms'"
        )
        .trim(),
        "1"
    );
    assert!(s
        .psql("domain", "SELECT extname FROM pg_extension")
        .contains("uuid-ossp"));
    assert_eq!(tf.plan_code(), 0);

    // The file edited out of band is repaired too.
    std::fs::write(&path, "export POSTGRES_HOST=\"elsewhere\"\n").unwrap();
    assert_eq!(tf.plan_code(), 2);
    tf.apply();
    assert_eq!(sourced(&path, "POSTGRES_PASSWORD"), pw1);

    // Rotation: new password_wo and a new version change the role and the file.
    let pw2 = "second 'pass' `word`";
    tf.write_main(&main(pw2, 2));
    tf.apply();
    assert!(s.can_login("circle", pw2, "circle"));
    assert!(!s.can_login("circle", pw1, "circle"));
    assert_eq!(sourced(&path, "POSTGRES_PASSWORD"), pw2);
    assert!(
        !state_text(&tf).contains("second"),
        "password leaked into the state"
    );
    assert_eq!(tf.plan_code(), 0);

    // Import by config path. The file and the server match the configuration; only
    // password_wo_version, which no server records, is new to the state.
    tf.ok(&["state", "rm", "circleci_postgres_databases.circle"]);
    tf.ok(&[
        "import",
        "-no-color",
        "circleci_postgres_databases.circle",
        path.to_str().unwrap(),
    ]);
    let plan = tf.run(&["plan", "-no-color", "-detailed-exitcode"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("+ password_wo_version = 2"), "{text}");
    assert!(text.contains("(14 unchanged attributes hidden)"), "{text}");
    tf.apply();
    assert_eq!(tf.plan_code(), 0);
    assert!(s.can_login("circle", pw2, "circle"));

    // Destroy with the default "retain": the provider's block goes (the line written
    // out of band is not the provider's and stays), databases and role stay.
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "export POSTGRES_HOST=\"elsewhere\"\n"
    );
    assert_eq!(
        s.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE pg_get_userbyid(datdba) = 'circle'"
        )
        .trim(),
        "9"
    );
    assert!(s.can_login("circle", pw2, "vms"));
}

#[test]
fn hostile_names_and_passwords_round_trip_and_drop_policy() {
    let s = servers();
    let user = "e2e we\"ird $user; --";
    let dbs = [
        "e2e_x\"; DROP DATABASE circle; --",
        "e2e ünï côdé",
        "e2e_plain",
    ];
    let pw = "p'a\"s$s;w `o` rd \\ ünï ${x}";
    for db in dbs {
        s.psql(
            "postgres",
            &format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                db.replace('"', "\"\"")
            ),
        );
    }
    s.psql(
        "postgres",
        &format!("DROP ROLE IF EXISTS \"{}\"", user.replace('"', "\"\"")),
    );
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("postgresql");
    let list = dbs
        .iter()
        .map(|d| hcl_str(d))
        .collect::<Vec<_>>()
        .join(", ");
    let tf = Tf::new(&format!(
        r#"{}
resource "circleci_postgres_databases" "weird" {{
  host                 = "127.0.0.1"
  port                 = {}
  user                 = {}
  password             = {}
  databases            = [{list}]
  extensions           = {{ "*" = ["uuid-ossp"], {} = ["pgcrypto"] }}
  create_user_database = false
  deletion_policy      = "drop"
  config_path          = {:?}
}}
"#,
        s.provider_block(""),
        s.pg_port(),
        hcl_str(user),
        hcl_str(pw),
        hcl_str(dbs[1]),
        path
    ));
    tf.apply();
    for db in dbs {
        let n = s.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{}'",
                db.replace('\'', "''")
            ),
        );
        assert_eq!(n.trim(), "1", "{db} must exist literally");
        assert!(s.can_login(user, pw, db), "login to {db}");
    }
    // The injection attempt did nothing: the role database list is exactly ours.
    assert!(s
        .psql(dbs[1], "SELECT extname FROM pg_extension")
        .contains("pgcrypto"));
    assert_eq!(sourced(&path, "POSTGRES_USER"), user);
    assert_eq!(sourced(&path, "POSTGRES_PASSWORD"), pw);
    assert_eq!(tf.plan_code(), 0);

    // A live connection blocks the drop, and nothing is dropped or deleted.
    let mut holder = std::process::Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-c", "select pg_sleep(60)"])
        .arg("-p")
        .arg(s.pg_port().to_string())
        .arg("-U")
        .arg(user)
        .arg("-d")
        .arg(dbs[2])
        .env("PGPASSWORD", pw)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the session is visible.
    for _ in 0..100 {
        let n = s.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'e2e_plain'",
        );
        if n.trim() != "0" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = tf.fails(&["destroy", "-auto-approve", "-no-color"]);
    assert!(out.contains("live connections"), "{out}");
    assert!(
        path.exists(),
        "nothing may be deleted when the drop is refused"
    );
    for db in dbs {
        let n = s.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{}'",
                db.replace('\'', "''")
            ),
        );
        assert_eq!(n.trim(), "1");
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The server notices a vanished client only when pg_sleep ends: end the session.
    s.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'e2e_plain'",
    );
    for _ in 0..100 {
        let n = s.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'e2e_plain'",
        );
        if n.trim() == "0" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert!(!path.exists());
    for db in dbs {
        let n = s.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{}'",
                db.replace('\'', "''")
            ),
        );
        assert_eq!(n.trim(), "0", "{db} must be dropped");
    }
    let roles = s.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
            user.replace('\'', "''")
        ),
    );
    assert_eq!(roles.trim(), "0");
}

fn one_db(s: &common::Servers, pg_block: &str, path: &std::path::Path) -> String {
    format!(
        r#"{}
resource "circleci_postgres_databases" "r" {{
  host                 = "127.0.0.1"
  port                 = {}
  user                 = "e2e_unreach"
  password_wo          = "pw"
  databases            = ["e2e_unreach"]
  create_user_database = false
  config_path          = {:?}
}}
"#,
        s.provider_block_with(
            &format!(
                "known_hosts_file = {:?}",
                s.get("CIRCLECI_TEST_SSH_KNOWN_HOSTS")
            ),
            pg_block
        ),
        s.pg_port(),
        path
    )
}

#[test]
fn unreachable_postgres_names_host_port_and_writes_nothing() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("postgresql");
    let port = closed_port();
    let pg = format!(
        "  postgres {{\n    host = \"127.0.0.1\"\n    port = {port}\n    password = \"x\"\n    sslmode = \"disable\"\n    connect_timeout = \"3s\"\n  }}"
    );
    let tf = Tf::new(&one_db(&s, &pg, &path));
    let out = tf.fails(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    assert!(!path.exists());
}

#[test]
fn wrong_ca_is_refused_and_nothing_is_written() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("postgresql");
    let pg = format!(
        "  postgres {{\n    host = \"127.0.0.1\"\n    port = {}\n    password = {:?}\n    sslmode = \"verify-full\"\n    sslrootcert = {:?}\n  }}",
        s.pg_port(),
        s.get("CIRCLECI_TEST_PG_PASSWORD"),
        s.get("CIRCLECI_TEST_PG_WRONG_CA")
    );
    let tf = Tf::new(&one_db(&s, &pg, &path));
    let out = tf.fails(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    assert!(!path.exists());
    assert_eq!(
        s.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'e2e_unreach'"
        )
        .trim(),
        "0"
    );
}

/// PostgreSQL 9.5 keeps passwords as MD5 verifiers and checks them with md5 auth. The
/// md5-mode cluster (password_encryption = md5, md5 in pg_hba.conf) does the same: the
/// role's stored verifier must be md5(password || username), and the role must log in.
#[test]
fn md5_mode_cluster_stores_an_md5_verifier_and_the_role_logs_in() {
    let s = servers();
    let port: u16 = s.get("CIRCLECI_TEST_PG_MD5_PORT").parse().unwrap();
    s.psql_at(
        port,
        "postgres",
        "DROP DATABASE IF EXISTS md5_builds WITH (FORCE)",
    );
    s.psql_at(port, "postgres", "DROP ROLE IF EXISTS circle_md5");
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("etc/circleconfig/shared/postgresql");
    let pg = format!(
        "\n  postgres {{\n    host     = \"127.0.0.1\"\n    port     = {port}\n    username = \"postgres\"\n    \
         password = {:?}\n    sslmode  = \"disable\"\n  }}",
        s.get("CIRCLECI_TEST_PG_PASSWORD")
    );
    let pw = "md5 mode pass";
    let tf = Tf::new(&format!(
        "{}\nresource \"circleci_postgres_databases\" \"circle\" {{\n  host = \"127.0.0.1\"\n  port = {port}\n  \
         user = \"circle_md5\"\n  databases = [\"md5_builds\"]\n  create_user_database = false\n  \
         extensions = {{ \"*\" = [\"uuid-ossp\"] }}\n  password_wo = {}\n  password_wo_version = 1\n  \
         config_path = {:?}\n}}\n",
        s.provider_block_with("", &pg),
        hcl_str(pw),
        path
    ));
    tf.apply();
    let stored = s.psql_at(
        port,
        "postgres",
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'circle_md5'",
    );
    // md5 over "md5 mode pass" + "circle_md5", computed by coreutils, not by the provider.
    let expected = String::from_utf8(common::bash(
        "printf 'md5%s' \"$(printf '%s' 'md5 mode passcircle_md5' | md5sum | cut -d' ' -f1)\"",
    ))
    .unwrap();
    assert_eq!(stored.trim(), expected, "the stored verifier must be MD5");
    assert!(s.can_login_at(port, "circle_md5", pw, "md5_builds"));
    assert!(!s.can_login_at(port, "circle_md5", "wrong", "md5_builds"));
    let hba = s.psql_at(
        port,
        "postgres",
        "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'host'",
    );
    assert_eq!(
        hba.trim(),
        "md5",
        "the cluster must check passwords with md5 auth"
    );
    assert_eq!(tf.plan_code(), 0);
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    s.psql_at(
        port,
        "postgres",
        "DROP DATABASE IF EXISTS md5_builds WITH (FORCE)",
    );
    s.psql_at(port, "postgres", "DROP ROLE IF EXISTS circle_md5");
}

/// `deletion_policy = "drop"` drops what the resource created, never a database it
/// adopted (that existed before), unless `drop_adopted_databases = true`.
#[test]
fn drop_keeps_adopted_databases_unless_asked() {
    let s = servers();
    let user = "e2e_adopter";
    let clean = || {
        for db in ["e2e_adopt_old", "e2e_adopt_new"] {
            s.psql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            );
        }
        s.psql("postgres", &format!("DROP ROLE IF EXISTS {user}"));
    };
    let exists = |db: &str| {
        s.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
        )
        .trim()
            == "1"
    };
    let role_exists = || {
        s.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{user}'"),
        )
        .trim()
            == "1"
    };
    for drop_adopted in [false, true] {
        clean();
        // The operator's database, with data, before the resource exists.
        s.psql("postgres", "CREATE DATABASE e2e_adopt_old");
        s.psql(
            "e2e_adopt_old",
            "CREATE TABLE builds (id int); INSERT INTO builds VALUES (1)",
        );
        let root = tempfile::tempdir().unwrap();
        let tf = Tf::new(&format!(
            "{}\nresource \"circleci_postgres_databases\" \"a\" {{\n  host = \"127.0.0.1\"\n  port = {}\n  \
             user = \"{user}\"\n  password = \"adopt pw\"\n  databases = [\"e2e_adopt_old\", \"e2e_adopt_new\"]\n  \
             create_user_database = false\n  extensions = {{ \"*\" = [] }}\n  deletion_policy = \"drop\"\n  \
             drop_adopted_databases = {drop_adopted}\n  config_path = {:?}\n}}\n",
            s.provider_block(""),
            s.pg_port(),
            root.path().join("postgresql")
        ));
        tf.apply();
        let st = tf.state_json();
        let adopted = &st["values"]["root_module"]["resources"][0]["values"]["adopted"];
        assert_eq!(adopted, &serde_json::json!(["e2e_adopt_old"]));
        let out = tf.ok(&["destroy", "-auto-approve", "-no-color"]);
        assert!(!exists("e2e_adopt_new"), "the created database is dropped");
        if drop_adopted {
            assert!(
                !exists("e2e_adopt_old"),
                "drop_adopted_databases = true drops it"
            );
            assert!(!role_exists());
        } else {
            assert!(exists("e2e_adopt_old"), "an adopted database is kept");
            assert_eq!(
                s.psql("e2e_adopt_old", "SELECT count(*) FROM builds")
                    .trim(),
                "1"
            );
            assert!(role_exists(), "the role that owns it is kept");
            assert!(out.contains("Adopted databases kept"), "{out}");
        }
    }
    clean();
}
