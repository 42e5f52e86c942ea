//! The deliberate way back (`on_destroy = "go_back"`): CircleCI returned to how it ran
//! before its first cutover, and checked against what was observed then.

use super::fallback::Fallback;
use super::*;
use crate::resources::cutover::{Cutover, WayBack};

/// `on_destroy`'s values.
pub(super) const KEEP_EXTERNAL: &str = "keep_external";
pub(super) const GO_BACK: &str = "go_back";

/// What stays where it is, in every message about the way back.
const DATA_STAYS: &str = "Data CircleCI wrote to the external services since the cutover stays there and is \
     not carried back: CircleCI runs on its embedded data as it was at the cutover. Applying the configuration \
     again carries the embedded data over again; the migration then refuses the external databases (not \
     empty) unless overwrite_existing = true.";

fn no_way_back(dir: &str) -> Diagnostics {
    Diagnostic::error(
        "No way back recorded",
        format!(
            "on_destroy = \"go_back\", but the Services machine holds no record of CircleCI before its first \
             cutover ({dir}/before-first-cutover.json): the cutover was made by hand or by an older version of \
             this provider, or the way back was taken already. Nothing was changed. To destroy without going \
             back, set on_destroy = \"keep_external\" and apply first."
        ),
    )
    .at(AttrPath::root("on_destroy"))
    .into()
}

impl ServicesRestart {
    /// The destroy plan's word on the way back: what it will do, or why it cannot.
    pub(super) async fn preview_go_back(&self, prior: &Value, diags: &mut Diagnostics) {
        if self.data.services().is_err() {
            return;
        }
        let s = match Settings::of(prior) {
            Ok(s) => s,
            Err(d) => return diags.extend(d),
        };
        let cut = Cutover::new(&self.data, &s.cutover);
        let going_back = s.on_destroy == GO_BACK;
        let back = match cut.way_back().await {
            Ok(Some(b)) => b,
            Ok(None) if going_back => {
                return diags.extend(no_way_back(crate::resources::cutover::DIR))
            }
            Ok(None) => return,
            // Only a destroy going back needs it.
            Err(d) if going_back => return diags.extend(d),
            Err(_) => return,
        };
        if !going_back {
            diags.push(Diagnostic::warning(
                "This destroy leaves CircleCI on the external services",
                format!(
                    "on_destroy = \"{KEEP_EXTERNAL}\": CircleCI keeps running as it does. The config file \
                     resources destroyed with it take their settings out of the runbook's files, and CircleCI \
                     reads those only when it starts: at its next start it would run on its embedded data as it \
                     was at the cutover ({}). To go back now, set on_destroy = \"{GO_BACK}\" and apply first; \
                     to keep the external services, keep the file resources.",
                    back.completed_at
                ),
            ));
            return;
        }
        let then = format!(
            "brought back to how it ran before its first cutover: {}",
            describe(&back)
        );
        let stopped = matches!(self.status().await, Ok(st) if st.settled_in("stopped"));
        let mut w = if stopped {
            Diagnostic::warning(
                "",
                format!("CircleCI is stopped now; it will be {then}, and started."),
            )
        } else {
            let builds = cut.running_builds().await;
            crate::resources::cutover::stop_warning(&builds, &s.cutover, &then)
        };
        w.summary =
            "This destroy stops CircleCI and takes it back to before the cutover".to_string();
        w.detail.push(' ');
        w.detail.push_str(DATA_STAYS);
        diags.push(w);
    }

    /// The destroy with `on_destroy = "go_back"`.
    pub(super) async fn go_back(&self, prior: &Value) -> Applied {
        match self.go_back_inner(prior).await {
            Ok(done) => Applied::deleted(done),
            Err(d) => Applied::kept(prior, d),
        }
    }

    async fn go_back_inner(&self, prior: &Value) -> Result<Diagnostics, Diagnostics> {
        let s = Settings::of(prior)?;
        let cut = Cutover::new(&self.data, &s.cutover);
        let Some(back) = cut.way_back().await? else {
            return Err(no_way_back(crate::resources::cutover::DIR));
        };
        self.allowed_version(&s.versions, "Nothing was changed.")
            .await?;
        // The builds finish first, before anything is reopened: a refusal here
        // changes nothing.
        let mut out = Diagnostics::new();
        if !self.status().await?.settled_in("stopped") {
            cut.let_builds_finish(&mut out).await?;
        }
        if crate::plugin::stop::requested() {
            return Err(Diagnostic::error(
                "Stopped",
                "Terraform asked the provider to stop before CircleCI was taken back; nothing was changed.",
            )
            .into());
        }
        log::warn!(
            "going back to CircleCI before its first cutover: {}",
            describe(&back)
        );
        cut.reopen(&back, &cut.app_modified().await?).await?;
        let back_to = format!("before its first cutover (completed {})", back.completed_at);
        let done = self.go_back_reopened(&s, &cut, &back_to).await.map_err(|d| {
            let mut e = Diagnostics::from(Diagnostic::error(
                "The way back did not finish",
                format!(
                    "on_destroy = \"go_back\": CircleCI was being taken back to how it ran {back_to}, and a step \
                     failed (below). The way back stays on the Services machine, and the record it reopened \
                     stays open (an apply refuses it): run terraform destroy again to go on."
                ),
            ));
            e.extend(d);
            e
        })?;
        if let Err(d) = cut.drop_way_back().await {
            // Back, and checked: only the record of before could not go.
            for x in d.0 {
                out.push(Diagnostic::warning(x.summary, x.detail));
            }
        }
        let (title, detail) = done;
        out.push(Diagnostic::warning(title, format!("{detail} {DATA_STAYS}")));
        Ok(out)
    }

    /// With the way back reopened: CircleCI stopped (if it runs), then the fallback
    /// puts the files back, moves the clients back, starts it and checks it.
    async fn go_back_reopened(
        &self,
        s: &Settings,
        cut: &Cutover<'_>,
        back_to: &str,
    ) -> Result<(String, String), Diagnostics> {
        if !self.status().await?.settled_in("stopped") {
            log::info!("stopping CircleCI to take it back {back_to}");
            self.command(
                crate::backends::ssh::Program::Replicatedctl,
                &["app", "stop"],
            )
            .await?;
            let st = self.wait_for("stopped", s.stop).await?;
            cut.note_stop(&st.modified).await?;
        }
        let fb = Fallback {
            cutover: &s.cutover,
            stop: s.stop,
            start: s.start,
            verify: s.verify,
            ran_on_changed: true,
            start_stopped: true,
            reference: None,
            back_to,
        };
        self.fall_back(&fb).await?.ok_or_else(|| {
            Diagnostics::from(Diagnostic::error(
                "Nothing was taken back",
                "the way back was reopened, but the fallback found nothing to do",
            ))
        })
    }
}

/// The way back in a sentence: the files and the clients.
fn describe(back: &WayBack) -> String {
    let mut parts = vec![format!(
        "the runbook files {}",
        if back.files().is_empty() {
            "(none changed)".to_string()
        } else {
            back.files().join(", ")
        }
    )];
    for g in &back.record.moved_groups {
        parts.push(format!(
            "Auto Scaling group {} back on {}",
            g.group,
            g.launch_configuration
                .clone()
                .or_else(|| g
                    .launch_template_id
                    .as_ref()
                    .map(|t| format!("launch template {t}")))
                .unwrap_or_else(|| "what it used".to_string())
        ));
    }
    if !back.record.moved_static.is_empty() {
        parts.push(format!(
            "{} static client fleet(s) back on their servers",
            back.record.moved_static.len()
        ));
    }
    parts.push(if back.record.observed.is_some() {
        format!(
            "checked against what CircleCI showed before that cutover ({})",
            back.record.taken_at
        )
    } else {
        "checked the runbook's way (CircleCI was stopped by hand before that cutover: nothing was observed)"
            .to_string()
    });
    parts.join("; ")
}
