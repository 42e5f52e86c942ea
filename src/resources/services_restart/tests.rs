//! `circleci_services_restart`'s validation and plan with no server: when a plan
//! restarts CircleCI, and when it must not.

use std::sync::Arc;

use super::ServicesRestart;
use crate::plugin::{Diagnostics, PlanRequest, Resource, Value};
use crate::provider::ProviderData;
use crate::resources::test_support::{assert_has, config, plan_create, plan_update};

fn restart() -> ServicesRestart {
    ServicesRestart::new(Arc::new(ProviderData::default()))
}

/// A state after a restart whose checks passed.
async fn restarted(r: &ServicesRestart, c: &Value) -> Value {
    let (mut state, diags) = plan_create(r, c).await;
    assert!(!diags.has_errors(), "{diags}");
    for (a, v) in [
        ("version", Value::string("2.17.3")),
        ("app_state", Value::string("started")),
        ("checks", Value::List(vec![Value::string("redis: ok")])),
        ("failed_checks", Value::List(vec![])),
        ("restarted_at", Value::string("2026-12-05T10:00:00Z")),
        ("downtime", Value::string("20.0s")),
    ] {
        state.set(a, v);
    }
    state
}

fn triggers(sha: &str) -> (&'static str, Value) {
    ("triggers", Value::object(&[("redis", Value::string(sha))]))
}

#[tokio::test]
async fn a_create_restarts_and_fills_the_defaults() {
    let r = restart();
    let c = config(&r, &[triggers("a")]);
    let (planned, diags) = plan_create(&r, &c).await;
    assert!(!diags.has_errors(), "{diags}");
    assert_eq!(planned.get("id"), &Value::string("circleci"));
    assert_eq!(planned.get("stop_timeout"), &Value::string("10m"));
    assert_eq!(planned.get("builds_timeout"), &Value::string("30m"));
    assert_eq!(
        planned.get("allowed_versions"),
        &Value::List(vec![Value::string("2.17.x")])
    );
    assert_eq!(planned.get("on_destroy"), &Value::string("keep_external"));
    assert_eq!(planned.get("restarted_at"), &Value::Unknown);
}

#[tokio::test]
async fn only_a_trigger_or_a_failed_restart_restarts_again() {
    let r = restart();
    let c = config(&r, &[triggers("a")]);
    let state = restarted(&r, &c).await;

    let (same, _) = plan_update(&r, &state, &c).await;
    assert_eq!(
        same.get("restarted_at"),
        state.get("restarted_at"),
        "no restart"
    );

    let mut longer = c.clone();
    longer.set("start_timeout", Value::string("30m"));
    let (next, _) = plan_update(&r, &state, &longer).await;
    assert_eq!(
        next.get("restarted_at"),
        state.get("restarted_at"),
        "a timeout alone restarts nothing"
    );

    let (next, _) = plan_update(&r, &state, &config(&r, &[triggers("b")])).await;
    assert_eq!(
        next.get("restarted_at"),
        &Value::Unknown,
        "a trigger restarts"
    );

    let mut stopped = state.clone();
    stopped.set("app_state", Value::string("stopped"));
    let (next, _) = plan_update(&r, &stopped, &c).await;
    assert_eq!(next.get("restarted_at"), &Value::Unknown, "found stopped");

    let mut failed = state.clone();
    failed.set("failed_checks", Value::List(vec![Value::string("vault")]));
    let (next, _) = plan_update(&r, &failed, &c).await;
    assert_eq!(next.get("restarted_at"), &Value::Unknown, "a check failed");
}

/// A state written before an attribute existed has it null: the plan fills the
/// default and restarts nothing.
#[tokio::test]
async fn an_attribute_missing_from_an_older_state_restarts_nothing() {
    let r = restart();
    let c = config(&r, &[triggers("a")]);
    let mut state = restarted(&r, &c).await;
    state.set("on_destroy", Value::Null);
    let mut planned = crate::resources::test_support::proposed_update(&r, &state, &c);
    planned.set("on_destroy", Value::Unknown);
    let mut diags = Diagnostics::new();
    let req = PlanRequest {
        prior: &state,
        config: &c,
    };
    r.plan(&req, &mut planned, &mut diags).await;
    assert!(!diags.has_errors(), "{diags}");
    assert_eq!(planned.get("on_destroy"), &Value::string("keep_external"));
    assert_eq!(planned.get("restarted_at"), state.get("restarted_at"));
}

#[test]
fn bad_input_is_refused_on_each_attribute() {
    let r = restart();
    let c = config(
        &r,
        &[
            ("stop_timeout", Value::string("0s")),
            ("builds_timeout", Value::string("soon")),
            ("on_failure", Value::string("retry")),
            ("on_destroy", Value::string("undo")),
            ("config_root", Value::string("data")),
            ("allowed_versions", Value::List(vec![])),
            ("embedded_nomad_endpoint", Value::string("nomad:4646")),
        ],
    );
    assert_has(
        &r.validate(&c),
        &[
            "Invalid duration @ stop_timeout",
            "Invalid duration @ builds_timeout",
            "Invalid on_failure @ on_failure",
            "Invalid on_destroy @ on_destroy",
            "Invalid path @ config_root",
            "No versions allowed @ allowed_versions",
            "Invalid embedded_nomad_endpoint @ embedded_nomad_endpoint",
        ],
    );
}

/// `triggers` naming a digest not known yet (a token made by the same apply): the plan
/// keeps the map as the configuration has it (Terraform refuses a plan that turns it
/// into one unknown), and restarts.
#[tokio::test]
async fn a_partly_unknown_trigger_map_is_kept_as_configured() {
    let r = restart();
    let c = config(&r, &[triggers("a")]);
    let state = restarted(&r, &c).await;
    let partial = Value::object(&[
        ("redis", Value::string("a")),
        ("vault", Value::Unknown),
        ("gone", Value::Null),
    ]);
    let mut next_config = c.clone();
    next_config.set("triggers", partial.clone());
    let (next, _) = plan_update(&r, &state, &next_config).await;
    assert_eq!(next.get("triggers"), &partial);
    assert_eq!(next.get("restarted_at"), &Value::Unknown);
    assert_eq!(next.get("id"), &Value::string("circleci"));
}

/// A state from before `on_destroy` existed: destroy reads it as the default and
/// changes nothing.
#[tokio::test]
async fn destroying_an_older_state_keeps_circleci_as_it_is() {
    let r = restart();
    let c = config(&r, &[triggers("a")]);
    let mut state = restarted(&r, &c).await;
    for a in [
        "on_destroy",
        "on_failure",
        "builds_timeout",
        "embedded_nomad_endpoint",
    ] {
        state.set(a, Value::Null);
    }
    let applied = r.delete(&state).await;
    assert!(!applied.diags.has_errors(), "{}", applied.diags);
    assert!(applied.state.is_none(), "deleted");
}
