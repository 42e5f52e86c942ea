//! `circleci_external_nomad`: the runbook's "Setting up an External Nomad Server".
//! Checks the cluster has a leader, then writes NOMAD_API_ENDPOINT.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::{file_sha256, managed_file, validate};
use crate::backends::nomad::{self as nb, NomadErrorKind};
use crate::circleci::nomad as file;
use crate::plugin::{
    resource::changed, AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest, Resource,
    Schema, Type, Value,
};
use crate::provider::ProviderData;

const WHAT: &str = "Nomad";

pub struct ExternalNomad {
    data: Arc<ProviderData>,
}

impl ExternalNomad {
    pub fn new(data: Arc<ProviderData>) -> Self {
        ExternalNomad { data }
    }
}

fn path_of(v: &Value) -> String {
    v.get("config_path")
        .as_str()
        .unwrap_or(file::DEFAULT_PATH)
        .to_string()
}

impl ExternalNomad {
    async fn write(&self, planned: &Value, config: &Value) -> Result<Value, Diagnostics> {
        let endpoint = planned
            .get("endpoint")
            .as_str()
            .unwrap_or_default()
            .to_string();
        let path = path_of(planned);
        let content = file::render(&endpoint).map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Could not render the Nomad config file",
                e.to_string(),
            ))
        })?;
        let mut leader = String::new();
        if planned.get("verify").as_bool().unwrap_or(true) {
            let ca = planned.get("ca_cert_file").as_str().map(PathBuf::from);
            let token = config.get("acl_token_wo").as_str();
            leader = nb::leader(&endpoint, ca.as_deref(), token, self.data.timeout()).await.map_err(|e| {
                let (summary, at) = match e.kind {
                    NomadErrorKind::NoLeader => ("Nomad has no cluster leader", "endpoint"),
                    NomadErrorKind::PermissionDenied => ("Nomad refused the request (403)", "acl_token_wo"),
                    NomadErrorKind::Tls => ("Nomad's TLS certificate is not trusted", "ca_cert_file"),
                    NomadErrorKind::Unreachable => ("Nomad is not reachable", "endpoint"),
                    NomadErrorKind::Other => ("Nomad check failed", "endpoint"),
                };
                Diagnostics::from(
                    Diagnostic::error(
                        summary,
                        format!("{e}. Nothing was written to {path}. Set verify = false to write the file anyway."),
                    )
                    .at(AttrPath::root(at)),
                )
            })?;
        }
        let hash = managed_file::write(&self.data, &path, &content, WHAT).await?;
        let mut state = planned.clone();
        state.set("id", Value::string(&path));
        state.set("leader", Value::string(leader));
        state.set("file_sha256", Value::string(hash));
        Ok(state)
    }
}

#[async_trait]
impl Resource for ExternalNomad {
    fn type_name(&self) -> &'static str {
        "circleci_external_nomad"
    }

    fn schema(&self) -> Schema {
        Schema::new(
            0,
            Block::new()
                .description(
                    "Points CircleCI Server at an external Nomad server cluster (runbook: *Setting up an External \
                     Nomad Server*). Checks that `GET /v1/status/leader` names a leader, then writes \
                     `NOMAD_API_ENDPOINT` to the config file on the Services machine (mode 0600). Pointing the \
                     Nomad clients at the servers is `circleci_nomad_client_launch_config`'s job.",
                )
                .attr(Attribute::new("id", Type::String).computed().description("The config file's path."))
                .attr(Attribute::new("endpoint", Type::String).required().description(
                    "Nomad's HTTP API as the Services machine reaches it, e.g. `https://nomad.internal:4646`.",
                ))
                .attr(Attribute::new("ca_cert_file", Type::String).optional().description(
                    "CA certificate (PEM) that signed Nomad's certificate, for the check; default: the system's CAs.",
                ))
                .attr(Attribute::new("acl_token_wo", Type::String).optional().sensitive().write_only().description(
                    "Nomad ACL token for the check, write-only (never stored). Not written to the file.",
                ))
                .attr(Attribute::new("config_path", Type::String).optional().computed().description(
                    "Path of the file on the Services machine. Default `/etc/circleconfig/shared/nomad`. \
                     Changing it replaces the resource.",
                ))
                .attr(Attribute::new("verify", Type::Bool).optional().computed().description(
                    "Check the cluster has a leader (from where Terraform runs) before writing. Default `true`.",
                ))
                .attr(Attribute::new("leader", Type::String).computed().description(
                    "The leader Nomad reported at the last apply (empty with `verify = false`).",
                ))
                .attr(Attribute::new("file_sha256", Type::String).computed().description(
                    "SHA-256 of the file as written; refresh compares the file with it.",
                )),
        )
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        if let Some(e) = config.get("endpoint").as_str() {
            if let Err(m) = file::check_endpoint(e) {
                diags.attr_error(AttrPath::root("endpoint"), "Invalid endpoint", m);
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
        super::set_defaults(
            cfg,
            planned,
            [
                ("config_path", Value::string(file::DEFAULT_PATH)),
                ("verify", Value::Bool(true)),
            ],
        );
        planned.set("id", planned.get("config_path").clone());
        let hash = match planned.get("endpoint").as_str().map(file::render) {
            Some(Ok(c)) => Value::string(file_sha256(c.as_bytes())),
            _ => Value::Unknown,
        };
        planned.set("file_sha256", hash.clone());
        // Every apply re-checks the leader, so any change makes it unknown.
        let any_change = [
            "endpoint",
            "ca_cert_file",
            "config_path",
            "verify",
            "file_sha256",
        ]
        .iter()
        .any(|a| changed(req.prior, planned, a));
        if req.is_create() || hash.is_unknown() || any_change {
            planned.set("leader", Value::Unknown);
        }
        if !req.is_create() && changed(req.prior, planned, "config_path") {
            return vec![AttrPath::root("config_path")];
        }
        vec![]
    }

    async fn create(&self, planned: &Value, config: &Value) -> Result<Value, Diagnostics> {
        self.write(planned, config).await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let Some(content) = managed_file::read(&self.data, &path_of(state), WHAT).await? else {
            return Ok(None);
        };
        let mut fresh = state.clone();
        fresh.set("file_sha256", Value::string(file_sha256(&content)));
        if let Ok(e) = std::str::from_utf8(&content)
            .map_err(|e| e.to_string())
            .and_then(file::parse)
        {
            fresh.set("endpoint", Value::string(e));
        }
        Ok(Some(fresh))
    }

    async fn update(
        &self,
        _prior: &Value,
        planned: &Value,
        config: &Value,
    ) -> Result<Value, Diagnostics> {
        self.write(planned, config).await
    }

    async fn delete(&self, prior: &Value) -> Result<(), Diagnostics> {
        managed_file::remove(&self.data, &path_of(prior), WHAT).await
    }

    async fn import(&self, id: &str) -> Result<Value, Diagnostics> {
        let (text, hash) =
            managed_file::read_for_import(&self.data, id, file::DEFAULT_PATH, WHAT).await?;
        let endpoint = file::parse(&text).map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Cannot import this file",
                format!("{id}: {e}"),
            ))
        })?;
        let mut v = Value::Null;
        v.set("id", Value::string(id));
        v.set("config_path", Value::string(id));
        v.set("endpoint", Value::string(endpoint));
        v.set("verify", Value::Bool(true));
        v.set("leader", Value::string(""));
        v.set("file_sha256", Value::string(hash));
        Ok(v)
    }
}
