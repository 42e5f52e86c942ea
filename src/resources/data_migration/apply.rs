//! What create, update and delete do: the migration itself (preflight, stop,
//! PostgreSQL, Vault, record; MongoDB in `apply_mongo`), and the export removed on
//! destroy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use super::apply_mongo::MongoOutcome;
use super::embedded_postgres::{EmbeddedPostgres, ExportFile, Exported, Source, Target};
use super::estimate::Layout;
use super::settings::{settings, PgSettings, Settings};
use super::vault_key::{Found, KeyMove};
use super::workers::{each, Shared, Taken};
use super::*;
use crate::backends::vault::Vault;
use crate::circleci::migration::{compare, extras, mismatches, Kind, TableStat, EXPECTED_TABLES};
use crate::plugin::stop;
use crate::resources::cutover::Cutover;
use crate::resources::services_restart::ServicesRestart;
use crate::resources::ssh_diag;

/// What the PostgreSQL part found and did.
#[derive(Default)]
struct PgOutcome {
    tables: BTreeMap<String, String>,
    rows: i64,
    bytes: u64,
    files: Vec<ExportFile>,
    skipped: Vec<String>,
    took: Duration,
    /// What only the target has after an import over it (`overwrite_existing`).
    extras: Vec<String>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

pub(super) fn stopped_error(what: &str) -> Diagnostics {
    Diagnostic::error(
        "Stopped",
        format!(
            "Terraform asked the provider to stop {what}. Run terraform apply again to migrate."
        ),
    )
    .into()
}

impl DataMigration {
    /// At plan, when the Services machine answers: the export must fit on its volume
    /// (an error on export_dir when it cannot); and when CircleCI runs, the warning
    /// that the apply stops it, with the builds running now, the embedded data's size
    /// and the expected downtime, and the runbook's licence prerequisite.
    pub(super) async fn preview_stop(&self, planned: &Value, diags: &mut Diagnostics) {
        let (Ok(p), Ok(parts)) = (
            MigrationAtPlan::decode(planned),
            PartsAtPlan::decode(planned),
        ) else {
            return;
        };
        // A block left out has no data directory to read; one not known yet, no size.
        let postgres = data_dir(known_map(&parts.postgres, |b| &b.data_dir));
        let mongo = data_dir(known_map(&parts.mongo, |b| &b.data_dir));
        let Ok(h) = self.data.services() else {
            return;
        };
        if let Ok(left) =
            crate::resources::cutover::migration_containers(&h, self.data.timeout()).await
        {
            if !left.is_empty() {
                diags.push(Diagnostic::warning(
                    "A migration container was left running",
                    format!(
                        "{} still run(s) on the Services machine over the embedded data (an earlier apply was \
                         killed or lost its connection). This apply removes it before anything else, and the \
                         provider never starts CircleCI while one runs (do not start it by hand either).",
                        left.join(", ")
                    ),
                ));
            }
        }
        // The rest needs every value it reads known.
        let (
            Known::Value(stop_app),
            Known::Value(root),
            Known::Value(export_dir),
            Known::Value(nomad),
            Known::Value(builds),
            Some(postgres),
            Some(mongo),
        ) = (
            &p.stop_app,
            &p.config_root,
            &p.export_dir,
            &p.embedded_nomad_endpoint,
            &p.builds_timeout,
            postgres,
            mongo,
        )
        else {
            return;
        };
        let layout = Layout {
            root,
            export_dir,
            postgres,
            mongo,
            pg_uncompressed: parts
                .postgres
                .value()
                .is_none_or(|b| b.compression.clone().known().unwrap_or(0) == 0),
        };
        let sizes = self.sizes(&layout).await;
        if let Some(e) = sizes.as_ref().and_then(|s| s.shortfall(export_dir)) {
            diags.push(e);
        }
        if !*stop_app {
            return;
        }
        let restart = ServicesRestart::new(self.data.clone());
        let Ok(app) = restart.status().await else {
            return;
        };
        if app.settled_in("stopped") {
            return;
        }
        let s = StopSettings {
            root: root.clone(),
            embedded_nomad: nomad.clone(),
            builds_timeout: duration_or(builds, crate::resources::cutover::BUILDS_TIMEOUT),
        };
        let builds = crate::resources::cutover::Cutover::new(&self.data, &s)
            .running_builds()
            .await;
        let mut w = crate::resources::cutover::stop_warning(
            &builds,
            &s,
            "CircleCI stays down while, in this order: (1) this migration exports the embedded PostgreSQL \
             and MongoDB, imports them into the external servers and verifies them, and carries the Vault key \
             over; (2) the resources that depend on it run: in examples/complete the Nomad client roll \
             (circleci_nomad_client_launch_config or _static), with no build running; (3) \
             circleci_services_restart starts CircleCI on the runbook files and runs the runbook's checks and \
             the Nomad capacity check. Everything else this plan changes (the external servers' users, \
             databases, transit key and token, the runbook files, which CircleCI reads only when it starts) \
             runs before the stop, while CircleCI still runs. A failure at any step puts the files and clients \
             back and starts CircleCI as it was",
        );
        if let Some(sz) = &sizes {
            w.detail.push(' ');
            w.detail.push_str(&sz.describe());
        }
        if let Some(v) = self.target_versions().await {
            w.detail.push(' ');
            w.detail.push_str(&v);
        }
        w.detail.push_str(
            " The external Redis', RabbitMQ's, Vault's and Nomad's versions show as server_version in their \
             own resources' plans, where a server older than CircleCI's is refused.",
        );
        w.detail.push_str(
            " The runbook's prerequisite, which the provider cannot check: CircleCI's license must allow \
             external services (ask CircleCI before applying).",
        );
        diags.push(w);
    }

    /// For the plan: the external PostgreSQL's and MongoDB's versions against those
    /// CircleCI Server 2.17 runs (older servers are refused at apply, before the stop).
    async fn target_versions(&self) -> Option<String> {
        let mut out = Vec::new();
        if let Ok(pg) = self.data.postgres() {
            out.push(match pg.server_info().await {
                Ok(i) => format!(
                    "External PostgreSQL {}: {} (CircleCI Server 2.17 runs 9.5.8; 9.5 or later is accepted).",
                    pg.target(),
                    i.version
                ),
                Err(e) => format!(
                    "External PostgreSQL: {}; the apply checks it again before the stop.",
                    crate::backends::chain(&e)
                ),
            });
        }
        if let Ok(m) = self.data.mongo() {
            out.push(match m.wire_version().await {
                Ok(w) => format!(
                    "External MongoDB {}: {} (CircleCI Server 2.17 runs 3.6.6; 3.6 or later is accepted).",
                    m.hosts(),
                    crate::backends::mongo::release_of(w)
                ),
                // Not the error: a connection string that does not parse may show
                // part of its password there.
                Err(_) => "External MongoDB: its version could not be read now; the apply checks it \
                           before the stop."
                    .to_string(),
            });
        }
        (!out.is_empty()).then(|| out.join(" "))
    }

    pub(super) async fn migrate(&self, planned: &Value, config: &Value) -> Applied {
        let mut warnings = Diagnostics::new();
        let r = match self.migrate_inner(planned, config, &mut warnings).await {
            Ok(v) => Ok(v),
            Err(mut d) if !stop::requested() => {
                // The runbook files this cutover wrote go back, so that CircleCI runs
                // on what it used before; when this migration stopped it, it is
                // started on them again (on_failure = "restore") and checked. (A plan
                // that does not decode stopped the migration before anything.)
                if let Ok(m) = Migration::decode(planned) {
                    let cutover = stop_settings(&m);
                    let fb = crate::resources::services_restart::Fallback::after_step(
                        &cutover,
                        m.on_failure != "stop",
                    );
                    ServicesRestart::new(self.data.clone())
                        .after_failure(&fb, &mut d)
                        .await;
                }
                Err(d)
            }
            // Interrupted, not failed: nothing is undone; the next apply goes on.
            Err(d) => Err(d),
        };
        let mut applied = Applied::from_result(r);
        warnings.extend(std::mem::take(&mut applied.diags));
        applied.diags = warnings;
        applied
    }

    async fn migrate_inner(
        &self,
        planned: &Value,
        config: &Value,
        warnings: &mut Diagnostics,
    ) -> Result<Value, Diagnostics> {
        let mut s = settings(planned, config, &self.data)?;
        let started = Instant::now();
        let restart = ServicesRestart::new(self.data.clone());
        // The same rule as the restart's, before anything is read or stopped.
        restart
            .allowed_version(&s.versions, "Nothing was stopped or changed.")
            .await?;
        // Before anything else: a container an earlier run left over the embedded data.
        crate::resources::cutover::remove_migration_containers(
            &*self.data.services()?,
            self.data.timeout(),
            "Nothing was stopped or changed.",
        )
        .await?;
        let app = restart.status().await?;
        let running = !app.settled_in("stopped");
        if running && !s.stop_app {
            return Err(Diagnostic::error(
                "CircleCI is running",
                format!(
                    "Replicated reports CircleCI {:?}; the embedded data must not change during the export. \
                     Stop it (Management Console: Stop Now), or set stop_app = true. Nothing was changed.",
                    app.state
                ),
            )
            .at(AttrPath::root("stop_app"))
            .into());
        }
        // The targets an earlier, failed attempt of this cutover wrote, while CircleCI
        // was left as that attempt left it: the migration restores over them.
        let cut = Cutover::new(&self.data, &s.cutover);
        let (modified, written) = cut.written_now().await?;
        let written = written.filter(|w| w.grants(&modified));
        let own = |targets: Vec<(String, String)>| -> Vec<String> {
            written.as_ref().map_or_else(Vec::new, |w| {
                w.own(&modified, &targets)
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            })
        };
        let occupied = match &s.postgres {
            Some(p) => {
                let own = own(p.targets());
                let dbs = self
                    .pg_preflight(p, s.overwrite, running, &own, &s.cutover.root)
                    .await?;
                Occupied { dbs, own }
            }
            None => Occupied::default(),
        };
        let mongo_occupied = match &s.mongo {
            Some(m) => {
                let own = own(m.targets());
                let dbs = self.mongo_preflight(m, s.overwrite, running, &own).await?;
                Occupied { dbs, own }
            }
            None => Occupied::default(),
        };
        let key_move = match &s.vault {
            Some((cfg, sm, key, tm)) => Some(KeyMove {
                source: Vault::new(cfg.clone()),
                target: self.data.vault()?,
                source_mount: sm.clone(),
                target_mount: tm.clone(),
                key: key.clone(),
            }),
            None => None,
        };
        let found = match &key_move {
            Some(k) => Some(k.preflight().await?),
            None => None,
        };
        if found == Some(Found::Different) && !s.overwrite {
            return Err(Diagnostic::error(
                "The external Vault already has another key of that name",
                "its transit key does not decrypt what the embedded Vault's key encrypts; restoring over it \
                 loses whatever it encrypted. Set overwrite_existing = true to replace it. Nothing was changed.",
            )
            .at(AttrPath::root(VAULT).attr("key"))
            .into());
        }
        if let Some(e) = self
            .sizes(&Layout::of(&s))
            .await
            .and_then(|sz| sz.shortfall(&s.export_dir))
        {
            return Err(e.into());
        }
        // The state: the plan, with what the migration finds and does.
        let mut outcome = MigrationAtPlan::decode(planned)?;
        let mut parts = PartsAtPlan::decode(planned)?;
        self.check_restore_tools((s.postgres.as_mut(), s.mongo.as_mut()), s.command_timeout)
            .await?;
        // The restore images resolved (the target's release when the plan could not
        // read it).
        if let (Known::Value(b), Some(p)) = (&mut parts.postgres, &s.postgres) {
            b.restore_image = Known::Value(p.restore_image.clone());
        }
        if let (Known::Value(b), Some(m)) = (&mut parts.mongo, &s.mongo) {
            b.restore_image = Known::Value(m.restore_image.clone());
        }
        if stop::requested() {
            return Err(stopped_error("before anything changed"));
        }
        outcome.app_stopped_at = Known::Value(String::new());
        // The app's LastModifiedAt once stopped: as the stop's last status showed it,
        // or as the preflight found it, already stopped.
        let stopped = if running {
            let m = restart
                .stop_app(s.stop_timeout, &s.cutover, warnings)
                .await?;
            outcome.app_stopped_at = Known::Value(now());
            m
        } else {
            modified.clone()
        };
        cut.open_written(written.as_ref(), stopped).await?;
        let (pg, mongo) = self.carry(&s, (&occupied, &mongo_occupied), &cut).await?;
        let mut skipped = pg.skipped.clone();
        skipped.extend(mongo.skipped.iter().cloned());
        let extras: Vec<&String> = pg.extras.iter().chain(&mongo.extras).collect();
        if !extras.is_empty() {
            warnings.push(Diagnostic::warning(
                "The targets hold more than the embedded data",
                format!(
                    "restored over with overwrite_existing = true; the import writes only what the embedded \
                     databases hold, so these were left as they were:\n{}",
                    extras.iter().map(|e| format!("- {e}")).collect::<Vec<_>>().join("\n")
                ),
            ));
        }
        if let (Some(k), Some(found)) = (&key_move, found) {
            crate::fault_point::point("circleci_data_migration.before_key").await;
            if stop::requested() {
                return Err(stopped_error("before the Vault key"));
            }
            if found == Found::Same && !s.overwrite {
                log::info!(
                    "the external Vault already has transit key {}: left as it is",
                    k.key
                );
                skipped.push(format!("vault:{}/{}", k.target_mount, k.key));
            } else {
                k.run(found != Found::Absent).await?;
            }
            k.verify().await?;
            log::info!(
                "transit key {} verified: a ciphertext of the source decrypts on the target",
                k.key
            );
        }
        record(&mut outcome, &s, &pg, &mongo, skipped, started.elapsed());
        cut.note_migrated().await?;
        crate::resources::cutover::timing("migration", started.elapsed());
        let mut state = planned.clone();
        // The top level first: it writes a block back only as it read it.
        outcome.encode(&mut state);
        parts.encode(&mut state);
        Ok(state)
    }

    /// Update: nothing, unless the plan migrates again (`triggers` changed).
    pub(super) async fn update_migration(&self, planned: &Value, config: &Value) -> Applied {
        match MigrationAtPlan::decode(planned) {
            Ok(p) if p.migrated_at.is_unknown() => self.migrate(planned, config).await,
            Ok(_) => Applied::from_result(Ok(planned.clone())),
            Err(e) => Applied::from_result(Err(e.into())),
        }
    }

    /// Destroy: the export removed with remove_export_on_destroy; nothing else.
    pub(super) async fn destroy(&self, prior: &Value) -> Applied {
        let m = match Migration::decode(prior) {
            Ok(m) => m,
            Err(e) => return Applied::kept(prior, e.into()),
        };
        if !m.remove_export_on_destroy {
            return Applied::deleted(Diagnostics::new());
        }
        match self.remove_export(&m).await {
            Ok(()) => Applied::deleted(Diagnostics::new()),
            Err(d) => Applied::kept(prior, d),
        }
    }

    /// On refresh: whether a fallback put CircleCI back on its embedded data after this
    /// migration was verified (then it no longer holds, and the next apply migrates
    /// again). A Services machine that does not answer says nothing.
    pub(super) async fn fell_back(&self, state: &Migration) -> bool {
        if state.migrated_at.value().is_none_or(String::is_empty) || self.data.services().is_err() {
            return false;
        }
        let s = stop_settings(state);
        match Cutover::new(&self.data, &s).written().await {
            Ok(Some(w)) if w.fell_back => {
                log::warn!(
                    "the cutover after this migration failed and CircleCI went back to its embedded data: \
                     the next apply migrates again"
                );
                true
            }
            _ => false,
        }
    }

    /// Before anything changes: every target database exists and is owned by the
    /// restore's role; those already holding tables (returned) are refused unless
    /// overwrite_existing, unless an earlier attempt of this cutover wrote them
    /// (`own`), or unless CircleCI is stopped (they are compared with the embedded data
    /// once it can be read).
    async fn pg_preflight(
        &self,
        p: &PgSettings,
        overwrite: bool,
        running: bool,
        own: &[String],
        root: &str,
    ) -> Result<Vec<String>, Diagnostics> {
        // The CA the restore checks the target against must be there: Docker would
        // mount a missing one as an empty directory, and the restore fail after the stop.
        // (Read under config_root, as every file of the cutover; mounted as given.)
        if let Some(ca) = &p.ca_file {
            let h = self.data.services()?;
            let found = h
                .read_file(&format!("{}{ca}", root.trim_end_matches('/')))
                .await
                .map_err(|e| crate::resources::ssh_diag(&format!("Could not read {ca}"), e))?;
            if found.is_none_or(|f| {
                !String::from_utf8_lossy(&f.content).contains("-----BEGIN CERTIFICATE-----")
            }) {
                return Err(Diagnostic::error(
                    "CA certificate not found",
                    format!(
                        "{ca} is not a PEM certificate file on the Services machine (postgres.ca_file). Nothing \
                         was stopped or changed."
                    ),
                )
                .at(AttrPath::root(POSTGRES).attr("ca_file"))
                .into());
            }
        }
        let admin = self.data.postgres()?;
        let diag = |summary: &str, e: crate::backends::postgres::PgError| -> Diagnostics {
            Diagnostic::error(summary, crate::backends::chain(&e)).into()
        };
        // 9.5 or later, as for the databases' resource.
        admin
            .server_info()
            .await
            .map_err(|e| diag("External PostgreSQL refused", e))?;
        let owners = admin
            .databases(&p.databases)
            .await
            .map_err(|e| diag("Could not read the external PostgreSQL's databases", e))?;
        let at = AttrPath::root(POSTGRES).attr("databases");
        let mut occupied = Vec::new();
        for db in &p.databases {
            match owners.get(db) {
                None => {
                    return Err(Diagnostic::error(
                        "Target database missing",
                        format!(
                            "{} has no database {db:?}; create the databases first (circleci_postgres_databases, \
                             and reference it from this resource). Nothing was changed.",
                            admin.target()
                        ),
                    )
                    .at(at)
                    .into())
                }
                Some(owner) if owner != &p.user => {
                    return Err(Diagnostic::error(
                        "Target database owned by another role",
                        format!(
                            "database {db:?} at {} is owned by {owner:?}, not by {:?} (postgres.user), which the \
                             data is restored as. Nothing was changed.",
                            admin.target(),
                            p.user
                        ),
                    )
                    .at(at)
                    .into())
                }
                Some(_) => {}
            }
            let tables = admin
                .text_rows(db, "listing tables", mig::TABLES_SQL)
                .await
                .map_err(|e| diag("Could not list the target's tables", e))?;
            if tables.is_empty() {
                continue;
            }
            if !overwrite && running && !own.contains(db) {
                let names: Vec<String> = tables.iter().filter_map(|r| r.first().cloned()).collect();
                let at = format!("database {db:?} at {}", admin.target());
                return Err(not_empty_while_running(&at, &names, "tables"));
            }
            occupied.push(db.clone());
        }
        Ok(occupied)
    }

    /// The PostgreSQL and the MongoDB part at the same time (issue 28), sharing one
    /// bound (`parallelism` databases under way, both parts together) and one failed
    /// flag: a database failing in either part stops both from taking another; those
    /// under way finish. Each part cleans up after itself (its partial export, its
    /// containers); when a part failed or a `docker rm -f` of its did not succeed, the
    /// check that no migration container is left runs once both are done, as it
    /// removes every one of them, the other part's too. Every error of both parts is
    /// returned.
    async fn carry(
        &self,
        s: &Settings,
        (pg_occupied, mongo_occupied): (&Occupied, &Occupied),
        cut: &Cutover<'_>,
    ) -> Result<(PgOutcome, MongoOutcome), Diagnostics> {
        // PostgreSQL's part opens the gate once it knows every database it carries is
        // in the embedded server, so that a missing one fails before any target of
        // either part is written.
        let shared = match s.postgres {
            Some(_) => Shared::gated(s.parallelism),
            None => Shared::new(s.parallelism),
        };
        let started = Instant::now();
        let pg = async {
            let Some(p) = &s.postgres else {
                return Ok(PgOutcome::default());
            };
            let r = self.migrate_postgres(s, p, pg_occupied, cut, &shared).await;
            if r.is_err() {
                shared.fail();
            }
            crate::resources::cutover::timing("postgresql", started.elapsed());
            // Whatever became of it (a failure before the gate sets the flag above
            // first): MongoDB's workers waiting at the gate go on, or see the failure.
            shared.open();
            r
        };
        let mongo = async {
            let Some(m) = &s.mongo else {
                return Ok(MongoOutcome::default());
            };
            let t = Instant::now();
            let r = self.migrate_mongo(s, m, mongo_occupied, cut, &shared).await;
            crate::resources::cutover::timing("mongodb", t.elapsed());
            match &r {
                Ok(out) => super::apply_mongo::log_done(t, out),
                Err(_) => shared.fail(),
            }
            r
        };
        let (pg, mongo) = tokio::join!(pg, mongo);
        // A docker rm that failed leaves a server over the embedded data: removed
        // again, or the migration stops here (and CircleCI is not started next to it).
        // Both parts done and every `docker rm -f` of theirs answered that it removed
        // its container: nothing is left to look for (the restart looks again before
        // it starts CircleCI), and the downtime does not wait for a `docker ps`.
        let gone = match self.data.services() {
            _ if s.postgres.is_none() && s.mongo.is_none() => Ok(()),
            _ if pg.is_ok() && mongo.is_ok() && !shared.any_left_running() => Ok(()),
            Ok(h) => {
                crate::resources::cutover::remove_migration_containers(
                    &h,
                    self.data.timeout(),
                    "The migration stops here.",
                )
                .await
            }
            Err(d) => Err(d),
        };
        match (pg, mongo, gone) {
            (Ok(pg), Ok(mongo), Ok(())) => {
                if s.postgres.is_some() && s.mongo.is_some() {
                    log::info!(
                        "PostgreSQL ({:.1}s) and MongoDB carried over in {:.1}s, at most {} database(s) at once",
                        pg.took.as_secs_f64(),
                        started.elapsed().as_secs_f64(),
                        shared.bound()
                    );
                }
                Ok((pg, mongo))
            }
            (pg, mongo, gone) => {
                let mut d = Diagnostics::new();
                for e in [pg.err(), mongo.err(), gone.err()].into_iter().flatten() {
                    d.extend(e);
                }
                // A part that only stopped taking databases says so in a warning; the
                // failure that stopped it is the other part's. Never a failure
                // without an error (Terraform would take it for a success).
                if !d.has_errors() {
                    d.error(
                        "The migration did not complete",
                        "Some databases were not carried over (see the warnings). Run terraform apply again.",
                    );
                }
                Err(d)
            }
        }
    }

    async fn migrate_postgres(
        &self,
        s: &Settings,
        p: &PgSettings,
        occupied: &Occupied,
        cut: &Cutover<'_>,
        shared: &Shared,
    ) -> Result<PgOutcome, Diagnostics> {
        let h = self.data.services()?;
        let source = Source {
            image: &p.image,
            restore_image: &p.restore_image,
            data_dir: &p.data_dir,
            container: CONTAINER,
            ca_file: p.ca_file.as_deref(),
            target_integer_datetimes: p.target_integer_datetimes,
        };
        let started = Instant::now();
        crate::fault_point::point("circleci_data_migration.before_containers").await;
        let mut e = EmbeddedPostgres::start(
            &h,
            &source,
            &s.export_dir,
            s.command_timeout,
            Duration::from_secs(120),
        )
        .await?;
        // Each worker's export and import commands kept between its databases.
        e.keep_jobs(super::embedded_postgres::jobs_kept(
            s.parallelism.min(p.databases.len()),
            s.parallelism,
        ));
        let r = async {
            let mut out = self.each_database(&e, s, p, occupied, cut, shared).await?;
            let names: Vec<String> = out.files.iter().map(|f| f.name.clone()).collect();
            // Nothing to run when every import read its dump's digest and size (the
            // commands waiting for jobs end with the containers, below).
            out.files = e.seal_known(&out.files).await?;
            if !s.keep_export {
                e.remove(&names).await?;
                log::info!("export removed (keep_export = false)");
            }
            Ok::<PgOutcome, Diagnostics>(out)
        }
        .await;
        let r = match r {
            Ok(out) => Ok(out),
            Err(mut d) => {
                // Whatever the failure left in the export: removed with keep_export =
                // false; else kept, private (written under umask 077, directory 0700).
                let partial: Vec<String> = p
                    .databases
                    .iter()
                    .flat_map(|db| [format!("{db}.dump"), format!("{db}.dump.list")])
                    .collect();
                e.c.after_failure(&partial, s.keep_export, &s.export_dir, "PostgreSQL", &mut d)
                    .await;
                Err(d)
            }
        };
        // Its own containers; a failed removal is noted, and `carry` lists them all
        // once the MongoDB part is done too.
        if !e.stop().await {
            shared.left_running();
        }
        let mut out = r?;
        out.took = started.elapsed();
        log::info!(
            "PostgreSQL: {} tables, {} rows carried over in {:.1}s",
            out.tables.len(),
            out.rows,
            out.took.as_secs_f64()
        );
        Ok(out)
    }

    /// The databases, a free worker taking the largest left (the longest database sets
    /// the end; the small ones fill in after the large), each worker holding one of the
    /// permits `shared` bounds both parts with: each exported (dump, size and source
    /// checksums, one command), then restored in its own transaction and compared (one
    /// command), by the same worker, so that a database's restore starts as soon as its
    /// own export is done. After a failure (in either part) no worker takes another
    /// database; those under way finish.
    async fn each_database(
        &self,
        e: &EmbeddedPostgres<'_>,
        s: &Settings,
        p: &PgSettings,
        occupied: &Occupied,
        cut: &Cutover<'_>,
        shared: &Shared,
    ) -> Result<PgOutcome, Diagnostics> {
        let target = p.target();
        let present = e.databases();
        // Every database there before any is carried: one missing would otherwise sort
        // last (size 0) and fail the migration only after all the others. (MongoDB's
        // workers wait for this too: `carry` opens the gate after it.)
        if let Some(db) = p
            .databases
            .iter()
            .find(|db| !present.iter().any(|(d, _)| d == *db))
        {
            shared.fail();
            return Err(missing_database(p, db));
        }
        shared.open();
        let size_of = |db: &str| present.iter().find(|(d, _)| d == db).map_or(0, |(_, n)| *n);
        let mut order: Vec<&String> = p.databases.iter().collect();
        order.sort_by_key(|db| std::cmp::Reverse(size_of(db)));
        let out = std::sync::Mutex::new(PgOutcome::default());
        let (out, target) = (&out, &target);
        let ran = each(shared, order, |db: &String| async move {
            let x = export_one(e, p, db).await?;
            // Stopped, or a database failed (in either part) during this export: not
            // restored (its dump is part of the partial export).
            if shared.halted() {
                return Ok(Taken::PutBack);
            }
            import_one(e, s, p, target, (occupied, cut), x, out).await?;
            // Found identical but an earlier attempt's: still the cutover's own.
            // (One restored was noted before its restore began.)
            if out_skipped(out, db) && occupied.is_own(db) {
                cut.note_target(&crate::resources::cutover::target_pg(&p.host, p.port, db))
                    .await?;
            }
            Ok(Taken::Done)
        })
        .await;
        ran.result("database(s)", "PostgreSQL", shared)?;
        let mut out = std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()));
        // In a fixed order, whichever worker finished first.
        out.files.sort_by(|a, b| a.name.cmp(&b.name));
        out.skipped.sort();
        out.extras.sort();
        Ok(out)
    }

    /// Destroy with remove_export_on_destroy: deletes the recorded export files.
    async fn remove_export(&self, prior: &Migration) -> Result<(), Diagnostics> {
        let h = self.data.services()?;
        let root = prior.config_root.trim_end_matches('/');
        if let Known::Value(files) = &prior.export_sha256 {
            for path in files.keys() {
                let full = format!("{root}{path}");
                h.remove_file(&full).await.map_err(|e| {
                    ssh_diag(&format!("Could not delete the export file {full}"), e)
                })?;
            }
        }
        Ok(())
    }
}

/// A block's data directory for the preview: `Some(None)` when the block is left out
/// (nothing to read), `None` while not known yet.
fn data_dir(b: Known<&Known<String>>) -> Option<Option<&str>> {
    match b {
        Known::Null => Some(None),
        Known::Value(Known::Value(d)) => Some(Some(d.as_str())),
        Known::Value(Known::Null | Known::Unknown) | Known::Unknown => None,
    }
}

fn missing_database(p: &PgSettings, db: &str) -> Diagnostics {
    Diagnostic::error(
        "Database missing in the embedded PostgreSQL",
        format!(
            "the embedded server over {} has no database {db:?}. Is this the Services machine's data \
             directory? Nothing was imported into {db:?}.",
            p.data_dir
        ),
    )
    .at(AttrPath::root(POSTGRES).attr("databases"))
    .into()
}

/// Exports one database (every one of them is known to be there).
async fn export_one(
    e: &EmbeddedPostgres<'_>,
    p: &PgSettings,
    db: &str,
) -> Result<Exported, Diagnostics> {
    let started = Instant::now();
    let x = e.export(db, p.compression).await?;
    crate::resources::cutover::timing(&format!("export {db}"), started.elapsed());
    crate::fault_point::point("circleci_data_migration.after_export").await;
    sanity_check(db, &x.source)?;
    let rows: i64 = tables(&x.source).map(|t| t.rows).sum();
    log::info!(
        "database {db}: exported, {} tables, {rows} rows, {} bytes",
        tables(&x.source).count(),
        x.size
    );
    Ok(x)
}

/// Imports one exported database into the target, unless it already holds exactly
/// that data, and compares every table on both sides.
async fn import_one(
    e: &EmbeddedPostgres<'_>,
    s: &Settings,
    p: &PgSettings,
    target: &Target<'_>,
    (occupied, cut): (&Occupied, &Cutover<'_>),
    x: Exported,
    out: &std::sync::Mutex<PgOutcome>,
) -> Result<(), Diagnostics> {
    let db = x.db.as_str();
    // The dump's SHA-256 and size when the import read them (else the seal reads
    // them: 0 and empty are unknown).
    let record = |sha256: Option<String>, size: Option<u64>, skipped: bool| {
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        out.files.push(ExportFile {
            name: x.file.clone(),
            size: size.unwrap_or(0),
            sha256: sha256.unwrap_or_default(),
        });
        if skipped {
            out.skipped.push(format!("postgres:{db}"));
        }
        add_tables(&mut out, db, &x.source, x.size);
    };
    let clean = occupied.holds(db);
    if clean {
        let before = e.target_stats(db, target).await?;
        let diffs = compare(db, &x.source, &before);
        if diffs.is_empty() {
            log::info!("database {db}: the target already holds exactly this data; left as it is");
            record(None, None, true);
            return Ok(());
        }
        if occupied.is_own(db) {
            log::info!(
                "database {db}: restoring over the copy an earlier failed attempt of this cutover left"
            );
        } else if !s.overwrite {
            let what = format!("database {db:?} at {}:{}", p.host, p.port);
            return Err(differs_from_embedded(
                &what,
                tables(&before).count(),
                "tables",
                &diffs,
            ));
        }
    }
    log::info!("database {db}: importing into {}:{}", p.host, p.port);
    // The cutover's own from before its first byte: a restore cut off (a deadline on a
    // frozen target) may still commit once the target answers again, and the next
    // apply must then restore over it, not refuse it as someone else's data.
    cut.note_target(&crate::resources::cutover::target_pg(&p.host, p.port, db))
        .await?;
    let started = Instant::now();
    let super::embedded_postgres::Imported {
        sha256,
        size,
        tables: after,
        restore,
    } = e.import(db, db, target, clean).await?;
    // The comparison's queries run in the same command, after the restore.
    let took = started.elapsed();
    if let Some(r) = restore.filter(|r| *r <= took) {
        crate::resources::cutover::timing(&format!("import {db}"), r);
        crate::resources::cutover::timing(&format!("verify {db}"), took - r);
    } else {
        crate::resources::cutover::timing(&format!("import and verify {db}"), took);
    }
    let diffs = mismatches(db, &x.source, &after);
    out.lock()
        .unwrap_or_else(|e| e.into_inner())
        .extras
        .extend(extras(db, &x.source, &after));
    if !diffs.is_empty() {
        return Err(Diagnostic::error(
            format!("Database {db} differs after the import"),
            format!("{}\nCircleCI was left stopped.", diffs.join("\n")),
        )
        .into());
    }
    for t in tables(&x.source) {
        log::info!("database {db}: table {} verified, {} rows", t.table, t.rows);
    }
    record(sha256, size, false);
    crate::fault_point::point("circleci_data_migration.database_loop").await;
    Ok(())
}

/// Whether `db` was found already holding exactly the embedded data.
fn out_skipped(out: &std::sync::Mutex<PgOutcome>, db: &str) -> bool {
    let out = out.lock().unwrap_or_else(|e| e.into_inner());
    out.skipped.iter().any(|s| s == &format!("postgres:{db}"))
}

/// The target databases of one server that already hold data.
#[derive(Default)]
pub(super) struct Occupied {
    pub dbs: Vec<String>,
    /// Those (or others) an earlier, failed attempt of this cutover wrote: restored
    /// over without overwrite_existing.
    pub own: Vec<String>,
}

impl Occupied {
    pub(super) fn holds(&self, db: &str) -> bool {
        self.dbs.iter().any(|d| d == db)
    }

    pub(super) fn is_own(&self, db: &str) -> bool {
        self.own.iter().any(|d| d == db)
    }
}

/// The refusal of a target (`what`, e.g. `database "x" at host:port`) holding `held`
/// tables or collections (`kind`) that differ from the embedded data as `diffs` say
/// (the first ten shown).
pub(super) fn differs_from_embedded(
    what: &str,
    held: usize,
    kind: &str,
    diffs: &[String],
) -> Diagnostics {
    let more = match diffs.len() {
        n if n > 10 => format!("\n(and {} more)", n - 10),
        _ => String::new(),
    };
    Diagnostic::error(
        "Target database not empty",
        format!(
            "{what} already holds {held} {kind}; these differ from the embedded data:\n{}{more}\nNothing was \
             written to it. Set overwrite_existing = true to restore over them.",
            diffs.iter().take(10).map(|d| format!("- {d}")).collect::<Vec<_>>().join("\n")
        ),
    )
    .at(AttrPath::root("overwrite_existing"))
    .into()
}

/// The refusal of a target (`what`, e.g. `database "x" at host:port`) that holds
/// `names` (tables, collections: `kind`) while CircleCI runs.
pub(super) fn not_empty_while_running(what: &str, names: &[String], kind: &str) -> Diagnostics {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    Diagnostic::error(
        "Target database not empty",
        format!(
            "{what} already holds {} {kind} ({}{}), and CircleCI is running. Nothing was changed. Set \
             overwrite_existing = true to restore over them.",
            names.len(),
            shown.join(", "),
            if names.len() > 5 { ", …" } else { "" }
        ),
    )
    .at(AttrPath::root("overwrite_existing"))
    .into()
}

/// The tables CircleCI's export script insists on, where they belong.
fn sanity_check(db: &str, source: &[TableStat]) -> Result<(), Diagnostics> {
    for (d, table) in EXPECTED_TABLES {
        if d == db && !tables(source).any(|t| t.table == format!("public.{table}")) {
            return Err(Diagnostic::error(
                "The embedded data lacks a table CircleCI needs",
                format!(
                    "database {db} has no table {table}, which CircleCI's own export script checks for. Is this \
                     CircleCI's data directory? Nothing was imported into {db}."
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// The tables among what the comparison covers (sequences and large objects are
/// compared, not recorded).
fn tables(stats: &[TableStat]) -> impl Iterator<Item = &TableStat> {
    stats.iter().filter(|t| t.kind == Kind::Table)
}

fn add_tables(out: &mut PgOutcome, db: &str, stats: &[TableStat], size: u64) {
    for t in tables(stats) {
        out.tables.insert(
            format!("{db}.{}", t.table),
            format!("{} rows, checksum {}", t.rows, t.checksum),
        );
        out.rows += t.rows;
    }
    out.bytes += size;
}

/// What the migration did, in the state's outcome attributes.
fn record(
    out: &mut MigrationAtPlan,
    s: &Settings,
    pg: &PgOutcome,
    mongo: &MongoOutcome,
    skipped: Vec<String>,
    took: Duration,
) {
    let dir = s.export_dir.trim_end_matches('/');
    let kept: Vec<&ExportFile> = pg
        .files
        .iter()
        .chain(&mongo.files)
        .filter(|_| s.keep_export)
        .collect();
    let files: BTreeMap<String, String> = kept
        .iter()
        .map(|f| (format!("{dir}/{}", f.name), f.sha256.clone()))
        .collect();
    let bytes: u64 = kept.iter().map(|f| f.size).sum();
    // A count or a size in bytes, saturating at `i64::MAX` (which none reaches).
    let count = |n: u64| Known::Value(i64::try_from(n).unwrap_or(i64::MAX));
    out.mongo_collections = Known::Value(mongo.collections.clone());
    out.mongo_documents = Known::Value(mongo.documents);
    out.export_sha256 = Known::Value(files);
    out.export_bytes = count(bytes);
    out.postgres_tables = Known::Value(pg.tables.clone());
    out.postgres_rows = Known::Value(pg.rows);
    out.postgres_bytes = count(pg.bytes);
    out.skipped = Known::Value(skipped);
    out.migrated_at = Known::Value(now());
    out.elapsed = Known::Value(format!("{:.1}s", took.as_secs_f64()));
    let secs = pg.took.as_secs_f64().max(0.001);
    out.postgres_elapsed = Known::Value(if s.postgres.is_some() {
        format!("{secs:.1}s")
    } else {
        String::new()
    });
    out.throughput = Known::Value(if s.postgres.is_some() {
        format!(
            "{:.1} MB/s, {:.0} rows/s",
            pg.bytes as f64 / 1e6 / secs,
            pg.rows as f64 / secs
        )
    } else {
        String::new()
    });
}
