//! The Terraform resources, one module each, named after the resource without its
//! `circleci_` prefix: a file for a small one, a directory for one with several steps.
//! Resources glue the protocol layer to the backends and stay thin.
//!
//! A resource directory has the same files: `mod.rs`, the resource's attributes (one
//! `model!` declaration) and its hooks (validate, plan, read, import); `apply.rs`, what
//! create, update and delete do; `roll.rs`, for the two that move Nomad clients, the
//! batch-by-batch roll; `tests.rs`, its unit tests (no server needed). Any other file
//! is one distinct step, named after it, with a `//!` header saying what it holds
//! (`data_migration/embedded_postgres.rs`, `services_restart/replicated.rs`, …).
//!
//! The modules that are not resources are what several share: `model` (each attribute
//! declared once; the only place values are read by name), `config_file` (the
//! lifecycle of every resource that writes a config file, and `FileAttrs`, its common
//! attributes), `cutover` (what every resource that stops CircleCI does, and the
//! attributes it needs), `validate` (the checks a declaration names), `file_digest`,
//! `managed_block`, `nomad_drain` and `test_support`.

use std::sync::Arc;

use crate::backends::ssh::{
    CommandOutput, Program, RemoteCommand, ServicesHost, SshError, SshErrorKind,
};
use crate::plugin::{AttrPath, Diagnostic, Diagnostics, Resource, Value};
use crate::provider::ProviderData;
use config_file::ConfigFile;

/// A resource's own choice of route for its check (`verify`).
pub(crate) const VERIFY_VIA: &str = "verify_via_services_host";

pub(crate) mod config_file;
pub(crate) mod cutover;
pub(crate) mod data_migration;
pub(crate) mod external_mongo;
pub(crate) mod external_nomad;
pub(crate) mod external_rabbitmq;
pub(crate) mod external_redis;
pub(crate) mod file_digest;
pub(crate) mod managed_block;
pub(crate) mod model;
pub(crate) mod nomad_client_launch_config;
pub(crate) mod nomad_client_static;
pub(crate) mod nomad_drain;
pub(crate) mod postgres_databases;
pub(crate) mod services_ca_certificate;
pub(crate) mod services_restart;
#[cfg(test)]
pub(crate) mod test_support;
pub(crate) mod validate;
pub(crate) mod vault_transit_client;

/// Every resource type this provider offers.
pub(crate) fn all(data: Arc<ProviderData>) -> Vec<Arc<dyn Resource>> {
    let d = || data.clone();
    vec![
        Arc::new(ConfigFile::new(
            external_redis::ExternalRedis::new(d()),
            d(),
        )),
        Arc::new(ConfigFile::new(
            external_rabbitmq::ExternalRabbitmq::new(d()),
            d(),
        )),
        Arc::new(ConfigFile::new(
            external_nomad::ExternalNomad::new(d()),
            d(),
        )),
        Arc::new(nomad_client_launch_config::NomadClientLaunchConfig::new(d())),
        Arc::new(nomad_client_static::NomadClientStatic::new(d())),
        Arc::new(ConfigFile::new(
            external_mongo::ExternalMongo::new(d()),
            d(),
        )),
        Arc::new(ConfigFile::new(
            postgres_databases::PostgresDatabases::new(d()),
            d(),
        )),
        Arc::new(ConfigFile::new(
            vault_transit_client::VaultTransitClient::new(d()),
            d(),
        )),
        Arc::new(services_ca_certificate::ServicesCaCertificate::new(d())),
        Arc::new(services_restart::ServicesRestart::new(d())),
        Arc::new(data_migration::DataMigration::new(d())),
    ]
}

/// `s` with its first letter upper-case, to begin a sentence.
pub(crate) fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Lower-case hex SHA-256 of a file's bytes.
pub fn file_sha256(content: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The password attributes (`password`, `password_wo`, `password_wo_version`) as a configuration holds them: the
/// one place that reads them by name.
pub(crate) struct Passwords {
    pub password: model::Known<crate::secret::Secret>,
    pub password_wo: model::Known<crate::secret::Secret>,
    pub password_wo_version: model::Known<f64>,
}

impl Passwords {
    /// The password attributes of `config` (a resource's, or a provider block's).
    pub(crate) fn of(config: &Value) -> Result<Self, model::Undecoded> {
        Ok(Passwords {
            password: model::field_at_plan(config, "password")?,
            password_wo: model::field_at_plan(config, "password_wo")?,
            password_wo_version: model::field_at_plan(config, "password_wo_version")?,
        })
    }

    /// The configured password: `password_wo` (write-only) or else `password`.
    pub(crate) fn configured(self) -> Option<crate::secret::Secret> {
        self.password_wo.known().or(self.password.known())
    }
}

/// The password from the configuration: `password_wo` (write-only) or `password`.
pub(crate) fn configured_password(config: &Value) -> Option<crate::secret::Secret> {
    Passwords::of(config).ok()?.configured()
}

/// The configured password, or an error on `password_wo` saying to set one.
pub(crate) fn required_password(config: &Value) -> Result<crate::secret::Secret, Diagnostics> {
    configured_password(config).ok_or_else(|| {
        Diagnostic::error(
            "Password missing",
            "set password_wo (Terraform 1.11 or later) or password",
        )
        .at(AttrPath::root("password_wo"))
        .into()
    })
}

/// The attribute the password came from, for diagnostics.
pub(crate) fn password_attr(config: &Value) -> AttrPath {
    let wo_set = Passwords::of(config).is_ok_and(|p| !p.password_wo.is_null());
    AttrPath::root(if wo_set { "password_wo" } else { "password" })
}

/// An SSH failure as a diagnostic; the message already says what failed where.
/// Runs one of the fixed commands on the Services machine within `deadline`: the
/// command (for messages) and its output. An invalid argument or an SSH failure is an
/// error; a non-zero exit is the caller's to judge.
pub(crate) async fn run_command(
    h: &ServicesHost,
    program: Program,
    args: &[&str],
    stdin: Option<&[u8]>,
    deadline: std::time::Duration,
) -> Result<(RemoteCommand, CommandOutput), Diagnostics> {
    let cmd = RemoteCommand::new(program, args.iter().copied())
        .map_err(|e| Diagnostics::from(Diagnostic::error("Invalid command", e)))?;
    let out = h
        .run(&cmd, stdin, deadline)
        .await
        .map_err(|e| ssh_diag(&format!("Could not run `{cmd}`"), e))?;
    Ok((cmd, out))
}

pub(crate) fn ssh_diag(summary: &str, e: SshError) -> Diagnostics {
    let summary = match e.kind() {
        SshErrorKind::HostKey => "Services machine host key not trusted",
        SshErrorKind::Auth => "Could not log in to the Services machine",
        SshErrorKind::Connect => "Could not reach the Services machine",
        SshErrorKind::Io => summary,
    };
    let mut detail = crate::backends::chain(&e);
    if e.is_permission_denied() {
        detail.push_str(
            ". If the SSH user is not root, set sudo = true in the provider's services_host block \
             to write as root",
        );
    }
    Diagnostic::error(summary, detail).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SSH library's error is the source of an [`SshError`]; the diagnostic still
    /// says it, once, after the step that failed.
    #[test]
    fn an_ssh_diagnostic_says_the_cause_once() {
        let e = SshError::connect_by(
            "connecting to u@svc:22",
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"),
        );
        assert!(!e.to_string().contains("refused"), "{e}");
        let d = ssh_diag("Could not read /etc/x", e);
        assert_eq!(d.0[0].summary, "Could not reach the Services machine");
        assert_eq!(d.0[0].detail, "connecting to u@svc:22: Connection refused");
    }

    #[test]
    fn every_schema_names_each_attribute_once() {
        for r in all(Arc::new(ProviderData::default())) {
            let schema = r.schema();
            let mut names: Vec<&str> = schema
                .block
                .attributes
                .iter()
                .map(|a| a.name.as_str())
                .collect();
            let n = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), n, "{}: {names:?}", r.type_name());
            assert!(names.contains(&"id"), "{}", r.type_name());
        }
    }

    #[test]
    fn sha256_hex() {
        assert_eq!(
            super::file_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
