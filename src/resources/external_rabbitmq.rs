//! `circleci_external_rabbitmq`: the runbook's "Setting up External RabbitMQ". Logs in
//! with the credentials (AMQP), then writes /etc/circleconfig/shared/rabbitmq.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::{file_sha256, managed_file, validate};
use crate::backends::rabbitmq::{self as mq, MqErrorKind};
use crate::circleci::rabbitmq as file;
use crate::plugin::{
    resource::changed, AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest, Resource,
    Schema, Type, Value,
};
use crate::provider::ProviderData;

const WHAT: &str = "RabbitMQ";

pub struct ExternalRabbitmq {
    data: Arc<ProviderData>,
}

impl ExternalRabbitmq {
    pub fn new(data: Arc<ProviderData>) -> Self {
        ExternalRabbitmq { data }
    }
}

struct Inputs {
    host: String,
    port: u16,
    user: String,
    vhost: String,
    tls: bool,
    ca: Option<PathBuf>,
    path: String,
    verify: bool,
}

fn inputs(v: &Value) -> Inputs {
    let tls = v.get("tls").as_bool().unwrap_or(false);
    Inputs {
        host: v.get("host").as_str().unwrap_or_default().to_string(),
        port: v
            .get("port")
            .as_i64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(if tls {
                file::DEFAULT_TLS_PORT
            } else {
                file::DEFAULT_PORT
            }),
        user: v.get("username").as_str().unwrap_or_default().to_string(),
        vhost: v.get("vhost").as_str().unwrap_or("/").to_string(),
        tls,
        ca: v.get("tls_ca_file").as_str().map(PathBuf::from),
        path: v
            .get("config_path")
            .as_str()
            .unwrap_or(file::DEFAULT_PATH)
            .to_string(),
        verify: v.get("verify").as_bool().unwrap_or(true),
    }
}

use super::{configured_password as password, password_attr};

fn render(i: &Inputs, pw: &str) -> Result<String, Diagnostics> {
    file::render(&i.host, i.port, &i.user, pw).map_err(|e| {
        Diagnostic::error("Could not render the RabbitMQ config file", e.to_string()).into()
    })
}

impl ExternalRabbitmq {
    async fn write(&self, planned: &Value, config: &Value) -> Result<Value, Diagnostics> {
        let i = inputs(planned);
        let pw = super::required_password(config)?;
        let content = render(&i, pw)?;
        if i.verify {
            let login = mq::Login {
                host: &i.host,
                port: i.port,
                user: &i.user,
                password: pw,
                vhost: &i.vhost,
                tls: i.tls,
                ca_file: i.ca.as_deref(),
                timeout: self.data.timeout(),
            };
            if let Err(e) = mq::login(&login).await {
                let (summary, at) = match e.kind {
                    MqErrorKind::Refused => ("RabbitMQ login refused", password_attr(config)),
                    MqErrorKind::Unreachable => {
                        ("RabbitMQ is not reachable", AttrPath::root("host"))
                    }
                    MqErrorKind::Other => ("RabbitMQ check failed", AttrPath::root("host")),
                };
                return Err(Diagnostic::error(
                    summary,
                    format!("{e}. Nothing was written to {}. Set verify = false to write the file anyway.", i.path),
                )
                .at(at)
                .into());
            }
        }
        let hash = managed_file::write(&self.data, &i.path, &content, WHAT).await?;
        let mut state = planned.clone();
        state.set("id", Value::string(&i.path));
        state.set("file_sha256", Value::string(hash));
        Ok(state)
    }
}

#[async_trait]
impl Resource for ExternalRabbitmq {
    fn type_name(&self) -> &'static str {
        "circleci_external_rabbitmq"
    }

    fn schema(&self) -> Schema {
        Schema::new(
            0,
            Block::new()
                .description(
                    "Points CircleCI Server at an external RabbitMQ (runbook: *Setting up External RabbitMQ*). \
                     Logs in over AMQP with the credentials first (a refused login writes nothing), then writes \
                     `RABBITMQ_HOST`, `RABBITMQ_PORT`, `RABBITMQ_USERNAME` and `RABBITMQ_PASSWORD` to the config \
                     file on the Services machine (mode 0600).",
                )
                .attr(Attribute::new("id", Type::String).computed().description("The config file's path."))
                .attr(Attribute::new("host", Type::String).required().description("RabbitMQ host, as the Services machine reaches it."))
                .attr(Attribute::new("port", Type::Number).optional().computed().description(
                    "AMQP port. Default `5672`, or `5671` with `tls`.",
                ))
                .attr(Attribute::new("username", Type::String).required().description("The user CircleCI logs in as."))
                .attr(Attribute::new("password", Type::String).optional().sensitive().description(
                    "The password, kept (sensitive) in the state. Prefer `password_wo`; set exactly one.",
                ))
                .attr(Attribute::new("password_wo", Type::String).optional().sensitive().write_only().description(
                    "The password, write-only: never stored in plan or state (Terraform 1.11 or later).",
                ))
                .attr(Attribute::new("password_wo_version", Type::Number).optional().description(
                    "Any number; changing it rewrites the file with the current `password_wo`.",
                ))
                .attr(Attribute::new("vhost", Type::String).optional().computed().description(
                    "Virtual host the check logs in to. Default `/`. Not written: CircleCI uses the default.",
                ))
                .attr(Attribute::new("tls", Type::Bool).optional().computed().description(
                    "Check over AMQPS (TLS). Default `false`.",
                ))
                .attr(Attribute::new("tls_ca_file", Type::String).optional().description(
                    "CA certificate (PEM) for the TLS check; default: the system's CAs.",
                ))
                .attr(Attribute::new("config_path", Type::String).optional().computed().description(
                    "Path of the file on the Services machine. Default `/etc/circleconfig/shared/rabbitmq`. \
                     Changing it replaces the resource.",
                ))
                .attr(Attribute::new("verify", Type::Bool).optional().computed().description(
                    "Log in with these credentials (from where Terraform runs) before writing. Default `true`.",
                ))
                .attr(Attribute::new("file_sha256", Type::String).computed().description(
                    "SHA-256 of the file as written; refresh compares the file with it.",
                )),
        )
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        if let Some(h) = config.get("host").as_str() {
            validate::host(h, AttrPath::root("host"), &mut diags);
        }
        validate::port(config.get("port"), AttrPath::root("port"), &mut diags);
        if config.get("username").as_str() == Some("") {
            diags.attr_error(
                AttrPath::root("username"),
                "Invalid username",
                "must not be empty",
            );
        }
        super::validate_password_pair(config, &mut diags);
        if config.get("tls_ca_file").as_str().is_some()
            && config.get("tls").as_bool() == Some(false)
        {
            diags.attr_error(
                AttrPath::root("tls_ca_file"),
                "tls_ca_file without tls",
                "set tls = true to use a CA file",
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
        if cfg.get("tls").is_null() {
            planned.set("tls", Value::Bool(false));
        }
        if cfg.get("port").is_null() {
            let p = match planned.get("tls").as_bool() {
                Some(true) => Value::int(file::DEFAULT_TLS_PORT as i64),
                Some(false) => Value::int(file::DEFAULT_PORT as i64),
                None => Value::Unknown,
            };
            planned.set("port", p);
        }
        super::set_defaults(
            cfg,
            planned,
            [
                ("vhost", Value::string("/")),
                ("config_path", Value::string(file::DEFAULT_PATH)),
                ("verify", Value::Bool(true)),
            ],
        );
        planned.set("id", planned.get("config_path").clone());
        let known = ["host", "port", "username"]
            .iter()
            .all(|n| planned.get(n).is_fully_known());
        let hash = match (known, password(cfg)) {
            (true, Some(pw)) => render(&inputs(planned), pw)
                .map(|c| Value::string(file_sha256(c.as_bytes())))
                .unwrap_or(Value::Unknown),
            _ => Value::Unknown,
        };
        planned.set("file_sha256", hash);
        if !req.is_create() && changed(req.prior, planned, "config_path") {
            return vec![AttrPath::root("config_path")];
        }
        vec![]
    }

    async fn create(&self, planned: &Value, config: &Value) -> Result<Value, Diagnostics> {
        self.write(planned, config).await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let i = inputs(state);
        let Some(content) = managed_file::read(&self.data, &i.path, WHAT).await? else {
            return Ok(None);
        };
        let mut fresh = state.clone();
        fresh.set("file_sha256", Value::string(file_sha256(&content)));
        if let Ok((host, port, user)) = std::str::from_utf8(&content)
            .map_err(|e| e.to_string())
            .and_then(file::parse)
        {
            fresh.set("host", Value::string(host));
            fresh.set("port", Value::int(port as i64));
            fresh.set("username", Value::string(user));
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
        managed_file::remove(&self.data, &inputs(prior).path, WHAT).await
    }

    async fn import(&self, id: &str) -> Result<Value, Diagnostics> {
        let (text, hash) =
            managed_file::read_for_import(&self.data, id, file::DEFAULT_PATH, WHAT).await?;
        let (host, port, user) = file::parse(&text).map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Cannot import this file",
                format!("{id}: {e}"),
            ))
        })?;
        let mut v = Value::Null;
        v.set("id", Value::string(id));
        v.set("config_path", Value::string(id));
        v.set("host", Value::string(host));
        v.set("port", Value::int(port as i64));
        v.set("username", Value::string(user));
        v.set("vhost", Value::string("/"));
        v.set("tls", Value::Bool(port == file::DEFAULT_TLS_PORT));
        v.set("verify", Value::Bool(true));
        v.set("file_sha256", Value::string(hash));
        Ok(v)
    }
}
