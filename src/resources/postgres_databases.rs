//! `circleci_postgres_databases`: the runbook's "Setting up External PostgreSQL" and its
//! troubleshooting part as one resource. Creates (or adopts) the role and databases,
//! enables the extensions in each, checks the role can log in everywhere, then writes
//! /etc/circleconfig/shared/postgresql on the Services machine.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::task::JoinSet;

use super::{file_sha256, managed_file, ssh_diag, string_list, strings, validate};
use crate::backends::postgres::{self as pgb, PgAdmin, PgError};
use crate::circleci::postgres::{self as file, DEFAULT_DATABASES};
use crate::plugin::{
    resource::changed, AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest, Resource,
    Schema, Type, Value,
};
use crate::provider::ProviderData;

pub struct PostgresDatabases {
    data: Arc<ProviderData>,
}

impl PostgresDatabases {
    pub fn new(data: Arc<ProviderData>) -> Self {
        PostgresDatabases { data }
    }
}

fn ext_map(v: &Value) -> BTreeMap<String, Vec<String>> {
    match v {
        Value::Map(m) => m.iter().map(|(k, v)| (k.clone(), strings(v))).collect(),
        _ => BTreeMap::new(),
    }
}

fn ext_value(m: &BTreeMap<String, Vec<String>>) -> Value {
    Value::Map(m.iter().map(|(k, v)| (k.clone(), string_list(v))).collect())
}

fn default_databases() -> Vec<String> {
    DEFAULT_DATABASES.iter().map(|s| s.to_string()).collect()
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
    path: String,
    verify: bool,
}

impl Inputs {
    fn all_databases(&self) -> Vec<String> {
        file::all_databases(&self.databases, &self.user, self.create_user_database)
    }
}

fn inputs(v: &Value) -> Inputs {
    Inputs {
        host: v.get("host").as_str().unwrap_or_default().to_string(),
        port: v
            .get("port")
            .as_i64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(file::DEFAULT_PORT),
        user: v
            .get("user")
            .as_str()
            .unwrap_or(file::DEFAULT_USER)
            .to_string(),
        databases: if v.get("databases").is_null() {
            default_databases()
        } else {
            strings(v.get("databases"))
        },
        extensions: if v.get("extensions").is_null() {
            file::default_extensions()
        } else {
            ext_map(v.get("extensions"))
        },
        create_user_database: v.get("create_user_database").as_bool().unwrap_or(true),
        drop_on_destroy: v.get("deletion_policy").as_str() == Some("drop"),
        path: v
            .get("config_path")
            .as_str()
            .unwrap_or(file::DEFAULT_PATH)
            .to_string(),
        verify: v.get("verify").as_bool().unwrap_or(true),
    }
}

use super::configured_password as password;

fn pg_diag(summary: &str, e: PgError) -> Diagnostics {
    let summary = if e.is_connect() {
        "Could not connect to PostgreSQL"
    } else {
        summary
    };
    Diagnostic::error(summary, e.0).into()
}

fn render(i: &Inputs, password: &str) -> Result<String, Diagnostics> {
    file::render(&i.host, i.port, &i.user, password).map_err(|e| {
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
            Ok(Err(e)) => errors.push(e.0),
            Err(e) => errors.push(format!("internal error: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        errors.sort();
        Err(PgError(errors.join("\n")))
    }
}

impl PostgresDatabases {
    /// Create and update: role, databases, extensions, verification, file, in that
    /// order; the file is written last so it never names a login that does not work.
    async fn apply(
        &self,
        prior: Option<&Value>,
        planned: &Value,
        config: &Value,
    ) -> Result<Value, Diagnostics> {
        let i = inputs(planned);
        let password = super::required_password(config)?;
        let pg = self.data.postgres()?;
        let services = self.data.services()?;
        let content = render(&i, password)?;

        let created = pg
            .ensure_role(&i.user, password)
            .await
            .map_err(|e| pg_diag("Could not set up the PostgreSQL role", e))?;
        log::info!(
            "role {:?} {}",
            i.user,
            if created { "created" } else { "updated" }
        );

        let all = i.all_databases();
        let managed_before: Vec<String> =
            prior.map(|p| inputs(p).all_databases()).unwrap_or_default();
        let mut adopted: Vec<String> = prior.map(|p| strings(p.get("adopted"))).unwrap_or_default();
        adopted.retain(|d| all.contains(d));
        let existing = pg
            .databases(&all)
            .await
            .map_err(|e| pg_diag("Could not list the databases", e))?;
        for db in &all {
            match existing.get(db) {
                None => {
                    pg.create_database(db, &i.user)
                        .await
                        .map_err(|e| pg_diag("Could not create a database", e))?;
                    log::info!("created database {db:?}");
                }
                Some(owner) => {
                    if owner != &i.user {
                        pg.set_owner(db, &i.user)
                            .await
                            .map_err(|e| pg_diag("Could not change a database's owner", e))?;
                    }
                    if !managed_before.contains(db) && !adopted.contains(db) {
                        log::info!("adopted existing database {db:?}");
                        adopted.push(db.clone());
                    }
                }
            }
        }

        let exts = i.extensions.clone();
        let pg2 = pg.clone();
        for_each_db(&all, move |db| {
            let pg = pg2.clone();
            let want = file::extensions_for(&db, &exts);
            async move { pg.ensure_extensions(&db, &want).await }
        })
        .await
        .map_err(|e| pg_diag("Could not enable the extensions", e))?;

        if i.verify {
            let tls = pg
                .tls()
                .map_err(|e| pg_diag("PostgreSQL TLS settings", e))?;
            let timeout = pg.config().connect_timeout;
            let (host, port, user, pw) =
                (i.host.clone(), i.port, i.user.clone(), password.to_string());
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
                            "{e}\nThe role and databases are set up, but {} was not written. Set verify = false \
                             if Terraform cannot reach {}:{} the way the Services machine does.",
                            i.path, i.host, i.port
                        ),
                    )
                    .at(AttrPath::root("verify")),
                )
            })?;
        }

        services
            .write_file(&i.path, content.as_bytes(), 0o600)
            .await
            .map_err(|e| ssh_diag("Could not write the PostgreSQL config file", e))?;
        log::info!("wrote {}", i.path);

        let mut state = planned.clone();
        state.set("id", Value::string(&i.path));
        state.set(
            "file_sha256",
            Value::string(file_sha256(content.as_bytes())),
        );
        state.set("adopted", string_list(&adopted));
        state.set("drift", Value::string(""));
        Ok(state)
    }

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
            ext_drift.extend(r.map_err(|e| PgError(format!("internal error: {e}")))??);
        }
        ext_drift.sort();
        drift.extend(ext_drift);
        Ok(drift)
    }
}

#[async_trait]
impl Resource for PostgresDatabases {
    fn type_name(&self) -> &'static str {
        "circleci_postgres_databases"
    }

    fn schema(&self) -> Schema {
        let names = DEFAULT_DATABASES.map(|d| format!("`{d}`")).join(", ");
        Schema::new(
            0,
            Block::new()
                .description(
                    "Sets up CircleCI's PostgreSQL (runbook: *Setting up External PostgreSQL*, *Confirming Tables*). \
                     Creates the role (LOGIN) and the databases it owns, or adopts existing ones; enables \
                     `uuid-ossp` in every database and `pgcrypto` in `circle`; logs in as the role to every \
                     database; then writes `POSTGRES_HOST`, `POSTGRES_PORT`, `POSTGRES_PASSWORD` and \
                     `POSTGRES_USER` to the config file on the Services machine (mode 0600). Needs the provider's \
                     `postgres` block. Refresh reports a missing role, database or extension, a changed owner and \
                     a changed or missing file in `drift`; the next apply repairs them. Nothing is dropped unless \
                     `deletion_policy = \"drop\"`.",
                )
                .attr(Attribute::new("id", Type::String).computed().description("The config file's path."))
                .attr(Attribute::new("host", Type::String).required().description(
                    "PostgreSQL host as the Services machine reaches it (written to the file).",
                ))
                .attr(Attribute::new("port", Type::Number).optional().computed().description("PostgreSQL port. Default `5432`."))
                .attr(Attribute::new("user", Type::String).optional().computed().description(
                    "The role CircleCI logs in as; created with LOGIN if missing, and owner of the databases. \
                     Default `circle` (the runbook advises not to change it).",
                ))
                .attr(Attribute::new("password", Type::String).optional().sensitive().description(
                    "The role's password, kept (sensitive) in the Terraform state. Prefer `password_wo`; set exactly one.",
                ))
                .attr(Attribute::new("password_wo", Type::String).optional().sensitive().write_only().description(
                    "The role's password, write-only: never stored in the plan or state (Terraform 1.11 or later). \
                     Change `password_wo_version` to rotate it.",
                ))
                .attr(Attribute::new("password_wo_version", Type::Number).optional().description(
                    "Any number; changing it applies the current `password_wo` (role password and file).",
                ))
                .attr(Attribute::new("databases", Type::list(Type::String)).optional().computed().description(
                    &format!("Databases to create or adopt, owned by `user`. Default: the runbook's nine, {names}."),
                ))
                .attr(Attribute::new("extensions", Type::map(Type::list(Type::String))).optional().computed().description(
                    "Extensions per database; the key `*` applies to every database. Default \
                     `{ \"*\" = [\"uuid-ossp\"], \"circle\" = [\"uuid-ossp\", \"pgcrypto\"] }`. Extensions are \
                     created, never dropped.",
                ))
                .attr(Attribute::new("create_user_database", Type::Bool).optional().computed().description(
                    "Also create a database named after `user` (the runbook's fix for \
                     `FATAL: database \"circle\" does not exist`). Default `true`.",
                ))
                .attr(Attribute::new("deletion_policy", Type::String).optional().computed().description(
                    "`retain` (default): destroy removes only the config file and leaves role and databases. \
                     `drop`: destroy also drops the databases and the role, refusing while any database has \
                     live connections.",
                ))
                .attr(Attribute::new("config_path", Type::String).optional().computed().description(
                    "Path of the file on the Services machine. Default `/etc/circleconfig/shared/postgresql`. \
                     Changing it replaces the resource.",
                ))
                .attr(Attribute::new("verify", Type::Bool).optional().computed().description(
                    "Log in as `user` with the password to every database (from where Terraform runs, to \
                     `host:port`) before writing the file. Default `true`.",
                ))
                .attr(Attribute::new("file_sha256", Type::String).computed().description(
                    "SHA-256 of the file as written; refresh compares the file on the Services machine with it. \
                     The password itself is never read back.",
                ))
                .attr(Attribute::new("adopted", Type::list(Type::String)).computed().description(
                    "Databases that existed before this resource managed them and were taken over.",
                ))
                .attr(Attribute::new("drift", Type::String).computed().description(
                    "What refresh found different on the server (missing role, database or extension, another \
                     owner) or on the Services machine; empty when everything is as configured. A non-empty \
                     value plans an update that repairs it.",
                )),
        )
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        if let Some(h) = config.get("host").as_str() {
            validate::host(h, AttrPath::root("host"), &mut diags);
        }
        validate::port(config.get("port"), AttrPath::root("port"), &mut diags);
        if let Some(u) = config.get("user").as_str() {
            if let Err(e) = file::check_identifier(u) {
                diags.attr_error(
                    AttrPath::root("user"),
                    "Invalid role name",
                    format!("{u:?} {e}"),
                );
            }
        }
        super::validate_password_pair(config, &mut diags);
        let mut dbs = Vec::new();
        if let Some(list) = config.get("databases").as_list() {
            for (n, d) in list.iter().enumerate() {
                let Some(d) = d.as_str() else { continue };
                let at = AttrPath::root("databases").index(n as i64);
                if let Err(e) = file::check_identifier(d) {
                    diags.attr_error(at, "Invalid database name", format!("{d:?} {e}"));
                } else if dbs.contains(&d) {
                    diags.attr_error(at, "Duplicate database", format!("{d:?} is listed twice"));
                }
                dbs.push(d);
            }
            if list.is_empty() && config.get("create_user_database").as_bool() == Some(false) {
                diags.attr_error(
                    AttrPath::root("databases"),
                    "No databases",
                    "list at least one database",
                );
            }
        }
        if let Value::Map(m) = config.get("extensions") {
            let user = config.get("user").as_str().unwrap_or(file::DEFAULT_USER);
            let known_dbs =
                config.get("databases").is_fully_known() && config.get("user").is_fully_known();
            for (k, v) in m {
                let at = AttrPath::root("extensions").key(k);
                let listed = if config.get("databases").is_null() {
                    DEFAULT_DATABASES.contains(&k.as_str())
                } else {
                    dbs.contains(&k.as_str())
                };
                if known_dbs && k != "*" && !listed && k != user {
                    diags.attr_error(
                        at.clone(),
                        "Extensions for an unmanaged database",
                        format!(
                            "{k:?} is not in databases; use a listed database or \"*\" for all"
                        ),
                    );
                }
                for e in v
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
                        diags.attr_error(
                            at.clone(),
                            "Invalid extension name",
                            format!("{e:?} {err}"),
                        );
                    }
                }
            }
        }
        if let Some(p) = config.get("deletion_policy").as_str() {
            if p != "retain" && p != "drop" {
                diags.attr_error(
                    AttrPath::root("deletion_policy"),
                    "Invalid deletion_policy",
                    format!("{p:?} is not one of \"retain\", \"drop\""),
                );
            }
        }
        if let Some(p) = config.get("config_path").as_str() {
            validate::remote_path(p, AttrPath::root("config_path"), &mut diags);
        }
        diags
    }

    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        _diags: &mut Diagnostics,
    ) -> Vec<AttrPath> {
        let cfg = req.config;
        let defaults = [
            ("port", Value::int(file::DEFAULT_PORT as i64)),
            ("user", Value::string(file::DEFAULT_USER)),
            ("databases", string_list(&default_databases())),
            ("extensions", ext_value(&file::default_extensions())),
            ("create_user_database", Value::Bool(true)),
            ("deletion_policy", Value::string("retain")),
            ("config_path", Value::string(file::DEFAULT_PATH)),
            ("verify", Value::Bool(true)),
        ];
        super::set_defaults(cfg, planned, defaults);
        planned.set("id", planned.get("config_path").clone());
        planned.set("drift", Value::string(""));
        let known = ["host", "port", "user"]
            .iter()
            .all(|n| planned.get(n).is_fully_known());
        let hash = match (known, password(cfg)) {
            (true, Some(pw)) => render(&inputs(planned), pw)
                .map(|c| Value::string(file_sha256(c.as_bytes())))
                .unwrap_or(Value::Unknown),
            _ => Value::Unknown,
        };
        planned.set("file_sha256", hash);
        if req.is_create()
            || ["databases", "user", "create_user_database"]
                .iter()
                .any(|a| changed(req.prior, planned, a))
        {
            planned.set("adopted", Value::Unknown);
        }
        let mut replace = Vec::new();
        if !req.is_create() && changed(req.prior, planned, "config_path") {
            replace.push(AttrPath::root("config_path"));
        }
        replace
    }

    async fn create(&self, planned: &Value, config: &Value) -> Result<Value, Diagnostics> {
        self.apply(None, planned, config).await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let i = inputs(state);
        let services = self.data.services()?;
        let pg = self.data.postgres()?;
        let f = services
            .read_file(&i.path)
            .await
            .map_err(|e| ssh_diag("Could not read the PostgreSQL config file", e))?;
        let mut drift = self
            .server_drift(&pg, &i)
            .await
            .map_err(|e| pg_diag("Could not check PostgreSQL", e))?;
        let mut fresh = state.clone();
        match f {
            Some(f) => fresh.set("file_sha256", Value::string(file_sha256(&f.content))),
            None => {
                drift.push(format!("{} is missing on the Services machine", i.path));
                fresh.set("file_sha256", Value::string(""));
            }
        }
        if !drift.is_empty() {
            log::info!("{}: {}", i.path, drift.join("; "));
        }
        fresh.set("drift", Value::string(drift.join("; ")));
        Ok(Some(fresh))
    }

    async fn update(
        &self,
        prior: &Value,
        planned: &Value,
        config: &Value,
    ) -> Result<Value, Diagnostics> {
        self.apply(Some(prior), planned, config).await
    }

    async fn delete(&self, prior: &Value) -> Result<(), Diagnostics> {
        let i = inputs(prior);
        let services = self.data.services()?;
        if i.drop_on_destroy {
            let pg = self.data.postgres()?;
            let all = i.all_databases();
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
            pg.drop_role(&i.user)
                .await
                .map_err(|e| pg_diag("Could not drop the role", e))?;
        }
        services
            .remove_file(&i.path)
            .await
            .map_err(|e| ssh_diag("Could not delete the PostgreSQL config file", e))?;
        Ok(())
    }

    async fn import(&self, id: &str) -> Result<Value, Diagnostics> {
        let (text, hash) =
            managed_file::read_for_import(&self.data, id, file::DEFAULT_PATH, "PostgreSQL").await?;
        let parsed = file::parse(&text).map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Cannot import this file",
                format!("{id}: {e}"),
            ))
        })?;
        let mut v = Value::Null;
        v.set("id", Value::string(id));
        v.set("config_path", Value::string(id));
        v.set("host", Value::string(parsed.host));
        v.set("port", Value::int(parsed.port as i64));
        v.set("user", Value::string(parsed.user));
        v.set("databases", string_list(&default_databases()));
        v.set("extensions", ext_value(&file::default_extensions()));
        v.set("create_user_database", Value::Bool(true));
        v.set("deletion_policy", Value::string("retain"));
        v.set("verify", Value::Bool(true));
        v.set("file_sha256", Value::string(hash));
        v.set("adopted", Value::List(vec![]));
        v.set("drift", Value::string(""));
        Ok(v)
    }
}
