//! The CircleCI Services-machine simulator (dev/standins/circleci_sim.py) as tests drive it: one
//! test at a time points it at its own root; it is put back on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value as Json;

use super::Servers;

/// Taken by each test that changes the simulator's settings (within one binary; cargo
/// runs the binaries one after another).
pub(crate) static SIMULATOR: Mutex<()> = Mutex::new(());

/// The simulator pointed at `root` (and fast transitions) for one test; put back on drop.
pub(crate) struct Sim {
    settings: PathBuf,
    bin: PathBuf,
}

/// `docker run` of a container `name` of the embedded PostgreSQL over its data
/// directory, as CircleCI's export script starts one.
#[allow(dead_code)] // not every test crate that shares this module uses it
pub(crate) fn embedded_postgres_run(name: &str) -> [&str; 7] {
    [
        "run",
        "--name",
        name,
        "-d",
        "-v",
        "/data/circle/postgres/9.5/data:/var/lib/postgresql/data",
        "postgres:9.5.8",
    ]
}

impl Sim {
    pub(crate) fn new(s: &Servers, settings: Json) -> Sim {
        let sim = Sim {
            settings: Path::new(s.get("CIRCLECI_TEST_SIM_STATE")).join("settings.json"),
            bin: PathBuf::from(s.get("CIRCLECI_TEST_SIM")),
        };
        sim.set(settings);
        // Each test begins with CircleCI stopped: an app a previous test left started
        // runs containers booted on that test's files, and a later start would not boot
        // them again.
        sim.replicatedctl(&["app", "stop"]);
        for _ in 0..150 {
            if sim.replicatedctl(&["app", "status"])[0]["State"] == "stopped" {
                return sim;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the simulated app did not stop");
    }

    pub(crate) fn set(&self, settings: Json) {
        std::fs::write(&self.settings, settings.to_string()).unwrap();
    }

    /// Replicated's `State` of the app now.
    pub(crate) fn state(&self) -> String {
        self.replicatedctl(&["app", "status", "-o", "json"])[0]["State"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Starts the app and waits (20 s at most) until it is started.
    pub(crate) fn start(&self) {
        self.replicatedctl(&["app", "start"]);
        for _ in 0..100 {
            if self.state() == "started" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("the simulated app did not start");
    }

    pub(crate) fn replicatedctl(&self, args: &[&str]) -> Json {
        let out = Command::new(self.bin.join("replicatedctl"))
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Json::Null)
    }

    /// What `docker ARGS` prints on standard output.
    #[allow(dead_code)] // not every test crate that shares this module uses it
    pub(crate) fn docker(&self, args: &[&str]) -> String {
        let out = Command::new(self.bin.join("docker"))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a container `name` of the embedded PostgreSQL over its data directory, as
    /// a killed migration (or a second apply) leaves one.
    #[allow(dead_code)] // not every test crate that shares this module uses it
    pub(crate) fn run_over_embedded_data(&self, name: &str) {
        self.docker(&embedded_postgres_run(name));
    }

    /// The data migration's temporary containers running now.
    #[allow(dead_code)]
    pub(crate) fn migration_containers(&self) -> Vec<String> {
        self.docker(&["ps", "--format", "{{.Names}}"])
            .lines()
            .filter(|n| n.starts_with("circleci-data-migration-"))
            .map(str::to_string)
            .collect()
    }

    /// Both streams of `docker logs NAME` (every start's lines), stdout first.
    pub(crate) fn docker_logs(&self, name: &str) -> String {
        let out = Command::new(self.bin.join("docker"))
            .args(["logs", name])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// Waits (60 s at most) until the simulator's app, in its own settings, is started: a
/// test that holds [`SIMULATOR`] but does not reconfigure it may follow one whose `Sim`
/// was just dropped, which leaves the app starting, not started.
pub(crate) fn app_started(s: &Servers) {
    let ctl = PathBuf::from(s.get("CIRCLECI_TEST_SIM")).join("replicatedctl");
    let state = || {
        let out = Command::new(&ctl)
            .args(["app", "status", "-o", "json"])
            .output()
            .unwrap();
        serde_json::from_slice::<Json>(&out.stdout).unwrap_or(Json::Null)[0]["State"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for _ in 0..300 {
        match state().as_str() {
            "started" => return,
            "stopped" => {
                Command::new(&ctl).args(["app", "start"]).status().unwrap();
            }
            _ => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("the simulated app did not start: {}", state());
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.settings);
        let _ = Command::new(self.bin.join("replicatedctl"))
            .args(["app", "start"])
            .status();
    }
}

/// What the Nomad stand-ins list (dev/standins/nomad_standin.py `--nodes-dir` / `--allocs-dir`,
/// under `CIRCLECI_TEST_EMBEDDED_NOMAD_DIR` or `CIRCLECI_TEST_CI_NOMAD_DIR`), changed
/// for one test: every file it writes or changes is put back on drop.
pub(crate) struct NomadFixture {
    dir: PathBuf,
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl NomadFixture {
    /// `which`: `CIRCLECI_TEST_EMBEDDED_NOMAD_DIR` or `CIRCLECI_TEST_CI_NOMAD_DIR`.
    pub(crate) fn new(s: &Servers, which: &str) -> NomadFixture {
        NomadFixture {
            dir: PathBuf::from(s.get(which)),
            saved: Vec::new(),
        }
    }

    fn write(&mut self, rel: &str, value: Json) {
        let path = self.dir.join(rel);
        if !self.saved.iter().any(|(p, _)| p == &path) {
            self.saved.push((path.clone(), std::fs::read(&path).ok()));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, value.to_string()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// A build (an allocation) on client `node` that runs until `ends_at` (seconds
    /// since the epoch).
    pub(crate) fn build(&mut self, id: &str, node: &str, ends_at: f64) {
        self.write(
            &format!("allocs/{id}.json"),
            serde_json::json!({"ID": id, "Name": format!("{id}.build[0]"), "JobID": id,
                               "NodeID": node, "EndsAt": ends_at}),
        );
    }

    /// Client `name` on EC2 instance `instance`, as Nomad's AWS fingerprint reports it:
    /// ready, not draining.
    pub(crate) fn aws_client(&mut self, name: &str, instance: &str) {
        self.write(
            &format!("nodes/{name}.json"),
            serde_json::json!({"Name": name, "Address": "10.0.3.7", "Restarts": 0,
                               "Attributes": {"unique.platform.aws.instance-id": instance}}),
        );
    }

    /// Client `name` as the stand-in keeps it (`Drain`, `DrainChanges`, ...).
    pub(crate) fn node(&self, name: &str) -> Json {
        serde_json::from_slice(&std::fs::read(self.dir.join(format!("nodes/{name}.json"))).unwrap())
            .unwrap()
    }

    /// The allocations a drain stopped, one line each (empty when none).
    pub(crate) fn stopped_by_drain(&self) -> String {
        std::fs::read_to_string(self.dir.join("allocs/stopped-by-drain.log")).unwrap_or_default()
    }

    /// Client `name`, ready (registered long ago) and draining or not.
    pub(crate) fn client(&mut self, name: &str, drain: bool) {
        self.write(
            &format!("nodes/{name}.json"),
            serde_json::json!({"Name": name, "Address": "10.0.2.99", "Restarts": 0, "Drain": drain}),
        );
    }
}

impl Drop for NomadFixture {
    fn drop(&mut self) {
        for (path, before) in self.saved.drain(..) {
            match before {
                Some(b) => {
                    let _ = std::fs::write(&path, b);
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

/// Seconds since the epoch, as the stand-ins compare `EndsAt`.
pub(crate) fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A simulator container (the simulator's `docker` at `.0`, the name `.1`) and the
/// restore's container next to it (`NAME-restore`) removed when dropped, so that a
/// failed test leaves none for the next run to collide with.
pub(crate) struct Removed(pub std::path::PathBuf, pub &'static str);

impl Drop for Removed {
    fn drop(&mut self) {
        for name in [self.1.to_string(), format!("{}-restore", self.1)] {
            let _ = std::process::Command::new(&self.0)
                .args(["rm", "-f", &name])
                .output();
        }
    }
}
