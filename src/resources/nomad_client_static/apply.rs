//! The roll behind create, update and delete of `circleci_nomad_client_static`: the
//! Nomad API settings, the first apply's check of every client, the roll recorded in
//! the state, and the restore of the previous lists.

use super::roll::{self, Client, Found, Goal, NomadApi, Restart};
use super::*;
use crate::backends::tunnel::Route;
use crate::resources::cutover::BUILDS_TIMEOUT;

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
            ca_pem: None,
            token: config
                .get("nomad_token_wo")
                .as_str()
                .map(|t| crate::secret::Secret::new(t.to_string())),
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
            batch: planned
                .get("batch_size")
                .as_i64()
                .and_then(|b| usize::try_from(b).ok())
                .unwrap_or(1)
                .max(1),
            nomad,
            drain: None,
            timeout: self.data.timeout(),
        })
    }

    /// Before a roll to `targets` changes anything: when CircleCI runs, the clients may
    /// only go to servers of the Nomad it schedules on, and the builds on a client of
    /// that Nomad are waited for and its node drained around the restart (`plan.drain`).
    /// With CircleCI stopped (inside the cutover) nothing runs on them: no drain.
    /// True when CircleCI is stopped.
    pub(super) async fn guard(
        &self,
        v: &Value,
        targets: &[String],
        plan: &mut roll::Plan,
        at: AttrPath,
    ) -> Result<bool, Diagnostics> {
        let s = crate::resources::cutover::StopSettings::of_resource(v);
        let cutover = crate::resources::cutover::Cutover::new(&self.data, &s);
        let Some(in_use) = cutover.running_on().await? else {
            log::info!("CircleCI is stopped: the clients are rolled without draining");
            return Ok(true);
        };
        let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
        let Some(api) = plan.nomad.clone() else {
            return Err(Diagnostic::error(
                "CircleCI is running: its builds must be waited for",
                format!(
                    "CircleCI runs and schedules its builds on the Nomad at {in_use}. To restart or move Nomad \
                     clients while it runs, set nomad_endpoint (the Nomad servers' HTTP API) so that each client's \
                     builds are waited for and its node drained first; or roll the clients while CircleCI is \
                     stopped, inside the cutover (depends_on the circleci_data_migration that stops it). Nothing \
                     was changed."
                ),
            )
            .at(AttrPath::root("nomad_endpoint"))
            .into());
        };
        let t = self.data.timeout();
        let refused = |detail: String| -> Diagnostics {
            Diagnostic::error("Clients would leave the Nomad CircleCI uses", detail)
                .at(at.clone())
                .into()
        };
        let endpoint_peers = api.peers(t).await;
        let in_use_peers = if same(&in_use, &api.endpoint) {
            endpoint_peers.clone()
        } else {
            cutover
                .peers(&in_use)
                .await
                .map_err(|e| crate::backends::chain(&e))
        };
        let in_use_peers = in_use_peers.map_err(|e| {
            refused(format!(
                "CircleCI runs and schedules its builds on the Nomad at {in_use}, whose servers could not be \
                 read ({e}): whether {} are among them is not known. Nothing was changed.",
                targets.join(", ")
            ))
        })?;
        let outside = crate::resources::cutover::outside_peers(targets, &in_use_peers).await;
        if !outside.is_empty() {
            return Err(refused(crate::resources::cutover::not_among(
                &in_use,
                &in_use_peers,
                &outside,
            )));
        }
        let sorted = |mut p: Vec<String>| {
            p.sort();
            p
        };
        // Whether the clients' Nomad is CircleCI's decides whether their builds are
        // waited for: not knowing is no answer.
        let endpoint_peers = endpoint_peers.map_err(|e| {
            Diagnostics::from(
                Diagnostic::error(
                    "Could not read the Nomad servers",
                    format!(
                        "{e}. CircleCI runs on the Nomad at {in_use}; whether nomad_endpoint is the same Nomad \
                         (and so whether builds run on these clients) is not known. Nothing was changed."
                    ),
                )
                .at(AttrPath::root("nomad_endpoint")),
            )
        })?;
        let same_cluster = same(&in_use, &api.endpoint)
            || (!endpoint_peers.is_empty()
                && sorted(endpoint_peers.clone()) == sorted(in_use_peers.clone()));
        if !same_cluster {
            log::info!(
                "CircleCI schedules on {in_use}; the clients are registered with {}, which it does not use: no \
                 build of CircleCI's runs on them, no drain",
                api.endpoint
            );
            return Ok(false);
        }
        let version = api.version(t).await.map_err(|e| {
            Diagnostics::from(
                Diagnostic::error(
                    "Could not read the Nomad version",
                    format!("{e}. Nothing was changed."),
                )
                .at(AttrPath::root("nomad_endpoint")),
            )
        })?;
        let kind = crate::backends::nomad::DrainApi::of(&version).map_err(|e| {
            Diagnostics::from(
                Diagnostic::error("Unexpected Nomad version", e)
                    .at(AttrPath::root("nomad_endpoint")),
            )
        })?;
        log::info!("CircleCI runs on {in_use} (Nomad {version}): each client's builds are waited for and its node drained");
        plan.drain = Some(roll::Drainer {
            api,
            kind,
            builds_timeout: crate::resources::duration_or(v, "builds_timeout", BUILDS_TIMEOUT),
            untouched: "its agent was not restarted and its file not changed",
        });
        Ok(false)
    }

    /// A fallback's undoing of a cutover's roll of the fleet `v` (its planned settings,
    /// CircleCI stopped): each client's servers lists back from the copy kept next to
    /// its file, all clients at once, its agent restarted (not awaited: it joins the
    /// Nomad CircleCI goes back to), the copy removed. What was done, for messages.
    pub(crate) async fn move_back(&self, v: &Value) -> Result<String, Diagnostics> {
        let cs = self.clients_of(v)?;
        let mut plan = self.roll_plan(v, &Value::Null)?;
        plan.nomad = None;
        plan.batch = cs.len().max(1);
        let applied = strings(v.get("nomad_servers"));
        let items: Vec<(Client, Goal)> = cs
            .iter()
            .map(|c| {
                let goal = Goal::Original {
                    applied: applied.clone(),
                    recorded: None,
                };
                (c.clone(), goal)
            })
            .collect();
        let rolled = roll::roll(&items, &plan).await;
        if let Some(stop) = rolled.stopped {
            return Err(Diagnostic::error(
                "Could not move the static Nomad clients back",
                format!(
                    "{}. Put back: {}",
                    stop.failures.join("\n"),
                    if rolled.done.is_empty() {
                        "none".to_string()
                    } else {
                        rolled.done.join(", ")
                    }
                ),
            )
            .into());
        }
        let mut done = format!(
            "the servers lists of {} are back as they were",
            rolled.done.join(", ")
        );
        for (title, w) in &rolled.warnings {
            done.push_str(&format!(" ({title}: {w})"));
        }
        Ok(done)
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
        let servers = strings(planned.get("nomad_servers"));
        // Nothing changed yet: a create keeps no state, an update its prior one.
        let unchanged = |d: Diagnostics| Applied {
            state: (!prior.is_null()).then(|| prior.clone()),
            diags: d,
        };
        let mut plan = match self.roll_plan(planned, config) {
            Ok(p) => p,
            Err(d) => return unchanged(d),
        };
        match self
            .guard(
                planned,
                &servers,
                &mut plan,
                AttrPath::root("nomad_servers"),
            )
            .await
        {
            // Inside a cutover: its fallback puts these clients back.
            Ok(true) => {
                let s = crate::resources::cutover::StopSettings::of_resource(planned);
                let cut = crate::resources::cutover::Cutover::new(&self.data, &s);
                if let Err(d) = cut.note_moved_static(planned.to_json()).await {
                    return unchanged(d);
                }
            }
            Ok(false) => {}
            Err(d) => return unchanged(d),
        }
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
        let mut plan = match self.roll_plan(planned, config) {
            Ok(p) => p,
            Err(d) => return Applied::kept(prior, d),
        };
        let mut targets: Vec<String> = cs
            .iter()
            .filter_map(|c| previous.get(&c.key))
            .flatten()
            .cloned()
            .collect();
        targets.sort();
        targets.dedup();
        if let Err(d) = self
            .guard(planned, &targets, &mut plan, AttrPath::root(CLIENT))
            .await
        {
            return Applied::kept(prior, d);
        }
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
