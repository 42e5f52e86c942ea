//! The protocol service against a test resource: write-only nulling, cancellation,
//! state upgrade, schema.

use super::*;
use crate::plugin::diag::AttrPath;
use crate::plugin::schema::Type;
use crate::plugin::schema::{Attribute, Block};
use crate::plugin::Applied;
use async_trait::async_trait;
use pb::provider_server::Provider as _;

/// A resource with a write-only secret whose create waits until cancelled.
struct Slow;

#[async_trait]
impl Resource for Slow {
    fn type_name(&self) -> &'static str {
        "test_slow"
    }
    fn schema(&self) -> Schema {
        Schema::new(
            1,
            Block::new()
                .attr(Attribute::new("id", Type::String).computed())
                .attr(Attribute::new("name", Type::String).required())
                .attr(
                    Attribute::new("secret_wo", Type::String)
                        .optional()
                        .write_only(),
                ),
        )
    }
    async fn plan(&self, _: &PlanRequest<'_>, _: &mut Value, _: &mut Diagnostics) -> Vec<AttrPath> {
        vec![]
    }
    async fn create(&self, planned: &Value, config: &Value) -> Applied {
        let mut v = planned.clone();
        v.set("id", Value::string("x"));
        if config.get("secret_wo").as_str() == Some("wait") {
            // Something was made; then the wait for the rest ends at the stop request,
            // and the state records what exists.
            crate::plugin::stop::signalled().await;
            v.set("name", Value::string("partial"));
            return Applied {
                state: Some(v),
                diags: Diagnostic::error("Stopped", "stopped after creating x").into(),
            };
        }
        // Even if a resource copied the secret, it must not reach the state.
        v.set("secret_wo", config.get("secret_wo").clone());
        Applied::from_result(Ok(v))
    }
    async fn read(&self, s: &Value) -> Result<Option<Value>, Diagnostics> {
        Ok(Some(s.clone()))
    }
    async fn update(&self, _: &Value, p: &Value, _: &Value) -> Applied {
        Applied::from_result(Ok(p.clone()))
    }
    async fn delete(&self, _: &Value) -> Applied {
        Applied::deleted(Diagnostics::new())
    }
    async fn import(&self, _: &str) -> Result<Value, Diagnostics> {
        Err(Diagnostic::error("no", "no").into())
    }
}

struct P;

#[async_trait]
impl Provider for P {
    fn schema(&self) -> Schema {
        Schema::default()
    }
    fn resources(&self) -> Vec<Arc<dyn Resource>> {
        vec![Arc::new(Slow)]
    }
    async fn configure(&self, _: &Value, _: &ClientInfo) -> Diagnostics {
        Diagnostics::new()
    }
}

fn dv(v: &Value) -> Option<pb::DynamicValue> {
    encode(v)
}

fn svc() -> Arc<ProviderService> {
    Arc::new(ProviderService::new(Arc::new(P)))
}

fn caps(wo: bool) -> Option<pb::ClientCapabilities> {
    Some(pb::ClientCapabilities {
        deferral_allowed: false,
        write_only_attributes_allowed: wo,
    })
}

/// Plans creating `cfg` (proposed = config).
async fn plan_create(
    s: &ProviderService,
    cfg: &Value,
    wo: bool,
) -> pb::plan_resource_change::Response {
    s.plan_resource_change(Request::new(pb::plan_resource_change::Request {
        type_name: "test_slow".into(),
        prior_state: dv(&Value::Null),
        proposed_new_state: dv(cfg),
        config: dv(cfg),
        client_capabilities: caps(wo),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner()
}

async fn apply_create(
    s: &ProviderService,
    planned: Value,
    cfg: Value,
) -> pb::apply_resource_change::Response {
    s.apply_resource_change(Request::new(pb::apply_resource_change::Request {
        type_name: "test_slow".into(),
        prior_state: dv(&Value::Null),
        planned_state: dv(&planned),
        config: dv(&cfg),
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn plan_nulls_write_only_and_marks_computed_unknown() {
    let s = svc();
    let cfg = Value::object(&[
        ("id", Value::Null),
        ("name", Value::string("n")),
        ("secret_wo", Value::string("s3cret")),
    ]);
    let r = plan_create(&s, &cfg, true).await;
    assert!(r.diagnostics.is_empty(), "{:?}", r.diagnostics);
    let planned = Value::from_msgpack(&r.planned_state.unwrap().msgpack).unwrap();
    assert_eq!(planned.get("secret_wo"), &Value::Null);
    assert_eq!(planned.get("id"), &Value::Unknown);
    assert_eq!(planned.get("name"), &Value::string("n"));
}

#[tokio::test]
async fn write_only_needs_a_terraform_that_supports_it() {
    let s = svc();
    let cfg = Value::object(&[
        ("id", Value::Null),
        ("name", Value::string("n")),
        ("secret_wo", Value::string("s")),
    ]);
    let r = plan_create(&s, &cfg, false).await;
    assert_eq!(r.diagnostics.len(), 1);
    assert_eq!(
        r.diagnostics[0].severity,
        pb::diagnostic::Severity::Error as i32
    );
    // On the resource, not on the write-only attribute (Terraform would print its
    // line), which the detail names.
    assert!(r.diagnostics[0].attribute.is_none());
    assert!(
        r.diagnostics[0].detail.contains("about secret_wo"),
        "{}",
        r.diagnostics[0].detail
    );
}

#[tokio::test]
async fn apply_never_returns_write_only_values() {
    let s = svc();
    let planned = Value::object(&[
        ("id", Value::Unknown),
        ("name", Value::string("n")),
        ("secret_wo", Value::Null),
    ]);
    let cfg = Value::object(&[
        ("id", Value::Null),
        ("name", Value::string("n")),
        ("secret_wo", Value::string("s3cret")),
    ]);
    let r = apply_create(&s, planned, cfg).await;
    assert!(r.diagnostics.is_empty());
    let bytes = r.new_state.unwrap().msgpack;
    assert!(!bytes.windows(6).any(|w| w == b"s3cret"));
    assert_eq!(
        Value::from_msgpack(&bytes).unwrap().get("id"),
        &Value::string("x")
    );
}

#[tokio::test]
async fn stop_provider_lets_an_apply_return_what_it_changed() {
    let s = svc();
    let planned = Value::object(&[
        ("id", Value::Unknown),
        ("name", Value::string("n")),
        ("secret_wo", Value::Null),
    ]);
    let cfg = Value::object(&[
        ("id", Value::Null),
        ("name", Value::string("n")),
        ("secret_wo", Value::string("wait")),
    ]);
    let s2 = s.clone();
    let apply = tokio::spawn(async move { apply_create(&s2, planned, cfg).await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!apply.is_finished());
    s.stop_provider(Request::new(pb::stop_provider::Request {}))
        .await
        .unwrap();
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), apply)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.diagnostics.len(), 1);
    assert_eq!(r.diagnostics[0].summary, "Stopped");
    // The partial state, not the prior (null) one.
    let v = Value::from_msgpack(&r.new_state.unwrap().msgpack).unwrap();
    assert_eq!(v.get("id"), &Value::string("x"));
    assert_eq!(v.get("name"), &Value::string("partial"));

    // After the stop, a new apply changes nothing and says so.
    let planned = Value::object(&[
        ("id", Value::Unknown),
        ("name", Value::string("m")),
        ("secret_wo", Value::Null),
    ]);
    let cfg = Value::object(&[
        ("id", Value::Null),
        ("name", Value::string("m")),
        ("secret_wo", Value::Null),
    ]);
    let r = apply_create(&s, planned, cfg).await;
    assert_eq!(r.diagnostics[0].summary, "Operation cancelled");
    assert!(r
        .new_state
        .is_none_or(|st| Value::from_msgpack(&st.msgpack).unwrap().is_null()));
}

#[tokio::test]
async fn upgrade_reshapes_stored_json() {
    let s = svc();
    let r = s
        .upgrade_resource_state(Request::new(pb::upgrade_resource_state::Request {
            type_name: "test_slow".into(),
            version: 0,
            raw_state: Some(pb::RawState {
                json: br#"{"id":"x","name":"n","gone":1}"#.to_vec(),
                flatmap: Default::default(),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    let v = Value::from_msgpack(&r.upgraded_state.unwrap().msgpack).unwrap();
    assert_eq!(v.get("name"), &Value::string("n"));
    assert_eq!(v.get("secret_wo"), &Value::Null);
    assert!(matches!(&v, Value::Map(m) if !m.contains_key("gone")));

    let r = s
        .upgrade_resource_state(Request::new(pb::upgrade_resource_state::Request {
            type_name: "test_slow".into(),
            version: 7,
            raw_state: Some(pb::RawState {
                json: b"{}".to_vec(),
                flatmap: Default::default(),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.diagnostics[0].summary, "State from a newer provider");
}

#[tokio::test]
async fn schema_declares_write_only_and_capabilities() {
    let s = svc();
    let r = s
        .get_provider_schema(Request::new(pb::get_provider_schema::Request {}))
        .await
        .unwrap()
        .into_inner();
    let caps = r.server_capabilities.unwrap();
    assert!(caps.plan_destroy && caps.get_provider_schema_optional);
    let block = r.resource_schemas["test_slow"].block.clone().unwrap();
    let wo = block
        .attributes
        .iter()
        .find(|a| a.name == "secret_wo")
        .unwrap();
    assert!(wo.write_only);
    assert_eq!(wo.r#type, b"\"string\"");
}
