//! The way back to CircleCI as it was before its first cutover ([`WAY_BACK`], 0600).
//!
//! A cutover's record and the originals it kept are dropped once its start passes
//! every check. The first cutover that carried the data over (its migration verified)
//! keeps them instead, in one file, so that an operator can later return CircleCI to
//! how it ran before (`circleci_services_restart`'s `on_destroy = "go_back"`): the same
//! files, the same Nomad clients, the same observations of the runbook's checks. The
//! way back reopens them as a cutover and falls back to them, with the fallback's own
//! checks.

use serde::{Deserialize, Serialize};

use super::{app_status, kept_path, runbook_file, Cutover, Original, Record};
use crate::plugin::{Diagnostic, Diagnostics};
use crate::resources::ssh_diag;

/// The file, under `config_root`, next to the cutover's record.
pub(crate) const WAY_BACK: &str = "data/circle/external-services-cutover/before-first-cutover.json";

/// CircleCI before its first cutover.
#[derive(Serialize, Deserialize)]
pub(crate) struct WayBack {
    pub version: u32,
    /// When that cutover's start passed its checks (RFC 3339, UTC).
    pub completed_at: String,
    /// What was observed before its first stop (nothing when CircleCI was stopped by
    /// hand), and the clients it and later cutovers moved.
    pub record: Record,
    /// The runbook files it (or a later cutover) changed, as they were before.
    originals: Vec<Original>,
}

impl std::fmt::Debug for WayBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The originals may hold secrets (the runbook's files carry passwords).
        f.debug_struct("WayBack")
            .field("completed_at", &self.completed_at)
            .field("files", &self.files())
            .finish_non_exhaustive()
    }
}

impl WayBack {
    /// Adds what a later cutover changed that this way back does not name yet: the
    /// files it kept (a file named already keeps its first copy) and the clients it
    /// moved. Whether anything was added.
    fn add(&mut self, originals: Vec<Original>, record: Option<Record>) -> bool {
        let before = self.counts();
        for o in originals {
            if !self.originals.iter().any(|b| b.path == o.path) {
                self.originals.push(o);
            }
        }
        if let Some(r) = record {
            for g in r.moved_groups {
                if !self.record.moved_groups.iter().any(|b| b.group == g.group) {
                    self.record.moved_groups.push(g);
                }
            }
            let key = |v: &serde_json::Value| v["client"].to_string();
            for f in r.moved_static {
                if !self.record.moved_static.iter().any(|b| key(b) == key(&f)) {
                    self.record.moved_static.push(f);
                }
            }
        }
        self.counts() != before
    }

    fn counts(&self) -> (usize, usize, usize) {
        (
            self.originals.len(),
            self.record.moved_groups.len(),
            self.record.moved_static.len(),
        )
    }

    /// The runbook files it puts back, each with what it becomes.
    pub(crate) fn files(&self) -> Vec<String> {
        self.originals
            .iter()
            .map(|o| {
                let f = runbook_file(&o.path).map_or(o.path.as_str(), |(_, f)| f);
                if o.existed {
                    format!("/{f} (as it was)")
                } else {
                    format!("/{f} (removed: there was none)")
                }
            })
            .collect()
    }
}

impl Cutover<'_> {
    /// Ends the cutover, its start verified (see [`Cutover::forget`]). The first one
    /// that carried the data over keeps what it kept as the way back (with an empty
    /// record when CircleCI was stopped by hand: nothing was observed before); a later
    /// one adds the files and clients the way back does not name yet, so that going
    /// back undoes it too (for a file already named, the first copy is what CircleCI
    /// had before the first cutover).
    pub(crate) async fn complete(&self) -> Result<(), Diagnostics> {
        let migrated = self
            .written()
            .await?
            .is_some_and(|w| w.migrated && !w.fell_back);
        let record = self.load().await?;
        let originals = self.originals().await?;
        let back = match self.way_back().await? {
            None if migrated => Some(WayBack {
                version: 1,
                completed_at: String::new(),
                record: record.unwrap_or(Record {
                    version: 1,
                    ..Record::default()
                }),
                originals,
            }),
            None => None,
            Some(mut back) => back.add(originals, record).then_some(back),
        };
        if let Some(mut back) = back {
            if back.completed_at.is_empty() {
                back.completed_at =
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            }
            back.record.way_back = false;
            self.write_json(
                WAY_BACK,
                &back,
                "the record of CircleCI before its first cutover",
            )
            .await?;
            log::info!(
                "the way back to CircleCI before its first cutover is in {}",
                self.path(WAY_BACK)
            );
        }
        self.forget().await
    }

    /// The way back, if a first cutover left one.
    pub(crate) async fn way_back(&self) -> Result<Option<WayBack>, Diagnostics> {
        self.read_json(
            WAY_BACK,
            "The record of CircleCI before its first cutover does not parse",
            "It holds the config files and what CircleCI showed before the first cutover.",
        )
        .await
    }

    /// Reopens `back` as the cutover under way, marked as the way back's: its originals
    /// kept again and its record open, both current whatever CircleCI did since (the
    /// way back is deliberate); `now` is the app's `LastModifiedAt`, added to the
    /// record. Refused while another cutover is open.
    pub(crate) async fn reopen(&self, back: &WayBack, now: &str) -> Result<(), Diagnostics> {
        if let Some(open) = self.load().await? {
            if !open.way_back {
                return Err(Diagnostic::error(
                    "A cutover is under way",
                    format!(
                        "{} is open: an apply stopped CircleCI or changed its files and has not finished (or \
                         on_failure = \"stop\" left it for a human). Nothing was changed. Finish it first \
                         (terraform apply), then destroy.",
                        self.path(super::RECORD)
                    ),
                )
                .into());
            }
        }
        let h = self.data.services()?;
        self.drop_originals().await?;
        for o in &back.originals {
            let Some((root, f)) = runbook_file(&o.path) else {
                return Err(Diagnostic::error(
                    "The record of CircleCI before its first cutover names another file",
                    format!("{} is not one of the runbook's files", o.path),
                )
                .into());
            };
            let kept = kept_path(&root, f);
            let copy = Original {
                app_modified: String::new(),
                path: o.path.clone(),
                existed: o.existed,
                mode: o.mode,
                content_base64: o.content_base64.clone(),
            };
            let json = serde_json::to_vec(&copy).unwrap_or_default();
            super::write_private(&h, &root, &kept, &json)
                .await
                .map_err(|e| ssh_diag(&format!("Could not write {kept}"), e))?;
        }
        let mut record = back.record.clone();
        record.way_back = true;
        if !record.app_modified.iter().any(|m| m == now) {
            record.app_modified.push(now.to_string());
        }
        self.save(&record).await
    }

    /// The app's `LastModifiedAt` now.
    pub(crate) async fn app_modified(&self) -> Result<String, Diagnostics> {
        let h = self.data.services()?;
        Ok(app_status(self.data, &h).await?.modified)
    }

    /// CircleCI is back as before its first cutover: the way back goes.
    pub(crate) async fn drop_way_back(&self) -> Result<(), Diagnostics> {
        self.remove(WAY_BACK, "the record of CircleCI before its first cutover")
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::MovedGroup;
    use super::*;

    fn original(path: &str, content: &str) -> Original {
        Original {
            path: path.to_string(),
            existed: !content.is_empty(),
            mode: 0o600,
            content_base64: content.to_string(),
            app_modified: String::new(),
        }
    }

    #[test]
    fn a_later_cutover_adds_only_what_the_way_back_does_not_name() {
        let group = |g: &str, lc: &str| MovedGroup {
            group: g.into(),
            launch_configuration: Some(lc.into()),
            ..MovedGroup::default()
        };
        let mut back = WayBack {
            version: 1,
            completed_at: "t".into(),
            record: Record {
                moved_groups: vec![group("clients", "original")],
                ..Record::default()
            },
            originals: vec![original("/etc/circleconfig/shared/postgresql", "")],
        };
        // Nothing new: nothing to write.
        assert!(!back.add(
            vec![original(
                "/etc/circleconfig/shared/postgresql",
                "ZXh0ZXJuYWw="
            )],
            Some(Record {
                moved_groups: vec![group("clients", "first-copy")],
                ..Record::default()
            }),
        ));
        // The first copy of a file and the first launch configuration of a group stay.
        assert_eq!(back.originals[0].content_base64, "");
        assert_eq!(
            back.record.moved_groups[0].launch_configuration.as_deref(),
            Some("original")
        );
        // Redis moved out later, and a static fleet: both added.
        assert!(back.add(
            vec![original("/etc/circleconfig/shared/redis", "")],
            Some(Record {
                moved_static: vec![serde_json::json!({"client": ["10.0.0.5"]})],
                ..Record::default()
            }),
        ));
        assert_eq!(back.originals.len(), 2);
        assert_eq!(back.record.moved_static.len(), 1);
    }
}
