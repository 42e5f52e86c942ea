//! `circleci_nomad_client_launch_config`: the runbook's "Nomad Clients" step for AWS.
//! Copies the Nomad client Auto Scaling group's launch configuration (or launch template
//! version) with only the Nomad servers list in its user_data rewritten, points the group
//! at the copy, and replaces the running clients batch by batch.
//!
//! Here: the attributes (one [`model!`](crate::model) declaration, [`LaunchConfig`]) and
//! the hooks (validate, plan, read, import); `apply.rs` creates, updates and deletes,
//! `roll.rs` replaces the clients.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;

use super::cutover::{
    duration_or, StopAttrs, StopSettings, BUILDS_TIMEOUT, DEFAULT_EMBEDDED_NOMAD,
};
use super::file_sha256;
use super::model::{self, Known, Model};
use super::validate::Check;

mod apply;
mod roll;
#[cfg(test)]
mod tests;
use crate::backends::autoscaling::Group;
use crate::backends::aws::{AwsClients, AwsError, AwsErrorKind};
use crate::backends::ec2::TemplateVersion;
use crate::circleci::nomad_user_data as ud;
use crate::plugin::{
    Applied, AttrPath, Diagnostic, Diagnostics, PlanRequest, Resource, Schema, Value,
};
use crate::provider::ProviderData;
pub(crate) use roll::move_back;

const DEFAULT_PREFIX: &str = "circleci-nomad-clients-";
const DEFAULT_ROLLOUT_TIMEOUT: &str = "20m";
const DEFAULT_CONFIG_ROOT: &str = "/";
/// Length of the unique suffix added to `name_prefix`: a UTC timestamp to the
/// millisecond (17 digits) and 8 random hex digits.
const SUFFIX_LEN: usize = 25;
const MAX_NAME: usize = 255;

/// The longest rollout_timeout accepted: a day (plan refuses more).
pub(crate) const MAX_ROLLOUT: Duration = Duration::from_secs(24 * 3600);

const DESCRIPTION: &str = "Points the Nomad clients at the external Nomad servers (runbook: *Nomad Clients*, AWS \
     installations). Reads the Auto Scaling group's launch configuration, rewrites only the Nomad \
     `servers = [...]` list (or `server_join { retry_join = [...] }`) inside the `client { ... }` block of \
     its user_data, creates a copy with every other field unchanged, points the group at the copy, then \
     replaces the running clients batch by batch so new ones start with the new servers. Groups that use \
     a launch template get a new template version instead. The plan shows the servers the group's \
     configuration names now (`previous_servers`) next to `nomad_servers`; if that configuration changes \
     between plan and apply, the apply stops before changing anything. Destroying it points the group \
     back at the original and deletes the copy.";

/// What the apply does to the running clients once the group uses the copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rollout {
    /// Switch only: instances pick up the new servers when they are next replaced.
    None,
    /// Terminate the instances that run the old configuration, batch by batch.
    Terminate,
}

impl Rollout {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Rollout::None),
            "terminate" => Some(Rollout::Terminate),
            _ => None,
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            Rollout::None => "none",
            Rollout::Terminate => "terminate",
        }
    }
}
crate::word_field!(Rollout);

crate::model! {
    /// `circleci_nomad_client_launch_config`'s attributes.
    #[derive(Clone, Debug)]
    pub(crate) struct LaunchConfig / LaunchConfigAtPlan {
        id: Known<String> [computed, doc("The Auto Scaling group's name.")],
        autoscaling_group_name: String [required, replaces,
            check(Check::Text("Invalid Auto Scaling group name", check_group_name)), doc(
            "Name of the Nomad client Auto Scaling group; enterprise-setup names it `<prefix>_nomad_clients_asg` \
             (`circleci_nomad_clients_asg` by default)."
        )],
        nomad_servers: Vec<String> [required, check(Check::Value(check_servers)), doc(
            "The external Nomad servers as the clients reach them, `host:port` (RPC port, normally 4647), \
             e.g. `[\"nomad-1.internal:4647\"]`. Written into the user_data in place of the old list."
        )],
        name_prefix: String [default_in_doc(DEFAULT_PREFIX.to_string()),
            check(Check::Text("Invalid name_prefix", check_prefix)), doc(
            "Start of the copy's name; a timestamp and random digits are appended. Default \
             `circleci-nomad-clients-`. At most 230 characters. Changing it names the next copy only."
        )],
        rollout: Rollout [default_in_doc(Rollout::Terminate),
            check(Check::Text("Invalid rollout", check_rollout)), doc(
            "`terminate` (default): after switching the group, terminate the instances that run the old \
             configuration, batch by batch, and wait for their replacements to be InService (the runbook's \
             step 4). `none`: switch only; instances pick up the new servers when they are next replaced."
        )],
        rollout_batch_size: i64 [default(1i64), check(Check::Value(check_batch_size)), doc(
            "How many instances to terminate at a time."
        )],
        rollout_timeout: String [default_in_doc(DEFAULT_ROLLOUT_TIMEOUT.to_string()),
            check(Check::Duration { min_secs: 1, max_secs: MAX_ROLLOUT.as_secs() }), doc(
            "Time allowed for the whole rollout, e.g. `20m` (default); waiting for a client's builds with \
             CircleCI running counts against `builds_timeout` instead. When it runs out the apply fails and the \
             group keeps the new configuration. After an update, `pending_instance_ids` lists the instances \
             not yet replaced and the next apply replaces them; after a create, Terraform marks the resource \
             tainted and the next apply starts over (the original is restored first)."
        )],
        config_root: String [default_in_doc(DEFAULT_CONFIG_ROOT.to_string()), check(Check::RemotePath), doc(
            "Prefix of the Services machine's paths (for tests and chroots). Default `/`. Before the group is \
             switched (and on destroy, before it is switched back), the Services machine says whether CircleCI \
             runs (`replicatedctl app status`) and on which Nomad (`/etc/circleconfig/shared/nomad` under this \
             root as CircleCI last started with it; else its embedded Nomad). While CircleCI runs, the clients \
             may only be pointed at servers of that Nomad (`/v1/status/peers`, asked through the Services \
             machine), and `rollout = \"terminate\"` drains each client first (see `builds_timeout`). With \
             CircleCI stopped (inside the cutover, as in `examples/complete`) nothing runs on them: they are \
             replaced at once. The provider needs `services_host` for this."
        )],
        embedded_nomad_endpoint: String [stop_embedded_nomad],
        builds_timeout: String [default_in_doc(BUILDS_TIMEOUT.to_string()),
            check(Check::Duration { min_secs: 1, max_secs: 7 * 86_400 }), doc(format!(
            "With CircleCI running and `rollout = \"terminate\"`: how long the builds on one client may take to \
             end before it is terminated (default `{BUILDS_TIMEOUT}`). Each instance is found among the nodes of \
             the Nomad CircleCI uses by its AWS fingerprint (`unique.platform.aws.instance-id`; the apply is \
             refused, before anything changes, when some node lacks it and an instance matches none). Before \
             Nomad 0.8 the rollout waits until the node runs no build, then drains it (`POST \
             /v1/node/:id/drain?enable=true`, which would stop what runs) and terminates the instance; from 0.8 \
             it drains first (`DrainSpec`, its deadline an hour past this) and waits for the builds. Past it the \
             rollout stops naming the builds, the drain is lifted and that instance is left running \
             (`pending_instance_ids`). An instance the Nomad does not list runs none of CircleCI's builds and is \
             replaced without a wait."
        ))],
        restore_on_destroy: bool [default_in_doc(true), doc(
            "On destroy, point the group back at the original configuration (if it still exists) and delete \
             the copy. A copy some group still uses is never deleted. Default `true`; `false` leaves the group \
             as it is."
        )],
        launch_configuration_name: Known<String> [computed, doc(
            "Name of the copy the group now uses (empty for a launch template group)."
        )],
        launch_template_id: Known<String> [computed, doc(
            "The group's launch template (empty for a launch configuration group)."
        )],
        launch_template_version: Known<String> [computed, doc(
            "The template version this resource created and the group now uses (empty for a launch \
             configuration group). It becomes the template's latest version, so other groups that launch \
             from the same template at `$Latest` get the new servers too until it is deleted."
        )],
        original_launch_configuration_name: Known<String> [computed, doc(
            "The launch configuration the group used before; destroy restores it. Empty after import."
        )],
        original_launch_template_version: Known<String> [computed, doc(
            "The template version (`3`, `$Latest`, `$Default`) the group used before; destroy restores it."
        )],
        previous_servers: Known<Vec<String>> [computed, doc(
            "The Nomad servers list the group's configuration held before the last change."
        )],
        user_data_sha256: Known<String> [computed, doc(
            "SHA-256 of the copy's decoded user_data; refresh compares it with AWS."
        )],
        replaced_instance_ids: Known<Vec<String>> [computed, doc(
            "Instances the last rollout terminated."
        )],
        pending_instance_ids: Known<Vec<String>> [computed, doc(
            "Instances still running the previous configuration after a rollout failed or timed out; the next \
             apply replaces them."
        )],
        drift: Known<String> [computed, doc(
            "What refresh found changed outside Terraform (the group pointed elsewhere, the copy deleted); empty \
             when nothing. A non-empty value plans an update that makes a new copy."
        )],
    }
}

fn check_group_name(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > MAX_NAME || n.chars().any(char::is_control) {
        return Err("must be 1-255 characters without control characters".into());
    }
    Ok(())
}

/// `nomad_servers`: at least one, each a valid `host:port`, none twice, none null;
/// the known elements of a partly known list are checked too.
fn check_servers(v: &Value, at: &AttrPath, diags: &mut Diagnostics) {
    let Some(items) = v.as_list() else {
        return;
    };
    if items.is_empty() {
        diags.attr_error(
            at.clone(),
            "No Nomad servers",
            "list at least one server, e.g. [\"nomad-1.internal:4647\"]",
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, v) in items.iter().enumerate() {
        let at = at.clone().index(i);
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

fn check_prefix(p: &str) -> Result<(), String> {
    if p.len() > MAX_NAME - SUFFIX_LEN || p.chars().any(char::is_control) {
        return Err(format!(
            "must be at most {} characters without control characters (a {SUFFIX_LEN}-character \
             suffix is appended and names are limited to {MAX_NAME})",
            MAX_NAME - SUFFIX_LEN
        ));
    }
    Ok(())
}

fn check_rollout(r: &str) -> Result<(), String> {
    match Rollout::parse(r) {
        Some(_) => Ok(()),
        None => Err(format!("{r:?} is not one of none, terminate")),
    }
}

fn check_batch_size(v: &Value, at: &AttrPath, diags: &mut Diagnostics) {
    match v.as_i64() {
        Some(n) if n >= 1 => {}
        _ => diags.attr_error(
            at.clone(),
            "Invalid rollout_batch_size",
            "must be a whole number of at least 1",
        ),
    }
}

fn validate_config(config: &Value) -> Diagnostics {
    let mut diags = Diagnostics::new();
    model::validate(LaunchConfig::decls(), config, &mut diags);
    diags
}

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
    let mut detail = crate::backends::chain(&e);
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

/// A computed string as far as it is known.
fn text(k: &Known<String>) -> Option<&str> {
    match k {
        Known::Value(s) => Some(s),
        Known::Null | Known::Unknown => None,
    }
}

/// Our copy, as the state records it.
fn ours_from(m: &LaunchConfig) -> Option<Launch> {
    launch_from(
        text(&m.launch_configuration_name),
        text(&m.launch_template_id),
        text(&m.launch_template_version),
    )
}

/// What the group used before our first copy, as the state records it.
fn original_from(m: &LaunchConfig) -> Option<Launch> {
    launch_from(
        text(&m.original_launch_configuration_name),
        text(&m.launch_template_id),
        text(&m.original_launch_template_version),
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

/// Records our copy and the original in the state's launch attributes.
fn set_launches(m: &mut LaunchConfig, ours: &Launch, original: Option<&Launch>) {
    let s = |x: &str| Known::Value(x.to_string());
    let (lc, tid, tv) = match ours {
        Launch::Config(n) => (s(n), s(""), s("")),
        Launch::Template { id, version } => (s(""), s(id), s(version)),
    };
    (
        m.launch_configuration_name,
        m.launch_template_id,
        m.launch_template_version,
    ) = (lc, tid, tv);
    let (lc, ltv) = match original {
        Some(Launch::Config(n)) => (s(n), s("")),
        Some(Launch::Template { version, .. }) => (s(""), s(version)),
        None => (s(""), s("")),
    };
    (
        m.original_launch_configuration_name,
        m.original_launch_template_version,
    ) = (lc, ltv);
}

impl LaunchConfig {
    /// What imports group `name`, which launches from `current`: every setting at its
    /// default, no servers known, no copy of ours.
    fn imported(name: &str, current: &Launch) -> LaunchConfig {
        let empty = || Known::Value(String::new());
        let mut m = LaunchConfig {
            id: Known::Value(name.to_string()),
            autoscaling_group_name: name.to_string(),
            nomad_servers: vec![],
            name_prefix: DEFAULT_PREFIX.to_string(),
            rollout: Rollout::Terminate,
            rollout_batch_size: 1,
            rollout_timeout: DEFAULT_ROLLOUT_TIMEOUT.to_string(),
            config_root: DEFAULT_CONFIG_ROOT.to_string(),
            embedded_nomad_endpoint: DEFAULT_EMBEDDED_NOMAD.to_string(),
            builds_timeout: BUILDS_TIMEOUT.to_string(),
            restore_on_destroy: true,
            launch_configuration_name: empty(),
            launch_template_id: empty(),
            launch_template_version: empty(),
            original_launch_configuration_name: empty(),
            original_launch_template_version: empty(),
            previous_servers: Known::Value(vec![]),
            user_data_sha256: empty(),
            replaced_instance_ids: Known::Value(vec![]),
            pending_instance_ids: Known::Value(vec![]),
            drift: empty(),
        };
        set_launches(&mut m, current, None);
        m
    }

    /// (terminate the old clients, how many at a time, within how long).
    fn rollout_settings(&self) -> (bool, usize, Duration) {
        let terminate = self.rollout == Rollout::Terminate;
        let batch = usize::try_from(self.rollout_batch_size)
            .ok()
            .filter(|b| *b > 0)
            .unwrap_or(1);
        let timeout = humantime::parse_duration(&self.rollout_timeout)
            .unwrap_or(Duration::from_secs(20 * 60))
            .min(MAX_ROLLOUT);
        (terminate, batch, timeout)
    }

    /// What the cutover needs to know: the Services machine's root, CircleCI's own
    /// Nomad, how long builds may take.
    fn stop_settings(&self) -> StopSettings {
        StopSettings {
            root: self.config_root.clone(),
            embedded_nomad: self.embedded_nomad_endpoint.clone(),
            builds_timeout: duration_or(&self.builds_timeout, BUILDS_TIMEOUT),
        }
    }

    /// The pending instances of a state, none when it records none.
    fn pending(&self) -> Vec<String> {
        match &self.pending_instance_ids {
            Known::Value(p) => p.clone(),
            Known::Null | Known::Unknown => vec![],
        }
    }
}

impl LaunchConfigAtPlan {
    /// A new copy is made: everything the apply records about it is unknown.
    fn forget_copy(&mut self) {
        for k in [
            &mut self.launch_configuration_name,
            &mut self.launch_template_id,
            &mut self.launch_template_version,
            &mut self.original_launch_configuration_name,
            &mut self.original_launch_template_version,
            &mut self.user_data_sha256,
        ] {
            *k = Known::Unknown;
        }
        self.replaced_instance_ids = Known::Unknown;
        self.pending_instance_ids = Known::Unknown;
    }
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

#[async_trait]
impl Resource for NomadClientLaunchConfig {
    fn type_name(&self) -> &'static str {
        "circleci_nomad_client_launch_config"
    }

    fn schema(&self) -> Schema {
        Schema::new(0, model::block(LaunchConfig::decls(), DESCRIPTION))
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        validate_config(config)
    }

    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        diags: &mut Diagnostics,
    ) -> Vec<AttrPath> {
        model::set_defaults(LaunchConfig::decls(), req.config, planned);
        let mut p = match LaunchConfigAtPlan::decode(planned) {
            Ok(p) => p,
            Err(e) => {
                diags.extend(e.into());
                return vec![];
            }
        };
        p.id = p.autoscaling_group_name.clone();
        p.drift = Known::Value(String::new());
        if req.is_create() {
            p.forget_copy();
            p.previous_servers = Known::Unknown;
            if let (Known::Value(name), Known::Value(servers)) =
                (&p.autoscaling_group_name, &p.nomad_servers)
            {
                // previous_servers only: apply checks it is still true before changing
                // anything (a hash of the new user_data would fail Terraform's
                // consistency check instead, should the group change meanwhile).
                // A group that already names these servers is on a copy of ours being
                // replaced (a tainted resource): its destroy puts the original back
                // first, so what comes before is known only then.
                if let Some(prev) = self.preview(name, servers, diags).await {
                    if &prev != servers {
                        p.previous_servers = Known::Value(prev);
                    }
                }
            }
            p.encode(planned);
            return vec![];
        }
        let replace = model::replaced(LaunchConfig::decls(), req.prior, planned);
        if !replace.is_empty() {
            p.encode(planned);
            return replace;
        }
        // The prior state through the lenient view: an attribute a newer version added
        // is null in it.
        let prior = match LaunchConfigAtPlan::decode(req.prior) {
            Ok(prior) => prior,
            Err(e) => {
                diags.extend(e.into());
                return vec![];
            }
        };
        let drifted = matches!(&prior.drift, Known::Value(d) if !d.is_empty());
        // name_prefix only names future copies: changing it alone does not roll clients.
        let new_copy = p.nomad_servers != prior.nomad_servers || drifted;
        if new_copy {
            p.forget_copy();
            p.previous_servers = prior.nomad_servers;
        } else {
            let pending = matches!(&prior.pending_instance_ids, Known::Value(p) if !p.is_empty());
            if pending && p.rollout == Known::Value(Rollout::Terminate) {
                p.pending_instance_ids = Known::Unknown;
                p.replaced_instance_ids = Known::Unknown;
            }
        }
        p.encode(planned);
        vec![]
    }

    async fn create(&self, planned: &Value, _config: &Value) -> Applied {
        let applied = self.create_applied(planned).await;
        crate::resources::services_restart::ServicesRestart::new(self.data.clone())
            .after_failed_step(
                LaunchConfig::decode(planned)
                    .ok()
                    .map(|m| m.stop_settings()),
                applied,
            )
            .await
    }

    async fn update(&self, prior: &Value, planned: &Value, _config: &Value) -> Applied {
        let applied = self.update_applied(prior, planned).await;
        crate::resources::services_restart::ServicesRestart::new(self.data.clone())
            .after_failed_step(
                LaunchConfig::decode(planned)
                    .ok()
                    .map(|m| m.stop_settings()),
                applied,
            )
            .await
    }

    async fn delete(&self, prior: &Value) -> Applied {
        self.delete_applied(prior).await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let mut m = LaunchConfig::decode(state)?;
        let aws = self.data.aws()?;
        let c = aws.clients().await.map_err(|e| aws_diag(e, ""))?;
        let Some(group) = c
            .autoscaling
            .group(&m.autoscaling_group_name)
            .await
            .map_err(|e| aws_diag(e, ""))?
        else {
            return Ok(None);
        };
        let ours = ours_from(&m);
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
                m.user_data_sha256 = Known::Value(file_sha256(l.user_data.as_bytes()));
            }
            if let Ok(lists) = ud::find(&l.user_data) {
                m.nomad_servers = lists[0].items.clone();
            }
        }
        let live = group.instance_ids();
        let pending: Vec<String> = m
            .pending()
            .into_iter()
            .filter(|id| live.contains(id))
            .collect();
        m.pending_instance_ids = Known::Value(pending);
        m.drift = Known::Value(drift.join("; "));
        let mut fresh = state.clone();
        m.encode(&mut fresh);
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
        LaunchConfig::imported(id, &current).encode(&mut v);
        Ok(v)
    }
}

impl NomadClientLaunchConfig {
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
}
