//! `circleci_external_redis`: the runbook's "Setting up External Redis" and "Slanger
//! Requirements". Checks the Redis answers PING, then writes REDIS_HOST / REDIS_PORT
//! on the Services machine.

use std::sync::Arc;

use async_trait::async_trait;

use super::{file_sha256, managed_file, ssh_diag, validate};
use crate::backends;
use crate::circleci::redis::{self as file, Purpose};
use crate::plugin::{
    resource::changed, AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest, Resource,
    Schema, Type, Value,
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

/// The known inputs of one instance.
struct Inputs {
    host: String,
    port: u16,
    purpose: Purpose,
    path: String,
    verify: bool,
}

fn inputs(v: &Value) -> Result<Inputs, Diagnostics> {
    let mut diags = Diagnostics::new();
    let host = v.get("host").as_str().unwrap_or_default().to_string();
    validate::host(&host, AttrPath::root("host"), &mut diags);
    let port = validate::port(v.get("port"), AttrPath::root("port"), &mut diags)
        .unwrap_or(file::DEFAULT_PORT);
    let purpose = v
        .get("purpose")
        .as_str()
        .and_then(Purpose::parse)
        .unwrap_or(Purpose::Shared);
    let path = v
        .get("config_path")
        .as_str()
        .unwrap_or(purpose.default_path())
        .to_string();
    validate::remote_path(&path, AttrPath::root("config_path"), &mut diags);
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Inputs {
        host,
        port,
        purpose,
        path,
        verify: v.get("verify").as_bool().unwrap_or(true),
    })
}

fn render(i: &Inputs) -> Result<String, Diagnostics> {
    file::render(&i.host, i.port, i.purpose).map_err(|e| {
        Diagnostic::error("Could not render the Redis config file", e.to_string()).into()
    })
}

impl ExternalRedis {
    /// Verify (PING), then write the file. Shared by create and update.
    async fn write(&self, planned: &Value) -> Result<Value, Diagnostics> {
        let i = inputs(planned)?;
        let services = self.data.services()?;
        if i.verify {
            backends::redis::ping(&i.host, i.port, self.data.timeout()).await.map_err(|e| {
                Diagnostics::from(
                    Diagnostic::error(
                        "Redis is not reachable",
                        format!("{e}. Nothing was written to {}. Set verify = false to write the file anyway.", i.path),
                    )
                    .at(AttrPath::root("host")),
                )
            })?;
        }
        let content = render(&i)?;
        services
            .write_file(&i.path, content.as_bytes(), 0o600)
            .await
            .map_err(|e| ssh_diag("Could not write the Redis config file", e))?;
        log::info!("wrote {} ({} bytes)", i.path, content.len());
        let mut state = planned.clone();
        state.set("id", Value::string(&i.path));
        state.set("config_path", Value::string(&i.path));
        state.set(
            "file_sha256",
            Value::string(file_sha256(content.as_bytes())),
        );
        Ok(state)
    }
}

#[async_trait]
impl Resource for ExternalRedis {
    fn type_name(&self) -> &'static str {
        "circleci_external_redis"
    }

    fn schema(&self) -> Schema {
        Schema::new(
            0,
            Block::new()
                .description(
                    "Points CircleCI Server at an external Redis (runbook: *Setting up External Redis*, \
                     *Slanger Requirements*). Checks that the Redis answers `PING`, then writes `REDIS_HOST` \
                     and `REDIS_PORT` to the config file on the Services machine (mode 0600, replaced \
                     atomically). Refresh notices when the file is changed or removed out of band.",
                )
                .attr(Attribute::new("id", Type::String).computed().description("The config file's path."))
                .attr(Attribute::new("host", Type::String).required().description(
                    "Hostname or IP address of the Redis server, as the Services machine reaches it.",
                ))
                .attr(Attribute::new("port", Type::Number).optional().computed().description("Redis port. Default `6379`."))
                .attr(Attribute::new("purpose", Type::String).optional().computed().description(
                    "`shared` (default): the Redis all services share, written to `/etc/circleconfig/shared/redis`. \
                     `slanger`: a separate Redis for Slanger, written to `/etc/circleconfig/slanger/customizations` \
                     with each variable both exported and plain, as the runbook shows. Changing it replaces the resource.",
                ))
                .attr(Attribute::new("config_path", Type::String).optional().computed().description(
                    "Absolute path of the file on the Services machine. Default: the runbook's path for `purpose`. \
                     Changing it replaces the resource (the old file is removed).",
                ))
                .attr(Attribute::new("verify", Type::Bool).optional().computed().description(
                    "Check that Redis answers `PING` at `host:port` (from where Terraform runs) before writing. Default `true`.",
                ))
                .attr(Attribute::new("file_sha256", Type::String).computed().description(
                    "SHA-256 of the file as written. Refresh reads the file back; a different hash means it was \
                     changed out of band, and the next apply rewrites it.",
                )),
        )
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        if let Some(h) = config.get("host").as_str() {
            validate::host(h, AttrPath::root("host"), &mut diags);
        }
        validate::port(config.get("port"), AttrPath::root("port"), &mut diags);
        if let Some(p) = config.get("purpose").as_str() {
            if Purpose::parse(p).is_none() {
                diags.attr_error(
                    AttrPath::root("purpose"),
                    "Invalid purpose",
                    format!("{p:?} is not one of \"shared\", \"slanger\""),
                );
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
        if cfg.get("port").is_null() {
            planned.set("port", Value::int(file::DEFAULT_PORT as i64));
        }
        if cfg.get("purpose").is_null() {
            planned.set("purpose", Value::string(Purpose::Shared.as_str()));
        }
        if cfg.get("verify").is_null() {
            planned.set("verify", Value::Bool(true));
        }
        if cfg.get("config_path").is_null() {
            let p = match planned.get("purpose").as_str().and_then(Purpose::parse) {
                Some(p) => Value::string(p.default_path()),
                None => Value::Unknown,
            };
            planned.set("config_path", p);
        }
        planned.set("id", planned.get("config_path").clone());
        // The file's content follows from the inputs, so its hash is known at plan time
        // whenever they are; a refreshed hash that differs shows as drift to repair.
        let known = ["host", "port", "purpose"]
            .iter()
            .all(|n| planned.get(n).is_fully_known());
        let hash = match known
            .then(|| inputs(planned).ok().and_then(|i| render(&i).ok()))
            .flatten()
        {
            Some(content) => Value::string(file_sha256(content.as_bytes())),
            None => Value::Unknown,
        };
        planned.set("file_sha256", hash);
        let mut replace = Vec::new();
        if !req.is_create() {
            for a in ["purpose", "config_path"] {
                if changed(req.prior, planned, a) {
                    replace.push(AttrPath::root(a));
                }
            }
        }
        replace
    }

    async fn create(&self, planned: &Value, _config: &Value) -> Result<Value, Diagnostics> {
        self.write(planned).await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let Some(path) = state.get("config_path").as_str() else {
            return Ok(Some(state.clone()));
        };
        let services = self.data.services()?;
        let Some(f) = services
            .read_file(path)
            .await
            .map_err(|e| ssh_diag("Could not read the Redis config file", e))?
        else {
            log::info!("{path} is gone from the Services machine; planning to create it again");
            return Ok(None);
        };
        let mut fresh = state.clone();
        fresh.set("file_sha256", Value::string(file_sha256(&f.content)));
        match std::str::from_utf8(&f.content)
            .map_err(|e| e.to_string())
            .and_then(file::parse)
        {
            Ok(parsed) => {
                fresh.set("host", Value::string(parsed.host));
                fresh.set("port", Value::int(parsed.port as i64));
            }
            Err(e) => log::warn!("{path} no longer parses ({e}); the next apply rewrites it"),
        }
        Ok(Some(fresh))
    }

    async fn update(
        &self,
        _prior: &Value,
        planned: &Value,
        _config: &Value,
    ) -> Result<Value, Diagnostics> {
        self.write(planned).await
    }

    async fn delete(&self, prior: &Value) -> Result<(), Diagnostics> {
        let Some(path) = prior.get("config_path").as_str() else {
            return Ok(());
        };
        let services = self.data.services()?;
        let existed = services
            .remove_file(path)
            .await
            .map_err(|e| ssh_diag("Could not delete the Redis config file", e))?;
        log::info!("deleted {path} (existed: {existed})");
        Ok(())
    }

    async fn import(&self, id: &str) -> Result<Value, Diagnostics> {
        let (text, hash) =
            managed_file::read_for_import(&self.data, id, Purpose::Shared.default_path(), "Redis")
                .await?;
        let parsed = file::parse(&text).map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Cannot import this file",
                format!("{id}: {e}"),
            ))
        })?;
        let purpose = if id == Purpose::Slanger.default_path() {
            Purpose::Slanger
        } else {
            parsed.purpose
        };
        let mut v = Value::Null;
        v.set("id", Value::string(id));
        v.set("config_path", Value::string(id));
        v.set("host", Value::string(parsed.host));
        v.set("port", Value::int(parsed.port as i64));
        v.set("purpose", Value::string(purpose.as_str()));
        v.set("verify", Value::Bool(true));
        v.set("file_sha256", Value::string(hash));
        Ok(v)
    }
}
