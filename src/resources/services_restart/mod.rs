//! `circleci_services_restart`: the step every section of the runbook ends with. Stops
//! CircleCI through Replicated (`replicatedctl app stop`), waits until it is stopped,
//! starts it, waits until it is started, then runs the runbook's checks on the Services
//! machine for every service whose external config is there.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::cutover::{self, StopSettings};
use super::{string_list, strings, validate};
use crate::circleci::restart::{self as rs, check_pattern};
use crate::plugin::{
    resource::changed, Applied, AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest,
    Resource, Schema, Type, Value,
};
use crate::provider::ProviderData;

mod fallback;
mod go_back;
mod run;

pub(crate) use fallback::Fallback;

pub(crate) const DEFAULT_VERSIONS: &str = "2.17.x";

/// `allowed_versions`, for each resource that stops CircleCI (`what` may run).
pub(crate) fn allowed_versions_attr(what: &str) -> Attribute {
    Attribute::new("allowed_versions", Type::list(Type::String))
        .optional()
        .computed()
        .description(&format!(
            "CircleCI versions (Replicated's `VersionLabel`) {what} may run on; `x` matches any part. \
             Default `[\"2.17.x\"]`: the runbook is for 2.17. Checked before CircleCI is stopped."
        ))
}

/// The patterns of `allowed_versions`, or the default.
pub(crate) fn allowed_versions(v: &Value) -> Vec<String> {
    let versions = strings(v.get("allowed_versions"));
    if versions.is_empty() {
        vec![DEFAULT_VERSIONS.to_string()]
    } else {
        versions
    }
}

/// `allowed_versions` at plan: at least one pattern, each valid.
pub(crate) fn validate_versions(config: &Value, diags: &mut Diagnostics) {
    if let Some(list) = config.get("allowed_versions").as_list() {
        if list.is_empty() {
            diags.attr_error(
                AttrPath::root("allowed_versions"),
                "No versions allowed",
                "list at least one version pattern, e.g. \"2.17.x\"",
            );
        }
        for (i, v) in list.iter().enumerate() {
            if let Some(p) = v.as_str() {
                if let Err(e) = check_pattern(p) {
                    diags.attr_error(
                        AttrPath::root("allowed_versions").index(i as i64),
                        "Invalid version pattern",
                        e,
                    );
                }
            }
        }
    }
}

const STOP_TIMEOUT: &str = "10m";
const START_TIMEOUT: &str = "20m";
const VERIFY_TIMEOUT: &str = "5m";
const ON_FAILURE: &str = "restore";

pub struct ServicesRestart {
    data: Arc<ProviderData>,
}

impl ServicesRestart {
    pub fn new(data: Arc<ProviderData>) -> Self {
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
}

impl Settings {
    fn of(v: &Value) -> Settings {
        let root = v.get("config_root").as_str().unwrap_or("/").to_string();
        Settings {
            cutover: StopSettings::of(v, &root),
            on_failure: v
                .get("on_failure")
                .as_str()
                .unwrap_or(ON_FAILURE)
                .to_string(),
            root,
            stop: super::duration_or(v, "stop_timeout", STOP_TIMEOUT),
            start: super::duration_or(v, "start_timeout", START_TIMEOUT),
            verify: super::duration_or(v, "verify_timeout", VERIFY_TIMEOUT),
            versions: allowed_versions(v),
        }
    }
}

fn block() -> Block {
    let dur = |name: &str, default: &str, what: &str| {
        Attribute::new(name, Type::String)
            .optional()
            .computed()
            .description(&format!("{what}, e.g. `{default}` (default)."))
    };
    Block::new()
        .description(
            "Restarts CircleCI on the Services machine the way the runbook's sections end (\"Stop Now, wait, \
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
             sudo's `secure_path` decides where `replicatedctl` and `docker` are found).",
        )
        .attr(Attribute::new("id", Type::String).computed().description("Always `circleci`."))
        .attr(Attribute::new("triggers", Type::map(Type::String)).optional().description(
            "Values whose change restarts CircleCI again, e.g. the `file_sha256` of every config file resource.",
        ))
        .attr(Attribute::new("config_root", Type::String).optional().computed().description(
            "The directory the runbook's paths (`/etc/circleconfig/...`, `/etc/circle-installation-customizations`) \
             are under on the Services machine. Default `/`; only tests and demos change it.",
        ))
        .attr(dur("stop_timeout", STOP_TIMEOUT, "How long CircleCI may take to stop"))
        .attr(dur("start_timeout", START_TIMEOUT, "How long CircleCI may take to start"))
        .attr(dur(
            "verify_timeout",
            VERIFY_TIMEOUT,
            "How long the checks are retried after the start (containers log their connections as they come up)",
        ))
        .attr(allowed_versions_attr("this restart"))
        .attr(cutover::builds_timeout_attr())
        .attr(cutover::embedded_nomad_attr())
        .attr(Attribute::new("on_failure", Type::String).optional().computed().description(
            "What happens when CircleCI does not start or a check fails. `restore` (default): the runbook \
             files this cutover changed are put back byte for byte as they were before its first write (kept on \
             the Services machine under `/data/circle/external-services-cutover/kept`, 0600), CircleCI is \
             restarted on them and checked the same way, and the apply fails saying so. `stop`: CircleCI is \
             stopped and the files are left as this apply wrote them, with the originals kept, for a human to \
             look.",
        ))
        .attr(Attribute::new("on_destroy", Type::String).optional().computed().description(
            "What destroying this resource does to CircleCI. `keep_external` (default): nothing; CircleCI keeps \
             running on the external services. `go_back`: the way back to how CircleCI ran before its first \
             cutover (the first whose migration was verified, which kept what it needs on the Services machine, \
             `/data/circle/external-services-cutover/before-first-cutover.json`, 0600): once no build runs \
             (`builds_timeout`), CircleCI is stopped, the runbook files that cutover changed get back the bytes \
             they had, the Nomad clients it moved go back, CircleCI is started and checked the runbook's way, \
             against what its checks observed before that cutover, and Nomad's clients counted. Data written to \
             the external services since stays there; CircleCI runs on its embedded data as it was at the \
             cutover. The destroy plan says all this in a warning; without such a record, it is an error. \
             `terraform apply -replace` of this resource destroys it too: set `keep_external` first.",
        ))
        .attr(Attribute::new("version", Type::String).computed().description("The CircleCI version found."))
        .attr(Attribute::new("app_state", Type::String).computed().description(
            "The app's state as Replicated reports it (`started`, `stopped`, …). Anything but `started` on \
             refresh plans a restart.",
        ))
        .attr(Attribute::new("checks", Type::list(Type::String)).computed().description(
            "The checks that passed at the last restart, one `service: what` each.",
        ))
        .attr(Attribute::new("failed_checks", Type::list(Type::String)).computed().description(
            "The checks that failed at the last restart. Not empty: the next plan restarts again.",
        ))
        .attr(Attribute::new("restarted_at", Type::String).computed().description(
            "When the last restart's checks passed (RFC 3339, UTC).",
        ))
        .attr(Attribute::new("downtime", Type::String).computed().description(
            "From the stop to the checks passing at the last restart, e.g. `42.5s`.",
        ))
}

const OUTCOME: [&str; 6] = [
    "version",
    "app_state",
    "checks",
    "failed_checks",
    "restarted_at",
    "downtime",
];

fn validate_config(config: &Value) -> Diagnostics {
    let mut diags = Diagnostics::new();
    let d = |min, max| validate::Check::Duration {
        min_secs: min,
        max_secs: max,
    };
    validate::run(
        config,
        &[
            ("stop_timeout", d(1, 24 * 3600)),
            ("start_timeout", d(1, 24 * 3600)),
            ("verify_timeout", d(1, 24 * 3600)),
            ("builds_timeout", d(0, 24 * 3600)),
            ("config_root", validate::Check::RemotePath),
            ("on_failure", validate::Check::OneOf(&["restore", "stop"])),
            (
                "on_destroy",
                validate::Check::OneOf(&[go_back::KEEP_EXTERNAL, go_back::GO_BACK]),
            ),
        ],
        &mut diags,
    );
    validate_versions(config, &mut diags);
    cutover::validate(config, &mut diags);
    diags
}

#[async_trait]
impl Resource for ServicesRestart {
    fn type_name(&self) -> &'static str {
        "circleci_services_restart"
    }

    fn schema(&self) -> Schema {
        Schema::new(0, block())
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
        super::set_defaults(req.config, planned, cutover::defaults());
        super::set_defaults(
            req.config,
            planned,
            [
                ("config_root", Value::string("/")),
                ("stop_timeout", Value::string(STOP_TIMEOUT)),
                ("start_timeout", Value::string(START_TIMEOUT)),
                ("verify_timeout", Value::string(VERIFY_TIMEOUT)),
                ("on_failure", Value::string(ON_FAILURE)),
                ("on_destroy", Value::string(go_back::KEEP_EXTERNAL)),
                (
                    "allowed_versions",
                    string_list(&[DEFAULT_VERSIONS.to_string()]),
                ),
            ],
        );
        planned.set("id", Value::string("circleci"));
        let restart = req.is_create()
            || changed(req.prior, planned, "triggers")
            || req.prior.get("app_state").as_str() != Some("started")
            || !strings(req.prior.get("failed_checks")).is_empty();
        if restart {
            for a in OUTCOME {
                planned.set(a, Value::Unknown);
            }
            // Best effort now; apply repeats it before anything stops.
            let known = ["allowed_versions", "config_root", "embedded_nomad_endpoint"]
                .iter()
                .all(|a| planned.get(a).is_fully_known());
            if known {
                self.preview(planned, diags).await;
            }
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
        if !planned.get("restarted_at").is_unknown() {
            return Applied::from_result(Ok(planned.clone()));
        }
        self.restart(planned).await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let status = self.status().await?;
        let mut fresh = state.clone();
        fresh.set("app_state", Value::string(&status.state));
        Ok(Some(fresh))
    }

    async fn plan_destroy(&self, prior: &Value, diags: &mut Diagnostics) {
        self.preview_go_back(prior, diags).await;
    }

    async fn delete(&self, prior: &Value) -> Applied {
        if prior.get("on_destroy").as_str() == Some(go_back::GO_BACK) {
            return self.go_back(prior).await;
        }
        Applied::deleted(Diagnostics::new())
    }

    async fn import(&self, _id: &str) -> Result<Value, Diagnostics> {
        let version = self.version().await?;
        let mut v = Value::Null;
        v.set("id", Value::string("circleci"));
        v.set("config_root", Value::string("/"));
        v.set("stop_timeout", Value::string(STOP_TIMEOUT));
        v.set("start_timeout", Value::string(START_TIMEOUT));
        v.set("verify_timeout", Value::string(VERIFY_TIMEOUT));
        v.set("on_failure", Value::string(ON_FAILURE));
        v.set("on_destroy", Value::string(go_back::KEEP_EXTERNAL));
        v.set(
            "allowed_versions",
            string_list(&[DEFAULT_VERSIONS.to_string()]),
        );
        for (a, d) in cutover::defaults() {
            v.set(a, d);
        }
        v.set("version", Value::string(version));
        v.set("app_state", Value::string(""));
        v.set("checks", string_list(&[]));
        v.set("failed_checks", string_list(&[]));
        v.set("restarted_at", Value::string(""));
        v.set("downtime", Value::string(""));
        Ok(v)
    }
}

/// An error on an attribute, as diagnostics.
fn attr_error(attr: &str, summary: &str, detail: String) -> Diagnostics {
    Diagnostic::error(summary, detail)
        .at(AttrPath::root(attr))
        .into()
}
