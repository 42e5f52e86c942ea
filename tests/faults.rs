//! The fault suite: for every resource, each fault injected at a known phase of a real
//! `terraform apply`, then a plain `terraform apply`, and the checks that matter to an
//! operator: the second apply converges (the next plan is empty), no config file is
//! left half-written, nothing leaks (roles, users, tokens, launch configuration copies),
//! and a frozen server fails the apply within its deadline instead of hanging it.
//!
//! Faults are injected at the provider's fault points (`src/fault_point.rs`): the test
//! arms a point, the provider holds there, the test injects the fault by PID and lets
//! it go. The servers are the shared dev servers; a killed one is started again by
//! `dev/services/up.sh`, a frozen one is thawed, whatever happens (see `Thaw`).
//!
//! The table is printed, and written to `dev/.state/faults.txt` (`make faults` shows it).

// Tests may panic (that is how they fail) and cast freely (their numbers are small).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

#[path = "it/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{flat, servers, Servers, Tf};
use serde_json::Value as Json;

/// The deadline every backend gets in this suite (connect, statement, request).
const DEADLINE: Duration = Duration::from_secs(3);
/// PostgreSQL's statement_timeout here; the provider gives up 5 s after it.
const PG_STATEMENT: Duration = Duration::from_secs(2);
/// What the issue allows past a deadline.
const SLACK: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Res {
    Redis,
    RabbitMq,
    Nomad,
    Postgres,
    Mongo,
    Vault,
    LaunchConfig,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// The backend killed (SIGKILL) before the apply starts.
    KillBefore,
    /// The backend killed when the apply reaches its backend step.
    KillDuring,
    /// The backend frozen (SIGSTOP) during the apply; thawed after it failed.
    Freeze,
    /// sshd (the listener and every session) killed after the backend step, before
    /// the write.
    SshdKilled,
    /// `terraform apply` interrupted (SIGINT to its process group, as Ctrl-C does) in
    /// the middle of the resource's long step.
    Interrupt,
    /// The provider's process killed (SIGKILL), as a crash or the OOM killer would:
    /// nothing of its own clean-up runs.
    ProviderKilled,
    /// The config file's directory not writable by the SSH user.
    Unwritable,
}

impl Res {
    const ALL: [Res; 7] = [
        Res::Redis,
        Res::RabbitMq,
        Res::Nomad,
        Res::Postgres,
        Res::Mongo,
        Res::Vault,
        Res::LaunchConfig,
    ];

    fn type_name(self) -> &'static str {
        match self {
            Res::Redis => "circleci_external_redis",
            Res::RabbitMq => "circleci_external_rabbitmq",
            Res::Nomad => "circleci_external_nomad",
            Res::Postgres => "circleci_postgres_databases",
            Res::Mongo => "circleci_external_mongo",
            Res::Vault => "circleci_vault_transit_client",
            Res::LaunchConfig => "circleci_nomad_client_launch_config",
        }
    }

    fn backend(self) -> Backend {
        match self {
            Res::Redis => Backend::Redis,
            Res::RabbitMq => Backend::RabbitMq,
            Res::Nomad => Backend::Nomad,
            Res::Postgres => Backend::Postgres,
            Res::Mongo => Backend::Mongo,
            Res::Vault => Backend::Vault,
            Res::LaunchConfig => Backend::Moto,
        }
    }

    /// The faults that apply: the launch configuration has no file and no SSH; moto
    /// keeps its state in memory, so a killed moto would take the test's group with it.
    fn faults(self) -> Vec<Fault> {
        match self {
            Res::LaunchConfig => vec![Fault::Freeze, Fault::Interrupt],
            _ => vec![
                Fault::KillBefore,
                Fault::KillDuring,
                Fault::Freeze,
                Fault::SshdKilled,
                Fault::Interrupt,
                Fault::Unwritable,
            ],
        }
    }

    /// Where the fault is injected, for the faults that need a moment in the apply.
    fn point(self, f: Fault) -> Option<String> {
        let phase = match (self, f) {
            (_, Fault::KillBefore | Fault::Unwritable) => return None,
            (Res::LaunchConfig, _) => "after_switch",
            (Res::Postgres, Fault::Freeze | Fault::Interrupt) => "database_loop",
            (_, Fault::SshdKilled | Fault::Interrupt) => "after_backend",
            (_, _) => "before_backend",
        };
        Some(format!("{}.{phase}", self.type_name()))
    }

    /// How long a frozen backend may hold the apply.
    fn deadline(self) -> Duration {
        match self {
            // Frozen mid-loop: the statement deadline (statement_timeout + 5 s).
            Res::Postgres => PG_STATEMENT + Duration::from_secs(5),
            _ => DEADLINE,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Redis,
    RabbitMq,
    Nomad,
    Postgres,
    Mongo,
    Vault,
    Moto,
    Sshd,
}

fn state_dir() -> PathBuf {
    common::repo_root().join("dev/.state")
}

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Every process below `pid`.
fn descendants(pid: i32) -> Vec<i32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    let direct: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let mut all = direct.clone();
    for c in direct {
        all.extend(descendants(c));
    }
    all
}

impl Backend {
    /// The processes that make up the server: for PostgreSQL and sshd, the listener
    /// and its children (backends, sessions).
    fn pids(self) -> Vec<i32> {
        let d = state_dir();
        let file = match self {
            Backend::Redis => d.join("redis.pid"),
            Backend::RabbitMq => d.join("rabbitmq/rabbitmq.pid"),
            Backend::Nomad => d.join("nomad.pid"),
            Backend::Postgres => d.join("pg/data/postmaster.pid"),
            Backend::Mongo => d.join("mongo.pid"),
            Backend::Vault => d.join("bao.pid"),
            Backend::Moto => d.join("moto.pid"),
            Backend::Sshd => d.join("sshd.pid"),
        };
        let Some(pid) = read_pid(&file) else {
            panic!("{self:?} is not running ({} missing)", file.display())
        };
        let mut all = vec![pid];
        if matches!(self, Backend::Postgres | Backend::Sshd) {
            all.extend(descendants(pid));
        }
        all
    }

    fn signal(self, sig: &str) {
        for pid in self.pids() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    fn kill(self) {
        let pids = self.pids();
        self.signal("-KILL");
        for pid in pids {
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Starts whatever is not running (idempotent), as `make test` did.
fn services_up() {
    let st = Command::new(common::repo_root().join("dev/services/up.sh"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "dev/services/up.sh failed");
}

/// Thaws every backend this suite may have frozen and restarts any it killed, also
/// when a check panics, so the test binaries after this one find their servers.
struct Thaw;

impl Drop for Thaw {
    fn drop(&mut self) {
        for b in [
            Backend::Redis,
            Backend::RabbitMq,
            Backend::Nomad,
            Backend::Postgres,
            Backend::Mongo,
            Backend::Vault,
            Backend::Moto,
            Backend::Sshd,
        ] {
            if std::panic::catch_unwind(|| b.signal("-CONT")).is_err() {
                eprintln!("{b:?} was not running");
            }
        }
        services_up();
    }
}

/// One scenario's names, paths and Terraform directory.
struct Scenario<'a> {
    s: &'a Servers,
    res: Res,
    fault: Fault,
    /// Unique per scenario: role, database, user, key and group names.
    tag: String,
    /// The directory the config file goes in, owned by the SSH user.
    dir: PathBuf,
    faults_dir: tempfile::TempDir,
    tf: Tf,
    /// The Auto Scaling group and its original launch configuration.
    group: Option<(String, String)>,
}

fn sudo_user(s: &Servers) -> String {
    s.get("CIRCLECI_TEST_SSH_SUDO_USER").to_string()
}

fn uid_gid(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, user]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// CircleCI stopped on the simulated Services machine: the client rolls move freely.
/// (The simulator is put back before the next test may take its turn.)
fn circleci_stopped(s: &Servers) -> (common::sim::Sim, std::sync::MutexGuard<'static, ()>) {
    let turn = common::sim::SIMULATOR
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    (
        common::sim::Sim::new(s, serde_json::json!({"transition": 1})),
        turn,
    )
}

/// The provider, on the Services machine as the sudo user without sudo (the file
/// resources' permissions are part of what is checked), except for the client rolls:
/// they ask Replicated whether CircleCI runs, which takes root there.
fn provider_block(s: &Servers, res: Res) -> String {
    let t = |d: Duration| format!("{}s", d.as_secs());
    format!(
        r#"
terraform {{
  required_providers {{
    circleci = {{ source = "circleci/circleci" }}
  }}
}}

provider "circleci" {{
  services_host {{
    host             = "127.0.0.1"
    port             = {ssh}
    user             = {user:?}
    sudo             = false
    private_key_file = {key:?}
    known_hosts_file = {known:?}
    timeout          = "{dl}"
  }}
  postgres {{
    host              = "127.0.0.1"
    port              = {pg}
    username          = "postgres"
    password          = {pgpw:?}
    sslmode           = "verify-full"
    sslrootcert       = {pgca:?}
    connect_timeout   = "{dl}"
    statement_timeout = "{st}"
    lock_timeout      = "{st}"
  }}
  vault {{
    address      = {vault:?}
    token        = {vtoken:?}
    ca_cert_file = {vca:?}
    timeout      = "{dl}"
  }}
  mongodb {{
    uri     = {mongo:?}
    timeout = "{dl}"
  }}
  aws {{
    region   = "us-east-1"
    endpoint = {aws:?}
    timeout  = "{dl}"
  }}
}}
"#,
        ssh = s.ssh_port(),
        user = if res == Res::LaunchConfig {
            "root".to_string()
        } else {
            sudo_user(s)
        },
        key = s.get("CIRCLECI_TEST_SSH_KEY_FILE"),
        known = s.get("CIRCLECI_TEST_SSH_KNOWN_HOSTS"),
        dl = t(DEADLINE),
        st = t(PG_STATEMENT),
        pg = s.pg_port(),
        pgpw = s.get("CIRCLECI_TEST_PG_PASSWORD"),
        pgca = s.get("CIRCLECI_TEST_PG_CA"),
        vault = s.get("CIRCLECI_TEST_VAULT_ADDR"),
        vtoken = s.get("CIRCLECI_TEST_VAULT_TOKEN"),
        vca = s.get("CIRCLECI_TEST_VAULT_CA"),
        mongo = s.mongo_admin_uri(),
        aws = s.get("CIRCLECI_TEST_AWS_ENDPOINT"),
    )
}

fn fixture(s: &Servers, args: &[&str]) -> Json {
    s.aws_fixture(args)
}

impl<'a> Scenario<'a> {
    fn new(s: &'a Servers, root: &Path, res: Res, fault: Fault, n: usize) -> Self {
        let tag = format!("fault{}x{n}", std::process::id() % 100_000);
        let dir = root.join(format!("{tag}/etc/circleconfig"));
        std::fs::create_dir_all(&dir).unwrap();
        let (uid, gid) = uid_gid(&sudo_user(s));
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        let faults_dir = tempfile::tempdir().unwrap();
        let mut sc = Scenario {
            s,
            res,
            fault,
            tag,
            dir,
            faults_dir,
            tf: Tf::new(""),
            group: None,
        };
        if res == Res::LaunchConfig {
            let g = fixture(
                s,
                &[
                    "setup",
                    "--name",
                    &sc.tag,
                    "--kind",
                    "lc",
                    "--user-data-file",
                    s.get("CIRCLECI_TEST_NOMAD_USER_DATA"),
                ],
            );
            let lc = g["launch_configuration"].as_str().unwrap().to_string();
            sc.group = Some((sc.tag.clone(), lc));
        }
        sc.tf
            .write_main(&format!("{}{}", provider_block(s, res), sc.resource()));
        sc
    }

    fn file(&self) -> PathBuf {
        self.dir.join("settings")
    }

    fn resource(&self) -> String {
        let s = self.s;
        let (tag, path) = (&self.tag, self.file());
        match self.res {
            Res::Redis => format!(
                "resource \"circleci_external_redis\" \"x\" {{\n  host = \"127.0.0.1\"\n  port = {}\n  config_path = {path:?}\n}}\n",
                s.redis_port()
            ),
            Res::RabbitMq => format!(
                "resource \"circleci_external_rabbitmq\" \"x\" {{\n  host = \"127.0.0.1\"\n  port = {}\n  username = \"circle\"\n  \
                 password_wo = {:?}\n  password_wo_version = 1\n  config_path = {path:?}\n}}\n",
                s.mq_port(),
                s.get("CIRCLECI_TEST_MQ_PASSWORD")
            ),
            Res::Nomad => format!(
                "resource \"circleci_external_nomad\" \"x\" {{\n  endpoint = {:?}\n  ca_cert_file = {:?}\n  \
                 acl_token_wo = {:?}\n  config_path = {path:?}\n}}\n",
                s.get("CIRCLECI_TEST_NOMAD_ADDR"),
                s.get("CIRCLECI_TEST_TLS_CA"),
                s.get("CIRCLECI_TEST_NOMAD_TOKEN")
            ),
            Res::Postgres => format!(
                "resource \"circleci_postgres_databases\" \"x\" {{\n  host = \"127.0.0.1\"\n  port = {}\n  user = \"{tag}\"\n  \
                 password_wo = \"pw-{tag}\"\n  password_wo_version = 1\n  \
                 databases = [\"{tag}_a\", \"{tag}_b\", \"{tag}_c\", \"{tag}_d\"]\n  create_user_database = false\n  \
                 extensions = {{ \"*\" = [] }}\n  deletion_policy = \"drop\"\n  config_path = {path:?}\n}}\n",
                s.pg_port()
            ),
            Res::Mongo => format!(
                "resource \"circleci_external_mongo\" \"x\" {{\n  hosts = [\"127.0.0.1:{}\"]\n  username = \"{tag}\"\n  \
                 password_wo = \"pw-{tag}\"\n  password_wo_version = 1\n  tls = false\n  drop_user_on_destroy = true\n  \
                 config_path = {path:?}\n}}\n",
                s.get("CIRCLECI_TEST_MONGO_PORT")
            ),
            Res::Vault => format!(
                "resource \"circleci_vault_transit_client\" \"x\" {{\n  key_name = \"{tag}\"\n  policy_name = \"{tag}\"\n  \
                 delete_key_on_destroy = true\n  config_path = {path:?}\n}}\n"
            ),
            Res::LaunchConfig => format!(
                "resource \"circleci_nomad_client_launch_config\" \"x\" {{\n  autoscaling_group_name = \"{tag}\"\n  \
                 nomad_servers = [\"nomad-{tag}.internal:4647\"]\n  name_prefix = \"{tag}-copy-\"\n}}\n"
            ),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.tf.cmd(args);
        c.env("CIRCLECI_PROVIDER_FAULT_DIR", self.faults_dir.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().unwrap();
        eprintln!(
            "[{:?}/{:?}] $ terraform {}\n{}{}",
            self.res,
            self.fault,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The apply with the fault in it. Returns its output and how long it ran after
    /// the fault was injected.
    fn faulted_apply(&self) -> (Output, Duration) {
        let backend = self.res.backend();
        match self.fault {
            Fault::KillBefore => backend.kill(),
            Fault::Unwritable => {
                std::fs::set_permissions(
                    &self.dir,
                    std::os::unix::fs::PermissionsExt::from_mode(0o555),
                )
                .unwrap();
            }
            _ => {}
        }
        let point = self.res.point(self.fault);
        let fdir = self.faults_dir.path();
        if let Some(p) = &point {
            std::fs::write(fdir.join(format!("{p}.armed")), b"").unwrap();
        }
        let mut cmd = self.cmd(&["apply", "-auto-approve", "-no-color", "-input=false"]);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut started = Instant::now();
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        if let Some(p) = &point {
            let reached = fdir.join(format!("{p}.reached"));
            let until = Instant::now() + Duration::from_secs(90);
            while !reached.exists() {
                assert!(
                    Instant::now() < until,
                    "{:?}/{:?}: the apply never reached {p}",
                    self.res,
                    self.fault
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            match self.fault {
                Fault::KillDuring => backend.kill(),
                Fault::Freeze => backend.signal("-STOP"),
                Fault::SshdKilled => Backend::Sshd.kill(),
                Fault::Interrupt => {
                    let _ = Command::new("kill")
                        .args(["-INT", "--", &format!("-{pid}")])
                        .status();
                }
                _ => {}
            }
            started = Instant::now();
            std::fs::write(fdir.join(format!("{p}.go")), b"").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let took = started.elapsed();
        eprintln!(
            "[{:?}/{:?}] faulted apply ({took:?} after the fault):\n{}{}",
            self.res,
            self.fault,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out, took)
    }

    /// Undoes the fault itself (not its effects): the next apply must repair those.
    fn heal(&self) {
        match self.fault {
            Fault::Freeze => self.res.backend().signal("-CONT"),
            Fault::KillBefore | Fault::KillDuring | Fault::SshdKilled => services_up(),
            Fault::Unwritable => std::fs::set_permissions(
                &self.dir,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap(),
            Fault::Interrupt | Fault::ProviderKilled => {}
        }
    }

    /// Config files in a mixed state: temporary or probe files left behind, or a file
    /// whose managed block is not whole.
    fn mixed_files(&self) -> Vec<String> {
        let mut bad = Vec::new();
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".tf-") {
                bad.push(format!("left behind: {name}"));
                continue;
            }
            // The provider's own directory beside a file outside the runbook's paths:
            // the file digest key, 0600, and nothing half-made next to it.
            if name == ".terraform-provider-circleci" {
                for k in std::fs::read_dir(e.path()).unwrap() {
                    let k = k.unwrap();
                    let kn = k.file_name().to_string_lossy().into_owned();
                    let mode = common::mode_of(&k.path());
                    if kn != "file-digest.key" {
                        bad.push(format!("left behind: {name}/{kn}"));
                    } else if mode != 0o600 {
                        bad.push(format!("{name}/{kn} is {mode:o}"));
                    }
                }
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let begins = text.matches("# BEGIN terraform-provider-circleci ").count();
            let ends = text.matches("# END terraform-provider-circleci ").count();
            if begins != 1 || ends != 1 {
                bad.push(format!("{name}: {begins} BEGIN, {ends} END markers"));
            }
        }
        bad
    }

    /// What would show something changed on the backend side: used to check that an
    /// unwritable target changes nothing.
    fn backend_objects(&self) -> usize {
        let s = self.s;
        let tag = &self.tag;
        match self.res {
            Res::Postgres => {
                let roles: usize = s
                    .psql(
                        "postgres",
                        &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{tag}'"),
                    )
                    .trim()
                    .parse()
                    .unwrap();
                let dbs: usize = s
                    .psql(
                        "postgres",
                        &format!("SELECT count(*) FROM pg_database WHERE datname LIKE '{tag}%'"),
                    )
                    .trim()
                    .parse()
                    .unwrap();
                roles + dbs
            }
            Res::Mongo => {
                let r = s
                    .pymongo(
                        &s.mongo_admin_uri(),
                        "admin",
                        serde_json::json!({"usersInfo": {"user": tag, "db": "admin"}}),
                    )
                    .unwrap();
                r["users"].as_array().map_or(0, Vec::len)
            }
            Res::Vault => self.vault_tokens(),
            Res::LaunchConfig => self.copies().len(),
            _ => 0,
        }
    }

    /// Live Vault tokens carrying this scenario's policy.
    fn vault_tokens(&self) -> usize {
        let s = self.s;
        let list = s.bao(
            s.get("CIRCLECI_TEST_VAULT_TOKEN"),
            &["list", "-format=json", "auth/token/accessors"],
        );
        let accessors: Vec<String> = serde_json::from_slice(&list.stdout).unwrap_or_default();
        accessors
            .iter()
            .filter(|a| {
                let out = s.bao(
                    s.get("CIRCLECI_TEST_VAULT_TOKEN"),
                    &["token", "lookup", "-format=json", "-accessor", a.as_str()],
                );
                let v: Json = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
                v["data"]["policies"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|x| x == self.tag.as_str()))
            })
            .count()
    }

    fn copies(&self) -> Vec<String> {
        fixture(self.s, &["lcs"])["names"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n.as_str())
            .filter(|n| n.starts_with(&format!("{}-copy-", self.tag)))
            .map(str::to_string)
            .collect()
    }

    /// What is left after destroy that should not be: backend objects, the config
    /// file, and for the launch configuration a group not back on its original.
    fn leaks(&self) -> Vec<String> {
        let mut l = Vec::new();
        let n = self.backend_objects();
        if n > 0 {
            l.push(format!("{n} backend object(s) left"));
        }
        if self.file().exists() {
            l.push(format!("{} still exists", self.file().display()));
        }
        if let Some((group, original)) = &self.group {
            let g = fixture(self.s, &["group", "--name", group]);
            if g["launch_configuration"] != original.as_str() {
                l.push(format!(
                    "group on {} instead of {original}",
                    g["launch_configuration"]
                ));
            }
        }
        l
    }

    fn in_state(&self) -> bool {
        let out = self.run(&["show", "-json", "-no-color"]);
        let v: Json = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
        v["values"]["root_module"]["resources"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    }
}

struct Row {
    res: Res,
    fault: Fault,
    converged: bool,
    mixed: usize,
    leaks: usize,
    hang: Duration,
    limit: Option<Duration>,
    notes: Vec<String>,
}

fn run_case(s: &Servers, root: &Path, res: Res, fault: Fault, n: usize) -> Row {
    let sc = Scenario::new(s, root, res, fault, n);
    let mut notes = Vec::new();
    let (out, hang) = sc.faulted_apply();
    let failed = !out.status.success();
    // An interrupt during a step that runs to its end (the Vault token: created, then
    // written) may finish; every other fault must fail the apply.
    if !failed && fault != Fault::Interrupt {
        notes.push("the faulted apply succeeded".into());
    }
    let mut mixed = sc.mixed_files();
    if fault == Fault::Unwritable && sc.backend_objects() > 0 {
        notes.push("an unwritable target still changed the backend".into());
    }
    // Work done before an interrupt is recorded, never dropped.
    if fault == Fault::Interrupt
        && matches!(res, Res::Postgres | Res::LaunchConfig)
        && !sc.in_state()
    {
        notes.push("the interrupted apply recorded nothing".into());
    }
    sc.heal();
    let converge = sc.run(&["apply", "-auto-approve", "-no-color", "-input=false"]);
    let plan = sc.run(&["plan", "-detailed-exitcode", "-no-color", "-input=false"]);
    let converged = converge.status.success() && plan.status.code() == Some(0);
    mixed.extend(sc.mixed_files());
    let destroy = sc.run(&["destroy", "-auto-approve", "-no-color", "-input=false"]);
    if !destroy.status.success() {
        notes.push("destroy failed".into());
    }
    let leaks = sc.leaks();
    notes.extend(mixed.iter().cloned());
    notes.extend(leaks.iter().cloned());
    let limit = (fault == Fault::Freeze).then(|| res.deadline() + SLACK);
    Row {
        res,
        fault,
        converged,
        mixed: mixed.len(),
        leaks: leaks.len(),
        hang,
        limit,
        notes,
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<38} {:<11} {:>9} {:>5} {:>5} {:>14}  notes",
        "resource", "fault", "converged", "mixed", "leaks", "hang/limit (s)"
    );
    for r in rows {
        let hang = match r.limit {
            Some(l) => format!("{:.1}/{}", r.hang.as_secs_f64(), l.as_secs()),
            None => format!("{:.1}/-", r.hang.as_secs_f64()),
        };
        let _ = writeln!(
            t,
            "{:<38} {:<11} {:>9} {:>5} {:>5} {:>14}  {}",
            r.res.type_name(),
            format!("{:?}", r.fault),
            if r.converged { "yes" } else { "NO" },
            r.mixed,
            r.leaks,
            hang,
            r.notes.join("; ")
        );
    }
    let converged = rows.iter().filter(|r| r.converged).count();
    let longest = rows
        .iter()
        .filter(|r| r.limit.is_some())
        .map(|r| r.hang)
        .max()
        .unwrap_or_default();
    let _ = writeln!(
        t,
        "faults injected: {}, applies converged: {converged}, files in a mixed state: {}, leaks: {}, \
         longest hang of a frozen server: {:.1}s",
        rows.len(),
        rows.iter().map(|r| r.mixed).sum::<usize>(),
        rows.iter().map(|r| r.leaks).sum::<usize>(),
        longest.as_secs_f64()
    );
    t
}

/// The tests of this binary stop and kill shared servers: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The issue's own case: Ctrl-C during the rollout of an update (the group already
/// switched to a second copy), then `terraform destroy` right away: the group is back
/// on its real original configuration, and no copy is left.
#[test]
fn interrupted_rollout_then_destroy_restores_the_original() {
    let _one = serial();
    let s = servers();
    let _ci = circleci_stopped(&s);
    let _thaw = Thaw;
    let root = tempfile::tempdir().unwrap();
    let sc = Scenario::new(&s, root.path(), Res::LaunchConfig, Fault::Interrupt, 900);
    let (group, original) = sc.group.clone().unwrap();
    let first = sc.run(&["apply", "-auto-approve", "-no-color", "-input=false"]);
    assert!(first.status.success());
    assert_eq!(sc.copies().len(), 1);
    // New servers: a second copy, the switch, then the interrupt during the rollout.
    let main = std::fs::read_to_string(sc.tf.path().join("main.tf")).unwrap();
    sc.tf
        .write_main(&main.replace("nomad-fault", "nomad-second-fault"));
    let (out, took) = sc.faulted_apply();
    assert!(!out.status.success(), "the interrupted apply must fail");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Stopped during the rollout"), "{text}");
    // The state knows the copy the group uses now.
    let g = fixture(&s, &["group", "--name", &group]);
    let state = sc.tf.state_json();
    let recorded = state["values"]["root_module"]["resources"][0]["values"]
        ["launch_configuration_name"]
        .clone();
    assert_eq!(
        g["launch_configuration"], recorded,
        "the switch is recorded"
    );
    assert_ne!(g["launch_configuration"], original.as_str());
    let destroy = sc.run(&["destroy", "-auto-approve", "-no-color", "-input=false"]);
    assert!(destroy.status.success());
    let g = fixture(&s, &["group", "--name", &group]);
    assert_eq!(g["launch_configuration"], original.as_str());
    assert_eq!(sc.copies(), Vec::<String>::new(), "copies left behind");
}

#[test]
fn every_fault_at_every_phase_converges() {
    let _one = serial();
    let s = servers();
    let _ci = circleci_stopped(&s);
    let _thaw = Thaw;
    let root = common::searchable_tempdir();
    let only = std::env::var("CIRCLECI_FAULTS_ONLY").unwrap_or_default();
    let mut rows = Vec::new();
    let mut n = 0;
    for res in Res::ALL {
        for fault in res.faults() {
            n += 1;
            let name = format!("{res:?}/{fault:?}");
            if !only.is_empty() && !name.contains(&only) {
                continue;
            }
            rows.push(run_case(&s, root.path(), res, fault, n));
        }
    }
    let t = table(&rows);
    eprintln!("\nFAULT TABLE\n{t}");
    let _ = std::fs::write(state_dir().join("faults.txt"), &t);
    for r in &rows {
        assert!(
            r.converged && r.mixed == 0 && r.leaks == 0 && r.notes.is_empty(),
            "{} / {:?}: {}\n{t}",
            r.res.type_name(),
            r.fault,
            r.notes.join("; ")
        );
        if let Some(l) = r.limit {
            assert!(
                r.hang <= l,
                "{} / {:?} hung {:?} (limit {l:?})\n{t}",
                r.res.type_name(),
                r.fault,
                r.hang
            );
        }
    }
}

/// Where in the migration a fault comes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// The first PostgreSQL database exported, none imported.
    Export,
    /// The first PostgreSQL database imported and verified.
    Import,
    /// The first MongoDB database restored and verified.
    Mongo,
    /// Both databases carried, the Vault key not yet.
    Vault,
}

/// A fault in the cutover itself: CircleCI runs when the apply starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cut {
    /// A fault in the migration: the external PostgreSQL killed (`KillDuring`) or
    /// frozen (`Freeze`, under a 20 s command_timeout), sshd killed, Ctrl-C, or the
    /// provider's process killed.
    Migration(Phase, Fault),
    /// sshd killed or Ctrl-C after the migration, before the restart starts CircleCI.
    Restart(Fault),
    /// Ctrl-C while a launch configuration's rollout waits for a client's build,
    /// CircleCI running on the Nomad it drains.
    Drain,
}

impl Cut {
    const ALL: [Cut; 14] = [
        Cut::Migration(Phase::Import, Fault::KillDuring),
        Cut::Migration(Phase::Import, Fault::Freeze),
        Cut::Migration(Phase::Import, Fault::SshdKilled),
        Cut::Migration(Phase::Import, Fault::Interrupt),
        Cut::Migration(Phase::Import, Fault::ProviderKilled),
        Cut::Migration(Phase::Export, Fault::Interrupt),
        Cut::Migration(Phase::Export, Fault::ProviderKilled),
        Cut::Migration(Phase::Mongo, Fault::Interrupt),
        Cut::Migration(Phase::Mongo, Fault::ProviderKilled),
        Cut::Migration(Phase::Vault, Fault::Interrupt),
        Cut::Migration(Phase::Vault, Fault::ProviderKilled),
        Cut::Restart(Fault::SshdKilled),
        Cut::Restart(Fault::Interrupt),
        Cut::Drain,
    ];

    fn res(self) -> &'static str {
        match self {
            Cut::Migration(..) => "circleci_data_migration",
            Cut::Restart(_) => "circleci_services_restart",
            Cut::Drain => "circleci_nomad_client_launch_config",
        }
    }

    fn fault(self) -> Fault {
        match self {
            Cut::Migration(_, f) | Cut::Restart(f) => f,
            Cut::Drain => Fault::Interrupt,
        }
    }

    fn point(self) -> String {
        let phase = match self {
            Cut::Migration(Phase::Export, _) => "after_export",
            Cut::Migration(Phase::Import, _) => "database_loop",
            Cut::Migration(Phase::Mongo, _) => "mongo_loop",
            Cut::Migration(Phase::Vault, _) => "before_key",
            Cut::Restart(_) => "before_start",
            Cut::Drain => "before_drain",
        };
        format!("{}.{phase}", self.res())
    }

    /// The resource and the phase, for the table.
    fn label(self) -> String {
        match self {
            Cut::Migration(p, _) => format!("{} {p:?}", self.res()),
            _ => self.res().to_string(),
        }
    }

    /// Whether the faulted apply itself must end with CircleCI running: a failure it
    /// can still act on is undone (the fallback starts CircleCI as it was); a lost
    /// Services machine, an interrupt or a killed provider leaves the rest to the next
    /// apply.
    fn running_after_fault(self) -> bool {
        matches!(
            self,
            Cut::Migration(_, Fault::KillDuring | Fault::Freeze) | Cut::Drain
        )
    }

    /// Whether the fault leaves the migration's containers running (a killed provider
    /// removes nothing), which the next plan must report and the next apply remove.
    fn leaves_containers(self) -> bool {
        matches!(
            self,
            Cut::Migration(
                Phase::Export | Phase::Import | Phase::Mongo,
                Fault::ProviderKilled
            )
        )
    }
}

/// One cutover row.
struct CutRow {
    cut: Cut,
    /// Replicated's state of the app once the faulted apply ended.
    after_fault: String,
    converged: bool,
    running: bool,
    notes: Vec<String>,
}

/// The migration and the restart after it (CircleCI's embedded data and files under
/// `root`), as `examples/complete` orders them; `extra` in the migration.
fn cutover_tf(s: &Servers, root: &Path, mount: &str, extra: &str) -> String {
    format!(
        r#"{migration}
resource "circleci_services_restart" "r" {{
  config_root             = {root:?}
  embedded_nomad_endpoint = {enomad:?}
  stop_timeout            = "30s"
  start_timeout           = "60s"
  verify_timeout          = "20s"
  depends_on              = [circleci_data_migration.m]
  triggers = {{
    postgres = circleci_postgres_databases.pg.file_sha256
    mongo    = circleci_external_mongo.mongo.file_sha256
  }}
}}
"#,
        migration = common::cutover::migration_tf(s, root, mount, extra),
        root = root.to_str().unwrap(),
        enomad = s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR"),
    )
}

/// What a cutover must not leave: a temporary container over the embedded data, an
/// export or a kept copy others can read, an open record.
fn cutover_leftovers(s: &Servers, root: &Path) -> Vec<String> {
    let mut l = Vec::new();
    let ps = Command::new(Path::new(s.get("CIRCLECI_TEST_SIM")).join("docker"))
        .args(["ps", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&ps.stdout).contains("circleci-data-migration") {
        l.push("a migration container is running".into());
    }
    for dir in [
        "data/circle/external-services-export",
        "data/circle/external-services-cutover",
    ] {
        let d = root.join(dir);
        if d.exists() && common::mode_of(&d) & 0o077 != 0 {
            l.push(format!("{dir} is {:o}", common::mode_of(&d)));
        }
    }
    l.extend(readable_export(root));
    if root
        .join("data/circle/external-services-cutover/record.json")
        .exists()
    {
        l.push("the cutover's record is still open".into());
    }
    l
}

/// What of the export (a dump, a partial one, a directory in it) others could read.
fn readable_export(root: &Path) -> Vec<String> {
    let mut l = Vec::new();
    let mut todo = vec![root.join("data/circle/external-services-export")];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten() {
            let p = e.unwrap().path();
            let mode = common::mode_of(&p);
            if mode & 0o077 != 0 {
                l.push(format!("{} is {mode:o}", p.display()));
            }
            if p.is_dir() {
                todo.push(p);
            }
        }
    }
    l
}

/// Runs `tf`'s apply with `point` armed, injects `fault` there, and returns the
/// apply's output.
fn apply_with_fault(tf: &Tf, faults: &Path, point: &str, fault: Fault) -> Output {
    std::fs::write(faults.join(format!("{point}.armed")), b"").unwrap();
    let child = common::spawn_apply_with_faults(tf, faults);
    common::wait_reached(faults, point, 240);
    match fault {
        Fault::KillDuring => Backend::Postgres.kill(),
        Fault::Freeze => Backend::Postgres.signal("-STOP"),
        Fault::SshdKilled => Backend::Sshd.kill(),
        Fault::Interrupt => {
            let _ = Command::new("kill")
                .args(["-INT", "--", &format!("-{}", child.id())])
                .status();
        }
        Fault::ProviderKilled => {
            // The provider is in the apply's process group (Terraform starts it).
            let group = child.id().to_string();
            let killed = Command::new("pkill")
                .args(["-KILL", "-g", &group, "-f", "terraform-provider-circleci"])
                .status()
                .unwrap();
            assert!(killed.success(), "no provider process in group {group}");
        }
        _ => unreachable!("not a cutover fault"),
    }
    std::fs::write(faults.join(format!("{point}.go")), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "[{point}/{fault:?}] faulted apply:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `terraform ARGS` in `tf`, its output logged under the row's name.
fn cut_run(tf: &Tf, cut: Cut, args: &[&str]) -> Output {
    let out = tf.cmd(args).output().unwrap();
    eprintln!(
        "[{cut:?}] $ terraform {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The migration and the restart, a fault in one of them; then the next apply.
fn migration_case(s: &Servers, cut: Cut, n: usize) -> CutRow {
    s.fresh_runbook_targets();
    let root = s.embedded_root("200");
    let sim = common::sim::Sim::new(s, serde_json::json!({"root": root.path(), "transition": 1}));
    sim.start();
    let mount = format!("transit-cut-{}-{n}", std::process::id());
    let frozen = cut.fault() == Fault::Freeze;
    // Should the apply hang on the frozen target, it is thawed after 150 s: the row then
    // fails on the time it took instead of hanging the suite.
    let (ended, watch) = std::sync::mpsc::channel::<()>();
    if frozen {
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watch.recv_timeout(Duration::from_secs(150))
            {
                Backend::Postgres.signal("-CONT");
            }
        });
    }
    let extra = if frozen {
        "command_timeout = \"20s\""
    } else {
        ""
    };
    let tf = Tf::new(&cutover_tf(s, root.path(), &mount, extra));
    let faults = tempfile::tempdir().unwrap();
    let began = Instant::now();
    let out = apply_with_fault(&tf, faults.path(), &cut.point(), cut.fault());
    let took = began.elapsed();
    drop(ended);
    let mut notes = Vec::new();
    if out.status.success() {
        notes.push("the faulted apply succeeded".into());
    }
    if frozen {
        // The restore's commands stop at command_timeout; the fallback starts CircleCI.
        Backend::Postgres.signal("-CONT");
        if took > Duration::from_secs(90) {
            notes.push(format!("the frozen target held the apply {took:?}"));
        }
    }
    let after_fault = sim.state();
    if cut.running_after_fault() && after_fault != "started" {
        notes.push(format!("CircleCI {after_fault} after the fault"));
    }
    // Right after the fault, before the next apply seals the export again.
    notes.extend(
        readable_export(root.path())
            .into_iter()
            .map(|r| format!("after the fault: {r}")),
    );
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    if matches!(cut, Cut::Migration(_, Fault::Interrupt))
        && !flat(&text).contains("Terraform asked the provider to stop")
    {
        notes.push("the migration did not stop on Ctrl-C".into());
    }
    if matches!(cut, Cut::Migration(_, Fault::KillDuring | Fault::Freeze))
        && !flat(&text).contains("CircleCI is back as it was before this apply")
    {
        notes.push("the failure was not undone".into());
    }
    services_up();
    let converge = cut_run(
        &tf,
        cut,
        &["apply", "-auto-approve", "-no-color", "-input=false"],
    );
    let converged = converge.status.success() && tf.plan_code() == 0;
    let running = sim.state() == "started";
    let said = flat(&String::from_utf8_lossy(&converge.stdout));
    if cut.leaves_containers() && !said.contains("A migration container was left running") {
        notes.push("the next plan did not report the container left".into());
    }
    notes.extend(cutover_leftovers(s, root.path()));
    let destroy = cut_run(
        &tf,
        cut,
        &["destroy", "-auto-approve", "-no-color", "-input=false"],
    );
    if !destroy.status.success() {
        notes.push("destroy failed".into());
    }
    drop(sim);
    CutRow {
        cut,
        after_fault,
        converged,
        running,
        notes,
    }
}

/// A launch configuration's rollout with CircleCI running on the embedded Nomad, both
/// clients nodes of it, a build on the first: Ctrl-C while it waits for the build.
fn drain_case(s: &Servers, cut: Cut, n: usize) -> CutRow {
    let root = common::searchable_tempdir();
    let sim = common::sim::Sim::new(s, serde_json::json!({"transition": 1}));
    sim.start();
    let tag = format!("cutdrain{}x{n}", std::process::id() % 100_000);
    let g = fixture(
        s,
        &[
            "setup",
            "--name",
            &tag,
            "--kind",
            "lc",
            "--user-data-file",
            s.get("CIRCLECI_TEST_NOMAD_USER_DATA"),
        ],
    );
    let ids: Vec<String> = g["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    let mut nomad = common::sim::NomadFixture::new(s, "CIRCLECI_TEST_EMBEDDED_NOMAD_DIR");
    for (i, id) in ids.iter().enumerate() {
        nomad.aws_client(&format!("{tag}-{i}"), id);
    }
    let stopped_before = nomad.stopped_by_drain();
    nomad.build(
        &format!("{tag}-build"),
        &format!("{tag}-0"),
        common::sim::epoch_now() + 8.0,
    );
    let tf = Tf::new(&format!(
        "{}resource \"circleci_nomad_client_launch_config\" \"x\" {{\n  autoscaling_group_name = \"{tag}\"\n  \
         nomad_servers = [\"127.0.0.1:4647\"]\n  name_prefix = \"{tag}-copy-\"\n  config_root = {:?}\n  \
         embedded_nomad_endpoint = {:?}\n}}\n",
        provider_block(s, Res::LaunchConfig),
        root.path(),
        s.get("CIRCLECI_TEST_EMBEDDED_NOMAD_ADDR")
    ));
    let faults = tempfile::tempdir().unwrap();
    let out = apply_with_fault(&tf, faults.path(), &cut.point(), cut.fault());
    let mut notes = Vec::new();
    if out.status.success() {
        notes.push("the faulted apply succeeded".into());
    }
    let now: Vec<String> = fixture(s, &["group", "--name", &tag])["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    if now != ids {
        notes.push(format!(
            "instances changed by the interrupted apply: {now:?}"
        ));
    }
    if nomad.node(&format!("{tag}-0"))["Drain"] == Json::Bool(true) {
        notes.push("the node was left drained".into());
    }
    let after_fault = sim.state();
    if cut.running_after_fault() && after_fault != "started" {
        notes.push(format!("CircleCI {after_fault} after the fault"));
    }
    let converge = cut_run(
        &tf,
        cut,
        &["apply", "-auto-approve", "-no-color", "-input=false"],
    );
    let converged = converge.status.success() && tf.plan_code() == 0;
    if nomad.stopped_by_drain() != stopped_before {
        notes.push("a drain stopped a build".into());
    }
    let destroy = cut_run(
        &tf,
        cut,
        &["destroy", "-auto-approve", "-no-color", "-input=false"],
    );
    if !destroy.status.success() {
        notes.push("destroy failed".into());
    }
    let running = sim.state() == "started";
    drop(sim);
    CutRow {
        cut,
        after_fault,
        converged,
        running,
        notes,
    }
}

fn cut_table(rows: &[CutRow]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<45} {:<14} {:<22} {:>9} {:>14}  notes",
        "cutover resource", "fault", "CircleCI after fault", "converged", "CircleCI after"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "{:<45} {:<14} {:<22} {:>9} {:>14}  {}",
            r.cut.label(),
            format!("{:?}", r.cut.fault()),
            r.after_fault,
            if r.converged { "yes" } else { "NO" },
            if r.running { "started" } else { "NOT started" },
            r.notes.join("; ")
        );
    }
    t
}

/// The cutover's own faults: each ends with CircleCI running, either at once (the
/// failure undone) or after the next apply (the Services machine lost, or Terraform
/// interrupted, in the middle), with nothing left behind or readable.
#[test]
fn every_cutover_fault_ends_with_circleci_running() {
    let _one = serial();
    let s = servers();
    let _turn = common::sim::SIMULATOR
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let _thaw = Thaw;
    let only = std::env::var("CIRCLECI_FAULTS_ONLY").unwrap_or_default();
    let mut rows = Vec::new();
    for (n, cut) in Cut::ALL.into_iter().enumerate() {
        if !only.is_empty() && !format!("{cut:?}").contains(&only) {
            continue;
        }
        rows.push(match cut {
            Cut::Drain => drain_case(&s, cut, n),
            _ => migration_case(&s, cut, n),
        });
    }
    let t = cut_table(&rows);
    eprintln!("\nCUTOVER FAULT TABLE\n{t}");
    let _ = std::fs::write(state_dir().join("faults-cutover.txt"), &t);
    for r in &rows {
        assert!(
            r.converged && r.running && r.notes.is_empty(),
            "{:?}: {}\n{t}",
            r.cut,
            r.notes.join("; ")
        );
    }
}
