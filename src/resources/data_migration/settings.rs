//! The migration's settings: the planned state's model resolved, with the write-only
//! passwords and token from the configuration's.

use std::time::Duration;

use super::*;
use crate::backends::vault::VaultConfig;
use crate::resources::cutover;
use crate::secret::Secret;

/// The `postgres` block, resolved.
pub(super) struct PgSettings {
    pub image: String,
    /// The restore's tools; empty until resolved from the target (unknown at plan).
    pub restore_image: String,
    pub data_dir: String,
    pub databases: Vec<String>,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub sslmode: String,
    /// The CA of the target's certificate, on the Services machine.
    pub ca_file: Option<String>,
    /// The dumps' zlib level, 0 to 9.
    pub compression: u8,
    /// Whether the target stores timestamps as integers (`integer_datetimes`), as
    /// the check before the stop read it through the restore's tools (false until
    /// then: timestamps hashed as text).
    pub target_integer_datetimes: bool,
}

impl PgSettings {
    /// The external server, as the restore's tools on the Services machine reach it.
    pub(super) fn target(&self) -> super::embedded_postgres::Target<'_> {
        super::embedded_postgres::Target {
            host: &self.host,
            port: self.port,
            user: &self.user,
            password: &self.password,
            sslmode: &self.sslmode,
        }
    }

    /// Each database and the target it goes to, as the cutover's record names it.
    pub(super) fn targets(&self) -> Vec<(String, String)> {
        self.databases
            .iter()
            .map(|d| (d.clone(), cutover::target_pg(&self.host, self.port, d)))
            .collect()
    }
}

impl MongoSettings {
    /// Each database and the target it goes to, as the cutover's record names it.
    pub(super) fn targets(&self) -> Vec<(String, String)> {
        self.databases
            .iter()
            .map(|d| (d.clone(), cutover::target_mongo(&self.hosts, d)))
            .collect()
    }
}

/// Everything a migration needs, from the planned state and (for the write-only
/// values) the configuration.
pub(super) struct Settings {
    pub stop_app: bool,
    pub versions: Vec<String>,
    pub stop_timeout: Duration,
    pub cutover: crate::resources::cutover::StopSettings,
    pub command_timeout: Duration,
    pub overwrite: bool,
    pub keep_export: bool,
    /// How many databases are carried at once.
    pub parallelism: usize,
    pub export_dir: String,
    pub postgres: Option<PgSettings>,
    pub mongo: Option<MongoSettings>,
    pub vault: Option<(VaultConfig, String, String, String)>,
}

pub(super) fn settings(
    planned: &Value,
    config: &Value,
    data: &crate::provider::ProviderData,
) -> Result<Settings, Diagnostics> {
    let m = Migration::decode(planned)?;
    let parts = PartsOfState::decode(planned)?;
    // The write-only passwords and token are in the configuration only.
    let given = PartsAtPlan::decode(config)?;
    let postgres = match parts.postgres {
        Known::Value(pg) => {
            let c = given.postgres.value();
            let password = password_at(
                c.map(|c| (&c.password_wo, &c.password)),
                AttrPath::root(POSTGRES).attr("password_wo"),
            )?;
            Some(PgSettings {
                image: pg.image,
                restore_image: pg.restore_image.known().unwrap_or_default(),
                data_dir: pg.data_dir,
                databases: pg.databases,
                host: pg.host,
                port: pg.port,
                user: pg.user,
                password,
                sslmode: pg.sslmode,
                ca_file: pg.ca_file,
                compression: u8::try_from(pg.compression.clamp(0, 9)).unwrap_or(0),
                target_integer_datetimes: false,
            })
        }
        Known::Null | Known::Unknown => None,
    };
    let vault = match parts.vault {
        Known::Value(v) => {
            let token = given
                .vault
                .value()
                .and_then(|c| c.source_token_wo.clone().known().flatten())
                .unwrap_or_else(|| Secret::new(String::new()));
            let cfg = VaultConfig {
                address: v.source_address.trim_end_matches('/').into(),
                token,
                ca_cert_file: v
                    .source_ca_cert_file
                    .as_deref()
                    .map(crate::provider::expand_home),
                namespace: None,
                skip_tls_verify: false,
                timeout: data.timeout(),
                route: match v.via_services_host {
                    Some(true) => crate::backends::tunnel::Route::Tunnel(data.services()?),
                    Some(false) => crate::backends::tunnel::Route::Direct,
                    None => data.route()?,
                },
            };
            Some((cfg, v.source_mount, v.key, v.target_mount))
        }
        Known::Null | Known::Unknown => None,
    };
    let mongo = match parts.mongo {
        Known::Value(mg) => Some(mongo_settings(mg, given.mongo.value())?),
        Known::Null | Known::Unknown => None,
    };
    // A negative number (the plan's check refuses it) reads as the default.
    let parallelism = match m.parallelism {
        n if n < 0 => DEFAULT_PARALLELISM,
        n => n.clamp(1, MAX_PARALLELISM),
    };
    Ok(Settings {
        stop_app: m.stop_app,
        versions: if m.allowed_versions.is_empty() {
            vec![crate::resources::services_restart::DEFAULT_VERSIONS.to_string()]
        } else {
            m.allowed_versions.clone()
        },
        stop_timeout: duration_or(&m.stop_timeout, STOP_TIMEOUT),
        cutover: stop_settings(&m),
        command_timeout: duration_or(&m.command_timeout, COMMAND_TIMEOUT),
        overwrite: m.overwrite_existing,
        keep_export: m.keep_export,
        parallelism: usize::try_from(parallelism).unwrap_or(1),
        export_dir: m.export_dir,
        postgres,
        mongo,
        vault,
    })
}

/// The `mongo` block, resolved.
pub(super) struct MongoSettings {
    pub image: String,
    /// The restore's tools; empty until resolved from the target (unknown at plan).
    pub restore_image: String,
    pub data_dir: String,
    pub databases: Vec<String>,
    pub hosts: Vec<String>,
    pub replica_set: Option<String>,
    pub username: String,
    pub auth_source: String,
    pub password: Secret,
    pub tls: bool,
    pub ca_file: Option<String>,
}

/// An attribute of the `mongo` block.
pub(super) fn at(attr: &str) -> AttrPath {
    AttrPath::root(MONGO).attr(attr)
}

fn mongo_settings(m: Mongo, given: Option<&MongoAtPlan>) -> Result<MongoSettings, Diagnostics> {
    let password = password_at(
        given.map(|c| (&c.password_wo, &c.password)),
        at("password_wo"),
    )?;
    Ok(MongoSettings {
        image: m.image,
        restore_image: m.restore_image.known().unwrap_or_default(),
        data_dir: m.data_dir,
        databases: m.databases,
        hosts: m.hosts,
        replica_set: m.replica_set,
        username: m.username,
        auth_source: m.auth_source,
        password,
        tls: m.tls,
        ca_file: m.ca_file,
    })
}

/// A block's `password_wo` and `password`, as the configuration holds them.
type Passwords<'a> = (&'a Known<Option<Secret>>, &'a Known<Option<Secret>>);

/// The block's password as configured (`password_wo`, else `password`); a missing one
/// is an error on `path`.
fn password_at(given: Option<Passwords<'_>>, path: AttrPath) -> Result<Secret, Diagnostics> {
    given
        .and_then(|(wo, kept)| {
            wo.clone()
                .known()
                .flatten()
                .or_else(|| kept.clone().known().flatten())
        })
        .ok_or_else(|| {
            Diagnostic::error(
                "Password missing",
                "set password_wo (Terraform 1.11 or later) or password",
            )
            .at(path)
            .into()
        })
}
