//! `circleci_nomad_client_static` through terraform, against a fleet of Nomad client
//! machines: one sshd per client on loopback (the dev sshd's configuration, its own
//! port), each with its own `/etc/nomad/config.hcl` (enterprise-setup's, as its
//! user_data writes it) and, first on its sessions' PATH only, the `systemctl` /
//! `service` stand-in (dev/standins/nomad_agent_standin.py). A "restart" re-registers the node
//! with a private Nomad stand-in (`--nodes-dir`), which lists it `initializing`, then
//! `ready` with a higher ModifyIndex; the tests count each client's restarts.

use crate::common;

use std::path::PathBuf;

use common::sim::{epoch_now, Sim, SIMULATOR};
use common::sshd::{self, Proc};
use common::{flat, servers, NomadStandin, Servers, Tf};

const OLD: &str = r#"["10.0.1.150:4647"]"#;

/// The config.hcl enterprise-setup's user_data writes, for the client at `ip`.
fn config_hcl(s: &Servers, ip: &str) -> String {
    let ud = std::fs::read_to_string(s.get("CIRCLECI_TEST_NOMAD_USER_DATA")).unwrap();
    let start = ud.find("cat <<EOT > /etc/nomad/config.hcl\n").unwrap();
    let body = &ud[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body.find("\nEOT\n").unwrap();
    format!("{}\n", &body[..end]).replace("$PRIVATE_IP", ip)
}

struct Client {
    name: String,
    port: u16,
    config: PathBuf,
    original: String,
    sshd: Option<Proc>,
}

struct Fleet {
    dir: tempfile::TempDir,
    nodes: PathBuf,
    bin: PathBuf,
    clients: Vec<Client>,
    nomad: NomadStandin,
    known_hosts: PathBuf,
    /// The simulated Services machine, CircleCI stopped unless a test starts it.
    sim: Sim,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Fleet {
    fn new(s: &Servers, n: usize) -> Fleet {
        Fleet::with(s, n, &[])
    }

    /// With `args` for the fleet's Nomad stand-in besides its nodes and allocations.
    fn with(s: &Servers, n: usize, args: &[&str]) -> Fleet {
        let turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
        let dir = common::searchable_tempdir();
        let bin = dir.path().join("bin");
        let nodes = dir.path().join("nodes");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&nodes).unwrap();
        let agent = common::repo_root().join("dev/standins/nomad_agent_standin.py");
        for tool in ["systemctl", "service"] {
            std::os::unix::fs::symlink(&agent, bin.join(tool)).unwrap();
        }
        let allocs = dir.path().join("allocs");
        std::fs::create_dir_all(&allocs).unwrap();
        let mut standin = vec![
            "--nodes-dir",
            nodes.to_str().unwrap(),
            "--allocs-dir",
            allocs.to_str().unwrap(),
        ];
        standin.extend_from_slice(args);
        let nomad = NomadStandin::start(s, &standin);
        let sim = Sim::new(s, serde_json::json!({"root": dir.path(), "transition": 1}));
        let mut clients = Vec::new();
        for i in 1..=n {
            let name = format!("client-{i}");
            let ip = format!("10.0.0.{i}");
            let config = dir.path().join(&name).join("etc/nomad/config.hcl");
            std::fs::create_dir_all(config.parent().unwrap()).unwrap();
            let original = config_hcl(s, &ip);
            assert!(original.contains(&format!("servers = {OLD}")), "{original}");
            std::fs::write(&config, &original).unwrap();
            // Registered and ready, as a running client is.
            std::fs::write(
                nodes.join(format!("{name}.json")),
                serde_json::json!({"Name": name, "Address": ip, "Restarts": 0, "RestartedAt": 0})
                    .to_string(),
            )
            .unwrap();
            clients.push(Client {
                name,
                port: common::closed_port(),
                config,
                original,
                sshd: None,
            });
        }
        // The clients, and the Services machine the provider block names.
        let mut ports: Vec<u16> = clients.iter().map(|c| c.port).collect();
        ports.push(s.ssh_port());
        let known_hosts = sshd::known_hosts(s, dir.path(), &ports);
        let mut f = Fleet {
            dir,
            nodes,
            bin,
            clients,
            nomad,
            known_hosts,
            sim,
            _turn: turn,
        };
        for i in 0..n {
            f.up(i);
        }
        f
    }

    /// Starts client `i`'s sshd: the stand-ins first on its sessions' PATH, its node name
    /// in their environment.
    fn up(&mut self, i: usize) {
        let env = format!(
            "SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin SHLVL=1 NOMAD_STANDIN_NODES={} NOMAD_STANDIN_NODE={}",
            self.bin.display(),
            self.nodes.display(),
            self.clients[i].name
        );
        let c = &mut self.clients[i];
        let (p, _) = sshd::start(
            self.dir.path(),
            c.port,
            &|line: &str| line.starts_with("SetEnv ").then(|| env.clone()),
            None,
        );
        c.sshd = Some(p);
    }

    /// Stops client `i`'s sshd (by PID): the machine is unreachable.
    fn down(&mut self, i: usize) {
        self.clients[i].sshd = None;
    }

    fn restarts(&self, i: usize) -> usize {
        std::fs::read_to_string(
            self.nodes
                .join(format!("{}.restarts", self.clients[i].name)),
        )
        .map(|t| t.lines().count())
        .unwrap_or(0)
    }

    fn file(&self, i: usize) -> String {
        std::fs::read_to_string(&self.clients[i].config).unwrap()
    }

    fn bytes(&self, i: usize) -> Vec<u8> {
        std::fs::read(&self.clients[i].config).unwrap()
    }

    /// Where the resource keeps client `i`'s original file, next to it.
    fn kept(&self, i: usize) -> PathBuf {
        let mut p = self.clients[i].config.clone().into_os_string();
        p.push(".circleci-original");
        PathBuf::from(p)
    }

    /// While set, client `i`'s agent fails to restart (the stand-in exits 1).
    fn break_agent(&self, i: usize, broken: bool) {
        let marker = self.nodes.join(format!("{}.fail", self.clients[i].name));
        if broken {
            std::fs::write(marker, "agent broken by the test").unwrap();
        } else {
            std::fs::remove_file(marker).unwrap();
        }
    }

    fn previous(&self, tf: &Tf, i: usize) -> serde_json::Value {
        let state = tf.state_json();
        state["values"]["root_module"]["resources"][0]["values"]["previous_servers"][self.key(i)]
            .clone()
    }

    /// The provider, and the resource over clients `which`.
    fn main_tf(&self, s: &Servers, which: &[usize], servers: &str, extra: &str) -> String {
        let provider = s.provider_block(&format!("known_hosts_file = {:?}", self.known_hosts));
        format!("{provider}{}", self.resource_tf(s, which, servers, extra))
    }

    /// The resource over clients `which`, with `extra` attributes.
    fn resource_tf(&self, s: &Servers, which: &[usize], servers: &str, extra: &str) -> String {
        let clients: String = which
            .iter()
            .map(|i| {
                let c = &self.clients[*i];
                format!(
                    "  client {{\n    host        = \"127.0.0.1\"\n    port        = {}\n    config_path = {:?}\n    node_name   = {:?}\n  }}\n",
                    c.port, c.config, c.name
                )
            })
            .collect();
        format!(
            r#"
resource "circleci_nomad_client_static" "fleet" {{
  nomad_servers  = {servers}
  nomad_endpoint = {endpoint:?}
  nomad_ca_file  = {ca:?}
  ready_timeout  = "20s"
  config_root    = {root:?}
  embedded_nomad_endpoint = {embedded:?}
{extra}
{clients}}}
"#,
            endpoint = self.nomad.endpoint(),
            ca = s.get("CIRCLECI_TEST_TLS_CA"),
            root = self.dir.path(),
            embedded = s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"),
        )
    }

    fn key(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.clients[i].port)
    }

    /// CircleCI started, scheduling on the fleet's Nomad (its nomad file names it), or
    /// with `None` on its embedded one (no nomad file).
    fn circleci_running_on(&self, s: &Servers, nomad: Option<&str>) {
        let file = self.dir.path().join("etc/circleconfig/shared/nomad");
        match nomad {
            Some(e) => {
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, format!("export NOMAD_API_ENDPOINT={e}\n")).unwrap();
            }
            None => {
                let _ = std::fs::remove_file(&file);
            }
        }
        let _ = s;
        self.sim.start();
    }

    /// A build on client `i` that runs until `ends_at`.
    fn build(&self, i: usize, id: &str, ends_at: f64) {
        std::fs::write(
            self.dir.path().join(format!("allocs/{id}.json")),
            serde_json::json!({"ID": id, "Name": format!("{id}.build[0]"), "JobID": id,
                               "NodeID": self.clients[i].name, "EndsAt": ends_at})
            .to_string(),
        )
        .unwrap();
    }

    /// What the stand-in logged of allocations a drain stopped.
    fn stopped_by_drain(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("allocs/stopped-by-drain.log"))
            .unwrap_or_default()
    }

    /// Client `i`'s node as the stand-in keeps it.
    fn node(&self, i: usize) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.nodes.join(format!("{}.json", self.clients[i].name)))
                .unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// With CircleCI running on the fleet's Nomad (`version`), a move waits for the build on
/// the first client, drains it, restarts it and lifts the drain; nothing is stopped by a
/// drain. Returns the fleet for the version's own checks.
fn roll_while_running(version: &str) -> Fleet {
    let s = servers();
    let f = Fleet::with(
        &s,
        2,
        &[
            "--version",
            version,
            "--peers",
            "127.0.0.1:4647,127.0.0.2:4647",
        ],
    );
    f.circleci_running_on(&s, Some(&f.nomad.endpoint()));
    let ends = epoch_now() + 4.0;
    f.build(0, "build-7", ends);
    let main = f.main_tf(
        &s,
        &[0, 1],
        r#"["127.0.0.1:4647", "127.0.0.2"]"#,
        "  builds_timeout = \"60s\"\n",
    );
    let tf = Tf::new(&main);
    let out = flat(&tf.ok(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        f.file(0)
            .contains(r#"servers = ["127.0.0.1:4647", "127.0.0.2"]"#),
        "{out}"
    );
    assert_eq!((f.restarts(0), f.restarts(1)), (1, 1));
    let node = f.node(0);
    assert!(
        node["RestartedAt"].as_f64().unwrap() >= ends,
        "client-1 was restarted before its build ended: {node}"
    );
    assert_eq!(f.stopped_by_drain(), "", "a drain stopped a build");
    assert_eq!(node["Drain"], false, "the drain was not lifted: {node}");
    assert!(
        node["DrainChanges"].as_i64().unwrap() >= 2,
        "client-1 was never drained: {node}"
    );
    assert_eq!(tf.plan_code(), 0, "a second plan is empty");
    f
}

#[test]
fn with_circleci_running_a_roll_waits_for_builds_and_drains_on_0_5_6() {
    let f = roll_while_running("0.5.6");
    assert!(f.node(0).get("Eligibility").is_none());
}

#[test]
fn with_circleci_running_a_roll_drains_with_a_deadline_on_0_8() {
    let f = roll_while_running("0.8.7");
    for i in 0..2 {
        let node = f.node(i);
        assert_eq!(node["Eligibility"], "eligible", "{node}");
        assert!(node["DrainChanges"].as_i64().unwrap_or(0) >= 2, "{node}");
    }
}

/// With CircleCI running on the fleet's Nomad (`version`), a build that outlasts
/// `builds_timeout` stops the roll naming it, the client unchanged and the build never
/// stopped by a drain.
fn a_build_past_builds_timeout(version: &str) -> Fleet {
    let s = servers();
    let f = Fleet::with(&s, 1, &["--version", version]);
    f.circleci_running_on(&s, Some(&f.nomad.endpoint()));
    f.build(0, "build-long", epoch_now() + 3600.0);
    let main = f.main_tf(
        &s,
        &[0],
        r#"["127.0.0.1:4647"]"#,
        "  builds_timeout = \"2s\"\n",
    );
    let tf = Tf::new(&main);
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        err.contains("1 build(s) still run on node \"client-1\" after 2s (builds_timeout): build-long.build[0]"),
        "{err}"
    );
    assert_eq!(f.file(0), f.clients[0].original);
    assert_eq!(f.restarts(0), 0);
    assert_eq!(f.stopped_by_drain(), "", "a drain stopped the build");
    f
}

#[test]
fn a_build_past_builds_timeout_stops_the_roll_before_any_drain_on_0_5_6() {
    let f = a_build_past_builds_timeout("0.5.6");
    // Before 0.8 a drain would have stopped the build: none was enabled.
    assert!(
        f.node(0).get("DrainChanges").is_none(),
        "drained: {}",
        f.node(0)
    );
}

#[test]
fn a_build_past_builds_timeout_stops_the_roll_and_lifts_the_drain_on_0_8() {
    let f = a_build_past_builds_timeout("0.8.7");
    let node = f.node(0);
    // Drained (no new build), then lifted and eligible again: as before the roll.
    assert!(node["DrainChanges"].as_i64().unwrap_or(0) >= 2, "{node}");
    assert_eq!(node["Drain"], false, "{node}");
    assert_eq!(node["Eligibility"], "eligible", "{node}");
}

#[test]
fn a_roll_that_fails_inside_a_cutover_puts_every_client_back_and_starts_circleci() {
    let s = servers();
    let f = Fleet::new(&s, 2);
    // A cutover under way: CircleCI stopped by it, its record open (as the migration
    // leaves them before the clients move).
    let record = f
        .dir
        .path()
        .join("data/circle/external-services-cutover/record.json");
    std::fs::create_dir_all(record.parent().unwrap()).unwrap();
    let modified =
        f.sim.replicatedctl(&["app", "status", "-o", "json"])[0]["LastModifiedAt"].clone();
    std::fs::write(
        &record,
        serde_json::json!({"version": 1, "taken_at": "", "nomad_servers": [], "nomad_clients": [],
                           "app_modified": [modified]})
        .to_string(),
    )
    .unwrap();
    // The second client's node never comes back ready: the roll stops there.
    let main = f
        .main_tf(&s, &[0, 1], r#"["nomad-1.internal:4647"]"#, "")
        .replace(
            "node_name   = \"client-2\"",
            "node_name   = \"not-in-nomad\"",
        )
        .replace("ready_timeout  = \"20s\"", "ready_timeout  = \"2s\"");
    let tf = Tf::new(&main);
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        err.contains("The roll over the Nomad clients stopped"),
        "{err}"
    );
    assert!(
        err.contains("CircleCI is back as it was before this apply"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "the servers lists of {} are back as they were",
            [f.key(0), f.key(1)].join(", ")
        )) || err.contains(&format!(
            "the servers lists of {} are back as they were",
            [f.key(1), f.key(0)].join(", ")
        )),
        "{err}"
    );
    assert_eq!(f.file(0), f.clients[0].original);
    assert_eq!(f.file(1), f.clients[1].original);
    assert!(!f.kept(0).exists() && !f.kept(1).exists());
    assert_eq!(f.sim.state(), "started");
    assert!(!record.exists(), "the record of the undone cutover stays");
}

#[test]
fn with_circleci_running_clients_are_not_moved_to_servers_it_does_not_use() {
    let s = servers();
    let f = Fleet::new(&s, 1);
    // CircleCI on its embedded Nomad (no nomad file); the clients asked to go elsewhere.
    f.circleci_running_on(&s, None);
    let tf = Tf::new(&f.main_tf(&s, &[0], r#"["nomad-1.internal:4647"]"#, ""));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        err.contains("Clients would leave the Nomad CircleCI uses"),
        "{err}"
    );
    assert!(
        err.contains("nomad-1.internal:4647 is not among them"),
        "{err}"
    );
    assert!(
        err.contains("with circleci_nomad_client_static.fleet"),
        "{err}"
    );
    assert_eq!(f.file(0), f.clients[0].original);
    assert!(
        !f.kept(0).exists(),
        "nothing may change, not even the kept copy"
    );
    assert_eq!(f.restarts(0), 0);
}

/// The original file with only the servers list's bytes changed.
fn with_servers(original: &str, list: &str) -> String {
    original.replacen(OLD, list, 1)
}

#[test]
fn a_fleet_is_rolled_in_batches_continued_after_a_failure_and_restored() {
    let s = servers();
    let mut f = Fleet::new(&s, 3);
    let new = r#"["nomad-1.internal:4647", "nomad-2.internal:4647"]"#;

    // A first apply checks every client before it changes any: one machine that does not
    // answer stops it with nothing changed.
    f.down(2);
    let tf = Tf::new(&f.main_tf(&s, &[0, 1, 2], new, "  batch_size = 2"));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(err.contains("Not every Nomad client is ready"), "{err}");
    assert!(err.contains(&f.key(2)), "{err}");
    assert!(err.contains("Nothing was changed on any client"), "{err}");
    for i in 0..3 {
        assert_eq!(f.file(i), f.clients[i].original);
        assert_eq!(f.restarts(i), 0);
    }
    f.up(2);

    // Three clients, two at a time: only the servers bytes change, each agent restarts
    // once and is seen ready again.
    let out = tf.apply();
    assert!(out.contains("Apply complete! Resources: 1 added"), "{out}");
    for i in 0..3 {
        assert_eq!(
            f.file(i),
            with_servers(&f.clients[i].original, new),
            "client {i}"
        );
        assert_eq!(f.restarts(i), 1, "client {i}");
    }
    let state = tf.state_json();
    let attrs = &state["values"]["root_module"]["resources"][0]["values"];
    for i in 0..3 {
        assert_eq!(attrs["client_status"][f.key(i)], "ok", "{attrs}");
        assert_eq!(
            attrs["previous_servers"][f.key(i)],
            serde_json::json!(["10.0.1.150:4647"])
        );
    }
    assert_eq!(tf.plan_code(), 0, "the next plan is empty");

    // A client edited by hand: the plan names it, the apply rolls only it again.
    std::fs::write(&f.clients[1].config, &f.clients[1].original).unwrap();
    let plan = flat(&tf.ok(&["plan", "-no-color"]));
    assert!(
        plan.contains(r#"servers list is [\"10.0.1.150:4647\"]"#)
            || plan.contains(r#"servers list is ["10.0.1.150:4647"]"#),
        "{plan}"
    );
    tf.apply();
    assert_eq!(
        [f.restarts(0), f.restarts(1), f.restarts(2)],
        [1, 2, 1],
        "only the drifted client restarted"
    );
    assert_eq!(f.file(1), with_servers(&f.clients[1].original, new));

    // New servers, one client at a time, the second machine down: the roll stops there,
    // the state records the first as done.
    let newer = r#"["nomad-3.internal:4647"]"#;
    f.down(1);
    tf.write_main(&f.main_tf(&s, &[0, 1, 2], newer, ""));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        err.contains("The roll over the Nomad clients stopped"),
        "{err}"
    );
    assert!(err.contains(&f.key(1)), "{err}");
    assert_eq!(f.file(0), with_servers(&f.clients[0].original, newer));
    assert_eq!(
        f.file(2),
        with_servers(&f.clients[2].original, new),
        "not reached"
    );
    let restarts = [f.restarts(0), f.restarts(1), f.restarts(2)];
    assert_eq!(restarts, [2, 2, 1]);
    // Back up: the next apply finishes only what was left.
    f.up(1);
    tf.apply();
    assert_eq!([f.restarts(0), f.restarts(1), f.restarts(2)], [2, 3, 2]);
    for i in 0..3 {
        assert_eq!(
            f.file(i),
            with_servers(&f.clients[i].original, newer),
            "client {i}"
        );
    }
    assert_eq!(tf.plan_code(), 0);

    // Destroy puts every client's previous list back: the original files, byte for byte.
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    for i in 0..3 {
        assert_eq!(f.file(i), f.clients[i].original, "client {i}");
    }
    assert_eq!([f.restarts(0), f.restarts(1), f.restarts(2)], [3, 4, 3]);

    // Import: the clients (with their files' paths); nomad_servers read from the first.
    let tf = Tf::new(&f.main_tf(&s, &[0, 1, 2], OLD, ""));
    let id: Vec<String> = (0..3)
        .map(|i| format!("{}={}", f.key(i), f.clients[i].config.display()))
        .collect();
    tf.ok(&[
        "import",
        "-no-color",
        "circleci_nomad_client_static.fleet",
        &id.join(","),
    ]);
    let state = tf.state_json();
    let attrs = &state["values"]["root_module"]["resources"][0]["values"];
    assert_eq!(
        attrs["nomad_servers"],
        serde_json::json!(["10.0.1.150:4647"])
    );
    for i in 0..3 {
        assert_eq!(attrs["client_status"][f.key(i)], "ok", "{attrs}");
    }
    // The configuration adds node names: an update that finds every file right and
    // restarts nothing.
    tf.apply();
    assert_eq!([f.restarts(0), f.restarts(1), f.restarts(2)], [3, 4, 3]);
    assert_eq!(tf.plan_code(), 0);
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    for i in 0..3 {
        assert_eq!(f.file(i), f.clients[i].original, "client {i}");
    }
}

#[test]
fn an_interrupted_or_frozen_roll_converges() {
    let s = servers();
    let f = Fleet::new(&s, 3);
    let a = r#"["nomad-1.internal:4647"]"#;
    let tf = Tf::new(&f.main_tf(&s, &[0, 1, 2], a, ""));
    tf.apply();
    let restarts = |f: &Fleet| [f.restarts(0), f.restarts(1), f.restarts(2)];
    assert_eq!(restarts(&f), [1, 1, 1]);

    // Ctrl-C between two batches of an update: the roll stops there, the state says so.
    let b = r#"["nomad-2.internal:4647"]"#;
    tf.write_main(&f.main_tf(&s, &[0, 1, 2], b, ""));
    let faults = tempfile::tempdir().unwrap();
    let point = "circleci_nomad_client_static.between_batches";
    std::fs::write(faults.path().join(format!("{point}.armed")), "").unwrap();
    let child = common::spawn_apply_with_faults(&tf, faults.path());
    common::wait_reached(faults.path(), point, 60);
    let (ok, text) = common::interrupt(child, faults.path(), point);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "stopped (Terraform was interrupted) before {}",
            f.key(1)
        )),
        "{text}"
    );
    assert_eq!(restarts(&f), [2, 1, 1]);
    assert_eq!(f.file(0), with_servers(&f.clients[0].original, b));
    assert_eq!(f.file(1), with_servers(&f.clients[1].original, a));
    tf.apply();
    assert_eq!(
        restarts(&f),
        [2, 2, 2],
        "the next apply rolls only the rest"
    );
    assert_eq!(tf.plan_code(), 0);

    // A frozen client machine (its sshd stopped with SIGSTOP): the roll fails within the
    // SSH deadline (10 s here), naming it; thawed, the next apply converges.
    let c = r#"["nomad-3.internal:4647"]"#;
    tf.write_main(&f.main_tf(&s, &[0, 1, 2], c, ""));
    let pid = f.clients[1].sshd.as_ref().unwrap().0.id().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    let started = std::time::Instant::now();
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    let took = started.elapsed();
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    assert!(err.contains(&f.key(1)), "{err}");
    assert!(
        took < std::time::Duration::from_secs(25),
        "the frozen client held the apply {took:?}"
    );
    assert_eq!(restarts(&f), [3, 2, 2]);
    tf.apply();
    assert_eq!(restarts(&f), [3, 3, 3]);
    for i in 0..3 {
        assert_eq!(
            f.file(i),
            with_servers(&f.clients[i].original, c),
            "client {i}"
        );
    }
    assert_eq!(tf.plan_code(), 0);
}

#[test]
fn clients_only_the_services_machine_reaches_are_rolled_through_it() {
    let s = servers();
    let f = Fleet::new(&s, 2);
    // A Services machine whose sshd forwards only to the first client (and Nomad's API).
    let services_port = common::closed_port();
    let permit = format!(
        "PermitOpen 127.0.0.1:{} 127.0.0.1:{}",
        f.clients[0].port, f.nomad.port
    );
    let (_services, log) = sshd::start(
        f.dir.path(),
        services_port,
        &|line: &str| line.starts_with("PermitOpen ").then(|| permit.clone()),
        None,
    );
    let known = sshd::known_hosts(
        &s,
        f.dir.path(),
        &[services_port, f.clients[0].port, f.clients[1].port],
    );
    let provider = s
        .provider_block_on(services_port, &format!("known_hosts_file = {known:?}"), "")
        .replace(
            "provider \"circleci\" {",
            "provider \"circleci\" {\n  via_services_host = true",
        );
    let new = r#"["nomad-1.internal:4647"]"#;
    // The second client is not permitted: the first apply names that hop, changes nothing.
    let tf = Tf::new(&format!(
        "{provider}{}",
        f.resource_tf(&s, &[0, 1], new, "")
    ));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        err.contains(&format!("refused the tunnel to {}", f.key(1))),
        "{err}"
    );
    assert_eq!([f.restarts(0), f.restarts(1)], [0, 0]);
    // The first alone goes through: the Services machine's sshd carried its SSH.
    tf.write_main(&format!("{provider}{}", f.resource_tf(&s, &[0], new, "")));
    tf.apply();
    assert_eq!(f.file(0), with_servers(&f.clients[0].original, new));
    assert_eq!([f.restarts(0), f.restarts(1)], [1, 0]);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains(&format!("target 127.0.0.1 port {}", f.clients[0].port)),
        "{log}"
    );
    assert_eq!(tf.plan_code(), 0);
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(f.file(0), f.clients[0].original);
}

#[test]
fn a_node_that_is_not_ready_again_stops_the_roll() {
    let s = servers();
    let f = Fleet::new(&s, 1);
    // The Nomad servers never list this node: the agent was restarted, the wait ends.
    let main = f
        .main_tf(&s, &[0], r#"["nomad-9.internal:4647"]"#, "")
        .replace(
            "node_name   = \"client-1\"",
            "node_name   = \"not-in-nomad\"",
        )
        .replace("ready_timeout  = \"20s\"", "ready_timeout  = \"2s\"");
    assert!(
        main.contains("not-in-nomad") && main.contains("\"2s\""),
        "{main}"
    );
    let tf = Tf::new(&main);
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        err.contains(
            r#"did not list node "not-in-nomad" as ready again within 2s (last seen: not listed)"#
        ),
        "{err}"
    );
    assert_eq!(f.restarts(0), 1, "the agent was restarted before the wait");
}

/// `bytes` with every `from` replaced by `to`.
fn replace_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn bytes_that_are_not_utf8_and_each_list_come_back_exactly() {
    let s = servers();
    let f = Fleet::new(&s, 1);
    // The operator's file: Latin-1 bytes (0xE9, 0xE0: not UTF-8) outside the lists, and a
    // second list (server_join.retry_join) with its own servers and spacing.
    let second = r#"[ "10.0.1.151:4647" ]"#;
    let original = [
        b"# Nomad client, \xe9dit\xe9 \xe0 la main (Latin-1)\n".as_slice(),
        f.clients[0]
            .original
            .replace(
                "    node_class",
                &format!(
                    "    server_join {{\n        retry_join = {second} # caf\u{e9}\n    }}\n    node_class"
                ),
            )
            .as_bytes(),
    ]
    .concat();
    assert!(std::str::from_utf8(&original).is_err());
    std::fs::write(&f.clients[0].config, &original).unwrap();
    let new = r#"["nomad-1.internal:4647"]"#;
    let tf = Tf::new(&f.main_tf(&s, &[0], new, ""));
    tf.apply();
    // Only the servers bytes differ.
    let rewritten = replace_bytes(
        &replace_bytes(&original, OLD.as_bytes(), new.as_bytes()),
        second.as_bytes(),
        new.as_bytes(),
    );
    assert_eq!(
        String::from_utf8_lossy(&f.bytes(0)),
        String::from_utf8_lossy(&rewritten)
    );
    assert_eq!(f.bytes(0), rewritten);
    // The original is kept next to the file, owner-only.
    assert_eq!(std::fs::read(f.kept(0)).unwrap(), original);
    assert_eq!(common::mode_of(&f.kept(0)), 0o600);
    assert_eq!(f.previous(&tf, 0), serde_json::json!(["10.0.1.150:4647"]));
    assert_eq!(tf.plan_code(), 0);
    // Destroy: the original file byte for byte, each list its own; the copy gone.
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(
        String::from_utf8_lossy(&f.bytes(0)),
        String::from_utf8_lossy(&original)
    );
    assert_eq!(f.bytes(0), original);
    assert!(!f.kept(0).exists());
    assert_eq!(f.restarts(0), 2);
}

#[test]
fn a_create_that_failed_after_the_write_or_a_replacement_keeps_the_original() {
    let s = servers();
    let f = Fleet::new(&s, 1);
    let new = r#"["nomad-1.internal:4647"]"#;
    // The file is rewritten, then the agent does not restart: the create fails (tainted).
    f.break_agent(0, true);
    let tf = Tf::new(&f.main_tf(&s, &[0], new, ""));
    let err = flat(&tf.fails(&["apply", "-auto-approve", "-no-color"]));
    assert!(
        err.contains("the file was rewritten, but `systemctl 'restart' 'nomad'` exited"),
        "{err}"
    );
    assert!(err.contains("agent broken by the test"), "{err}");
    assert_eq!(f.file(0), with_servers(&f.clients[0].original, new));
    assert_eq!(f.restarts(0), 0);
    // Fixed, the next apply replaces the tainted resource: the original list is still
    // the one recorded, though the file held the new one when this apply began.
    f.break_agent(0, false);
    tf.apply();
    assert_eq!(f.file(0), with_servers(&f.clients[0].original, new));
    assert_eq!(f.previous(&tf, 0), serde_json::json!(["10.0.1.150:4647"]));
    assert_eq!(tf.plan_code(), 0);
    // A replacement asked for by hand (its create starts with no prior state either).
    tf.ok(&[
        "apply",
        "-auto-approve",
        "-no-color",
        "-input=false",
        "-replace=circleci_nomad_client_static.fleet",
    ]);
    assert_eq!(f.previous(&tf, 0), serde_json::json!(["10.0.1.150:4647"]));
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(f.file(0), f.clients[0].original);
    assert!(!f.kept(0).exists());
}

/// SIGKILL to the provider processes terraform (`child`) started.
fn kill_provider(child: &std::process::Child) {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &child.id().to_string()])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("terraform-prov"))
        })
        .map(str::to_string)
        .collect();
    assert!(!pids.is_empty(), "no provider process under {}", child.id());
    for p in pids {
        std::process::Command::new("kill")
            .args(["-KILL", &p])
            .status()
            .unwrap();
    }
}

#[test]
fn a_provider_killed_after_the_write_keeps_the_original() {
    let s = servers();
    let f = Fleet::new(&s, 1);
    let new = r#"["nomad-1.internal:4647"]"#;
    let tf = Tf::new(&f.main_tf(&s, &[0], new, ""));
    let faults = tempfile::tempdir().unwrap();
    let point = "circleci_nomad_client_static.after_write";
    std::fs::write(faults.path().join(format!("{point}.armed")), "").unwrap();
    let child = common::spawn_apply_with_faults(&tf, faults.path());
    common::wait_reached(faults.path(), point, 60);
    kill_provider(&child);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    // Written, not restarted, and Terraform recorded nothing.
    assert_eq!(f.file(0), with_servers(&f.clients[0].original, new));
    assert_eq!(f.restarts(0), 0);
    tf.apply();
    assert_eq!(f.previous(&tf, 0), serde_json::json!(["10.0.1.150:4647"]));
    assert_eq!(
        f.restarts(0),
        1,
        "the agent the killed apply left is restarted"
    );
    assert_eq!(tf.plan_code(), 0);

    // A state from before the kept copies (the copy gone): the next roll keeps the file
    // with the list the state records as its original.
    std::fs::remove_file(f.kept(0)).unwrap();
    let newer = r#"["nomad-2.internal:4647"]"#;
    tf.write_main(&f.main_tf(&s, &[0], newer, ""));
    tf.apply();
    assert_eq!(
        std::fs::read(f.kept(0)).unwrap(),
        f.clients[0].original.as_bytes()
    );
    assert_eq!(f.previous(&tf, 0), serde_json::json!(["10.0.1.150:4647"]));
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(f.file(0), f.clients[0].original);
    assert!(!f.kept(0).exists());

    // restore_on_destroy = false: the list stays, the copy goes.
    tf.write_main(&f.main_tf(&s, &[0], new, "  restore_on_destroy = false"));
    tf.apply();
    assert!(f.kept(0).exists());
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(f.file(0), with_servers(&f.clients[0].original, new));
    assert!(!f.kept(0).exists());
}

#[test]
fn bad_input_names_the_attribute() {
    let s = servers();
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        r#"
resource "circleci_nomad_client_static" "fleet" {
  nomad_servers = ["nomad 1"]
  restart       = "reboot"
  service_name  = "nomad; rm -rf /"
  batch_size    = 0
  client {
    host        = "bad host"
    config_path = "relative/config.hcl"
  }
}
"#
    ));
    let out = flat(&tf.fails(&["plan", "-no-color"]));
    for needle in [
        "Invalid Nomad server",
        "restart",
        "Invalid service name",
        "Invalid batch size",
        "Invalid host",
        "must be an absolute path",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}
