//! The targets a cutover's migration wrote, kept on the Services machine until a start
//! passes every check ([`WRITTEN`], 0600).
//!
//! A failed cutover falls back to the embedded data, and CircleCI keeps writing to it;
//! the external copies the failed attempt left are then out of date but nobody's
//! data. The next apply's migration must restore over them without
//! `overwrite_existing`, yet still refuse any other non-empty target. Terraform's
//! state cannot hold this: a failed create is tainted and replaced with no prior state.
//!
//! A target counts as the cutover's own only while CircleCI has not been started or
//! stopped outside it since (Replicated's `LastModifiedAt` is the one the cutover last
//! left): CircleCI reads its files only when it starts, so until then nothing but the
//! migration can have written there through CircleCI.

use serde::{Deserialize, Serialize};

use super::{app_status, Cutover};
use crate::plugin::Diagnostics;

/// The record, under `config_root`, next to the cutover's.
pub(crate) const WRITTEN: &str = "data/circle/external-services-cutover/written.json";

/// What the migration wrote in a cutover not yet completed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Written {
    pub version: u32,
    /// The targets, as [`target_pg`] and [`target_mongo`] name them.
    pub targets: Vec<String>,
    /// Replicated's `LastModifiedAt` as the cutover last left CircleCI.
    pub app_modified: String,
    /// Set when the migration was verified.
    #[serde(default)]
    pub migrated: bool,
    /// Set when a fallback put CircleCI back on what it used before, after the
    /// migration was verified: the external copies are out of date.
    #[serde(default)]
    pub fell_back: bool,
}

/// A PostgreSQL target database.
pub(crate) fn target_pg(host: &str, port: u16, db: &str) -> String {
    format!("postgres://{host}:{port}/{db}")
}

/// A MongoDB target database.
pub(crate) fn target_mongo(hosts: &[String], db: &str) -> String {
    format!("mongodb://{}/{db}", hosts.join(","))
}

impl Written {
    /// Whether its targets are still the cutover's own, now that the app's
    /// `LastModifiedAt` is `now`.
    pub(crate) fn grants(&self, now: &str) -> bool {
        !now.is_empty() && self.app_modified == now && (!self.migrated || self.fell_back)
    }

    /// The databases of `names` (by their target names) that are the cutover's own,
    /// now that the app's `LastModifiedAt` is `now`: written by a migration that
    /// failed, or whose cutover fell back. A verified copy CircleCI has not run on yet
    /// is not: a difference there was made by someone else.
    pub(crate) fn own<'n>(&self, now: &str, names: &'n [(String, String)]) -> Vec<&'n str> {
        if !self.grants(now) {
            return Vec::new();
        }
        names
            .iter()
            .filter(|(_, target)| self.targets.contains(target))
            .map(|(db, _)| db.as_str())
            .collect()
    }
}

impl Cutover<'_> {
    /// The record, if any.
    pub(crate) async fn written(&self) -> Result<Option<Written>, Diagnostics> {
        self.read_json(
            WRITTEN,
            "The migration's record on the Services machine does not parse",
            "It names the external databases a failed cutover wrote; removed, the next migration refuses them \
             as not empty.",
        )
        .await
    }

    async fn save_written(&self, w: &Written) -> Result<(), Diagnostics> {
        self.write_json(WRITTEN, w, "the migration's record").await
    }

    async fn modified(&self) -> Result<String, Diagnostics> {
        let h = self.data.services()?;
        Ok(app_status(self.data, &h).await?.modified)
    }

    /// The app's `LastModifiedAt` now, and the record (None when it is not there).
    pub(crate) async fn written_now(&self) -> Result<(String, Option<Written>), Diagnostics> {
        Ok((self.modified().await?, self.written().await?))
    }

    /// Once CircleCI is stopped for the migration: the record as the preflight found
    /// it (`current`, when it still counted then) is carried on, its targets still the
    /// cutover's own; a new one is opened otherwise. `modified`: the app's
    /// `LastModifiedAt` once stopped.
    pub(crate) async fn open_written(
        &self,
        current: Option<&Written>,
        modified: String,
    ) -> Result<(), Diagnostics> {
        let mut w = current.cloned().unwrap_or(Written {
            version: 1,
            ..Written::default()
        });
        w.app_modified = modified;
        w.migrated = false;
        w.fell_back = false;
        self.save_written(&w).await
    }

    /// Right before the migration restores into `target` (or once it found it holding
    /// exactly the embedded data while already the cutover's own): it is the cutover's
    /// own until the cutover completes. Listed before the first byte, not once
    /// verified: a restore the provider gave up on (its deadline, on a frozen target)
    /// can still commit when the target answers again, and the retry must restore
    /// over that rather than refuse it as someone else's data. A target never listed
    /// is never overwritten without `overwrite_existing`.
    pub(crate) async fn note_target(&self, target: &str) -> Result<(), Diagnostics> {
        let _one = self.lock.lock().await;
        let mut w = self.written().await?.unwrap_or(Written {
            version: 1,
            ..Written::default()
        });
        if !w.targets.iter().any(|t| t == target) {
            w.targets.push(target.to_string());
            if w.app_modified.is_empty() {
                w.app_modified = self.modified().await?;
            }
            self.save_written(&w).await?;
        }
        Ok(())
    }

    /// The migration was verified.
    pub(crate) async fn note_migrated(&self) -> Result<(), Diagnostics> {
        let Some(mut w) = self.written().await? else {
            return Ok(());
        };
        w.migrated = true;
        w.app_modified = self.modified().await?;
        self.save_written(&w).await
    }

    /// A fallback brought CircleCI back on what it used before: the copies written
    /// stay the cutover's own (for the retry), and a verified migration no longer holds.
    pub(crate) async fn note_fell_back(&self) -> Result<(), Diagnostics> {
        let Some(mut w) = self.written().await? else {
            return Ok(());
        };
        w.fell_back = w.migrated;
        w.app_modified = self.modified().await?;
        self.save_written(&w).await
    }

    /// The cutover completed: the targets are CircleCI's data now.
    pub(crate) async fn drop_written(&self) -> Result<(), Diagnostics> {
        self.remove(WRITTEN, "the migration's record").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<(String, String)> {
        ["circle", "vms"]
            .iter()
            .map(|d| (d.to_string(), target_pg("db.internal", 5432, d)))
            .collect()
    }

    #[test]
    fn targets_are_own_only_while_circleci_was_left_as_the_cutover_left_it() {
        let w = Written {
            version: 1,
            targets: vec![target_pg("db.internal", 5432, "circle")],
            app_modified: "2026-12-03T10:00:00Z".into(),
            ..Written::default()
        };
        let n = names();
        assert_eq!(w.own("2026-12-03T10:00:00Z", &n), vec!["circle"]);
        // Started or stopped since by someone else: nothing is the cutover's.
        assert!(w.own("2026-12-03T11:00:00Z", &n).is_empty());
        // Replicated did not say: nothing is.
        assert!(w.own("", &n).is_empty());
        // Verified, and no fallback since: not the cutover's to overwrite.
        let verified = Written {
            migrated: true,
            ..w.clone()
        };
        assert!(verified.own("2026-12-03T10:00:00Z", &n).is_empty());
        let fell_back = Written {
            fell_back: true,
            ..verified
        };
        assert_eq!(fell_back.own("2026-12-03T10:00:00Z", &n), vec!["circle"]);
        // Another server of the same database name is not the target written.
        let other = vec![(
            "circle".to_string(),
            target_pg("db2.internal", 5432, "circle"),
        )];
        assert!(w.own("2026-12-03T10:00:00Z", &other).is_empty());
    }
}
