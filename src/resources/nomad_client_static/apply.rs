//! The roll behind create, update and delete of `circleci_nomad_client_static`: the
//! Nomad API settings, the first apply's check of every client, the roll recorded in
//! the state, and the restore of the previous lists.

use super::roll::{self, Client, Found, Goal, NomadApi, Restart};
use super::*;
use crate::backends::tunnel::Route;

impl NomadClientStatic {
    pub(super) fn roll_plan(
        &self,
        planned: &Value,
        config: &Value,
    ) -> Result<roll::Plan, Diagnostics> {
        let nomad = planned.get("nomad_endpoint").as_str().map(|e| NomadApi {
            endpoint: e.trim_end_matches('/').to_string(),
            ca_file: planned
                .get("nomad_ca_file")
                .as_str()
                .map(crate::provider::expand_home),
            token: config
                .get("nomad_token_wo")
                .as_str()
                .map(|t| crate::secret::Secret(t.to_string())),
            ready_timeout: crate::resources::duration_or(planned, "ready_timeout", "5m"),
            route: self.data.route().unwrap_or(Route::Direct),
            optional: config.is_null(),
        });
        Ok(roll::Plan {
            restart: Restart::parse(planned.get("restart").as_str().unwrap_or("systemctl"))
                .unwrap_or(Restart::Systemctl),
            service: planned
                .get("service_name")
                .as_str()
                .unwrap_or("nomad")
                .to_string(),
            batch: planned.get("batch_size").as_i64().unwrap_or(1).max(1) as usize,
            nomad,
            timeout: self.data.timeout(),
        })
    }

    /// The clients of `v` as SSH targets: the provider's `services_host` settings, and
    /// through the Services machine when `via_services_host` (or the provider's) says so.
    pub(super) fn clients_of(&self, v: &Value) -> Result<Vec<Client>, Diagnostics> {
        let services = self.data.services()?;
        let via = match v.get("via_services_host").as_bool() {
            Some(true) => Some(services.clone()),
            Some(false) => None,
            None => match self.data.route()? {
                Route::Tunnel(h) => Some(h),
                Route::Direct => None,
            },
        };
        clients(v, services.config(), via.as_ref())
    }

    /// Rolls `todo` to `servers` from `prior`'s record; the state after, and the error
    /// naming where the roll stopped.
    pub(super) async fn roll_to(
        &self,
        prior: &Value,
        planned: &Value,
        config: &Value,
        todo: Vec<Client>,
    ) -> Applied {
        let plan = match self.roll_plan(planned, config) {
            Ok(p) => p,
            Err(d) => {
                return Applied {
                    state: None,
                    diags: d,
                }
            }
        };
        let servers = strings(planned.get("nomad_servers"));
        let mut status = status_map(prior);
        let mut previous = previous_map(prior);
        let keys = keys_of(planned);
        status.retain(|k, _| keys.contains(k));
        previous.retain(|k, _| keys.contains(k));
        for c in &todo {
            status.insert(c.key.clone(), "pending: not rolled yet".into());
        }
        let settled = status_map(prior);
        let items: Vec<(Client, Goal)> = todo
            .iter()
            .map(|c| {
                let goal = Goal::Servers {
                    servers: servers.clone(),
                    recorded: previous.get(&c.key).cloned(),
                    settled: settled.get(&c.key).is_some_and(|s| s == OK),
                };
                (c.clone(), goal)
            })
            .collect();
        let rolled = roll::roll(&items, &plan).await;
        let mut diags = warnings(&rolled.warnings);
        // The kept originals say what each client held before this resource (or one it
        // replaces) first touched it.
        previous.extend(rolled.previous);
        for k in &rolled.done {
            status.insert(k.clone(), OK.into());
        }
        let mut state = planned.clone();
        if state.get("id").is_unknown() {
            state.set(
                "id",
                Value::string(keys.first().cloned().unwrap_or_default()),
            );
        }
        match rolled.stopped {
            None => {}
            Some(stop) => {
                for (k, why) in &stop.failed {
                    if status.contains_key(k) {
                        status.insert(k.clone(), format!("pending: {why}"));
                    }
                }
                let left: Vec<&String> = status
                    .iter()
                    .filter(|(_, s)| *s != OK)
                    .map(|(k, _)| k)
                    .collect();
                diags.push(Diagnostic::error(
                    "The roll over the Nomad clients stopped",
                    format!(
                        "{}.\nDone: {}. Not done: {}. The state records this; the next terraform apply continues \
                         with the clients not done.",
                        stop.failures.join("\n"),
                        if rolled.done.is_empty() { "none".to_string() } else { rolled.done.join(", ") },
                        left.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        state.set(STATUS, status_value(&status));
        state.set(PREVIOUS, previous_value(&previous));
        Applied {
            state: Some(state),
            diags,
        }
    }

    /// Before a first apply changes anything: every client reachable, its file there
    /// with a servers list.
    pub(super) async fn preflight(
        &self,
        clients: &[Client],
        planned: &Value,
        config: &Value,
    ) -> Result<(), Diagnostics> {
        let mut tasks = tokio::task::JoinSet::new();
        for c in clients {
            let c = c.clone();
            tasks.spawn(async move {
                (
                    c.key.clone(),
                    c.config_path.clone(),
                    roll::inspect(&c).await,
                )
            });
        }
        let mut bad = Vec::new();
        // The nodes must be readable too: the roll waits on them.
        if let Some(api) = self.roll_plan(planned, config)?.nomad {
            if let Err(e) = api.nodes(self.data.timeout()).await {
                bad.push(format!("the Nomad API, to see restarted nodes ready: {e}"));
            }
        }
        while let Some(j) = tasks.join_next().await {
            match j {
                Ok((k, path, Ok(Found::Servers(_)))) => {
                    log::debug!("{k}: {path} has a servers list")
                }
                Ok((k, path, r)) => bad.push(format!("{k}: {}", roll::status_of(&r, &[], &path))),
                Err(e) => bad.push(format!("a client's check failed: {e}")),
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        bad.sort();
        Err(Diagnostic::error(
            "Not every Nomad client is ready to be rewritten",
            format!("{}.\nNothing was changed on any client.", bad.join("\n")),
        )
        .at(AttrPath::root(CLIENT))
        .into())
    }
}

impl NomadClientStatic {
    /// Puts each servers list of `cs`'s files back to its own original (kept next to the
    /// file; without that copy, the list the state records; clients with neither are
    /// named in a warning), then removes the copies. On failure the state keeps what is
    /// not restored.
    pub(super) async fn restore(
        &self,
        prior: &Value,
        planned: &Value,
        config: &Value,
        cs: &[Client],
    ) -> Applied {
        let previous = previous_map(prior);
        let plan = match self.roll_plan(planned, config) {
            Ok(p) => p,
            Err(d) => return Applied::kept(prior, d),
        };
        let applied = strings(prior.get("nomad_servers"));
        let items: Vec<(Client, Goal)> = cs
            .iter()
            .map(|c| {
                let goal = Goal::Original {
                    applied: applied.clone(),
                    recorded: previous.get(&c.key).cloned(),
                };
                (c.clone(), goal)
            })
            .collect();
        let rolled = roll::roll(&items, &plan).await;
        let mut diags = warnings(&rolled.warnings);
        if let Some(stop) = rolled.stopped {
            diags.push(Diagnostic::error(
                "Could not put every Nomad client's servers list back",
                format!(
                    "{}.\nPut back: {}. The resource stays in the state; run the destroy again.",
                    stop.failures.join("\n"),
                    if rolled.done.is_empty() {
                        "none".to_string()
                    } else {
                        rolled.done.join(", ")
                    }
                ),
            ));
            return Applied {
                state: Some(prior.clone()),
                diags,
            };
        }
        Applied { state: None, diags }
    }

    /// With `restore_on_destroy = false`: the lists stay, the kept originals of `cs` are
    /// removed (a client that cannot be reached is named in a warning).
    pub(super) async fn forget(&self, cs: &[Client]) -> Diagnostics {
        let mut tasks = tokio::task::JoinSet::new();
        for c in cs {
            let c = c.clone();
            tasks.spawn(async move {
                let kept = super::file::kept_path(&c.config_path);
                let r = roll::remove_kept(&c, &kept).await;
                (c.key.clone(), kept, r)
            });
        }
        let mut diags = Diagnostics::new();
        while let Some(j) = tasks.join_next().await {
            let why = match j {
                Ok((_, _, Ok(()))) => continue,
                Ok((k, kept, Err(e))) => format!("{k}: {kept} stays: {e}"),
                Err(e) => format!("a client's task failed: {e}"),
            };
            diags.push(Diagnostic::warning("Kept original not removed", why));
        }
        diags
    }
}
