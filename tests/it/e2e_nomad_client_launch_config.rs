//! circleci_nomad_client_launch_config end to end: terraform CLI → provider → moto (EC2 and
//! Auto Scaling). Groups are built, and the provider's work checked, with boto3 through
//! dev/fixtures/aws_fixture.py: a second AWS client that shares no code with the provider.

use crate::common;

use std::process::{Child, Command};

use common::sim::{epoch_now, NomadFixture, Sim, SIMULATOR};
use common::{closed_port, flat, servers, Servers, Tf};
use serde_json::Value as Json;

const SERVERS: [&str; 3] = [
    "nomad-1.internal:4647",
    "nomad-2.internal:4647",
    "nomad-3.internal:4647",
];

fn fixture_at(s: &Servers, endpoint: &str, args: &[&str]) -> Json {
    s.aws_fixture_at(endpoint, args)
}

fn fixture(s: &Servers, args: &[&str]) -> Json {
    s.aws_fixture(args)
}

/// An Auto Scaling group with two clients on a launch configuration (`lc`) or template
/// (`lt`) whose user_data is the file at `user_data`.
fn setup_at(s: &Servers, endpoint: &str, group: &str, kind: &str, user_data: &str) -> Json {
    fixture_at(
        s,
        endpoint,
        &[
            "setup",
            "--name",
            group,
            "--kind",
            kind,
            "--user-data-file",
            user_data,
        ],
    )
}

fn setup(s: &Servers, group: &str, kind: &str, user_data: &str) -> Json {
    setup_at(
        s,
        s.get("CIRCLECI_TEST_AWS_ENDPOINT"),
        group,
        kind,
        user_data,
    )
}

/// A name no other test (or earlier run against the same moto) uses.
fn unique(base: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{base}-{}-{}", std::process::id(), n % 1_000_000_000)
}

/// The provider: AWS at `endpoint`, and the Services machine, which says whether CircleCI
/// runs (it is stopped in these tests: see [`circleci_stopped`]).
fn provider(endpoint: &str) -> String {
    servers().provider_block_on(
        servers().ssh_port(),
        "",
        &format!("  aws {{\n    region   = \"us-east-1\"\n    endpoint = {endpoint:?}\n  }}\n"),
    )
}

/// CircleCI stopped on the simulated Services machine for one test: the clients move
/// freely (no build runs).
/// (The simulator is put back before the next test may take its turn.)
fn circleci_stopped(s: &Servers) -> (Sim, std::sync::MutexGuard<'static, ()>) {
    let turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    (Sim::new(s, serde_json::json!({"transition": 1})), turn)
}

fn resource(group: &str, servers: &[&str], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "\nresource \"circleci_nomad_client_launch_config\" \"clients\" {{\n  autoscaling_group_name = {group:?}\n  \
         nomad_servers          = [{}]\n  name_prefix            = \"{group}-copy-\"\n{extra}}}\n",
        list.join(", ")
    )
}

fn attr(tf: &Tf, name: &str) -> Json {
    let state = tf.state_json();
    let resources = state["values"]["root_module"]["resources"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    resources
        .iter()
        .find(|r| r["type"] == "circleci_nomad_client_launch_config")
        .map(|r| r["values"][name].clone())
        .unwrap_or(Json::Null)
}

fn strs(v: &Json) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn instance_ids(group: &Json) -> Vec<String> {
    group["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// The lines that differ between two texts of the same length in lines.
fn changed_lines(a: &str, b: &str) -> Vec<(String, String)> {
    assert_eq!(a.lines().count(), b.lines().count(), "line count changed");
    a.lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .collect()
}

fn copies(s: &Servers, group: &str) -> Vec<String> {
    strs(&fixture(s, &["lcs"])["names"])
        .into_iter()
        .filter(|n| n.starts_with(&format!("{group}-copy-")))
        .collect()
}

#[test]
fn launch_configuration_group_apply_update_drift_import_destroy() {
    let s = servers();
    let _ci = circleci_stopped(&s);
    let endpoint = s.get("CIRCLECI_TEST_AWS_ENDPOINT");
    let group = unique("nomad-lc");
    let made = setup(&s, &group, "lc", s.get("CIRCLECI_TEST_NOMAD_USER_DATA"));
    let original = made["launch_configuration"].as_str().unwrap().to_string();
    let old_ids = instance_ids(&made);
    assert_eq!(old_ids.len(), 2);

    let tf = Tf::new(&format!(
        "{}{}",
        provider(endpoint),
        resource(&group, &SERVERS, "")
    ));
    // The plan shows the servers change as lists, read from the group's user_data.
    let plan = tf.ok(&["plan", "-no-color", "-input=false"]);
    assert!(
        plan.contains("previous_servers") && plan.contains("\"10.0.1.150:4647\""),
        "{plan}"
    );
    tf.apply();

    let ours = attr(&tf, "launch_configuration_name")
        .as_str()
        .unwrap()
        .to_string();
    assert!(ours.starts_with(&format!("{group}-copy-")), "{ours}");
    assert_eq!(
        attr(&tf, "original_launch_configuration_name"),
        original.as_str()
    );
    assert_eq!(strs(&attr(&tf, "previous_servers")), ["10.0.1.150:4647"]);
    let mut replaced = strs(&attr(&tf, "replaced_instance_ids"));
    replaced.sort();
    let mut expected = old_ids.clone();
    expected.sort();
    assert_eq!(replaced, expected, "both old clients were terminated");

    // The group uses the copy, and its two clients are new ones, InService.
    let g = fixture(&s, &["group", "--name", &group]);
    assert_eq!(g["launch_configuration"], ours.as_str());
    let now = instance_ids(&g);
    assert_eq!(now.len(), 2);
    assert!(
        now.iter().all(|i| !old_ids.contains(i)),
        "{now:?} {old_ids:?}"
    );
    assert!(g["instances"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["state"] == "InService"));

    // The copy differs from the original in the servers line only.
    let orig_lc = fixture(&s, &["lc", "--name", &original]);
    let copy_lc = fixture(&s, &["lc", "--name", &ours]);
    assert_eq!(
        copy_lc["fields"], orig_lc["fields"],
        "every other field copied"
    );
    assert_eq!(
        changed_lines(
            orig_lc["user_data"].as_str().unwrap(),
            copy_lc["user_data"].as_str().unwrap()
        ),
        vec![(
            "    servers = [\"10.0.1.150:4647\"]".to_string(),
            "    servers = [\"nomad-1.internal:4647\", \"nomad-2.internal:4647\", \"nomad-3.internal:4647\"]"
                .to_string()
        )]
    );
    assert_eq!(tf.plan_code(), 0, "plan after apply is empty");

    // Changing the servers: a new copy, the group switched, our previous copy deleted.
    tf.write_main(&format!(
        "{}{}",
        provider(endpoint),
        resource(&group, &SERVERS[..2], "  rollout = \"none\"\n")
    ));
    let plan = tf.ok(&["plan", "-no-color", "-input=false"]);
    assert!(plan.contains("- \"nomad-3.internal:4647\""), "{plan}");
    assert!(plan.contains("1 to change, 0 to destroy"), "{plan}");
    tf.apply();
    let second = attr(&tf, "launch_configuration_name")
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(second, ours);
    assert_eq!(
        copies(&s, &group),
        vec![second.clone()],
        "first copy deleted"
    );
    assert_eq!(strs(&attr(&tf, "previous_servers")), SERVERS);
    assert_eq!(
        attr(&tf, "original_launch_configuration_name"),
        original.as_str()
    );
    let g2 = fixture(&s, &["group", "--name", &group]);
    assert_eq!(g2["launch_configuration"], second.as_str());
    assert_eq!(instance_ids(&g2), now, "rollout = none leaves the clients");
    assert!(fixture(&s, &["lc", "--name", &second])["user_data"]
        .as_str()
        .unwrap()
        .contains("servers = [\"nomad-1.internal:4647\", \"nomad-2.internal:4647\"]"));
    assert_eq!(tf.plan_code(), 0);

    // Drift: someone points the group back at the original.
    fixture(&s, &["point", "--name", &group, "--lc", &original]);
    let plan = tf.run(&["plan", "-no-color", "-input=false"]);
    let text = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(text.contains("drift"), "{text}");
    assert!(
        text.contains(&format!("the group uses launch configuration {original}")),
        "{text}"
    );
    assert!(
        text.contains("\"10.0.1.150:4647\""),
        "the servers diff shows: {text}"
    );
    tf.apply();
    let third = attr(&tf, "launch_configuration_name")
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        fixture(&s, &["group", "--name", &group])["launch_configuration"],
        third.as_str()
    );
    assert_eq!(copies(&s, &group), vec![third.clone()]);
    assert_eq!(tf.plan_code(), 0);

    // Import by group name finds our copy; no new copy is planned.
    tf.ok(&["state", "rm", "circleci_nomad_client_launch_config.clients"]);
    tf.ok(&[
        "import",
        "-no-color",
        "circleci_nomad_client_launch_config.clients",
        &group,
    ]);
    assert_eq!(attr(&tf, "launch_configuration_name"), third.as_str());
    assert_eq!(strs(&attr(&tf, "nomad_servers")), &SERVERS[..2]);
    let plan = tf.ok(&["plan", "-no-color", "-input=false"]);
    assert!(!plan.contains("launch_configuration_name"), "{plan}");
    assert!(
        plan.contains("0 to add, 1 to change, 0 to destroy"),
        "{plan}"
    );
    tf.apply();
    // Imported, the original is unknown: write it back through a fresh create instead.
    tf.ok(&["state", "rm", "circleci_nomad_client_launch_config.clients"]);
    fixture(&s, &["point", "--name", &group, "--lc", &original]);
    fixture(&s, &["delete-lc", "--name", &third]);
    tf.apply();
    let fourth = attr(&tf, "launch_configuration_name")
        .as_str()
        .unwrap()
        .to_string();

    // Destroy: the group back on the original, our copy deleted, the original kept.
    tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"]);
    let g = fixture(&s, &["group", "--name", &group]);
    assert_eq!(g["launch_configuration"], original.as_str());
    assert!(copies(&s, &group).is_empty(), "{fourth} deleted");
    assert_eq!(fixture(&s, &["lc", "--name", &original])["exists"], true);
}

#[test]
fn launch_template_group_gets_a_new_version() {
    let s = servers();
    let _ci = circleci_stopped(&s);
    let endpoint = s.get("CIRCLECI_TEST_AWS_ENDPOINT");
    let group = unique("nomad-lt");
    let made = setup(&s, &group, "lt", s.get("CIRCLECI_TEST_NOMAD_USER_DATA"));
    let template = made["template_id"].as_str().unwrap().to_string();
    let old_ids = instance_ids(&made);
    // rollout = "none": moto 5.2 cannot launch instances from a version made by
    // CreateLaunchTemplateVersion (it keeps that version's UserData undecoded and fails
    // an assertion). The rollout itself is the same code for both kinds of group and is
    // covered by the launch configuration test.
    let tf = Tf::new(&format!(
        "{}{}",
        provider(endpoint),
        resource(&group, &SERVERS[..1], "  rollout = \"none\"\n")
    ));
    tf.apply();
    assert_eq!(attr(&tf, "launch_template_id"), template.as_str());
    assert_eq!(attr(&tf, "launch_template_version"), "2");
    assert_eq!(attr(&tf, "original_launch_template_version"), "$Latest");
    assert_eq!(attr(&tf, "launch_configuration_name"), "");

    let g = fixture(&s, &["group", "--name", &group]);
    assert_eq!(g["launch_template"]["LaunchTemplateId"], template.as_str());
    assert_eq!(g["launch_template"]["Version"], "2");
    assert_eq!(
        instance_ids(&g),
        old_ids,
        "rollout = none keeps the clients"
    );
    assert!(strs(&attr(&tf, "replaced_instance_ids")).is_empty());

    // The new version carries the full data of the first, user_data aside.
    let v1 = fixture(&s, &["lt", "--id", &template, "--version", "1"]);
    let v2 = fixture(&s, &["lt", "--id", &template, "--version", "2"]);
    assert_eq!(v2["data"], v1["data"]);
    assert_eq!(
        changed_lines(
            v1["user_data"].as_str().unwrap(),
            v2["user_data"].as_str().unwrap()
        ),
        vec![(
            "    servers = [\"10.0.1.150:4647\"]".to_string(),
            "    servers = [\"nomad-1.internal:4647\"]".to_string()
        )]
    );
    assert_eq!(tf.plan_code(), 0);

    // Destroy points the group back at "$Latest", as it was.
    let out = tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"]);
    let g = fixture(&s, &["group", "--name", &group]);
    assert_eq!(g["launch_template"]["Version"], "$Latest", "{out}");
}

#[test]
fn with_circleci_running_the_group_moves_only_to_its_nomad_and_each_client_is_drained_first() {
    let s = servers();
    let (sim, _turn) = circleci_stopped(&s);
    let endpoint = s.get("CIRCLECI_TEST_AWS_ENDPOINT");
    let group = unique("nomad-running");
    let made = setup(&s, &group, "lc", s.get("CIRCLECI_TEST_NOMAD_USER_DATA"));
    // CircleCI runs on its embedded Nomad (no nomad file under this root), whose one
    // server is 127.0.0.1:4647.
    sim.start();
    let root = tempfile::tempdir().unwrap();
    let extra = |more: &str| {
        format!(
            "  config_root = {:?}\n  embedded_nomad_endpoint = {:?}\n{more}",
            root.path(),
            s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR")
        )
    };
    let unchanged = |why: &str| {
        let g = fixture(&s, &["group", "--name", &group]);
        assert_eq!(
            g["launch_configuration"], made["launch_configuration"],
            "{why}"
        );
        assert_eq!(instance_ids(&g), instance_ids(&made), "{why}");
        assert!(copies(&s, &group).is_empty(), "{why}");
    };
    let tf = Tf::new(&format!(
        "{}{}",
        provider(endpoint),
        resource(&group, &SERVERS, &extra(""))
    ));
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color", "-input=false"]));
    assert!(
        out.contains("Clients would leave the Nomad CircleCI uses"),
        "{out}"
    );
    assert!(out.contains("nomad-1.internal:4647, nomad-2.internal:4647, nomad-3.internal:4647 are not among them"), "{out}");
    assert!(out.contains("on main.tf line"), "{out}");
    unchanged("a move away from CircleCI's Nomad");

    // Its own server: the group may switch, and each client is terminated only once
    // the builds on it ended and it is drained. First, a client the Nomad cannot tell
    // apart (the stand-in's fixture clients carry no AWS fingerprint, and only one of
    // the two instances is a node it names): refused before anything changes.
    let ids = instance_ids(&made);
    assert_eq!(ids.len(), 2);
    let mut nomad = NomadFixture::new(&s, "CIRCLECI_TEST_EMBEDDED_NOMAD_DIR");
    let node = |i: usize| format!("{group}-client-{i}");
    nomad.aws_client(&node(0), &ids[0]);
    tf.write_main(&format!(
        "{}{}",
        provider(endpoint),
        resource(
            &group,
            &["127.0.0.1:4647"],
            &extra("  builds_timeout = \"3s\"\n  rollout = \"terminate\"\n")
        )
    ));
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color", "-input=false"]));
    assert!(
        out.contains("CircleCI is running: the clients' builds cannot be waited for"),
        "{out}"
    );
    assert!(
        out.contains(&format!("whether instance(s) {} are among them", ids[1])),
        "{out}"
    );
    assert!(out.contains("embedded-client-1"), "{out}");
    assert!(
        out.contains(": rollout = \"terminate\""),
        "the diagnostic points at rollout: {out}"
    );
    unchanged("a client that cannot be found in Nomad");

    // Both instances are nodes; a build runs on the first past builds_timeout: the
    // rollout stops naming it, that instance is not terminated, no build is stopped.
    nomad.aws_client(&node(1), &ids[1]);
    let drained_before = nomad.stopped_by_drain();
    nomad.build(&format!("{group}-long"), &node(0), epoch_now() + 600.0);
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color", "-input=false"]));
    assert!(out.contains("Client not drained"), "{out}");
    assert!(
        out.contains(&format!(
            "1 build(s) still run on instance {} (node {}) after 3s (builds_timeout): {group}-long.build[0]",
            ids[0],
            node(0)
        )),
        "{out}"
    );
    assert!(out.contains("It was not terminated"), "{out}");
    assert!(
        out.contains(": builds_timeout = \"3s\""),
        "the diagnostic points at builds_timeout: {out}"
    );
    let g = fixture(&s, &["group", "--name", &group]);
    assert_eq!(instance_ids(&g), ids, "no instance terminated: {out}");
    assert_ne!(
        nomad.node(&node(0))["Drain"],
        Json::Bool(true),
        "not left drained"
    );
    assert_eq!(nomad.stopped_by_drain(), drained_before, "no build stopped");

    // The build ends a few seconds in: the rollout waits for it, drains the node
    // (Nomad 0.5.6: only once nothing runs there), then terminates the instance.
    let ends = epoch_now() + 4.0;
    nomad.build(&format!("{group}-long"), &node(0), ends);
    tf.write_main(&format!(
        "{}{}",
        provider(endpoint),
        resource(&group, &["127.0.0.1:4647"], &extra(""))
    ));
    tf.ok(&["apply", "-auto-approve", "-no-color", "-input=false"]);
    // Drained (and so terminated) only once the build had ended.
    let drained_at = nomad.node(&node(0))["DrainedAt"].as_f64().unwrap();
    assert!(
        drained_at >= ends,
        "drained at {drained_at}, the build ended at {ends}"
    );
    let g = fixture(&s, &["group", "--name", &group]);
    assert_ne!(g["launch_configuration"], made["launch_configuration"]);
    let now = instance_ids(&g);
    assert!(
        ids.iter().all(|i| !now.contains(i)),
        "both clients replaced: {now:?} (before {ids:?})"
    );
    assert_eq!(strs(&attr(&tf, "replaced_instance_ids")).len(), 2);
    assert_eq!(
        nomad.node(&node(0))["Drain"],
        Json::Bool(true),
        "drained first"
    );
    assert_eq!(
        nomad.node(&node(1))["Drain"],
        Json::Bool(true),
        "drained first"
    );
    assert_eq!(nomad.stopped_by_drain(), drained_before, "no build stopped");
    assert_eq!(tf.plan_code(), 0);
}

#[test]
fn user_data_without_servers_is_refused_and_nothing_changes() {
    let s = servers();
    let _ci = circleci_stopped(&s);
    let endpoint = s.get("CIRCLECI_TEST_AWS_ENDPOINT");
    let group = unique("nomad-noservers");
    let dir = tempfile::tempdir().unwrap();
    let ud = dir.path().join("user-data.sh");
    std::fs::write(
        &ud,
        "#!/bin/bash\ncat <<EOT > /etc/nomad/config.hcl\nclient {\n  enabled = true\n}\nEOT\n",
    )
    .unwrap();
    let made = setup(&s, &group, "lc", ud.to_str().unwrap());
    let tf = Tf::new(&format!(
        "{}{}",
        provider(endpoint),
        resource(&group, &SERVERS, "")
    ));
    let out = flat(&tf.fails(&["apply", "-auto-approve", "-no-color", "-input=false"]));
    assert!(
        out.contains("No Nomad servers list in the user_data"),
        "{out}"
    );
    assert!(
        out.contains("the `client {` block at line 3 has neither a servers list nor"),
        "{out}"
    );
    assert!(
        out.contains("autoscaling_group_name"),
        "names the attribute: {out}"
    );
    let g = fixture(&s, &["group", "--name", &group]);
    assert_eq!(g["launch_configuration"], made["launch_configuration"]);
    assert_eq!(instance_ids(&g), instance_ids(&made));
    assert!(copies(&s, &group).is_empty());

    // A group that does not exist is named as such.
    tf.write_main(&format!(
        "{}{}",
        provider(endpoint),
        resource(&format!("{group}-missing"), &SERVERS, "")
    ));
    let out = tf.fails(&["apply", "-auto-approve", "-no-color", "-input=false"]);
    assert!(out.contains("Auto Scaling group not found"), "{out}");
}

#[test]
fn bad_input_is_refused_at_plan_with_the_attribute() {
    let tf = Tf::new(&format!(
        "{}{}",
        provider("http://127.0.0.1:1"),
        resource(
            "g",
            &["nomad-1:4647", "bad host\"; rm -rf /"],
            "  rollout = \"rolling\"\n"
        )
    ));
    let out = tf.fails(&["plan", "-no-color", "-input=false"]);
    assert!(out.contains("Invalid Nomad server address"), "{out}");
    assert!(
        out.contains("in resource \"circleci_nomad_client_launch_config\""),
        "{out}"
    );
    assert!(out.contains("Invalid rollout"), "{out}");
}

struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(s: &Servers) -> Moto {
        let port = closed_port();
        let child = Command::new(s.get("CIRCLECI_TEST_AWS_MOTO_SERVER"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (run `make services-up`)");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Moto { child, port };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("moto_server did not start on port {port}");
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn aws_stopped_is_a_clear_error() {
    let s = servers();
    let _ci = circleci_stopped(&s);
    let mut moto = Moto::start(&s);
    let endpoint = moto.endpoint();
    let group = unique("nomad-stopped");
    setup_at(
        &s,
        &endpoint,
        &group,
        "lc",
        s.get("CIRCLECI_TEST_NOMAD_USER_DATA"),
    );
    let tf = Tf::new(&format!(
        "{}{}",
        provider(&endpoint),
        resource(&group, &SERVERS, "")
    ));
    tf.apply();
    let _ = moto.child.kill();
    let _ = moto.child.wait();
    let out = tf.fails(&["plan", "-no-color", "-input=false"]);
    assert!(out.contains("AWS is not reachable"), "{out}");
    assert!(out.contains("DescribeAutoScalingGroups"), "{out}");

    // And on a first apply: nothing in the state, a clear error.
    let tf2 = Tf::new(&format!(
        "{}{}",
        provider(&endpoint),
        resource(&group, &SERVERS, "")
    ));
    let out = tf2.fails(&["apply", "-auto-approve", "-no-color", "-input=false"]);
    assert!(out.contains("AWS is not reachable"), "{out}");
    assert!(!tf2.path().join("terraform.tfstate").exists() || tf2.state_json()["values"].is_null());
}

#[test]
fn missing_credentials_are_named() {
    let s = servers();
    let _ci = circleci_stopped(&s);
    let tf = Tf::new(&format!(
        "{}{}",
        provider(s.get("CIRCLECI_TEST_AWS_ENDPOINT")),
        resource(&unique("nomad-nocreds"), &SERVERS, "")
    ));
    let out = tf
        .cmd(&["apply", "-auto-approve", "-no-color", "-input=false"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = flat(&String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("AWS credentials missing or refused"),
        "{text}"
    );
}

#[test]
fn a_plan_made_stale_by_a_changed_group_is_refused() {
    let s = servers();
    let _ci = circleci_stopped(&s);
    let endpoint = s.get("CIRCLECI_TEST_AWS_ENDPOINT");
    let group = unique("nomad-stale");
    setup(&s, &group, "lc", s.get("CIRCLECI_TEST_NOMAD_USER_DATA"));
    // A second group whose launch configuration names other servers.
    let dir = tempfile::tempdir().unwrap();
    let other_ud = dir.path().join("user-data.sh");
    let text = std::fs::read_to_string(s.get("CIRCLECI_TEST_NOMAD_USER_DATA")).unwrap();
    std::fs::write(&other_ud, text.replace("10.0.1.150:4647", "10.0.9.9:4647")).unwrap();
    let other = setup(
        &s,
        &format!("{group}-other"),
        "lc",
        other_ud.to_str().unwrap(),
    );
    let other_lc = other["launch_configuration"].as_str().unwrap();

    let original = fixture(&s, &["group", "--name", &group])["launch_configuration"]
        .as_str()
        .unwrap()
        .to_string();

    // A new resource: Terraform plans again at apply time, sees previous_servers changed
    // and stops before the provider changes anything.
    let tf = Tf::new(&format!(
        "{}{}",
        provider(endpoint),
        resource(&group, &SERVERS, "")
    ));
    tf.ok(&["plan", "-no-color", "-input=false", "-out=plan.bin"]);
    fixture(&s, &["point", "--name", &group, "--lc", other_lc]);
    let out = flat(&tf.fails(&["apply", "-no-color", "-input=false", "plan.bin"]));
    assert!(out.contains(".previous_servers"), "{out}");
    assert!(out.contains("10.0.9.9:4647"), "{out}");
    assert_eq!(
        fixture(&s, &["group", "--name", &group])["launch_configuration"],
        other_lc
    );
    assert!(copies(&s, &group).is_empty());

    // An existing one: the provider checks before it copies, and says what changed.
    fixture(&s, &["point", "--name", &group, "--lc", &original]);
    tf.apply();
    let ours = attr(&tf, "launch_configuration_name");
    tf.write_main(&format!(
        "{}{}",
        provider(endpoint),
        resource(&group, &SERVERS[..1], "")
    ));
    tf.ok(&["plan", "-no-color", "-input=false", "-out=plan.bin"]);
    fixture(&s, &["point", "--name", &group, "--lc", other_lc]);
    let out = flat(&tf.fails(&["apply", "-no-color", "-input=false", "plan.bin"]));
    assert!(
        out.contains("Launch configuration changed since plan"),
        "{out}"
    );
    assert!(out.contains("10.0.9.9:4647"), "{out}");
    assert!(out.contains("Run terraform plan again"), "{out}");
    assert_eq!(
        fixture(&s, &["group", "--name", &group])["launch_configuration"],
        other_lc
    );
    assert_eq!(copies(&s, &group), vec![ours.as_str().unwrap().to_string()]);
}

#[test]
fn restore_on_destroy_false_leaves_the_group_on_the_copy() {
    let s = servers();
    let _ci = circleci_stopped(&s);
    let endpoint = s.get("CIRCLECI_TEST_AWS_ENDPOINT");
    let group = unique("nomad-keep");
    let made = setup(&s, &group, "lc", s.get("CIRCLECI_TEST_NOMAD_USER_DATA"));
    let tf = Tf::new(&format!(
        "{}{}",
        provider(endpoint),
        resource(
            &group,
            &SERVERS,
            "  rollout = \"none\"\n  restore_on_destroy = false\n"
        )
    ));
    tf.apply();
    let ours = attr(&tf, "launch_configuration_name")
        .as_str()
        .unwrap()
        .to_string();
    tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"]);
    let g = fixture(&s, &["group", "--name", &group]);
    assert_eq!(g["launch_configuration"], ours.as_str());
    assert_eq!(copies(&s, &group), vec![ours]);
    assert_eq!(
        fixture(
            &s,
            &[
                "lc",
                "--name",
                made["launch_configuration"].as_str().unwrap()
            ]
        )["exists"],
        true
    );
}
