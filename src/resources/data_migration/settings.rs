//! The migration's settings: the planned state resolved, with the write-only
//! passwords and token from the configuration.

use std::time::Duration;

use super::*;
use crate::backends::vault::VaultConfig;
use crate::resources::{cutover, strings};
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
    let timeout = data.timeout();
    let pg = planned.get(POSTGRES);
    let postgres = if pg.is_null() {
        None
    } else {
        let c = config.get(POSTGRES);
        let password = password_at(c, AttrPath::root(POSTGRES).attr("password_wo"))?;
        Some(PgSettings {
            image: pg.get("image").as_str().unwrap_or(mig::PG_IMAGE).into(),
            restore_image: pg.get("restore_image").as_str().unwrap_or_default().into(),
            data_dir: pg.get("data_dir").as_str().unwrap_or(mig::PG_DATA).into(),
            databases: strings(pg.get("databases")),
            host: pg.get("host").as_str().unwrap_or_default().into(),
            port: pg
                .get("port")
                .as_i64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(5432),
            user: pg.get("user").as_str().unwrap_or(DEFAULT_USER).into(),
            password,
            sslmode: pg
                .get("sslmode")
                .as_str()
                .unwrap_or(super::DEFAULT_SSLMODE)
                .into(),
            ca_file: pg.get("ca_file").as_str().map(str::to_string),
            compression: pg
                .get("compression")
                .as_i64()
                .and_then(|n| u8::try_from(n.clamp(0, 9)).ok())
                .unwrap_or(0),
        })
    };
    let v = planned.get(VAULT);
    let vault = if v.is_null() {
        None
    } else {
        let token = config
            .get(VAULT)
            .get("source_token_wo")
            .as_str()
            .unwrap_or_default();
        let cfg = VaultConfig {
            address: v
                .get("source_address")
                .as_str()
                .unwrap_or_default()
                .trim_end_matches('/')
                .into(),
            token: Secret::new(token.to_string()),
            ca_cert_file: v
                .get("source_ca_cert_file")
                .as_str()
                .map(crate::provider::expand_home),
            namespace: None,
            skip_tls_verify: false,
            timeout,
            route: match v.get("via_services_host").as_bool() {
                Some(true) => crate::backends::tunnel::Route::Tunnel(data.services()?),
                Some(false) => crate::backends::tunnel::Route::Direct,
                None => data.route()?,
            },
        };
        let s = |k: &str, d: &str| v.get(k).as_str().unwrap_or(d).to_string();
        Some((
            cfg,
            s("source_mount", "transit"),
            s("key", "context-service"),
            s("target_mount", "transit"),
        ))
    };
    Ok(Settings {
        stop_app: planned.get("stop_app").as_bool().unwrap_or(true),
        versions: super::super::services_restart::allowed_versions(planned),
        stop_timeout: super::super::duration_or(planned, "stop_timeout", STOP_TIMEOUT),
        cutover: crate::resources::cutover::StopSettings::of(
            planned,
            planned.get("config_root").as_str().unwrap_or("/"),
        ),
        command_timeout: super::super::duration_or(planned, "command_timeout", COMMAND_TIMEOUT),
        overwrite: planned.get("overwrite_existing").as_bool() == Some(true),
        keep_export: planned.get("keep_export").as_bool() != Some(false),
        parallelism: planned
            .get("parallelism")
            .as_i64()
            .and_then(|n| usize::try_from(n).ok())
            .map_or(super::DEFAULT_PARALLELISM, |n| {
                n.clamp(1, super::MAX_PARALLELISM)
            }),
        export_dir: planned
            .get("export_dir")
            .as_str()
            .unwrap_or(EXPORT_DIR)
            .into(),
        postgres,
        mongo: mongo_settings(planned, config)?,
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

pub(super) fn mongo_settings(
    planned: &Value,
    config: &Value,
) -> Result<Option<MongoSettings>, Diagnostics> {
    let m = planned.get(MONGO);
    if m.is_null() {
        return Ok(None);
    }
    let password = password_at(config.get(MONGO), at("password_wo"))?;
    let s = |k: &str, d: &str| m.get(k).as_str().unwrap_or(d).to_string();
    Ok(Some(MongoSettings {
        image: s("image", mig::MONGO_IMAGE),
        restore_image: s("restore_image", ""),
        data_dir: s("data_dir", mig::MONGO_DATA),
        databases: strings(m.get("databases")),
        hosts: strings(m.get("hosts")),
        replica_set: m.get("replica_set").as_str().map(str::to_string),
        username: s("username", MONGO_USER),
        auth_source: s("auth_source", MONGO_AUTH_SOURCE),
        password,
        tls: m.get("tls").as_bool() != Some(false),
        ca_file: m.get("ca_file").as_str().map(str::to_string),
    }))
}

/// The block's password (`password` or `password_wo`); a missing one is an error on
/// `path`.
fn password_at(block: &Value, path: AttrPath) -> Result<crate::secret::Secret, Diagnostics> {
    super::super::required_password(block).map_err(|d| {
        let mut out = Diagnostics::new();
        for x in d.0 {
            out.push(x.at(path.clone()));
        }
        out
    })
}
