//! The `aws` block: region, profile and endpoint over the standard AWS chain.

use crate::backends::aws::{Aws, AwsSettings};
use crate::plugin::{AttrPath, Diagnostics};
use crate::resources::model::Known;
use crate::resources::validate::Check;

use super::{deadline_doc, DEADLINE};

/// The block's description.
pub(super) const DOC: &str =
    "AWS, for `circleci_nomad_client_launch_config` (EC2 Auto Scaling and launch templates). Unset \
     attributes fall back to the standard AWS chain: environment variables, the shared config and \
     credentials files (profiles, SSO), container and instance metadata. Nothing connects until a \
     resource needs it.";

/// `region`: an AWS region name; empty means unset (the standard chain decides).
fn region_check(r: &str) -> Result<(), String> {
    let ok = r
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("{r:?} is not an AWS region name (e.g. us-east-1)"))
    }
}

/// `endpoint`: an http:// or https:// URL; empty means unset.
fn endpoint_check(e: &str) -> Result<(), String> {
    if e.is_empty() {
        return Ok(());
    }
    match url::Url::parse(e) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(format!("{e:?} is not an http:// or https:// URL")),
    }
}

crate::model! {
    /// The `aws` block.
    #[derive(Default)]
    pub(crate) struct AwsBlock {
        region: Known<String> [optional, check(Check::Text("Invalid region", region_check)), doc(
            "AWS region of the Nomad client Auto Scaling group, e.g. `us-east-1`. Default: env `AWS_REGION`, \
             else the profile's region."
        )],
        profile: Known<String> [optional, doc(
            "Named profile of the shared AWS config and credentials files. Default: env `AWS_PROFILE`, else \
             `default`."
        )],
        endpoint: Known<String> [optional, check(Check::Text("Invalid endpoint", endpoint_check)), doc(
            "Send every AWS request (Auto Scaling and EC2) to this URL instead of AWS's public endpoints: for \
             tests (moto) and private endpoints. Empty means unset. Default: env `AWS_ENDPOINT_URL`."
        )],
        timeout: Known<String> [optional, check(DEADLINE), doc(deadline_doc(
            "Time allowed for each AWS request, its retries included (the rollout as a whole has \
             `rollout_timeout`)",
            "30s",
        ))],
    }
}

/// The settings; the chain itself is loaded on first use.
pub(super) fn build(b: &AwsBlock) -> Result<Aws, Diagnostics> {
    let mut diags = Diagnostics::new();
    let timeout = super::deadline(
        &b.timeout,
        AttrPath::root(super::AWS).attr("timeout"),
        super::DEFAULT_TIMEOUT,
        &mut diags,
    );
    if diags.has_errors() {
        return Err(diags);
    }
    // Empty strings mean "unset" (the standard chain decides).
    let s = |v: &Known<String>| v.value().filter(|v| !v.is_empty()).cloned();
    Ok(Aws::new(AwsSettings {
        region: s(&b.region),
        profile: s(&b.profile),
        endpoint: s(&b.endpoint),
        timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_config::{block, config, s, NO_ENV};
    use super::*;

    fn validated(f: impl FnOnce(&mut AwsBlock)) -> Diagnostics {
        super::super::validate(&config(|c| c.aws = block(f)), NO_ENV)
    }

    #[test]
    fn aws_block_checks_name_their_attribute() {
        let d = validated(|b| {
            b.region = s("US East");
            b.endpoint = s("127.0.0.1:5000");
        });
        let paths: Vec<String> =
            d.0.iter()
                .filter_map(|x| x.path.as_ref().map(|p| p.to_string()))
                .collect();
        assert_eq!(paths, vec!["aws.region", "aws.endpoint"]);
        let d = validated(|b| {
            b.region = s("");
            b.endpoint = s("");
            b.profile = s("ops");
        });
        assert!(d.is_empty(), "empty means unset: {d}");
        let d = validated(|b| {
            b.region = s("eu-west-3");
            b.endpoint = s("http://127.0.0.1:55000");
        });
        assert!(d.is_empty(), "{d}");
    }
}
