//! `circleci_external_rabbitmq`: the runbook's "Setting up External RabbitMQ". Logs in
//! with the credentials (AMQP), then writes /etc/circleconfig/shared/rabbitmq.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use super::config_file::{
    cannot_import, record_version, Change, Compat, FileResource, Found, Halted, PlannedContent,
    Prepared, Spec,
};
use super::model::{Known, Model};
use super::validate::Check;
use super::{password_attr, required_password};
use crate::backends::rabbitmq::{self as mq, MqError};
use crate::backends::tunnel::Route;
use crate::circleci::rabbitmq as file;
use crate::circleci::versions;
use crate::plugin::{AttrPath, Diagnostic, Diagnostics, PlanRequest, Value};
use crate::provider::ProviderData;
use crate::secret::Secret;

pub(crate) struct ExternalRabbitmq {
    data: Arc<ProviderData>,
}

impl ExternalRabbitmq {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        ExternalRabbitmq { data }
    }
}

crate::model! {
    /// `circleci_external_rabbitmq`'s own attributes.
    pub(crate) struct Rabbitmq / RabbitmqAtPlan {
        host: String [required, check(Check::Host), doc("RabbitMQ host, as the Services machine reaches it.")],
        port: u16 [optional, computed, check(Check::Port), doc("AMQP port. Default `5672`.")],
        username: String [required, check(Check::NonEmpty), doc("The user CircleCI logs in as.")],
        password: Option<Secret> [password_kept("The password")],
        password_wo: Option<Secret> [password_write_only("The password")],
        password_wo_version: Option<f64> [password_version("the file")],
        vhost: String [default("/".to_string()), doc(
            "Virtual host the check logs in to. Not written: CircleCI uses the default."
        )],
        tls: bool [default(false), doc(
            "Must be `false`: CircleCI Server 2.17's RabbitMQ file has no TLS setting, so CircleCI \
             speaks plain AMQP to the port written, and `true` is refused at plan."
        )],
        tls_ca_file: Option<String> [optional, doc("Refused: there is no TLS check (see `tls`).")],
    }
}

/// Where and how to reach the broker; the password only for a login.
fn login<'a>(
    m: &'a Rabbitmq,
    password: &'a str,
    route: &'a Route,
    timeout: std::time::Duration,
) -> mq::Login<'a> {
    mq::Login {
        host: &m.host,
        port: m.port,
        user: &m.username,
        password,
        vhost: &m.vhost,
        tls: m.tls,
        ca_file: m.tls_ca_file.as_deref().map(Path::new),
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

fn render(m: &Rabbitmq, pw: &str) -> Result<String, Diagnostics> {
    file::render(&m.host, m.port, &m.username, pw).map_err(|e| {
        Diagnostic::error("Could not render the RabbitMQ config file", e.to_string()).into()
    })
}

/// The model of a plan whose host, port and user are known (what the file and the
/// version check depend on); the check's other settings at their defaults while not
/// known, the passwords left out.
fn at_plan(planned: &Value) -> Option<Rabbitmq> {
    let p = RabbitmqAtPlan::decode(planned).ok()?;
    Some(Rabbitmq {
        host: p.host.known()?,
        port: p.port.known()?,
        username: p.username.known()?,
        password: None,
        password_wo: None,
        password_wo_version: None,
        vhost: p.vhost.known().unwrap_or_else(|| "/".into()),
        tls: p.tls.known().unwrap_or(false),
        tls_ca_file: p.tls_ca_file.known().flatten(),
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
        format!(
            "{}. Nothing was written to {path}. Set verify = false to write the file anyway.",
            crate::backends::chain(&e)
        ),
    )
    .at(at)
    .into()
}

#[async_trait]
impl FileResource for ExternalRabbitmq {
    type Pending = ();
    type Own = Rabbitmq;

    const SPEC: Spec = Spec {
        type_name: "circleci_external_rabbitmq",
        description: "Points CircleCI Server at an external RabbitMQ (runbook: *Setting up External \
                      RabbitMQ*). Logs in over AMQP with the credentials first (a refused login writes \
                      nothing), then writes `RABBITMQ_HOST`, `RABBITMQ_PORT`, `RABBITMQ_USERNAME` and \
                      `RABBITMQ_PASSWORD` to the config file on the Services machine (mode 0600).",
        what: "RabbitMQ",
        default_path: file::DEFAULT_PATH,
        default_path_doc: "`/etc/circleconfig/shared/rabbitmq`",
        verify_doc: "Log in with these credentials (see `verify_via_services_host` for from where) before writing. Default `true`.",
        drift_doc: "",
        secret_in_file: true,
        changes: None,
        compat: Some(Compat {
            table: versions::RABBITMQ,
            attr: Some("host"),
        }),
    };

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        let Ok(config) = RabbitmqAtPlan::decode(config) else {
            return;
        };
        if config.tls == Known::Value(true) {
            diags.attr_error(
                AttrPath::root("tls"),
                "CircleCI Server 2.17 cannot use TLS to RabbitMQ",
                "the runbook's /etc/circleconfig/shared/rabbitmq holds only RABBITMQ_HOST, RABBITMQ_PORT, \
                 RABBITMQ_USERNAME and RABBITMQ_PASSWORD, and neither the runbook nor CircleCI's 2.x \
                 documentation gives a setting that turns TLS on: CircleCI would speak plain AMQP to the \
                 port written here. Point it at a plain AMQP listener (tls = false, port 5672 by default).",
            );
        } else if matches!(config.tls_ca_file, Known::Value(Some(_))) {
            diags.attr_error(
                AttrPath::root("tls_ca_file"),
                "tls_ca_file without tls",
                "a CA file is only for a TLS check, and CircleCI Server 2.17 cannot use TLS to RabbitMQ",
            );
        }
    }

    async fn plan(&self, req: &PlanRequest<'_>, planned: &mut Value, diags: &mut Diagnostics) {
        // The port's default follows `tls`, which `validate` holds at `false`.
        let (config, mut plan) = match (
            RabbitmqAtPlan::decode(req.config),
            RabbitmqAtPlan::decode(planned),
        ) {
            (Ok(c), Ok(p)) => (c, p),
            (Err(e), _) | (_, Err(e)) => return diags.extend(e.into()),
        };
        if config.port.is_null() {
            plan.port = match plan.tls {
                Known::Value(true) => Known::Value(file::DEFAULT_TLS_PORT),
                Known::Value(false) => Known::Value(file::DEFAULT_PORT),
                Known::Unknown | Known::Null => Known::Unknown,
            };
            plan.encode(planned);
        }
    }

    fn planned_content(&self, planned: &Value, config: &Value) -> PlannedContent {
        PlannedContent::with_password(config, |pw| {
            at_plan(planned).map_or(Err(()), |m| render(&m, pw).map_err(|_| ()))
        })
    }

    async fn prepare(&self, c: Change<'_>) -> Result<Prepared<()>, Halted> {
        let (planned, config) = (c.planned, c.config);
        let pw = required_password(config)?;
        let pw = pw.expose();
        let (m, common) = (
            Rabbitmq::decode(planned).map_err(Diagnostics::from)?,
            c.common()?,
        );
        let content = render(&m, pw)?;
        let mut state = planned.clone();
        let mut read = None;
        if common.verify {
            let route = self
                .data
                .check_route(planned, || self.data.route())
                .map_err(Halted::from)?;
            let login = login(&m, pw, &route, self.data.timeout());
            let path = &common.config_path;
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
        let m = at_plan(planned)?;
        let route = self.data.check_route(planned, || self.data.route()).ok()?;
        let l = login(&m, "", &route, self.data.timeout());
        Some(found(&l).await.map_err(|e| crate::backends::chain(&e)))
    }

    fn refresh_from_file(&self, text: &str, fresh: &mut Value) {
        if let (Ok(mut m), Ok((host, port, user))) = (Rabbitmq::decode(fresh), file::parse(text)) {
            (m.host, m.port, m.username) = (host, port, user);
            m.encode(fresh);
        }
    }

    async fn import(&self, id: &str, text: &str) -> Result<Value, Diagnostics> {
        let (host, port, username) = file::parse(text).map_err(|e| cannot_import(id, e))?;
        let mut v = Value::Null;
        Rabbitmq {
            host,
            port,
            username,
            password: None,
            password_wo: None,
            password_wo_version: None,
            vhost: "/".into(),
            tls: false,
            tls_ca_file: None,
        }
        .encode(&mut v);
        Ok(v)
    }
}
