//! `via_services_host` through terraform: the provider's PostgreSQL and MongoDB admin
//! connections (and the checks made with them) go through the test sshd as
//! `direct-tcpip` channels. That sshd allows root tunnels only to the dev servers'
//! ports (`PermitOpen`) and its sudo user none, and logs each channel open (DEBUG1),
//! so the tests see which hop carried what and which one refused.

use crate::common;

use common::{flat, servers, Servers, Tf};

/// The provider block with `via_services_host = true`, as `user` (root, or the sudo
/// user whose tunnels sshd refuses).
fn provider(s: &Servers, sudo_user: bool) -> String {
    let extra = format!(
        "known_hosts_file = {:?}{}",
        s.get("CIRCLECI_TEST_SSH_KNOWN_HOSTS"),
        if sudo_user { "\n    sudo = true" } else { "" }
    );
    let mut p = s.provider_block(&extra).replace(
        "provider \"circleci\" {",
        "provider \"circleci\" {\n  via_services_host = true",
    );
    if sudo_user {
        p = p.replace(
            "user             = \"root\"",
            &format!(
                "user             = {:?}",
                s.get("CIRCLECI_TEST_SSH_SUDO_USER")
            ),
        );
    }
    p
}

fn resources(s: &Servers, root: &std::path::Path, tag: &str, pg_port: &str) -> String {
    format!(
        r#"
resource "circleci_postgres_databases" "pg" {{
  host                = "127.0.0.1"
  port                = {pg_port}
  user                = "tun_{tag}"
  databases           = ["tun_{tag}_a", "tun_{tag}_b"]
  extensions          = {{}}
  password_wo         = "tunnel pw {tag}"
  password_wo_version = 1
  deletion_policy     = "drop"
  config_path         = "{root}/etc/circleconfig/shared/postgresql"
}}
resource "circleci_external_redis" "r" {{
  host        = "127.0.0.1"
  port        = {redis}
  config_path = "{root}/etc/circleconfig/shared/redis"
}}
resource "circleci_external_nomad" "n" {{
  endpoint     = "{nomad}"
  ca_cert_file = "{nomad_ca}"
  acl_token_wo = "{nomad_token}"
  config_path  = "{root}/etc/circleconfig/shared/nomad"
}}
resource "circleci_vault_transit_client" "v" {{
  key_name              = "tun-{tag}"
  policy_name           = "tun-{tag}"
  delete_key_on_destroy = true
  config_path           = "{root}/etc/circleconfig/context-service/customizations"
}}
resource "circleci_external_rabbitmq" "mq" {{
  host        = "127.0.0.1"
  port        = {mq}
  username    = "{mq_user}"
  password_wo = "{mq_pw}"
  config_path = "{root}/etc/circleconfig/shared/rabbitmq"
}}
resource "circleci_external_mongo" "m" {{
  hosts                = ["127.0.0.1:{mongo}"]
  username             = "tun-{tag}"
  password_wo          = "tunnel mongo pw {tag}"
  password_wo_version  = 1
  tls                  = false
  drop_user_on_destroy = true
  config_path          = "{root}/etc/circle-installation-customizations"
}}
"#,
        root = root.to_str().unwrap(),
        mongo = s.get("CIRCLECI_TEST_MONGO_PORT"),
        redis = s.get("CIRCLECI_TEST_REDIS_PORT"),
        mq = s.get("CIRCLECI_TEST_MQ_PORT"),
        mq_user = s.get("CIRCLECI_TEST_MQ_USER"),
        mq_pw = s.get("CIRCLECI_TEST_MQ_PASSWORD"),
        nomad = s.get("CIRCLECI_TEST_NOMAD_ADDR"),
        // vault_transit_client's address_for_services defaults to the provider's.
        nomad_ca = s.get("CIRCLECI_TEST_TLS_CA"),
        nomad_token = s.get("CIRCLECI_TEST_NOMAD_TOKEN"),
    )
}

fn port_of(url: &str) -> String {
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

fn nomad_port(s: &Servers) -> String {
    port_of(s.get("CIRCLECI_TEST_NOMAD_ADDR"))
}

fn vault_port(s: &Servers) -> String {
    port_of(s.get("CIRCLECI_TEST_VAULT_ADDR"))
}

/// The ports of every backend the test's resources reach through the tunnel.
fn backend_ports(s: &Servers) -> [String; 6] {
    [
        s.pg_port().to_string(),
        s.get("CIRCLECI_TEST_MONGO_PORT").to_string(),
        s.get("CIRCLECI_TEST_REDIS_PORT").to_string(),
        s.get("CIRCLECI_TEST_MQ_PORT").to_string(),
        nomad_port(s),
        vault_port(s),
    ]
}

/// What sshd logged from byte `from` on.
fn sshd_log_since(s: &Servers, from: u64) -> String {
    let all = std::fs::read(s.get("CIRCLECI_TEST_SSH_LOG")).unwrap();
    String::from_utf8_lossy(&all[from as usize..]).into_owned()
}

fn log_len(s: &Servers) -> u64 {
    std::fs::metadata(s.get("CIRCLECI_TEST_SSH_LOG"))
        .unwrap()
        .len()
}

#[test]
fn every_backend_goes_through_the_services_machine() {
    let s = servers();
    let root = common::searchable_tempdir();
    let tag = std::process::id().to_string();
    let pg = s.pg_port().to_string();
    let before = log_len(&s);
    let tf = Tf::new(&format!(
        "{}{}",
        provider(&s, false),
        resources(&s, root.path(), &tag, &pg)
    ));
    let out = tf.apply();
    assert!(!flat(&out).contains("does not cover"), "{out}");
    // The roles, databases and user exist, made through the tunnel.
    assert_eq!(
        s.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname LIKE 'tun\\_{tag}\\_%'")
        )
        .trim(),
        "2"
    );
    let users = s
        .pymongo(
            &s.mongo_admin_uri(),
            "admin",
            serde_json::json!({"usersInfo": format!("tun-{tag}")}),
        )
        .unwrap();
    assert_eq!(users["users"].as_array().unwrap().len(), 1, "{users}");
    // sshd carried a channel to each backend: PostgreSQL (admin and the role's own
    // login check), MongoDB, Redis (the resource's PING) and Nomad (the leader check,
    // HTTPS through the local SOCKS5 end of the tunnel).
    let log = sshd_log_since(&s, before);
    for port in backend_ports(&s) {
        assert!(
            log.contains(&format!("target 127.0.0.1 port {port}")),
            "no direct-tcpip open to port {port} in sshd's log:\n{}",
            log.lines()
                .filter(|l| l.contains("direct"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Nomad's and RabbitMQ's connections themselves went through the SOCKS5 end, not
    // only the check that names the hop: two channels to each port.
    for port in [nomad_port(&s), s.get("CIRCLECI_TEST_MQ_PORT").to_string()] {
        let opens = log
            .matches(&format!("target 127.0.0.1 port {port}"))
            .count();
        assert!(opens >= 2, "{opens} channel(s) to port {port}");
    }
    assert_eq!(
        tf.plan_code(),
        0,
        "refresh through the tunnel sees no drift"
    );
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
}

#[test]
fn a_refused_or_unreachable_tunnel_names_the_hop_and_writes_nothing() {
    let s = servers();
    let root = common::searchable_tempdir();
    let tag = format!("r{}", std::process::id());
    let pg = s.pg_port().to_string();
    // The sudo user's tunnels: PermitOpen none.
    let tf = Tf::new(&format!(
        "{}{}",
        provider(&s, true),
        resources(&s, root.path(), &tag, &pg)
    ));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(err.contains("PermitOpen"), "{err}");
    for port in backend_ports(&s) {
        assert!(
            err.contains(&format!("refused the tunnel to 127.0.0.1:{port}")),
            "{err}"
        );
    }
    assert!(err.contains("Nothing was written"), "{err}");
    let written: Vec<_> = walk(root.path());
    assert!(written.is_empty(), "written: {written:?}\n{err}");
    assert_eq!(
        s.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = 'tun_{tag}'")
        )
        .trim(),
        "0"
    );

    // Allowed by sshd, but nothing listens there: the backend hop.
    let closed = s.get("CIRCLECI_TEST_CLOSED_PORT").to_string();
    let tf = Tf::new(&format!(
        "{}{}",
        provider(&s, false).replace(
            &format!("port        = {pg}"),
            &format!("port        = {closed}")
        ),
        resources(&s, root.path(), &format!("{tag}c"), &closed)
    ));
    let err = flat(&tf.fails(&[
        "apply",
        "-auto-approve",
        "-no-color",
        "-target",
        "circleci_postgres_databases.pg",
    ]));
    assert!(
        err.contains(&format!("could not connect to 127.0.0.1:{closed}")),
        "{err}"
    );
    let written: Vec<_> = walk(root.path());
    assert!(written.is_empty(), "written: {written:?}\n{err}");
}

#[test]
fn a_resource_check_takes_its_own_route() {
    let s = servers();
    let root = common::searchable_tempdir();
    let redis = s.get("CIRCLECI_TEST_REDIS_PORT");
    let resource = |via: bool| {
        format!(
            r#"
resource "circleci_external_redis" "r" {{
  host                     = "127.0.0.1"
  port                     = {redis}
  verify_via_services_host = {via}
  config_path              = "{root}/etc/circleconfig/shared/redis"
}}
"#,
            root = root.path().display()
        )
    };
    // The provider goes direct, the resource's check through the Services machine,
    // whose sshd refuses the sudo user's tunnels: refused, named, nothing written.
    // PostgreSQL's and MongoDB's admin connections go direct (their blocks), their
    // resources' login checks through the tunnel.
    let direct = provider(&s, true).replace("  via_services_host = true\n", "");
    assert!(!direct.contains("via_services_host"), "{direct}");
    let tag = format!("o{}", std::process::id());
    let checked_through = format!(
        r#"
resource "circleci_postgres_databases" "pg" {{
  host                     = "127.0.0.1"
  port                     = {pg}
  user                     = "tun_{tag}"
  databases                = ["tun_{tag}_a"]
  extensions               = {{}}
  password_wo              = "tunnel pw {tag}"
  password_wo_version      = 1
  deletion_policy          = "drop"
  verify_via_services_host = true
  config_path              = "{root}/etc/circleconfig/shared/postgresql"
}}
resource "circleci_external_mongo" "m" {{
  hosts                    = ["127.0.0.1:{mongo}"]
  username                 = "tun-{tag}"
  password_wo              = "tunnel mongo pw {tag}"
  password_wo_version      = 1
  tls                      = false
  drop_user_on_destroy     = true
  verify_via_services_host = true
  config_path              = "{root}/etc/circle-installation-customizations"
}}
resource "circleci_vault_transit_client" "v" {{
  key_name                 = "tun-{tag}"
  policy_name              = "tun-{tag}"
  delete_key_on_destroy    = true
  verify_via_services_host = true
  config_path              = "{root}/etc/circleconfig/context-service/customizations"
}}
"#,
        pg = s.pg_port(),
        mongo = s.get("CIRCLECI_TEST_MONGO_PORT"),
        root = root.path().display()
    );
    let tf = Tf::new(&format!("{direct}{}{checked_through}", resource(true)));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    for port in [
        redis.to_string(),
        s.pg_port().to_string(),
        s.get("CIRCLECI_TEST_MONGO_PORT").to_string(),
        vault_port(&s),
    ] {
        assert!(
            err.contains(&format!("refused the tunnel to 127.0.0.1:{port}")),
            "{port}: {err}"
        );
    }
    assert!(walk(root.path()).is_empty(), "{err}");
    // The role and the user were made (directly) before their checks failed.
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(
        s.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = 'tun_{tag}'")
        )
        .trim(),
        "0"
    );
    // The provider goes through the Services machine, the resource's check direct:
    // no tunnel is asked for, so the refusing sshd does not matter.
    tf.write_main(&format!("{}{}", provider(&s, true), resource(false)));
    let out = tf.apply();
    assert!(out.contains("Apply complete"), "{out}");
    // The file, and its original (none) kept for the cutover it begins.
    let written = walk(root.path());
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(
        written
            .iter()
            .any(|p| p.ends_with("etc/circleconfig/shared/redis")),
        "{written:?}"
    );
    assert!(
        written
            .iter()
            .any(|p| p
                .ends_with("external-services-cutover/kept/etc_circleconfig_shared_redis.json")),
        "{written:?}"
    );
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
}

/// The files under `d`, but the provider's file digest key: an apply gets (or makes)
/// it before it changes anything, so that a changed password can always be recorded,
/// and it is the provider's own (0600, checked here), not one of CircleCI's files.
fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.ends_with("data/circle/external-services-cutover/file-digest.key") {
            assert_eq!(common::mode_of(&p), 0o600, "{}", p.display());
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn via_services_host_needs_a_services_machine() {
    let s = servers();
    let p = s.provider_block("");
    let start = p.find("  services_host {").unwrap();
    let end = start + p[start..].find("\n  }\n").unwrap() + 5;
    let without = format!(
        "{}{}",
        &p[..start].replace(
            "provider \"circleci\" {",
            "provider \"circleci\" {\n  via_services_host = true"
        ),
        &p[end..]
    );
    let tf = Tf::new(&format!(
        "{without}\nresource \"circleci_external_redis\" \"r\" {{\n  host = \"127.0.0.1\"\n}}\n"
    ));
    let err = flat(&tf.fails(&["validate", "-no-color"]));
    assert!(err.contains("No Services machine to go through"), "{err}");
}

/// The local SOCKS5 end of the tunnel serves only who knows its per-process password,
/// and only username/password authentication; with it, a CONNECT carries bytes to the
/// backend (a Redis PING here).
#[test]
fn the_local_socks_end_wants_its_password() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let s = servers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = std::sync::Arc::new(s.services_host());
        let url = h.socks_proxy().unwrap();
        let rest = url.expose().trim_start_matches("socks5h://").to_string();
        let (creds, addr) = rest.rsplit_once('@').unwrap();
        let (user, pass) = creds.split_once(':').unwrap();
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        assert!(pass.len() >= 32, "a short password");
        let login = |u: &str, p: &str| {
            let mut m = vec![1u8, u.len() as u8];
            m.extend_from_slice(u.as_bytes());
            m.push(p.len() as u8);
            m.extend_from_slice(p.as_bytes());
            m
        };

        // No authentication offered: refused.
        let mut t = TcpStream::connect(addr).await.unwrap();
        t.write_all(&[5, 1, 0]).await.unwrap();
        let mut r = [0u8; 2];
        t.read_exact(&mut r).await.unwrap();
        assert_eq!(r, [5, 0xff]);

        // A wrong password: refused.
        let mut t = TcpStream::connect(addr).await.unwrap();
        t.write_all(&[5, 1, 2]).await.unwrap();
        t.read_exact(&mut r).await.unwrap();
        assert_eq!(r, [5, 2]);
        t.write_all(&login(user, "not-the-password")).await.unwrap();
        t.read_exact(&mut r).await.unwrap();
        assert_eq!(r, [1, 1]);

        // The right one, then CONNECT 127.0.0.1:REDIS (by name, as socks5h sends it).
        let mut t = TcpStream::connect(addr).await.unwrap();
        t.write_all(&[5, 1, 2]).await.unwrap();
        t.read_exact(&mut r).await.unwrap();
        t.write_all(&login(user, pass)).await.unwrap();
        t.read_exact(&mut r).await.unwrap();
        assert_eq!(r, [1, 0]);
        let port: u16 = s.get("CIRCLECI_TEST_REDIS_PORT").parse().unwrap();
        let name = b"127.0.0.1";
        let mut req = vec![5u8, 1, 0, 3, name.len() as u8];
        req.extend_from_slice(name);
        req.extend_from_slice(&port.to_be_bytes());
        t.write_all(&req).await.unwrap();
        let mut reply = [0u8; 10];
        t.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[..2], [5, 0], "{reply:?}");
        t.write_all(b"PING\r\n").await.unwrap();
        let mut pong = [0u8; 7];
        t.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"+PONG\r\n");
    });
}
