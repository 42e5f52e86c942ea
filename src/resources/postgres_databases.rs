//! `circleci_postgres_databases`: the runbook's "Setting up External PostgreSQL" and its
//! troubleshooting part as one resource. Creates (or adopts) the role and databases,
//! enables the extensions in each, checks the role can log in everywhere, then writes
//! /etc/circleconfig/shared/postgresql on the Services machine.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::task::JoinSet;

use super::config_file::{
    cannot_import, Change, Common, FileResource, Halted, PlannedContent, Prepared, Refresh, Spec,
};
use super::model::{Known, Model};
use super::validate::Check;
use crate::backends::postgres::{self as pgb, PgAdmin, PgError};
use crate::backends::tunnel::Route;
use crate::circleci::postgres::{self as file, DEFAULT_DATABASES};
use crate::fault_point;
use crate::plugin::stop;
use crate::plugin::{AttrPath, Diagnostic, Diagnostics, PlanRequest, Value};
use crate::provider::ProviderData;
use crate::secret::Secret;

pub(crate) struct PostgresDatabases {
    data: Arc<ProviderData>,
}

impl PostgresDatabases {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        PostgresDatabases { data }
    }
}

/// Each known database name a valid identifier, none listed twice.
fn check_databases(v: &Value, at: &AttrPath, diags: &mut Diagnostics) {
    let mut dbs = Vec::new();
    for (n, d) in v.as_list().unwrap_or_default().iter().enumerate() {
        let Some(d) = d.as_str() else { continue };
        let at = at.clone().index(n);
        if let Err(e) = file::check_identifier(d) {
            diags.attr_error(at, "Invalid database name", format!("{d:?} {e}"));
        } else if dbs.contains(&d) {
            diags.attr_error(at, "Duplicate database", format!("{d:?} is listed twice"));
        }
        dbs.push(d);
    }
}

/// Each known extension name one that exists (not the runbook's misspelling) and a
/// valid identifier; reported on the database's key.
fn check_extensions(v: &Value, at: &AttrPath, diags: &mut Diagnostics) {
    let Value::Map(m) = v else { return };
    for (k, list) in m {
        let at = at.clone().key(k);
        for e in list
            .as_list()
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
        {
            if let Some(right) = file::misspelled_extension(e) {
                diags.attr_error(
                    at.clone(),
                    "No such extension",
                    format!("{e:?} does not exist; the extension CircleCI needs is {right:?} (the runbook misspells it)"),
                );
            } else if let Err(err) = file::check_identifier(e) {
                diags.attr_error(at.clone(), "Invalid extension name", format!("{e:?} {err}"));
            }
        }
    }
}

fn default_databases() -> Vec<String> {
    DEFAULT_DATABASES.iter().map(|s| s.to_string()).collect()
}

crate::model! {
    /// `circleci_postgres_databases`' own attributes.
    pub(crate) struct Postgres / PostgresAtPlan {
        host: String [required, check(Check::Host), doc(
            "PostgreSQL host as the Services machine reaches it (written to the file)."
        )],
        port: u16 [default(file::DEFAULT_PORT), check(Check::Port), doc("PostgreSQL port.")],
        user: String [default(file::DEFAULT_USER.to_string()),
            check(Check::Text("Invalid role name", role_name)), doc(
            "The role CircleCI logs in as; created with LOGIN if missing, and owner of the databases \
             (the runbook advises not to change it)."
        )],
        password: Option<Secret> [password_kept("The role's password")],
        password_wo: Option<Secret> [password_write_only("The role's password")],
        password_wo_version: Option<f64> [password_version("the role's password and the file")],
        databases: Vec<String> [default(default_databases()), check(Check::Value(check_databases)), doc(
            "Databases to create or adopt, owned by `user` (the runbook's nine by default)."
        )],
        extensions: BTreeMap<String, Vec<String>> [default(file::default_extensions()),
            check(Check::Value(check_extensions)), doc(
            "Extensions per database; the key `*` applies to every database. Extensions are \
             created, never dropped."
        )],
        create_user_database: bool [default(true), doc(
            "Also create a database named after `user` (the runbook's fix for \
             `FATAL: database \"circle\" does not exist`)."
        )],
        deletion_policy: String [default("retain".to_string()),
            check(Check::OneOf(&["retain", "drop"])), doc(
            "`retain`: destroy removes only the config file and leaves role and databases. \
             `drop`: destroy also drops the databases and the role, refusing while any database has \
             live connections."
        )],
        drop_adopted_databases: bool [default(false), doc(
            "With `deletion_policy = \"drop\"`, also drop the databases in `adopted` (they existed \
             before this resource, and may hold data nobody meant to lose). `false`: adopted \
             databases are kept, and so is the role while it owns them."
        )],
        adopted: Known<Vec<String>> [computed, doc(
            "Databases that existed before this resource managed them and were taken over."
        )],
    }
}

/// The known settings of one instance (planned or stored state, defaults filled).
struct Inputs {
    host: String,
    port: u16,
    user: String,
    databases: Vec<String>,
    extensions: BTreeMap<String, Vec<String>>,
    create_user_database: bool,
    drop_on_destroy: bool,
    drop_adopted: bool,
    adopted: Vec<String>,
    path: String,
    verify: bool,
}

/// A role name PostgreSQL accepts, for the `user` check.
fn role_name(u: &str) -> Result<(), String> {
    file::check_identifier(u).map_err(|e| format!("{u:?} {e}"))
}

impl Inputs {
    fn all_databases(&self) -> Vec<String> {
        file::all_databases(&self.databases, &self.user, self.create_user_database)
    }
}

/// The settings of a planned value or a stored state (defaults filled).
fn inputs(v: &Value) -> Result<Inputs, Diagnostics> {
    let m = Postgres::decode(v)?;
    let common = Common::of(v)?;
    Ok(Inputs {
        host: m.host,
        port: m.port,
        user: m.user,
        databases: m.databases,
        extensions: m.extensions,
        create_user_database: m.create_user_database,
        drop_on_destroy: m.deletion_policy == "drop",
        drop_adopted: m.drop_adopted_databases,
        adopted: m.adopted.known().unwrap_or_default(),
        path: common.config_path,
        verify: common.verify,
    })
}

fn pg_diag(summary: &str, e: PgError) -> Diagnostics {
    let summary = if e.is_connect() {
        "Could not connect to PostgreSQL"
    } else if matches!(e, PgError::Unsupported { .. }) {
        "PostgreSQL version not supported"
    } else {
        summary
    };
    Diagnostic::error(summary, crate::backends::chain(&e)).into()
}

fn render(host: &str, port: u16, user: &str, password: &str) -> Result<String, Diagnostics> {
    file::render(host, port, user, password).map_err(|e| {
        Diagnostic::error("Could not render the PostgreSQL config file", e.to_string()).into()
    })
}

/// Runs `f` for every database at once (each on its own connection) and collects errors.
async fn for_each_db<F, Fut>(dbs: &[String], f: F) -> Result<(), PgError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), PgError>> + Send + 'static,
{
    let mut set = JoinSet::new();
    for db in dbs {
        set.spawn(f(db.clone()));
    }
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(PgError::Task(e)),
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            errors.sort_by_key(|e| crate::backends::chain(e));
            Err(PgError::Many(errors))
        }
    }
}

/// Creates the missing databases and gives every one to the role; returns the
/// databases adopted (found existing). On a failure, or when Terraform asks to stop
/// (checked before each database), returns the databases adopted so far with the error.
async fn ensure_databases(
    pg: &PgAdmin,
    i: &Inputs,
    before: Option<&Inputs>,
) -> Result<Vec<String>, (Vec<String>, Diagnostics)> {
    let all = i.all_databases();
    let managed_before: Vec<String> = before.map(Inputs::all_databases).unwrap_or_default();
    let mut adopted: Vec<String> = before.map(|b| b.adopted.clone()).unwrap_or_default();
    adopted.retain(|d| all.contains(d));
    let existing = match pg.databases(&all).await {
        Ok(e) => e,
        Err(e) => return Err((adopted, pg_diag("Could not list the databases", e))),
    };
    for (n, db) in all.iter().enumerate() {
        if stop::requested() {
            let d = Diagnostic::error(
                "Stopped",
                format!(
                    "Terraform asked the provider to stop after {n} of {} databases were set up. The role and \
                     those databases are recorded in the state, {} was not written; run terraform apply again \
                     to finish.",
                    all.len(),
                    i.path
                ),
            );
            return Err((adopted, d.into()));
        }
        let step = match existing.get(db) {
            None => pg.create_database(db, &i.user).await.map(|()| {
                log::info!("created database {db:?}");
            }),
            Some(owner) => {
                if !managed_before.contains(db) && !adopted.contains(db) {
                    log::info!("adopted existing database {db:?}");
                    adopted.push(db.clone());
                }
                if owner != &i.user {
                    pg.set_owner(db, &i.user).await
                } else {
                    Ok(())
                }
            }
        };
        if let Err(e) = step {
            return Err((adopted, pg_diag("Could not set up a database", e)));
        }
        fault_point::point("circleci_postgres_databases.database_loop").await;
    }
    Ok(adopted)
}

/// Logs in as the role to every database, the way CircleCI will.
async fn verify_logins(
    pg: &PgAdmin,
    i: &Inputs,
    password: &str,
    route: impl FnOnce(&Route) -> Result<Route, Diagnostics>,
) -> Result<(), Diagnostics> {
    let all = i.all_databases();
    let tls = pg
        .tls()
        .map_err(|e| pg_diag("PostgreSQL TLS settings", e))?;
    let tls = {
        let r = route(tls.route())?;
        tls.with_route(r)
    };
    let timeout = pg.config().connect_timeout;
    let (host, port, user, pw) = (i.host.clone(), i.port, i.user.clone(), password.to_string());
    for_each_db(&all, move |db| {
            let (tls, host, user, pw) = (tls.clone(), host.clone(), user.clone(), pw.clone());
            async move { pgb::verify_login(&tls, &host, port, &user, &pw, &db, timeout).await }
        })
        .await
        .map_err(|e| {
            Diagnostics::from(
                Diagnostic::error(
                    "The CircleCI role cannot log in",
                    format!(
                        "{}\nThe role and databases are set up, but {} was not written. Set verify = false \
                         if Terraform cannot reach {}:{} the way the Services machine does.",
                        crate::backends::chain(&e),
                        i.path,
                        i.host,
                        i.port
                    ),
                )
                .at(AttrPath::root("verify")),
            )
        })?;
    Ok(())
}

impl PostgresDatabases {
    /// What differs on the server from the state, one clause each.
    async fn server_drift(&self, pg: &Arc<PgAdmin>, i: &Inputs) -> Result<Vec<String>, PgError> {
        let mut drift = Vec::new();
        if !pg.role_exists(&i.user).await? {
            drift.push(format!("role {:?} is missing", i.user));
        }
        let all = i.all_databases();
        let existing = pg.databases(&all).await?;
        let mut present = Vec::new();
        for db in &all {
            match existing.get(db) {
                None => drift.push(format!("database {db:?} is missing")),
                Some(owner) => {
                    if owner != &i.user {
                        drift.push(format!(
                            "database {db:?} is owned by {owner:?}, not {:?}",
                            i.user
                        ));
                    }
                    present.push(db.clone());
                }
            }
        }
        let mut set = JoinSet::new();
        for db in present {
            let pg = pg.clone();
            let want = file::extensions_for(&db, &i.extensions);
            set.spawn(async move {
                let have = pg.installed_extensions(&db).await?;
                Ok::<_, PgError>(
                    want.into_iter()
                        .filter(|e| !have.contains(e))
                        .map(|e| format!("extension {e:?} is missing in database {db:?}"))
                        .collect::<Vec<_>>(),
                )
            });
        }
        let mut ext_drift = Vec::new();
        while let Some(r) = set.join_next().await {
            ext_drift.extend(r.map_err(PgError::Task)??);
        }
        ext_drift.sort();
        drift.extend(ext_drift);
        Ok(drift)
    }
}

#[async_trait]
impl FileResource for PostgresDatabases {
    type Pending = ();
    type Own = Postgres;

    const SPEC: Spec = Spec {
        type_name: "circleci_postgres_databases",
        description: "Sets up CircleCI's PostgreSQL (runbook: *Setting up External PostgreSQL*, *Confirming \
                      Tables*). Creates the role (LOGIN) and the databases it owns, or adopts existing ones; \
                      enables `uuid-ossp` in every database and `pgcrypto` in `circle`; logs in as the role to \
                      every database; then writes `POSTGRES_HOST`, `POSTGRES_PORT`, `POSTGRES_PASSWORD` and \
                      `POSTGRES_USER` to the config file on the Services machine (mode 0600). Needs the \
                      provider's `postgres` block. Refresh reports a missing role, database or extension, a \
                      changed owner and a changed or missing file in `drift`; the next apply repairs them. \
                      Nothing is dropped unless `deletion_policy = \"drop\"`.",
        what: "PostgreSQL",
        default_path: file::DEFAULT_PATH,
        default_path_doc: "`/etc/circleconfig/shared/postgresql`",
        verify_doc:
            "Log in as `user` with the password to every database (to `host:port`, from where \
                     Terraform runs or through the Services machine: see `verify_via_services_host`) before writing the file. Default `true`.",
        drift_doc: ", a missing role, database or extension, a database with another owner",
        secret_in_file: true,
        changes: Some("The PostgreSQL role (its password), the databases and their extensions"),
        compat: None,
    };

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        // A value the view cannot hold (port 70000) is reported by its declared check.
        let Ok(c) = PostgresAtPlan::decode(config) else {
            return;
        };
        if let (Known::Value(list), Known::Value(false)) = (&c.databases, &c.create_user_database) {
            if list.is_empty() {
                diags.attr_error(
                    AttrPath::root("databases"),
                    "No databases",
                    "list at least one database",
                );
            }
        }
        let dbs: Vec<String> = match c.databases {
            Known::Value(d) => d,
            Known::Null => default_databases(),
            Known::Unknown => return,
        };
        let user = match c.user {
            Known::Value(u) => u,
            Known::Null => file::DEFAULT_USER.to_string(),
            Known::Unknown => return,
        };
        let Known::Value(extensions) = c.extensions else {
            return;
        };
        for k in extensions.keys() {
            if k != "*" && !dbs.contains(k) && *k != user {
                diags.attr_error(
                    AttrPath::root("extensions").key(k),
                    "Extensions for an unmanaged database",
                    format!("{k:?} is not in databases; use a listed database or \"*\" for all"),
                );
            }
        }
    }

    async fn plan(&self, req: &PlanRequest<'_>, planned: &mut Value, diags: &mut Diagnostics) {
        let mut now = match PostgresAtPlan::decode(planned) {
            Ok(p) => p,
            Err(e) => return diags.extend(Diagnostics::from(e)),
        };
        let adopts_again = match PostgresAtPlan::decode(req.prior) {
            Ok(was) => {
                was.databases != now.databases
                    || was.user != now.user
                    || was.create_user_database != now.create_user_database
            }
            Err(_) => true,
        };
        if req.is_create() || adopts_again {
            now.adopted = Known::Unknown;
            now.encode(planned);
        }
    }

    fn planned_content(&self, planned: &Value, config: &Value) -> PlannedContent {
        let Ok(p) = PostgresAtPlan::decode(planned) else {
            return PlannedContent::Unknown;
        };
        match (p.host.known(), p.port.known(), p.user.known()) {
            (Some(host), Some(port), Some(user)) => {
                PlannedContent::with_password(config, |pw| render(&host, port, &user, pw))
            }
            _ => PlannedContent::Unknown,
        }
    }

    /// Create and update: role, databases, extensions, verification, in that order;
    /// the core writes the file last so it never names a login that does not work.
    async fn prepare(&self, c: Change<'_>) -> Result<Prepared<()>, Halted> {
        let (prior, planned, config) = (c.prior, c.planned, c.config);
        let i = inputs(planned)?;
        // What the state records: the plan, with the databases found existing.
        let mut out = Postgres::decode(planned).map_err(Diagnostics::from)?;
        // Read before anything changes: what this resource managed and adopted.
        let before = prior.map(inputs).transpose()?;
        let password = super::required_password(config)?;
        let password = password.expose();
        let pg = self.data.postgres()?;
        let content = render(&i.host, i.port, &i.user, password)?;

        let created = pg
            .ensure_role(&i.user, password)
            .await
            .map_err(|e| pg_diag("Could not set up the PostgreSQL role", e))?;
        log::info!(
            "role {:?} {}",
            i.user,
            if created { "created" } else { "updated" }
        );

        // From here on the role has changed: every failure returns a state saying so.
        let mut state = planned.clone();
        let halt = |state: &Value, diags: Diagnostics| Halted {
            state: Some(state.clone()),
            diags,
        };
        let all = i.all_databases();
        let (adopted, failed) = match ensure_databases(&pg, &i, before.as_ref()).await {
            Ok(adopted) => (adopted, None),
            Err((adopted, d)) => (adopted, Some(d)),
        };
        out.adopted = Known::Value(adopted);
        out.encode(&mut state);
        if let Some(d) = failed {
            return Err(halt(&state, d));
        }
        let exts = i.extensions.clone();
        let pg2 = pg.clone();
        for_each_db(&all, move |db| {
            let pg = pg2.clone();
            let want = file::extensions_for(&db, &exts);
            async move { pg.ensure_extensions(&db, &want).await }
        })
        .await
        .map_err(|e| halt(&state, pg_diag("Could not enable the extensions", e)))?;

        if i.verify {
            let data = &self.data;
            verify_logins(&pg, &i, password, |default| {
                data.check_route(planned, || Ok(default.clone()))
            })
            .await
            .map_err(|d| halt(&state, d))?;
        }

        Ok(Prepared {
            state,
            content: Some(content),
            pending: (),
        })
    }

    async fn refresh(&self, r: Refresh<'_>) -> Result<(), Diagnostics> {
        let (state, drift) = (r.state, r.drift);
        let pg = self.data.postgres()?;
        drift.extend(
            self.server_drift(&pg, &inputs(state)?)
                .await
                .map_err(|e| pg_diag("Could not check PostgreSQL", e))?,
        );
        Ok(())
    }

    async fn delete_backend(&self, prior: &Value) -> Result<Diagnostics, Diagnostics> {
        let i = inputs(prior)?;
        if !i.drop_on_destroy {
            return Ok(Diagnostics::new());
        }
        let pg = self.data.postgres()?;
        let adopted = &i.adopted;
        let (kept, all): (Vec<String>, Vec<String>) = i
            .all_databases()
            .into_iter()
            .partition(|d| adopted.contains(d) && !i.drop_adopted);
        let existing = pg
            .databases(&all)
            .await
            .map_err(|e| pg_diag("Could not list the databases", e))?;
        let mut busy = Vec::new();
        for db in all.iter().filter(|d| existing.contains_key(*d)) {
            let n = pg
                .live_connections(db)
                .await
                .map_err(|e| pg_diag("Could not check for connections", e))?;
            if n > 0 {
                busy.push(format!("{db:?} ({n})"));
            }
        }
        if !busy.is_empty() {
            return Err(Diagnostic::error(
                "Databases in use: nothing dropped",
                format!(
                    "deletion_policy = \"drop\", but these databases have live connections: {}. Nothing was \
                     dropped and the config file was kept. Stop CircleCI (or whatever is connected) first, or \
                     set deletion_policy = \"retain\".",
                    busy.join(", ")
                ),
            )
            .at(AttrPath::root("deletion_policy"))
            .into());
        }
        for db in all.iter().filter(|d| existing.contains_key(*d)) {
            pg.drop_database(db)
                .await
                .map_err(|e| pg_diag("Could not drop a database", e))?;
            log::info!("dropped database {db:?}");
        }
        if !kept.is_empty() {
            // The role owns the kept databases: dropping it would fail, and it is theirs.
            return Ok(Diagnostic::warning(
                "Adopted databases kept",
                format!(
                    "{} existed before this resource adopted them, so destroy kept them and the role {:?} \
                     that owns them. Set drop_adopted_databases = true to drop them too.",
                    kept.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>().join(", "),
                    i.user
                ),
            )
            .at(AttrPath::root("drop_adopted_databases"))
            .into());
        }
        pg.drop_role(&i.user)
            .await
            .map_err(|e| pg_diag("Could not drop the role", e))?;
        Ok(Diagnostics::new())
    }

    async fn import(&self, id: &str, text: &str) -> Result<Value, Diagnostics> {
        let parsed = file::parse(text).map_err(|e| cannot_import(id, e))?;
        let mut v = Value::Null;
        Postgres {
            host: parsed.host,
            port: parsed.port,
            user: parsed.user,
            password: None,
            password_wo: None,
            password_wo_version: None,
            databases: default_databases(),
            extensions: file::default_extensions(),
            create_user_database: true,
            deletion_policy: "retain".into(),
            drop_adopted_databases: false,
            adopted: Known::Value(vec![]),
        }
        .encode(&mut v);
        Ok(v)
    }
}
