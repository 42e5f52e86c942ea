//! The MongoDB part of the apply: the preflight on the target (through the
//! provider's admin client) and the databases carried over through the temporary
//! container, beside the PostgreSQL part and under the same bound (`workers`), each
//! compared collection by collection afterwards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::apply::{differs_from_embedded, not_empty_while_running, Occupied};
use super::embedded_mongo::{EmbeddedMongo, MongoTarget, DUMP_DIR};
use super::settings::{at, MongoSettings};
use super::workers::{each, Shared, Taken};
use super::*;
use crate::backends::mongo::{MongoAdmin, MongoError};
use crate::circleci::migration::{
    compare, extras, mismatches, Kind, TableStat, EXPECTED_MONGO_DATABASE,
};

/// The container the embedded MongoDB runs in during the export.
pub(super) const CONTAINER: &str = "circleci-data-migration-mongo";

/// What the MongoDB part found and did.
#[derive(Default)]
pub(super) struct MongoOutcome {
    pub collections: BTreeMap<String, String>,
    pub documents: i64,
    pub files: Vec<super::container::ExportFile>,
    pub skipped: Vec<String>,
    /// What only the target has after a restore over it (`overwrite_existing`).
    pub extras: Vec<String>,
}

fn diag(summary: &str, e: MongoError) -> Diagnostics {
    Diagnostic::error(summary, crate::backends::chain(&e)).into()
}

impl DataMigration {
    /// Before anything changes: the restore's user exists on the target; target
    /// databases already holding collections (returned) are refused unless
    /// overwrite_existing, or unless CircleCI is stopped (then they are compared with
    /// the embedded data once it can be read).
    pub(super) async fn mongo_preflight(
        &self,
        m: &MongoSettings,
        overwrite: bool,
        running: bool,
        own: &[String],
    ) -> Result<Vec<String>, Diagnostics> {
        let admin = self.data.mongo()?;
        let user = admin
            .user(&m.auth_source, &m.username)
            .await
            .map_err(|e| diag("Could not read the external MongoDB's users", e))?;
        if user.is_none() {
            return Err(Diagnostic::error(
                "MongoDB user missing",
                format!(
                    "{} has no user {:?} in {:?}, which the data is restored as; create it first \
                     (circleci_external_mongo, and reference it from this resource). Nothing was changed.",
                    admin.hosts(),
                    m.username,
                    m.auth_source
                ),
            )
            .at(at("username"))
            .into());
        }
        let mut occupied = Vec::new();
        for db in &m.databases {
            let names = admin
                .collection_names(db)
                .await
                .map_err(|e| diag("Could not list the target's collections", e))?;
            if names.is_empty() {
                continue;
            }
            if !overwrite && running && !own.contains(db) {
                let at = format!("MongoDB database {db:?} at {}", admin.hosts());
                return Err(not_empty_while_running(&at, &names, "collections"));
            }
            occupied.push(db.clone());
        }
        Ok(occupied)
    }

    /// The MongoDB databases, in list order, by as many workers as the shared bound
    /// allows, beside the PostgreSQL part (`apply::carry`), each worker holding one of
    /// the permits `shared` bounds both parts with: each database counted, dumped,
    /// restored and compared by one worker. After a failure (in either part) no worker
    /// takes another database; those under way finish.
    pub(super) async fn migrate_mongo(
        &self,
        s: &super::settings::Settings,
        m: &MongoSettings,
        occupied: &Occupied,
        cut: &crate::resources::cutover::Cutover<'_>,
        shared: &Shared,
    ) -> Result<MongoOutcome, Diagnostics> {
        let (export_dir, deadline) = (s.export_dir.as_str(), s.command_timeout);
        let (overwrite, keep_export) = (s.overwrite, s.keep_export);
        let h = self.data.services()?;
        let admin = self.data.mongo()?;
        let e = EmbeddedMongo::start(
            &h,
            (CONTAINER, &m.image, &m.data_dir),
            (export_dir, &m.restore_image),
            m.ca_file.as_deref(),
            deadline,
            Duration::from_secs(120),
        )
        .await?;
        let r = async {
            let out = Mutex::new(MongoOutcome::default());
            let dumped = AtomicBool::new(false);
            let (e, admin, out, dumped) = (&e, &*admin, &out, &dumped);
            let databases: Vec<&String> = m.databases.iter().collect();
            let ran = each(shared, databases, |db: &String| async move {
                let carried =
                    one_database(e, admin, m, overwrite, (occupied, cut), db, (out, shared))
                        .await?;
                match carried {
                    Carried::Restored => dumped.store(true, Ordering::SeqCst),
                    // Found identical but an earlier attempt's: still the cutover's
                    // own. (One restored was noted before its restore began.)
                    Carried::NotWritten if occupied.is_own(db) => {
                        cut.note_target(&crate::resources::cutover::target_mongo(&m.hosts, db))
                            .await?;
                    }
                    Carried::NotWritten => {}
                    Carried::PutBack => return Ok(Taken::PutBack),
                }
                Ok(Taken::Done)
            })
            .await;
            ran.result("MongoDB database(s)", "MongoDB", shared)?;
            let mut out = std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()));
            // In a fixed order, whichever worker finished first (the collections are
            // in a sorted map already).
            out.skipped.sort();
            out.extras.sort();
            if dumped.load(Ordering::SeqCst) {
                out.files = e.seal(&[DUMP_DIR.to_string()]).await?;
                if !keep_export {
                    e.remove(&[DUMP_DIR.to_string()]).await?;
                    log::info!("MongoDB export removed (keep_export = false)");
                }
            }
            Ok(out)
        }
        .await;
        let r = match r {
            Ok(out) => Ok(out),
            Err(mut d) => {
                // Only what this migration writes: each database's dump directory.
                let partial: Vec<String> = m
                    .databases
                    .iter()
                    .map(|db| format!("{DUMP_DIR}/{db}"))
                    .collect();
                e.c.after_failure(&partial, keep_export, export_dir, "MongoDB", &mut d)
                    .await;
                Err(d)
            }
        };
        // Its own containers; a failed removal is noted, and `apply::carry` lists them
        // all once the PostgreSQL part is done too.
        if !e.stop().await {
            shared.left_running();
        }
        r
    }
}

/// What became of one MongoDB database a worker took.
enum Carried {
    /// Dumped, restored and verified.
    Restored,
    /// Nothing written: empty in the embedded MongoDB, or the target already holds
    /// exactly its data.
    NotWritten,
    /// Dumped, but the migration halted (a stop, or a failure in either part) before
    /// its restore: not restored, left for the next apply.
    PutBack,
}

/// One database: counted in the container; compared with a target already holding
/// collections (identical: skipped); dumped, restored and compared.
async fn one_database(
    e: &EmbeddedMongo<'_>,
    admin: &MongoAdmin,
    m: &MongoSettings,
    overwrite: bool,
    (occupied, cut): (&Occupied, &crate::resources::cutover::Cutover<'_>),
    db: &str,
    (out, shared): (&Mutex<MongoOutcome>, &Shared),
) -> Result<Carried, Diagnostics> {
    let target = MongoTarget {
        hosts: &m.hosts,
        replica_set: m.replica_set.as_deref(),
        username: &m.username,
        auth_source: &m.auth_source,
        password: &m.password,
        tls: m.tls,
        ca_file: m.ca_file.is_some(),
    };
    let source = e.stats(db).await?;
    if source.is_empty() {
        if db == EXPECTED_MONGO_DATABASE {
            return Err(Diagnostic::error(
                "The embedded data lacks a database CircleCI needs",
                format!(
                    "the embedded MongoDB over {} has no collection in {db}, which CircleCI's own export \
                     script checks for. Is this CircleCI's data directory? Nothing was imported.",
                    m.data_dir
                ),
            )
            .at(at("data_dir"))
            .into());
        }
        log::info!("MongoDB database {db}: empty in the embedded MongoDB, nothing to carry over");
        return Ok(Carried::NotWritten);
    }
    let documents: i64 = stored(&source).map(|c| c.rows).sum();
    let clean = occupied.holds(db);
    if clean {
        let before = stats_of(admin, db).await?;
        let diffs = compare(db, &source, &before);
        if diffs.is_empty() {
            log::info!(
                "MongoDB database {db}: the target already holds exactly this data; left as it is"
            );
            let mut out = lock(out);
            out.skipped.push(format!("mongo:{db}"));
            add(&mut out, db, &source);
            return Ok(Carried::NotWritten);
        }
        if occupied.is_own(db) {
            log::info!(
                "MongoDB database {db}: restoring over the copy an earlier failed attempt of this cutover left"
            );
        } else if !overwrite {
            let what = format!("MongoDB database {db:?} at {}", target.describe());
            return Err(differs_from_embedded(
                &what,
                before.len(),
                "collections",
                &diffs,
            ));
        }
    }
    e.dump(db).await?;
    log::info!(
        "MongoDB database {db}: exported, {} collections, {documents} documents",
        source.len()
    );
    crate::fault_point::point("circleci_data_migration.mongo_dumped").await;
    // Stopped, or a database failed (in either part) during this dump: not restored
    // (its dump is part of the partial export), as for PostgreSQL.
    if shared.halted() {
        return Ok(Carried::PutBack);
    }
    log::info!(
        "MongoDB database {db}: importing into {}",
        target.describe()
    );
    if !clean {
        // The preflight found it empty, maybe hours ago (the PostgreSQL part runs
        // beside this one, and a database may wait for its turn behind others):
        // a database someone has written to since is not restored into, so that a
        // failure cannot make the clean-up below drop what they wrote.
        let names = admin
            .collection_names(db)
            .await
            .map_err(|e| diag("Could not list the target's collections", e))?;
        if !names.is_empty() {
            return Err(Diagnostic::error(
                "Target database written to during the migration",
                format!(
                    "MongoDB database {db:?} at {} was empty when this apply checked it, and now holds {} \
                     ({}): something else writes to it. Nothing was restored into it and nothing of it was \
                     dropped. Find what writes there (CircleCI must not run on the external MongoDB yet), then \
                     apply again.",
                    target.describe(),
                    names.len(),
                    names.join(", ")
                ),
            )
            .into());
        }
    }
    // The cutover's own from before its first write (as for PostgreSQL): writes a
    // frozen target still applies after the deadline are this cutover's to restore over.
    cut.note_target(&crate::resources::cutover::target_mongo(&m.hosts, db))
        .await?;
    let restored = async {
        e.restore(db, &target, clean).await?;
        let after = stats_of(admin, db).await?;
        let diffs = mismatches(db, &source, &after);
        if !diffs.is_empty() {
            return Err(Diagnostic::error(
                format!("MongoDB database {db} differs after the import"),
                format!("{}\nCircleCI was left stopped.", diffs.join("\n")),
            )
            .into());
        }
        Ok::<Vec<String>, Diagnostics>(extras(db, &source, &after))
    }
    .await;
    let restored = restored.map(|x| lock(out).extras.extend(x));
    if let Err(mut d) = restored {
        if !clean {
            // mongorestore writes collection by collection, not in one transaction: a
            // database that was empty is emptied again, so that the next apply starts
            // over instead of finding a partial copy.
            match drop_partial(admin, db, &source).await {
                Ok(kept) if kept.is_empty() => {
                    log::warn!("MongoDB database {db}: the partial import was dropped")
                }
                Ok(kept) => d.push(Diagnostic::warning(
                    format!("Part of MongoDB database {db} was kept"),
                    format!(
                        "{} now holds more documents than the embedded data has: something else wrote there \
                         during the import, so it was not dropped. The rest of the partial import was.",
                        kept.join(", ")
                    ),
                )),
                Err(x) => d.push(Diagnostic::warning(
                    format!("The partial import of MongoDB database {db} is still there"),
                    format!(
                        "dropping what the failed import wrote failed ({}); the next apply will find it \
                         differing: drop it, or set overwrite_existing = true",
                        crate::backends::chain(&x)
                    ),
                )),
            }
        }
        return Err(d);
    }
    for c in &source {
        log::info!(
            "MongoDB database {db}: collection {} verified, {} documents",
            c.table,
            c.rows
        );
    }
    add(&mut lock(out), db, &source);
    crate::fault_point::point("circleci_data_migration.mongo_loop").await;
    Ok(Carried::Restored)
}

/// The outcome the workers collect into, each change made whole under one lock (so
/// that a lock a panicking worker poisoned still holds a consistent outcome).
fn lock(out: &Mutex<MongoOutcome>) -> std::sync::MutexGuard<'_, MongoOutcome> {
    out.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops, from a target database that was empty before the restore, what the failed
/// restore wrote: the source's collections, each as the target holds it right now,
/// unless it holds more documents than the source has (someone else wrote there: it
/// is kept, and named in the result).
async fn drop_partial(
    admin: &MongoAdmin,
    db: &str,
    source: &[TableStat],
) -> Result<Vec<String>, crate::backends::mongo::MongoError> {
    let now = admin.collection_counts(db).await?;
    let (mut drop, mut kept) = (Vec::new(), Vec::new());
    for t in &now {
        match source.iter().find(|s| s.table == t.table) {
            Some(s) if t.kind == Kind::View || t.rows <= s.rows => drop.push(t.table.clone()),
            Some(_) => kept.push(format!("{db}.{}", t.table)),
            None => {}
        }
    }
    admin.drop_collections(db, &drop).await?;
    Ok(kept)
}

async fn stats_of(admin: &MongoAdmin, db: &str) -> Result<Vec<TableStat>, Diagnostics> {
    admin.collection_stats(db).await.map_err(|e| {
        diag(
            &format!("Could not count MongoDB database {db} on the target"),
            e,
        )
    })
}

fn add(out: &mut MongoOutcome, db: &str, collections: &[TableStat]) {
    for c in collections {
        out.collections.insert(
            format!("{db}.{}", c.table),
            match c.kind {
                Kind::View => format!("view on {}, showing {} documents", c.checksum, c.rows),
                Kind::Capped => format!("{} documents, capped (compared by count)", c.rows),
                _ => format!("{} documents, checksum {}", c.rows, c.checksum),
            },
        );
        if c.kind != Kind::View {
            out.documents += c.rows;
        }
    }
}

/// The collections that hold documents (a view shows another's).
fn stored(collections: &[TableStat]) -> impl Iterator<Item = &TableStat> {
    collections.iter().filter(|c| c.kind != Kind::View)
}

/// How long the MongoDB part took, for the log.
pub(super) fn log_done(started: Instant, out: &MongoOutcome) {
    log::info!(
        "MongoDB: {} collections, {} documents carried over in {:.1}s",
        out.collections.len(),
        out.documents,
        started.elapsed().as_secs_f64()
    );
}
