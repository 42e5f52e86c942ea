//! `circleci_external_rabbitmq`: the runbook's "Setting up External RabbitMQ". Logs in
//! with the credentials (AMQP), then writes /etc/circleconfig/shared/rabbitmq.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::config_file::{
    cannot_import, record_version, Change, Compat, FileResource, Found, Halted, PlannedContent,
    Prepared, Spec,
};
use super::validate::Check;
use super::{password_attr, required_password};
use crate::backends::rabbitmq::{self as mq, MqError};
use crate::backends::tunnel::Route;
use crate::circleci::rabbitmq as file;
use crate::circleci::versions;
use crate::plugin::{
    AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest, Type, Value,
};
use crate::provider::ProviderData;

pub struct ExternalRabbitmq {
    data: Arc<ProviderData>,
}

impl ExternalRabbitmq {
    pub fn new(data: Arc<ProviderData>) -> Self {
        ExternalRabbitmq { data }
    }
}

struct Inputs<'a> {
    host: &'a str,
    port: u16,
    user: &'a str,
}

/// Host, port and user, when all are known.
fn inputs(v: &Value) -> Option<Inputs<'_>> {
    Some(Inputs {
        host: v.get("host").as_str()?,
        port: u16::try_from(v.get("port").as_i64()?).ok()?,
        user: v.get("username").as_str()?,
    })
}

/// Where and how to reach the broker; the password only for a login.
fn login<'a>(
    planned: &'a Value,
    i: &Inputs<'a>,
    password: &'a str,
    ca_file: Option<&'a std::path::Path>,
    route: &'a Route,
    timeout: std::time::Duration,
) -> mq::Login<'a> {
    mq::Login {
        host: i.host,
        port: i.port,
        user: i.user,
        password,
        vhost: planned.get("vhost").as_str().unwrap_or("/"),
        tls: planned.get("tls").as_bool().unwrap_or(false),
        ca_file,
        timeout,
        route,
    }
}

/// The broker's version, and where it runs.
async fn found(l: &mq::Login<'_>) -> Result<Found, MqError> {
    Ok(Found {
        version: mq::server_version(l).await?,
        at: crate::backends::tunnel::host_port(l.host, l.port),
    })
}

fn render(i: &Inputs, pw: &str) -> Result<String, Diagnostics> {
    file::render(i.host, i.port, i.user, pw).map_err(|e| {
        Diagnostic::error("Could not render the RabbitMQ config file", e.to_string()).into()
    })
}

/// A failed login as a diagnostic on the attribute at fault.
fn login_diag(e: MqError, config: &Value, path: &str) -> Diagnostics {
    let (summary, at) = if e.is_refused() {
        ("RabbitMQ login refused", password_attr(config))
    } else if e.is_unreachable() {
        ("RabbitMQ is not reachable", AttrPath::root("host"))
    } else if matches!(e, MqError::CaFile { .. }) {
        ("RabbitMQ check failed", AttrPath::root("tls_ca_file"))
    } else {
        ("RabbitMQ check failed", AttrPath::root("host"))
    };
    Diagnostic::error(
        summary,
        format!("{e}. Nothing was written to {path}. Set verify = false to write the file anyway."),
    )
    .at(at)
    .into()
}

#[async_trait]
impl FileResource for ExternalRabbitmq {
    type Pending = ();

    const SPEC: Spec = Spec {
        type_name: "circleci_external_rabbitmq",
        what: "RabbitMQ",
        default_path: file::DEFAULT_PATH,
        default_path_doc: "`/etc/circleconfig/shared/rabbitmq`",
        verify_doc: "Log in with these credentials (see `verify_via_services_host` for from where) before writing. Default `true`.",
        drift_doc: "",
        secret_in_file: true,
        changes: None,
        checks: &[
            ("host", Check::Host),
            ("port", Check::Port),
            ("username", Check::NonEmpty),
            ("password_wo", Check::PasswordPair),
        ],
        compat: Some(Compat {
            table: versions::RABBITMQ,
            attr: Some("host"),
        }),
    };

    fn block(&self) -> Block {
        super::password_attrs(Block::new()
            .description(
                "Points CircleCI Server at an external RabbitMQ (runbook: *Setting up External RabbitMQ*). \
                 Logs in over AMQP with the credentials first (a refused login writes nothing), then writes \
                 `RABBITMQ_HOST`, `RABBITMQ_PORT`, `RABBITMQ_USERNAME` and `RABBITMQ_PASSWORD` to the config \
                 file on the Services machine (mode 0600).",
            )
            .attr(Attribute::new("host", Type::String).required().description("RabbitMQ host, as the Services machine reaches it."))
            .attr(Attribute::new("port", Type::Number).optional().computed().description(
                "AMQP port. Default `5672`.",
            ))
            .attr(Attribute::new("username", Type::String).required().description("The user CircleCI logs in as.")), "The password", "the file")
            .attr(Attribute::new("vhost", Type::String).optional().computed().description(
                "Virtual host the check logs in to. Default `/`. Not written: CircleCI uses the default.",
            ))
            .attr(Attribute::new("tls", Type::Bool).optional().computed().description(
                "Must be `false` (the default): CircleCI Server 2.17's RabbitMQ file has no TLS setting, so \
                 CircleCI speaks plain AMQP to the port written, and `true` is refused at plan.",
            ))
            .attr(Attribute::new("tls_ca_file", Type::String).optional().description(
                "Refused: there is no TLS check (see `tls`).",
            ))
    }

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        if config.get("tls").as_bool() == Some(true) {
            diags.attr_error(
                AttrPath::root("tls"),
                "CircleCI Server 2.17 cannot use TLS to RabbitMQ",
                "the runbook's /etc/circleconfig/shared/rabbitmq holds only RABBITMQ_HOST, RABBITMQ_PORT, \
                 RABBITMQ_USERNAME and RABBITMQ_PASSWORD, and neither the runbook nor CircleCI's 2.x \
                 documentation gives a setting that turns TLS on: CircleCI would speak plain AMQP to the \
                 port written here. Point it at a plain AMQP listener (tls = false, port 5672 by default).",
            );
        } else if config.get("tls_ca_file").as_str().is_some() {
            diags.attr_error(
                AttrPath::root("tls_ca_file"),
                "tls_ca_file without tls",
                "a CA file is only for a TLS check, and CircleCI Server 2.17 cannot use TLS to RabbitMQ",
            );
        }
    }

    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        _diags: &mut Diagnostics,
    ) -> Vec<&'static str> {
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
        super::set_defaults(cfg, planned, [("vhost", Value::string("/"))]);
        vec![]
    }

    fn planned_content(&self, planned: &Value, config: &Value) -> PlannedContent {
        PlannedContent::with_password(planned, config, &["host", "port", "username"], |pw| {
            inputs(planned).map_or(Err(()), |i| render(&i, pw).map_err(|_| ()))
        })
    }

    async fn prepare(&self, c: Change<'_>) -> Result<Prepared<()>, Halted> {
        let (planned, config) = (c.planned, c.config);
        let pw = required_password(config)?;
        let i = inputs(planned).ok_or_else(|| {
            Diagnostics::from(Diagnostic::error(
                "RabbitMQ settings missing",
                "set host and username",
            ))
        })?;
        let content = render(&i, pw)?;
        let mut state = planned.clone();
        let mut read = None;
        if planned.get("verify").as_bool().unwrap_or(true) {
            let ca = planned.get("tls_ca_file").as_str().map(PathBuf::from);
            let route = self
                .data
                .check_route(planned, || self.data.route())
                .map_err(Halted::from)?;
            let login = login(planned, &i, pw, ca.as_deref(), &route, self.data.timeout());
            let path = planned.get("config_path").as_str().unwrap_or_default();
            mq::login(&login)
                .await
                .map_err(|e| login_diag(e, config, path))?;
            let found = found(&login)
                .await
                .map_err(|e| login_diag(e, config, path))?;
            if let Some(c) = &Self::SPEC.compat {
                c.refuse(&found, path)?;
            }
            read = Some(found.version);
        }
        record_version(&mut state, planned, read.as_deref());
        Ok(Prepared {
            state,
            content: Some(content),
            pending: (),
        })
    }

    async fn server_version(
        &self,
        planned: &Value,
        _config: &Value,
    ) -> Option<Result<Found, String>> {
        let i = inputs(planned)?;
        let ca = planned.get("tls_ca_file").as_str().map(PathBuf::from);
        let route = self.data.check_route(planned, || self.data.route()).ok()?;
        let l = login(planned, &i, "", ca.as_deref(), &route, self.data.timeout());
        Some(found(&l).await.map_err(|e| e.to_string()))
    }

    fn refresh_from_file(&self, text: &str, fresh: &mut Value) {
        if let Ok((host, port, user)) = file::parse(text) {
            fresh.set("host", Value::string(host));
            fresh.set("port", Value::int(port as i64));
            fresh.set("username", Value::string(user));
        }
    }

    async fn import(&self, id: &str, text: &str) -> Result<Value, Diagnostics> {
        let (host, port, user) = file::parse(text).map_err(|e| cannot_import(id, e))?;
        let mut v = Value::Null;
        v.set("host", Value::string(host));
        v.set("port", Value::int(port as i64));
        v.set("username", Value::string(user));
        v.set("vhost", Value::string("/"));
        v.set("tls", Value::Bool(false));
        Ok(v)
    }
}
