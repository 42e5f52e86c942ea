//! The provider's own configuration, and the clients it hands to resources. Nothing
//! connects during configure: Terraform configures the provider on every run. One
//! module per configuration block; each declares its attributes with `model!` (the
//! schema, and each attribute's own check) and offers `validate()` (the rules across
//! attributes) and `build()` (the client's settings, with the environment variables
//! as fallbacks). [`ProviderConfig`] gathers the blocks.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::backends::aws::Aws;
use crate::backends::mongo::MongoAdmin;
use crate::backends::postgres::PgAdmin;
use crate::backends::ssh::ServicesHost;
use crate::backends::tunnel::Route;
use crate::backends::vault::Vault;
use crate::plugin::{
    AttrPath, ClientInfo, Diagnostic, Diagnostics, Provider, Resource, Schema, Value,
};
use crate::resources;
use crate::resources::model::{self, Known, Model, One};
use crate::resources::validate::Check;

mod aws;
#[cfg(test)]
mod fuzz_tests;
mod mongodb;
mod postgres;
mod services_host;
mod vault;

crate::model! {
    /// The provider's configuration: the provider-wide `via_services_host`, and one
    /// optional block per backend. Every attribute is optional and may be unknown
    /// until apply (a block that uses another resource's outputs).
    #[derive(Default)]
    pub(crate) struct ProviderConfig {
        via_services_host: Known<bool> [optional, doc(
            "Reach the backends (the `postgres`, `mongodb` and `vault` blocks' servers, and the Redis, RabbitMQ \
             and Nomad servers `circleci_external_redis`, `circleci_external_rabbitmq` and \
             `circleci_external_nomad` check) through the Services \
             machine: \
             each connection is an SSH `direct-tcpip` channel of the provider's one SSH connection to it, the \
             host name resolved there, TLS still verifying the server's own name. For backends only the \
             Services machine can reach. Each block's own `via_services_host` overrides it. Default `false`."
        )],
        services_host: Known<One<services_host::ServicesHostBlock>> [optional, doc(services_host::DOC)],
        postgres: Known<One<postgres::PostgresBlock>> [optional, doc(postgres::DOC)],
        vault: Known<One<vault::VaultBlock>> [optional, doc(vault::DOC)],
        mongodb: Known<One<mongodb::MongodbBlock>> [optional, doc(mongodb::DOC)],
        aws: Known<One<aws::AwsBlock>> [optional, doc(aws::DOC)],
    }
}

/// The provider's description.
const DOC: &str = "Moves CircleCI Server 2.17's datastores to external services, following the \
                   runbook *Adding External Services to CircleCI Server v2.17*.";

pub(crate) const SERVICES_HOST: &str = "services_host";
pub(crate) const POSTGRES: &str = "postgres";
pub(crate) const VAULT: &str = "vault";
pub(crate) const MONGODB: &str = "mongodb";
pub(crate) const AWS: &str = "aws";
pub(crate) const VIA: &str = "via_services_host";

/// Reads an environment variable: `None` when it is unset (or not UTF-8). Validation
/// and configuration take one, so that tests need not change the process's own.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process's environment.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One client, made from one configuration block: set by configure, read by resources.
/// Empty means the block (and its environment variables) is absent; `missing` then
/// says how to add it.
struct Slot<T> {
    value: RwLock<Option<Result<Arc<T>, Diagnostics>>>,
    missing: (&'static str, &'static str),
}

impl<T> Slot<T> {
    const fn new(summary: &'static str, detail: &'static str) -> Self {
        Slot {
            value: RwLock::new(None),
            missing: (summary, detail),
        }
    }

    fn current(&self) -> Result<Arc<T>, Diagnostics> {
        match &*self.value.read().unwrap_or_else(|e| e.into_inner()) {
            Some(r) => r.clone(),
            None => Err(Diagnostic::error(self.missing.0, self.missing.1).into()),
        }
    }

    fn set(&self, v: Option<Result<Arc<T>, Diagnostics>>) {
        *self.value.write().unwrap_or_else(|e| e.into_inner()) = v;
    }

    /// Configures the slot from block `name`: a block not known yet fails only when a
    /// resource uses it; an absent block (with no `fallback` environment variable set)
    /// leaves the slot empty; otherwise `build` decides, given the block (an absent one
    /// reads as empty), and its errors on a written block are returned now.
    fn configure<M: Model + Default>(
        &self,
        name: &str,
        b: &Known<One<M>>,
        (env, fallback): (Env<'_>, Option<&str>),
        build: impl FnOnce(&M) -> Result<T, Diagnostics>,
    ) -> Diagnostics {
        let written = match b {
            Known::Value(One(m)) if fully_known(m) => Some(m),
            Known::Null => None,
            Known::Value(_) | Known::Unknown => {
                let why = format!(
                    "{name} depends on values known only after apply; apply those resources first (-target)"
                );
                self.set(Some(Err(Diagnostic::error(
                    "Provider configuration not known yet",
                    why,
                )
                .at(AttrPath::root(name))
                .into())));
                return Diagnostics::new();
            }
        };
        if written.is_none() && fallback.is_some_and(|v| env(v).is_none()) {
            self.set(None);
            return Diagnostics::new();
        }
        let empty;
        let m = match written {
            Some(m) => m,
            None => {
                empty = M::default();
                &empty
            }
        };
        let r = build(m).map(Arc::new);
        let diags = match &r {
            Err(d) if written.is_some() => d.clone(),
            _ => Diagnostics::new(),
        };
        self.set(Some(r));
        diags
    }
}

/// What resources get from the configured provider.
pub(crate) struct ProviderData {
    services: Slot<ServicesHost>,
    postgres: Slot<PgAdmin>,
    vault: Slot<Vault>,
    mongo: Slot<MongoAdmin>,
    aws: Slot<Aws>,
    /// The provider-wide `via_services_host`: how resources' own checks reach servers.
    via: std::sync::atomic::AtomicBool,
    /// The Services machine's file digest keys, read or made by this process.
    digest_keys: crate::resources::file_digest::KeyCache,
}

impl Default for ProviderData {
    fn default() -> Self {
        ProviderData {
            services: Slot::new(
                "services_host not configured",
                "add a services_host block to the provider \"circleci\" configuration: every resource writes a \
                 config file on the CircleCI Services machine over SSH",
            ),
            postgres: Slot::new(
                "postgres not configured",
                "add a postgres block (the admin connection used to create the role and databases) to the \
                 provider \"circleci\" configuration, or set PGHOST and the other libpq environment variables",
            ),
            vault: Slot::new(
                "vault not configured",
                "add a vault block (address and a token allowed to manage transit keys, policies and tokens) to \
                 the provider \"circleci\" configuration, or set VAULT_ADDR and VAULT_TOKEN",
            ),
            mongo: Slot::new(
                "mongodb not configured",
                "add a mongodb block (a connection string for a user that may manage users) to the provider \
                 \"circleci\" configuration, or set MONGODB_URI",
            ),
            aws: Slot::new(
                "Provider not configured",
                "the provider was not configured before this resource was used (a bug in Terraform or this provider)",
            ),
            via: std::sync::atomic::AtomicBool::new(false),
            digest_keys: Default::default(),
        }
    }
}

impl ProviderData {
    /// The Services machine, or an error saying why it is not usable.
    pub(crate) fn services(&self) -> Result<Arc<ServicesHost>, Diagnostics> {
        self.services.current()
    }

    /// The file digest keys this process has read or made on the Services machine.
    pub(crate) fn digest_keys(&self) -> &crate::resources::file_digest::KeyCache {
        &self.digest_keys
    }

    /// The PostgreSQL admin connection settings, or why there are none.
    pub(crate) fn postgres(&self) -> Result<Arc<PgAdmin>, Diagnostics> {
        self.postgres.current()
    }

    /// The Vault admin client, or why there is none.
    pub(crate) fn vault(&self) -> Result<Arc<Vault>, Diagnostics> {
        self.vault.current()
    }

    /// The MongoDB admin client, or why there is none.
    pub(crate) fn mongo(&self) -> Result<Arc<MongoAdmin>, Diagnostics> {
        self.mongo.current()
    }

    /// The AWS settings (the chain is loaded on first use), or why they are unusable.
    pub(crate) fn aws(&self) -> Result<Arc<Aws>, Diagnostics> {
        self.aws.current()
    }

    /// How a resource's own check reaches a server: through the Services machine when
    /// the provider's `via_services_host` says so.
    pub(crate) fn route(&self) -> Result<Route, Diagnostics> {
        if self.via.load(std::sync::atomic::Ordering::Relaxed) {
            self.services().map(Route::Tunnel)
        } else {
            Ok(Route::Direct)
        }
    }

    /// How a resource's check (`verify`) reaches its server: as its own
    /// `verify_via_services_host` says, else `default` (how the provider reaches it).
    pub(crate) fn check_route(
        &self,
        planned: &Value,
        default: impl FnOnce() -> Result<Route, Diagnostics>,
    ) -> Result<Route, Diagnostics> {
        match planned.get(crate::resources::VERIFY_VIA).as_bool() {
            Some(true) => self.services().map(Route::Tunnel),
            Some(false) => Ok(Route::Direct),
            None => default(),
        }
    }

    /// The SSH timeout, also used for the checks resources make.
    pub(crate) fn timeout(&self) -> Duration {
        match self.services.current() {
            Ok(h) => h.config().timeout,
            Err(_) => DEFAULT_TIMEOUT,
        }
    }
}

/// The CircleCI provider: its schema, its configuration and its resources.
pub struct CircleCiProvider {
    data: Arc<ProviderData>,
}

impl Default for CircleCiProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl CircleCiProvider {
    /// A provider not yet configured.
    pub fn new() -> Self {
        CircleCiProvider {
            data: Arc::new(ProviderData::default()),
        }
    }
}

/// The longest deadline accepted for any single operation.
const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// A deadline attribute's check: a duration of at most an hour.
const DEADLINE: Check = Check::Duration {
    min_secs: 0,
    max_secs: MAX_DEADLINE.as_secs(),
};

/// The description of a deadline attribute (`timeout = "30s"`, at most an hour).
fn deadline_doc(what: &str, default: &str) -> String {
    format!(
        "{what}, e.g. `{default}` (default). At most `1h`. An operation that takes longer fails with an \
         error naming the server, the operation and this deadline."
    )
}

/// The value of a deadline attribute at `at`, else `default` (a bad value adds an
/// error and gives the default).
fn deadline(
    t: &Known<String>,
    at: AttrPath,
    default: Duration,
    diags: &mut Diagnostics,
) -> Duration {
    match t.value() {
        Some(t) => crate::resources::validate::duration_at_most(t, MAX_DEADLINE, at, diags)
            .unwrap_or(default),
        None => default,
    }
}

/// The description of a backend block's own `via_services_host`.
const VIA_DOC: &str =
    "Reach these servers through the Services machine (SSH `direct-tcpip` channels of the provider's SSH \
     connection), with host names resolved on its side. Default: the provider's `via_services_host`.";

/// Whether a block goes through the Services machine: its own setting `own`, else the
/// provider-wide `all`.
fn via(own: &Known<bool>, all: &Known<bool>) -> bool {
    own.value().or(all.value()).copied().unwrap_or(false)
}

/// A block's own `via_services_host`: null when the block is absent or not known.
fn own_via<M>(b: &Known<One<M>>, via: fn(&M) -> &Known<bool>) -> Known<bool> {
    match b {
        Known::Value(One(m)) => via(m).clone(),
        Known::Null | Known::Unknown => Known::Null,
    }
}

/// The block, when the configuration writes it (known or partly known).
fn written<M>(b: &Known<One<M>>) -> Option<&M> {
    b.value().map(|One(m)| m)
}

/// True when no attribute of the block waits for the apply.
fn fully_known<M: Model>(m: &M) -> bool {
    let mut v = Value::Null;
    m.encode(&mut v);
    v.is_fully_known()
}

/// An attribute, or else the environment variable `name` (empty counts as unset).
fn env_or<T: Clone + From<String>>(v: &Known<T>, env: Env<'_>, name: &str) -> Option<T> {
    match v.value() {
        Some(s) => Some(s.clone()),
        None => env(name).filter(|s| !s.is_empty()).map(T::from),
    }
}

pub(crate) fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

#[async_trait]
impl Provider for CircleCiProvider {
    fn schema(&self) -> Schema {
        Schema::new(0, model::block(ProviderConfig::decls(), DOC))
    }

    fn resources(&self) -> Vec<Arc<dyn Resource>> {
        resources::all(self.data.clone())
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        validate(config, &process_env)
    }

    async fn configure(&self, config: &Value, _: &ClientInfo) -> Diagnostics {
        let c = match ProviderConfig::decode(config) {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let d = &self.data;
        // Keys read for an earlier configuration's Services machine are not this one's.
        d.digest_keys.clear().await;
        let env: Env<'_> = &process_env;
        let mut diags = Diagnostics::new();
        // A missing services_host block surfaces only when a resource needs the Services
        // machine, so a configuration with no resources yet still plans; a wrong block
        // fails here. It comes first: the other blocks may go through it.
        diags.extend(d.services.configure(
            SERVICES_HOST,
            &c.services_host,
            (env, Some("CIRCLECI_SERVICES_HOST")),
            |b| services_host::build(b, env).map(ServicesHost::new),
        ));
        d.via.store(
            c.via_services_host.value().copied().unwrap_or(false),
            std::sync::atomic::Ordering::Relaxed,
        );
        let route = |own: &Known<bool>| -> Result<Route, Diagnostics> {
            if via(own, &c.via_services_host) {
                d.services.current().map(Route::Tunnel)
            } else {
                Ok(Route::Direct)
            }
        };
        diags.extend(
            d.postgres
                .configure(POSTGRES, &c.postgres, (env, Some("PGHOST")), |b| {
                    let mut cfg = postgres::build(b, env)?;
                    cfg.route = route(&b.via_services_host)?;
                    Ok(PgAdmin::new(cfg))
                }),
        );
        diags.extend(
            d.vault
                .configure(VAULT, &c.vault, (env, Some("VAULT_ADDR")), |b| {
                    let mut cfg = vault::build(b, env)?;
                    cfg.route = route(&b.via_services_host)?;
                    Ok(Vault::new(cfg))
                }),
        );
        // A MongoDB block is checked when a resource uses it.
        let _ = d
            .mongo
            .configure(MONGODB, &c.mongodb, (env, Some("MONGODB_URI")), |b| {
                Ok(mongodb::build(b, env)?.with_route(route(&b.via_services_host)?))
            });
        diags.extend(d.aws.configure(AWS, &c.aws, (env, None), aws::build));
        diags
    }
}

/// The provider configuration's checks, with `env` as the environment.
fn validate(config: &Value, env: Env<'_>) -> Diagnostics {
    let c = match ProviderConfig::decode(config) {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let mut diags = Diagnostics::new();
    // Each attribute's own check (declared with it), then the rules across attributes.
    model::validate(ProviderConfig::decls(), config, &mut diags);
    if let Some(b) = written(&c.services_host) {
        services_host::validate(b, &mut diags);
    }
    if let Some(b) = written(&c.postgres) {
        postgres::validate(b, env, &mut diags);
    }
    if let Some(b) = written(&c.vault) {
        vault::validate(b, &mut diags);
    }
    // Also with no block: MONGODB_URI alone configures it.
    mongodb::validate(written(&c.mongodb), env, &mut diags);
    let backends = [
        (
            POSTGRES,
            c.postgres.is_null(),
            own_via(&c.postgres, |b| &b.via_services_host),
        ),
        (
            MONGODB,
            c.mongodb.is_null(),
            own_via(&c.mongodb, |b| &b.via_services_host),
        ),
        (
            VAULT,
            c.vault.is_null(),
            own_via(&c.vault, |b| &b.via_services_host),
        ),
    ];
    for (block, absent, own) in backends {
        let services = !c.services_host.is_null() || env("CIRCLECI_SERVICES_HOST").is_some();
        if via(&own, &c.via_services_host) && !absent && !services {
            let at = if own.is_null() {
                AttrPath::root(VIA)
            } else {
                AttrPath::root(block).attr(VIA)
            };
            diags.attr_error(
                at,
                "No Services machine to go through",
                format!("{block} goes through the Services machine (via_services_host), but there is no services_host block"),
            );
        }
    }
    diags
}

/// Configurations and environments for the blocks' tests.
#[cfg(test)]
pub(crate) mod test_config {
    use super::{Env, ProviderConfig};
    use crate::plugin::{Diagnostics, Value};
    use crate::resources::model::{Known, Model, One};

    /// Where each diagnostic points, as Terraform shows it (`postgres.port`).
    pub(crate) fn paths(d: &Diagnostics) -> Vec<String> {
        d.0.iter()
            .filter_map(|x| x.path.as_ref().map(ToString::to_string))
            .collect()
    }

    /// The whole configuration Terraform would send: `f` fills in what is written.
    pub(crate) fn config(f: impl FnOnce(&mut ProviderConfig)) -> Value {
        let mut c = ProviderConfig::default();
        f(&mut c);
        let mut v = Value::Null;
        c.encode(&mut v);
        v
    }

    /// A written block.
    pub(crate) fn block<M: Default>(f: impl FnOnce(&mut M)) -> Known<One<M>> {
        let mut m = M::default();
        f(&mut m);
        Known::Value(One(m))
    }

    /// A known string.
    pub(crate) fn s<T: From<String>>(v: &str) -> Known<T> {
        Known::Value(T::from(v.to_string()))
    }

    /// An environment holding only `pairs`.
    pub(crate) fn env_of(
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    /// An empty environment.
    pub(crate) const NO_ENV: Env<'static> = &|_| None;
}

#[cfg(test)]
mod tests {
    use super::test_config::{block, config, env_of, paths, s, NO_ENV};
    use super::*;
    use crate::plugin::value::Number;

    #[test]
    fn via_services_host_needs_a_services_machine() {
        let pg = |c: &mut ProviderConfig| {
            c.via_services_host = Known::Value(true);
            c.postgres = block(|p: &mut postgres::PostgresBlock| p.host = s("db.internal"));
        };
        let d = validate(&config(pg), NO_ENV);
        assert_eq!(paths(&d), ["via_services_host"]);
        assert!(d.0[0].detail.starts_with("postgres goes through"), "{d}");
        let d = validate(
            &config(pg),
            &env_of(&[("CIRCLECI_SERVICES_HOST", "10.0.0.5")]),
        );
        assert!(d.is_empty(), "{d}");
        // The block's own setting wins, and is where the error points.
        let d = validate(
            &config(|c| {
                c.vault = block(|v: &mut vault::VaultBlock| {
                    v.address = s("https://vault.internal:8200");
                    v.via_services_host = Known::Value(true);
                })
            }),
            NO_ENV,
        );
        assert_eq!(paths(&d), ["vault.via_services_host"]);
        let d = validate(
            &config(|c| {
                c.via_services_host = Known::Value(true);
                c.mongodb = block(|m: &mut mongodb::MongodbBlock| {
                    m.via_services_host = Known::Value(false)
                });
            }),
            NO_ENV,
        );
        assert!(d.is_empty(), "{d}");
    }

    #[test]
    fn checks_name_the_block_and_attribute() {
        let d = validate(
            &config(|c| {
                c.postgres = block(|p: &mut postgres::PostgresBlock| {
                    p.port = Known::Value(Number::Int(70000));
                    p.lock_timeout = s("2h");
                });
                c.vault = block(|v: &mut vault::VaultBlock| v.timeout = s("soon"));
                c.mongodb = block(|m: &mut mongodb::MongodbBlock| m.timeout = s("0s"));
            }),
            NO_ENV,
        );
        assert_eq!(
            paths(&d),
            [
                "postgres.port",
                "postgres.lock_timeout",
                "vault.timeout",
                "mongodb.timeout"
            ]
        );
        assert_eq!(d.0[0].detail, "Int(70000) is not a port number (1-65535)");
        assert_eq!(d.0[1].detail, "must be at most 1h");
    }

    #[test]
    fn unknown_values_and_blocks_are_checked_once_known() {
        // A block with one unknown attribute: the others are still checked.
        let d = validate(
            &config(|c| {
                c.services_host = block(|h: &mut services_host::ServicesHostBlock| {
                    h.host = s("bad host!");
                    h.port = Known::Unknown;
                    h.host_key = Known::Unknown;
                })
            }),
            NO_ENV,
        );
        assert_eq!(paths(&d), ["services_host.host"]);
        // A wholly unknown block: nothing to check yet.
        let d = validate(
            &config(|c| {
                c.services_host = Known::Unknown;
                c.postgres = Known::Unknown;
                c.via_services_host = Known::Unknown;
            }),
            NO_ENV,
        );
        assert!(d.is_empty(), "{d}");
    }

    #[test]
    fn a_block_not_known_yet_fails_only_when_used() {
        let slot: Slot<u16> = Slot::new("postgres not configured", "add it");
        let partial = block(|p: &mut postgres::PostgresBlock| p.host = Known::Unknown);
        let d = slot.configure(POSTGRES, &partial, (NO_ENV, Some("PGHOST")), |_| Ok(1));
        assert!(d.is_empty());
        let e = slot.current().err().unwrap();
        assert_eq!(e.0[0].summary, "Provider configuration not known yet");
        assert_eq!(paths(&e), ["postgres"]);
        // Absent, and no PGHOST: not configured.
        let absent: Known<One<postgres::PostgresBlock>> = Known::Null;
        slot.configure(POSTGRES, &absent, (NO_ENV, Some("PGHOST")), |_| Ok(1));
        assert_eq!(
            slot.current().err().unwrap().0[0].summary,
            "postgres not configured"
        );
        // Absent, with PGHOST: built from an empty block; its errors wait for a use.
        let env = env_of(&[("PGHOST", "db.internal")]);
        let d = slot.configure(POSTGRES, &absent, (&env, Some("PGHOST")), |b| {
            assert!(b.host.is_null());
            Err(Diagnostic::error("no", "no").into())
        });
        assert!(d.is_empty());
        assert!(slot.current().is_err());
        let d = slot.configure(
            POSTGRES,
            &block(|_| {}),
            (NO_ENV, Some("PGHOST")),
            |_: &postgres::PostgresBlock| Err(Diagnostic::error("no", "no").into()),
        );
        assert!(d.has_errors(), "a written block's errors come now");
    }

    #[test]
    fn a_name_the_schema_lacks_is_a_provider_defect() {
        let d = validate(&Value::object(&[("services_host", Value::Null)]), NO_ENV);
        assert_eq!(d.0[0].summary, "Provider defect");
    }

    #[test]
    fn the_schema_is_the_declarations() {
        let b = CircleCiProvider::new().schema().block;
        let names: Vec<_> = b.blocks.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, [SERVICES_HOST, POSTGRES, VAULT, MONGODB, AWS]);
        assert!(b
            .blocks
            .iter()
            .all(|x| x.nesting == crate::plugin::Nesting::Single));
        let secret: Vec<String> = b
            .blocks
            .iter()
            .flat_map(|x| {
                x.block
                    .attributes
                    .iter()
                    .filter(|a| a.sensitive)
                    .map(move |a| format!("{}.{}", x.name, a.name))
            })
            .collect();
        assert_eq!(
            secret,
            [
                "services_host.private_key",
                "postgres.password",
                "vault.token",
                "mongodb.uri"
            ]
        );
    }
}
