//! Every resource, through the real gRPC service's ValidateResourceConfig and
//! PlanResourceChange, with random and hostile configurations of the right types:
//! nulls inside lists, unknowns, huge and negative numbers, long and multi-byte and
//! control-character strings, empty strings. No call may panic or hang, and every error
//! validation reports names an attribute. The case count is fixed; proptest prints the
//! failing input and its seed.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tonic::Request;

use crate::plugin::grpc::ProviderService;
use crate::plugin::schema::{Block, Type};
use crate::plugin::tfplugin6 as pb;
use crate::plugin::value::Number;
use crate::plugin::{Provider, Value};
use crate::resources::model::Known;
use pb::provider_server::Provider as _;

/// Values that pass some checks, so that planning is reached too.
const PLAUSIBLE: [&str; 16] = [
    "127.0.0.1",
    "db.internal",
    "circle",
    "circle_ghe",
    "/etc/circleconfig/shared/fuzz",
    "30s",
    "72h",
    "https://vault.internal:8200",
    "transit",
    "retain",
    "drop",
    "slanger",
    "terminate",
    "10.0.0.1:4647",
    "127.0.0.1:27017",
    "aes256-gcm96",
];

fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        8 => prop::sample::select(&PLAUSIBLE[..]).prop_map(str::to_string),
        1 => Just(String::new()),
        1 => "[a-z0-9.:/_-]{1,20}",
        1 => "[\\PC]{0,40}",
        1 => "[\\x00-\\x1f\"'$`\\\\{}\\[\\]#]{1,10}",
        1 => Just("9".repeat(400)),
        1 => Just("99999999999999999999999h".into()),
        1 => Just("-1s".into()),
        1 => Just("https://h:443".into()),
        1 => Just("mongodb://u:p@h:1/d?x=%zz".into()),
        1 => Just("ä😀\u{202e}\u{0}".into()),
    ]
    .boxed()
}

fn hostile_value(t: &Type, depth: u32) -> BoxedStrategy<Value> {
    let leaf = match t {
        Type::String | Type::Dynamic => hostile_string().prop_map(Value::string).boxed(),
        Type::Number => prop_oneof![
            2 => any::<i64>().prop_map(Value::int),
            1 => Just(Value::int(0)),
            1 => Just(Value::int(65536)),
            1 => Just(Value::int(-1)),
            4 => prop::sample::select(&[1i64, 2, 5432, 6379, 27017][..]).prop_map(Value::int),
        ]
        .boxed(),
        Type::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        Type::List(inner) | Type::Set(inner) if depth < 2 => {
            let item = prop_oneof![
                3 => hostile_value(inner, depth + 1),
                1 => Just(Value::Null),
                1 => Just(Value::Unknown),
            ];
            prop::collection::vec(item, 0..6)
                .prop_map(Value::List)
                .boxed()
        }
        Type::Map(inner) if depth < 2 => {
            let item = prop_oneof![3 => hostile_value(inner, depth + 1), 1 => Just(Value::Null)];
            prop::collection::btree_map(hostile_string(), item, 0..4)
                .prop_map(Value::Map)
                .boxed()
        }
        _ => Just(Value::Null).boxed(),
    };
    prop_oneof![8 => leaf, 2 => Just(Value::Null), 1 => Just(Value::Unknown)].boxed()
}

/// A configuration for `block`: every settable attribute random, computed-only null.
fn config_for(block: &Block) -> BoxedStrategy<Value> {
    let mut parts: Vec<BoxedStrategy<(String, Value)>> = Vec::new();
    for a in &block.attributes {
        let name = a.name.clone();
        if a.required || a.optional {
            parts.push(
                hostile_value(&a.ty, 0)
                    .prop_map(move |v| (name.clone(), v))
                    .boxed(),
            );
        } else {
            parts.push(Just((name, Value::Null)).boxed());
        }
    }
    parts
        .prop_map(|kv| {
            let mut v = Value::Null;
            for (k, x) in kv {
                v.set(&k, x);
            }
            v
        })
        .boxed()
}

fn dv(v: &Value) -> Option<pb::DynamicValue> {
    Some(pb::DynamicValue {
        msgpack: v.to_msgpack(),
        json: vec![],
    })
}

#[test]
fn hostile_configurations_never_panic_and_errors_name_attributes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let provider = Arc::new(super::CircleCiProvider::new());
    let resources: Vec<_> = provider
        .resources()
        .iter()
        .map(|r| (r.type_name(), r.schema().block))
        .collect();
    let svc = Arc::new(ProviderService::new(provider));
    // Configured with nothing reachable: plans must still answer.
    let pc = super::test_config::config(|c| {
        c.services_host =
            super::test_config::block(|h: &mut super::services_host::ServicesHostBlock| {
                h.host = super::test_config::s("127.0.0.1");
                h.port = Known::Value(Number::Int(1));
                h.insecure_ignore_host_key = Known::Value(true);
            })
    });
    rt.block_on(
        svc.configure_provider(Request::new(pb::configure_provider::Request {
            config: dv(&pc),
            client_capabilities: Some(pb::ClientCapabilities {
                deferral_allowed: false,
                write_only_attributes_allowed: true,
            }),
            ..Default::default()
        })),
    )
    .unwrap();
    for (type_name, block) in resources {
        // A fixed seed (FUZZ_SEED overrides it), printed with any failure, so a failure
        // is reproduced by running the test again.
        let seed: u64 = std::env::var("FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x00c1_7c1e_2017_u64);
        let config = Config {
            cases: 128,
            failure_persistence: None,
            ..Config::default()
        };
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let rng = proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &bytes,
        );
        let mut runner = TestRunner::new_with_rng(config, rng);
        let svc = svc.clone();
        let rt = &rt;
        runner
            .run(&config_for(&block), |cfg| {
                let validated = rt.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        svc.validate_resource_config(Request::new(
                            pb::validate_resource_config::Request {
                                type_name: type_name.to_string(),
                                config: dv(&cfg),
                            },
                        )),
                    )
                    .await
                });
                let v = validated.map_err(|_| TestCaseError::fail("validate hung"))?;
                let v = v
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .into_inner();
                for d in &v.diagnostics {
                    if d.severity == pb::diagnostic::Severity::Error as i32 {
                        // A diagnostic about a secret points at its block and names
                        // the attribute in words.
                        prop_assert!(
                            d.attribute.is_some() || d.detail.contains("(This is about "),
                            "{type_name}: error without an attribute: {} / {}",
                            d.summary,
                            d.detail
                        );
                    }
                }
                // Plan only what validation accepts, as Terraform does.
                if v.diagnostics
                    .iter()
                    .any(|d| d.severity == pb::diagnostic::Severity::Error as i32)
                {
                    return Ok(());
                }
                let planned = rt.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(20),
                        svc.plan_resource_change(Request::new(pb::plan_resource_change::Request {
                            type_name: type_name.to_string(),
                            prior_state: dv(&Value::Null),
                            proposed_new_state: dv(&cfg),
                            config: dv(&cfg),
                            client_capabilities: Some(pb::ClientCapabilities {
                                deferral_allowed: false,
                                write_only_attributes_allowed: true,
                            }),
                            ..Default::default()
                        })),
                    )
                    .await
                });
                prop_assert!(planned.is_ok(), "{type_name}: plan hung");
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{type_name} (FUZZ_SEED={seed}): {e}"));
    }
}
