//! The Nomad client user_data rewriter against random, hostile input: it never panics,
//! and what it rewrites keeps the text before the list.

use proptest::prelude::*;
use terraform_provider_circleci::testing::nomad_user_data::rewrite;

proptest! {
    // Fixed case count; proptest prints the seed and the minimal failing input.
    // Failures are kept next to this file (the default would look for a parallel
    // directory of tests/it/main.rs).
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            "tests/it/nomad_user_data_fuzz.proptest-regressions"
        ))),
        ..ProptestConfig::default()
    })]

    /// Hostile user_data never panics the rewriter, and a rewrite keeps every byte
    /// outside the list.
    #[test]
    fn hostile_user_data_never_panics(
        head in "[a-z{}\\[\\]\"#/*,= \n\\\\éü€😀]{0,60}",
        list in "[a-z0-9.:\"#/*,= \n\\\\éü€😀]{0,40}",
        tail in "[a-z{}\\[\\]\"#/*,= \n\\\\éü€😀]{0,60}",
    ) {
        for text in [
            format!("{head}client {{ servers = [{list}] }}{tail}"),
            format!("{head}client {{\n server_join {{ retry_join = [{list}\n]}}}}{tail}"),
            format!("{head}{list}{tail}"),
            format!("client {{ servers = [ /* {head} */ {list}] }}"),
        ] {
            if let Ok(r) = rewrite(&text, &["10.0.0.1:4647".to_string()]) {
                prop_assert!(r.text.starts_with(&text[..text.find('[').unwrap_or(0)]));
            }
        }
    }
}
