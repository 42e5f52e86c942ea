//! Undoing a failed cutover: the runbook files put back, CircleCI brought back on them
//! and checked.

use std::time::Duration;

use super::run::NomadCheck;
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

impl ServicesRestart {
    /// After a failure in the cutover: every runbook file it changed is put back as it
    /// was before its first write. CircleCI, when it was started on the changed files,
    /// is restarted on the files put back; when the cutover stopped it, it is started;
    /// either way it is then checked the runbook's way and Nomad's, against the record
    /// from before the first stop. Returns what was done, for the apply's error (None:
    /// the cutover had changed nothing to put back or start), or why it failed.
    pub(crate) async fn fall_back(
        &self,
        fb: &Fallback<'_>,
    ) -> Result<Option<(&'static str, String)>, Diagnostics> {
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
            cut.forget().await?;
            return Ok(Some((
                "Nothing was put back: CircleCI was started or stopped outside this cutover",
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
        if !restart && !start {
            if restored.is_empty() {
                return Ok(None);
            }
            cut.drop_originals().await?;
            return Ok(Some(if stopped {
                (
                    "The config files are back as they were before this apply",
                    format!(
                        "{files}. CircleCI is stopped; started (Management Console: Start), it runs on these \
                         files, as it did before this apply."
                    ),
                )
            } else {
                (
                    "CircleCI is back as it was before this apply",
                    format!("{files}. CircleCI was not stopped: it still runs as it did before this apply."),
                )
            }));
        }
        log::warn!(
            "falling back: {files}; {} CircleCI",
            if restart { "restarting" } else { "starting" }
        );
        let moved = async {
            if restart {
                self.command(Program::Replicatedctl, &["app", "stop"])
                    .await?;
                self.wait_for("stopped", fb.stop).await?;
            }
            self.command(Program::Replicatedctl, &["app", "start"])
                .await?;
            self.wait_for("started", fb.start).await?;
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
        let v = self.verify(&checks, Some(nomad), fb.verify).await;
        let how = if restart { "restarted" } else { "started" };
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
        cut.forget().await?;
        Ok(Some((
            "CircleCI is back as it was before this apply",
            format!(
                "{files}. CircleCI was {how} on them, and its checks passed: {}.",
                v.passed.join("; ")
            ),
        )))
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
