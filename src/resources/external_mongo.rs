//! `circleci_external_mongo`: the runbook's "Setting up External MongoDB". Ensures the
//! CircleCI user with readWrite on its databases (changed in place, never dropped and
//! recreated), and writes the five connection strings as a managed block of
//! /etc/circle-installation-customizations: every line outside the block is the user's.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    configured_password, file_sha256, ssh_diag, string_list, strings, validate,
    validate_password_pair,
};
use crate::backends::mongo::{self as mb, Role};
use crate::circleci::envfile;
use crate::circleci::mongo::{self as file, UriParts};
use crate::plugin::{
    resource::changed, AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest, Resource,
    Schema, Type, Value,
};
use crate::provider::ProviderData;

pub struct ExternalMongo {
    data: Arc<ProviderData>,
}

impl ExternalMongo {
    pub fn new(data: Arc<ProviderData>) -> Self {
        ExternalMongo { data }
    }
}

struct Inputs {
    hosts: Vec<String>,
    replica_set: Option<String>,
    username: String,
    auth_source: String,
    tls: bool,
    options: BTreeMap<String, String>,
    databases: Vec<String>,
    path: String,
    verify: bool,
    drop_user: bool,
}

fn inputs(v: &Value) -> Inputs {
    Inputs {
        hosts: strings(v.get("hosts")),
        replica_set: v.get("replica_set").as_str().map(str::to_string),
        username: v
            .get("username")
            .as_str()
            .unwrap_or(file::DEFAULT_USER)
            .to_string(),
        auth_source: v
            .get("auth_source")
            .as_str()
            .unwrap_or(file::DEFAULT_AUTH_SOURCE)
            .to_string(),
        tls: v.get("tls").as_bool().unwrap_or(true),
        options: match v.get("options") {
            Value::Map(m) => m
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
            _ => BTreeMap::new(),
        },
        databases: if v.get("databases").is_null() {
            file::DEFAULT_DATABASES
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            strings(v.get("databases"))
        },
        path: v
            .get("config_path")
            .as_str()
            .unwrap_or(file::DEFAULT_PATH)
            .to_string(),
        verify: v.get("verify").as_bool().unwrap_or(true),
        drop_user: v.get("drop_user_on_destroy").as_bool().unwrap_or(false),
    }
}

impl Inputs {
    fn parts<'a>(&'a self, password: &'a str) -> UriParts<'a> {
        UriParts {
            hosts: &self.hosts,
            username: &self.username,
            password,
            auth_source: &self.auth_source,
            replica_set: self.replica_set.as_deref(),
            tls: self.tls,
            options: &self.options,
        }
    }

    fn roles(&self) -> Vec<Role> {
        self.databases
            .iter()
            .map(|d| ("readWrite".to_string(), d.clone()))
            .collect()
    }

    fn block(&self, password: &str) -> Result<String, Diagnostics> {
        file::render_block(&self.parts(password), &self.databases).map_err(|e| {
            Diagnostic::error(
                "Could not render the MongoDB connection strings",
                e.to_string(),
            )
            .into()
        })
    }
}

fn mongo_diag(summary: &str, e: mb::MongoError) -> Diagnostics {
    Diagnostic::error(summary, e.0).into()
}

fn block_error(path: &str, e: envfile::EnvFileError) -> Diagnostics {
    Diagnostic::error(
        "The managed block in the file is damaged",
        format!("{path}: {e}. Fix the marker lines by hand."),
    )
    .into()
}

impl ExternalMongo {
    async fn apply(
        &self,
        prior: Option<&Value>,
        planned: &Value,
        config: &Value,
    ) -> Result<Value, Diagnostics> {
        let i = inputs(planned);
        let pw = super::required_password(config)?;
        let admin = self.data.mongo()?;
        let services = self.data.services()?;
        let block = i.block(pw)?;
        let want = i.roles();

        match admin
            .user(&i.auth_source, &i.username)
            .await
            .map_err(|e| mongo_diag("Could not look up the MongoDB user", e))?
        {
            None => {
                admin
                    .create_user(&i.auth_source, &i.username, pw, &want)
                    .await
                    .map_err(|e| mongo_diag("Could not create the MongoDB user", e))?;
                log::info!("created MongoDB user {}@{}", i.username, i.auth_source);
            }
            Some(have) => {
                // In place: password, then the roles that differ. Never drop and recreate.
                admin
                    .set_password(&i.auth_source, &i.username, pw)
                    .await
                    .map_err(|e| mongo_diag("Could not set the MongoDB user's password", e))?;
                let grant: Vec<Role> = want.iter().filter(|r| !have.contains(r)).cloned().collect();
                admin
                    .grant(&i.auth_source, &i.username, &grant)
                    .await
                    .map_err(|e| mongo_diag("Could not grant roles", e))?;
                let ours_before: Vec<Role> = prior.map(|p| inputs(p).roles()).unwrap_or_default();
                let revoke: Vec<Role> = ours_before
                    .into_iter()
                    .filter(|r| !want.contains(r) && have.contains(r))
                    .collect();
                admin
                    .revoke(&i.auth_source, &i.username, &revoke)
                    .await
                    .map_err(|e| mongo_diag("Could not revoke roles", e))?;
            }
        }

        if i.verify {
            let uri = file::uri(&i.parts(pw), &i.databases[0]);
            mb::verify(&uri, admin.ca(), &i.auth_source, &i.username, &want, self.data.timeout())
                .await
                .map_err(|e| {
                    Diagnostics::from(
                        Diagnostic::error(
                            "The CircleCI user cannot log in",
                            format!(
                                "{e}. The user is set up, but {} was not changed. Set verify = false if Terraform \
                                 cannot reach the hosts the way the Services machine does.",
                                i.path
                            ),
                        )
                        .at(AttrPath::root("verify")),
                    )
                })?;
        }

        let current = services
            .read_file(&i.path)
            .await
            .map_err(|e| ssh_diag("Could not read the customizations file", e))?
            .map(|f| String::from_utf8_lossy(&f.content).into_owned())
            .unwrap_or_default();
        let next = envfile::upsert_block(&current, file::BLOCK, &block)
            .map_err(|e| block_error(&i.path, e))?;
        services
            .write_file(&i.path, next.as_bytes(), 0o600)
            .await
            .map_err(|e| ssh_diag("Could not write the customizations file", e))?;
        log::info!("wrote the MongoDB block of {}", i.path);

        let mut state = planned.clone();
        state.set("id", Value::string(&i.path));
        state.set("file_sha256", Value::string(file_sha256(block.as_bytes())));
        state.set("drift", Value::string(""));
        Ok(state)
    }
}

#[async_trait]
impl Resource for ExternalMongo {
    fn type_name(&self) -> &'static str {
        "circleci_external_mongo"
    }

    fn schema(&self) -> Schema {
        Schema::new(
            0,
            Block::new()
                .description(
                    "Points CircleCI Server at an external MongoDB (runbook: *Setting up External MongoDB*). \
                     Ensures the user with `readWrite` on each database (created if missing; password and roles \
                     changed in place, never dropped and recreated), logs in as it, then writes the five \
                     `CIRCLE_SECRETS_MONGODB_*_URI` exports as a managed block of \
                     `/etc/circle-installation-customizations`: every line outside the block is left as it was. \
                     Needs the provider's `mongodb` block.",
                )
                .attr(Attribute::new("id", Type::String).computed().description("The customizations file's path."))
                .attr(Attribute::new("hosts", Type::list(Type::String)).required().description(
                    "`host:port` of each member, as the Services machine reaches them.",
                ))
                .attr(Attribute::new("replica_set", Type::String).optional().description(
                    "Replica set name; adds `replicaSet=NAME` to every URI.",
                ))
                .attr(Attribute::new("username", Type::String).optional().computed().description(
                    "The user CircleCI logs in as. Default `circle`. Changing it replaces the resource.",
                ))
                .attr(Attribute::new("password", Type::String).optional().sensitive().description(
                    "The user's password, kept (sensitive) in the state. Prefer `password_wo`; set exactly one.",
                ))
                .attr(Attribute::new("password_wo", Type::String).optional().sensitive().write_only().description(
                    "The user's password, write-only: never stored in plan or state (Terraform 1.11 or later).",
                ))
                .attr(Attribute::new("password_wo_version", Type::Number).optional().description(
                    "Any number; changing it applies the current `password_wo`.",
                ))
                .attr(Attribute::new("auth_source", Type::String).optional().computed().description(
                    "Database the user is defined in. Default `admin`. Changing it replaces the resource.",
                ))
                .attr(Attribute::new("tls", Type::Bool).optional().computed().description(
                    "Write `ssl=true` into the URIs, as the runbook does. Default `true`.",
                ))
                .attr(Attribute::new("options", Type::map(Type::String)).optional().description(
                    "More URI options, e.g. `{ maxIdleTimeMS = \"600000\" }` (the runbook's advice behind proxies).",
                ))
                .attr(Attribute::new("databases", Type::list(Type::String)).optional().computed().description(
                    "The four databases, in this order: main and action logs, build state, containers, remote \
                     containers. Default `[\"circle_ghe\", \"build_state_dev_ghe\", \"containers_dev_ghe\", \
                     \"remote_containers_dev_ghe\"]`. The user gets `readWrite` on each.",
                ))
                .attr(Attribute::new("config_path", Type::String).optional().computed().description(
                    "The customizations file. Default `/etc/circle-installation-customizations`. Changing it replaces the resource.",
                ))
                .attr(Attribute::new("verify", Type::Bool).optional().computed().description(
                    "Log in with the main URI and check the roles before writing. Default `true`.",
                ))
                .attr(Attribute::new("drop_user_on_destroy", Type::Bool).optional().computed().description(
                    "Drop the user on destroy. Default `false`: destroy removes only the block.",
                ))
                .attr(Attribute::new("file_sha256", Type::String).computed().description(
                    "SHA-256 of the managed block's content; refresh compares the block in the file with it.",
                ))
                .attr(Attribute::new("drift", Type::String).computed().description(
                    "What refresh found different (user missing, a role missing, the block gone); empty when all \
                     is as configured. A non-empty value plans an update that repairs it.",
                )),
        )
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        if let Some(hosts) = config.get("hosts").as_list() {
            if hosts.is_empty() {
                diags.attr_error(
                    AttrPath::root("hosts"),
                    "No hosts",
                    "list at least one host:port",
                );
            }
            for (n, h) in hosts.iter().enumerate() {
                let Some(h) = h.as_str() else { continue };
                let (host, port) = h.rsplit_once(':').unwrap_or((h, "27017"));
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if !validate::is_host(host) || port.parse::<u16>().map_or(true, |p| p == 0) {
                    diags.attr_error(
                        AttrPath::root("hosts").index(n as i64),
                        "Invalid host",
                        format!("{h:?} is not host:port"),
                    );
                }
            }
        }
        validate_password_pair(config, &mut diags);
        if let Some(d) = config.get("databases").as_list() {
            if d.len() != 4 {
                diags.attr_error(
                    AttrPath::root("databases"),
                    "Four databases expected",
                    "list main, build state, containers and remote containers, in that order",
                );
            }
            for (n, x) in d.iter().enumerate() {
                if let Some(x) = x.as_str() {
                    if x.is_empty()
                        || x.len() > 63
                        || x.contains(['/', '\\', '.', ' ', '"', '$', '\0'])
                    {
                        diags.attr_error(
                            AttrPath::root("databases").index(n as i64),
                            "Invalid database name",
                            format!("{x:?} is not a MongoDB database name"),
                        );
                    }
                }
            }
        }
        if config.get("username").as_str() == Some("") {
            diags.attr_error(
                AttrPath::root("username"),
                "Invalid username",
                "must not be empty",
            );
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
        let dbs: Vec<String> = file::DEFAULT_DATABASES
            .iter()
            .map(|s| s.to_string())
            .collect();
        super::set_defaults(
            cfg,
            planned,
            [
                ("username", Value::string(file::DEFAULT_USER)),
                ("auth_source", Value::string(file::DEFAULT_AUTH_SOURCE)),
                ("tls", Value::Bool(true)),
                ("databases", string_list(&dbs)),
                ("config_path", Value::string(file::DEFAULT_PATH)),
                ("verify", Value::Bool(true)),
                ("drop_user_on_destroy", Value::Bool(false)),
            ],
        );
        planned.set("id", planned.get("config_path").clone());
        planned.set("drift", Value::string(""));
        let known = [
            "hosts",
            "replica_set",
            "username",
            "auth_source",
            "tls",
            "options",
            "databases",
        ]
        .iter()
        .all(|n| planned.get(n).is_fully_known());
        let hash = match (known, configured_password(cfg)) {
            (true, Some(pw)) => inputs(planned)
                .block(pw)
                .map(|b| Value::string(file_sha256(b.as_bytes())))
                .unwrap_or(Value::Unknown),
            _ => Value::Unknown,
        };
        planned.set("file_sha256", hash);
        if req.is_create() {
            return vec![];
        }
        ["config_path", "username", "auth_source"]
            .iter()
            .filter(|a| changed(req.prior, planned, a))
            .map(|a| AttrPath::root(a))
            .collect()
    }

    async fn create(&self, planned: &Value, config: &Value) -> Result<Value, Diagnostics> {
        self.apply(None, planned, config).await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let i = inputs(state);
        let admin = self.data.mongo()?;
        let services = self.data.services()?;
        let mut drift = Vec::new();
        let mut fresh = state.clone();
        let text = services
            .read_file(&i.path)
            .await
            .map_err(|e| ssh_diag("Could not read the customizations file", e))?
            .map(|f| String::from_utf8_lossy(&f.content).into_owned());
        let block = match &text {
            Some(t) => {
                envfile::extract_block(t, file::BLOCK).map_err(|e| block_error(&i.path, e))?
            }
            None => None,
        };
        match block {
            Some(b) => fresh.set("file_sha256", Value::string(file_sha256(b.as_bytes()))),
            None => {
                drift.push(format!("the MongoDB block is missing from {}", i.path));
                fresh.set("file_sha256", Value::string(""));
            }
        }
        match admin
            .user(&i.auth_source, &i.username)
            .await
            .map_err(|e| mongo_diag("Could not look up the MongoDB user", e))?
        {
            None => drift.push(format!(
                "user {:?} is missing in {:?}",
                i.username, i.auth_source
            )),
            Some(have) => {
                for (r, d) in i.roles().iter().filter(|r| !have.contains(r)) {
                    drift.push(format!("role {r} on {d:?} is missing"));
                }
            }
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
        if let Some(f) = services
            .read_file(&i.path)
            .await
            .map_err(|e| ssh_diag("Could not read the customizations file", e))?
        {
            let text = String::from_utf8_lossy(&f.content).into_owned();
            let next =
                envfile::remove_block(&text, file::BLOCK).map_err(|e| block_error(&i.path, e))?;
            if next != text {
                services
                    .write_file(&i.path, next.as_bytes(), f.mode)
                    .await
                    .map_err(|e| ssh_diag("Could not write the customizations file", e))?;
            }
        }
        if i.drop_user {
            let admin = self.data.mongo()?;
            admin
                .drop_user(&i.auth_source, &i.username)
                .await
                .map_err(|e| mongo_diag("Could not drop the MongoDB user", e))?;
        }
        Ok(())
    }

    async fn import(&self, id: &str) -> Result<Value, Diagnostics> {
        let (text, _) = super::managed_file::read_for_import(
            &self.data,
            id,
            file::DEFAULT_PATH,
            "customizations",
        )
        .await?;
        let block = envfile::extract_block(&text, file::BLOCK)
            .map_err(|e| block_error(id, e))?
            .ok_or_else(|| {
                Diagnostics::from(Diagnostic::error(
                    "Nothing to import",
                    format!("{id} has no block managed by this provider (no \"# BEGIN terraform-provider-circleci {}\" line)", file::BLOCK),
                ))
            })?;
        let uris = file::parse_block(&block).map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Cannot import this block",
                format!("{id}: {e}"),
            ))
        })?;
        let main = &uris[0].1;
        let mut q = main.query.clone();
        let auth = q
            .remove("authSource")
            .unwrap_or_else(|| file::DEFAULT_AUTH_SOURCE.into());
        let rs = q.remove("replicaSet");
        let tls = q
            .remove("ssl")
            .or_else(|| q.remove("tls"))
            .is_some_and(|v| v == "true");
        let dbs: Vec<String> = [0, 2, 3, 4]
            .iter()
            .map(|n| uris[*n].1.database.clone())
            .collect();
        let mut v = Value::Null;
        v.set("id", Value::string(id));
        v.set("config_path", Value::string(id));
        v.set("hosts", string_list(&main.hosts));
        v.set("replica_set", rs.map(Value::string).unwrap_or(Value::Null));
        v.set("username", Value::string(&main.username));
        v.set("auth_source", Value::string(auth));
        v.set("tls", Value::Bool(tls));
        v.set(
            "options",
            if q.is_empty() {
                Value::Null
            } else {
                Value::Map(q.into_iter().map(|(k, x)| (k, Value::string(x))).collect())
            },
        );
        v.set("databases", string_list(&dbs));
        v.set("verify", Value::Bool(true));
        v.set("drop_user_on_destroy", Value::Bool(false));
        v.set("file_sha256", Value::string(file_sha256(block.as_bytes())));
        v.set("drift", Value::string(""));
        Ok(v)
    }
}
