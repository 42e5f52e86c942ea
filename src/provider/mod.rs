//! The provider's own configuration, and the clients it hands to resources. Nothing
//! connects during configure: Terraform configures the provider on every run. One
//! module per configuration block; each offers `block()`, `validate()` and `build()`.

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
    AttrPath, Block, ClientInfo, Diagnostic, Diagnostics, NestedBlock, Nesting, Provider, Resource,
    Schema, Value,
};
use crate::resources;

mod aws;
#[cfg(test)]
mod fuzz_tests;
mod mongodb;
mod postgres;
mod services_host;
mod vault;

pub(crate) const SERVICES_HOST: &str = "services_host";
pub(crate) const POSTGRES: &str = "postgres";
pub(crate) const VAULT: &str = "vault";
pub(crate) const MONGODB: &str = "mongodb";
pub(crate) const AWS: &str = "aws";
pub(crate) const VIA: &str = "via_services_host";

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

    fn get(&self) -> Result<Arc<T>, Diagnostics> {
        match &*self.value.read().unwrap_or_else(|e| e.into_inner()) {
            Some(r) => r.clone(),
            None => Err(Diagnostic::error(self.missing.0, self.missing.1).into()),
        }
    }

    fn set(&self, v: Option<Result<Arc<T>, Diagnostics>>) {
        *self.value.write().unwrap_or_else(|e| e.into_inner()) = v;
    }

    /// Configures the slot from block `name`: a block not known yet fails only when a
    /// resource uses it; an absent block (with no `env` fallback set) leaves the slot
    /// empty; otherwise `build` decides, and its errors on a written block are returned
    /// now.
    fn configure(
        &self,
        name: &str,
        b: &Value,
        env: Option<&str>,
        build: impl FnOnce(&Value) -> Result<T, Diagnostics>,
    ) -> Diagnostics {
        if !b.is_fully_known() {
            self.set(Some(Err(Diagnostic::error(
                "Provider configuration not known yet",
                format!(
                    "{name} depends on values known only after apply; apply those resources first (-target)"
                ),
            )
            .at(AttrPath::root(name))
            .into())));
            return Diagnostics::new();
        }
        if b.is_null() && env.is_some_and(|v| std::env::var(v).is_err()) {
            self.set(None);
            return Diagnostics::new();
        }
        let r = build(b).map(Arc::new);
        let diags = match &r {
            Err(d) if !b.is_null() => d.clone(),
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
        }
    }
}

impl ProviderData {
    /// The Services machine, or an error saying why it is not usable.
    pub(crate) fn services(&self) -> Result<Arc<ServicesHost>, Diagnostics> {
        self.services.get()
    }

    /// The PostgreSQL admin connection settings, or why there are none.
    pub(crate) fn postgres(&self) -> Result<Arc<PgAdmin>, Diagnostics> {
        self.postgres.get()
    }

    /// The Vault admin client, or why there is none.
    pub(crate) fn vault(&self) -> Result<Arc<Vault>, Diagnostics> {
        self.vault.get()
    }

    /// The MongoDB admin client, or why there is none.
    pub(crate) fn mongo(&self) -> Result<Arc<MongoAdmin>, Diagnostics> {
        self.mongo.get()
    }

    /// The AWS settings (the chain is loaded on first use), or why they are unusable.
    pub(crate) fn aws(&self) -> Result<Arc<Aws>, Diagnostics> {
        self.aws.get()
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
        match self.services.get() {
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

/// A deadline attribute of block `block`: `name = "30s"`, at most an hour.
fn deadline_attr(name: &str, what: &str, default: &str) -> crate::plugin::Attribute {
    crate::plugin::Attribute::new(name, crate::plugin::Type::String)
        .optional()
        .description(&format!(
            "{what}, e.g. `{default}` (default). At most `1h`. An operation that takes longer fails with an \
             error naming the server, the operation and this deadline."
        ))
}

/// The value of deadline attribute `name` of block `block` (already validated: a bad
/// value adds an error and gives the default).
fn deadline(
    b: &Value,
    block: &str,
    name: &str,
    default: Duration,
    diags: &mut Diagnostics,
) -> Duration {
    match b.get(name).as_str() {
        Some(t) => crate::resources::validate::duration_at_most(
            t,
            MAX_DEADLINE,
            AttrPath::root(block).attr(name),
            diags,
        )
        .unwrap_or(default),
        None => default,
    }
}

/// Plan-time check of deadline attributes `names` of block `block`.
fn validate_deadlines(b: &Value, block: &str, names: &[&str], diags: &mut Diagnostics) {
    for n in names {
        let _ = deadline(b, block, n, Duration::ZERO, diags);
    }
}

/// `via_services_host` of a backend block.
fn via_attr() -> crate::plugin::Attribute {
    crate::plugin::Attribute::new(VIA, crate::plugin::Type::Bool)
        .optional()
        .description(
            "Reach these servers through the Services machine (SSH `direct-tcpip` channels of the provider's SSH \
             connection), with host names resolved on its side. Default: the provider's `via_services_host`.",
        )
}

/// Whether block `block` goes through the Services machine: its own setting, else the
/// provider-wide one.
fn via(config: &Value, block: &str) -> bool {
    config
        .get(block)
        .get(VIA)
        .as_bool()
        .or_else(|| config.get(VIA).as_bool())
        .unwrap_or(false)
}

/// A string attribute, or else the environment variable (empty counts as unset).
fn env_or(v: &Value, env: &str) -> Option<String> {
    match v.as_str() {
        Some(s) => Some(s.to_string()),
        None => std::env::var(env).ok().filter(|s| !s.is_empty()),
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
        let nested = |name, b| NestedBlock::new(name, Nesting::Single, b);
        Schema::new(
            0,
            Block::new()
                .description(
                    "Moves CircleCI Server 2.17's datastores to external services, following the runbook \
                     *Adding External Services to CircleCI Server v2.17*.",
                )
                .attr(crate::plugin::Attribute::new(VIA, crate::plugin::Type::Bool).optional().description(
                    "Reach the backends (the `postgres`, `mongodb` and `vault` blocks' servers, and the Redis, RabbitMQ \
                     and Nomad servers `circleci_external_redis`, `circleci_external_rabbitmq` and \
                     `circleci_external_nomad` check) through the Services \
                     machine: \
                     each connection is an SSH `direct-tcpip` channel of the provider's one SSH connection to it, the \
                     host name resolved there, TLS still verifying the server's own name. For backends only the \
                     Services machine can reach. Each block's own `via_services_host` overrides it. Default `false`.",
                ))
                .block(nested(SERVICES_HOST, services_host::block()))
                .block(nested(POSTGRES, postgres::block()))
                .block(nested(VAULT, vault::block()))
                .block(nested(MONGODB, mongodb::block()))
                .block(nested(AWS, aws::block())),
        )
    }

    fn resources(&self) -> Vec<Arc<dyn Resource>> {
        resources::all(self.data.clone())
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        services_host::validate(config.get(SERVICES_HOST), &mut diags);
        postgres::validate(config.get(POSTGRES), &mut diags);
        vault::validate(config.get(VAULT), &mut diags);
        aws::validate(config.get(AWS), &mut diags);
        mongodb::validate(config.get(MONGODB), &mut diags);
        for block in [POSTGRES, MONGODB, VAULT] {
            let services = !config.get(SERVICES_HOST).is_null()
                || std::env::var("CIRCLECI_SERVICES_HOST").is_ok();
            if via(config, block) && !config.get(block).is_null() && !services {
                let at = if config.get(block).get(VIA).is_null() {
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

    async fn configure(&self, config: &Value, _: &ClientInfo) -> Diagnostics {
        let d = &self.data;
        let mut diags = Diagnostics::new();
        // A missing services_host block surfaces only when a resource needs the Services
        // machine, so a configuration with no resources yet still plans; a wrong block
        // fails here. It comes first: the other blocks may go through it.
        diags.extend(d.services.configure(
            SERVICES_HOST,
            config.get(SERVICES_HOST),
            Some("CIRCLECI_SERVICES_HOST"),
            |b| services_host::build(b).map(ServicesHost::new),
        ));
        d.via.store(
            config.get(VIA).as_bool().unwrap_or(false),
            std::sync::atomic::Ordering::Relaxed,
        );
        let route = |block: &str| -> Result<Route, Diagnostics> {
            if via(config, block) {
                d.services.get().map(Route::Tunnel)
            } else {
                Ok(Route::Direct)
            }
        };
        diags.extend(
            d.postgres
                .configure(POSTGRES, config.get(POSTGRES), Some("PGHOST"), |b| {
                    let mut cfg = postgres::build(b)?;
                    cfg.route = route(POSTGRES)?;
                    Ok(PgAdmin::new(cfg))
                }),
        );
        diags.extend(
            d.vault
                .configure(VAULT, config.get(VAULT), Some("VAULT_ADDR"), |b| {
                    let mut cfg = vault::build(b)?;
                    cfg.route = route(VAULT)?;
                    Ok(Vault::new(cfg))
                }),
        );
        // A MongoDB block is checked when a resource uses it.
        let _ = d
            .mongo
            .configure(MONGODB, config.get(MONGODB), Some("MONGODB_URI"), |b| {
                Ok(mongodb::build(b)?.with_route(route(MONGODB)?))
            });
        diags.extend(d.aws.configure(AWS, config.get(AWS), None, aws::build));
        diags
    }
}
