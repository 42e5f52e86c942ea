//! Properties: every value we render comes back byte for byte when bash sources the
//! file; and every hand-written file our parser accepts (with `$NAME` / `${NAME}`
//! expansions of earlier variables, as the runbook's MongoDB section writes) gives the
//! values bash gives when it sources it.

use proptest::prelude::*;
use std::process::Command;
use terraform_provider_circleci::testing::envfile::{parse, render, Style};

fn bash_value(file: &std::path::Path, key: &str) -> Vec<u8> {
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!("set -e; source \"$1\"; printf '%s' \"${key}\""))
        .arg("bash")
        .arg(file)
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("bash must be installed");
    assert!(
        out.status.success(),
        "bash failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn tricky() -> impl Strategy<Value = String> {
    // Weighted towards the characters that matter to the shell, plus any Unicode.
    let special = prop::sample::select(vec![
        "\"", "'", "$", "`", "\\", "\n", " ", "\t", "!", "$(id)", "${HOME}", "*", "#", ";", "&",
        "|", "~", "é", "日本", "\\\"", "$'x'", "\r",
    ]);
    prop::collection::vec(
        prop_oneof![special.prop_map(String::from), "[^\\x00]{0,4}"],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    // Failures are kept next to this file (the default would look for a parallel
    // directory of tests/it/main.rs).
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            "tests/it/envfile_bash.proptest-regressions"
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn bash_reads_back_every_value(v in tricky(), slanger in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("customizations");
        let style = if slanger { Style::Slanger } else { Style::Export };
        let text = render(&[("VALUE", &v), ("OTHER", "x")], style).unwrap();
        std::fs::write(&f, &text).unwrap();
        prop_assert_eq!(bash_value(&f, "VALUE"), v.as_bytes().to_vec());
        // And our own parser agrees with bash.
        let parsed = parse(&text).unwrap();
        prop_assert_eq!(parsed[0].value.as_str(), v.as_str());
    }

    #[test]
    fn accepted_hand_written_files_read_as_bash_reads_them(lines in hand_written()) {
        let text: String = lines.concat();
        let Ok(parsed) = parse(&text) else { return Ok(()) };
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("customizations");
        std::fs::write(&f, &text).unwrap();
        for a in &parsed {
            let want = terraform_provider_circleci::testing::envfile::lookup(&parsed, &a.key).unwrap();
            prop_assert_eq!(bash_value_strict(&f, &a.key), want.as_bytes().to_vec(), "{:?}", text);
        }
    }
}

/// Like [`bash_value`], with unset variables an error and no environment at all.
fn bash_value_strict(file: &std::path::Path, key: &str) -> Vec<u8> {
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!("set -eu; source \"$1\"; printf '%s' \"${key}\""))
        .arg("bash")
        .arg(file)
        .env_clear()
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("bash must be installed");
    assert!(
        out.status.success(),
        "bash failed on a file the parser accepted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Lines of `[export ]NAME=value` over three names, the values made of pieces that
/// expand, quote, or need a shell.
fn hand_written() -> impl Strategy<Value = Vec<String>> {
    let piece = prop::sample::select(vec![
        "$A",
        "${A}",
        "$B",
        "${B}x",
        "$Cy",
        "\"$A/x?y=1&z\"",
        "'$A'",
        "\\$A",
        "$",
        "a$",
        "$/",
        "x",
        "@:/?",
        "\"a b\"",
        "\"$\"",
        "~",
        ":~",
        "$(id)",
        "`id`",
        "${A:-x}",
        "${#A}",
        "$1",
        "$$",
        "$'x'",
        "$((1))",
        "\"${B}\"",
        "é",
        "\\\n",
        "$[1]",
        "$RANDOM",
        "\"$A\\\nB\"",
    ]);
    let value = prop::collection::vec(piece, 0..5).prop_map(|p| p.concat());
    let line = (
        prop::sample::select(vec!["A", "B", "C", "AB"]),
        any::<bool>(),
        value,
    )
        .prop_map(|(k, export, v)| format!("{}{k}={v}\n", if export { "export " } else { "" }));
    prop::collection::vec(line, 1..6)
}
