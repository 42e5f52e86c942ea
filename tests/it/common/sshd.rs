//! More SSH machines than the dev Services machine: extra sshd instances on loopback,
//! each from the dev sshd's configuration with a few lines changed, stopped by PID on
//! drop. Used as a Services machine whose network alone knows some names (a private
//! mount namespace with its own `/etc/hosts`), and as Nomad client machines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Servers;

/// A process a test started, stopped (and reaped) by its PID when dropped.
pub(crate) struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (20 s at most) until something listens on 127.0.0.1:`port`; the panic shows `log`.
pub(crate) fn wait_listening(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on 127.0.0.1:{port} after 20s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An sshd on `port` with the dev sshd's configuration, `Port` and `PidFile` its own and
/// each line that `edit` returns `Some` for replaced. With `hosts`, it runs in its own
/// mount namespace (`unshare -m`) where that text is `/etc/hosts`: names only it knows.
/// Its log (DEBUG1: each channel open) is returned too.
pub(crate) fn start(
    dir: &Path,
    port: u16,
    edit: &dyn Fn(&str) -> Option<String>,
    hosts: Option<&str>,
) -> (Proc, PathBuf) {
    let state = super::repo_root().join("dev/.state");
    let base = std::fs::read_to_string(state.join("sshd_config")).unwrap();
    let mut cfg = String::new();
    for line in base.lines() {
        let line = if line.starts_with("Port ") {
            format!("Port {port}")
        } else if line.starts_with("PidFile ") {
            format!("PidFile {}", dir.join(format!("sshd-{port}.pid")).display())
        } else {
            edit(line).unwrap_or_else(|| line.to_string())
        };
        cfg.push_str(&line);
        cfg.push('\n');
    }
    let cfg_path = dir.join(format!("sshd-{port}.config"));
    std::fs::write(&cfg_path, cfg).unwrap();
    let log = dir.join(format!("sshd-{port}.log"));
    std::fs::write(&log, "").unwrap();
    let sshd = format!(
        "/usr/sbin/sshd -D -f {} -E {}",
        cfg_path.display(),
        log.display()
    );
    let child = match hosts {
        Some(text) => {
            let hosts = dir.join(format!("hosts-{port}"));
            std::fs::write(&hosts, text).unwrap();
            // `exec` keeps one PID: unshare's, then sh's, then sshd's (-D: no daemon).
            let script = format!("mount --bind {} /etc/hosts && exec {sshd}", hosts.display());
            Command::new("unshare")
                .args(["-m", "--propagation", "private", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        }
        None => Command::new("sh")
            .args(["-c", &format!("exec {sshd}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let p = Proc(child);
    wait_listening(port, &format!("the sshd on port {port}"), &log);
    (p, log)
}

/// A known_hosts file in `dir` trusting the dev host key on each of `ports`.
pub(crate) fn known_hosts(s: &Servers, dir: &Path, ports: &[u16]) -> PathBuf {
    let path = dir.join("known_hosts");
    let text: String = ports
        .iter()
        .map(|p| format!("[127.0.0.1]:{p} {}\n", s.get("CIRCLECI_TEST_SSH_HOST_KEY")))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}
