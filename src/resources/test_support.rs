//! What the resources' unit tests share: configurations and plans as Terraform makes
//! them, and diagnostics as `summary @ attribute`.

use crate::plugin::{AttrPath, Diagnostics, PlanRequest, Resource, Value};

/// A configuration as Terraform sends it: every attribute of the schema, null unless set.
pub(crate) fn config(r: &dyn Resource, pairs: &[(&str, Value)]) -> Value {
    let block = r.schema().block;
    let names: Vec<&str> = block.attributes.iter().map(|a| a.name.as_str()).collect();
    for (k, _) in pairs {
        assert!(
            names.contains(k),
            "{k} is not in the schema of {}",
            r.type_name()
        );
    }
    Value::object(pairs).conform(&block)
}

/// Terraform's proposed new state on create: computed attributes the configuration
/// leaves null are unknown; write-only ones are null.
pub(crate) fn proposed(r: &dyn Resource, config: &Value) -> Value {
    let mut v = config.clone();
    for a in r.schema().block.attributes {
        if a.write_only {
            v.set(&a.name, Value::Null);
        } else if a.computed && config.get(&a.name).is_null() {
            v.set(&a.name, Value::Unknown);
        }
    }
    v
}

/// Terraform's proposed new state on update: computed attributes the configuration
/// leaves null keep their prior value.
pub(crate) fn proposed_update(r: &dyn Resource, prior: &Value, config: &Value) -> Value {
    let mut v = config.clone();
    for a in r.schema().block.attributes {
        if a.write_only {
            v.set(&a.name, Value::Null);
        } else if a.computed && config.get(&a.name).is_null() {
            v.set(&a.name, prior.get(&a.name).clone());
        }
    }
    v
}

/// Plans an update from `prior`; returns the planned value and the replace paths.
pub(crate) async fn plan_update(
    r: &dyn Resource,
    prior: &Value,
    config: &Value,
) -> (Value, Vec<AttrPath>) {
    let mut planned = proposed_update(r, prior, config);
    let mut diags = Diagnostics::new();
    let req = PlanRequest { prior, config };
    let replace = r.plan(&req, &mut planned, &mut diags).await;
    assert!(!diags.has_errors(), "{diags}");
    (planned, replace)
}

/// Each error as `summary @ attribute`.
pub(crate) fn errors(d: &Diagnostics) -> Vec<String> {
    d.0.iter()
        .map(|d| match &d.path {
            Some(p) => format!("{} @ {p}", d.summary),
            None => d.summary.clone(),
        })
        .collect()
}

pub(crate) fn assert_has(d: &Diagnostics, want: &[&str]) {
    let got = errors(d);
    for w in want {
        assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
    }
}

/// Plans a create; returns the planned value, the diagnostics and the replace paths.
pub(crate) async fn plan_create(r: &dyn Resource, config: &Value) -> (Value, Diagnostics) {
    let mut planned = proposed(r, config);
    let mut diags = Diagnostics::new();
    let req = PlanRequest {
        prior: &Value::Null,
        config,
    };
    let replace = r.plan(&req, &mut planned, &mut diags).await;
    assert!(replace.is_empty(), "a create replaces nothing");
    (planned, diags)
}
