//! The CircleCI Services-machine simulator (dev/circleci-sim.py) as tests drive it: one
//! test at a time points it at its own root; it is put back on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value as Json;

use super::Servers;

/// Taken by each test that changes the simulator's settings (within one binary; cargo
/// runs the binaries one after another).
pub static SIMULATOR: Mutex<()> = Mutex::new(());

/// The simulator pointed at `root` (and fast transitions) for one test; put back on drop.
pub struct Sim {
    settings: PathBuf,
    bin: PathBuf,
}

impl Sim {
    pub fn new(s: &Servers, settings: Json) -> Sim {
        let sim = Sim {
            settings: Path::new(s.get("CIRCLECI_TEST_SIM_STATE")).join("settings.json"),
            bin: PathBuf::from(s.get("CIRCLECI_TEST_SIM")),
        };
        sim.set(settings);
        sim
    }

    pub fn set(&self, settings: Json) {
        std::fs::write(&self.settings, settings.to_string()).unwrap();
    }

    pub fn replicatedctl(&self, args: &[&str]) -> Json {
        let out = Command::new(self.bin.join("replicatedctl"))
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Json::Null)
    }

    /// Both streams of `docker logs NAME` (every start's lines), stdout first.
    pub fn docker_logs(&self, name: &str) -> String {
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

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.settings);
        let _ = Command::new(self.bin.join("replicatedctl"))
            .args(["app", "start"])
            .status();
    }
}
