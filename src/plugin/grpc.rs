//! The tfplugin6 Provider service and go-plugin's controller and stdio services, on top
//! of the [`Provider`] and [`Resource`] traits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::convert::{
    check_write_only, decode, diags_to_pb, diags_to_pb_shielded, encode, null_write_only,
    path_to_pb, schema_to_pb,
};
use super::diag::{Diagnostic, Diagnostics};
use super::resource::{ClientInfo, PlanRequest, Provider, Resource};
use super::schema::Schema;
use super::tfplugin6 as pb;
use super::value::Value;

type Rpc<T> = Result<Response<T>, Status>;

/// Shared by every RPC of one provider process.
pub(crate) struct ProviderService {
    provider: Arc<dyn Provider>,
    resources: HashMap<&'static str, Arc<dyn Resource>>,
    schemas: HashMap<&'static str, Schema>,
    provider_schema: Schema,
    /// Built once, on first request: the provider starts several times per plan and
    /// most starts never ask for the schema.
    schema_response: Mutex<Option<pb::get_provider_schema::Response>>,
    /// Flips to true on StopProvider; in-flight work watches it.
    stop: watch::Sender<bool>,
}

impl ProviderService {
    pub(crate) fn new(provider: Arc<dyn Provider>) -> Self {
        let mut resources = HashMap::new();
        let mut schemas = HashMap::new();
        for r in provider.resources() {
            schemas.insert(r.type_name(), r.schema());
            resources.insert(r.type_name(), r);
        }
        let (stop, _) = watch::channel(false);
        ProviderService {
            provider_schema: provider.schema(),
            provider,
            resources,
            schemas,
            schema_response: Mutex::new(None),
            stop,
        }
    }

    fn resource(&self, type_name: &str) -> Result<(&Arc<dyn Resource>, &Schema), Diagnostics> {
        match (self.resources.get(type_name), self.schemas.get(type_name)) {
            (Some(r), Some(s)) => Ok((r, s)),
            _ => Err(Diagnostic::error(
                "Unknown resource type",
                format!("this provider has no resource type {type_name:?}"),
            )
            .into()),
        }
    }

    /// Diagnostics about the provider's configuration (`type_name` None) or a
    /// resource's, never attached to a sensitive or write-only attribute.
    fn diags(&self, type_name: Option<&str>, d: &Diagnostics) -> Vec<pb::Diagnostic> {
        let schema = match type_name {
            None => Some(&self.provider_schema),
            Some(t) => self.schemas.get(t),
        };
        match schema {
            Some(s) => diags_to_pb_shielded(d, &s.block),
            None => diags_to_pb(d),
        }
    }

    /// Runs `fut` unless or until StopProvider is called. Only for calls that change
    /// nothing (read, plan, import): apply steps see the stop through `stop`.
    async fn cancellable<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Diagnostics>>,
    ) -> Result<T, Diagnostics> {
        let mut rx = self.stop.subscribe();
        if *rx.borrow() {
            return Err(stopped());
        }
        tokio::select! {
            r = fut => r,
            _ = rx.wait_for(|s| *s) => Err(stopped()),
        }
    }

    fn build_schema_response(&self) -> pb::get_provider_schema::Response {
        let resource_schemas = self
            .schemas
            .iter()
            .map(|(name, s)| (name.to_string(), schema_to_pb(s)))
            .collect();
        pb::get_provider_schema::Response {
            provider: Some(schema_to_pb(&self.provider.schema())),
            resource_schemas,
            server_capabilities: Some(capabilities()),
            ..Default::default()
        }
    }
}

/// One call's time, at debug level: where a plan's time goes, per resource type
/// (`make bench` reads these lines; `TF_LOG_PROVIDER=debug` shows them).
fn timed(rpc: &str, type_name: &str, started: std::time::Instant) {
    log::debug!(
        "{rpc} {type_name}: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

fn stopped() -> Diagnostics {
    Diagnostic::error(
        "Operation cancelled",
        "Terraform asked the provider to stop (interrupt) before this operation finished. \
         Files on the Services machine are replaced atomically, so each is either the old or \
         the new version; run terraform apply again to finish.",
    )
    .into()
}

fn capabilities() -> pb::ServerCapabilities {
    pb::ServerCapabilities {
        plan_destroy: true,
        get_provider_schema_optional: true,
        move_resource_state: false,
    }
}

// ---------------------------------------------------------------------------- tfplugin6

type Out<T> = Rpc<T>;

#[tonic::async_trait]
impl pb::provider_server::Provider for ProviderService {
    async fn get_metadata(
        &self,
        _: Request<pb::get_metadata::Request>,
    ) -> Out<pb::get_metadata::Response> {
        let mut resources: Vec<_> = self
            .resources
            .keys()
            .map(|n| pb::get_metadata::ResourceMetadata {
                type_name: n.to_string(),
            })
            .collect();
        resources.sort_by(|a, b| a.type_name.cmp(&b.type_name));
        Ok(Response::new(pb::get_metadata::Response {
            server_capabilities: Some(capabilities()),
            resources,
            ..Default::default()
        }))
    }

    async fn get_provider_schema(
        &self,
        _: Request<pb::get_provider_schema::Request>,
    ) -> Out<pb::get_provider_schema::Response> {
        let mut cached = self
            .schema_response
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let resp = cached
            .get_or_insert_with(|| self.build_schema_response())
            .clone();
        Ok(Response::new(resp))
    }

    async fn validate_provider_config(
        &self,
        req: Request<pb::validate_provider_config::Request>,
    ) -> Out<pb::validate_provider_config::Response> {
        let diags = match decode(&req.get_ref().config, "provider configuration") {
            Ok(cfg) => self.provider.validate(&cfg),
            Err(d) => d,
        };
        Ok(Response::new(pb::validate_provider_config::Response {
            diagnostics: self.diags(None, &diags),
        }))
    }

    async fn validate_resource_config(
        &self,
        req: Request<pb::validate_resource_config::Request>,
    ) -> Out<pb::validate_resource_config::Response> {
        let req = req.into_inner();
        let diags = match (
            self.resource(&req.type_name),
            decode(&req.config, "resource configuration"),
        ) {
            (Ok((r, _)), Ok(cfg)) => r.validate(&cfg),
            (Err(d), _) | (_, Err(d)) => d,
        };
        Ok(Response::new(pb::validate_resource_config::Response {
            diagnostics: self.diags(Some(&req.type_name), &diags),
        }))
    }

    async fn validate_data_resource_config(
        &self,
        req: Request<pb::validate_data_resource_config::Request>,
    ) -> Out<pb::validate_data_resource_config::Response> {
        let d: Diagnostics = no_data_source(&req.get_ref().type_name);
        Ok(Response::new(pb::validate_data_resource_config::Response {
            diagnostics: diags_to_pb(&d),
        }))
    }

    async fn upgrade_resource_state(
        &self,
        req: Request<pb::upgrade_resource_state::Request>,
    ) -> Out<pb::upgrade_resource_state::Response> {
        let req = req.into_inner();
        let result = self.resource(&req.type_name).and_then(|(_, schema)| {
            let raw = req.raw_state.unwrap_or_default();
            if raw.json.is_empty() {
                if raw.flatmap.is_empty() {
                    return Ok(Value::Null);
                }
                return Err(Diagnostic::error(
                    "Unsupported state format",
                    "this state was written in the legacy flatmap format, which this provider never used",
                )
                .into());
            }
            if req.version > schema.version {
                return Err(Diagnostic::error(
                    "State from a newer provider",
                    format!(
                        "the stored state has schema version {} but this provider knows only up to {}; \
                         use the provider version that wrote it",
                        req.version, schema.version
                    ),
                )
                .into());
            }
            let v = Value::from_json(&raw.json)
                .map_err(|e| Diagnostics::from(Diagnostic::error("Stored state is not valid JSON", e.to_string())))?;
            Ok(v.conform(&schema.block))
        });
        let resp = match result {
            Ok(v) => pb::upgrade_resource_state::Response {
                upgraded_state: encode(&v),
                diagnostics: vec![],
            },
            Err(d) => pb::upgrade_resource_state::Response {
                upgraded_state: None,
                diagnostics: self.diags(Some(&req.type_name), &d),
            },
        };
        Ok(Response::new(resp))
    }

    async fn configure_provider(
        &self,
        req: Request<pb::configure_provider::Request>,
    ) -> Out<pb::configure_provider::Response> {
        let req = req.into_inner();
        let client = ClientInfo {
            terraform_version: req.terraform_version.clone(),
            write_only_allowed: req
                .client_capabilities
                .map(|c| c.write_only_attributes_allowed)
                .unwrap_or(false),
        };
        *CLIENT.lock().unwrap_or_else(|e| e.into_inner()) = client.clone();
        let diags = match decode(&req.config, "provider configuration") {
            Ok(cfg) => self.provider.configure(&cfg, &client).await,
            Err(d) => d,
        };
        Ok(Response::new(pb::configure_provider::Response {
            diagnostics: self.diags(None, &diags),
        }))
    }

    async fn read_resource(
        &self,
        req: Request<pb::read_resource::Request>,
    ) -> Out<pb::read_resource::Response> {
        let req = req.into_inner();
        let private = req.private.clone();
        let started = std::time::Instant::now();
        let result = async {
            let (r, schema) = self.resource(&req.type_name)?;
            let state = decode(&req.current_state, "current state")?;
            if state.is_null() {
                return Ok(Value::Null);
            }
            let fresh = self.cancellable(r.read(&state)).await?;
            Ok(match fresh {
                Some(mut v) => {
                    null_write_only(&mut v, &schema.block);
                    v.conform(&schema.block)
                }
                None => Value::Null,
            })
        }
        .await;
        timed("ReadResource", &req.type_name, started);
        Ok(Response::new(match result {
            Ok(v) => pb::read_resource::Response {
                new_state: encode(&v),
                private,
                ..Default::default()
            },
            Err(d) => pb::read_resource::Response {
                new_state: req.current_state,
                diagnostics: self.diags(Some(&req.type_name), &d),
                private,
                ..Default::default()
            },
        }))
    }

    async fn plan_resource_change(
        &self,
        req: Request<pb::plan_resource_change::Request>,
    ) -> Out<pb::plan_resource_change::Response> {
        let req = req.into_inner();
        let client = ClientInfo {
            write_only_allowed: req
                .client_capabilities
                .as_ref()
                .map(|c| c.write_only_attributes_allowed)
                .unwrap_or(false),
            ..CLIENT.lock().unwrap_or_else(|e| e.into_inner()).clone()
        };
        let mut diags = Diagnostics::new();
        let started = std::time::Instant::now();
        let result = async {
            let (r, schema) = self.resource(&req.type_name)?;
            let prior = decode(&req.prior_state, "prior state")?;
            let proposed = decode(&req.proposed_new_state, "proposed new state")?;
            let config = decode(&req.config, "configuration")?;
            if proposed.is_null() {
                // Destroy: nothing to add, maybe something to say.
                if !prior.is_null() {
                    self.cancellable(async {
                        r.plan_destroy(&prior, &mut diags).await;
                        Ok(())
                    })
                    .await?;
                }
                return Ok((Value::Null, vec![]));
            }
            check_write_only(&config, &schema.block, &client, &mut diags);
            let mut planned = proposed;
            null_write_only(&mut planned, &schema.block);
            if prior.is_null() {
                for a in schema.block.attributes.iter().filter(|a| a.computed) {
                    if config.get(&a.name).is_null() {
                        planned.set(&a.name, Value::Unknown);
                    }
                }
            }
            let preq = PlanRequest {
                prior: &prior,
                config: &config,
            };
            let replace = self
                .cancellable(async { Ok(r.plan(&preq, &mut planned, &mut diags).await) })
                .await?;
            Ok((planned, replace))
        }
        .await;
        timed("PlanResourceChange", &req.type_name, started);
        let resp = match result {
            Ok((planned, replace)) => pb::plan_resource_change::Response {
                planned_state: encode(&planned),
                requires_replace: replace.iter().map(path_to_pb).collect(),
                planned_private: req.prior_private,
                diagnostics: self.diags(Some(&req.type_name), &diags),
                ..Default::default()
            },
            Err(d) => {
                diags.extend(d);
                pb::plan_resource_change::Response {
                    diagnostics: self.diags(Some(&req.type_name), &diags),
                    ..Default::default()
                }
            }
        };
        Ok(Response::new(resp))
    }

    async fn apply_resource_change(
        &self,
        req: Request<pb::apply_resource_change::Request>,
    ) -> Out<pb::apply_resource_change::Response> {
        let req = req.into_inner();
        let result = async {
            let (r, schema) = self.resource(&req.type_name)?;
            let prior = decode(&req.prior_state, "prior state")?;
            let planned = decode(&req.planned_state, "planned state")?;
            let config = decode(&req.config, "configuration")?;
            // Not cancellable: a step stopped half-way must still return what it
            // changed. Steps look at the stop signal at their own safe points.
            let rx = self.stop.subscribe();
            if *rx.borrow() {
                return Err(stopped());
            }
            let applied = super::stop::scope(rx, async {
                if planned.is_null() {
                    r.delete(&prior).await
                } else if prior.is_null() {
                    r.create(&planned, &config).await
                } else {
                    r.update(&prior, &planned, &config).await
                }
            })
            .await;
            let mut diags = applied.diags;
            let new = match applied.state {
                Some(v) => v,
                // Deleted.
                None if planned.is_null() && !diags.has_errors() => Value::Null,
                // Failed before changing anything: the prior state is still the truth.
                None => return Err(diags),
            };
            let mut new = if new.is_null() {
                new
            } else {
                new.conform(&schema.block)
            };
            null_write_only(&mut new, &schema.block);
            if !new.is_fully_known() {
                diags.push(Diagnostic::error(
                    "Provider bug: unknown value after apply",
                    format!(
                        "{} left a value unknown after apply; please report this",
                        req.type_name
                    ),
                ));
                return Err(diags);
            }
            Ok((new, diags))
        }
        .await;
        Ok(Response::new(match result {
            Ok((v, d)) => pb::apply_resource_change::Response {
                new_state: encode(&v),
                private: req.planned_private,
                diagnostics: self.diags(Some(&req.type_name), &d),
                ..Default::default()
            },
            // A failure that changed something returned a state above; here nothing
            // was changed, so the prior state is still the truth.
            Err(d) => pb::apply_resource_change::Response {
                new_state: req.prior_state,
                diagnostics: self.diags(Some(&req.type_name), &d),
                ..Default::default()
            },
        }))
    }

    async fn import_resource_state(
        &self,
        req: Request<pb::import_resource_state::Request>,
    ) -> Out<pb::import_resource_state::Response> {
        let req = req.into_inner();
        let result = async {
            let (r, schema) = self.resource(&req.type_name)?;
            let mut v = self
                .cancellable(r.import(&req.id))
                .await?
                .conform(&schema.block);
            null_write_only(&mut v, &schema.block);
            Ok::<_, Diagnostics>(v)
        }
        .await;
        Ok(Response::new(match result {
            Ok(v) => pb::import_resource_state::Response {
                imported_resources: vec![pb::import_resource_state::ImportedResource {
                    type_name: req.type_name,
                    state: encode(&v),
                    private: vec![],
                }],
                ..Default::default()
            },
            Err(d) => pb::import_resource_state::Response {
                diagnostics: self.diags(Some(&req.type_name), &d),
                ..Default::default()
            },
        }))
    }

    async fn move_resource_state(
        &self,
        req: Request<pb::move_resource_state::Request>,
    ) -> Out<pb::move_resource_state::Response> {
        let d: Diagnostics = Diagnostic::error(
            "Move not supported",
            format!(
                "moving {} state into {} is not supported by this provider",
                req.get_ref().source_type_name,
                req.get_ref().target_type_name
            ),
        )
        .into();
        Ok(Response::new(pb::move_resource_state::Response {
            diagnostics: diags_to_pb(&d),
            ..Default::default()
        }))
    }

    async fn read_data_source(
        &self,
        req: Request<pb::read_data_source::Request>,
    ) -> Out<pb::read_data_source::Response> {
        let d = no_data_source(&req.get_ref().type_name);
        Ok(Response::new(pb::read_data_source::Response {
            diagnostics: diags_to_pb(&d),
            ..Default::default()
        }))
    }

    async fn validate_ephemeral_resource_config(
        &self,
        req: Request<pb::validate_ephemeral_resource_config::Request>,
    ) -> Out<pb::validate_ephemeral_resource_config::Response> {
        let d = no_ephemeral(&req.get_ref().type_name);
        Ok(Response::new(
            pb::validate_ephemeral_resource_config::Response {
                diagnostics: diags_to_pb(&d),
            },
        ))
    }

    async fn open_ephemeral_resource(
        &self,
        req: Request<pb::open_ephemeral_resource::Request>,
    ) -> Out<pb::open_ephemeral_resource::Response> {
        let d = no_ephemeral(&req.get_ref().type_name);
        Ok(Response::new(pb::open_ephemeral_resource::Response {
            diagnostics: diags_to_pb(&d),
            ..Default::default()
        }))
    }

    async fn renew_ephemeral_resource(
        &self,
        req: Request<pb::renew_ephemeral_resource::Request>,
    ) -> Out<pb::renew_ephemeral_resource::Response> {
        let d = no_ephemeral(&req.get_ref().type_name);
        Ok(Response::new(pb::renew_ephemeral_resource::Response {
            diagnostics: diags_to_pb(&d),
            ..Default::default()
        }))
    }

    async fn close_ephemeral_resource(
        &self,
        req: Request<pb::close_ephemeral_resource::Request>,
    ) -> Out<pb::close_ephemeral_resource::Response> {
        let d = no_ephemeral(&req.get_ref().type_name);
        Ok(Response::new(pb::close_ephemeral_resource::Response {
            diagnostics: diags_to_pb(&d),
        }))
    }

    async fn get_functions(
        &self,
        _: Request<pb::get_functions::Request>,
    ) -> Out<pb::get_functions::Response> {
        Ok(Response::new(pb::get_functions::Response::default()))
    }

    async fn call_function(
        &self,
        req: Request<pb::call_function::Request>,
    ) -> Out<pb::call_function::Response> {
        Ok(Response::new(pb::call_function::Response {
            result: None,
            error: Some(pb::FunctionError {
                text: format!("this provider has no function {:?}", req.get_ref().name),
                function_argument: None,
            }),
        }))
    }

    async fn stop_provider(
        &self,
        _: Request<pb::stop_provider::Request>,
    ) -> Out<pb::stop_provider::Response> {
        log::info!("StopProvider: cancelling in-flight operations");
        self.stop.send_replace(true);
        Ok(Response::new(pb::stop_provider::Response {
            error: String::new(),
        }))
    }
}

/// The capabilities Terraform announced in ConfigureProvider, for later RPCs that do
/// not repeat them.
static CLIENT: Mutex<ClientInfo> = Mutex::new(ClientInfo {
    terraform_version: String::new(),
    write_only_allowed: false,
});

fn no_data_source(name: &str) -> Diagnostics {
    Diagnostic::error(
        "Unknown data source",
        format!("this provider has no data source {name:?}"),
    )
    .into()
}

fn no_ephemeral(name: &str) -> Diagnostics {
    Diagnostic::error(
        "Unknown ephemeral resource",
        format!("this provider has no ephemeral resource {name:?}"),
    )
    .into()
}

#[cfg(test)]
mod tests;
