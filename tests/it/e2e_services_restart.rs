//! circleci_services_restart through terraform, against the CircleCI Services-machine
//! simulator (dev/standins/circleci_sim.py) on the test sshd: every config file resource, then
//! the restart and the runbook's checks, with the simulator's containers connecting
//! for real to the test servers. The simulator is shared: these tests take turns and
//! leave it started, on its default root.

use crate::common;

use std::path::Path;
use std::process::{Child, Command};

use common::sim::{epoch_now, NomadFixture, Sim, SIMULATOR};
use common::{flat, servers, Servers, Tf};
use serde_json::json;

/// A second Redis, on its own port, stopped by PID on drop.
struct Redis2 {
    child: Child,
    port: u16,
}

impl Redis2 {
    fn start(dir: &Path) -> Redis2 {
        let port = common::closed_port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Redis2 { child, port }
    }
}

impl Drop for Redis2 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main_tf(s: &Servers, root: &Path, redis_port: u16, generation: u32) -> String {
    let r = |p: &str| root.join(p).to_str().unwrap().to_string();
    format!(
        r#"{provider}
resource "circleci_external_redis" "r" {{
  host        = "127.0.0.1"
  port        = {redis_port}
  config_path = {redis:?}
}}
resource "circleci_postgres_databases" "pg" {{
  host                   = "127.0.0.1"
  port                   = {pg}
  password_wo            = "restart-Pg-pw-1"
  password_wo_version    = 1
  deletion_policy        = "drop"
  drop_adopted_databases = true
  config_path            = {pgf:?}
}}
resource "circleci_external_mongo" "m" {{
  hosts                = ["127.0.0.1:{mongo}"]
  username             = "restart-circle"
  password_wo          = "restart-Mongo-pw-1"
  password_wo_version  = 1
  tls                  = false
  drop_user_on_destroy = true
  config_path          = {mongof:?}
}}
resource "circleci_vault_transit_client" "v" {{
  key_name    = "context-service"
  config_path = {vaultf:?}
}}
resource "circleci_external_rabbitmq" "mq" {{
  host                = "127.0.0.1"
  port                = {mq}
  username            = "circle"
  password_wo         = {mqpw:?}
  password_wo_version = 1
  config_path         = {mqf:?}
}}
resource "circleci_external_nomad" "n" {{
  endpoint     = {nomad:?}
  ca_cert_file = {ca:?}
  config_path  = {nomadf:?}
}}
resource "circleci_services_ca_certificate" "vault" {{
  name            = "dev-vault"
  certificate_pem = file({vca:?})
  config_root     = {root:?}
}}
resource "circleci_services_ca_certificate" "nomad" {{
  name            = "dev-services"
  certificate_pem = file({ca:?})
  config_root     = {root:?}
}}
resource "circleci_services_restart" "restart" {{
  config_root    = {root:?}
  embedded_nomad_endpoint = {enomad:?}
  stop_timeout   = "30s"
  start_timeout  = "60s"
  verify_timeout = "20s"
  triggers = {{
    redis      = circleci_external_redis.r.file_sha256
    postgres   = circleci_postgres_databases.pg.file_sha256
    mongo      = circleci_external_mongo.m.file_sha256
    vault      = circleci_vault_transit_client.v.file_sha256
    rabbitmq   = circleci_external_rabbitmq.mq.file_sha256
    nomad      = circleci_external_nomad.n.file_sha256
    ca         = circleci_services_ca_certificate.vault.fingerprint_sha256
    nomad_ca   = circleci_services_ca_certificate.nomad.fingerprint_sha256
    generation = "{generation}"
  }}
}}
output "checks" {{
  value = circleci_services_restart.restart.checks
}}
output "downtime" {{
  value = circleci_services_restart.restart.downtime
}}
"#,
        provider = s.provider_block(""),
        redis = r("etc/circleconfig/shared/redis"),
        pg = s.pg_port(),
        pgf = r("etc/circleconfig/shared/postgresql"),
        mongo = s.get("CIRCLECI_TEST_MONGO_PORT"),
        mongof = r("etc/circle-installation-customizations"),
        vaultf = r("etc/circleconfig/context-service/customizations"),
        mq = s.mq_port(),
        mqpw = s.get("CIRCLECI_TEST_MQ_PASSWORD"),
        mqf = r("etc/circleconfig/shared/rabbitmq"),
        nomad = s.get("CIRCLECI_TEST_CI_NOMAD_ADDR"),
        ca = s.get("CIRCLECI_TEST_TLS_CA"),
        enomad = s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"),
        nomadf = r("etc/circleconfig/shared/nomad"),
        root = root.to_str().unwrap(),
        vca = s.get("CIRCLECI_TEST_VAULT_CA"),
    )
}

fn checks_of(tf: &Tf) -> Vec<String> {
    let out = tf.ok(&["output", "-json", "checks"]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn restart_checks_every_service_and_restarts_on_change() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = common::searchable_tempdir();
    let sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let redis2 = Redis2::start(root.path());

    let tf = Tf::new(&main_tf(&s, root.path(), s.redis_port(), 1));
    let out = tf.apply();
    assert!(
        out.contains("circleci_services_restart.restart: Creation complete"),
        "{out}"
    );
    let checks = checks_of(&tf);
    for service in [
        "postgresql",
        "mongodb",
        "vault",
        "redis",
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
    let downtime: String = serde_json::from_str(&tf.ok(&["output", "-json", "downtime"])).unwrap();
    assert!(downtime.ends_with('s') && downtime.len() > 1, "{downtime}");
    // The simulator's containers really connected: frontend logged the PostgreSQL
    // logins, context-service the Vault round trip.
    assert!(sim
        .docker_logs("frontend")
        .contains("connected to database vms"));
    assert_eq!(tf.plan_code(), 0, "a second plan restarts nothing");

    // A new Redis port: the file changes, so the trigger, so the restart runs again
    // and its check names the new port.
    tf.write_main(&main_tf(&s, root.path(), redis2.port, 1));
    let out = tf.apply();
    assert!(
        out.contains("circleci_services_restart.restart: Modifying"),
        "{out}"
    );
    let checks = checks_of(&tf);
    assert!(
        checks.contains(&format!(
            "redis: domain-service: Reconnected to 127.0.0.1:{}",
            redis2.port
        )),
        "{checks:?}"
    );
    assert!(sim
        .docker_logs("domain-service")
        .contains(&format!("Reconnected to 127.0.0.1:{}", redis2.port)));

    // A wrong PostgreSQL password edited in by hand, then only the restart (without
    // refresh, or the PostgreSQL resource would see the drift and write the file back
    // first): the check fails with the PSQLException CircleCI would log.
    let pgf = root.path().join("etc/circleconfig/shared/postgresql");
    let text = std::fs::read_to_string(&pgf).unwrap();
    std::fs::write(&pgf, text.replace("restart-Pg-pw-1", "not-the-password")).unwrap();
    tf.write_main(&main_tf(&s, root.path(), redis2.port, 2));
    let out = tf.fails(&[
        "apply",
        "-auto-approve",
        "-no-color",
        "-refresh=false",
        "-target=circleci_services_restart.restart",
    ]);
    let f = flat(&out);
    assert!(f.contains("CircleCI check failed: postgresql"), "{out}");
    assert!(f.contains("org.postgresql.util.PSQLException"), "{out}");
    assert!(f.contains("password authentication failed"), "{out}");
    assert!(
        !out.contains("not-the-password"),
        "the password is in the output"
    );
    // The full apply writes the file again (drift), which restarts and passes.
    tf.apply();
    assert!(checks_of(&tf).iter().any(|c| c.starts_with("postgresql: ")));
    assert_eq!(tf.plan_code(), 0);

    // Redis goes away, then only the restart: this start's domain-service cannot
    // connect. The previous start's "Reconnected to" line is still in `docker logs`
    // (the container was restarted, not recreated) and must not pass the check.
    let gone = redis2.port;
    drop(redis2);
    tf.write_main(&main_tf(&s, root.path(), gone, 3));
    let out = flat(&tf.fails(&[
        "apply",
        "-auto-approve",
        "-no-color",
        "-refresh=false",
        "-target=circleci_services_restart.restart",
    ]));
    assert!(out.contains("CircleCI check failed: redis"), "{out}");
    assert!(out.contains("Could not connect to Redis"), "{out}");
    assert!(sim
        .docker_logs("domain-service")
        .contains(&format!("Reconnected to 127.0.0.1:{gone}")));

    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    let status = sim.replicatedctl(&["app", "status"]);
    assert_eq!(
        status[0]["State"], "started",
        "destroy leaves CircleCI running"
    );
}

#[test]
fn preflight_and_deadlines_refuse_clearly() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = common::searchable_tempdir();
    let sim = Sim::new(
        &s,
        json!({"root": root.path(), "transition": 1, "version": "2.19.1"}),
    );
    let restart = |extra: &str| {
        format!(
            "{}\nresource \"circleci_services_restart\" \"r\" {{\n  config_root = {:?}\n  \
             embedded_nomad_endpoint = {:?}\n{extra}}}\n",
            s.provider_block(""),
            root.path().to_str().unwrap(),
            s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR")
        )
    };
    let before = sim.replicatedctl(&["app", "status"])[0]["LastModifiedAt"].clone();

    // A version the runbook is not for: refused at plan, on allowed_versions.
    let tf = Tf::new(&restart(""));
    let out = flat(&tf.fails(&["plan", "-no-color"]));
    assert!(out.contains("CircleCI version not allowed"), "{out}");
    assert!(out.contains("runs CircleCI 2.19.1"), "{out}");
    assert!(out.contains("allowed_versions"), "{out}");
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(out.contains("Nothing was restarted"), "{out}");
    assert_eq!(
        sim.replicatedctl(&["app", "status"])[0]["LastModifiedAt"],
        before,
        "the app was touched"
    );

    // Bad patterns and durations: errors on the attribute, at plan.
    let tf = Tf::new(&restart(
        "  allowed_versions = [\"2.17.x\", \"2.17.\"]\n  stop_timeout = \"soon\"\n",
    ));
    let out = flat(&tf.fails(&["plan", "-no-color"]));
    assert!(out.contains("Invalid version pattern"), "{out}");
    assert!(out.contains("Invalid duration"), "{out}");

    // A config file that does not parse: refused before anything stops.
    sim.set(json!({"root": root.path(), "transition": 1}));
    let redis = root.path().join("etc/circleconfig/shared/redis");
    std::fs::create_dir_all(redis.parent().unwrap()).unwrap();
    std::fs::write(&redis, "export REDIS_PORT=6379\n").unwrap();
    let tf = Tf::new(&restart("  allowed_versions = [\"2.17.x\"]\n"));
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(out.contains("does not parse"), "{out}");
    assert!(out.contains("REDIS_HOST"), "{out}");
    assert_eq!(
        sim.replicatedctl(&["app", "status"])[0]["LastModifiedAt"],
        before
    );
    std::fs::remove_file(&redis).unwrap();

    // No replicatedctl where the commands run: through sudo (the non-root user with
    // sudo = true), sudo's secure_path does not have the simulator's directory.
    sim.set(json!({"root": root.path(), "transition": 1}));
    let sudo_block = s
        .provider_block(&format!(
            "known_hosts_file = {:?}\n    sudo = true",
            s.get("CIRCLECI_TEST_SSH_KNOWN_HOSTS")
        ))
        .replace(
            "user             = \"root\"",
            &format!(
                "user             = {:?}",
                s.get("CIRCLECI_TEST_SSH_SUDO_USER")
            ),
        );
    let tf = Tf::new(&format!(
        "{sudo_block}\nresource \"circleci_services_restart\" \"r\" {{\n  config_root = {:?}\n  \
         embedded_nomad_endpoint = {:?}\n}}\n",
        root.path().to_str().unwrap(),
        s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR")
    ));
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        out.contains("replicatedctl not found on the Services machine"),
        "{out}"
    );
    assert!(out.contains("secure_path"), "{out}");

    // A restart that works, then CircleCI stopped out of band: refresh sees it and the
    // next plan restarts it.
    let tf = Tf::new(&restart("  verify_timeout = \"5s\"\n"));
    tf.apply();
    assert_eq!(tf.plan_code(), 0);
    sim.replicatedctl(&["app", "stop"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let plan = tf.run(&["plan", "-no-color", "-detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&plan.stdout).contains("\"stopped\" -> (known after apply)"));
    tf.apply();
    assert_eq!(sim.replicatedctl(&["app", "status"])[0]["State"], "started");
    // A new deadline alone restarts nothing.
    let modified = sim.replicatedctl(&["app", "status"])[0]["LastModifiedAt"].clone();
    tf.write_main(&restart("  verify_timeout = \"7s\"\n"));
    let out = tf.apply();
    assert!(out.contains("1 changed"), "{out}");
    assert_eq!(
        sim.replicatedctl(&["app", "status"])[0]["LastModifiedAt"],
        modified
    );

    // An app that never finishes starting: start_timeout ends the wait; the state says
    // it is not started, so the next plan restarts again.
    sim.set(json!({"root": root.path(), "transition": 1, "stuck": "started"}));
    tf.write_main(&restart(
        "  verify_timeout = \"5s\"\n  start_timeout = \"3s\"\n  triggers = { n = \"2\" }\n",
    ));
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        out.contains("CircleCI did not get started in time"),
        "{out}"
    );
    assert!(out.contains("start_timeout"), "{out}");
    sim.set(json!({"root": root.path(), "transition": 1}));
    assert_eq!(tf.plan_code(), 2, "an app left starting plans a restart");
    tf.apply();
    assert_eq!(tf.plan_code(), 0);

    // An app that never stops: the deadline ends the wait, named, on stop_timeout.
    sim.set(json!({"root": root.path(), "transition": 1, "stuck": "stopped"}));
    let tf = Tf::new(&restart("  stop_timeout = \"3s\"\n"));
    let started = std::time::Instant::now();
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(
        out.contains("CircleCI did not get stopped in time"),
        "{out}"
    );
    assert!(out.contains("stop_timeout"), "{out}");
    assert!(out.contains("after 3s"), "{out}");
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl").args(args).output().unwrap()
}

/// A self-signed P-256 CA named `cn`, its key in `dir/NAME.key`, its certificate in
/// `dir/NAME.pem`.
fn make_ca(dir: &Path, name: &str, cn: &str) {
    let f = |ext: &str| {
        dir.join(format!("{name}.{ext}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let o = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        &f("key"),
        "-out",
        &f("pem"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The CA resource: after apply, `openssl verify` with the bundle update-ca-certificates
/// made on the Services machine accepts a certificate that CA signed, and the runbook's
/// JVM_OPTS line is in /etc/environment next to the operator's lines; after destroy,
/// neither. The host's own trust store is never touched.
#[test]
fn ca_certificate_is_trusted_then_untrusted() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = common::searchable_tempdir();
    let _sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let work = tempfile::tempdir().unwrap();
    let w = |f: &str| work.path().join(f).to_str().unwrap().to_string();
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr))
    };
    make_ca(work.path(), "ca", "restart test CA");
    ok(openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=db.internal",
        "-keyout",
        &w("leaf.key"),
        "-out",
        &w("leaf.csr"),
    ]));
    ok(openssl(&[
        "x509",
        "-req",
        "-in",
        &w("leaf.csr"),
        "-CA",
        &w("ca.pem"),
        "-CAkey",
        &w("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        &w("leaf.pem"),
    ]));
    let host_bundle = std::fs::metadata("/etc/ssl/certs/ca-certificates.crt")
        .and_then(|m| m.modified())
        .ok();
    let env = root.path().join("etc/environment");
    std::fs::create_dir_all(env.parent().unwrap()).unwrap();
    std::fs::write(&env, "PATH=\"/usr/local/sbin:/usr/bin\"\nLANG=C.UTF-8\n").unwrap();
    let bundle = root.path().join("etc/ssl/certs/ca-certificates.crt");
    let verify = || {
        openssl(&[
            "verify",
            "-no-CApath",
            "-CAfile",
            bundle.to_str().unwrap(),
            &w("leaf.pem"),
        ])
        .status
        .success()
    };

    let tf = Tf::new(&format!(
        "{}\nresource \"circleci_services_ca_certificate\" \"db\" {{\n  name = \"db-ca\"\n  \
         certificate_pem = file({:?})\n  jvm_trust_name_service = true\n  config_root = {:?}\n}}\n",
        s.provider_block(""),
        w("ca.pem"),
        root.path().to_str().unwrap()
    ));
    tf.apply();
    let crt = root
        .path()
        .join("usr/local/share/ca-certificates/db-ca.crt");
    assert_eq!(common::mode_of(&crt), 0o644);
    assert!(verify(), "the CA is not trusted after apply");
    let text = std::fs::read_to_string(&env).unwrap();
    assert!(
        text.starts_with("PATH=\"/usr/local/sbin:/usr/bin\"\nLANG=C.UTF-8\n"),
        "{text}"
    );
    assert!(
        text.contains("export JVM_OPTS='-Djdk.tls.trustNameService=true'"),
        "{text}"
    );
    assert_eq!(tf.plan_code(), 0);

    // Removed by hand: drift, and the next apply puts it back.
    std::fs::remove_file(&crt).unwrap();
    assert_eq!(tf.plan_code(), 2);
    tf.apply();
    assert!(crt.exists());

    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert!(!crt.exists());
    assert!(!verify(), "the CA is still trusted after destroy");
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "PATH=\"/usr/local/sbin:/usr/bin\"\nLANG=C.UTF-8\n",
        "the operator's lines are not as they were"
    );
    let after = std::fs::metadata("/etc/ssl/certs/ca-certificates.crt")
        .and_then(|m| m.modified())
        .ok();
    assert_eq!(host_bundle, after, "the host's trust store changed");

    // Not a certificate: refused at plan, on the attribute.
    let tf = Tf::new(&format!(
        "{}\nresource \"circleci_services_ca_certificate\" \"x\" {{\n  name = \"x.crt\"\n  \
         certificate_pem = \"-----BEGIN CERTIFICATE-----\\naGVsbG8=\\n-----END CERTIFICATE-----\\n\"\n}}\n",
        s.provider_block("")
    ));
    let out = flat(&tf.fails(&["plan", "-no-color"]));
    assert!(out.contains("Invalid CA certificate"), "{out}");
    assert!(out.contains("not an X.509 certificate"), "{out}");
    assert!(out.contains("leave out .crt"), "{out}");
}

/// Several CA resources in one configuration (for_each), some asking for the runbook's
/// JVM_OPTS line: the line is there while any instance asks for it, the second plan is
/// empty, and it goes only with the last instance that wanted it. A PEM holding a key,
/// or anything but one certificate, is refused at plan, the key never quoted.
#[test]
fn ca_certificates_share_the_jvm_opts_line_and_refuse_keys() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = common::searchable_tempdir();
    let _sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let work = tempfile::tempdir().unwrap();
    let w = |f: &str| work.path().join(f).to_str().unwrap().to_string();
    for n in ["a", "b", "c"] {
        make_ca(work.path(), n, &format!("ca {n}"));
    }
    let env = root.path().join("etc/environment");
    std::fs::create_dir_all(env.parent().unwrap()).unwrap();
    let mine = "LANG=C.UTF-8\n";
    std::fs::write(&env, mine).unwrap();
    let config = |jvm: &[(&str, bool)]| {
        let entries: Vec<String> = jvm.iter().map(|(n, j)| format!("    {n} = {j}")).collect();
        format!(
            "{}\nlocals {{\n  jvm = {{\n{}\n  }}\n}}\nresource \"circleci_services_ca_certificate\" \"ca\" {{\n  \
             for_each = local.jvm\n  name = \"ca-${{each.key}}\"\n  certificate_pem = file(\"{}/${{each.key}}.pem\")\n  \
             jvm_trust_name_service = each.value\n  config_root = {:?}\n}}\n",
            s.provider_block(""),
            entries.join("\n"),
            work.path().to_str().unwrap(),
            root.path().to_str().unwrap()
        )
    };
    let jvm_lines = || {
        std::fs::read_to_string(&env)
            .unwrap()
            .matches("export JVM_OPTS='-Djdk.tls.trustNameService=true'")
            .count()
    };

    let tf = Tf::new(&config(&[("a", true), ("b", false), ("c", false)]));
    tf.apply();
    assert_eq!(jvm_lines(), 1, "{}", std::fs::read_to_string(&env).unwrap());
    assert!(std::fs::read_to_string(&env).unwrap().starts_with(mine));
    assert_eq!(tf.plan_code(), 0, "the second plan is not empty");

    tf.write_main(&config(&[("a", true), ("b", true), ("c", false)]));
    tf.apply();
    assert_eq!(jvm_lines(), 1);
    assert_eq!(tf.plan_code(), 0);

    // The first owner goes: b still wants the line.
    tf.write_main(&config(&[("b", true), ("c", false)]));
    tf.apply();
    assert_eq!(jvm_lines(), 1, "the line went while b still wants it");
    assert_eq!(tf.plan_code(), 0);

    // The last owner stops asking: the line goes, the operator's line stays.
    tf.write_main(&config(&[("b", false), ("c", false)]));
    tf.apply();
    assert_eq!(std::fs::read_to_string(&env).unwrap(), mine);
    assert_eq!(tf.plan_code(), 0);
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(std::fs::read_to_string(&env).unwrap(), mine);

    // A block written by an earlier version (the line, no owner lines): destroyed
    // without a refresh, the instance that asked for it still takes it away.
    tf.write_main(&config(&[("a", true)]));
    tf.apply();
    let legacy: String = std::fs::read_to_string(&env)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("# wanted by"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&env, &legacy).unwrap();
    assert_eq!(jvm_lines(), 1);
    tf.ok(&["destroy", "-auto-approve", "-no-color", "-refresh=false"]);
    assert_eq!(std::fs::read_to_string(&env).unwrap(), mine);

    // A certificate with its key, or two certificates: refused at plan, naming what was
    // found, the key never printed.
    let key = std::fs::read_to_string(w("a.key")).unwrap();
    let key_line = key.lines().nth(1).unwrap().to_string();
    for (files, what) in [
        (vec!["a.pem", "a.key"], "PRIVATE KEY block"),
        (vec!["a.pem", "b.pem"], "2 certificates"),
    ] {
        let text: String = files
            .iter()
            .map(|f| std::fs::read_to_string(w(f)).unwrap())
            .collect();
        std::fs::write(w("bundle.pem"), text).unwrap();
        let tf = Tf::new(&format!(
            "{}\nresource \"circleci_services_ca_certificate\" \"x\" {{\n  name = \"x\"\n  \
             certificate_pem = file({:?})\n  config_root = {:?}\n}}\n",
            s.provider_block(""),
            w("bundle.pem"),
            root.path().to_str().unwrap()
        ));
        let out = tf.fails(&["plan", "-no-color"]);
        assert!(flat(&out).contains(what), "{out}");
        assert!(!out.contains(&key_line), "the key is in the output: {out}");
        assert!(!root
            .path()
            .join("usr/local/share/ca-certificates/x.crt")
            .exists());
    }
    // Pasted inline (a heredoc): Terraform would print the whole expression of an
    // attribute a diagnostic is on, so this one is on the resource.
    let inline = format!("{}{}", std::fs::read_to_string(w("a.pem")).unwrap(), key);
    let tf = Tf::new(&format!(
        "{}\nresource \"circleci_services_ca_certificate\" \"x\" {{\n  name = \"x\"\n  \
         certificate_pem = <<-EOT\n{inline}EOT\n  config_root = {:?}\n}}\n",
        s.provider_block(""),
        root.path().to_str().unwrap()
    ));
    let out = tf.fails(&["plan", "-no-color"]);
    assert!(flat(&out).contains("PRIVATE KEY block"), "{out}");
    assert!(!out.contains(&key_line), "the key is in the output: {out}");
}

/// The runbook's MongoDB section, pasted verbatim into the Services machine's
/// /etc/circle-installation-customizations with real values (a replica set over TLS
/// whose only member knows itself as localhost, while the file seeds 127.0.0.1): the
/// restart's preflight reads it (`$MONGO_BASE_URI` expanded as bash does) and its
/// MongoDB check passes on the name the set uses; circleci_external_mongo imports it
/// with the right hosts, replica set, TLS and databases; an apply on top keeps every
/// operator line, and bash, sourcing the file, gets the provider's values.
#[test]
fn the_runbooks_own_mongo_file_imports_and_restarts() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = common::searchable_tempdir();
    let _sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let work = common::searchable_tempdir();
    let ca = s.get("CIRCLECI_TEST_TLS_CA");
    // The Services machine trusts the dev CA, as the runbook's Troubleshooting says.
    let cas = root.path().join("usr/local/share/ca-certificates");
    std::fs::create_dir_all(&cas).unwrap();
    std::fs::copy(ca, cas.join("dev-ca.crt")).unwrap();
    let port = common::closed_port();
    let log = work.path().join("mongo.log");
    let _mongo = common::sshd::Proc(
        Command::new(s.get("CIRCLECI_TEST_MONGO_STANDIN"))
            .args(["--port", &port.to_string(), "--mode", "3.6"])
            .args(["--admin-user", s.get("CIRCLECI_TEST_MONGO_USER")])
            .args(["--admin-password", s.get("CIRCLECI_TEST_MONGO_PASSWORD")])
            .args([
                "--replica-set",
                "rs0",
                "--advertise",
                &format!("localhost:{port}"),
            ])
            .args(["--tls-cert", s.get("CIRCLECI_TEST_TLS_CERT")])
            .args(["--tls-key", s.get("CIRCLECI_TEST_TLS_KEY")])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    common::sshd::wait_listening(port, "the TLS MongoDB stand-in", &log);
    let admin = format!(
        "mongodb://{}:{}@localhost:{port}/?authSource=admin&replicaSet=rs0&tls=true&tlsCAFile={ca}",
        s.get("CIRCLECI_TEST_MONGO_USER"),
        s.get("CIRCLECI_TEST_MONGO_PASSWORD"),
    );
    // The operator followed the runbook by hand: the user, then the file.
    let pw = "Runbook-Mongo-pw-1";
    let roles: Vec<_> = [
        "circle_ghe",
        "build_state_dev_ghe",
        "containers_dev_ghe",
        "remote_containers_dev_ghe",
    ]
    .iter()
    .map(|d| json!({"role": "readWrite", "db": d}))
    .collect();
    s.pymongo(
        &admin,
        "admin",
        json!({"createUser": "circle", "pwd": pw, "roles": roles}),
    )
    .unwrap();
    let file = root.path().join("etc/circle-installation-customizations");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let seed = format!("127.0.0.1:{port}");
    let runbook = format!(
        "# Configure the single endpoint\n\
         MONGO_BASE_URI='mongodb://circle:{pw}@{seed}'\n\
         # OR for a replica set\n\
         MONGO_BASE_URI='mongodb://circle:{pw}@{seed}'\n\
         # When using replica sets, add query parameter '&replicaSet=name' to each URI\n\
         export CIRCLE_SECRETS_MONGODB_MAIN_URI=\"$MONGO_BASE_URI/circle_ghe?ssl=true&authSource=admin&replicaSet=rs0\"\n\
         export CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI=\"$MONGO_BASE_URI/circle_ghe?ssl=true&authSource=admin&replicaSet=rs0\"\n\
         export CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI=\"$MONGO_BASE_URI/build_state_dev_ghe?ssl=true&authSource=admin&replicaSet=rs0\"\n\
         export CIRCLE_SECRETS_MONGODB_CONTAINERS_URI=\"$MONGO_BASE_URI/containers_dev_ghe?ssl=true&authSource=admin&replicaSet=rs0\"\n\
         export CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI=\"$MONGO_BASE_URI/remote_containers_dev_ghe?ssl=true&authSource=admin&replicaSet=rs0\"\n"
    );
    std::fs::write(&file, &runbook).unwrap();

    let provider = s.provider_block_with(
        "",
        &format!("\n  mongodb {{\n    uri         = {admin:?}\n    tls_ca_file = {ca:?}\n  }}"),
    );
    let restart = |generation: &str| {
        format!(
            "resource \"circleci_services_restart\" \"r\" {{\n  config_root = {:?}\n  verify_timeout = \"20s\"\n  \
             embedded_nomad_endpoint = {:?}\n  \
             triggers = {{ g = {generation} }}\n}}\noutput \"checks\" {{\n  value = circleci_services_restart.r.checks\n}}\n",
            root.path().to_str().unwrap(),
            s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR")
        )
    };
    // The restart reads the hand-written file and checks MongoDB under the set's names.
    let tf = Tf::new(&format!("{provider}\n{}", restart("\"1\"")));
    tf.apply();
    let checks: Vec<String> = serde_json::from_str(&tf.ok(&["output", "-json", "checks"])).unwrap();
    assert!(
        checks.iter().any(|c| c.starts_with("mongodb: ")),
        "{checks:?}"
    );

    // Import: the file as the runbook wrote it.
    let mongo = format!(
        "resource \"circleci_external_mongo\" \"m\" {{\n  hosts       = [{seed:?}]\n  replica_set = \"rs0\"\n  \
         password_wo = {pw:?}\n  password_wo_version = 1\n  tls = true\n  options = {{ maxIdleTimeMS = \"600000\" }}\n  \
         config_path = {:?}\n}}\n",
        file.to_str().unwrap()
    );
    tf.write_main(&format!(
        "{provider}\n{mongo}\n{}",
        restart("circleci_external_mongo.m.file_sha256")
    ));
    tf.ok(&[
        "import",
        "-no-color",
        "circleci_external_mongo.m",
        file.to_str().unwrap(),
    ]);
    let state = tf.state_json();
    let m = state["values"]["root_module"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "circleci_external_mongo.m")
        .unwrap()["values"]
        .clone();
    assert_eq!(m["hosts"], json!([seed]), "{m}");
    assert_eq!(m["replica_set"], "rs0");
    assert_eq!(m["username"], "circle");
    assert_eq!(m["tls"], true);
    assert_eq!(m["auth_source"], "admin");
    assert_eq!(
        m["databases"],
        json!([
            "circle_ghe",
            "build_state_dev_ghe",
            "containers_dev_ghe",
            "remote_containers_dev_ghe"
        ])
    );

    // An apply on top: the operator's lines kept byte for byte, the provider's block
    // after them, and bash sourcing the file gets the provider's values.
    tf.apply();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with(&runbook), "{text}");
    let sourced = String::from_utf8(common::bash(&format!(
        "source {file:?}; printf '%s' \"$CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI\""
    )))
    .unwrap();
    assert!(sourced.contains("maxIdleTimeMS=600000"), "{sourced}");
    assert!(sourced.contains("/build_state_dev_ghe?"), "{sourced}");
    let checks: Vec<String> = serde_json::from_str(&tf.ok(&["output", "-json", "checks"])).unwrap();
    assert!(
        checks.iter().any(|c| c.starts_with("mongodb: ")),
        "{checks:?}"
    );
    assert_eq!(tf.plan_code(), 0, "the second plan is not empty");

    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), runbook);
}

/// A restart alone, on the simulator's embedded Nomad, with `extra` attributes, and its
/// checks as an output.
fn lone_restart(s: &Servers, root: &Path, extra: &str) -> String {
    format!(
        "{}\nresource \"circleci_services_restart\" \"r\" {{\n  config_root = {:?}\n  \
         embedded_nomad_endpoint = {:?}\n{extra}}}\n\
         output \"checks\" {{\n  value = circleci_services_restart.r.checks\n}}\n",
        s.provider_block(""),
        root.to_str().unwrap(),
        s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"),
    )
}

/// Runs `then` on a thread once Replicated is asked to stop CircleCI (within a minute);
/// None when it never is.
fn on_stop<T: Send + 'static>(
    s: &Servers,
    then: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Option<T>> {
    let bin = std::path::PathBuf::from(s.get("CIRCLECI_TEST_SIM"));
    std::thread::spawn(move || {
        for _ in 0..600 {
            let out = Command::new(bin.join("replicatedctl"))
                .args(["app", "status"])
                .output()
                .unwrap();
            let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if st[0]["DesiredState"] == "stopped" {
                return Some(then());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        None
    })
}

/// The simulator on `root`, its app started.
fn started_sim(s: &Servers, root: &Path) -> Sim {
    let sim = Sim::new(s, json!({"root": root, "transition": 1}));
    sim.replicatedctl(&["app", "start"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    sim
}

/// A restart of a running CircleCI waits for the builds on its Nomad servers: the plan
/// names them, a build that outlasts builds_timeout is named and nothing stops, and a
/// build that ends in time is let finish before the stop.
#[test]
fn the_stop_waits_for_running_builds() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = common::searchable_tempdir();
    let sim = started_sim(&s, root.path());
    let mut nomad = NomadFixture::new(&s, "CIRCLECI_TEST_EMBEDDED_NOMAD_DIR");
    let restart = |extra: &str| {
        lone_restart(
            &s,
            root.path(),
            &format!("  verify_timeout = \"10s\"\n{extra}"),
        )
    };

    // A build that runs for an hour: the plan warns, naming it; the apply waits
    // builds_timeout, names it, and leaves CircleCI running.
    nomad.build("build-long", "node-1", epoch_now() + 3600.0);
    let tf = Tf::new(&restart("  builds_timeout = \"3s\"\n"));
    let plan = flat(&tf.ok(&["plan", "-no-color"]));
    assert!(plan.contains("This apply stops CircleCI"), "{plan}");
    assert!(
        plan.contains("build-long.build[0] (job build-long, running"),
        "{plan}"
    );
    let before = sim.replicatedctl(&["app", "status"])[0]["LastModifiedAt"].clone();
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(out.contains("Builds still running"), "{out}");
    assert!(out.contains("after waiting 3s"), "{out}");
    assert!(out.contains("build-long.build[0] (job build-long"), "{out}");
    assert!(
        out.contains(s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR")),
        "{out}"
    );
    assert!(out.contains("builds_timeout"), "{out}");
    assert!(out.contains("CircleCI was not stopped"), "{out}");
    let status = sim.replicatedctl(&["app", "status"]);
    assert_eq!(status[0]["State"], "started", "{status}");
    assert_eq!(status[0]["LastModifiedAt"], before, "the app was touched");

    // A build that ends in 4 s: the stop comes after it (the app is watched while the
    // apply runs), and the Nomad check after the start counts the embedded clients.
    let ends = epoch_now() + 4.0;
    nomad.build("build-long", "node-1", ends);
    tf.write_main(&restart("  builds_timeout = \"60s\"\n"));
    let watcher = on_stop(&s, epoch_now);
    tf.apply();
    let stopped_at = watcher.join().unwrap().expect("the app was never stopped");
    assert!(
        stopped_at >= ends,
        "CircleCI was stopped {:.1}s before the build ended",
        ends - stopped_at
    );
    let checks: Vec<String> = serde_json::from_str(&tf.ok(&["output", "-json", "checks"])).unwrap();
    assert!(
        checks.iter().any(|c| c.starts_with(&format!(
            "nomad: 2 ready, eligible clients at {}; 2 before the stop",
            s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR")
        ))),
        "{checks:?}"
    );
    // A passed start closes the cutover record.
    assert!(!root
        .path()
        .join("data/circle/external-services-cutover/record.json")
        .exists());
}

/// After the start, the Nomad servers CircleCI now uses (its file's) must list as many
/// clients that can take builds as there were before the stop: one draining client
/// fails the restart, naming Nomad, with the clients as evidence.
#[test]
fn the_restart_fails_naming_nomad_when_fewer_clients_can_take_builds() {
    use std::os::unix::fs::PermissionsExt;
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = common::searchable_tempdir();
    let _sim = started_sim(&s, root.path());
    // Nomad externalized by hand, the runbook's way, and its CA trusted.
    let ci_nomad = s.get("CIRCLECI_TEST_CI_NOMAD_ADDR");
    let nomadf = root.path().join("etc/circleconfig/shared/nomad");
    std::fs::create_dir_all(nomadf.parent().unwrap()).unwrap();
    std::fs::write(
        &nomadf,
        format!("export NOMAD_API_ENDPOINT=\"{ci_nomad}\"\n"),
    )
    .unwrap();
    let bundle = root.path().join("etc/ssl/certs/ca-certificates.crt");
    std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
    std::fs::copy(s.get("CIRCLECI_TEST_TLS_CA"), &bundle).unwrap();
    let restart = |generation: u32| {
        lone_restart(
            &s,
            root.path(),
            &format!("  verify_timeout = \"5s\"\n  triggers = {{ g = \"{generation}\" }}\n"),
        )
    };
    let tf = Tf::new(&restart(1));
    tf.apply();
    let checks: Vec<String> = serde_json::from_str(&tf.ok(&["output", "-json", "checks"])).unwrap();
    assert!(
        checks.iter().any(|c| c.starts_with(&format!(
            "nomad: 2 ready, eligible clients at {ci_nomad}; 2 before the stop"
        ))),
        "{checks:?}"
    );

    // One external client starts draining while CircleCI is stopped (the record of
    // before says 2): once it is back, 1 < 2.
    tf.write_main(&restart(2));
    let drainer = {
        let s = servers();
        on_stop(&servers(), move || {
            let mut nomad = NomadFixture::new(&s, "CIRCLECI_TEST_CI_NOMAD_DIR");
            nomad.client("external-client-2", true);
            nomad
        })
    };
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    let nomad = drainer.join().unwrap().expect("CircleCI was never stopped");
    assert!(out.contains("CircleCI check failed: nomad"), "{out}");
    assert!(
        out.contains(&format!(
            "1 ready, eligible clients at {ci_nomad}, fewer than 2 before the stop"
        )),
        "{out}"
    );
    assert!(out.contains("external-client-2 ("), "{out}");
    assert!(out.contains("): ready, draining"), "{out}");
    // The record of before stays on the Services machine, private, for the next try.
    let record = root
        .path()
        .join("data/circle/external-services-cutover/record.json");
    let mode = std::fs::metadata(&record).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(
        saved["nomad_clients"].as_array().unwrap().len(),
        2,
        "{saved}"
    );

    // The client is back: the failed check plans a restart, which passes against the
    // record kept from before the first stop, and closes it.
    drop(nomad);
    assert_eq!(tf.plan_code(), 2);
    tf.apply();
    assert!(!record.exists());
    assert_eq!(tf.plan_code(), 0);
}

/// A restart whose check fails puts back the runbook files the cutover changed, byte
/// for byte as the operator wrote them, restarts CircleCI on them and checks it is back
/// as it was; the apply fails saying so, and the next apply (cause removed) completes.
#[test]
fn a_failed_restart_puts_the_operators_files_back() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = common::searchable_tempdir();
    let sim = started_sim(&s, root.path());
    // Redis externalized by hand the runbook's way, and CircleCI started on it.
    let redisf = root.path().join("etc/circleconfig/shared/redis");
    std::fs::create_dir_all(redisf.parent().unwrap()).unwrap();
    let operators = format!(
        "# Redis, set up by hand from the runbook\nexport REDIS_HOST=127.0.0.1\nexport REDIS_PORT={}\n",
        s.redis_port()
    );
    std::fs::write(&redisf, &operators).unwrap();
    sim.replicatedctl(&["app", "stop"]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    sim.replicatedctl(&["app", "start"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let cutover = root.path().join("data/circle/external-services-cutover");

    // Terraform moves it to a Redis that is not there (verify = false writes anyway):
    // the restart's Redis check fails, and the fallback brings the operator's file back.
    let config = |port: u16, on_failure: &str| {
        format!(
            "resource \"circleci_external_redis\" \"r\" {{\n  host = \"127.0.0.1\"\n  port = {port}\n  \
             verify = false\n  config_path = {:?}\n}}\n{}",
            redisf.to_str().unwrap(),
            lone_restart(
                &s,
                root.path(),
                &format!(
                    "  verify_timeout = \"5s\"\n{on_failure}  triggers = {{ r = circleci_external_redis.r.file_sha256 }}\n"
                ),
            )
        )
    };
    let gone = common::closed_port();
    let tf = Tf::new(&config(gone, ""));
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(out.contains("CircleCI check failed: redis"), "{out}");
    assert!(out.contains(&format!("127.0.0.1:{gone}")), "{out}");
    assert!(
        out.contains("CircleCI is back as it was before this apply"),
        "{out}"
    );
    assert!(out.contains(redisf.to_str().unwrap()), "{out}");
    assert_eq!(std::fs::read_to_string(&redisf).unwrap(), operators);
    // Restarted on it, and checked: this start's domain-service reconnected to the
    // operator's Redis.
    assert!(
        out.contains(&format!("Reconnected to 127.0.0.1:{}", s.redis_port())),
        "{out}"
    );
    assert_eq!(sim.replicatedctl(&["app", "status"])[0]["State"], "started");
    assert!(!cutover.join("record.json").exists(), "the record was left");
    assert!(
        std::fs::read_dir(cutover.join("kept")).map_or(true, |mut d| d.next().is_none()),
        "kept originals were left"
    );

    // on_failure = "stop": the same failure leaves CircleCI stopped with the files as the
    // apply wrote them, and the original kept for a human.
    tf.write_main(&config(gone, "  on_failure = \"stop\"\n"));
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(out.contains("CircleCI was left stopped"), "{out}");
    assert_eq!(sim.replicatedctl(&["app", "status"])[0]["State"], "stopped");
    assert!(std::fs::read_to_string(&redisf)
        .unwrap()
        .contains(&gone.to_string()));
    let kept = cutover.join("kept/etc_circleconfig_shared_redis.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The cause removed: the next apply completes the cutover, and the plan after it is
    // empty.
    tf.write_main(&config(s.redis_port(), ""));
    tf.apply();
    assert_eq!(sim.replicatedctl(&["app", "status"])[0]["State"], "started");
    assert_eq!(tf.plan_code(), 0);
}

/// "Back as it was" is a comparison: what the runbook's checks observed before the
/// first stop is recorded, and the fallback requires the same. Here the kept copy of
/// the operator's Redis file is changed on the Services machine during the cutover (to
/// the same Redis by another name): every check passes after the fallback, but domain-
/// service now reconnects to localhost, not 127.0.0.1, and the apply says so.
#[test]
fn a_fallback_that_does_not_observe_what_was_before_fails() {
    use base64::Engine as _;
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = common::searchable_tempdir();
    let sim = started_sim(&s, root.path());
    let redisf = root.path().join("etc/circleconfig/shared/redis");
    std::fs::create_dir_all(redisf.parent().unwrap()).unwrap();
    let port = s.redis_port();
    std::fs::write(
        &redisf,
        format!("export REDIS_HOST=127.0.0.1\nexport REDIS_PORT={port}\n"),
    )
    .unwrap();
    sim.replicatedctl(&["app", "stop"]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    sim.replicatedctl(&["app", "start"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let gone = common::closed_port();
    let tf = Tf::new(&format!(
        "resource \"circleci_external_redis\" \"r\" {{\n  host = \"127.0.0.1\"\n  port = {gone}\n  \
         verify = false\n  config_path = {:?}\n}}\n{}",
        redisf.to_str().unwrap(),
        lone_restart(
            &s,
            root.path(),
            "  verify_timeout = \"5s\"\n  triggers = { r = circleci_external_redis.r.file_sha256 }\n",
        )
    ));
    let kept = root
        .path()
        .join("data/circle/external-services-cutover/kept/etc_circleconfig_shared_redis.json");
    let tamper = on_stop(&s, move || {
        let mut k: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let text = String::from_utf8(b64.decode(k["content_base64"].as_str().unwrap()).unwrap())
            .unwrap()
            .replace("127.0.0.1", "localhost");
        k["content_base64"] = json!(b64.encode(text));
        std::fs::write(&kept, k.to_string()).unwrap();
    });
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    tamper.join().unwrap().expect("CircleCI was never stopped");
    assert!(out.contains("CircleCI check failed: redis"), "{out}");
    assert!(
        out.contains("CircleCI does not run as it did before the cutover"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "redis: the host domain-service reconnected to: before the cutover 127.0.0.1:{port}, now localhost:{port}"
        )),
        "{out}"
    );
    assert!(
        !out.contains("CircleCI is back as it was before this apply"),
        "{out}"
    );
    drop(sim);
}

/// `on_destroy = "go_back"` needs the record a first cutover with a verified migration
/// keeps: a restart alone keeps none, so the destroy plan is an error naming
/// on_destroy, the destroy changes nothing, and `keep_external` destroys while CircleCI
/// keeps running.
#[test]
fn going_back_without_a_record_of_before_is_refused_at_plan() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let root = common::searchable_tempdir();
    let sim = started_sim(&s, root.path());
    let restart = |on_destroy: &str| {
        lone_restart(
            &s,
            root.path(),
            &format!("  verify_timeout = \"10s\"\n  on_destroy = \"{on_destroy}\"\n"),
        )
    };
    let tf = Tf::new(&restart("go_back"));
    tf.apply();
    let cutover = root.path().join("data/circle/external-services-cutover");
    assert!(
        !cutover.join("before-first-cutover.json").exists(),
        "a restart without a migration kept a way back"
    );
    let out = flat(&tf.fails(&["plan", "-destroy", "-no-color"]));
    assert!(out.contains("No way back recorded"), "{out}");
    assert!(out.contains("on_destroy"), "{out}");
    let modified = sim.replicatedctl(&["app", "status"])[0]["LastModifiedAt"].clone();
    let out = flat(&tf.fails(&["destroy", "-auto-approve", "-no-color"]));
    assert!(out.contains("No way back recorded"), "{out}");
    let status = sim.replicatedctl(&["app", "status"]);
    assert_eq!(status[0]["State"], "started", "{status}");
    assert_eq!(status[0]["LastModifiedAt"], modified, "the app was touched");

    tf.write_main(&restart("keep_external"));
    let plan = flat(&tf.ok(&["plan", "-no-color"]));
    assert!(plan.contains("1 to change"), "{plan}");
    assert!(!plan.contains("This apply stops CircleCI"), "{plan}");
    tf.apply();
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    let status = sim.replicatedctl(&["app", "status"]);
    assert_eq!(status[0]["State"], "started", "{status}");
    assert_eq!(status[0]["LastModifiedAt"], modified, "the app was touched");
}
