//! `circleci_services_restart`: the step every section of the runbook ends with. Stops
//! CircleCI through Replicated (`replicatedctl app stop`), waits until it is stopped,
//! starts it, waits until it is started, then runs the runbook's checks on the Services
//! machine for every service whose external config is there.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use std::collections::BTreeMap;

use super::cutover::{self, StopAttrs, StopSettings};
use super::model::{self, Known, Model};
use super::validate::Check;
use crate::circleci::restart::{self as rs, check_pattern};
use crate::plugin::{
    Applied, AttrPath, Diagnostic, Diagnostics, PlanRequest, Resource, Schema, Value,
};
use crate::provider::ProviderData;

mod fallback;
mod go_back;
mod replicated;

pub(crate) use fallback::Fallback;

pub(crate) const DEFAULT_VERSIONS: &str = "2.17.x";

/// `allowed_versions` (the check its declaration names): at least one pattern, each
/// valid; elements not known yet pass.
pub(crate) fn check_versions(v: &Value, at: &AttrPath, diags: &mut Diagnostics) {
    let Some(list) = v.as_list() else { return };
    if list.is_empty() {
        diags.attr_error(
            at.clone(),
            "No versions allowed",
            "list at least one version pattern, e.g. \"2.17.x\"",
        );
    }
    for (i, v) in list.iter().enumerate() {
        if let Some(p) = v.as_str() {
            if let Err(e) = check_pattern(p) {
                diags.attr_error(at.clone().index(i), "Invalid version pattern", e);
            }
        }
    }
}

const STOP_TIMEOUT: &str = "10m";
const START_TIMEOUT: &str = "20m";
const VERIFY_TIMEOUT: &str = "5m";
const ON_FAILURE: &str = "restore";

pub(crate) struct ServicesRestart {
    data: Arc<ProviderData>,
}

impl ServicesRestart {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        ServicesRestart { data }
    }
}

/// The settings of one restart, from a planned state.
pub(super) struct Settings {
    pub root: String,
    pub stop: Duration,
    pub start: Duration,
    pub verify: Duration,
    pub versions: Vec<String>,
    pub cutover: StopSettings,
    pub on_failure: String,
    pub on_destroy: String,
}

impl Settings {
    /// The settings of a planned value or a stored state (defaults filled).
    /// Read through the lenient view, so that the plan's preview runs while another
    /// value (a trigger) is still unknown: a value not known yet, or null in a state
    /// written before it existed, counts as its default. At apply every value is known.
    fn of(v: &Value) -> Result<Settings, Diagnostics> {
        let m = RestartAtPlan::decode(v)?;
        let or = |k: Known<String>, d: &str| match k {
            Known::Value(x) => x,
            Known::Null | Known::Unknown => d.to_string(),
        };
        let dur = |name: &str, k: Known<String>, d: &str| {
            humantime::parse_duration(&or(k, d))
                .map_err(|e| attr_error(name, &format!("Invalid {name}"), e.to_string()))
        };
        let root = or(m.config_root, "/");
        Ok(Settings {
            cutover: StopSettings {
                root: root.clone(),
                embedded_nomad: or(m.embedded_nomad_endpoint, cutover::DEFAULT_EMBEDDED_NOMAD),
                builds_timeout: dur("builds_timeout", m.builds_timeout, cutover::BUILDS_TIMEOUT)?,
            },
            stop: dur("stop_timeout", m.stop_timeout, STOP_TIMEOUT)?,
            start: dur("start_timeout", m.start_timeout, START_TIMEOUT)?,
            verify: dur("verify_timeout", m.verify_timeout, VERIFY_TIMEOUT)?,
            versions: match m.allowed_versions {
                Known::Value(v) => v,
                Known::Null | Known::Unknown => vec![DEFAULT_VERSIONS.to_string()],
            },
            on_failure: or(m.on_failure, ON_FAILURE),
            on_destroy: or(m.on_destroy, go_back::KEEP_EXTERNAL),
            root,
        })
    }
}

const DESCRIPTION: &str = "Restarts CircleCI on the Services machine the way the runbook's sections end (\"Stop Now, wait, \
             Start\" in the Management Console), through Replicated's `replicatedctl`, then runs the runbook's \
             checks there for every service whose external configuration is present on the machine (read from \
             the files, not from Terraform): PostgreSQL (frontend's `POSTGRES_HOST` line, no \
             `org.postgresql.util.PSQLException`), MongoDB (frontend opened a connection to a member of the set: \
             a seed host, or a server the driver discovered from the set's own member list, under that name), Vault \
             (context-service \"Successfully retrieved current auth token\"), Redis (domain-service \"Reconnected \
             to host:port\", `OUTPUT_PROCESSOR_SIGNALS_REDIS` in picard-output-processor, slanger's \
             `REDIS_PORT_6379_TCP_ADDR/PORT`), RabbitMQ (workflows-conductor's and frontend's \"Configuring … on \
             host …\"). The runbook gives no check for Nomad after the restart, so none is made. Each log check \
             reads both of `docker logs`' streams (the runbook's `2>&1`), and only what the container logged \
             since it last started (`--since` its last `FinishedAt`, by the Services machine's clock), in the order \
             logged; a log longer than 64 MiB a stream fails the check rather than being read in part.\n\n\
             Nothing stops before the preflight passes: the Services machine answers, `replicatedctl` is there, \
             the app's version is allowed, the config files parse, and no build runs on the Nomad servers CircleCI \
             uses (waited for up to `builds_timeout`). What those servers showed before the first stop is kept on \
             the Services machine (`/data/circle/external-services-cutover/record.json`, 0600) until a start \
             passes every check. Once CircleCI is stopped, the restart \
             runs to its end even when Terraform is interrupted (CircleCI is never left stopped by choice); the \
             checks may be cut short. A change of `triggers` restarts again; so does an app found stopped on \
             refresh. Destroy changes nothing on the machine, unless `on_destroy = \"go_back\"`.\n\n\
             Commands run over the provider's SSH connection, through `sudo -n` when `sudo = true` (then \
             sudo's `secure_path` decides where `replicatedctl` and `docker` are found).";

/// A timeout of one restart step: from a second to a day.
const TIMEOUT: Check = Check::Duration {
    min_secs: 1,
    max_secs: 24 * 3600,
};

crate::model! {
    /// `circleci_services_restart`'s attributes.
    struct RestartModel / RestartAtPlan {
        id: Known<String> [computed, doc("Always `circleci`.")],
        triggers: Option<BTreeMap<String, Option<String>>> [optional, doc(
            "Values whose change restarts CircleCI again, e.g. the `file_sha256` of every config \
             file resource."
        )],
        config_root: String [default("/".to_string()), check(Check::RemotePath), doc(
            "The directory the runbook's paths (`/etc/circleconfig/...`, \
             `/etc/circle-installation-customizations`) are under on the Services machine; only \
             tests and demos change it."
        )],
        stop_timeout: String [default(STOP_TIMEOUT.to_string()), check(TIMEOUT), doc(
            "How long CircleCI may take to stop."
        )],
        start_timeout: String [default(START_TIMEOUT.to_string()), check(TIMEOUT), doc(
            "How long CircleCI may take to start."
        )],
        verify_timeout: String [default(VERIFY_TIMEOUT.to_string()), check(TIMEOUT), doc(
            "How long the checks are retried after the start (containers log their connections as \
             they come up)."
        )],
        allowed_versions: Vec<String> [stop_allowed_versions("this restart")],
        builds_timeout: String [stop_builds_timeout],
        embedded_nomad_endpoint: String [stop_embedded_nomad],
        on_failure: String [default(ON_FAILURE.to_string()),
            check(Check::OneOf(&["restore", "stop"])), doc(
            "What happens when CircleCI does not start or a check fails. `restore`: the runbook \
             files this cutover changed are put back byte for byte as they were before its first \
             write (kept on the Services machine under `/data/circle/external-services-cutover/kept`, \
             0600), CircleCI is restarted on them and checked the same way, and the apply fails \
             saying so. `stop`: CircleCI is stopped and the files are left as this apply wrote them, \
             with the originals kept, for a human to look."
        )],
        on_destroy: String [default(go_back::KEEP_EXTERNAL.to_string()),
            check(Check::OneOf(&[go_back::KEEP_EXTERNAL, go_back::GO_BACK])), doc(
            "What destroying this resource does to CircleCI. `keep_external`: nothing; CircleCI \
             keeps running on the external services. `go_back`: the way back to how CircleCI ran \
             before its first cutover (the first whose migration was verified, which kept what it \
             needs on the Services machine, \
             `/data/circle/external-services-cutover/before-first-cutover.json`, 0600): once no \
             build runs (`builds_timeout`), CircleCI is stopped, the runbook files that cutover \
             changed get back the bytes they had, the Nomad clients it moved go back, CircleCI is \
             started and checked the runbook's way, against what its checks observed before that \
             cutover, and Nomad's clients counted. Data written to the external services since \
             stays there; CircleCI runs on its embedded data as it was at the cutover. The destroy \
             plan says all this in a warning; without such a record, it is an error. `terraform \
             apply -replace` of this resource destroys it too: set `keep_external` first."
        )],
        version: Known<String> [computed, doc("The CircleCI version found.")],
        app_state: Known<String> [computed, doc(
            "The app's state as Replicated reports it (`started`, `stopped`, …). Anything but \
             `started` on refresh plans a restart."
        )],
        checks: Known<Vec<String>> [computed, doc(
            "The checks that passed at the last restart, one `service: what` each."
        )],
        failed_checks: Known<Vec<String>> [computed, doc(
            "The checks that failed at the last restart. Not empty: the next plan restarts again."
        )],
        restarted_at: Known<String> [computed, doc(
            "When the last restart's checks passed (RFC 3339, UTC)."
        )],
        downtime: Known<String> [computed, doc(
            "From the stop to the checks passing at the last restart, e.g. `42.5s`."
        )],
    }
}

fn validate_config(config: &Value) -> Diagnostics {
    let mut diags = Diagnostics::new();
    model::validate(RestartModel::decls(), config, &mut diags);
    diags
}

#[async_trait]
impl Resource for ServicesRestart {
    fn type_name(&self) -> &'static str {
        "circleci_services_restart"
    }

    fn schema(&self) -> Schema {
        Schema::new(0, model::block(RestartModel::decls(), DESCRIPTION))
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
        model::set_defaults(RestartModel::decls(), req.config, planned);
        let mut p = match RestartAtPlan::decode(planned) {
            Ok(p) => p,
            Err(e) => {
                diags.extend(e.into());
                return vec![];
            }
        };
        p.id = Known::Value("circleci".to_string());
        // The prior state through the lenient view: an attribute a newer version added
        // is null in it, and must not turn a plan into a restart.
        let restart = match RestartAtPlan::decode(req.prior) {
            Err(_) => true,
            Ok(b) => {
                b.triggers != p.triggers
                    || b.app_state != Known::Value("started".to_string())
                    || matches!(&b.failed_checks, Known::Value(f) if !f.is_empty())
            }
        };
        if restart {
            (p.version, p.app_state, p.restarted_at, p.downtime) = (
                Known::Unknown,
                Known::Unknown,
                Known::Unknown,
                Known::Unknown,
            );
            (p.checks, p.failed_checks) = (Known::Unknown, Known::Unknown);
        }
        let known = p.allowed_versions.is_known()
            && p.config_root.is_known()
            && p.embedded_nomad_endpoint.is_known();
        p.encode(planned);
        // Best effort now; apply repeats it before anything stops.
        if restart && known {
            self.preview(planned, diags).await;
        }
        vec![]
    }

    async fn create(&self, planned: &Value, _config: &Value) -> Applied {
        let mut applied = self.restart(planned).await;
        if applied.diags.has_errors() {
            // Not recorded, rather than tainted: Terraform destroys a tainted object
            // before creating it again, and this one's destroy may be the way back.
            // The next apply creates it, that is restarts, again.
            applied.state = None;
        }
        applied
    }

    async fn update(&self, _prior: &Value, planned: &Value, _config: &Value) -> Applied {
        // Only a plan that restarts leaves the outcome unknown; a change of a timeout
        // or of allowed_versions alone restarts nothing.
        match RestartModel::decode(planned) {
            Ok(m) if m.restarted_at != Known::Unknown => {
                return Applied::from_result(Ok(planned.clone()))
            }
            Ok(_) => {}
            Err(e) => return Applied::from_result(Err(e.into())),
        }
        self.restart(planned).await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let status = self.status().await?;
        let mut m = RestartModel::decode(state)?;
        m.app_state = Known::Value(status.state);
        let mut fresh = state.clone();
        m.encode(&mut fresh);
        Ok(Some(fresh))
    }

    async fn plan_destroy(&self, prior: &Value, diags: &mut Diagnostics) {
        self.preview_go_back(prior, diags).await;
    }

    async fn delete(&self, prior: &Value) -> Applied {
        match RestartModel::decode(prior) {
            Ok(m) if m.on_destroy == go_back::GO_BACK => return self.go_back(prior).await,
            Ok(_) => {}
            Err(e) => return Applied::kept(prior, e.into()),
        }
        Applied::deleted(Diagnostics::new())
    }

    async fn import(&self, _id: &str) -> Result<Value, Diagnostics> {
        let version = self.version().await?;
        let mut v = Value::Null;
        RestartModel {
            id: Known::Value("circleci".to_string()),
            triggers: None,
            config_root: "/".to_string(),
            stop_timeout: STOP_TIMEOUT.to_string(),
            start_timeout: START_TIMEOUT.to_string(),
            verify_timeout: VERIFY_TIMEOUT.to_string(),
            allowed_versions: vec![DEFAULT_VERSIONS.to_string()],
            builds_timeout: cutover::BUILDS_TIMEOUT.to_string(),
            embedded_nomad_endpoint: cutover::DEFAULT_EMBEDDED_NOMAD.to_string(),
            on_failure: ON_FAILURE.to_string(),
            on_destroy: go_back::KEEP_EXTERNAL.to_string(),
            version: Known::Value(version),
            app_state: Known::Value(String::new()),
            checks: Known::Value(vec![]),
            failed_checks: Known::Value(vec![]),
            restarted_at: Known::Value(String::new()),
            downtime: Known::Value(String::new()),
        }
        .encode(&mut v);
        Ok(v)
    }
}

/// An error on an attribute, as diagnostics.
fn attr_error(attr: &str, summary: &str, detail: String) -> Diagnostics {
    Diagnostic::error(summary, detail)
        .at(AttrPath::root(attr))
        .into()
}

#[cfg(test)]
mod tests;
