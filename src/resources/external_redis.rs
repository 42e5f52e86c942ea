//! `circleci_external_redis`: the runbook's "Setting up External Redis" and "Slanger
//! Requirements". Checks the Redis answers PING, then writes REDIS_HOST / REDIS_PORT
//! on the Services machine.

use std::sync::Arc;

use async_trait::async_trait;

use super::config_file::{
    cannot_import, record_version, Change, Compat, FileResource, Found, Halted, PlannedContent,
    Prepared, Spec,
};
use super::validate::Check;
use crate::backends;
use crate::circleci::redis::{self as file, Purpose};
use crate::circleci::versions;
use crate::plugin::{
    AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest, Type, Value,
};
use crate::provider::ProviderData;

pub struct ExternalRedis {
    data: Arc<ProviderData>,
}

impl ExternalRedis {
    pub fn new(data: Arc<ProviderData>) -> Self {
        ExternalRedis { data }
    }
}

fn purpose(v: &Value) -> Option<Purpose> {
    v.get("purpose").as_str().and_then(Purpose::parse)
}

/// The file for these values; `None` while host or port is unknown.
fn render(v: &Value) -> Option<Result<String, Diagnostics>> {
    let host = v.get("host").as_str()?;
    let port = u16::try_from(v.get("port").as_i64()?).ok()?;
    Some(
        file::render(host, port, purpose(v).unwrap_or(Purpose::Shared)).map_err(|e| {
            Diagnostic::error("Could not render the Redis config file", e.to_string()).into()
        }),
    )
}

#[async_trait]
impl FileResource for ExternalRedis {
    type Pending = ();

    const SPEC: Spec = Spec {
        type_name: "circleci_external_redis",
        what: "Redis",
        default_path: "/etc/circleconfig/shared/redis",
        default_path_doc: "the runbook's path for `purpose`: `/etc/circleconfig/shared/redis`, or \
                           `/etc/circleconfig/slanger/customizations` for `slanger`",
        verify_doc:
            "Check that Redis answers `PING` at `host:port` (see `verify_via_services_host` for from where) before \
                     writing. Default `true`.",
        drift_doc: "",
        secret_in_file: false,
        changes: None,
        checks: &[
            ("host", Check::Host),
            ("port", Check::Port),
            ("purpose", Check::OneOf(&["shared", "slanger"])),
        ],
        compat: Some(Compat {
            table: versions::REDIS,
            attr: Some("host"),
        }),
    };

    fn block(&self) -> Block {
        Block::new()
            .description(
                "Points CircleCI Server at an external Redis (runbook: *Setting up External Redis*, \
                 *Slanger Requirements*). Checks that the Redis answers `PING`, then writes `REDIS_HOST` \
                 and `REDIS_PORT` to the config file on the Services machine (mode 0600, replaced \
                 atomically). Refresh notices when the file is changed or removed out of band.",
            )
            .attr(Attribute::new("host", Type::String).required().description(
                "Hostname or IP address of the Redis server, as the Services machine reaches it.",
            ))
            .attr(Attribute::new("port", Type::Number).optional().computed().description("Redis port. Default `6379`."))
            .attr(Attribute::new("purpose", Type::String).optional().computed().description(
                "`shared` (default): the Redis all services share, written to `/etc/circleconfig/shared/redis`. \
                 `slanger`: a separate Redis for Slanger, written to `/etc/circleconfig/slanger/customizations` \
                 with each variable both exported and plain, as the runbook shows. Changing it replaces the resource.",
            ))
    }

    fn default_path(&self, planned: &Value) -> Value {
        match purpose(planned) {
            Some(p) => Value::string(p.default_path()),
            None => Value::Unknown,
        }
    }

    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        _diags: &mut Diagnostics,
    ) -> Vec<&'static str> {
        super::set_defaults(
            req.config,
            planned,
            [
                ("port", Value::int(file::DEFAULT_PORT as i64)),
                ("purpose", Value::string(Purpose::Shared.as_str())),
            ],
        );
        vec!["purpose"]
    }

    fn planned_content(&self, planned: &Value, _config: &Value) -> PlannedContent {
        match render(planned) {
            Some(Ok(c)) if planned.get("purpose").is_fully_known() => PlannedContent::Known(c),
            _ => PlannedContent::Unknown,
        }
    }

    async fn prepare(&self, c: Change<'_>) -> Result<Prepared<()>, Halted> {
        let planned = c.planned;
        let content = render(planned).unwrap_or_else(|| {
            Err(Diagnostic::error("Redis host or port missing", "set host").into())
        })?;
        let host = planned.get("host").as_str().unwrap_or_default();
        let port = planned.get("port").as_i64().unwrap_or_default() as u16;
        let mut state = planned.clone();
        let mut read = None;
        if planned.get("verify").as_bool().unwrap_or(true) {
            let route = self
                .data
                .check_route(planned, || self.data.route())
                .map_err(Halted::from)?;
            let version = backends::redis::ping(&route, host, port, self.data.timeout())
                .await
                .map_err(|e| {
                    Diagnostics::from(
                        Diagnostic::error(
                            "Redis is not reachable",
                            format!(
                                "{e}. Nothing was written to {}. Set verify = false to write the file anyway.",
                                planned.get("config_path").as_str().unwrap_or_default()
                            ),
                        )
                        .at(AttrPath::root("host")),
                    )
                })?;
            let found = Found {
                version,
                at: crate::backends::tunnel::host_port(host, port),
            };
            if let Some(c) = &Self::SPEC.compat {
                c.refuse(
                    &found,
                    planned.get("config_path").as_str().unwrap_or_default(),
                )?;
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
        let host = planned.get("host").as_str()?;
        let port = u16::try_from(planned.get("port").as_i64()?).ok()?;
        let route = self.data.check_route(planned, || self.data.route()).ok()?;
        Some(
            backends::redis::ping(&route, host, port, self.data.timeout())
                .await
                .map(|version| Found {
                    version,
                    at: crate::backends::tunnel::host_port(host, port),
                })
                .map_err(|e| e.to_string()),
        )
    }

    fn refresh_from_file(&self, text: &str, fresh: &mut Value) {
        match file::parse(text) {
            Ok(parsed) => {
                fresh.set("host", Value::string(parsed.host));
                fresh.set("port", Value::int(parsed.port as i64));
            }
            Err(e) => log::warn!(
                "the Redis config file no longer parses ({e}); the next apply rewrites it"
            ),
        }
    }

    async fn import(&self, id: &str, text: &str) -> Result<Value, Diagnostics> {
        let parsed = file::parse(text).map_err(|e| cannot_import(id, e))?;
        let purpose = if id == Purpose::Slanger.default_path() {
            Purpose::Slanger
        } else {
            parsed.purpose
        };
        let mut v = Value::Null;
        v.set("host", Value::string(parsed.host));
        v.set("port", Value::int(parsed.port as i64));
        v.set("purpose", Value::string(purpose.as_str()));
        Ok(v)
    }
}
