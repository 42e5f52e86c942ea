//! `circleci_nomad_client_launch_config`: the runbook's "Nomad Clients" step for AWS.
//! Copies the Nomad client Auto Scaling group's launch configuration (or launch template
//! version) with only the Nomad servers list in its user_data rewritten, points the group
//! at the copy, and replaces the running clients batch by batch.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;

use super::{file_sha256, string_list, strings};
use crate::backends::autoscaling::Group;
use crate::backends::aws::{AwsClients, AwsError, AwsErrorKind};
use crate::backends::ec2::TemplateVersion;
use crate::circleci::nomad_user_data as ud;
use crate::plugin::{
    resource::changed, Applied, AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest,
    Resource, Schema, Type, Value,
};
use crate::provider::ProviderData;
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

pub struct NomadClientLaunchConfig {
    data: Arc<ProviderData>,
}

impl NomadClientLaunchConfig {
    pub fn new(data: Arc<ProviderData>) -> Self {
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
        AwsErrorKind::Config => ("AWS configuration incomplete", ""),
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
fn unique_name(prefix: &str) -> String {
    let ts: String = humantime::format_rfc3339_millis(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let mut r = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut r);
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{ts}{hex}")
}

fn rollout_settings(v: &Value) -> (bool, usize, Duration) {
    let terminate = v.get("rollout").as_str().unwrap_or("terminate") == "terminate";
    let batch = v
        .get("rollout_batch_size")
        .as_i64()
        .filter(|b| *b > 0)
        .unwrap_or(1) as usize;
    let timeout = v
        .get("rollout_timeout")
        .as_str()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(Duration::from_secs(20 * 60));
    (terminate, batch, timeout)
}

/// Instances to replace: everything in the group that is not already going away.
fn live_instances(g: &Group) -> Vec<String> {
    g.instances
        .iter()
        .filter(|i| !i.state.starts_with("Terminat") && !i.state.starts_with("Detach"))
        .map(|i| i.id.clone())
        .collect()
}

/// (new instances InService, how many are needed) once `replaced` old instances have
/// been terminated: as many as were replaced, capped by the desired capacity.
fn replacements(g: &Group, old: &[String], replaced: usize) -> (usize, usize) {
    let fresh = g
        .instances
        .iter()
        .filter(|i| i.state == "InService" && !old.contains(&i.id))
        .count();
    (fresh, replaced.min(g.desired_capacity.max(0) as usize))
}

struct RolloutFailure {
    replaced: Vec<String>,
    pending: Vec<String>,
    diags: Diagnostics,
}

impl NomadClientLaunchConfig {
    async fn load(&self, c: &AwsClients, launch: &Launch) -> Result<Option<Loaded>, Diagnostics> {
        let what = launch.describe();
        match launch {
            Launch::Config(n) => {
                let Some(lc) = c
                    .autoscaling
                    .launch_configuration(n)
                    .await
                    .map_err(|e| aws_diag(e, NOTHING_CHANGED))?
                else {
                    return Ok(None);
                };
                let user_data = decode_user_data(lc.user_data(), &what)?;
                Ok(Some(Loaded {
                    launch: launch.clone(),
                    source: Source::Config(Box::new(lc)),
                    user_data,
                }))
            }
            Launch::Template { id, version } => {
                let Some(v) = c
                    .ec2
                    .describe_version(id, version)
                    .await
                    .map_err(|e| aws_diag(e, NOTHING_CHANGED))?
                else {
                    return Ok(None);
                };
                let user_data = decode_user_data(v.user_data.as_deref(), &what)?;
                Ok(Some(Loaded {
                    launch: launch.clone(),
                    source: Source::Template(v),
                    user_data,
                }))
            }
        }
    }

    /// For refresh: (exists, loaded). AWS failures are errors; a configuration whose
    /// user_data cannot be read is reported as existing but not loaded.
    async fn load_for_read(
        &self,
        c: &AwsClients,
        launch: &Launch,
    ) -> Result<(bool, Option<Loaded>), Diagnostics> {
        match self.load(c, launch).await {
            Ok(Some(l)) => Ok((true, Some(l))),
            Ok(None) => Ok((false, None)),
            Err(d) if is_content_error(&d) => Ok((true, None)),
            Err(d) => Err(d),
        }
    }

    async fn group(&self, c: &AwsClients, name: &str) -> Result<Group, Diagnostics> {
        c.autoscaling
            .group(name)
            .await
            .map_err(|e| aws_diag(e, NOTHING_CHANGED))?
            .ok_or_else(|| {
                Diagnostic::error(
                    "Auto Scaling group not found",
                    format!(
                        "there is no Auto Scaling group named {name:?} in region {}. {NOTHING_CHANGED}.",
                        c.region
                    ),
                )
                .at(group_attr())
                .into()
            })
    }

    /// Creates our copy of `from` with `text` as user_data.
    async fn copy(
        &self,
        c: &AwsClients,
        from: &Loaded,
        text: &str,
        prefix: &str,
    ) -> Result<Launch, Diagnostics> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
        match &from.source {
            Source::Config(lc) => {
                let name = unique_name(prefix);
                c.autoscaling
                    .copy_launch_configuration(lc, &name, &b64)
                    .await
                    .map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
                Ok(Launch::Config(name))
            }
            Source::Template(v) => {
                let desc = format!(
                    "circleci_nomad_client_launch_config: version {} with the Nomad servers rewritten",
                    v.number
                );
                let n = c
                    .ec2
                    .create_version(&v.template_id, v.number, &desc, &v.params, &b64)
                    .await
                    .map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
                Ok(Launch::Template {
                    id: v.template_id.clone(),
                    version: n.to_string(),
                })
            }
        }
    }

    async fn switch(&self, c: &AwsClients, group: &str, to: &Launch) -> Result<(), AwsError> {
        match to {
            Launch::Config(n) => c.autoscaling.use_launch_configuration(group, n).await,
            Launch::Template { id, version } => {
                c.autoscaling.use_launch_template(group, id, version).await
            }
        }
    }

    /// Deletes one of our copies unless a group still uses it; says why not otherwise.
    async fn remove(&self, c: &AwsClients, launch: &Launch) -> Result<Option<String>, AwsError> {
        match launch {
            Launch::Config(n) => {
                let users = c.autoscaling.groups_using_launch_configuration(n).await?;
                if !users.is_empty() {
                    return Ok(Some(format!(
                        "launch configuration {n} was not deleted: Auto Scaling group(s) {} still use it",
                        users.join(", ")
                    )));
                }
                c.autoscaling.delete_launch_configuration(n).await?;
            }
            Launch::Template { id, version } => {
                let Ok(number) = version.parse::<i64>() else {
                    return Ok(None);
                };
                let users = c
                    .autoscaling
                    .groups_using_template_version(id, number)
                    .await?;
                if !users.is_empty() {
                    return Ok(Some(format!(
                        "launch template {id} version {number} was not deleted: Auto Scaling group(s) {} still use it",
                        users.join(", ")
                    )));
                }
                if let Some(v) = c.ec2.describe_version(id, version).await? {
                    if v.is_default {
                        return Ok(Some(format!(
                            "launch template {id} version {number} was not deleted: it has been made the template's \
                             default version"
                        )));
                    }
                    c.ec2.delete_version(id, number).await?;
                }
            }
        }
        Ok(None)
    }

    /// Replaces `old` instances in batches; each batch waits until as many new instances
    /// are InService as have been replaced so far (capped by the desired capacity).
    async fn rollout(
        &self,
        c: &AwsClients,
        group: &str,
        old: &[String],
        batch: usize,
        timeout: Duration,
    ) -> Result<Vec<String>, RolloutFailure> {
        let deadline = Instant::now() + timeout;
        let mut replaced: Vec<String> = Vec::new();
        const LEFT: &str =
            "The group already uses the new configuration; pending_instance_ids lists the \
                            instances not yet replaced";
        let fail =
            |replaced: &[String], done: usize, summary: &str, detail: String| RolloutFailure {
                replaced: replaced.to_vec(),
                pending: old[done..].to_vec(),
                diags: Diagnostic::error(summary, format!("{detail}. {LEFT}.")).into(),
            };
        let describe = || async {
            match c.autoscaling.group(group).await {
                Ok(Some(g)) => Ok(g),
                Ok(None) => Err((
                    "Auto Scaling group disappeared during the rollout",
                    format!("group {group} no longer exists"),
                )),
                Err(e) => Err(("Rollout interrupted", e.to_string())),
            }
        };
        let mut done = 0;
        for chunk in old.chunks(batch.max(1)) {
            let live = match describe().await {
                Ok(g) => live_instances(&g),
                Err((summary, detail)) => return Err(fail(&replaced, done, summary, detail)),
            };
            for id in chunk {
                if !live.contains(id) {
                    continue;
                }
                if let Err(e) = c.autoscaling.replace_instance(id).await {
                    return Err(fail(
                        &replaced,
                        done,
                        "Rollout interrupted",
                        format!("terminating {id}: {e}"),
                    ));
                }
                log::info!("rollout of {group}: terminated {id}");
                replaced.push(id.clone());
            }
            done += chunk.len();
            let mut pause = Duration::from_millis(250);
            loop {
                let g = match describe().await {
                    Ok(g) => g,
                    Err((summary, detail)) => return Err(fail(&replaced, done, summary, detail)),
                };
                let (fresh, need) = replacements(&g, old, replaced.len());
                log::debug!("rollout of {group}: {fresh} of {need} replacements InService");
                if fresh >= need {
                    break;
                }
                if Instant::now() + pause > deadline {
                    return Err(fail(
                        &replaced,
                        done,
                        "Rollout timed out",
                        format!(
                            "after {}: {fresh} of {need} replacement instances are InService in {group}",
                            humantime::format_duration(timeout)
                        ),
                    ));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
        Ok(replaced)
    }

    /// Runs the rollout (if configured) and records its outcome in `state`.
    async fn roll(
        &self,
        c: &AwsClients,
        state: &mut Value,
        old: &[String],
        diags: &mut Diagnostics,
    ) {
        let (terminate, batch, timeout) = rollout_settings(state);
        let group = state
            .get("autoscaling_group_name")
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !terminate || old.is_empty() {
            state.set("replaced_instance_ids", string_list(&[]));
            state.set("pending_instance_ids", string_list(&[]));
            return;
        }
        match self.rollout(c, &group, old, batch, timeout).await {
            Ok(replaced) => {
                state.set("replaced_instance_ids", string_list(&replaced));
                state.set("pending_instance_ids", string_list(&[]));
            }
            Err(f) => {
                state.set("replaced_instance_ids", string_list(&f.replaced));
                state.set("pending_instance_ids", string_list(&f.pending));
                diags.extend(f.diags);
            }
        }
    }

    /// Copies `source`, switches the group to the copy, and rolls the instances.
    /// `retire` is our previous copy, deleted after the switch.
    async fn replace_config(
        &self,
        c: &AwsClients,
        planned: &Value,
        group: &Group,
        source: &Loaded,
        original: Option<&Launch>,
        retire: Option<&Launch>,
    ) -> Applied {
        let servers = strings(planned.get("nomad_servers"));
        let prefix = planned
            .get("name_prefix")
            .as_str()
            .unwrap_or(DEFAULT_PREFIX)
            .to_string();
        let what = source.launch.describe();
        let rewritten = match ud::rewrite(&source.user_data, &servers) {
            Ok(r) => r,
            Err(e) => return Applied::from_result(Err(not_found_diag(&what, &e))),
        };
        // The plan showed previous_servers; if the group's configuration changed since,
        // the plan is stale: say so before touching anything.
        if let Some(planned_prev) = planned.get("previous_servers").as_list() {
            let planned_prev = strings(&Value::List(planned_prev.to_vec()));
            if planned_prev != rewritten.previous {
                return Applied::from_result(Err(Diagnostic::error(
                    "Launch configuration changed since plan",
                    format!(
                        "the plan was made when {} named the Nomad servers {planned_prev:?}; it now names {:?}. \
                         {NOTHING_CHANGED}. Run terraform plan again.",
                        source.launch.describe(),
                        rewritten.previous
                    ),
                )
                .at(group_attr())
                .into()));
            }
        }
        // Recorded before the switch: afterwards some APIs report old instances under
        // the new configuration's name.
        let old = live_instances(group);
        let ours = match self.copy(c, source, &rewritten.text, &prefix).await {
            Ok(l) => l,
            Err(d) => return Applied::from_result(Err(d)),
        };
        log::info!(
            "{}: created {} from {what}; switching the group",
            group.name,
            ours.describe()
        );
        if let Err(e) = self.switch(c, &group.name, &ours).await {
            let mut d = aws_diag(
                e,
                &format!(
                    "The group still uses {what}; the new copy ({}) was deleted again",
                    ours.describe()
                ),
            );
            if let Err(e2) = self.remove(c, &ours).await {
                d.push(Diagnostic::warning(
                    "Could not delete the unused copy",
                    format!("{}: {e2}", ours.describe()),
                ));
            }
            return Applied::from_result(Err(d));
        }
        let mut state = planned.clone();
        let mut diags = Diagnostics::new();
        state.set("id", Value::string(&group.name));
        set_launches(&mut state, &ours, original);
        state.set("previous_servers", string_list(&rewritten.previous));
        state.set(
            "user_data_sha256",
            Value::string(file_sha256(rewritten.text.as_bytes())),
        );
        state.set("drift", Value::string(""));
        if let Some(prev) = retire.filter(|p| **p != ours) {
            match self.remove(c, prev).await {
                Ok(None) => {}
                Ok(Some(why)) => diags.push(Diagnostic::warning("Previous copy kept", why)),
                Err(e) => diags.push(Diagnostic::warning(
                    "Previous copy not deleted",
                    format!("{}: {e}", prev.describe()),
                )),
            }
        }
        self.roll(c, &mut state, &old, &mut diags).await;
        Applied {
            state: Some(state),
            diags,
        }
    }

    /// Best effort at plan time: the servers the group's configuration names now. Content
    /// errors are reported; AWS being unreachable is left to apply.
    async fn preview(
        &self,
        name: &str,
        servers: &[String],
        diags: &mut Diagnostics,
    ) -> Option<Vec<String>> {
        let aws = self.data.aws().ok()?;
        let c = aws.clients().await.ok()?;
        let g = c.autoscaling.group(name).await.ok()??;
        let launch = match current_launch(&g) {
            Ok(l) => l,
            Err(d) => {
                diags.extend(d);
                return None;
            }
        };
        let loaded = match self.load(c, &launch).await {
            Ok(Some(l)) => l,
            Ok(None) => return None,
            Err(d) => {
                // Content errors now; AWS failures wait for apply.
                if is_content_error(&d) {
                    diags.extend(d);
                }
                return None;
            }
        };
        match ud::rewrite(&loaded.user_data, servers) {
            Ok(r) => Some(r.previous),
            Err(e) => {
                diags.extend(not_found_diag(&launch.describe(), &e));
                None
            }
        }
    }

    async fn create_applied(&self, planned: &Value) -> Applied {
        let r = async {
            let aws = self.data.aws()?;
            let c = aws.clients().await.map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
            let name = planned
                .get("autoscaling_group_name")
                .as_str()
                .unwrap_or_default();
            let group = self.group(c, name).await?;
            let launch = current_launch(&group)?;
            let Some(source) = self.load(c, &launch).await? else {
                return Err(Diagnostic::error(
                    "Launch configuration not found",
                    format!(
                        "Auto Scaling group {name} names {}, which does not exist. {NOTHING_CHANGED}.",
                        launch.describe()
                    ),
                )
                .at(group_attr())
                .into());
            };
            Ok(self
                .replace_config(c, planned, &group, &source, Some(&launch), None)
                .await)
        }
        .await;
        r.unwrap_or_else(|d| Applied::from_result(Err(d)))
    }

    async fn update_applied(&self, prior: &Value, planned: &Value) -> Applied {
        let r = async {
            let aws = self.data.aws()?;
            let c = aws.clients().await.map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
            let name = planned
                .get("autoscaling_group_name")
                .as_str()
                .unwrap_or_default();
            if !planned.get("user_data_sha256").is_unknown() {
                // No new copy: settings only, and any rollout left over.
                let mut state = planned.clone();
                let mut diags = Diagnostics::new();
                let pending = strings(prior.get("pending_instance_ids"));
                if planned.get("pending_instance_ids").is_unknown() {
                    self.roll(c, &mut state, &pending, &mut diags).await;
                }
                state.set("drift", Value::string(""));
                return Ok(Applied {
                    state: Some(state),
                    diags,
                });
            }
            let group = self.group(c, name).await?;
            let current = current_launch(&group)?;
            let ours = ours_from(prior);
            let prior_original = original_from(prior);
            // The group on our copy: copy it again, the original stays what it was. On
            // anything else (someone re-pointed it): that becomes the original.
            let (source_launch, original) = if Some(&current) == ours.as_ref() {
                (current.clone(), prior_original.clone())
            } else {
                (current.clone(), Some(current.clone()))
            };
            let source = match self.load(c, &source_launch).await? {
                Some(s) => s,
                None => {
                    let fallback = match &prior_original {
                        Some(o) => self.load(c, o).await?,
                        None => None,
                    };
                    fallback.ok_or_else(|| {
                        Diagnostics::from(
                            Diagnostic::error(
                                "Nothing to copy",
                                format!(
                                    "Auto Scaling group {name} uses {}, which does not exist, and the original \
                                     configuration is gone too. {NOTHING_CHANGED}.",
                                    source_launch.describe()
                                ),
                            )
                            .at(group_attr()),
                        )
                    })?
                }
            };
            // Every live instance is rolled, including any an earlier interrupted rollout
            // left pending.
            Ok(self
                .replace_config(c, planned, &group, &source, original.as_ref(), ours.as_ref())
                .await)
        }
        .await;
        r.unwrap_or_else(|d| Applied::from_result(Err(d)))
    }

    async fn delete_applied(&self, prior: &Value) -> Applied {
        if prior.get("restore_on_destroy").as_bool() == Some(false) {
            return Applied::default();
        }
        let r = async {
            let aws = self.data.aws()?;
            let c = aws
                .clients()
                .await
                .map_err(|e| aws_diag(e, "Nothing was changed"))?;
            let name = prior
                .get("autoscaling_group_name")
                .as_str()
                .unwrap_or_default();
            let Some(ours) = ours_from(prior) else {
                return Ok(Diagnostics::new());
            };
            let mut diags = Diagnostics::new();
            let group = c
                .autoscaling
                .group(name)
                .await
                .map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
            if let Some(g) = &group {
                let on_ours = current_launch(g).ok().as_ref() == Some(&ours);
                if on_ours {
                    match original_from(prior) {
                        Some(orig) => {
                            let exists = match &orig {
                                Launch::Config(n) => c
                                    .autoscaling
                                    .launch_configuration(n)
                                    .await
                                    .map_err(|e| aws_diag(e, NOTHING_CHANGED))?
                                    .is_some(),
                                Launch::Template { id, version } => c
                                    .ec2
                                    .describe_version(id, version)
                                    .await
                                    .map_err(|e| aws_diag(e, NOTHING_CHANGED))?
                                    .is_some(),
                            };
                            if exists {
                                self.switch(c, name, &orig)
                                    .await
                                    .map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
                            } else {
                                diags.push(Diagnostic::warning(
                                    "Original configuration gone",
                                    format!(
                                        "{} no longer exists, so Auto Scaling group {name} stays on {}",
                                        orig.describe(),
                                        ours.describe()
                                    ),
                                ));
                            }
                        }
                        None => diags.push(Diagnostic::warning(
                            "Original configuration unknown",
                            format!(
                                "this resource was imported, so the configuration the group used before is not \
                                 known; Auto Scaling group {name} stays on {}",
                                ours.describe()
                            ),
                        )),
                    }
                }
            }
            match self.remove(c, &ours).await {
                Ok(None) => {}
                Ok(Some(why)) => diags.push(Diagnostic::warning("Copy kept", why)),
                // An unused template version is harmless and lives in the user's own
                // template; not every endpoint can delete one. Say so, do not fail.
                Err(e) if matches!(ours, Launch::Template { .. }) => diags.push(Diagnostic::warning(
                    "Template version not deleted",
                    format!(
                        "Auto Scaling group {name} was pointed back at the original, but {} could not be deleted \
                         ({e}); delete it by hand",
                        ours.describe()
                    ),
                )),
                Err(e) => {
                    return Err(aws_diag(
                        e,
                        &format!(
                            "Auto Scaling group {name} was pointed back at the original; {} was not deleted",
                            ours.describe()
                        ),
                    ))
                }
            }
            Ok(diags)
        }
        .await;
        match r {
            Ok(diags) => Applied { state: None, diags },
            Err(d) => Applied {
                state: Some(prior.clone()),
                diags: d,
            },
        }
    }
}

fn schema_block() -> Block {
    let s = |n: &str| Attribute::new(n, Type::String);
    Block::new()
        .description(
            "Points the Nomad clients at the external Nomad servers (runbook: *Nomad Clients*, AWS \
             installations). Reads the Auto Scaling group's launch configuration, rewrites only the Nomad \
             `servers = [...]` list (or `server_join { retry_join = [...] }`) inside the `client { ... }` block of \
             its user_data, creates a copy with every other field unchanged, points the group at the copy, then \
             replaces the running clients batch by batch so new ones start with the new servers. Groups that use \
             a launch template get a new template version instead. The plan shows the servers the group's \
             configuration names now (`previous_servers`) next to `nomad_servers`; if that configuration changes \
             between plan and apply, the apply stops before changing anything. Destroying it points the group \
             back at the original and deletes the copy.",
        )
        .attr(s("id").computed().description("The Auto Scaling group's name."))
        .attr(s("autoscaling_group_name").required().description(
            "Name of the Nomad client Auto Scaling group; enterprise-setup names it `<prefix>_nomad_clients_asg` \
             (`circleci_nomad_clients_asg` by default). Changing it replaces the resource.",
        ))
        .attr(Attribute::new("nomad_servers", Type::list(Type::String)).required().description(
            "The external Nomad servers as the clients reach them, `host:port` (RPC port, normally 4647), \
             e.g. `[\"nomad-1.internal:4647\"]`. Written into the user_data in place of the old list.",
        ))
        .attr(s("name_prefix").optional().computed().description(
            "Start of the copy's name; a timestamp and random digits are appended. Default \
             `circleci-nomad-clients-`. At most 230 characters. Changing it names the next copy only.",
        ))
        .attr(s("rollout").optional().computed().description(
            "`terminate` (default): after switching the group, terminate the instances that run the old \
             configuration, batch by batch, and wait for their replacements to be InService (the runbook's \
             step 4). `none`: switch only; instances pick up the new servers when they are next replaced.",
        ))
        .attr(Attribute::new("rollout_batch_size", Type::Number).optional().computed().description(
            "How many instances to terminate at a time. Default `1`.",
        ))
        .attr(s("rollout_timeout").optional().computed().description(
            "Time allowed for the whole rollout, e.g. `20m` (default). When it runs out the apply fails and the \
             group keeps the new configuration. After an update, `pending_instance_ids` lists the instances \
             not yet replaced and the next apply replaces them; after a create, Terraform marks the resource \
             tainted and the next apply starts over (the original is restored first).",
        ))
        .attr(Attribute::new("restore_on_destroy", Type::Bool).optional().computed().description(
            "On destroy, point the group back at the original configuration (if it still exists) and delete \
             the copy. A copy some group still uses is never deleted. Default `true`; `false` leaves the group \
             as it is.",
        ))
        .attr(s("launch_configuration_name").computed().description(
            "Name of the copy the group now uses (empty for a launch template group).",
        ))
        .attr(s("launch_template_id").computed().description(
            "The group's launch template (empty for a launch configuration group).",
        ))
        .attr(s("launch_template_version").computed().description(
            "The template version this resource created and the group now uses (empty for a launch \
             configuration group). It becomes the template's latest version, so other groups that launch \
             from the same template at `$Latest` get the new servers too until it is deleted.",
        ))
        .attr(s("original_launch_configuration_name").computed().description(
            "The launch configuration the group used before; destroy restores it. Empty after import.",
        ))
        .attr(s("original_launch_template_version").computed().description(
            "The template version (`3`, `$Latest`, `$Default`) the group used before; destroy restores it.",
        ))
        .attr(Attribute::new("previous_servers", Type::list(Type::String)).computed().description(
            "The Nomad servers list the group's configuration held before the last change.",
        ))
        .attr(s("user_data_sha256").computed().description(
            "SHA-256 of the copy's decoded user_data; refresh compares it with AWS.",
        ))
        .attr(Attribute::new("replaced_instance_ids", Type::list(Type::String)).computed().description(
            "Instances the last rollout terminated.",
        ))
        .attr(Attribute::new("pending_instance_ids", Type::list(Type::String)).computed().description(
            "Instances still running the previous configuration after a rollout failed or timed out; the next \
             apply replaces them.",
        ))
        .attr(s("drift").computed().description(
            "What refresh found changed outside Terraform (the group pointed elsewhere, the copy deleted); empty \
             when nothing. A non-empty value plans an update that makes a new copy.",
        ))
}

#[async_trait]
impl Resource for NomadClientLaunchConfig {
    fn type_name(&self) -> &'static str {
        "circleci_nomad_client_launch_config"
    }

    fn schema(&self) -> Schema {
        Schema::new(0, schema_block())
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        if let Some(n) = config.get("autoscaling_group_name").as_str() {
            if n.is_empty() || n.len() > MAX_NAME || n.chars().any(char::is_control) {
                diags.attr_error(
                    group_attr(),
                    "Invalid Auto Scaling group name",
                    "must be 1-255 characters without control characters",
                );
            }
        }
        if let Some(items) = config.get("nomad_servers").as_list() {
            if items.is_empty() {
                diags.attr_error(
                    AttrPath::root("nomad_servers"),
                    "No Nomad servers",
                    "list at least one server, e.g. [\"nomad-1.internal:4647\"]",
                );
            }
            let mut seen = std::collections::HashSet::new();
            for (i, v) in items.iter().enumerate() {
                let at = AttrPath::root("nomad_servers").index(i as i64);
                match v.as_str() {
                    Some(s) => {
                        if let Err(e) = ud::check_server(s) {
                            diags.attr_error(at, "Invalid Nomad server address", e);
                        } else if !seen.insert(s.to_string()) {
                            diags.attr_error(
                                at,
                                "Duplicate Nomad server",
                                format!("{s:?} is listed twice"),
                            );
                        }
                    }
                    None if v.is_null() => {
                        diags.attr_error(at, "Invalid Nomad server address", "must not be null")
                    }
                    None => {}
                }
            }
        }
        if let Some(p) = config.get("name_prefix").as_str() {
            if p.len() > MAX_NAME - SUFFIX_LEN || p.chars().any(char::is_control) {
                diags.attr_error(
                    AttrPath::root("name_prefix"),
                    "Invalid name_prefix",
                    format!(
                        "must be at most {} characters without control characters (a {SUFFIX_LEN}-character \
                         suffix is appended and names are limited to {MAX_NAME})",
                        MAX_NAME - SUFFIX_LEN
                    ),
                );
            }
        }
        if let Some(r) = config.get("rollout").as_str() {
            if r != "none" && r != "terminate" {
                diags.attr_error(
                    AttrPath::root("rollout"),
                    "Invalid rollout",
                    format!("{r:?} is not one of none, terminate"),
                );
            }
        }
        let b = config.get("rollout_batch_size");
        if !b.is_null() && !b.is_unknown() {
            match b.as_i64() {
                Some(n) if n >= 1 => {}
                _ => diags.attr_error(
                    AttrPath::root("rollout_batch_size"),
                    "Invalid rollout_batch_size",
                    "must be a whole number of at least 1",
                ),
            }
        }
        if let Some(t) = config.get("rollout_timeout").as_str() {
            super::validate::duration(t, AttrPath::root("rollout_timeout"), &mut diags);
        }
        diags
    }

    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        diags: &mut Diagnostics,
    ) -> Vec<AttrPath> {
        super::set_defaults(
            req.config,
            planned,
            [
                ("name_prefix", Value::string(DEFAULT_PREFIX)),
                ("rollout", Value::string("terminate")),
                ("rollout_batch_size", Value::int(1)),
                ("rollout_timeout", Value::string("20m")),
                ("restore_on_destroy", Value::Bool(true)),
            ],
        );
        planned.set("id", planned.get("autoscaling_group_name").clone());
        planned.set("drift", Value::string(""));
        let fresh = [
            "launch_configuration_name",
            "launch_template_id",
            "launch_template_version",
            "original_launch_configuration_name",
            "original_launch_template_version",
            "user_data_sha256",
            "replaced_instance_ids",
            "pending_instance_ids",
        ];
        if req.is_create() {
            for a in fresh {
                planned.set(a, Value::Unknown);
            }
            planned.set("previous_servers", Value::Unknown);
            let name = planned
                .get("autoscaling_group_name")
                .as_str()
                .map(str::to_string);
            let servers = planned.get("nomad_servers");
            if let (Some(name), true) = (name, servers.is_fully_known()) {
                let servers = strings(servers);
                // previous_servers only: apply checks it is still true before changing
                // anything (a hash of the new user_data would fail Terraform's
                // consistency check instead, should the group change meanwhile).
                if let Some(prev) = self.preview(&name, &servers, diags).await {
                    planned.set("previous_servers", string_list(&prev));
                }
            }
            return vec![];
        }
        if changed(req.prior, planned, "autoscaling_group_name") {
            return vec![group_attr()];
        }
        let drifted = req
            .prior
            .get("drift")
            .as_str()
            .is_some_and(|d| !d.is_empty());
        // name_prefix only names future copies: changing it alone does not roll clients.
        let new_copy = changed(req.prior, planned, "nomad_servers") || drifted;
        if new_copy {
            for a in fresh {
                planned.set(a, Value::Unknown);
            }
            planned.set("previous_servers", req.prior.get("nomad_servers").clone());
        } else {
            let pending = strings(req.prior.get("pending_instance_ids"));
            let terminate = planned.get("rollout").as_str() == Some("terminate");
            if !pending.is_empty() && terminate {
                planned.set("pending_instance_ids", Value::Unknown);
                planned.set("replaced_instance_ids", Value::Unknown);
            }
        }
        vec![]
    }

    async fn create(&self, planned: &Value, _config: &Value) -> Result<Value, Diagnostics> {
        self.create_applied(planned).await.into_result()
    }

    async fn apply_create(&self, planned: &Value, _config: &Value) -> Applied {
        self.create_applied(planned).await
    }

    async fn apply_update(&self, prior: &Value, planned: &Value, _config: &Value) -> Applied {
        self.update_applied(prior, planned).await
    }

    async fn apply_delete(&self, prior: &Value) -> Applied {
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

    async fn update(
        &self,
        prior: &Value,
        planned: &Value,
        _config: &Value,
    ) -> Result<Value, Diagnostics> {
        self.update_applied(prior, planned).await.into_result()
    }

    async fn delete(&self, prior: &Value) -> Result<(), Diagnostics> {
        let a = self.delete_applied(prior).await;
        if a.diags.has_errors() {
            Err(a.diags)
        } else {
            Ok(())
        }
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
    use super::*;

    #[test]
    fn names_fit_the_limit() {
        let n = unique_name(DEFAULT_PREFIX);
        assert_eq!(n.len(), DEFAULT_PREFIX.len() + SUFFIX_LEN, "{n}");
        assert!(n.starts_with(DEFAULT_PREFIX));
        assert_ne!(unique_name("x"), unique_name("x"));
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
