//! `circleci_external_redis`: the runbook's "Setting up External Redis" and "Slanger
//! Requirements". Checks the Redis answers PING, then writes REDIS_HOST / REDIS_PORT
//! on the Services machine.

use std::sync::Arc;

use async_trait::async_trait;

use super::config_file::{
    cannot_import, record_version, Change, Compat, FileResource, Found, Halted, PlannedContent,
    Prepared, Spec,
};
use super::model::{Known, Model};
use super::validate::Check;
use crate::backends;
use crate::circleci::redis::{self as file, Purpose};
use crate::circleci::versions;
use crate::plugin::{AttrPath, Diagnostic, Diagnostics, Value};
use crate::provider::ProviderData;

pub(crate) struct ExternalRedis {
    data: Arc<ProviderData>,
}

impl ExternalRedis {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        ExternalRedis { data }
    }
}

crate::word_field!(Purpose);

crate::model! {
    /// `circleci_external_redis`'s own attributes.
    pub(crate) struct Redis / RedisAtPlan {
        host: String [required, check(Check::Host), doc(
            "Hostname or IP address of the Redis server, as the Services machine reaches it."
        )],
        port: u16 [default(file::DEFAULT_PORT), check(Check::Port), doc("Redis port.")],
        purpose: Purpose [default(Purpose::Shared), check(Check::OneOf(&["shared", "slanger"])),
            replaces, doc(
            "`shared`: the Redis all services share, written to `/etc/circleconfig/shared/redis`. \
             `slanger`: a separate Redis for Slanger, written to `/etc/circleconfig/slanger/customizations` \
             with each variable both exported and plain, as the runbook shows."
        )],
    }
}

/// The file for these values.
fn render(m: &Redis) -> Result<String, Diagnostics> {
    file::render(&m.host, m.port, m.purpose).map_err(|e| {
        Diagnostic::error("Could not render the Redis config file", e.to_string()).into()
    })
}

/// The model of a plan whose every attribute the file depends on is known.
fn at_plan(planned: &Value) -> Option<Redis> {
    let p = RedisAtPlan::decode(planned).ok()?;
    Some(Redis {
        host: p.host.known()?,
        port: p.port.known()?,
        purpose: p.purpose.known()?,
    })
}

#[async_trait]
impl FileResource for ExternalRedis {
    type Pending = ();
    type Own = Redis;

    const SPEC: Spec = Spec {
        type_name: "circleci_external_redis",
        description: "Points CircleCI Server at an external Redis (runbook: *Setting up External Redis*, \
                      *Slanger Requirements*). Checks that the Redis answers `PING`, then writes `REDIS_HOST` \
                      and `REDIS_PORT` to the config file on the Services machine (mode 0600, replaced \
                      atomically). Refresh notices when the file is changed or removed out of band.",
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
        compat: Some(Compat {
            table: versions::REDIS,
            attr: Some("host"),
        }),
    };

    fn default_path(&self, planned: &Value) -> Value {
        match RedisAtPlan::decode(planned).map(|p| p.purpose) {
            Ok(Known::Value(p)) => Value::string(p.default_path()),
            _ => Value::Unknown,
        }
    }

    fn planned_content(&self, planned: &Value, _config: &Value) -> PlannedContent {
        match at_plan(planned).map(|m| render(&m)) {
            Some(Ok(c)) => PlannedContent::Known(c),
            _ => PlannedContent::Unknown,
        }
    }

    async fn prepare(&self, c: Change<'_>) -> Result<Prepared<()>, Halted> {
        let planned = c.planned;
        let (m, common) = (
            Redis::decode(planned).map_err(Diagnostics::from)?,
            c.common()?,
        );
        let content = render(&m)?;
        let mut state = planned.clone();
        let mut read = None;
        if common.verify {
            let route = self
                .data
                .check_route(planned, || self.data.route())
                .map_err(Halted::from)?;
            let version = backends::redis::ping(&route, &m.host, m.port, self.data.timeout())
                .await
                .map_err(|e| {
                    Diagnostics::from(
                        Diagnostic::error(
                            "Redis is not reachable",
                            format!(
                                "{}. Nothing was written to {}. Set verify = false to write the file anyway.",
                                backends::chain(&e),
                                common.config_path
                            ),
                        )
                        .at(AttrPath::root("host")),
                    )
                })?;
            let found = Found {
                version,
                at: crate::backends::tunnel::host_port(&m.host, m.port),
            };
            if let Some(c) = &Self::SPEC.compat {
                c.refuse(&found, &common.config_path)?;
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
        Some(
            backends::redis::ping(&route, &m.host, m.port, self.data.timeout())
                .await
                .map(|version| Found {
                    version,
                    at: crate::backends::tunnel::host_port(&m.host, m.port),
                })
                .map_err(|e| backends::chain(&e)),
        )
    }

    fn refresh_from_file(&self, text: &str, fresh: &mut Value) {
        let Ok(mut m) = Redis::decode(fresh) else {
            return;
        };
        match file::parse(text) {
            Ok(parsed) => {
                (m.host, m.port) = (parsed.host, parsed.port);
                m.encode(fresh);
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
        Redis {
            host: parsed.host,
            port: parsed.port,
            purpose,
        }
        .encode(&mut v);
        Ok(v)
    }
}
