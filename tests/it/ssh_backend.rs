//! The Services-machine layer against a real OpenSSH sshd on loopback.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use terraform_provider_circleci::testing::envfile::{render, Style};
use terraform_provider_circleci::testing::ssh::{
    new_mark, parse_host_key, HostKeyPolicy, Program, RemoteCommand, ServicesHost, SshAuth,
    SshConfig, SshError, SshErrorKind,
};
use terraform_provider_circleci::testing::Secret;

fn host(s: &common::Servers, policy: HostKeyPolicy) -> ServicesHost {
    ServicesHost::new(SshConfig {
        host: "127.0.0.1".into(),
        port: s.ssh_port(),
        user: "root".into(),
        auth: SshAuth::KeyFile(s.get("CIRCLECI_TEST_SSH_KEY_FILE").into()),
        host_key: policy,
        sudo: true,
        timeout: Duration::from_secs(10),
    })
}

fn pinned(s: &common::Servers) -> HostKeyPolicy {
    HostKeyPolicy::Pinned(vec![
        parse_host_key(s.get("CIRCLECI_TEST_SSH_HOST_KEY")).unwrap()
    ])
}

#[tokio::test]
async fn write_read_delete_round_trip() {
    let s = common::servers();
    let h = host(&s, pinned(&s));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/file");
    let p = path.to_str().unwrap();

    assert_eq!(h.read_file(p).await.unwrap(), None);
    h.write_file(p, b"one\n", 0o600).await.unwrap();
    let f = h.read_file(p).await.unwrap().unwrap();
    assert_eq!(f.content, b"one\n");
    assert_eq!(f.mode, 0o600);
    assert_eq!(common::mode_of(&path), 0o600);
    assert_eq!(common::mode_of(path.parent().unwrap()), 0o755);

    // Replacing keeps the mode asked for and leaves no temporary file behind.
    h.write_file(p, b"two\n", 0o640).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
    assert_eq!(common::mode_of(&path), 0o640);
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    assert!(h.remove_file(p).await.unwrap());
    assert!(!h.remove_file(p).await.unwrap());
    assert!(!path.exists());
}

/// A file made only when none is there: of concurrent makers one wins, the others find
/// its bytes; the file is the mode asked for, and no temporary file is left.
#[tokio::test]
async fn create_new_file_never_replaces_one() {
    let s = common::servers();
    let h = Arc::new(host(&s, pinned(&s)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let p = path.to_str().unwrap().to_string();

    let makers: Vec<_> = (0u8..8)
        .map(|i| {
            let (h, p) = (h.clone(), p.clone());
            tokio::spawn(async move { h.create_new_file(&p, &[i; 32], 0o600).await.unwrap() })
        })
        .collect();
    let mut made = 0;
    for m in makers {
        made += usize::from(m.await.unwrap());
    }
    assert_eq!(made, 1, "exactly one maker wins");
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.len() == 32 && bytes.iter().all(|b| *b == bytes[0]),
        "{bytes:?}"
    );
    assert_eq!(common::mode_of(&path), 0o600);
    assert!(!h.create_new_file(&p, b"other", 0o600).await.unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[tokio::test]
async fn tricky_values_survive_ssh_and_bash() {
    let s = common::servers();
    let h = host(
        &s,
        HostKeyPolicy::KnownHosts(s.get("CIRCLECI_TEST_SSH_KNOWN_HOSTS").into()),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("customizations");
    let value = "p@ss \"quoted\" $HOME `id` \\back\nnewline ünï 'single' !bang";
    let text = render(&[("VAULT__TOKEN", value)], Style::Export).unwrap();
    h.write_file(path.to_str().unwrap(), text.as_bytes(), 0o600)
        .await
        .unwrap();
    let got = common::bash(&format!("source {:?}; printf '%s' \"$VAULT__TOKEN\"", path));
    assert_eq!(String::from_utf8(got).unwrap(), value);
}

#[tokio::test]
async fn one_connection_serves_many_concurrent_calls() {
    let s = common::servers();
    let h = Arc::new(host(&s, pinned(&s)));
    let dir = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let h = h.clone();
        let p = dir
            .path()
            .join(format!("f{i}"))
            .to_str()
            .unwrap()
            .to_string();
        tasks.push(tokio::spawn(async move {
            let body = format!("file {i}\n").repeat(1000);
            h.write_file(&p, body.as_bytes(), 0o600).await.unwrap();
            let back = h.read_file(&p).await.unwrap().unwrap();
            assert_eq!(back.content, body.as_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 40);
}

#[tokio::test]
async fn errors_say_what_failed_where() {
    let s = common::servers();
    let h = host(&s, pinned(&s));
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let bad = blocker.join("child");
    let e = h
        .write_file(bad.to_str().unwrap(), b"x", 0o600)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), SshErrorKind::Io);
    assert!(e.to_string().contains(blocker.to_str().unwrap()), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("root@127.0.0.1:{}", s.ssh_port())),
        "{e}"
    );

    // A key the server does not accept.
    let other = tempfile::tempdir().unwrap();
    let key = other.path().join("k");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let h2 = ServicesHost::new(SshConfig {
        auth: SshAuth::Key(Secret::new(std::fs::read_to_string(&key).unwrap())),
        ..h.config().clone()
    });
    let e = h2.check().await.unwrap_err();
    assert_eq!(e.kind(), SshErrorKind::Auth);
    // The message and every cause below it.
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(
        !text.contains("PRIVATE KEY"),
        "the key must never appear in errors: {text}"
    );

    // Nothing listening.
    let h3 = ServicesHost::new(SshConfig {
        port: common::closed_port(),
        ..h.config().clone()
    });
    assert_eq!(h3.check().await.unwrap_err().kind(), SshErrorKind::Connect);

    // A known_hosts file that does not list the host.
    let empty = other.path().join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let h4 = ServicesHost::new(SshConfig {
        host_key: HostKeyPolicy::KnownHosts(empty),
        ..h.config().clone()
    });
    let e = h4.check().await.unwrap_err();
    assert_eq!(e.kind(), SshErrorKind::HostKey);
    assert!(e.to_string().contains("is not in"), "{e}");
}

#[tokio::test]
async fn sudo_writes_as_root_for_a_non_root_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = common::servers();
    let base = host(&s, pinned(&s));
    // A directory only root may enter, like /etc/circleconfig's parents for `ubuntu`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.path().join("circleconfig/shared/redis");
    let p = path.to_str().unwrap();

    let as_user = |sudo| {
        ServicesHost::new(SshConfig {
            user: s.get("CIRCLECI_TEST_SSH_SUDO_USER").into(),
            sudo,
            ..base.config().clone()
        })
    };

    // Without sudo the non-root user is refused, typed as such (the resource layer
    // tells the user to set sudo = true), and the message says as whom.
    let e = as_user(false).write_file(p, b"x", 0o600).await.unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
    assert!(e.is_permission_denied(), "{e:?}");
    assert!(e.to_string().contains("not as root"), "{e}");
    assert!(!path.exists());

    // With sudo the same user writes as root.
    let h = as_user(true);
    h.write_file(p, b"export REDIS_HOST=\"r\"\n", 0o600)
        .await
        .unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(
        h.read_file(p).await.unwrap().unwrap().content,
        b"export REDIS_HOST=\"r\"\n"
    );
    assert!(h.remove_file(p).await.unwrap());
}

/// Commands run over the same connection: the simulator's replicatedctl and docker
/// (first on the test sshd's PATH) answer; an argument full of shell syntax reaches the
/// program as one literal argument; a secret goes on stdin; a deadline ends a command.
// The guard is held across awaits on purpose: it serialises whole tests, threads apart.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn commands_run_quoted_with_stdin_and_a_deadline() {
    // `replicatedctl app status` reads the simulator, which other tests reconfigure.
    let _turn = common::sim::SIMULATOR
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let s = common::servers();
    // `docker exec slanger` below needs the app's containers running.
    common::sim::app_started(&s);
    let h = host(&s, pinned(&s));
    let t = Duration::from_secs(10);
    let status = h
        .run(
            &RemoteCommand::new(Program::Replicatedctl, ["app", "status", "-o", "json"]).unwrap(),
            None,
            t,
        )
        .await
        .unwrap();
    assert!(status.success(), "{}", status.evidence());
    assert!(status.stdout_text().contains("\"DesiredState\""));

    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("pwned");
    let hostile = format!("x; touch {0} $(touch {0}) `touch {0}`", marker.display());
    let out = h
        .run(
            &RemoteCommand::new(Program::Docker, ["logs", hostile.as_str()]).unwrap(),
            None,
            t,
        )
        .await
        .unwrap();
    assert_eq!(out.status, Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("No such container: {hostile}")),
        "{out:?} {}",
        out.evidence()
    );
    assert!(!marker.exists(), "the remote shell ran part of an argument");

    let secret = b"on-stdin-never-argv";
    let echo =
        RemoteCommand::new(Program::Docker, ["exec", "slanger", "bash", "-c", "cat"]).unwrap();
    let out = h.run(&echo, Some(secret), t).await.unwrap();
    assert_eq!(out.stdout, secret);
    assert!(!format!("{echo:?} {echo}").contains("on-stdin"));

    let slow = RemoteCommand::new(
        Program::Docker,
        ["exec", "slanger", "bash", "-c", "sleep 3"],
    )
    .unwrap();
    let started = std::time::Instant::now();
    let e = h
        .run(&slow, None, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(e, SshError::Command { .. }), "{e}");
    assert!(e.to_string().contains("no result within 1s"), "{e}");
}

/// Issue 28: one command takes job after job on its stdin, each ended by a frame on
/// both streams. A job's output comes back whole (no last line break needed), a failed
/// job leaves the command open, output after a stream's frame does not undo it (the
/// frames may arrive in either order), a job that misses its deadline closes the
/// command, and a command that ends before its job is an error with what it printed.
// The guard is held across awaits on purpose: it serialises whole tests, threads apart.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn jobs_go_one_line_each_to_one_command_and_end_by_their_frames() {
    let _turn = common::sim::SIMULATOR
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let s = common::servers();
    let h = host(&s, pinned(&s));
    let t = Duration::from_secs(10);
    // A temporary container of a restore image, as the migration's tools run in.
    let name = "circle-jobs-test";
    let _rm = common::sim::Removed(
        std::path::Path::new(s.get("CIRCLECI_TEST_SIM")).join("docker"),
        name,
    );
    let run = RemoteCommand::new(
        Program::Docker,
        [
            "run",
            "--name",
            name,
            "-d",
            "postgres:15",
            "sleep",
            "infinity",
        ],
    )
    .unwrap();
    let started = h.run(&run, None, t).await.unwrap();
    assert!(started.success(), "{}", started.evidence());
    // The job `stray` ends its stderr first, then writes there again (its background
    // process, as a digest left running would), and ends stdout half a second later.
    let script = "m=$1; while IFS=$'\\t' read -r a b; do ( case $a in \
         stray) (sleep 0.2; echo late >&2) & printf '\\n%s\\n' \"$m\" >&2; sleep 0.5; echo early;; \
         fail) echo oops >&2; exit 3;; slow) sleep 5;; *) printf '%s+%s' \"$a\" \"$b\";; esac ) < /dev/null; \
         s=$?; printf '\\n%s\\t%s\\n' \"$m\" \"$s\"; [ \"$a\" = stray ] || printf '\\n%s\\n' \"$m\" >&2; done";
    let mark = new_mark();
    let cmd = RemoteCommand::new(
        Program::Docker,
        ["exec", "-i", name, "bash", "-c", script, "jobs", &mark],
    )
    .unwrap();
    let mut jobs = h.jobs(&cmd, &mark, None, t).await.unwrap();
    let out = jobs.job(&["x", "y z"], t).await.unwrap();
    assert_eq!(
        (out.status, out.stdout_text()),
        (Some(0), "x+y z".to_string())
    );
    let out = jobs.job(&["fail", "-"], t).await.unwrap();
    assert_eq!(out.status, Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert!(jobs.open());
    let out = jobs
        .job(&["stray", "-"], Duration::from_secs(4))
        .await
        .unwrap();
    assert_eq!(
        (out.status, out.stdout_text()),
        (Some(0), "early\n".to_string())
    );
    // The stray line came after the job's stderr frame, while its stdout was still
    // read: it is nobody's, and the next job's stderr does not get it.
    let out = jobs.job(&["a", "b"], t).await.unwrap();
    assert_eq!(out.stdout_text(), "a+b");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(jobs.job(&["tab\there", "b"], t).await.is_err());
    let e = jobs
        .job(&["slow", "-"], Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("no result of the job within 1s"),
        "{e}"
    );
    assert!(!jobs.open());
    let e = jobs.job(&["x", "y"], t).await.unwrap_err();
    assert!(e.to_string().contains("after the command had ended"), "{e}");

    let mark = new_mark();
    let cmd = RemoteCommand::new(
        Program::Docker,
        [
            "exec",
            "-i",
            name,
            "bash",
            "-c",
            "echo gone >&2; exit 4",
            "jobs",
            &mark,
        ],
    )
    .unwrap();
    let mut jobs = h.jobs(&cmd, &mark, None, t).await.unwrap();
    let e = jobs.job(&["x", "y"], t).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("it ended (status 4) before its job did")
            && e.to_string().contains("gone"),
        "{e}"
    );
    assert!(!jobs.open());
}

/// A command past its deadline is given up on: sent SIGTERM (docker may be) and its
/// session counted taken until sshd lets it go, which sshd does only once the command
/// has ended, closed channel or not. (Given back at once, as before, nine such commands
/// left the tenth refused after two seconds of retries.) Commands that ignore the TERM
/// keep their sessions to their end, and the next command waits for one.
// The guard is held across awaits on purpose: it serialises whole tests, threads apart.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn commands_given_up_on_hold_their_sessions_until_they_end() {
    let _turn = common::sim::SIMULATOR
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let s = common::servers();
    common::sim::app_started(&s);
    let h = host(&s, pinned(&s));
    h.check().await.unwrap();
    let short = Duration::from_secs(1);
    let quick = RemoteCommand::new(
        Program::Docker,
        ["exec", "slanger", "bash", "-c", "echo ok"],
    )
    .unwrap();
    let script = "trap '' TERM; sleep 6";
    let slow =
        RemoteCommand::new(Program::Docker, ["exec", "slanger", "bash", "-c", script]).unwrap();
    let runs = futures_util::future::join_all((0..9).map(|_| h.run(&slow, None, short))).await;
    for r in runs {
        let e = r.unwrap_err();
        assert!(e.to_string().contains("no result within 1s"), "{e}");
    }
    let t = std::time::Instant::now();
    let out = h.run(&quick, None, Duration::from_secs(20)).await.unwrap();
    assert!(out.success(), "{}", out.evidence());
    assert_eq!(out.stdout_text().trim(), "ok");
    // Started a second after the nine: it waited for them to end, at six seconds.
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
}

/// sshd allows ten sessions on one connection (MaxSessions), the SFTP channel one of
/// them: more commands at once than that wait for a session instead of being refused.
// The guard is held across awaits on purpose: it serialises whole tests, threads apart.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn more_commands_at_once_than_sshd_has_sessions_wait_their_turn() {
    let _turn = common::sim::SIMULATOR
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let s = common::servers();
    common::sim::app_started(&s);
    let h = host(&s, pinned(&s));
    // The SFTP channel first, as in every apply. Each command outlasts the retries of
    // a refused open (2 s): only waiting for a session lets the last five run.
    h.check().await.unwrap();
    let sleep = RemoteCommand::new(
        Program::Docker,
        ["exec", "slanger", "bash", "-c", "sleep 3; echo done"],
    )
    .unwrap();
    let t = Duration::from_secs(30);
    let runs = futures_util::future::join_all((0..14).map(|_| h.run(&sleep, None, t))).await;
    for r in runs {
        let out = r.unwrap();
        assert!(out.success(), "{}", out.evidence());
        assert_eq!(out.stdout_text().trim(), "done");
    }
}
