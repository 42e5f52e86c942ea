//! The embedded PostgreSQL of the Services-machine simulator, driven the way CircleCI's
//! export script drives it and the data migration will: over the provider's SSH
//! commands, a temporary `postgres:9.5.8` container on /data/circle/postgres/9.5/data
//! (dev/embedded-fixture.sh made it), `pg_dump` inside it, the container removed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

mod common;

use std::process::Command;
use std::time::Duration;

use common::sim::Sim;
use serde_json::json;
use terraform_provider_circleci::backends::ssh::{
    parse_host_key, HostKeyPolicy, Program, RemoteCommand, ServicesHost, SshAuth, SshConfig,
};

fn host(s: &common::Servers) -> ServicesHost {
    ServicesHost::new(SshConfig {
        host: "127.0.0.1".into(),
        port: s.ssh_port(),
        user: "root".into(),
        auth: SshAuth::KeyFile(s.get("CIRCLECI_TEST_SSH_KEY_FILE").into()),
        host_key: HostKeyPolicy::Pinned(vec![
            parse_host_key(s.get("CIRCLECI_TEST_SSH_HOST_KEY")).unwrap()
        ]),
        sudo: true,
        timeout: Duration::from_secs(10),
    })
}

/// Removes the temporary container (stopping its server) even when a check fails.
struct Removed(std::path::PathBuf, &'static str);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = Command::new(&self.0).args(["rm", "-f", self.1]).output();
    }
}

fn docker(args: &[&str]) -> RemoteCommand {
    RemoteCommand::new(Program::Docker, args.iter().copied()).unwrap()
}

#[tokio::test]
async fn a_temporary_postgres_container_dumps_the_embedded_databases() {
    // The only test in this binary: no other test changes the simulator meanwhile.
    let s = common::servers();
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let fixture = Command::new(common::repo_root().join("dev/embedded-fixture.sh"))
        .arg(root.path())
        .arg("300")
        .output()
        .unwrap();
    assert!(
        fixture.status.success(),
        "{}",
        String::from_utf8_lossy(&fixture.stderr)
    );
    let _sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let h = host(&s);
    let t = Duration::from_secs(60);
    let name = "circle-postgres-export";
    let _rm = Removed(
        std::path::Path::new(s.get("CIRCLECI_TEST_SIM")).join("docker"),
        name,
    );
    let run = h
        .run(
            &docker(&[
                "run",
                "--name",
                name,
                "-d",
                "-v",
                "/data/circle/postgres/9.5/data:/var/lib/postgresql/data",
                "postgres:9.5.8",
            ]),
            None,
            t,
        )
        .await
        .unwrap();
    assert!(run.success(), "{}", run.evidence());
    let listed = h
        .run(
            &docker(&[
                "exec",
                name,
                "psql",
                "-U",
                "postgres",
                "-Atc",
                "SELECT datname FROM pg_database ORDER BY 1",
            ]),
            None,
            t,
        )
        .await
        .unwrap();
    let dbs = listed.stdout_text();
    for db in [
        "circle",
        "conductor_production",
        "contexts_service_production",
        "cron_service_production",
        "vms",
    ] {
        assert!(dbs.lines().any(|l| l == db), "{db} missing: {dbs}");
    }
    let dump = h
        .run(
            &docker(&[
                "exec",
                name,
                "pg_dump",
                "-U",
                "postgres",
                "-Fc",
                "conductor_production",
            ]),
            None,
            t,
        )
        .await
        .unwrap();
    assert!(dump.success(), "{}", dump.evidence());
    let rm = h.run(&docker(&["rm", "-f", name]), None, t).await.unwrap();
    assert!(rm.success(), "{}", rm.evidence());
    let ps = h
        .run(&docker(&["ps", "--format", "{{.Names}}"]), None, t)
        .await
        .unwrap();
    assert!(
        !ps.stdout_text().contains(name),
        "the container is still listed"
    );

    // The dump is a real pg_dump archive: pg_restore reads its table of contents.
    let file = root.path().join("conductor.dump");
    std::fs::write(&file, &dump.stdout).unwrap();
    let toc = Command::new("/usr/lib/postgresql/15/bin/pg_restore")
        .arg("-l")
        .arg(&file)
        .output()
        .unwrap();
    let toc = String::from_utf8_lossy(&toc.stdout);
    assert!(toc.contains("TABLE DATA public build_jobs"), "{toc}");
}
