//! A MongoDB replica set whose members' names only the Services machine can resolve,
//! reached through it (`via_services_host`), through terraform.
//!
//! The "Services machine" here is a second sshd, started by the test in its own mount
//! namespace (`unshare -m`) where a bind-mounted `/etc/hosts` knows the names
//! `mongo-a.rs.internal` and `mongo-b.rs.internal`; the Terraform side (this process,
//! terraform, the provider) cannot resolve them. Two MongoDB stand-ins form the set
//! `rs0`: the seed in the connection string is the secondary, which names the primary
//! only by its internal name, so the provider must discover it and reach it through
//! the tunnel too.
//!
//! The same sshd carries the runbook's TLS check made on the services box (`openssl
//! s_client -connect <mongo_hostname>:27017`): a MongoDB stand-in with TLS, whose
//! certificate names `mongo-a.rs.internal`, is checked against the Services machine's
//! own CA store, first missing, then without its CA, then with it (saved by
//! `circleci_services_ca_certificate`, bundled by the simulator's
//! `update-ca-certificates`). Every process the test starts is stopped by its PID.

use crate::common;

use std::net::ToSocketAddrs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::sshd::{self, Proc};
use common::{flat, servers, Servers, Tf};

const PRIMARY: &str = "mongo-a.rs.internal";
const SECONDARY: &str = "mongo-b.rs.internal";

fn free_port() -> u16 {
    common::closed_port()
}

/// A mongo stand-in member of `rs0` advertised as `name:port`.
fn member(s: &Servers, dir: &Path, name: &str, port: u16, primary: Option<String>) -> Proc {
    let mut args = vec![
        "--replica-set".to_string(),
        "rs0".into(),
        "--advertise".into(),
        format!("{name}:{port}"),
    ];
    if let Some(p) = primary {
        args.extend(["--primary".to_string(), p]);
    }
    standin(s, dir, name, port, &args)
}

/// A mongo stand-in (3.6 mode, the dev admin user) on `port` with `args`.
fn standin(s: &Servers, dir: &Path, name: &str, port: u16, args: &[String]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(s.get("CIRCLECI_TEST_MONGO_STANDIN"));
    cmd.args(["--port", &port.to_string(), "--mode", "3.6"])
        .args(["--admin-user", s.get("CIRCLECI_TEST_MONGO_USER")])
        .args(["--admin-password", s.get("CIRCLECI_TEST_MONGO_PASSWORD")])
        .args(args);
    let p = Proc(
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    sshd::wait_listening(port, name, &log);
    p
}

/// The Services machine: tunnels allowed only to `allowed`, in a mount namespace whose
/// /etc/hosts alone knows the members' names.
fn services_sshd(dir: &Path, port: u16, allowed: &str) -> (Proc, std::path::PathBuf) {
    let permit = format!("PermitOpen {allowed}");
    sshd::start(
        dir,
        port,
        &|line: &str| line.starts_with("PermitOpen ").then(|| permit.clone()),
        Some(&format!(
            "127.0.0.1 localhost\n127.0.0.1 {PRIMARY} {SECONDARY}\n"
        )),
    )
}

/// The provider, through the second sshd, its MongoDB admin connection to `uri`.
fn provider(s: &Servers, ssh_port: u16, known_hosts: &Path, uri: &str) -> String {
    s.provider_block_on(
        ssh_port,
        &format!("known_hosts_file = {known_hosts:?}"),
        &format!("  mongodb {{\n    uri = {uri:?}\n  }}"),
    )
    .replace(
        "provider \"circleci\" {",
        "provider \"circleci\" {\n  via_services_host = true",
    )
}

/// How many users named `user` the MongoDB stand-in on `port` has.
fn users_named(s: &Servers, port: u16, user: &str) -> usize {
    let uri = format!(
        "mongodb://{}:{}@127.0.0.1:{port}/?authSource=admin&directConnection=true",
        s.get("CIRCLECI_TEST_MONGO_USER"),
        s.get("CIRCLECI_TEST_MONGO_PASSWORD"),
    );
    let r = s
        .pymongo(&uri, "admin", serde_json::json!({ "usersInfo": user }))
        .unwrap();
    r["users"].as_array().unwrap().len()
}

#[test]
fn a_replica_set_named_only_on_the_services_machine_is_reached_through_it() {
    let s = servers();
    let dir = common::searchable_tempdir();
    for name in [PRIMARY, SECONDARY] {
        assert!(
            (name, 27017).to_socket_addrs().is_err(),
            "{name} resolves here: the test needs it known only on the Services machine's side"
        );
    }
    let (pa, pb, ssh_port) = (free_port(), free_port(), free_port());
    let _primary = member(&s, dir.path(), PRIMARY, pa, None);
    let _secondary = member(
        &s,
        dir.path(),
        SECONDARY,
        pb,
        Some(format!("{PRIMARY}:{pa}")),
    );
    let allowed = format!("{PRIMARY}:{pa} {SECONDARY}:{pb}");
    let (_sshd, sshd_log) = services_sshd(dir.path(), ssh_port, &allowed);
    let known_hosts = sshd::known_hosts(&s, dir.path(), &[ssh_port]);

    let root = common::searchable_tempdir();
    let tag = std::process::id();
    // Only the secondary is named: the primary is found from its answer.
    let seed = format!(
        "mongodb://{}:{}@{SECONDARY}:{pb}/?authSource=admin&replicaSet=rs0",
        s.get("CIRCLECI_TEST_MONGO_USER"),
        s.get("CIRCLECI_TEST_MONGO_PASSWORD"),
    );
    let main_tf = format!(
        r#"{provider}
resource "circleci_external_mongo" "m" {{
  hosts                = ["{PRIMARY}:{pa}", "{SECONDARY}:{pb}"]
  replica_set          = "rs0"
  username             = "rs-{tag}"
  password_wo          = "replica set pw {tag}"
  password_wo_version  = 1
  tls                  = false
  drop_user_on_destroy = true
  config_path          = "{root}/etc/circle-installation-customizations"
}}
"#,
        provider = provider(&s, ssh_port, &known_hosts, &seed),
        root = root.path().display(),
    );
    let tf = Tf::new(&main_tf);
    let out = tf.apply();
    assert!(out.contains("Apply complete"), "{out}");

    // The user was made on the primary (asked directly, by its loopback port).
    assert_eq!(users_named(&s, pa, &format!("rs-{tag}")), 1);
    // The file names the members as CircleCI on the Services machine reaches them.
    let file = std::fs::read_to_string(root.path().join("etc/circle-installation-customizations"))
        .unwrap();
    assert!(
        file.contains(&format!("{PRIMARY}:{pa},{SECONDARY}:{pb}")),
        "{file}"
    );
    // sshd got the names unresolved and resolved them itself: a channel to each.
    let log = std::fs::read_to_string(&sshd_log).unwrap();
    for (name, port) in [(SECONDARY, pb), (PRIMARY, pa)] {
        assert!(
            log.contains(&format!("target {name} port {port}")),
            "no direct-tcpip open to {name}:{port} in the second sshd's log:\n{log}"
        );
    }
    assert_eq!(
        tf.plan_code(),
        0,
        "refresh through the tunnel sees no drift"
    );
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(users_named(&s, pa, &format!("rs-{tag}")), 0);
}

/// A CA and a server certificate for `name` (PEM): (ca, cert, key).
fn certificates(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "e2e tunnel test CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn tls_is_checked_against_the_services_machines_own_ca_store() {
    let _sim_lock = common::sim::SIMULATOR
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let s = servers();
    let dir = common::searchable_tempdir();
    let (ca, cert, key) = certificates(PRIMARY);
    for (f, pem) in [("ca.pem", &ca), ("server.pem", &cert), ("server.key", &key)] {
        std::fs::write(dir.path().join(f), pem).unwrap();
    }
    let (port, ssh_port) = (free_port(), free_port());
    let _mongo = standin(
        &s,
        dir.path(),
        "tls",
        port,
        &[
            "--tls-cert".into(),
            dir.path().join("server.pem").display().to_string(),
            "--tls-key".into(),
            dir.path().join("server.key").display().to_string(),
        ],
    );
    let (_sshd, _log) = services_sshd(dir.path(), ssh_port, &format!("{PRIMARY}:{port}"));
    let known_hosts = sshd::known_hosts(&s, dir.path(), &[ssh_port]);
    let root = common::searchable_tempdir();
    let _sim = common::sim::Sim::new(
        &s,
        serde_json::json!({"root": root.path(), "transition": 1}),
    );
    let tag = std::process::id();
    // The admin connection trusts the test's CA where Terraform runs.
    let admin = format!(
        "mongodb://{}:{}@{PRIMARY}:{port}/?authSource=admin&tls=true&tlsCAFile={}",
        s.get("CIRCLECI_TEST_MONGO_USER"),
        s.get("CIRCLECI_TEST_MONGO_PASSWORD"),
        dir.path().join("ca.pem").display()
    );
    let bundle = root.path().join("etc/ssl/certs/ca-certificates.crt");
    let customizations = root.path().join("etc/circle-installation-customizations");
    let mongo = format!(
        r#"
resource "circleci_external_mongo" "m" {{
  hosts                = ["{PRIMARY}:{port}"]
  username             = "tls-{tag}"
  password_wo          = "tls pw {tag}"
  password_wo_version  = 1
  drop_user_on_destroy = true
  services_ca_bundle   = {bundle:?}
  config_path          = {customizations:?}
  depends_on           = [circleci_services_ca_certificate.ca]
}}
"#
    );
    let ca_resource = |pem: &Path| {
        format!(
            r#"
resource "circleci_services_ca_certificate" "ca" {{
  name            = "tunnel-test"
  certificate_pem = file({pem:?})
  config_root     = {root:?}
}}
"#,
            root = root.path()
        )
    };
    let provider = provider(&s, ssh_port, &known_hosts, &admin);

    // No CA store on the Services machine yet.
    let tf = Tf::new(&format!(
        "{provider}{}",
        mongo.replace(
            "  depends_on           = [circleci_services_ca_certificate.ca]\n",
            ""
        )
    ));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        err.contains("The Services machine has no CA store there"),
        "{err}"
    );
    assert!(!customizations.exists(), "{err}");

    // A store without the CA that signed MongoDB's certificate: the handshake made
    // through the Services machine fails as CircleCI's would, and says what to do.
    let wrong = Path::new(s.get("CIRCLECI_TEST_PG_WRONG_CA"));
    tf.write_main(&format!("{provider}{}{mongo}", ca_resource(wrong)));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        bundle.exists(),
        "update-ca-certificates made no bundle: {err}"
    );
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(
        err.contains(&format!(
            "trusts only the Services machine's CA store {}",
            bundle.display()
        )),
        "{err}"
    );
    assert!(!customizations.exists(), "{err}");

    // With the CA saved on the Services machine, the check passes.
    let right = dir.path().join("ca.pem");
    tf.write_main(&format!("{provider}{}{mongo}", ca_resource(&right)));
    let out = tf.apply();
    assert!(out.contains("Apply complete"), "{out}");
    assert!(std::fs::read_to_string(&customizations)
        .unwrap()
        .contains(&format!("{PRIMARY}:{port}")),);
    assert_eq!(tf.plan_code(), 0);
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
}
