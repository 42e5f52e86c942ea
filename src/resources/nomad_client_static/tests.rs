//! `circleci_nomad_client_static`'s schema, validation, plan and decoding with no
//! server: the `client` blocks read once into typed values, checked and defaulted from
//! their declarations.

use std::sync::Arc;

use super::roll::Restart;
use super::*;
use crate::plugin::Nesting;
use crate::resources::test_support::{assert_has, errors, plan_create, plan_update};

fn resource() -> NomadClientStatic {
    NomadClientStatic::new(Arc::new(ProviderData::default()))
}

/// A configuration as Terraform sends it: every attribute and block of the schema, null
/// (no blocks) unless set.
fn config(pairs: &[(&str, Value)]) -> Value {
    Value::object(pairs).conform(&schema_block())
}

fn client(pairs: &[(&str, Value)]) -> Value {
    Value::object(pairs)
}

fn servers(s: &[&str]) -> (&'static str, Value) {
    (
        "nomad_servers",
        Value::List(s.iter().map(|x| Value::string(*x)).collect()),
    )
}

fn clients(cs: Vec<Value>) -> (&'static str, Value) {
    (CLIENT, Value::List(cs))
}

/// A valid configuration of two clients, the second on its own port and file.
fn two_clients() -> Value {
    moved_to(&["nomad-1.internal:4647"])
}

/// [`two_clients`], moved to `to`.
fn moved_to(to: &[&str]) -> Value {
    config(&[
        servers(to),
        clients(vec![
            client(&[("host", Value::string("a.internal"))]),
            client(&[
                ("host", Value::string("b.internal")),
                ("port", Value::int(2222)),
                ("config_path", Value::string("/etc/nomad.d/client.hcl")),
                ("node_name", Value::string("b")),
            ]),
        ]),
    ])
}

/// A state after a roll that finished every client of `c`.
async fn rolled(c: &Value) -> Value {
    let (planned, diags) = plan_create(&resource(), c).await;
    assert!(!diags.has_errors(), "{diags}");
    let mut f = Fleet::decode(&planned).unwrap();
    f.id = Known::Value(f.keys()[0].clone());
    f.client_status = Known::Value(f.keys().into_iter().map(|k| (k, OK.into())).collect());
    f.previous_servers = Known::Value(
        f.keys()
            .into_iter()
            .map(|k| (k, vec!["old:4647".to_string()]))
            .collect(),
    );
    f.to_state().conform(&schema_block())
}

#[test]
fn service_names_are_checked() {
    assert!(check_service("nomad").is_ok());
    assert!(check_service("nomad-client@1.service").is_ok());
    for bad in ["", "-x", "a b", "a;b", "$(x)", "a/b"] {
        assert!(check_service(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn restart_commands_are_fixed() {
    assert_eq!(Restart::parse("systemctl"), Some(Restart::Systemctl));
    assert_eq!(Restart::parse("reboot"), None);
}

#[test]
fn each_default_is_stated_once_and_the_client_port_is_not_computed() {
    let b = schema_block();
    let desc = |n: &str| b.attribute(n).unwrap().description.clone();
    for (name, default) in [
        ("config_path", "Default `/etc/nomad/config.hcl`."),
        ("restart", "Default `systemctl`."),
        ("service_name", "Default `nomad`."),
        ("batch_size", "Default `1`."),
        ("ready_timeout", "Default `5m`."),
        ("restore_on_destroy", "Default `true`."),
        ("config_root", "Default `/`."),
    ] {
        assert_eq!(desc(name).matches(default).count(), 1, "{name}");
        let a = b.attribute(name).unwrap();
        assert!(a.optional && a.computed, "{name}");
    }
    assert!(desc("builds_timeout").contains("(default `30m`)"));
    assert!(!desc("builds_timeout").contains("Default `30m`"));
    let nb = &b.blocks[0];
    assert_eq!(
        (nb.name.as_str(), nb.nesting, nb.min_items, nb.max_items),
        (CLIENT, Nesting::List, 1, 0)
    );
    let port = nb.block.attribute("port").unwrap();
    assert!(port.optional && !port.computed);
    assert_eq!(port.description, "SSH port. Default `22`.");
    let token = b.attribute("nomad_token_wo").unwrap();
    assert!(token.write_only && token.sensitive && token.optional);
}

#[test]
fn client_blocks_decode_into_ssh_targets() {
    let f = Fleet::of_record(&two_clients()).unwrap();
    assert_eq!(f.keys(), ["a.internal:22", "b.internal:2222"]);
    assert_eq!(f.client.0[0].port, None, "not set: 22 when used");
    let base = SshConfig {
        host: "services.internal".into(),
        port: 22,
        user: "ubuntu".into(),
        auth: ssh::SshAuth::Agent,
        host_key: HostKeyPolicy::Insecure,
        sudo: true,
        timeout: std::time::Duration::from_secs(5),
    };
    let cs = super::clients(&f, &base, None).unwrap();
    let got: Vec<(&str, u16, &str, &str, Option<&str>)> = cs
        .iter()
        .map(|c| {
            (
                c.key.as_str(),
                c.ssh.port,
                c.ssh.user.as_str(),
                c.config_path.as_str(),
                c.node_name.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a.internal:22", 22, "ubuntu", DEFAULT_CONFIG, None),
            (
                "b.internal:2222",
                2222,
                "ubuntu",
                "/etc/nomad.d/client.hcl",
                Some("b")
            ),
        ]
    );
    // A provider that pins the Services machine's key needs each client's own.
    let pinned = SshConfig {
        host_key: HostKeyPolicy::Pinned(vec![]),
        ..base
    };
    let e = super::clients(&f, &pinned, None).err().unwrap();
    assert_eq!(
        errors(&e),
        ["No host key for the client @ client[0].host_key"]
    );
}

#[test]
fn a_record_from_an_older_provider_reads_with_the_defaults() {
    let mut v = two_clients();
    if let Value::Map(m) = &mut v {
        m.remove("builds_timeout");
        m.remove("embedded_nomad_endpoint");
    }
    let f = Fleet::of_record(&v).unwrap();
    assert_eq!(f.builds_timeout, BUILDS_TIMEOUT);
    assert_eq!(
        f.embedded_nomad_endpoint,
        crate::resources::cutover::DEFAULT_EMBEDDED_NOMAD
    );
    assert_eq!(f.stop_settings().root, "/");
}

#[test]
fn checks_name_the_client_block_and_attribute() {
    let r = resource();
    let c = config(&[
        servers(&[]),
        ("batch_size", Value::int(0)),
        ("restart", Value::string("reboot")),
        ("nomad_endpoint", Value::string("ftp://nomad")),
        clients(vec![
            client(&[("host", Value::string("a.internal"))]),
            client(&[
                ("host", Value::string("b.internal")),
                ("port", Value::int(0)),
                ("config_path", Value::string("etc/nomad.hcl")),
                ("host_key", Value::string("not a key")),
            ]),
            client(&[
                ("host", Value::string("a.internal")),
                ("port", Value::int(22)),
            ]),
            client(&[("host", Value::string("not a host!"))]),
        ]),
    ]);
    let d = r.validate(&c);
    assert_has(
        &d,
        &[
            "No Nomad servers @ nomad_servers",
            "Invalid batch size @ batch_size",
            "Invalid restart @ restart",
            "Invalid Nomad endpoint @ nomad_endpoint",
            "Invalid port @ client[1].port",
            "Invalid path @ client[1].config_path",
            "Invalid host key @ client[1].host_key",
            "Duplicate client @ client[2].host",
            "Invalid host @ client[3].host",
        ],
    );
    assert_eq!(errors(&d).len(), 9, "{:#?}", errors(&d));
    assert!(r.validate(&two_clients()).is_empty());
}

#[test]
fn a_value_not_known_yet_leaves_the_other_checks_running() {
    let r = resource();
    let c = config(&[
        (
            "nomad_servers",
            Value::List(vec![Value::Unknown, Value::string("bad server!")]),
        ),
        clients(vec![
            client(&[
                ("host", Value::string("a.internal")),
                ("host_key", Value::Unknown),
            ]),
            client(&[("host", Value::string("a.internal"))]),
            client(&[
                ("host", Value::string("c.internal")),
                ("port", Value::Unknown),
            ]),
        ]),
    ]);
    let d = r.validate(&c);
    assert_eq!(
        errors(&d),
        ["Invalid Nomad server @ nomad_servers[1]"],
        "no duplicate named while a port is unknown"
    );
    let c = config(&[
        servers(&["n:4647"]),
        clients(vec![
            client(&[
                ("host", Value::string("a.internal")),
                ("host_key", Value::Unknown),
            ]),
            client(&[("host", Value::string("a.internal"))]),
        ]),
    ]);
    assert_eq!(
        errors(&r.validate(&c)),
        ["Duplicate client @ client[1].host"]
    );
}

#[tokio::test]
async fn a_create_plans_the_declared_defaults_and_leaves_the_client_blocks_alone() {
    let c = two_clients();
    let (planned, diags) = plan_create(&resource(), &c).await;
    assert!(!diags.has_errors(), "{diags}");
    let f = Fleet::decode(&planned).unwrap();
    assert_eq!(
        (
            f.config_path.as_str(),
            f.restart.as_str(),
            f.service_name.as_str(),
            f.batch_size,
            f.ready_timeout.as_str(),
            f.restore_on_destroy,
            f.config_root.as_str(),
            f.builds_timeout.as_str(),
        ),
        (
            DEFAULT_CONFIG,
            "systemctl",
            "nomad",
            1,
            "5m",
            true,
            "/",
            "30m"
        )
    );
    assert_eq!(
        (f.id, f.client_status, f.previous_servers),
        (Known::Unknown, Known::Unknown, Known::Unknown)
    );
    assert_eq!(
        f.client.0[0].port, None,
        "a client's port has no planned default"
    );
    assert_eq!(
        FleetAtPlan::decode(&c).unwrap().client.known().map(|b| b.0),
        Some(f.client.0),
        "the blocks as configured"
    );
}

#[tokio::test]
async fn an_update_rolls_only_what_changed_or_is_not_done() {
    let r = resource();
    let c = two_clients();
    let state = rolled(&c).await;
    let before = Fleet::decode(&state).unwrap();
    let (planned, _) = plan_update(&r, &state, &c).await;
    let p = Fleet::decode(&planned).unwrap();
    assert_eq!(p.id, before.id);
    assert_eq!(p.client_status, before.client_status, "nothing to roll");
    assert_eq!(p.previous_servers, before.previous_servers);

    let moved = moved_to(&["n2:4647"]);
    let (planned, _) = plan_update(&r, &state, &moved).await;
    let p = Fleet::decode(&planned).unwrap();
    assert_eq!(
        (p.client_status, p.previous_servers),
        (Known::Unknown, Known::Unknown)
    );
    assert_eq!(p.id, before.id, "the id stays");

    let mut pending = Fleet::decode(&state).unwrap();
    pending.client_status = Known::Value(
        [(
            "a.internal:22".to_string(),
            "pending: unreachable".to_string(),
        )]
        .into(),
    );
    let (planned, _) = plan_update(&r, &pending.to_state(), &c).await;
    assert_eq!(
        Fleet::decode(&planned).unwrap().client_status,
        Known::Unknown,
        "a client not done rolls again"
    );
}
