//! Undoing a failed cutover: the runbook files put back, CircleCI brought back on them
//! and checked.

use std::collections::BTreeMap;
use std::time::Duration;

use super::replicated::NomadCheck;
use super::*;
use crate::backends::ssh::Program;
use crate::resources::cutover::{Cutover, StopSettings};

/// How a fallback runs, for the resource whose step failed.
pub(crate) struct Fallback<'a> {
    pub cutover: &'a StopSettings,
    pub stop: Duration,
    pub start: Duration,
    pub verify: Duration,
    /// This apply started CircleCI on the changed files (or tried to).
    pub ran_on_changed: bool,
    /// Start CircleCI when it is found stopped with the cutover's record open.
    pub start_stopped: bool,
    /// The app's `LastModifiedAt` as the cutover last left it (before its failed
    /// start); None: as it is now.
    pub reference: Option<String>,
    /// What CircleCI goes back to, for messages: [`THIS_APPLY`], or the way back's.
    pub back_to: &'a str,
}

/// What a fallback after a failure brings CircleCI back to.
pub(crate) const THIS_APPLY: &str = "before this apply";

/// The deadlines of a fallback run by a resource that has no restart settings of its
/// own (the migration, the client rolls): Replicated's stop and start, the checks.
const STOP: Duration = Duration::from_secs(600);
const START: Duration = Duration::from_secs(1200);
const VERIFY: Duration = Duration::from_secs(300);
/// How long moving a group's clients back may take.
const MOVE_BACK: Duration = Duration::from_secs(1200);

impl<'a> Fallback<'a> {
    /// A fallback to before this apply with the default deadlines, from a step that
    /// did not start CircleCI.
    pub(crate) fn after_step(cutover: &'a StopSettings, start_stopped: bool) -> Self {
        Fallback {
            cutover,
            stop: STOP,
            start: START,
            verify: VERIFY,
            ran_on_changed: false,
            start_stopped,
            reference: None,
            back_to: THIS_APPLY,
        }
    }
}

/// An error of the fallback's own, saying where it stopped.
fn during(what: &str, files: &str, d: Diagnostics) -> Diagnostics {
    let mut out = Diagnostics::from(Diagnostic::error(
        "The fallback did not bring CircleCI back",
        format!(
            "{files}. Then {what} failed (below). The originals and the record stay on the Services machine \
             under {}; Replicated's state: see the Management Console.",
            crate::resources::cutover::DIR
        ),
    ));
    out.extend(d);
    out
}

/// A value that could not be read: not required to be the same afterwards.
const NOT_READ: &str = "(not read";

impl ServicesRestart {
    /// What the runbook's checks look at, on CircleCI as it runs now.
    pub(crate) async fn observe(&self) -> BTreeMap<String, String> {
        let mut outputs: BTreeMap<String, String> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for o in rs::observations() {
            let key = format!("{:?}", o.probe);
            if !outputs.contains_key(&key) {
                let text = match self.probe(&o.probe).await {
                    Ok(t) => t,
                    Err(d) => format!(
                        "{NOT_READ}: {})",
                        d.0.first().map_or("", |x| x.summary.as_str())
                    ),
                };
                outputs.insert(key.clone(), text);
            }
            let text = &outputs[&key];
            let v = if text.starts_with(NOT_READ) {
                text.clone()
            } else {
                (o.read)(text)
            };
            out.insert(o.label.to_string(), v);
        }
        out
    }

    /// Before a running CircleCI is stopped: the builds are let finish and the
    /// cutover's record opened (see [`Cutover::before_stop`]), with what the checks
    /// observe now, unless the record already holds that.
    pub(crate) async fn before_stop(
        &self,
        cut: &Cutover<'_>,
        diags: &mut Diagnostics,
    ) -> Result<crate::resources::cutover::Record, Diagnostics> {
        let r = cut.before_stop(diags).await?;
        if r.observed.is_some() {
            return Ok(r);
        }
        let seen = self.observe().await;
        log::info!(
            "before the stop, CircleCI's checks observe: {}",
            seen.iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        cut.note_observed(seen).await
    }

    /// After a fallback's start: until `within` passes, the checks must observe what
    /// they did before the cutover. The differences when they never do.
    async fn same_as_before(
        &self,
        before: &BTreeMap<String, String>,
        within: Duration,
    ) -> Result<usize, Vec<String>> {
        let wanted: BTreeMap<String, String> = before
            .iter()
            .filter(|(_, v)| !v.starts_with(NOT_READ))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let started = std::time::Instant::now();
        loop {
            let now = self.observe().await;
            let diff = rs::differing(&wanted, &now);
            if diff.is_empty() {
                return Ok(wanted.len());
            }
            if started.elapsed() >= within || crate::plugin::stop::requested() {
                return Err(diff);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// After a failure in the cutover: every runbook file it changed is put back as it
    /// was before its first write. CircleCI, when it was started on the changed files,
    /// is restarted on the files put back; when the cutover stopped it, it is started;
    /// either way it is then checked the runbook's way and Nomad's, against the record
    /// from before the first stop. Returns what was done, for the apply's error (None:
    /// the cutover had changed nothing to put back or start), or why it failed.
    pub(crate) async fn fall_back(
        &self,
        fb: &Fallback<'_>,
    ) -> Result<Option<(String, String)>, Diagnostics> {
        if self.data.services().is_err() {
            return Ok(None);
        }
        let cut = Cutover::new(&self.data, fb.cutover);
        let before = cut.load().await?;
        let st = self.status().await?;
        let reference = fb.reference.clone().unwrap_or_else(|| st.modified.clone());
        let (restored, stale) = cut
            .restore(&reference, before.as_ref())
            .await
            .map_err(|d| during("putting the files back", "No file was put back yet", d))?;
        if !stale.is_empty() {
            // CircleCI may run on the external copies now: they are its data.
            cut.forget().await?;
            return Ok(Some((
                "Nothing was put back: CircleCI was started or stopped outside this cutover".to_string(),
                format!(
                    "Replicated's LastModifiedAt changed since the cutover first wrote {}, so CircleCI may already \
                     run on these files as they are. Putting back the copies kept before could move it back onto \
                     data it no longer uses; they were dropped instead{}.",
                    stale.join(", "),
                    if restored.is_empty() {
                        String::new()
                    } else {
                        format!(" (put back, being current: {})", restored.join(", "))
                    }
                ),
            )));
        }
        let stopped = st.settled_in("stopped");
        let restart = !stopped && fb.ran_on_changed && !restored.is_empty();
        let start = stopped && fb.start_stopped && before.is_some();
        let files = if restored.is_empty() {
            "No config file had changed".to_string()
        } else {
            format!(
                "Put back as they were before the cutover: {}",
                restored.join(", ")
            )
        };
        let groups = before
            .as_ref()
            .map(|r| (r.moved_groups.clone(), r.moved_static.clone()))
            .unwrap_or_default();
        let moved_any = !groups.0.is_empty() || !groups.1.is_empty();
        if !restart && !start {
            let mut files = files;
            if stopped && moved_any {
                let back = self
                    .move_clients_back(&cut, &groups)
                    .await
                    .map_err(|d| during("moving the Nomad clients back", &files, d))?;
                files = format!("{files}. {back}");
            } else if restored.is_empty() {
                return Ok(None);
            }
            cut.drop_originals().await?;
            return Ok(Some(if stopped {
                (
                    format!("The config files are back as they were {}", fb.back_to),
                    format!(
                        "{files}. CircleCI is stopped; started (Management Console: Start), it runs on these \
                         files, as it did before this apply. Started by hand, it writes to its embedded data \
                         again and the external copies this cutover wrote stop being its own: the next apply \
                         then refuses them unless overwrite_existing = true. Left stopped, the next apply \
                         restores over them."
                    ),
                )
            } else {
                (
                    format!("CircleCI is back as it was {}", fb.back_to),
                    format!(
                        "{files}. CircleCI was not stopped: it still runs as it did {}.",
                        fb.back_to
                    ),
                )
            }));
        }
        log::warn!(
            "falling back: {files}; {} CircleCI",
            if restart { "restarting" } else { "starting" }
        );
        let mut files = files;
        if restart {
            let stopped = async {
                self.command(Program::Replicatedctl, &["app", "stop"])
                    .await?;
                self.wait_for("stopped", fb.stop).await
            }
            .await;
            stopped.map_err(|d| during("stopping CircleCI", &files, d))?;
        }
        // The clients follow CircleCI back to the Nomad it used before, while it is
        // stopped: no build runs on them.
        if moved_any {
            let back = self
                .move_clients_back(&cut, &groups)
                .await
                .map_err(|d| during("moving the Nomad clients back", &files, d))?;
            files = format!("{files}. {back}");
        }
        let moved = async {
            crate::resources::cutover::remove_migration_containers(
                &*self.services()?,
                self.data.timeout(),
                "CircleCI was not started.",
            )
            .await?;
            self.command(Program::Replicatedctl, &["app", "start"])
                .await?;
            self.wait_for("started", fb.start).await?;
            // It runs on its embedded data again, whatever the checks say next: a
            // verified migration no longer holds.
            cut.note_fell_back().await?;
            self.external(&fb.cutover.root).await
        }
        .await;
        let what = if restart {
            "restarting CircleCI"
        } else {
            "starting CircleCI"
        };
        let external = moved.map_err(|d| during(what, &files, d))?;
        let checks = rs::checks(&external);
        let endpoint = external
            .nomad_endpoint
            .clone()
            .unwrap_or_else(|| fb.cutover.embedded_nomad.clone());
        let nomad = NomadCheck {
            cutover: &cut,
            endpoint: &endpoint,
            before: before.as_ref(),
        };
        let mut v = self.verify(&checks, Some(nomad), fb.verify).await;
        let how = if restart { "restarted" } else { "started" };
        if let (false, Some(seen)) = (
            v.diags.has_errors(),
            before.as_ref().and_then(|r| r.observed.as_ref()),
        ) {
            match self.same_as_before(seen, fb.verify).await {
                Ok(n) => v.passed.push(format!(
                    "the {n} observations of the runbook's checks are as before the cutover"
                )),
                Err(diff) => v.diags.push(Diagnostic::error(
                    "CircleCI does not run as it did before the cutover",
                    format!(
                        "what the runbook's checks observe differs from the record of before the first stop \
                         ({}/record.json):\n{}",
                        crate::resources::cutover::DIR,
                        diff.join("\n")
                    ),
                )),
            }
        }
        if v.diags.has_errors() {
            let mut d = Diagnostics::from(Diagnostic::error(
                "The fallback did not bring CircleCI back",
                format!(
                    "{files}. CircleCI was {how} on them, but its checks did not pass (below). The originals \
                     and the record stay on the Services machine, under {}.",
                    crate::resources::cutover::DIR
                ),
            ));
            d.extend(v.diags);
            return Err(d);
        }
        cut.fell_back().await?;
        Ok(Some((
            format!("CircleCI is back as it was {}", fb.back_to),
            format!(
                "{files}. CircleCI was {how} on them, and its checks passed: {}.",
                v.passed.join("; ")
            ),
        )))
    }

    /// Switches each client group the cutover moved back to what it used before, and
    /// replaces its instances; the record then lists none. What was done.
    async fn move_clients_back(
        &self,
        cut: &Cutover<'_>,
        (groups, fleets): &(
            Vec<crate::resources::cutover::MovedGroup>,
            Vec<serde_json::Value>,
        ),
    ) -> Result<String, Diagnostics> {
        let mut done = Vec::new();
        for f in fleets {
            let v = Value::from_json(f.to_string().as_bytes()).map_err(|e| {
                Diagnostics::from(Diagnostic::error(
                    "The cutover's record does not parse",
                    format!("a static client fleet in it: {e}"),
                ))
            })?;
            done.push(
                crate::resources::nomad_client_static::NomadClientStatic::new(self.data.clone())
                    .move_back(&v)
                    .await?,
            );
        }
        for g in groups {
            log::warn!("falling back: moving the Nomad clients of {} back", g.group);
            done.push(
                crate::resources::nomad_client_launch_config::move_back(
                    self.data.clone(),
                    g,
                    MOVE_BACK,
                )
                .await?,
            );
        }
        cut.clear_moved_clients().await?;
        Ok(format!("Nomad clients moved back: {}", done.join("; ")))
    }

    /// After a failed create or update of a resource that moves Nomad clients (its
    /// `planned` settings name the Services machine's root): inside a cutover (CircleCI
    /// stopped by it, its record open) the cutover is undone; interrupted, or outside
    /// one, nothing is.
    /// `stop` is `None` when the resource's plan did not decode: its step failed
    /// before it changed anything.
    pub(crate) async fn after_failed_step(
        &self,
        stop: Option<StopSettings>,
        mut applied: Applied,
    ) -> Applied {
        if !applied.diags.has_errors() || crate::plugin::stop::requested() {
            return applied;
        }
        let Some(s) = stop else { return applied };
        if !matches!(Cutover::new(&self.data, &s).inside().await, Ok(true)) {
            return applied;
        }
        let fb = Fallback::after_step(&s, true);
        self.after_failure(&fb, &mut applied.diags).await;
        applied
    }

    /// Runs the fallback after `failure`, and says how it went, as one error list.
    pub(crate) async fn after_failure(&self, fb: &Fallback<'_>, failure: &mut Diagnostics) {
        match self.fall_back(fb).await {
            Ok(Some((title, done))) => failure.push(Diagnostic::error(
                title,
                format!(
                    "The cutover failed (above), so it was undone. {done} The next terraform apply tries the \
                     cutover again."
                ),
            )),
            Ok(None) => {}
            Err(d) => failure.extend(d),
        }
    }
}
