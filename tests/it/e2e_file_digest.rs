//! `file_sha256` of a file holding a secret, through the terraform CLI: a keyed digest
//! under a key that only the Services machine holds (0600, in the provider's 0700
//! directory there), and a state from before keyed digests (a PBKDF2 digest) kept as it
//! is while the file does not change, so that upgrading the provider restarts nothing.

use crate::common;

use aws_lc_rs::pbkdf2;
use base64::Engine;
use common::{hcl_str, mode_of, servers, Tf};

const TYPE: &str = "circleci_external_rabbitmq";

fn mq(path: &std::path::Path, port: u16, pw: &str) -> String {
    format!(
        "\nresource \"{TYPE}\" \"mq\" {{\n  host        = \"127.0.0.1\"\n  port        = {port}\n  \
         username    = \"circle\"\n  password_wo = {}\n  password_wo_version = 1\n  config_path = {path:?}\n}}\n",
        hcl_str(pw)
    )
}

/// The provider's block of the file (its lines between the markers), as the digest
/// covers it.
fn block_of(path: &std::path::Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut inside = false;
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        if line.starts_with(&format!("# BEGIN terraform-provider-circleci {TYPE}")) {
            inside = true;
        } else if line.starts_with(&format!("# END terraform-provider-circleci {TYPE}")) {
            inside = false;
        } else if inside {
            out.push_str(line);
        }
    }
    assert!(!out.is_empty(), "no block in {text}");
    out.into_bytes()
}

/// The digest an earlier provider stored for `content`, written out independently of
/// the provider's code: PBKDF2-HMAC-SHA256, 600,000 iterations, a 16-byte random salt,
/// `pbkdf2-sha256$600000$SALT$DIGEST` in unpadded base64.
fn old_digest(content: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).unwrap();
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(600_000).unwrap(),
        &salt,
        content,
        &mut out,
    );
    format!(
        "pbkdf2-sha256$600000${}${}",
        b64.encode(salt),
        b64.encode(out)
    )
}

fn stored_digest(tf: &Tf) -> String {
    let st = tf.state_json();
    let res = st["values"]["root_module"]["resources"].as_array().unwrap();
    let mq = res.iter().find(|r| r["type"] == TYPE).unwrap();
    mq["values"]["file_sha256"].as_str().unwrap().to_string()
}

/// Sets `file_sha256` in the state file, as an earlier provider left it.
fn set_stored_digest(tf: &Tf, digest: &str) {
    let path = tf.path().join("terraform.tfstate");
    let mut st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    st["serial"] = (st["serial"].as_i64().unwrap() + 1).into();
    let res = st["resources"].as_array_mut().unwrap();
    let mq = res.iter_mut().find(|r| r["type"] == TYPE).unwrap();
    mq["instances"][0]["attributes"]["file_sha256"] = digest.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&st).unwrap()).unwrap();
}

#[test]
fn keyed_digest_and_a_state_from_before_it() {
    let s = servers();
    let root = tempfile::tempdir().unwrap();
    let mq_path = root.path().join("etc/circleconfig/shared/rabbitmq");
    let key_dir = root.path().join("data/circle/external-services-cutover");
    let key_path = key_dir.join("file-digest.key");
    let pw = s.get("CIRCLECI_TEST_MQ_PASSWORD");
    let tf = Tf::new(&format!(
        "{}{}",
        s.provider_block(""),
        mq(&mq_path, s.mq_port(), pw)
    ));

    // The first write makes the key on the Services machine: 32 bytes only the login
    // may read, in a directory only it may enter. The state holds a keyed digest of
    // the block, and neither the key nor the block's plain hash.
    let plan = common::flat(&tf.ok(&["plan", "-no-color"]));
    assert!(
        plan.contains("+ file_sha256 = (known after apply)"),
        "{plan}"
    );
    tf.apply();
    assert_eq!(mode_of(&key_path), 0o600);
    assert_eq!(mode_of(&key_dir), 0o700);
    let key = std::fs::read(&key_path).unwrap();
    assert_eq!(key.len(), 32);
    let keyed = stored_digest(&tf);
    assert!(keyed.starts_with("hmac-sha256$"), "{keyed}");
    let state = std::fs::read_to_string(tf.path().join("terraform.tfstate")).unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    for (what, shown) in [
        ("the key (hex)", hex),
        (
            "the key (base64)",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(&key),
        ),
        ("the block's SHA-256", common_sha256(&block_of(&mq_path))),
    ] {
        assert!(!state.contains(&shown), "{what} is in the state");
    }
    assert_eq!(tf.plan_code(), 0);

    // A state from before keyed digests: the PBKDF2 digest of the same block. Plan and
    // refresh keep it as it is (a restart that names it is not triggered).
    let old = old_digest(&block_of(&mq_path));
    set_stored_digest(&tf, &old);
    assert_eq!(
        tf.plan_code(),
        0,
        "an unchanged file with an old digest must plan no change"
    );
    refresh_only(&tf);
    assert_eq!(stored_digest(&tf), old, "refresh changed the old digest");
    assert_eq!(tf.plan_code(), 0);

    // The block changed out of band: drift, and the apply that repairs it stores the
    // keyed digest again (the same as before: the same block under the same key).
    let text = std::fs::read_to_string(&mq_path).unwrap();
    std::fs::write(&mq_path, text.replace("127.0.0.1", "elsewhere")).unwrap();
    let plan = plan_with_changes(&tf);
    assert!(plan.contains("was changed"), "{plan}");
    tf.apply();
    assert_eq!(stored_digest(&tf), keyed);
    assert_eq!(
        std::fs::read(&key_path).unwrap(),
        key,
        "the key was replaced"
    );
    assert_eq!(tf.plan_code(), 0);

    // A key replaced on the Services machine reads as a change, said as such.
    std::fs::remove_file(&key_path).unwrap();
    let plan = plan_with_changes(&tf);
    assert!(
        plan.contains("file digest key") && plan.contains("was replaced or removed"),
        "{plan}"
    );
    // A refresh saved while there is no key records that none is there; the plans
    // after it still say the block cannot be checked, never "no changes" (a digest of
    // "no key" would otherwise match itself for ever).
    refresh_only(&tf);
    assert_eq!(stored_digest(&tf), "hmac-sha256$no-key");
    let plan = plan_with_changes(&tf);
    assert!(plan.contains("there is no file digest key"), "{plan}");
    tf.apply();
    assert_eq!(mode_of(&key_path), 0o600);
    assert_ne!(std::fs::read(&key_path).unwrap(), key);
    let rekeyed = stored_digest(&tf);
    assert!(
        rekeyed.starts_with("hmac-sha256$") && rekeyed != keyed,
        "{rekeyed}"
    );
    assert_eq!(tf.plan_code(), 0);

    tf.ok(&["destroy", "-auto-approve", "-no-color", "-input=false"]);
}

/// `terraform apply -refresh-only`: the refreshed state saved, nothing else done.
fn refresh_only(tf: &Tf) {
    tf.ok(&[
        "apply",
        "-refresh-only",
        "-auto-approve",
        "-no-color",
        "-input=false",
    ]);
}

/// A plan that must show changes (exit code 2); its output, on one line.
fn plan_with_changes(tf: &Tf) -> String {
    let out = tf.run(&["plan", "-no-color", "-detailed-exitcode"]);
    let plan = common::flat(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(2), "{plan}");
    plan
}

/// Lower-case hex SHA-256, computed apart from the provider.
fn common_sha256(b: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
