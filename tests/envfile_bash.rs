//! Property: every value we render comes back byte for byte when bash sources the file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

use proptest::prelude::*;
use std::process::Command;
use terraform_provider_circleci::circleci::envfile::{parse, render, Style};

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
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

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
}
