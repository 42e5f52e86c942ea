//! `circleci_external_mongo`: the runbook's "Setting up External MongoDB". Ensures the
//! CircleCI user with readWrite on its databases (changed in place, never dropped and
//! recreated), and writes the five connection strings as a managed block of
//! /etc/circle-installation-customizations: every line outside the block is the user's.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::config_file::{
    cannot_import, Change, Common, FileResource, Halted, PlannedContent, Prepared, Refresh, Spec,
};
use super::model::{Known, Model};
use super::validate::{self, Check};
use crate::backends::mongo::{self as mb, Role};
use crate::backends::ssh::ServicesHost;
use crate::backends::tunnel::Route;
use crate::circleci::mongo::{self as file, UriParts};
use crate::plugin::{AttrPath, Diagnostic, Diagnostics, PlanRequest, Value};
use crate::provider::ProviderData;
use crate::secret::Secret;

pub(crate) struct ExternalMongo {
    data: Arc<ProviderData>,
}

impl ExternalMongo {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
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
    ca_bundle: String,
    path: String,
    verify: bool,
    drop_user: bool,
}

crate::model! {
    /// `circleci_external_mongo`'s own attributes.
    pub(crate) struct Mongo / MongoAtPlan {
        hosts: Vec<String> [required, check(Check::Value(validate::seed_list)), doc(
            "`host:port` of each member, as the Services machine reaches them."
        )],
        replica_set: Option<String> [optional, doc(
            "Replica set name; adds `replicaSet=NAME` to every URI."
        )],
        username: String [default(file::DEFAULT_USER.to_string()), check(Check::NonEmpty), replaces,
            doc("The user CircleCI logs in as.")],
        password: Option<Secret> [password_kept("The user's password")],
        password_wo: Option<Secret> [password_write_only("The user's password")],
        password_wo_version: Option<f64> [password_version("the user's password and the block")],
        auth_source: String [default(file::DEFAULT_AUTH_SOURCE.to_string()), replaces,
            doc("Database the user is defined in.")],
        tls: bool [default(true), doc("Write `ssl=true` into the URIs, as the runbook does.")],
        options: Option<BTreeMap<String, String>> [optional, doc(
            "More URI options, e.g. `{ maxIdleTimeMS = \"600000\" }` (the runbook's advice behind proxies)."
        )],
        databases: Vec<String> [default(default_databases()), check(Check::Value(check_databases)), doc(
            "The four databases, in this order: main and action logs, build state, containers, remote \
             containers. The user gets `readWrite` on each."
        )],
        drop_user_on_destroy: bool [default(false), doc(
            "Drop the user on destroy. `false`: destroy removes only the block."
        )],
        services_ca_bundle: String [default(SYSTEM_CA_BUNDLE.to_string()), check(Check::RemotePath), doc(
            "The Services machine's CA store, the bundle `update-ca-certificates` writes. With `tls` \
             and the check made through the Services machine (`verify_via_services_host`, or the \
             `mongodb` block's `via_services_host`), the check trusts exactly this bundle, read over \
             SFTP: the runbook's `openssl s_client` on the services box, since CircleCI there trusts \
             nothing else. A CA missing from it is saved by `circleci_services_ca_certificate`."
        )],
    }
}

/// The four database names (elements not known yet pass).
fn check_databases(v: &Value, at: &AttrPath, diags: &mut Diagnostics) {
    let Some(d) = v.as_list() else { return };
    if d.len() != 4 {
        diags.attr_error(
            at.clone(),
            "Four databases expected",
            "list main, build state, containers and remote containers, in that order",
        );
    }
    for (n, x) in d.iter().enumerate() {
        if x.is_null() {
            diags.attr_error(
                at.clone().index(n),
                "Invalid database name",
                "a database name must not be null",
            );
        }
        if let Some(x) = x.as_str() {
            if x.is_empty() || x.len() > 63 || x.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
                diags.attr_error(
                    at.clone().index(n),
                    "Invalid database name",
                    format!("{x:?} is not a MongoDB database name"),
                );
            }
        }
    }
}

fn default_databases() -> Vec<String> {
    file::DEFAULT_DATABASES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The settings of a planned value or a stored state (defaults filled).
fn inputs(v: &Value) -> Result<Inputs, Diagnostics> {
    let m = Mongo::decode(v)?;
    let common = Common::of(v)?;
    Ok(Inputs {
        hosts: m.hosts,
        replica_set: m.replica_set,
        username: m.username,
        auth_source: m.auth_source,
        tls: m.tls,
        options: m.options.unwrap_or_default(),
        databases: m.databases,
        ca_bundle: m.services_ca_bundle,
        path: common.config_path,
        verify: common.verify,
        drop_user: m.drop_user_on_destroy,
    })
}

/// The settings the connection strings are made of, once each is known (at plan).
fn uri_inputs(v: &Value) -> Option<Inputs> {
    let p = MongoAtPlan::decode(v).ok()?;
    let optional = |k: Known<Option<String>>| match k {
        Known::Value(x) => Some(x),
        Known::Null => Some(None),
        Known::Unknown => None,
    };
    Some(Inputs {
        hosts: p.hosts.known()?,
        replica_set: optional(p.replica_set)?,
        username: p.username.known()?,
        auth_source: p.auth_source.known()?,
        tls: p.tls.known()?,
        options: match p.options {
            Known::Value(o) => o.unwrap_or_default(),
            Known::Null => BTreeMap::new(),
            Known::Unknown => return None,
        },
        databases: p.databases.known()?,
        ca_bundle: String::new(),
        path: String::new(),
        verify: false,
        drop_user: false,
    })
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

/// Where Debian's (and Ubuntu's) `update-ca-certificates` writes the CA bundle.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The Services machine's CA bundle: where it was read (for messages) and its PEM.
async fn services_store(
    h: &ServicesHost,
    bundle: &str,
    path: &str,
) -> Result<(String, Vec<u8>), Diagnostics> {
    let origin = format!("the Services machine's CA store {bundle}");
    let at = AttrPath::root("services_ca_bundle");
    match h.read_file(bundle).await {
        Ok(Some(f)) => Ok((origin, f.content)),
        Ok(None) => Err(Diagnostic::error(
            "The Services machine has no CA store there",
            format!(
                "{bundle} is missing on {}, so CircleCI there could not verify MongoDB's certificate. Run \
                 update-ca-certificates there, or set services_ca_bundle. Nothing was written to {path}.",
                h.config().target()
            ),
        )
        .at(at)
        .into()),
        Err(e) => Err(Diagnostic::error(
            "Could not read the Services machine's CA store",
            format!(
                "{bundle}: {}. Nothing was written to {path}.",
                crate::backends::chain(&e)
            ),
        )
        .at(at)
        .into()),
    }
}

fn mongo_diag(summary: &str, e: mb::MongoError) -> Diagnostics {
    let summary = match e {
        mb::MongoError::Unsupported { .. } => "MongoDB version not supported",
        mb::MongoError::NoPrimary { .. } => "MongoDB is not reachable",
        mb::MongoError::Auth { .. } => "MongoDB refused the admin login",
        _ => summary,
    };
    Diagnostic::error(summary, crate::backends::chain(&e)).into()
}

#[async_trait]
impl FileResource for ExternalMongo {
    type Pending = ();
    type Own = Mongo;

    const SPEC: Spec = Spec {
        type_name: "circleci_external_mongo",
        description: "Points CircleCI Server at an external MongoDB (runbook: *Setting up External \
                      MongoDB*). Ensures the user with `readWrite` on each database (created if missing; \
                      password and roles changed in place, never dropped and recreated), logs in as it, then \
                      writes the five `CIRCLE_SECRETS_MONGODB_*_URI` exports as a managed block of \
                      `/etc/circle-installation-customizations`: every line outside the block is left as it \
                      was. Needs the provider's `mongodb` block.",
        what: "MongoDB",
        default_path: file::DEFAULT_PATH,
        default_path_doc: "`/etc/circle-installation-customizations`",
        verify_doc: "Log in with the main URI and check the roles before writing. Default `true`.",
        drift_doc: ", the user missing, a role missing",
        secret_in_file: true,
        changes: Some("The MongoDB user (its password and roles)"),
        compat: None,
    };

    async fn plan(&self, req: &PlanRequest<'_>, planned: &mut Value, diags: &mut Diagnostics) {
        let password_changes = req.is_create()
            || match (MongoAtPlan::decode(req.prior), MongoAtPlan::decode(planned)) {
                (Ok(was), Ok(now)) => {
                    was.password != now.password
                        || was.password_wo_version != now.password_wo_version
                }
                _ => true,
            };
        if password_changes {
            if let Ok(admin) = self.data.mongo() {
                if !admin.uses_tls() {
                    diags.push(
                        Diagnostic::warning(
                            "MongoDB admin connection without TLS",
                            format!(
                                "the provider's mongodb.uri for {} does not use TLS, so the CircleCI user's new \
                                 password travels to MongoDB in plain text (whatever this resource's tls says). \
                                 Add tls=true to the connection string, or set mongodb.tls_ca_file.",
                                admin.hosts()
                            ),
                        )
                        .at(super::password_attr(req.config)),
                    );
                }
            }
        }
    }

    fn planned_content(&self, planned: &Value, config: &Value) -> PlannedContent {
        let Some(i) = uri_inputs(planned) else {
            return PlannedContent::Unknown;
        };
        PlannedContent::with_password(config, |pw| i.block(pw))
    }

    async fn prepare(&self, c: Change<'_>) -> Result<Prepared<()>, Halted> {
        let (prior, planned, config) = (c.prior, c.planned, c.config);
        let i = inputs(planned)?;
        // Read before anything changes: the roles this resource granted.
        let ours_before: Vec<Role> = match prior {
            Some(p) => inputs(p)?.roles(),
            None => vec![],
        };
        let pw = super::required_password(config)?;
        let pw = pw.expose();
        let admin = self.data.mongo()?;
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
            let route = self
                .data
                .check_route(planned, || Ok(admin.route().clone()))?;
            // Through the Services machine, TLS trusts what CircleCI there trusts.
            let store = match (&route, i.tls) {
                (Route::Tunnel(h), true) => Some(services_store(h, &i.ca_bundle, &i.path).await?),
                _ => None,
            };
            let trust = match &store {
                Some((origin, pem)) => mb::Trust::Pem { origin, pem },
                None => mb::Trust::Ca(admin.ca()),
            };
            mb::verify(&uri, (trust, &route), &i.auth_source, &i.username, &want, self.data.timeout())
                .await
                .map_err(|e| {
                    let hint = match &store {
                        Some((origin, _)) if matches!(e, mb::MongoError::NoPrimary { .. }) => format!(
                            " If the certificate is not trusted: CircleCI on the Services machine trusts only \
                             {origin}; save the CA there as /usr/local/share/ca-certificates/NAME.crt and run \
                             update-ca-certificates (circleci_services_ca_certificate does both)."
                        ),
                        _ => String::new(),
                    };
                    Diagnostics::from(
                        Diagnostic::error(
                            "The CircleCI user cannot log in",
                            format!(
                                "{}. The user is set up, but {} was not changed.{hint} Set verify = false if \
                                 Terraform cannot reach the hosts the way the Services machine does.",
                                crate::backends::chain(&e),
                                i.path
                            ),
                        )
                        .at(AttrPath::root("verify")),
                    )
                })?;
        }

        Ok(Prepared {
            state: planned.clone(),
            content: Some(block),
            pending: (),
        })
    }

    async fn refresh(&self, r: Refresh<'_>) -> Result<(), Diagnostics> {
        let (state, drift) = (r.state, r.drift);
        let i = inputs(state)?;
        let admin = self.data.mongo()?;
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
        Ok(())
    }

    async fn delete_backend(&self, prior: &Value) -> Result<Diagnostics, Diagnostics> {
        let i = inputs(prior)?;
        if i.drop_user {
            let admin = self.data.mongo()?;
            admin
                .drop_user(&i.auth_source, &i.username)
                .await
                .map_err(|e| mongo_diag("Could not drop the MongoDB user", e))?;
        }
        Ok(Diagnostics::new())
    }

    async fn import(&self, id: &str, text: &str) -> Result<Value, Diagnostics> {
        let uris = file::parse_block(text).map_err(|e| cannot_import(id, e))?;
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
        Mongo {
            hosts: main.hosts.clone(),
            replica_set: rs,
            username: main.username.clone(),
            password: None,
            password_wo: None,
            password_wo_version: None,
            auth_source: auth,
            tls,
            options: (!q.is_empty()).then_some(q),
            databases: dbs,
            drop_user_on_destroy: false,
            services_ca_bundle: SYSTEM_CA_BUNDLE.to_string(),
        }
        .encode(&mut v);
        Ok(v)
    }
}
