//! Unit tests of the resource: its model, checks, plan, names and rollout arithmetic.
use super::roll::replacements;
use super::*;

#[test]
fn names_fit_the_limit() {
    let n = unique_name(DEFAULT_PREFIX).unwrap();
    assert_eq!(n.len(), DEFAULT_PREFIX.len() + SUFFIX_LEN, "{n}");
    assert!(n.starts_with(DEFAULT_PREFIX));
    assert_ne!(unique_name("x").unwrap(), unique_name("x").unwrap());
}

#[test]
fn a_failing_random_generator_is_an_error() {
    let d = unique_name_from("x", |_| Err(aws_lc_rs::error::Unspecified)).unwrap_err();
    let text = format!("{d:?}");
    assert!(text.contains("random"), "{text}");
}

#[test]
fn replacements_count_new_in_service_instances_only() {
    use crate::backends::autoscaling::GroupInstance;
    let inst = |id: &str, state: &str| GroupInstance {
        id: id.into(),
        state: state.into(),
    };
    let old = vec!["i-old1".to_string(), "i-old2".to_string()];
    let mut g = Group {
        name: "g".into(),
        launch_configuration: Some("lc".into()),
        launch_template: None,
        mixed_instances_policy: false,
        desired_capacity: 2,
        instances: vec![inst("i-old2", "InService"), inst("i-new1", "Pending")],
    };
    // The replacement is still Pending: not ready.
    assert_eq!(replacements(&g, &old, 1), (0, 1));
    g.instances[1].state = "InService".into();
    assert_eq!(replacements(&g, &old, 1), (1, 1));
    // An old instance InService never counts as a replacement.
    assert_eq!(replacements(&g, &old, 2), (1, 2));
    // Someone scaled the group down meanwhile: the desired capacity caps the need.
    g.desired_capacity = 1;
    assert_eq!(replacements(&g, &old, 2), (1, 1));
}

#[test]
fn instances_are_found_by_their_nodes_fingerprint() {
    use super::roll::instance_nodes;
    let node = |name: &str| crate::backends::nomad::Node {
        id: format!("id-{name}"),
        name: name.into(),
        address: String::new(),
        status: "ready".into(),
        modify_index: 1,
        drain: false,
        eligibility: String::new(),
    };
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let seen = vec![
        (node("a"), Some("i-1".to_string())),
        (node("b"), Some("i-9".to_string())),
    ];
    let m = instance_nodes(&ids(&["i-1", "i-2"]), &seen).unwrap();
    // i-2 is no node of this Nomad: none of its builds runs there.
    assert_eq!(m.keys().collect::<Vec<_>>(), ["i-1"]);
    assert_eq!(m["i-1"][0].name, "a");
    // A node that does not say which instance it is may be i-2: refused.
    let mut silent = seen.clone();
    silent.push((node("c"), None));
    let e = instance_nodes(&ids(&["i-1", "i-2"]), &silent).unwrap_err();
    assert!(e.contains("c (id-c)"), "{e}");
    assert!(e.contains("whether instance(s) i-2 are among them"), "{e}");
    // Every instance found: the silent node is some other client.
    assert!(instance_nodes(&ids(&["i-1"]), &silent).is_ok());
    // A client registered again under a new ID: both its nodes are drained.
    let mut twice = seen.clone();
    twice.push((node("a2"), Some("i-1".to_string())));
    let m = instance_nodes(&ids(&["i-1"]), &twice).unwrap();
    assert_eq!(m["i-1"].len(), 2);
    // A down node without a fingerprint runs nothing: no refusal.
    let mut down = node("d");
    down.status = "down".into();
    let mut with_down = seen.clone();
    with_down.push((down, None));
    assert!(instance_nodes(&ids(&["i-1", "i-2"]), &with_down).is_ok());
}

#[test]
fn launches_round_trip_through_state() {
    let mut v = imported();
    let ours = Launch::Template {
        id: "lt-1".into(),
        version: "4".into(),
    };
    let orig = Launch::Template {
        id: "lt-1".into(),
        version: "$Latest".into(),
    };
    set_launches(&mut v, &ours, Some(&orig));
    let v = through_state(&v);
    assert_eq!(ours_from(&v), Some(ours));
    assert_eq!(original_from(&v), Some(orig));
    let mut v = imported();
    set_launches(&mut v, &Launch::Config("copy".into()), None);
    let v = through_state(&v);
    assert_eq!(ours_from(&v), Some(Launch::Config("copy".into())));
    assert_eq!(original_from(&v), None);
}

#[test]
fn validation_names_the_attribute() {
    let r = NomadClientLaunchConfig::new(Arc::new(ProviderData::default()));
    let mut cfg = Value::Null;
    cfg.set("autoscaling_group_name", Value::string("g"));
    cfg.set(
        "nomad_servers",
        Value::List(vec![Value::string("ok:4647"), Value::string("bad host")]),
    );
    cfg.set("rollout", Value::string("rolling"));
    cfg.set("rollout_batch_size", Value::int(0));
    let d = r.validate(&cfg);
    let paths: Vec<String> =
        d.0.iter()
            .filter_map(|x| x.path.as_ref().map(|p| p.to_string()))
            .collect();
    assert_eq!(
        paths,
        vec!["nomad_servers[1]", "rollout", "rollout_batch_size"]
    );
}

/// A state as import writes it: group `g` on launch configuration `lc-1`.
fn imported() -> LaunchConfig {
    LaunchConfig::imported("g", &Launch::Config("lc-1".into()))
}

/// `m` written to a state and read back.
fn through_state(m: &LaunchConfig) -> LaunchConfig {
    let mut v = Value::Null;
    m.encode(&mut v);
    LaunchConfig::decode(&v).unwrap()
}

fn state_of(m: &LaunchConfig) -> Value {
    let mut v = Value::Null;
    m.encode(&mut v);
    v
}

/// A configuration: the group and servers set, everything else left null.
fn config(group: &str, servers: &[&str]) -> Value {
    let mut c = Value::Null;
    for d in LaunchConfig::decls() {
        c.set(d.name(), Value::Null);
    }
    c.set("autoscaling_group_name", Value::string(group));
    c.set(
        "nomad_servers",
        Value::List(servers.iter().map(|s| Value::string(*s)).collect()),
    );
    c
}

fn paths(d: &Diagnostics) -> Vec<String> {
    d.0.iter()
        .filter_map(|x| x.path.as_ref().map(ToString::to_string))
        .collect()
}

fn resource() -> NomadClientLaunchConfig {
    NomadClientLaunchConfig::new(Arc::new(ProviderData::default()))
}

#[test]
fn the_schema_says_each_default_once() {
    let b = resource().schema().block;
    let names: Vec<&str> = b.attributes.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "autoscaling_group_name",
            "nomad_servers",
            "name_prefix",
            "rollout",
            "rollout_batch_size",
            "rollout_timeout",
            "config_root",
            "embedded_nomad_endpoint",
            "builds_timeout",
            "restore_on_destroy",
            "launch_configuration_name",
            "launch_template_id",
            "launch_template_version",
            "original_launch_configuration_name",
            "original_launch_template_version",
            "previous_servers",
            "user_data_sha256",
            "replaced_instance_ids",
            "pending_instance_ids",
            "drift",
        ]
    );
    let desc = |n: &str| b.attribute(n).unwrap().description.clone();
    assert!(
        desc("autoscaling_group_name").ends_with("by default). Changing it replaces the resource.")
    );
    assert_eq!(
        desc("rollout_batch_size"),
        "How many instances to terminate at a time. Default `1`."
    );
    for (n, default) in [
        ("name_prefix", "Default `circleci-nomad-clients-`."),
        ("rollout", "`terminate` (default)"),
        ("rollout_timeout", "`20m` (default)"),
        ("config_root", "Default `/`."),
        ("builds_timeout", "(default `30m`)"),
        ("restore_on_destroy", "Default `true`;"),
    ] {
        let d = desc(n);
        assert_eq!(d.matches(default).count(), 1, "{n}: {d}");
        assert_eq!(d.matches("efault").count(), 1, "{n}: said once: {d}");
    }
    let a = b.attribute("rollout_batch_size").unwrap();
    assert!(a.optional && a.computed && !a.required);
    let a = b.attribute("previous_servers").unwrap();
    assert!(a.computed && !a.optional);
}

#[test]
fn plan_defaults_are_the_ones_the_resource_always_had() {
    let c = config("g", &["n:4647"]);
    let mut planned = c.clone();
    model::set_defaults(LaunchConfig::decls(), &c, &mut planned);
    // The list the plan used to set by hand, value for value; nothing else.
    let mut want = c.clone();
    for (n, v) in [
        ("name_prefix", Value::string(DEFAULT_PREFIX)),
        ("rollout", Value::string("terminate")),
        ("rollout_batch_size", Value::int(1)),
        ("rollout_timeout", Value::string("20m")),
        ("restore_on_destroy", Value::Bool(true)),
        ("config_root", Value::string("/")),
        ("builds_timeout", Value::string(BUILDS_TIMEOUT)),
        (
            "embedded_nomad_endpoint",
            Value::string(DEFAULT_EMBEDDED_NOMAD),
        ),
    ] {
        want.set(n, v);
    }
    assert_eq!(planned, want);
    // Import writes the same defaults.
    let p = LaunchConfigAtPlan::decode(&planned).unwrap();
    let m = imported();
    assert_eq!(p.name_prefix, Known::Value(m.name_prefix));
    assert_eq!(p.rollout, Known::Value(m.rollout));
    assert_eq!(p.rollout_batch_size, Known::Value(m.rollout_batch_size));
    assert_eq!(p.rollout_timeout, Known::Value(m.rollout_timeout));
    assert_eq!(p.config_root, Known::Value(m.config_root));
    assert_eq!(p.builds_timeout, Known::Value(m.builds_timeout));
    assert_eq!(
        p.embedded_nomad_endpoint,
        Known::Value(m.embedded_nomad_endpoint)
    );
    assert_eq!(p.restore_on_destroy, Known::Value(m.restore_on_destroy));
}

#[test]
fn a_state_decodes_and_encodes_back_unchanged() {
    let v = state_of(&imported());
    let mut back = Value::Null;
    LaunchConfig::decode(&v).unwrap().encode(&mut back);
    assert_eq!(back, v);
    // A state written before builds_timeout existed reads as its default.
    let mut old = v.clone();
    old.set("builds_timeout", Value::Null);
    old.set("drift", Value::Null);
    let m = LaunchConfig::decode(&old).unwrap();
    assert_eq!(m.builds_timeout, BUILDS_TIMEOUT);
    assert_eq!(m.drift, Known::Null);
    // A name the schema does not have is a defect, not a null.
    let mut missing = v.clone();
    if let Value::Map(map) = &mut missing {
        map.remove("rollout_timeout");
    }
    assert_eq!(
        LaunchConfig::decode(&missing).err(),
        Some(model::Undecoded::NotInSchema("rollout_timeout"))
    );
}

#[test]
fn settings_come_from_the_model() {
    let mut m = imported();
    assert_eq!(
        m.rollout_settings(),
        (true, 1, Duration::from_secs(20 * 60))
    );
    let s = m.stop_settings();
    assert_eq!(
        (s.root.as_str(), s.embedded_nomad.as_str(), s.builds_timeout),
        ("/", DEFAULT_EMBEDDED_NOMAD, Duration::from_secs(30 * 60))
    );
    m.rollout = Rollout::None;
    m.rollout_batch_size = 0;
    m.rollout_timeout = "3d".into();
    assert_eq!(m.rollout_settings(), (false, 1, MAX_ROLLOUT));
    m.pending_instance_ids = Known::Null;
    assert!(m.pending().is_empty());
}

#[test]
fn each_check_names_its_attribute() {
    let r = resource();
    let bad = |set: &[(&str, Value)]| {
        let mut c = config("g", &["n:4647"]);
        for (n, v) in set {
            c.set(n, v.clone());
        }
        r.validate(&c)
    };
    assert!(bad(&[]).is_empty(), "{:?}", bad(&[]));
    let d = bad(&[("autoscaling_group_name", Value::string(""))]);
    assert_eq!(paths(&d), ["autoscaling_group_name"]);
    assert_eq!(d.0[0].summary, "Invalid Auto Scaling group name");
    let d = bad(&[("name_prefix", Value::string("x".repeat(231)))]);
    assert_eq!(paths(&d), ["name_prefix"]);
    assert!(d.0[0].detail.contains("at most 230"), "{}", d.0[0].detail);
    let d = bad(&[("nomad_servers", Value::List(vec![]))]);
    assert_eq!(
        (paths(&d), d.0[0].summary.as_str()),
        (vec!["nomad_servers".to_string()], "No Nomad servers")
    );
    let servers = |v: Vec<Value>| bad(&[("nomad_servers", Value::List(v))]);
    let d = servers(vec![Value::string("a:4647"), Value::string("a:4647")]);
    assert_eq!(
        (paths(&d), d.0[0].summary.as_str()),
        (
            vec!["nomad_servers[1]".to_string()],
            "Duplicate Nomad server"
        )
    );
    let d = servers(vec![Value::Null]);
    assert_eq!(
        (paths(&d), d.0[0].detail.as_str()),
        (vec!["nomad_servers[0]".to_string()], "must not be null")
    );
    // The known elements of a partly known list are checked now.
    let d = servers(vec![Value::Unknown, Value::string("bad host")]);
    assert_eq!(paths(&d), ["nomad_servers[1]"]);
    for n in [
        Value::int(0),
        Value::int(-1),
        Value::Number(crate::plugin::value::Number::Float(1.5)),
    ] {
        let d = bad(&[("rollout_batch_size", n)]);
        assert_eq!(paths(&d), ["rollout_batch_size"]);
        assert_eq!(d.0[0].detail, "must be a whole number of at least 1");
    }
    let d = bad(&[("rollout", Value::string("rolling"))]);
    assert_eq!(
        (paths(&d), d.0[0].detail.as_str()),
        (
            vec!["rollout".to_string()],
            "\"rolling\" is not one of none, terminate"
        )
    );
    for (n, v) in [
        ("rollout_timeout", "25h"),
        ("rollout_timeout", "0s"),
        ("builds_timeout", "8d"),
        ("config_root", "etc"),
        ("embedded_nomad_endpoint", "not a url"),
    ] {
        assert_eq!(paths(&bad(&[(n, Value::string(v))])), [n], "{n} = {v}");
    }
    // Unknown values wait for their value.
    for n in [
        "autoscaling_group_name",
        "nomad_servers",
        "rollout",
        "rollout_batch_size",
    ] {
        assert!(bad(&[(n, Value::Unknown)]).is_empty(), "{n}");
    }
}

/// The plan of `config` over `prior` (null: a create), as Terraform proposes it: on
/// create every computed value the configuration leaves unset is unknown; on update
/// the prior's values stand where the configuration sets none.
async fn plan(prior: &Value, config: &Value) -> (LaunchConfigAtPlan, Vec<AttrPath>, Diagnostics) {
    let r = resource();
    let mut planned = config.clone();
    let b = r.schema().block;
    for a in b.attributes.iter().filter(|a| a.computed) {
        if config.get(&a.name).is_null() {
            let v = if prior.is_null() {
                Value::Unknown
            } else {
                prior.get(&a.name).clone()
            };
            planned.set(&a.name, v);
        }
    }
    let mut diags = Diagnostics::new();
    let req = PlanRequest { prior, config };
    let replace = r.plan(&req, &mut planned, &mut diags).await;
    (
        LaunchConfigAtPlan::decode(&planned).unwrap(),
        replace,
        diags,
    )
}

#[tokio::test]
async fn a_create_plans_the_copy_unknown_and_the_settings_known() {
    let (p, replace, diags) = plan(&Value::Null, &config("g", &["n:4647"])).await;
    assert!(replace.is_empty() && !diags.has_errors(), "{diags:?}");
    assert_eq!(p.id, Known::Value("g".into()));
    assert_eq!(p.drift, Known::Value(String::new()));
    assert_eq!(p.rollout, Known::Value(Rollout::Terminate));
    for k in [
        &p.launch_configuration_name,
        &p.launch_template_id,
        &p.launch_template_version,
        &p.original_launch_configuration_name,
        &p.original_launch_template_version,
        &p.user_data_sha256,
    ] {
        assert_eq!(*k, Known::Unknown);
    }
    // No AWS here: what the group names now is known at apply.
    for k in [
        &p.previous_servers,
        &p.replaced_instance_ids,
        &p.pending_instance_ids,
    ] {
        assert_eq!(*k, Known::Unknown);
    }
    // A group name not known yet: neither is the id.
    let mut c = config("g", &["n:4647"]);
    c.set("autoscaling_group_name", Value::Unknown);
    assert_eq!(plan(&Value::Null, &c).await.0.id, Known::Unknown);
}

#[tokio::test]
async fn an_update_makes_a_new_copy_only_when_the_servers_change_or_drifted() {
    let mut m = imported();
    m.nomad_servers = vec!["old:4647".into()];
    m.set_launches_for_test();
    let prior = state_of(&m);
    // Same servers, no drift: nothing to do.
    let (p, replace, _) = plan(&prior, &config("g", &["old:4647"])).await;
    assert!(replace.is_empty());
    assert_eq!(p.launch_configuration_name, Known::Value("copy-1".into()));
    assert_eq!(p.user_data_sha256, m.user_data_sha256);
    // New servers: a new copy, the old list shown as what comes before.
    let (p, _, _) = plan(&prior, &config("g", &["new:4647"])).await;
    assert_eq!(p.launch_configuration_name, Known::Unknown);
    assert_eq!(p.user_data_sha256, Known::Unknown);
    assert_eq!(p.previous_servers, Known::Value(vec!["old:4647".into()]));
    // Drift alone makes a new copy too.
    let mut drifted = m.clone();
    drifted.drift = Known::Value("copy-1 was deleted".into());
    let (p, _, _) = plan(&state_of(&drifted), &config("g", &["old:4647"])).await;
    assert_eq!(p.user_data_sha256, Known::Unknown);
    assert_eq!(p.drift, Known::Value(String::new()));
    // Another group replaces the resource.
    let (_, replace, _) = plan(&prior, &config("h", &["old:4647"])).await;
    assert_eq!(replace, [AttrPath::root("autoscaling_group_name")]);
}

#[tokio::test]
async fn instances_left_pending_are_rolled_by_the_next_apply() {
    let mut m = imported();
    m.nomad_servers = vec!["n:4647".into()];
    m.set_launches_for_test();
    m.pending_instance_ids = Known::Value(vec!["i-1".into()]);
    let prior = state_of(&m);
    let (p, _, _) = plan(&prior, &config("g", &["n:4647"])).await;
    assert_eq!(p.pending_instance_ids, Known::Unknown);
    assert_eq!(p.replaced_instance_ids, Known::Unknown);
    assert!(p.user_data_sha256.is_known(), "no new copy");
    // rollout = "none" leaves them.
    let mut c = config("g", &["n:4647"]);
    c.set("rollout", Value::string("none"));
    let (p, _, _) = plan(&prior, &c).await;
    assert_eq!(p.pending_instance_ids, Known::Value(vec!["i-1".into()]));
}

impl LaunchConfig {
    /// As an apply leaves it: on our copy `copy-1` of `lc-1`.
    fn set_launches_for_test(&mut self) {
        set_launches(
            self,
            &Launch::Config("copy-1".into()),
            Some(&Launch::Config("lc-1".into())),
        );
        self.user_data_sha256 = Known::Value("abc".into());
    }
}
