//! Talking to Replicated and the containers: the preflight, the stop and start with
//! their waits, and the checks.

use std::time::{Duration, Instant};

use super::fallback::{Fallback, THIS_APPLY};
use super::*;
use crate::backends::ssh::{Program, RemoteCommand, ServicesHost};
use crate::circleci::restart::{AppStatus, Check, External};
use crate::plugin::stop;
use crate::resources::cutover::{Cutover, Record, StopSettings};
use crate::resources::{run_command, ssh_diag};

/// How often the app's status is read while it moves, and the checks retried.
const POLL: Duration = Duration::from_secs(1);
/// The most of each stream of one container's log (since its start) a check reads.
const MAX_LOGS: usize = 64 << 20;

/// What the preflight learned.
struct Preflight {
    version: String,
    status: AppStatus,
    external: External,
}

impl ServicesRestart {
    pub(super) fn services(&self) -> Result<Arc<ServicesHost>, Diagnostics> {
        self.data.services()
    }

    /// Runs one fixed command; a non-zero exit is an error with its output.
    pub(super) async fn command(
        &self,
        program: Program,
        args: &[&str],
    ) -> Result<String, Diagnostics> {
        let h = self.services()?;
        let (cmd, out) = run_command(&h, program, args, None, self.data.timeout()).await?;
        if out.success() {
            return Ok(out.stdout_text());
        }
        let target = h.config().target();
        // 127 from the shell; sudo says it in words and exits with 1.
        let not_found = out.status == Some(127)
            || (out.status == Some(1)
                && String::from_utf8_lossy(&out.stderr).contains("command not found"));
        if not_found {
            return Err(Diagnostic::error(
                format!("{} not found on the Services machine", program.name()),
                format!(
                    "`{cmd}` on {target}: command not found. Is this the CircleCI Services machine (Replicated \
                     installs replicatedctl in /usr/local/bin)?{}",
                    if h.config().sudo && h.config().user != "root" {
                        " With sudo = true, sudo's secure_path decides where commands are found."
                    } else {
                        ""
                    }
                ),
            )
            .into());
        }
        Err(Diagnostic::error(
            format!("`{}` failed", cmd.program().name()),
            format!(
                "`{cmd}` on {target} exited with {}:\n{}",
                out.status
                    .map_or("a signal".to_string(), |s| format!("status {s}")),
                out.evidence()
            ),
        )
        .into())
    }

    pub(crate) async fn status(&self) -> Result<AppStatus, Diagnostics> {
        let json = self
            .command(Program::Replicatedctl, &["app", "status", "-o", "json"])
            .await?;
        rs::parse_status(&json)
            .map_err(|e| Diagnostic::error("Unexpected answer from Replicated", e).into())
    }

    pub(super) async fn version(&self) -> Result<String, Diagnostics> {
        let json = self
            .command(Program::Replicatedctl, &["app", "inspect", "-o", "json"])
            .await?;
        rs::parse_version(&json)
            .map_err(|e| Diagnostic::error("Unexpected answer from Replicated", e).into())
    }

    /// The runbook's files under `root`, as the Services machine has them.
    pub(super) async fn external(&self, root: &str) -> Result<External, Diagnostics> {
        let h = self.services()?;
        // All seven at once on the one SFTP session (each read is a few round trips);
        // the first failure in the files' order is the one reported.
        let reads = rs::files::ALL.map(|f| {
            let path = format!("{}/{f}", root.trim_end_matches('/'));
            let h = &h;
            async move {
                let file = h
                    .read_file(&path)
                    .await
                    .map_err(|e| ssh_diag(&format!("Could not read {path}"), e))?;
                Ok::<_, Diagnostics>((f, file))
            }
        });
        let mut texts = std::collections::HashMap::new();
        for read in futures_util::future::join_all(reads).await {
            if let (f, Some(file)) = read? {
                texts.insert(f, String::from_utf8_lossy(&file.content).into_owned());
            }
        }
        External::read(|f| texts.get(f).cloned()).map_err(|e| {
            Diagnostic::error(
                "A config file on the Services machine does not parse",
                format!("{e}. Nothing was restarted."),
            )
            .into()
        })
    }

    /// The CircleCI version the Services machine runs, when `versions` allow it; else
    /// an error on `allowed_versions` ending with `nothing` (what was left alone).
    pub(crate) async fn allowed_version(
        &self,
        versions: &[String],
        nothing: &str,
    ) -> Result<String, Diagnostics> {
        let version = self.version().await?;
        if !rs::version_allowed(&version, versions) {
            return Err(attr_error(
                "allowed_versions",
                "CircleCI version not allowed",
                format!(
                    "the Services machine runs CircleCI {version}, which allowed_versions ({}) does not list; the \
                     runbook is for 2.17. {nothing}",
                    versions.join(", ")
                ),
            ));
        }
        Ok(version)
    }

    /// Everything checked before CircleCI stops.
    ///
    /// The three reads run side by side (the cutover's downtime waits for the apply's);
    /// their errors keep this order of precedence: the version, the status, the files.
    async fn preflight(&self, s: &Settings) -> Result<Preflight, Diagnostics> {
        let (version, status, external) = tokio::join!(
            self.allowed_version(&s.versions, "Nothing was restarted."),
            self.status(),
            self.external(&s.root),
        );
        Ok(Preflight {
            version: version?,
            status: status?,
            external: external?,
        })
    }

    /// At plan time, when the Services machine answers: the same preflight, whose
    /// errors are reported now. An unreachable machine is left to apply.
    pub(super) async fn preview(&self, planned: &Value, diags: &mut Diagnostics) {
        if self.services().is_err() {
            return;
        }
        let s = match Settings::of(planned) {
            Ok(s) => s,
            Err(d) => return diags.extend(d),
        };
        match self.preflight(&s).await {
            Err(d) => {
                let about_input = d.0.iter().any(|x| x.path.is_some())
                    || d.0.iter().any(|x| x.summary.contains("does not parse"));
                if about_input {
                    diags.extend(d);
                }
            }
            Ok(pre) if !pre.status.settled_in("stopped") => {
                let builds = Cutover::new(&self.data, &s.cutover).running_builds().await;
                diags.push(crate::resources::cutover::stop_warning(
                    &builds,
                    &s.cutover,
                    "started again and checked",
                ));
            }
            Ok(_) => {}
        }
    }

    /// Waits until the app has settled in `state`, within `within`. Never abandoned on
    /// a stop request: CircleCI must not be left half-way.
    pub(super) async fn wait_for(
        &self,
        state: &str,
        within: Duration,
    ) -> Result<AppStatus, Diagnostics> {
        let started = Instant::now();
        loop {
            let st = self.status().await?;
            if st.settled_in(state) {
                log::info!(
                    "CircleCI {state} after {}",
                    humantime::format_duration(round(started.elapsed()))
                );
                return Ok(st);
            }
            if started.elapsed() >= within {
                let attr = if state == "stopped" {
                    "stop_timeout"
                } else {
                    "start_timeout"
                };
                return Err(attr_error(
                    attr,
                    &format!("CircleCI did not get {state} in time"),
                    format!(
                        "Replicated still reports state {:?} (desired {:?}{}) after {}. {}",
                        st.state,
                        st.desired,
                        if st.error.is_empty() {
                            String::new()
                        } else {
                            format!(", error {:?}", st.error)
                        },
                        humantime::format_duration(within),
                        if state == "stopped" {
                            "Nothing was started; CircleCI may be stopping still. Check the Management Console."
                        } else {
                            "CircleCI may still be starting; check the Management Console."
                        }
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops CircleCI, unless Replicated already reports it stopped, and waits until it
    /// is (within `within`; an error names `stop_timeout`). First the running builds
    /// finish and the cutover record is opened (see [`Cutover::before_stop`]). For the
    /// data migration, which leaves it stopped for `circleci_services_restart`. The
    /// app's `LastModifiedAt` once stopped.
    pub(crate) async fn stop_app(
        &self,
        within: Duration,
        cutover: &StopSettings,
        diags: &mut Diagnostics,
    ) -> Result<String, Diagnostics> {
        let st = self.status().await?;
        if st.settled_in("stopped") {
            return Ok(st.modified);
        }
        let waiting = Instant::now();
        self.before_stop(&Cutover::new(&self.data, cutover), diags)
            .await?;
        crate::resources::cutover::timing("wait for builds", waiting.elapsed());
        log::info!("stopping CircleCI (state {})", st.state);
        let stopping = Instant::now();
        self.command(Program::Replicatedctl, &["app", "stop"])
            .await?;
        let st = self.wait_for("stopped", within).await?;
        crate::resources::cutover::timing("stop", stopping.elapsed());
        Cutover::new(&self.data, cutover)
            .note_stop(&st.modified)
            .await?;
        Ok(st.modified)
    }

    /// What a check's probe shows: for a log probe, both streams of everything the
    /// container logged since it last stopped (by the Services machine's clock:
    /// Docker's `FinishedAt`), in order; for an env probe, its output. More output
    /// than the bound is an error, never a check on part of it.
    pub(super) async fn probe(&self, probe: &rs::Probe) -> Result<String, Diagnostics> {
        let Some(inspect) = probe.since_args() else {
            let args = probe.docker_args(None);
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            return self.command(Program::Docker, &argv).await;
        };
        let argv: Vec<&str> = inspect.iter().map(String::as_str).collect();
        let out = self.command(Program::Docker, &argv).await?;
        let since = rs::parse_finished_at(&out).map_err(|e| {
            Diagnostics::from(Diagnostic::error("Unexpected answer from Docker", e))
        })?;
        let args = probe.docker_args(since.as_deref());
        let h = self.services()?;
        let cmd = RemoteCommand::new(Program::Docker, args.iter().map(String::as_str))
            .map_err(|e| Diagnostics::from(Diagnostic::error("Invalid command", e)))?
            .keeping(MAX_LOGS);
        let out = h
            .run(&cmd, None, self.data.timeout())
            .await
            .map_err(|e| ssh_diag(&format!("Could not run `{cmd}`"), e))?;
        if !out.success() {
            return Err(Diagnostic::error(
                format!("`{cmd}` failed"),
                format!("it exited with {:?}: {}", out.status, out.evidence()),
            )
            .into());
        }
        if out.truncated {
            return Err(Diagnostic::error(
                "CircleCI's log is too long to check",
                format!(
                    "`{cmd}` printed more than {} MiB on a stream since the container started; the check \
                     reads every line or none, so it cannot pass or fail on what it saw",
                    MAX_LOGS >> 20
                ),
            )
            .into());
        }
        Ok(rs::merge_streams(
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        ))
    }

    /// How many of the services' checks a round runs at once.
    const PROBES_AT_ONCE: usize = 3;

    /// Runs `checks`, and the Nomad capacity check when `nomad` says where, until all
    /// pass or `within` passes (or Terraform asks to stop). Returns the passed ones, and
    /// an error per failed one.
    pub(super) async fn verify(
        &self,
        checks: &[Check],
        nomad: Option<NomadCheck<'_>>,
        within: Duration,
    ) -> Verified {
        let started = Instant::now();
        loop {
            let mut passed = Vec::new();
            let mut failed_labels = Vec::new();
            let mut failed = Diagnostics::new();
            // The checks of a round side by side (each is its own read: a Nomad request,
            // a `docker inspect` and `docker logs`), inside CircleCI's downtime; at most
            // PROBES_AT_ONCE of the services' at once, each `docker logs` holding up to
            // MAX_LOGS a stream. Reported in order.
            let capacity = async {
                match &nomad {
                    Some(n) => Some(n.cutover.check_capacity(n.endpoint, n.before).await),
                    None => None,
                }
            };
            let probes = async {
                let mut all = Vec::with_capacity(checks.len());
                for part in checks.chunks(Self::PROBES_AT_ONCE) {
                    let probed =
                        futures_util::future::join_all(part.iter().map(|c| self.probe(&c.probe)));
                    all.extend(probed.await);
                }
                all
            };
            let (capacity, probed) = tokio::join!(capacity, probes);
            if let (Some(n), Some(r)) = (&nomad, capacity) {
                match r {
                    Ok(label) => passed.push(format!("nomad: {label}")),
                    Err(d) => {
                        failed_labels.push(format!(
                            "nomad: clients that can take builds at {}",
                            n.endpoint
                        ));
                        failed.push(d);
                    }
                }
            }
            for (c, probed) in checks.iter().zip(probed) {
                let label = format!("{}: {}", c.service, c.what);
                let how = match c.probe {
                    rs::Probe::Logs(n) => format!("logs {n}"),
                    rs::Probe::Env(n, _) => format!("exec {n}"),
                };
                match probed {
                    Ok(out) => match rs::evaluate(c, &out) {
                        Ok(()) => passed.push(label),
                        Err(evidence) => {
                            failed_labels.push(label);
                            failed.push(Diagnostic::error(
                                format!("CircleCI check failed: {}", c.service),
                                format!(
                                    "{} — not seen in `docker {}` after {}. Evidence:\n{}",
                                    c.what,
                                    how,
                                    humantime::format_duration(round(started.elapsed())),
                                    if evidence.is_empty() {
                                        "(no output)".to_string()
                                    } else {
                                        evidence.join("\n")
                                    }
                                ),
                            ))
                        }
                    },
                    Err(d) => {
                        failed_labels.push(label);
                        failed.extend(d);
                    }
                }
            }
            let done = Verified {
                passed,
                failed: failed_labels,
                diags: failed,
            };
            if !done.diags.has_errors() || started.elapsed() >= within {
                return done;
            }
            if stop::or_stop(tokio::time::sleep(POLL * 2)).await.is_none() {
                let mut done = done;
                done.diags.push(Diagnostic::error(
                    "Stopped before the checks passed",
                    "Terraform asked the provider to stop; CircleCI was restarted, the checks above had not \
                     passed yet. Run terraform apply again to check again.",
                ));
                return done;
            }
        }
    }

    pub(super) async fn restart(&self, planned: &Value) -> Applied {
        let s = match Settings::of(planned) {
            Ok(s) => s,
            Err(d) => return Applied::from_result(Err(d)),
        };
        // What the state records: the plan, with what this restart found and did.
        let mut out = match RestartModel::decode(planned) {
            Ok(m) => m,
            Err(e) => return Applied::from_result(Err(e.into())),
        };
        let h = match self.services() {
            Ok(h) => h,
            Err(d) => return Applied::from_result(Err(d)),
        };
        // The migration's containers listed while the preflight reads (after a
        // migration, this is inside CircleCI's downtime); any is removed only once the
        // preflight has passed, below.
        let (pre, listed) = tokio::join!(
            self.preflight(&s),
            crate::resources::cutover::migration_containers(&h, self.data.timeout()),
        );
        let pre = match pre {
            Ok(p) => p,
            Err(d) => return Applied::from_result(Err(d)),
        };
        if stop::requested() {
            return Applied::from_result(Err(Diagnostic::error(
                "Stopped",
                "Terraform asked the provider to stop before CircleCI was restarted; nothing was changed.",
            )
            .into()));
        }
        // Before anything stops: a migration container over the embedded data is
        // removed, or the restart is refused here, CircleCI left as it is.
        let removed = match listed {
            Ok(left) => {
                crate::resources::cutover::remove_listed_migration_containers(
                    &h,
                    self.data.timeout(),
                    "Nothing was stopped or changed.",
                    left,
                )
                .await
            }
            Err(d) => Err(d),
        };
        if let Err(d) = removed {
            return Applied::from_result(Err(d));
        }
        out.version = Known::Value(pre.version.clone());
        let cut = Cutover::new(&self.data, &s.cutover);
        let mut warnings = Diagnostics::new();
        let before = if pre.status.settled_in("stopped") {
            // Stopped by the migration (which opened the record) or by hand.
            match cut.load_unless_going_back().await {
                Ok(r) => r,
                Err(d) => return Applied::from_result(Err(d)),
            }
        } else {
            match self.before_stop(&cut, &mut warnings).await {
                Ok(r) => Some(r),
                Err(d) => return Applied::from_result(Err(d)),
            }
        };
        let stopping = Instant::now();
        log::info!(
            "stopping CircleCI {} (state {})",
            pre.version,
            pre.status.state
        );
        // The app's LastModifiedAt once stopped, by this restart or before it: the
        // fallback compares it with the cutover's own.
        let stopped = async {
            if pre.status.settled_in("stopped") {
                return Ok(pre.status.modified.clone());
            }
            self.command(Program::Replicatedctl, &["app", "stop"])
                .await?;
            let st = self.wait_for("stopped", s.stop).await?;
            cut.note_stop(&st.modified).await?;
            Ok::<_, Diagnostics>(st.modified)
        }
        .await;
        let reference = stopped.as_ref().ok().cloned();
        let moved = match stopped {
            Err(d) => Err(d),
            Ok(_) => {
                log::info!("starting CircleCI");
                async {
                    crate::fault_point::point("circleci_services_restart.before_start").await;
                    // Stopped here, the check is made again (the stop took a while);
                    // already stopped, the listing beside the preflight was made just
                    // now.
                    if !pre.status.settled_in("stopped") {
                        crate::resources::cutover::remove_migration_containers(
                            &h,
                            self.data.timeout(),
                            "CircleCI was not started.",
                        )
                        .await?;
                    }
                    let starting = Instant::now();
                    self.command(Program::Replicatedctl, &["app", "start"])
                        .await?;
                    let st = self.wait_for("started", s.start).await;
                    crate::resources::cutover::timing("start", starting.elapsed());
                    st
                }
                .await
            }
        };
        if let Err(d) = moved {
            warnings.extend(d);
            self.on_failure(&s, reference.as_deref(), &mut warnings)
                .await;
            let now = self.status().await.map(|st| st.state).unwrap_or_default();
            // The checks never ran: recorded as failed, so the next plan restarts.
            let none = Verified {
                failed: vec!["the restart did not finish; no check ran".into()],
                ..Verified::default()
            };
            return Applied {
                state: Some(finish(out, planned, &now, &none, None)),
                diags: warnings,
            };
        }
        let checks = rs::checks(&pre.external);
        let endpoint = pre
            .external
            .nomad_endpoint
            .clone()
            .unwrap_or_else(|| s.cutover.embedded_nomad.clone());
        log::info!("CircleCI started; {} checks and Nomad's", checks.len());
        let nomad = NomadCheck {
            cutover: &cut,
            endpoint: &endpoint,
            before: before.as_ref(),
        };
        let checking = Instant::now();
        let mut v = self.verify(&checks, Some(nomad), s.verify).await;
        crate::resources::cutover::timing("checks", checking.elapsed());
        let mut app_state = "started".to_string();
        if v.diags.has_errors() {
            self.on_failure(&s, reference.as_deref(), &mut v.diags)
                .await;
            app_state = self.status().await.map(|st| st.state).unwrap_or_default();
        } else if let Err(d) = cut.complete().await {
            v.diags.extend(d);
        }
        let state = finish(out, planned, &app_state, &v, Some(stopping.elapsed()));
        warnings.extend(v.diags);
        Applied {
            state: Some(state),
            diags: warnings,
        }
    }
}

impl ServicesRestart {
    /// After the start or a check failed: the fallback (`on_failure = "restore"`), or
    /// CircleCI stopped and everything left for a human (`"stop"`).
    async fn on_failure(&self, s: &Settings, reference: Option<&str>, diags: &mut Diagnostics) {
        if stop::requested() {
            // Interrupted, not failed: nothing is undone; the next apply checks again.
            return;
        }
        if s.on_failure == "stop" {
            let stopped = async {
                self.command(Program::Replicatedctl, &["app", "stop"])
                    .await?;
                self.wait_for("stopped", s.stop).await
            }
            .await;
            match stopped {
                Ok(_) => diags.push(Diagnostic::error(
                    "CircleCI was left stopped",
                    format!(
                        "on_failure = \"stop\": after the failure above CircleCI was stopped, with the config \
                         files as this apply wrote them. The originals of those it changed are kept under {dir}/kept (0600), and \
                         what Nomad showed before the first stop in {dir}/record.json. Run terraform apply again \
                         to start it on these files, or put the originals back and start it from the \
                         Management Console.",
                        dir = crate::resources::cutover::DIR
                    ),
                )),
                Err(d) => diags.extend(d),
            }
            return;
        }
        let fb = Fallback {
            cutover: &s.cutover,
            stop: s.stop,
            start: s.start,
            verify: s.verify,
            ran_on_changed: true,
            start_stopped: true,
            reference: reference.map(str::to_string),
            back_to: THIS_APPLY,
        };
        self.after_failure(&fb, diags).await;
    }
}

/// Where the capacity check looks after the start, and what it compares with.
pub(super) struct NomadCheck<'a> {
    pub(super) cutover: &'a Cutover<'a>,
    pub(super) endpoint: &'a str,
    pub(super) before: Option<&'a Record>,
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX) / 100 * 100)
}

/// The checks' outcome.
#[derive(Default)]
pub(super) struct Verified {
    pub(super) passed: Vec<String>,
    pub(super) failed: Vec<String>,
    pub(super) diags: Diagnostics,
}

/// The state after a restart: `planned` with `m`'s attributes, the outcome ones set
/// (`downtime` `None`: the checks never passed).
fn finish(
    mut m: RestartModel,
    planned: &Value,
    app_state: &str,
    v: &Verified,
    downtime: Option<Duration>,
) -> Value {
    m.app_state = Known::Value(app_state.to_string());
    m.checks = Known::Value(v.passed.clone());
    m.failed_checks = Known::Value(v.failed.clone());
    let (at, down) = match downtime {
        Some(d) => (
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            format!("{:.1}s", d.as_secs_f64()),
        ),
        None => (String::new(), String::new()),
    };
    m.restarted_at = Known::Value(at);
    m.downtime = Known::Value(down);
    let mut state = planned.clone();
    m.encode(&mut state);
    state
}
