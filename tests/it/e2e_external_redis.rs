//! circleci_external_redis end to end: the real terraform CLI, the provider binary, a
//! real sshd as the Services machine and a real Redis.

use crate::common;

use common::{closed_port, mode_of, servers, Tf};

fn resource(name: &str, host: &str, port: u16, path: &str, extra: &str) -> String {
    format!(
        r#"
resource "circleci_external_redis" "{name}" {{
  host        = "{host}"
  port        = {port}
  config_path = "{path}"
  {extra}
}}
"#
    )
}

#[test]
fn lifecycle_apply_drift_repair_import_destroy() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let shared = root.path().join("etc/circleconfig/shared/redis");
    let slanger = root.path().join("etc/circleconfig/slanger/customizations");
    let main = format!(
        "{}{}{}",
        s.provider_block(""),
        resource(
            "shared",
            "127.0.0.1",
            s.redis_port(),
            shared.to_str().unwrap(),
            ""
        ),
        resource(
            "slanger",
            "127.0.0.1",
            s.redis_port(),
            slanger.to_str().unwrap(),
            "purpose = \"slanger\""
        ),
    );
    let tf = Tf::new(&main);

    // The plan shows the version the server itself reports (asked here over RESP).
    let reported = {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.redis_port())).unwrap();
        c.write_all(b"INFO server\r\n").unwrap();
        let mut buf = vec![0u8; 8192];
        let n = c.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap()
            .trim()
            .to_string()
    };
    let plan = common::flat(&tf.ok(&["plan", "-no-color"]));
    assert_eq!(
        plan.matches(&format!("+ server_version = \"{reported}\""))
            .count(),
        2,
        "{plan}"
    );

    // Apply writes both files, 0600, in the runbook's two forms.
    tf.apply();
    let port = s.redis_port();
    let redis = |c: String| common::block("circleci_external_redis", &c);
    assert_eq!(
        std::fs::read_to_string(&shared).unwrap(),
        redis(format!(
            "export REDIS_HOST=\"127.0.0.1\"\nexport REDIS_PORT=\"{port}\"\n"
        ))
    );
    assert_eq!(
        std::fs::read_to_string(&slanger).unwrap(),
        redis(format!("export REDIS_HOST=\"127.0.0.1\"\nREDIS_HOST=\"127.0.0.1\"\nexport REDIS_PORT=\"{port}\"\nREDIS_PORT=\"{port}\"\n"))
    );
    assert_eq!(mode_of(&shared), 0o600);
    // bash reads back what we meant.
    let got = common::bash(&format!(
        "source {:?}; printf '%s:%s' \"$REDIS_HOST\" \"$REDIS_PORT\"",
        shared
    ));
    assert_eq!(String::from_utf8(got).unwrap(), format!("127.0.0.1:{port}"));

    // Nothing to do on a second plan.
    assert_eq!(tf.plan_code(), 0, "a fresh apply must plan no changes");

    // Edit the file out of band: plan sees drift, apply repairs it.
    std::fs::write(
        &shared,
        "export REDIS_HOST=\"elsewhere\"\nexport REDIS_PORT=\"1\"\n",
    )
    .unwrap();
    assert_eq!(tf.plan_code(), 2, "an edited file must show as a change");
    tf.apply();
    assert!(std::fs::read_to_string(&shared)
        .unwrap()
        .contains("127.0.0.1"));
    assert_eq!(tf.plan_code(), 0);

    // Remove the file: refresh reports it as drift and the plan writes it again in
    // place (the same for every file-writing resource).
    std::fs::remove_file(&slanger).unwrap();
    let out = tf.run(&["plan", "-no-color", "-detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("circleci_external_redis.slanger will be updated in-place"),
        "{plan}"
    );
    assert!(
        plan.contains("is missing on the Services machine"),
        "{plan}"
    );
    tf.apply();
    assert!(slanger.exists());

    // Forget and import both: the plan afterwards is empty.
    tf.ok(&[
        "state",
        "rm",
        "circleci_external_redis.shared",
        "circleci_external_redis.slanger",
    ]);
    tf.ok(&[
        "import",
        "-no-color",
        "circleci_external_redis.shared",
        shared.to_str().unwrap(),
    ]);
    tf.ok(&[
        "import",
        "-no-color",
        "circleci_external_redis.slanger",
        slanger.to_str().unwrap(),
    ]);
    let st = tf.state_json();
    let res = st["values"]["root_module"]["resources"].as_array().unwrap();
    let slanger_state = res.iter().find(|r| r["name"] == "slanger").unwrap();
    assert_eq!(slanger_state["values"]["purpose"], "slanger");
    assert_eq!(slanger_state["values"]["port"], port as i64);
    assert_eq!(
        tf.plan_code(),
        0,
        "imported resources must match the configuration"
    );

    // Destroy removes only the provider's blocks: the lines written into the shared
    // file out of band are not the provider's and stay; the slanger file held only the
    // block and goes; other files are untouched.
    let keep = root.path().join("etc/circleconfig/shared/other");
    std::fs::write(&keep, "x").unwrap();
    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    assert_eq!(
        std::fs::read_to_string(&shared).unwrap(),
        "export REDIS_HOST=\"elsewhere\"\nexport REDIS_PORT=\"1\"\n"
    );
    assert!(!slanger.exists());
    assert!(keep.exists());
}

#[test]
fn wrong_pinned_host_key_fails_and_writes_nothing() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("etc/circleconfig/shared/redis");
    // A valid key that is not the server's.
    let wrong = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let main = format!(
        "{}{}",
        s.provider_block(&format!("host_key = {wrong:?}")),
        resource("r", "127.0.0.1", s.redis_port(), path.to_str().unwrap(), "")
    );
    let tf = Tf::new(&main);
    let out = tf.fails(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.contains("host key mismatch"), "{out}");
    // Both fingerprints are shown.
    assert!(out.matches("SHA256:").count() >= 2, "{out}");
    assert!(out.contains("Nothing was"), "{out}");
    assert!(!path.exists());
    assert!(
        !path.parent().unwrap().exists(),
        "not even the directory may be created"
    );

    // The right pinned key works.
    let main = format!(
        "{}{}",
        s.provider_block(&format!(
            "host_key = {:?}",
            s.get("CIRCLECI_TEST_SSH_HOST_KEY")
        )),
        resource("r", "127.0.0.1", s.redis_port(), path.to_str().unwrap(), "")
    );
    tf.write_main(&main);
    tf.apply();
    assert!(path.exists());
}

#[test]
fn unreachable_redis_fails_naming_host_port_and_writes_nothing() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("redis");
    let port = closed_port();
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        resource("r", "127.0.0.1", port, path.to_str().unwrap(), "")
    ));
    let out = tf.fails(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    assert!(out.contains("Redis is not reachable"), "{out}");
    assert!(!path.exists());

    // verify = false writes anyway.
    tf.write_main(&format!(
        "{}{}",
        s.provider_block(""),
        resource(
            "r",
            "127.0.0.1",
            port,
            path.to_str().unwrap(),
            "verify = false"
        )
    ));
    tf.apply();
    assert!(path.exists());
}

#[test]
fn bad_input_is_refused_at_plan_naming_the_attribute() {
    let s = servers();
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        r#"
resource "circleci_external_redis" "r" {
  host        = "not a host!"
  port        = 70000
  purpose     = "cache"
  config_path = "relative/path"
}
"#
    ));
    let out = tf.fails(&["plan", "-no-color"]);
    for needle in [
        "Invalid host",
        "Invalid port",
        "Invalid purpose",
        "Invalid path",
        "with circleci_external_redis.r",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // Terraform shows the attribute each error points at.
    assert!(out.contains("host        = \"not a host!\""), "{out}");
}

#[test]
fn changing_purpose_replaces_and_removes_the_old_file() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a");
    let b = root.path().join("b");
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        resource("r", "127.0.0.1", s.redis_port(), a.to_str().unwrap(), "")
    ));
    tf.apply();
    tf.write_main(&format!(
        "{}{}",
        s.provider_block(""),
        resource(
            "r",
            "127.0.0.1",
            s.redis_port(),
            b.to_str().unwrap(),
            "purpose = \"slanger\""
        )
    ));
    let plan = tf.ok(&["plan", "-no-color"]);
    assert!(plan.contains("must be replaced"), "{plan}");
    assert!(plan.contains("# forces replacement"), "{plan}");
    tf.apply();
    assert!(!a.exists());
    assert!(b.exists());
}

#[test]
fn missing_services_host_block_is_a_clear_error() {
    let _ = servers();
    let tf = Tf::new(
        r#"
terraform {
  required_providers {
    circleci = { source = "circleci/circleci" }
  }
}
provider "circleci" {}
resource "circleci_external_redis" "r" {
  host = "127.0.0.1"
}
"#,
    );
    let mut c = tf.cmd(&["apply", "-auto-approve", "-no-color"]);
    c.env_remove("CIRCLECI_SERVICES_HOST");
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(text.contains("services_host not configured"), "{text}");
}
