//! The file resources' validation and plan with no server running: what a
//! configuration is refused for (and on which attribute), the defaults and computed
//! values a plan fills in, and what replaces the resource.

use std::sync::Arc;

use super::ConfigFile;
use crate::plugin::{AttrPath, Diagnostics, PlanRequest, Resource, Value};
use crate::provider::ProviderData;
use crate::resources::test_support::{assert_has, config, errors, plan_create, plan_update};
use crate::resources::{
    external_mongo::ExternalMongo, external_nomad::ExternalNomad,
    external_rabbitmq::ExternalRabbitmq, external_redis::ExternalRedis,
    postgres_databases::PostgresDatabases, vault_transit_client::VaultTransitClient,
};

/// The key the test Services machine holds for the runbook's default paths.
const KEY: [u8; 32] = [9; 32];

/// A provider whose Services machine holds a file digest key (as it does once a file
/// holding a secret was written), known to this process.
fn data() -> Arc<ProviderData> {
    let d = ProviderData::default();
    d.digest_keys()
        .seed(&format!("/{}", super::file_digest::KEY_FILE), &KEY);
    Arc::new(d)
}

/// A provider whose Services machine holds no file digest key yet (none is known).
fn data_without_key() -> Arc<ProviderData> {
    Arc::new(ProviderData::default())
}

fn redis() -> ConfigFile<ExternalRedis> {
    ConfigFile::new(ExternalRedis::new(data()), data())
}

/// What an apply of `planned` stores, near enough for a plan: unknowns null,
/// `file_sha256` the keyed digest of `content` under [`KEY`].
async fn applied(planned: &Value, content: &str) -> Value {
    let mut state = planned.clone();
    if let Value::Map(m) = &mut state {
        for v in m.values_mut() {
            if v.is_unknown() {
                *v = Value::Null;
            }
        }
    }
    let keys = super::file_digest::tests::MemoryKeys::with(&KEY);
    let digest = super::file_digest::digest(super::Kind::Secret, content.as_bytes(), None, &keys)
        .await
        .unwrap();
    state.set("file_sha256", Value::string(digest));
    state
}

#[test]
fn redis_bad_input_is_refused_on_each_attribute() {
    let r = redis();
    let c = config(
        &r,
        &[
            ("host", Value::string("not a host!")),
            ("port", Value::int(70000)),
            ("purpose", Value::string("cache")),
            ("config_path", Value::string("relative/path")),
        ],
    );
    let d = r.validate(&c);
    assert_has(
        &d,
        &[
            "Invalid host @ host",
            "Invalid port @ port",
            "Invalid purpose @ purpose",
            "Invalid path @ config_path",
        ],
    );
    assert_eq!(d.0.len(), 4, "{:#?}", errors(&d));
}

#[tokio::test]
async fn redis_plan_fills_defaults_and_the_file_digest() {
    let r = redis();
    let c = config(&r, &[("host", Value::string("redis.internal"))]);
    assert!(r.validate(&c).is_empty());
    let (planned, diags) = plan_create(&r, &c).await;
    assert!(!diags.has_errors(), "{diags}");
    assert_eq!(planned.get("port"), &Value::int(6379));
    assert_eq!(planned.get("purpose"), &Value::string("shared"));
    assert_eq!(
        planned.get("config_path"),
        &Value::string("/etc/circleconfig/shared/redis")
    );
    assert_eq!(planned.get("id"), planned.get("config_path"));
    assert_eq!(planned.get("verify"), &Value::Bool(true));
    let content = crate::circleci::redis::render(
        "redis.internal",
        6379,
        crate::circleci::redis::Purpose::Shared,
    )
    .unwrap();
    assert_eq!(
        planned.get("file_sha256"),
        &Value::string(crate::resources::file_sha256(content.as_bytes())),
        "the plan knows the file's digest"
    );
    // No Services machine configured: the version is left to the apply's check.
    assert_eq!(planned.get("server_version"), &Value::Unknown);
}

#[tokio::test]
async fn redis_slanger_path_follows_purpose_and_a_change_of_purpose_replaces() {
    let r = redis();
    let c = config(
        &r,
        &[
            ("host", Value::string("redis.internal")),
            ("purpose", Value::string("slanger")),
        ],
    );
    let (planned, _) = plan_create(&r, &c).await;
    assert_eq!(
        planned.get("config_path"),
        &Value::string("/etc/circleconfig/slanger/customizations")
    );

    let prior = planned;
    let c2 = config(
        &r,
        &[
            ("host", Value::string("redis.internal")),
            ("purpose", Value::string("shared")),
        ],
    );
    let mut next = c2.clone();
    for a in [
        "id",
        "verify",
        "file_sha256",
        "drift",
        "server_version",
        "port",
    ] {
        next.set(a, prior.get(a).clone());
    }
    next.set("config_path", Value::Unknown);
    let mut diags = Diagnostics::new();
    let req = PlanRequest {
        prior: &prior,
        config: &c2,
    };
    let replace = r.plan(&req, &mut next, &mut diags).await;
    assert_eq!(
        replace,
        [AttrPath::root("config_path"), AttrPath::root("purpose")]
    );
}

#[tokio::test]
async fn an_unknown_host_leaves_the_digest_unknown() {
    let r = redis();
    let c = config(&r, &[("host", Value::Unknown)]);
    assert!(
        r.validate(&c).is_empty(),
        "unknown values are checked later"
    );
    let (planned, diags) = plan_create(&r, &c).await;
    assert!(!diags.has_errors(), "{diags}");
    assert_eq!(planned.get("file_sha256"), &Value::Unknown);
    assert_eq!(planned.get("port"), &Value::int(6379));
}

#[tokio::test]
async fn rabbitmq_and_nomad_bad_input_and_defaults() {
    let mq = ConfigFile::new(ExternalRabbitmq::new(data()), data());
    let c = config(
        &mq,
        &[
            ("host", Value::string("bad host")),
            ("username", Value::string("circle")),
            ("password", Value::string("a")),
            ("password_wo", Value::string("b")),
        ],
    );
    assert_has(
        &mq.validate(&c),
        &["Invalid host @ host", "Conflicting passwords @ password_wo"],
    );
    // A line break: the Services machine's tools read a password as one line.
    for pw in ["two\nlines", "cr\r"] {
        let c = config(
            &mq,
            &[
                ("host", Value::string("mq.internal")),
                ("username", Value::string("circle")),
                ("password_wo", Value::string(pw)),
            ],
        );
        assert_has(&mq.validate(&c), &["Invalid password @ password_wo"]);
    }
    let tls = config(
        &mq,
        &[
            ("host", Value::string("mq.internal")),
            ("username", Value::string("circle")),
            ("password_wo", Value::string("pw")),
            ("tls", Value::Bool(true)),
        ],
    );
    assert_has(
        &mq.validate(&tls),
        &["CircleCI Server 2.17 cannot use TLS to RabbitMQ @ tls"],
    );

    let ok = config(
        &mq,
        &[
            ("host", Value::string("mq.internal")),
            ("username", Value::string("circle")),
            ("password_wo", Value::string("pw")),
        ],
    );
    assert!(mq.validate(&ok).is_empty());
    let (planned, diags) = plan_create(&mq, &ok).await;
    assert!(!diags.has_errors(), "{diags}");
    assert_eq!(planned.get("port"), &Value::int(5672));
    assert_eq!(planned.get("vhost"), &Value::string("/"));
    assert_eq!(planned.get("tls"), &Value::Bool(false));
    assert_eq!(planned.get("password_wo"), &Value::Null);
    let d = planned.get("file_sha256").as_str().unwrap_or_default();
    assert!(
        d.starts_with("hmac-sha256$"),
        "a file with a password gets a keyed digest, known at plan once the key is: {d}"
    );
    let first = ConfigFile::new(
        ExternalRabbitmq::new(data_without_key()),
        data_without_key(),
    );
    let (planned_first, diags) = plan_create(&first, &ok).await;
    assert!(!diags.has_errors(), "{diags}");
    assert_eq!(
        planned_first.get("file_sha256"),
        &Value::Unknown,
        "no key on the Services machine yet: the apply makes it"
    );
    let content = crate::circleci::rabbitmq::render("mq.internal", 5672, "circle", "pw").unwrap();
    let state = applied(&planned, &content).await;
    let (same, replace) = plan_update(&mq, &state, &ok).await;
    assert!(replace.is_empty());
    assert_eq!(
        same.get("file_sha256"),
        state.get("file_sha256"),
        "nothing changed: the same digest, so no restart is planned"
    );
    let mut later = ok.clone();
    later.set("tls", Value::Unknown);
    let (p, _) = plan_update(&mq, &state, &later).await;
    assert_eq!(
        p.get("port"),
        &Value::Unknown,
        "the default port follows tls"
    );
    let mut moved = ok.clone();
    moved.set("host", Value::string("mq2.internal"));
    let (next, _) = plan_update(&mq, &state, &moved).await;
    let d = next.get("file_sha256").as_str().unwrap_or_default();
    assert!(
        d.starts_with("hmac-sha256$") && Some(d) != state.get("file_sha256").as_str(),
        "a new host: a new digest under the same key: {d}"
    );

    let nomad = ConfigFile::new(ExternalNomad::new(data()), data());
    let c = config(
        &nomad,
        &[("endpoint", Value::string("nomad.internal:4646"))],
    );
    assert_has(&nomad.validate(&c), &["Invalid endpoint @ endpoint"]);
    let c = config(
        &nomad,
        &[("endpoint", Value::string("https://nomad.internal:4646"))],
    );
    let (planned, _) = plan_create(&nomad, &c).await;
    assert_eq!(planned.get("leader"), &Value::Unknown, "the apply reads it");
    assert!(planned.get("file_sha256").as_str().is_some());
}

#[test]
fn postgres_bad_input_is_refused_on_each_attribute() {
    let r = ConfigFile::new(PostgresDatabases::new(data()), data());
    let long = "d".repeat(64);
    let c = config(
        &r,
        &[
            ("host", Value::string("127.0.0.1")),
            ("password", Value::string("a")),
            ("password_wo", Value::string("b")),
            (
                "databases",
                Value::List(vec![
                    Value::string("ok"),
                    Value::string(&long),
                    Value::string("ok"),
                ]),
            ),
            (
                "extensions",
                Value::object(&[
                    ("*", Value::List(vec![Value::string("uuid-osspl")])),
                    ("nope", Value::List(vec![Value::string("pgcrypto")])),
                ]),
            ),
            ("deletion_policy", Value::string("maybe")),
        ],
    );
    assert_has(
        &r.validate(&c),
        &[
            "Conflicting passwords @ password_wo",
            "Invalid database name @ databases[1]",
            "Duplicate database @ databases[2]",
            "No such extension @ extensions[\"*\"]",
            "Extensions for an unmanaged database @ extensions[\"nope\"]",
            "Invalid deletion_policy @ deletion_policy",
        ],
    );
}

#[tokio::test]
async fn postgres_plan_fills_the_runbooks_defaults() {
    let r = ConfigFile::new(PostgresDatabases::new(data()), data());
    let c = config(
        &r,
        &[
            ("host", Value::string("pg.internal")),
            ("password_wo", Value::string("pw")),
        ],
    );
    let (planned, diags) = plan_create(&r, &c).await;
    assert!(!diags.has_errors(), "{diags}");
    assert_eq!(planned.get("port"), &Value::int(5432));
    assert_eq!(planned.get("user"), &Value::string("circle"));
    assert_eq!(
        planned.get("databases").as_list().map(<[Value]>::len),
        Some(9)
    );
    assert_eq!(planned.get("deletion_policy"), &Value::string("retain"));
    assert_eq!(planned.get("adopted"), &Value::Unknown);

    let content = crate::circleci::postgres::render("pg.internal", 5432, "circle", "pw").unwrap();
    let state = applied(&planned, &content).await;
    let mut more = c.clone();
    more.set("databases", Value::List(vec![Value::string("circle")]));
    let (next, replace) = plan_update(&r, &state, &more).await;
    assert!(replace.is_empty());
    assert_eq!(next.get("adopted"), &Value::Unknown, "the apply finds out");
    assert_eq!(
        next.get("file_sha256"),
        state.get("file_sha256"),
        "the file does not change with the databases, nor does its digest"
    );
}

#[test]
fn vault_bad_input_is_refused_on_each_attribute() {
    let r = ConfigFile::new(VaultTransitClient::new(data()), data());
    let c = config(
        &r,
        &[
            ("key_name", Value::string("has space")),
            ("key_type", Value::string("rsa-2048")),
            ("token_period", Value::string("1h")),
            ("token_renew_before", Value::string("2h")),
            ("address_for_services", Value::string("vault.internal:8200")),
        ],
    );
    assert_has(
        &r.validate(&c),
        &[
            "Invalid name @ key_name",
            "Invalid key_type @ key_type",
            "Renewal window too long @ token_renew_before",
            "Invalid address @ address_for_services",
        ],
    );
}

#[test]
fn mongo_bad_input_is_refused_on_each_attribute() {
    let r = ConfigFile::new(ExternalMongo::new(data()), data());
    let c = config(
        &r,
        &[
            ("hosts", Value::List(vec![Value::string("mongo.internal")])),
            ("username", Value::string("")),
            ("password_wo", Value::string("pw")),
            (
                "databases",
                Value::List(vec![Value::string("a/b"), Value::string("c")]),
            ),
            ("services_ca_bundle", Value::string("certs.pem")),
        ],
    );
    assert_has(
        &r.validate(&c),
        &[
            "Invalid username @ username",
            "Four databases expected @ databases",
            "Invalid database name @ databases[0]",
            "Invalid path @ services_ca_bundle",
        ],
    );
}

/// The digest depends on what goes into the file only: an unknown CA file (made by the
/// same apply) leaves Nomad's known, and with it every restart trigger that names it.
#[tokio::test]
async fn an_unknown_setting_outside_the_file_leaves_the_digest_known() {
    let nomad = ConfigFile::new(ExternalNomad::new(data()), data());
    let c = config(
        &nomad,
        &[
            ("endpoint", Value::string("https://nomad.internal:4646")),
            ("ca_cert_file", Value::Unknown),
        ],
    );
    let (planned, _) = plan_create(&nomad, &c).await;
    assert!(planned.get("file_sha256").as_str().is_some(), "{planned:?}");

    let mongo = ConfigFile::new(ExternalMongo::new(data()), data());
    let c = config(
        &mongo,
        &[
            (
                "hosts",
                Value::List(vec![Value::string("mongo.internal:27017")]),
            ),
            ("password_wo", Value::string("pw")),
            (
                "password_wo_version",
                Value::Number(crate::plugin::value::Number::Float(1.5)),
            ),
        ],
    );
    assert!(mongo.validate(&c).is_empty(), "any number is a version");
    let (planned, diags) = plan_create(&mongo, &c).await;
    assert!(!diags.has_errors(), "{diags}");
    let block = {
        let dbs: Vec<&str> = crate::circleci::mongo::DEFAULT_DATABASES.to_vec();
        let hosts = vec!["mongo.internal:27017".to_string()];
        let parts = crate::circleci::mongo::UriParts {
            hosts: &hosts,
            username: "circle",
            password: "pw",
            auth_source: "admin",
            replica_set: None,
            tls: true,
            options: &Default::default(),
        };
        let dbs: Vec<String> = dbs.iter().map(|d| d.to_string()).collect();
        crate::circleci::mongo::render_block(&parts, &dbs).unwrap()
    };
    let state = applied(&planned, &block).await;
    let mut later = c.clone();
    later.set("services_ca_bundle", Value::Unknown);
    let (next, _) = plan_update(&mongo, &state, &later).await;
    assert_eq!(
        next.get("file_sha256"),
        state.get("file_sha256"),
        "the CA bundle's path is not in the block"
    );
}

#[tokio::test]
async fn vault_plan_names_the_policy_after_the_key_and_plans_a_new_token() {
    let r = ConfigFile::new(VaultTransitClient::new(data()), data());
    let c = config(
        &r,
        &[
            ("key_name", Value::string("ctx")),
            (
                "address_for_services",
                Value::string("https://vault.internal:8200"),
            ),
        ],
    );
    assert!(r.validate(&c).is_empty(), "{:#?}", errors(&r.validate(&c)));
    let (planned, diags) = plan_create(&r, &c).await;
    assert!(!diags.has_errors(), "{diags}");
    assert_eq!(planned.get("policy_name"), &Value::string("ctx_policy"));
    assert_eq!(planned.get("transit_mount"), &Value::string("transit"));
    let policy = planned.get("policy").as_str().unwrap_or_default();
    assert!(policy.contains("transit/encrypt/ctx"), "{policy}");
    assert_eq!(planned.get("token_accessor"), &Value::Unknown);
    assert_eq!(planned.get("file_sha256"), &Value::Unknown, "a new token");

    // Applied: a token exists. A plan with nothing changed makes none.
    let mut state = planned.clone();
    for (a, v) in [
        ("token_accessor", Value::string("acc-1")),
        ("token_expire_time", Value::string("")),
        (
            "file_sha256",
            Value::string("pbkdf2-sha256$1$c2FsdA$ZGlnZXN0"),
        ),
        ("server_version", Value::string("1.0.0")),
    ] {
        state.set(a, v);
    }
    let (next, replace) = plan_update(&r, &state, &c).await;
    assert!(replace.is_empty());
    assert_eq!(next.get("token_accessor"), &Value::string("acc-1"));
    assert_eq!(next.get("file_sha256"), state.get("file_sha256"));

    let mut other = c.clone();
    other.set("key_name", Value::string("ctx2"));
    let (_, replace) = plan_update(&r, &state, &other).await;
    assert_eq!(
        replace,
        [AttrPath::root("key_name"), AttrPath::root("policy_name")],
        "a new key and its policy: a new pairing"
    );
}
