//! `circleci_nomad_client_launch_config`: the runbook's "Nomad Clients" step for AWS.
//! Copies the Nomad client Auto Scaling group's launch configuration (or launch template
//! version) with only the Nomad servers list in its user_data rewritten, points the group
//! at the copy, and replaces the running clients batch by batch.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;

use super::{file_sha256, string_list, strings};

mod apply;
mod plan;
mod roll;
use crate::backends::autoscaling::Group;
use crate::backends::aws::{AwsClients, AwsError, AwsErrorKind};
use crate::backends::ec2::TemplateVersion;
use crate::circleci::nomad_user_data as ud;
use crate::plugin::{
    resource::changed, Applied, AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest,
    Resource, Schema, Type, Value,
};
use crate::provider::ProviderData;
pub(crate) use roll::move_back;
use std::sync::Arc;

const DEFAULT_PREFIX: &str = "circleci-nomad-clients-";
/// Length of the unique suffix added to `name_prefix`: a UTC timestamp to the
/// millisecond (17 digits) and 8 random hex digits.
const SUFFIX_LEN: usize = 25;
const MAX_NAME: usize = 255;

/// What a group launches from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Launch {
    Config(String),
    Template { id: String, version: String },
}

impl Launch {
    fn describe(&self) -> String {
        match self {
            Launch::Config(n) => format!("launch configuration {n}"),
            Launch::Template { id, version } => format!("launch template {id} version {version}"),
        }
    }
}

/// A launch configuration or template version read from AWS, with its user_data decoded.
enum Source {
    Config(Box<aws_sdk_autoscaling::types::LaunchConfiguration>),
    Template(TemplateVersion),
}

struct Loaded {
    launch: Launch,
    source: Source,
    user_data: String,
}

pub(crate) struct NomadClientLaunchConfig {
    data: Arc<ProviderData>,
}

impl NomadClientLaunchConfig {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        NomadClientLaunchConfig { data }
    }
}

fn group_attr() -> AttrPath {
    AttrPath::root("autoscaling_group_name")
}

/// An AWS failure as a diagnostic. `after` says what state things were left in.
fn aws_diag(e: AwsError, after: &str) -> Diagnostics {
    let (summary, hint) = match e.kind {
        AwsErrorKind::Unreachable => (
            "AWS is not reachable",
            "Check aws.endpoint / aws.region in the provider configuration and the network.",
        ),
        AwsErrorKind::Credentials => (
            "AWS credentials missing or refused",
            "Set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, aws.profile, or log in with `aws sso login`.",
        ),
        AwsErrorKind::Denied => (
            "AWS refused the request",
            "The credentials need autoscaling:Describe*, CreateLaunchConfiguration, DeleteLaunchConfiguration, \
             UpdateAutoScalingGroup, TerminateInstanceInAutoScalingGroup, and for launch templates \
             ec2:DescribeLaunchTemplateVersions, CreateLaunchTemplateVersion, DeleteLaunchTemplateVersions \
             (plus iam:PassRole for the instance profile).",
        ),
        AwsErrorKind::Config => (
            "AWS configuration incomplete",
            "Set aws.region (or aws.profile) in the provider configuration.",
        ),
        AwsErrorKind::NotFound | AwsErrorKind::Other => ("AWS request failed", ""),
    };
    let mut detail = e.message;
    for part in [after, hint] {
        if !part.is_empty() {
            detail.push_str(". ");
            detail.push_str(part.trim_end_matches('.'));
        }
    }
    detail.push('.');
    Diagnostic::error(summary, detail).into()
}

const NOTHING_CHANGED: &str = "Nothing was changed";

fn decode_user_data(b64: Option<&str>, what: &str) -> Result<String, Diagnostics> {
    let raw: String = b64
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if raw.is_empty() {
        return Err(Diagnostic::error(
            "No user_data",
            format!("{what} has no user_data, so there is no Nomad client configuration to rewrite. {NOTHING_CHANGED}."),
        )
        .at(group_attr())
        .into());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.as_bytes())
        .map_err(|e| {
            Diagnostics::from(
                Diagnostic::error(
                    "user_data is not base64",
                    format!("{what}: {e}. {NOTHING_CHANGED}."),
                )
                .at(group_attr()),
            )
        })?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(Diagnostic::error(
            "Compressed user_data",
            format!("{what} has gzip-compressed user_data; only plain-text scripts can be rewritten. {NOTHING_CHANGED}."),
        )
        .at(group_attr())
        .into());
    }
    String::from_utf8(bytes).map_err(|_| {
        Diagnostic::error(
            "user_data is not text",
            format!("{what} has user_data that is not UTF-8 text. {NOTHING_CHANGED}."),
        )
        .at(group_attr())
        .into()
    })
}

fn not_found_diag(what: &str, e: &ud::NotFound) -> Diagnostics {
    Diagnostic::error(
        "No Nomad servers list in the user_data",
        format!("{what}: {e}. {NOTHING_CHANGED}."),
    )
    .at(group_attr())
    .into()
}

/// Errors about what a configuration holds carry the group attribute; AWS failures
/// carry none.
fn is_content_error(d: &Diagnostics) -> bool {
    d.0.iter().any(|x| x.path.is_some())
}

fn current_launch(g: &Group) -> Result<Launch, Diagnostics> {
    if g.mixed_instances_policy {
        return Err(Diagnostic::error(
            "Mixed instances policy not supported",
            format!(
                "Auto Scaling group {} uses a mixed instances policy; this resource handles groups with a launch \
                 configuration or a single launch template. {NOTHING_CHANGED}.",
                g.name
            ),
        )
        .at(group_attr())
        .into());
    }
    if let Some(n) = &g.launch_configuration {
        return Ok(Launch::Config(n.clone()));
    }
    if let Some(t) = &g.launch_template {
        return Ok(Launch::Template {
            id: t.id.clone(),
            version: t.version.clone(),
        });
    }
    Err(Diagnostic::error(
        "Group has no launch configuration",
        format!(
            "Auto Scaling group {} names neither a launch configuration nor a launch template. {NOTHING_CHANGED}.",
            g.name
        ),
    )
    .at(group_attr())
    .into())
}

fn ours_from(v: &Value) -> Option<Launch> {
    launch_from(
        v.get("launch_configuration_name").as_str(),
        v.get("launch_template_id").as_str(),
        v.get("launch_template_version").as_str(),
    )
}

fn original_from(v: &Value) -> Option<Launch> {
    launch_from(
        v.get("original_launch_configuration_name").as_str(),
        v.get("launch_template_id").as_str(),
        v.get("original_launch_template_version").as_str(),
    )
}

fn launch_from(lc: Option<&str>, tid: Option<&str>, version: Option<&str>) -> Option<Launch> {
    match (lc, tid, version) {
        (Some(n), _, _) if !n.is_empty() => Some(Launch::Config(n.to_string())),
        (_, Some(id), Some(v)) if !id.is_empty() && !v.is_empty() => Some(Launch::Template {
            id: id.to_string(),
            version: v.to_string(),
        }),
        _ => None,
    }
}

/// Writes our copy and the original into the state's launch attributes.
fn set_launches(v: &mut Value, ours: &Launch, original: Option<&Launch>) {
    fn s(x: &str) -> Value {
        Value::string(x)
    }
    match ours {
        Launch::Config(n) => {
            v.set("launch_configuration_name", s(n));
            v.set("launch_template_id", s(""));
            v.set("launch_template_version", s(""));
        }
        Launch::Template { id, version } => {
            v.set("launch_configuration_name", s(""));
            v.set("launch_template_id", s(id));
            v.set("launch_template_version", s(version));
        }
    }
    let (lc, ltv) = match original {
        Some(Launch::Config(n)) => (n.clone(), String::new()),
        Some(Launch::Template { version, .. }) => (String::new(), version.clone()),
        None => (String::new(), String::new()),
    };
    v.set("original_launch_configuration_name", s(&lc));
    v.set("original_launch_template_version", s(&ltv));
}

/// `name_prefix` followed by a UTC timestamp to the millisecond and 8 random hex digits.
fn unique_name(prefix: &str) -> Result<String, Diagnostics> {
    unique_name_from(prefix, aws_lc_rs::rand::fill)
}

/// Fills a buffer with random bytes: the system's generator, or a test's.
type Fill = fn(&mut [u8]) -> Result<(), aws_lc_rs::error::Unspecified>;

fn unique_name_from(prefix: &str, fill: Fill) -> Result<String, Diagnostics> {
    let ts: String = humantime::format_rfc3339_millis(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let mut r = [0u8; 4];
    fill(&mut r).map_err(|_| {
        Diagnostic::error(
            "Could not name the new launch configuration",
            format!(
                "the system's random number generator failed, so no unique name could be made \
                 (name_prefix {prefix:?}). {NOTHING_CHANGED}."
            ),
        )
    })?;
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}{ts}{hex}"))
}

/// The longest rollout_timeout accepted: a day (plan refuses more).
pub(crate) const MAX_ROLLOUT: Duration = Duration::from_secs(24 * 3600);

fn rollout_settings(v: &Value) -> (bool, usize, Duration) {
    let terminate = v.get("rollout").as_str().unwrap_or("terminate") == "terminate";
    let batch = v
        .get("rollout_batch_size")
        .as_i64()
        .and_then(|b| usize::try_from(b).ok())
        .filter(|b| *b > 0)
        .unwrap_or(1);
    let timeout = v
        .get("rollout_timeout")
        .as_str()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(Duration::from_secs(20 * 60))
        .min(MAX_ROLLOUT);
    (terminate, batch, timeout)
}

#[async_trait]
impl Resource for NomadClientLaunchConfig {
    fn type_name(&self) -> &'static str {
        "circleci_nomad_client_launch_config"
    }

    fn schema(&self) -> Schema {
        Schema::new(0, plan::schema_block())
    }
    fn validate(&self, config: &Value) -> Diagnostics {
        plan::validate(config)
    }

    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        diags: &mut Diagnostics,
    ) -> Vec<AttrPath> {
        self.plan_change(req, planned, diags).await
    }

    async fn create(&self, planned: &Value, _config: &Value) -> Applied {
        let applied = self.create_applied(planned).await;
        crate::resources::services_restart::ServicesRestart::new(self.data.clone())
            .after_failed_step(planned, applied)
            .await
    }

    async fn update(&self, prior: &Value, planned: &Value, _config: &Value) -> Applied {
        let applied = self.update_applied(prior, planned).await;
        crate::resources::services_restart::ServicesRestart::new(self.data.clone())
            .after_failed_step(planned, applied)
            .await
    }

    async fn delete(&self, prior: &Value) -> Applied {
        self.delete_applied(prior).await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let aws = self.data.aws()?;
        let c = aws.clients().await.map_err(|e| aws_diag(e, ""))?;
        let name = state
            .get("autoscaling_group_name")
            .as_str()
            .unwrap_or_default();
        let Some(group) = c
            .autoscaling
            .group(name)
            .await
            .map_err(|e| aws_diag(e, ""))?
        else {
            return Ok(None);
        };
        let mut fresh = state.clone();
        let ours = ours_from(state);
        let current = current_launch(&group).ok();
        let mut drift = Vec::new();
        if let Some(o) = &ours {
            if current.as_ref() != Some(o) {
                drift.push(format!(
                    "the group uses {} instead of {}",
                    current
                        .as_ref()
                        .map(Launch::describe)
                        .unwrap_or_else(|| "no single launch configuration".into()),
                    o.describe()
                ));
            }
        }
        // Our copy, and what the group's clients are actually told: the servers in the
        // configuration it uses now (one request when that is ours).
        let ours_loaded = match &ours {
            Some(o) => {
                let (exists, loaded) = self.load_for_read(c, o).await?;
                if !exists {
                    drift.push(format!("{} was deleted", o.describe()));
                }
                loaded
            }
            None => None,
        };
        let current_loaded = match &current {
            Some(cur) if Some(cur) == ours.as_ref() => ours_loaded,
            Some(cur) => self.load_for_read(c, cur).await?.1,
            None => None,
        };
        if let Some(l) = current_loaded {
            if Some(&l.launch) == ours.as_ref() {
                fresh.set(
                    "user_data_sha256",
                    Value::string(file_sha256(l.user_data.as_bytes())),
                );
            }
            if let Ok(lists) = ud::find(&l.user_data) {
                fresh.set("nomad_servers", string_list(&lists[0].items));
            }
        }
        let live = group.instance_ids();
        let pending: Vec<String> = strings(state.get("pending_instance_ids"))
            .into_iter()
            .filter(|id| live.contains(id))
            .collect();
        fresh.set("pending_instance_ids", string_list(&pending));
        fresh.set("drift", Value::string(drift.join("; ")));
        Ok(Some(fresh))
    }

    async fn import(&self, id: &str) -> Result<Value, Diagnostics> {
        let aws = self.data.aws()?;
        let c = aws.clients().await.map_err(|e| aws_diag(e, ""))?;
        let group = c
            .autoscaling
            .group(id)
            .await
            .map_err(|e| aws_diag(e, ""))?
            .ok_or_else(|| {
                Diagnostics::from(Diagnostic::error(
                    "Cannot import",
                    format!(
                        "there is no Auto Scaling group named {id:?} in region {}",
                        c.region
                    ),
                ))
            })?;
        let current = current_launch(&group)?;
        let mut v = Value::Null;
        v.set("id", Value::string(id));
        v.set("autoscaling_group_name", Value::string(id));
        v.set("nomad_servers", string_list(&[]));
        v.set("name_prefix", Value::string(DEFAULT_PREFIX));
        v.set("rollout", Value::string("terminate"));
        v.set("rollout_batch_size", Value::int(1));
        v.set("rollout_timeout", Value::string("20m"));
        v.set("restore_on_destroy", Value::Bool(true));
        v.set("config_root", Value::string("/"));
        v.set(
            "builds_timeout",
            Value::string(crate::resources::cutover::BUILDS_TIMEOUT),
        );
        v.set(
            "embedded_nomad_endpoint",
            Value::string(crate::resources::cutover::DEFAULT_EMBEDDED_NOMAD),
        );
        set_launches(&mut v, &current, None);
        v.set("previous_servers", string_list(&[]));
        v.set("user_data_sha256", Value::string(""));
        v.set("replaced_instance_ids", string_list(&[]));
        v.set("pending_instance_ids", string_list(&[]));
        v.set("drift", Value::string(""));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::roll::replacements;
    use super::*;

    #[test]
    fn names_fit_the_limit() {
        let n = unique_name(DEFAULT_PREFIX).unwrap();
        assert_eq!(n.len(), DEFAULT_PREFIX.len() + SUFFIX_LEN, "{n}");
        assert!(n.starts_with(DEFAULT_PREFIX));
        assert_ne!(unique_name("x").unwrap(), unique_name("x").unwrap());
    }

    #[test]
    fn a_failing_random_generator_is_an_error() {
        let d = unique_name_from("x", |_| Err(aws_lc_rs::error::Unspecified)).unwrap_err();
        let text = format!("{d:?}");
        assert!(text.contains("random"), "{text}");
    }

    #[test]
    fn replacements_count_new_in_service_instances_only() {
        use crate::backends::autoscaling::GroupInstance;
        let inst = |id: &str, state: &str| GroupInstance {
            id: id.into(),
            state: state.into(),
        };
        let old = vec!["i-old1".to_string(), "i-old2".to_string()];
        let mut g = Group {
            name: "g".into(),
            launch_configuration: Some("lc".into()),
            launch_template: None,
            mixed_instances_policy: false,
            desired_capacity: 2,
            instances: vec![inst("i-old2", "InService"), inst("i-new1", "Pending")],
        };
        // The replacement is still Pending: not ready.
        assert_eq!(replacements(&g, &old, 1), (0, 1));
        g.instances[1].state = "InService".into();
        assert_eq!(replacements(&g, &old, 1), (1, 1));
        // An old instance InService never counts as a replacement.
        assert_eq!(replacements(&g, &old, 2), (1, 2));
        // Someone scaled the group down meanwhile: the desired capacity caps the need.
        g.desired_capacity = 1;
        assert_eq!(replacements(&g, &old, 2), (1, 1));
    }

    #[test]
    fn instances_are_found_by_their_nodes_fingerprint() {
        use super::roll::instance_nodes;
        let node = |name: &str| crate::backends::nomad::Node {
            id: format!("id-{name}"),
            name: name.into(),
            address: String::new(),
            status: "ready".into(),
            modify_index: 1,
            drain: false,
            eligibility: String::new(),
        };
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let seen = vec![
            (node("a"), Some("i-1".to_string())),
            (node("b"), Some("i-9".to_string())),
        ];
        let m = instance_nodes(&ids(&["i-1", "i-2"]), &seen).unwrap();
        // i-2 is no node of this Nomad: none of its builds runs there.
        assert_eq!(m.keys().collect::<Vec<_>>(), ["i-1"]);
        assert_eq!(m["i-1"][0].name, "a");
        // A node that does not say which instance it is may be i-2: refused.
        let mut silent = seen.clone();
        silent.push((node("c"), None));
        let e = instance_nodes(&ids(&["i-1", "i-2"]), &silent).unwrap_err();
        assert!(e.contains("c (id-c)"), "{e}");
        assert!(e.contains("whether instance(s) i-2 are among them"), "{e}");
        // Every instance found: the silent node is some other client.
        assert!(instance_nodes(&ids(&["i-1"]), &silent).is_ok());
        // A client registered again under a new ID: both its nodes are drained.
        let mut twice = seen.clone();
        twice.push((node("a2"), Some("i-1".to_string())));
        let m = instance_nodes(&ids(&["i-1"]), &twice).unwrap();
        assert_eq!(m["i-1"].len(), 2);
        // A down node without a fingerprint runs nothing: no refusal.
        let mut down = node("d");
        down.status = "down".into();
        let mut with_down = seen.clone();
        with_down.push((down, None));
        assert!(instance_nodes(&ids(&["i-1", "i-2"]), &with_down).is_ok());
    }

    #[test]
    fn launches_round_trip_through_state() {
        let mut v = Value::Null;
        let ours = Launch::Template {
            id: "lt-1".into(),
            version: "4".into(),
        };
        let orig = Launch::Template {
            id: "lt-1".into(),
            version: "$Latest".into(),
        };
        set_launches(&mut v, &ours, Some(&orig));
        assert_eq!(ours_from(&v), Some(ours));
        assert_eq!(original_from(&v), Some(orig));
        let mut v = Value::Null;
        set_launches(&mut v, &Launch::Config("copy".into()), None);
        assert_eq!(ours_from(&v), Some(Launch::Config("copy".into())));
        assert_eq!(original_from(&v), None);
    }

    #[test]
    fn validation_names_the_attribute() {
        let r = NomadClientLaunchConfig::new(Arc::new(ProviderData::default()));
        let mut cfg = Value::Null;
        cfg.set("autoscaling_group_name", Value::string("g"));
        cfg.set(
            "nomad_servers",
            Value::List(vec![Value::string("ok:4647"), Value::string("bad host")]),
        );
        cfg.set("rollout", Value::string("rolling"));
        cfg.set("rollout_batch_size", Value::int(0));
        let d = r.validate(&cfg);
        let paths: Vec<String> =
            d.0.iter()
                .filter_map(|x| x.path.as_ref().map(|p| p.to_string()))
                .collect();
        assert_eq!(
            paths,
            vec!["nomad_servers[1]", "rollout", "rollout_batch_size"]
        );
    }
}
