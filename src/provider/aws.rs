//! The `aws` block: region, profile and endpoint over the standard AWS chain.

use crate::backends::aws::{Aws, AwsSettings};
use crate::plugin::{AttrPath, Attribute, Block, Diagnostics, Type, Value};

use super::AWS;

pub(super) fn block() -> Block {
    Block::new()
        .description(
            "AWS, for `circleci_nomad_client_launch_config` (EC2 Auto Scaling and launch templates). Unset \
             attributes fall back to the standard AWS chain: environment variables, the shared config and \
             credentials files (profiles, SSO), container and instance metadata. Nothing connects until a \
             resource needs it.",
        )
        .attr(Attribute::new("region", Type::String).optional().description(
            "AWS region of the Nomad client Auto Scaling group, e.g. `us-east-1`. Default: env `AWS_REGION`, \
             else the profile's region.",
        ))
        .attr(Attribute::new("profile", Type::String).optional().description(
            "Named profile of the shared AWS config and credentials files. Default: env `AWS_PROFILE`, else \
             `default`.",
        ))
        .attr(Attribute::new("endpoint", Type::String).optional().description(
            "Send every AWS request (Auto Scaling and EC2) to this URL instead of AWS's public endpoints: for \
             tests (moto) and private endpoints. Empty means unset. Default: env `AWS_ENDPOINT_URL`.",
        ))
        .attr(super::deadline_attr(
            "timeout",
            "Time allowed for each AWS request, its retries included (the rollout as a whole has \
             `rollout_timeout`)",
            "30s",
        ))
}

fn aws_path(attr: &str) -> AttrPath {
    AttrPath::root(AWS).attr(attr)
}

pub(super) fn validate(b: &Value, diags: &mut Diagnostics) {
    super::validate_deadlines(b, AWS, &["timeout"], diags);
    if let Some(e) = b.get("endpoint").as_str().filter(|e| !e.is_empty()) {
        match url::Url::parse(e) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => diags.attr_error(
                aws_path("endpoint"),
                "Invalid endpoint",
                format!("{e:?} is not an http:// or https:// URL"),
            ),
        }
    }
    // Empty strings mean "unset" (the standard chain decides), as for endpoint.
    if let Some(r) = b.get("region").as_str().filter(|r| !r.is_empty()) {
        let ok = r
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if !ok {
            diags.attr_error(
                aws_path("region"),
                "Invalid region",
                format!("{r:?} is not an AWS region name (e.g. us-east-1)"),
            );
        }
    }
}

/// The settings; the chain itself is loaded on first use.
pub(super) fn build(b: &Value) -> Result<Aws, Diagnostics> {
    let mut diags = Diagnostics::new();
    let timeout = super::deadline(b, AWS, "timeout", super::DEFAULT_TIMEOUT, &mut diags);
    if diags.has_errors() {
        return Err(diags);
    }
    let s = |n: &str| {
        b.get(n)
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    Ok(Aws::new(AwsSettings {
        region: s("region"),
        profile: s("profile"),
        endpoint: s("endpoint"),
        timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_block_checks_name_their_attribute() {
        let mut d = Diagnostics::new();
        validate(
            &Value::object(&[
                ("region", Value::string("US East")),
                ("endpoint", Value::string("127.0.0.1:5000")),
            ]),
            &mut d,
        );
        let paths: Vec<String> =
            d.0.iter()
                .filter_map(|x| x.path.as_ref().map(|p| p.to_string()))
                .collect();
        assert_eq!(paths, vec!["aws.endpoint", "aws.region"]);
        let mut d = Diagnostics::new();
        validate(
            &Value::object(&[
                ("region", Value::string("")),
                ("endpoint", Value::string("")),
                ("profile", Value::string("ops")),
            ]),
            &mut d,
        );
        assert!(d.is_empty(), "empty means unset: {d}");
        validate(
            &Value::object(&[
                ("region", Value::string("eu-west-3")),
                ("endpoint", Value::string("http://127.0.0.1:55000")),
            ]),
            &mut d,
        );
        assert!(d.is_empty(), "{d}");
    }
}
