//! What create, update and delete do: loading, copying, switching and deleting launch
//! configurations and template versions, then handing the clients to `roll.rs`.

use super::roll::*;
use super::*;
use crate::backends::tunnel::Route;
use crate::resources::nomad_drain::{Drainer, NomadApi};

impl NomadClientLaunchConfig {
    pub(super) async fn load(
        &self,
        c: &AwsClients,
        launch: &Launch,
    ) -> Result<Option<Loaded>, Diagnostics> {
        let what = launch.describe();
        match launch {
            Launch::Config(n) => {
                let Some(lc) = c
                    .autoscaling
                    .launch_configuration(n)
                    .await
                    .map_err(|e| aws_diag(e, NOTHING_CHANGED))?
                else {
                    return Ok(None);
                };
                let user_data = decode_user_data(lc.user_data(), &what)?;
                Ok(Some(Loaded {
                    launch: launch.clone(),
                    source: Source::Config(Box::new(lc)),
                    user_data,
                }))
            }
            Launch::Template { id, version } => {
                let Some(v) = c
                    .ec2
                    .describe_version(id, version)
                    .await
                    .map_err(|e| aws_diag(e, NOTHING_CHANGED))?
                else {
                    return Ok(None);
                };
                let user_data = decode_user_data(v.user_data.as_deref(), &what)?;
                Ok(Some(Loaded {
                    launch: launch.clone(),
                    source: Source::Template(v),
                    user_data,
                }))
            }
        }
    }

    /// For refresh: (exists, loaded). AWS failures are errors; a configuration whose
    /// user_data cannot be read is reported as existing but not loaded.
    pub(super) async fn load_for_read(
        &self,
        c: &AwsClients,
        launch: &Launch,
    ) -> Result<(bool, Option<Loaded>), Diagnostics> {
        match self.load(c, launch).await {
            Ok(Some(l)) => Ok((true, Some(l))),
            Ok(None) => Ok((false, None)),
            Err(d) if is_content_error(&d) => Ok((true, None)),
            Err(d) => Err(d),
        }
    }

    pub(super) async fn group(&self, c: &AwsClients, name: &str) -> Result<Group, Diagnostics> {
        c.autoscaling
            .group(name)
            .await
            .map_err(|e| aws_diag(e, NOTHING_CHANGED))?
            .ok_or_else(|| {
                Diagnostic::error(
                    "Auto Scaling group not found",
                    format!(
                        "there is no Auto Scaling group named {name:?} in region {}. {NOTHING_CHANGED}.",
                        c.region
                    ),
                )
                .at(group_attr())
                .into()
            })
    }

    /// Creates our copy of `from` with `text` as user_data.
    pub(super) async fn copy(
        &self,
        c: &AwsClients,
        from: &Loaded,
        text: &str,
        prefix: &str,
    ) -> Result<Launch, Diagnostics> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
        match &from.source {
            Source::Config(lc) => {
                let name = unique_name(prefix)?;
                c.autoscaling
                    .copy_launch_configuration(lc, &name, &b64)
                    .await
                    .map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
                Ok(Launch::Config(name))
            }
            Source::Template(v) => {
                let desc = format!(
                    "circleci_nomad_client_launch_config: version {} with the Nomad servers rewritten",
                    v.number
                );
                let n = c
                    .ec2
                    .create_version(&v.template_id, v.number, &desc, &v.params, &b64)
                    .await
                    .map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
                Ok(Launch::Template {
                    id: v.template_id.clone(),
                    version: n.to_string(),
                })
            }
        }
    }

    pub(super) async fn switch(
        &self,
        c: &AwsClients,
        group: &str,
        to: &Launch,
    ) -> Result<(), AwsError> {
        match to {
            Launch::Config(n) => c.autoscaling.use_launch_configuration(group, n).await,
            Launch::Template { id, version } => {
                c.autoscaling.use_launch_template(group, id, version).await
            }
        }
    }

    /// Deletes one of our copies unless a group still uses it; says why not otherwise.
    pub(super) async fn remove(
        &self,
        c: &AwsClients,
        launch: &Launch,
    ) -> Result<Option<String>, AwsError> {
        match launch {
            Launch::Config(n) => {
                let users = c.autoscaling.groups_using_launch_configuration(n).await?;
                if !users.is_empty() {
                    return Ok(Some(format!(
                        "launch configuration {n} was not deleted: Auto Scaling group(s) {} still use it",
                        users.join(", ")
                    )));
                }
                c.autoscaling.delete_launch_configuration(n).await?;
            }
            Launch::Template { id, version } => {
                let Ok(number) = version.parse::<i64>() else {
                    return Ok(None);
                };
                let users = c
                    .autoscaling
                    .groups_using_template_version(id, number)
                    .await?;
                if !users.is_empty() {
                    return Ok(Some(format!(
                        "launch template {id} version {number} was not deleted: Auto Scaling group(s) {} still use it",
                        users.join(", ")
                    )));
                }
                if let Some(v) = c.ec2.describe_version(id, version).await? {
                    if v.is_default {
                        return Ok(Some(format!(
                            "launch template {id} version {number} was not deleted: it has been made the template's \
                             default version"
                        )));
                    }
                    c.ec2.delete_version(id, number).await?;
                }
            }
        }
        Ok(None)
    }

    /// Switches group `name` to `ours`; when that fails, deletes `ours` again so nothing
    /// is left behind (`what` is what the group still uses).
    async fn switch_or_undo(
        &self,
        c: &AwsClients,
        name: &str,
        ours: &Launch,
        what: &str,
    ) -> Result<(), Diagnostics> {
        let Err(e) = self.switch(c, name, ours).await else {
            return Ok(());
        };
        let mut d = aws_diag(
            e,
            &format!(
                "The group still uses {what}; the new copy ({}) was deleted again",
                ours.describe()
            ),
        );
        if let Err(e2) = self.remove(c, ours).await {
            d.push(Diagnostic::warning(
                "Could not delete the unused copy",
                format!("{}: {}", ours.describe(), crate::backends::chain(&e2)),
            ));
        }
        Err(d)
    }

    /// Copies `source`, switches the group to the copy, and rolls the instances.
    /// `retire` is our previous copy, deleted after the switch.
    pub(super) async fn replace_config(
        &self,
        c: &AwsClients,
        planned: &LaunchConfig,
        group: &Group,
        source: &Loaded,
        original: Option<&Launch>,
        retire: Option<&Launch>,
    ) -> Applied {
        let servers = &planned.nomad_servers;
        let prefix = &planned.name_prefix;
        let what = source.launch.describe();
        let rewritten = match rewrite_as_planned(planned, source, servers) {
            Ok(r) => r,
            Err(d) => return Applied::from_result(Err(d)),
        };
        // Recorded before the switch: afterwards some APIs report old instances under
        // the new configuration's name.
        let old = live_instances(group);
        let (terminate, _, _) = planned.rollout_settings();
        let (stopped, drain) = match self
            .guard(planned, servers, if terminate { &old } else { &[] })
            .await
        {
            Ok(s) => s,
            Err(d) => return Applied::from_result(Err(d)),
        };
        // Inside a cutover: noted before anything changes, so that its fallback
        // switches the group back whatever happens next.
        let before = current_launch(group).unwrap_or(source.launch.clone());
        let noted = if stopped {
            let s = planned.stop_settings();
            let cut = crate::resources::cutover::Cutover::new(&self.data, &s);
            match cut.note_moved_group(moved(&group.name, &before)).await {
                Ok(n) => n,
                Err(d) => return Applied::from_result(Err(d)),
            }
        } else {
            false
        };
        let ours = match self.copy(c, source, &rewritten.text, prefix).await {
            Ok(l) => l,
            Err(d) => return Applied::from_result(Err(d)),
        };
        log::info!(
            "{}: created {} from {what}; switching the group",
            group.name,
            ours.describe()
        );
        if let Err(d) = self.switch_or_undo(c, &group.name, &ours, &what).await {
            return Applied::from_result(Err(d));
        }
        let mut state = planned.clone();
        let mut diags = Diagnostics::new();
        state.id = Known::Value(group.name.clone());
        set_launches(&mut state, &ours, original);
        state.previous_servers = Known::Value(rewritten.previous);
        state.user_data_sha256 = Known::Value(file_sha256(rewritten.text.as_bytes()));
        state.drift = Known::Value(String::new());
        let for_fallback = retire.filter(|p| noted && **p == before);
        if let Some(prev) = for_fallback {
            diags.push(Diagnostic::warning(
                "Previous copy kept",
                format!(
                    "{} is what the group used when this cutover stopped CircleCI: a fallback switches the group \
                     back to it. Delete it by hand once the cutover completed.",
                    prev.describe()
                ),
            ));
        }
        if let Some(prev) = retire.filter(|p| **p != ours && for_fallback.is_none()) {
            match self.remove(c, prev).await {
                Ok(None) => {}
                Ok(Some(why)) => diags.push(Diagnostic::warning("Previous copy kept", why)),
                Err(e) => diags.push(Diagnostic::warning(
                    "Previous copy not deleted",
                    format!("{}: {}", prev.describe(), crate::backends::chain(&e)),
                )),
            }
        }
        crate::fault_point::point("circleci_nomad_client_launch_config.after_switch").await;
        self.roll(c, &mut state, &old, drain.as_ref(), &mut diags)
            .await;
        Applied {
            state: Some(encoded(&state)),
            diags,
        }
    }

    pub(super) async fn create_applied(&self, planned: &Value) -> Applied {
        let r = async {
            let planned = LaunchConfig::decode(planned)?;
            let aws = self.data.aws()?;
            let c = aws.clients().await.map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
            let name = planned.autoscaling_group_name.as_str();
            let group = self.group(c, name).await?;
            let launch = current_launch(&group)?;
            let Some(source) = self.load(c, &launch).await? else {
                return Err(Diagnostic::error(
                    "Launch configuration not found",
                    format!(
                        "Auto Scaling group {name} names {}, which does not exist. {NOTHING_CHANGED}.",
                        launch.describe()
                    ),
                )
                .at(group_attr())
                .into());
            };
            Ok(self
                .replace_config(c, &planned, &group, &source, Some(&launch), None)
                .await)
        }
        .await;
        r.unwrap_or_else(|d| Applied::from_result(Err(d)))
    }

    pub(super) async fn update_applied(&self, prior: &Value, planned: &Value) -> Applied {
        let r = async {
            let (prior, planned) = (LaunchConfig::decode(prior)?, LaunchConfig::decode(planned)?);
            let aws = self.data.aws()?;
            let c = aws.clients().await.map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
            let name = planned.autoscaling_group_name.as_str();
            if planned.user_data_sha256 != Known::Unknown {
                // No new copy: settings only, and any rollout left over.
                let mut state = planned.clone();
                let mut diags = Diagnostics::new();
                let pending = prior.pending();
                if planned.pending_instance_ids == Known::Unknown {
                    // The clients left over (still in the group) are terminated only
                    // where no build runs.
                    let live = live_instances(&self.group(c, name).await?);
                    let pending: Vec<String> =
                        pending.into_iter().filter(|i| live.contains(i)).collect();
                    let (terminate, _, _) = planned.rollout_settings();
                    let servers = &planned.nomad_servers;
                    let (_, drain) = self
                        .guard(&planned, servers, if terminate { &pending } else { &[] })
                        .await?;
                    self.roll(c, &mut state, &pending, drain.as_ref(), &mut diags)
                        .await;
                }
                state.drift = Known::Value(String::new());
                return Ok(Applied {
                    state: Some(encoded(&state)),
                    diags,
                });
            }
            let group = self.group(c, name).await?;
            let current = current_launch(&group)?;
            let ours = ours_from(&prior);
            let prior_original = original_from(&prior);
            // The group on our copy: copy it again, the original stays what it was. On
            // anything else (someone re-pointed it): that becomes the original.
            let (source_launch, original) = if Some(&current) == ours.as_ref() {
                (current.clone(), prior_original.clone())
            } else {
                (current.clone(), Some(current.clone()))
            };
            let source = match self.load(c, &source_launch).await? {
                Some(s) => s,
                None => {
                    let fallback = match &prior_original {
                        Some(o) => self.load(c, o).await?,
                        None => None,
                    };
                    fallback.ok_or_else(|| {
                        Diagnostics::from(
                            Diagnostic::error(
                                "Nothing to copy",
                                format!(
                                    "Auto Scaling group {name} uses {}, which does not exist, and the original \
                                     configuration is gone too. {NOTHING_CHANGED}.",
                                    source_launch.describe()
                                ),
                            )
                            .at(group_attr()),
                        )
                    })?
                }
            };
            // Every live instance is rolled, including any an earlier interrupted rollout
            // left pending.
            Ok(self
                .replace_config(c, &planned, &group, &source, original.as_ref(), ours.as_ref())
                .await)
        }
        .await;
        r.unwrap_or_else(|d| Applied::from_result(Err(d)))
    }

    /// Destroy: points group `name` back at the configuration it used before this
    /// resource, when that still exists; otherwise warns and leaves it on `ours`.
    async fn restore_original(
        &self,
        c: &AwsClients,
        name: &str,
        prior: &LaunchConfig,
        ours: &Launch,
    ) -> Result<Diagnostics, Diagnostics> {
        let mut diags = Diagnostics::new();
        match original_from(prior) {
            Some(orig) => {
                let exists = match &orig {
                    Launch::Config(n) => c
                        .autoscaling
                        .launch_configuration(n)
                        .await
                        .map_err(|e| aws_diag(e, NOTHING_CHANGED))?
                        .is_some(),
                    Launch::Template { id, version } => c
                        .ec2
                        .describe_version(id, version)
                        .await
                        .map_err(|e| aws_diag(e, NOTHING_CHANGED))?
                        .is_some(),
                };
                if exists {
                    self.switch(c, name, &orig)
                        .await
                        .map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
                } else {
                    diags.push(Diagnostic::warning(
                        "Original configuration gone",
                        format!(
                            "{} no longer exists, so Auto Scaling group {name} stays on {}",
                            orig.describe(),
                            ours.describe()
                        ),
                    ));
                }
            }
            None => diags.push(Diagnostic::warning(
                "Original configuration unknown",
                format!(
                    "this resource was imported, so the configuration the group used before is not \
                     known; Auto Scaling group {name} stays on {}",
                    ours.describe()
                ),
            )),
        }
        Ok(diags)
    }

    pub(super) async fn delete_applied(&self, prior_state: &Value) -> Applied {
        let prior = match LaunchConfig::decode(prior_state) {
            Ok(p) => p,
            Err(e) => {
                return Applied {
                    state: Some(prior_state.clone()),
                    diags: e.into(),
                }
            }
        };
        if !prior.restore_on_destroy {
            return Applied::default();
        }
        let r = async {
            let aws = self.data.aws()?;
            let c = aws
                .clients()
                .await
                .map_err(|e| aws_diag(e, "Nothing was changed"))?;
            let name = prior.autoscaling_group_name.as_str();
            let Some(ours) = ours_from(&prior) else {
                return Ok(Diagnostics::new());
            };
            let mut diags = Diagnostics::new();
            let group = c
                .autoscaling
                .group(name)
                .await
                .map_err(|e| aws_diag(e, NOTHING_CHANGED))?;
            if let Some(g) = &group {
                if current_launch(g).ok().as_ref() == Some(&ours) {
                    // No client is terminated here; the group's next clients get the
                    // original servers. While CircleCI runs elsewhere, say so.
                    let back = prior.previous_servers.clone().known().unwrap_or_default();
                    if let Err(d) = self.guard(&prior, &back, &[]).await.map(|_| ()) {
                        diags.extend(as_warnings(
                            d,
                            &format!(
                                "Auto Scaling group {name} is pointed back at its original configuration anyway: \
                                 no client is terminated now, but the clients it launches from now on join the \
                                 original Nomad servers ({}). Stop CircleCI before this destroy, or move the \
                                 clients back when CircleCI goes back to its embedded Nomad.",
                                back.join(", ")
                            ),
                        ));
                    }
                    diags.extend(self.restore_original(c, name, &prior, &ours).await?);
                }
            }
            match self.remove(c, &ours).await {
                Ok(None) => {}
                Ok(Some(why)) => diags.push(Diagnostic::warning("Copy kept", why)),
                // An unused template version is harmless and lives in the user's own
                // template; not every endpoint can delete one. Say so, do not fail.
                Err(e) if matches!(ours, Launch::Template { .. }) => diags.push(Diagnostic::warning(
                    "Template version not deleted",
                    format!(
                        "Auto Scaling group {name} was pointed back at the original, but {} could not be deleted \
                         ({}); delete it by hand",
                        ours.describe(),
                        crate::backends::chain(&e)
                    ),
                )),
                Err(e) => {
                    return Err(aws_diag(
                        e,
                        &format!(
                            "Auto Scaling group {name} was pointed back at the original; {} was not deleted",
                            ours.describe()
                        ),
                    ))
                }
            }
            Ok(diags)
        }
        .await;
        match r {
            Ok(diags) => Applied { state: None, diags },
            Err(d) => Applied {
                state: Some(prior_state.clone()),
                diags: d,
            },
        }
    }
}

/// Errors turned into warnings, each with `then` appended.
fn as_warnings(d: Diagnostics, then: &str) -> Diagnostics {
    let mut out = Diagnostics::new();
    for x in d.0 {
        out.push(Diagnostic::warning(
            x.summary,
            format!("{} {then}", x.detail),
        ));
    }
    out
}

impl NomadClientLaunchConfig {
    /// Before the group is pointed at `servers`: CircleCI stopped (true), or running on
    /// a Nomad those servers belong to. With CircleCI running, the clients about to be
    /// terminated (`terminating`) are found among that Nomad's nodes, so that the
    /// rollout waits for their builds and drains each first; when that cannot be known
    /// the apply is refused. Nothing is changed here.
    pub(super) async fn guard(
        &self,
        m: &LaunchConfig,
        servers: &[String],
        terminating: &[String],
    ) -> Result<(bool, Option<GroupDrain>), Diagnostics> {
        let s = m.stop_settings();
        let cutover = crate::resources::cutover::Cutover::new(&self.data, &s);
        let Some(in_use) = cutover
            .clients_may_move(servers, AttrPath::root("nomad_servers"))
            .await?
        else {
            return Ok((true, None));
        };
        if terminating.is_empty() {
            return Ok((false, None));
        }
        let refused = |detail: String| -> Diagnostics {
            Diagnostic::error(
                "CircleCI is running: the clients' builds cannot be waited for",
                format!(
                    "CircleCI runs and schedules its builds on the Nomad at {in_use}. {detail} Replace the \
                     clients while CircleCI is stopped, inside the cutover (depends_on the \
                     circleci_data_migration that stops it, as examples/complete does), or set rollout = \
                     \"none\". {NOTHING_CHANGED}."
                ),
            )
            .at(AttrPath::root("rollout"))
            .into()
        };
        let api = NomadApi {
            endpoint: in_use.clone(),
            ca_file: None,
            ca_pem: cutover
                .services_ca()
                .await
                .map(|pem| (crate::resources::cutover::SERVICES_CA_LABEL, pem)),
            token: None,
            ready_timeout: Duration::ZERO,
            route: Route::Tunnel(self.data.services()?),
            optional: false,
        };
        let t = self.data.timeout();
        let version = api
            .version(t)
            .await
            .map_err(|e| refused(format!("Its version could not be read ({e}).")))?;
        let kind =
            crate::backends::nomad::DrainApi::of(&version).map_err(|e| refused(format!("{e}.")))?;
        let mut seen = Vec::new();
        for n in api
            .nodes(t)
            .await
            .map_err(|e| refused(format!("Its nodes could not be read ({e}).")))?
        {
            // Down nodes too: a client that missed heartbeats is still that instance.
            match api.node(&n.id, t).await {
                Ok(Some(d)) => seen.push((n, d.aws_instance_id().map(str::to_string))),
                Ok(None) => {} // gone since the list
                Err(e) => return Err(refused(format!("Node {} could not be read ({e}).", n.name))),
            }
        }
        let nodes = instance_nodes(terminating, &seen).map_err(refused)?;
        log::info!(
            "CircleCI runs on {in_use} (Nomad {version}): the builds on {} of the {} client(s) to replace are \
             waited for and each node drained before its instance is terminated",
            nodes.len(),
            terminating.len()
        );
        Ok((
            false,
            Some(GroupDrain {
                drainer: Drainer {
                    api,
                    kind,
                    builds_timeout: s.builds_timeout,
                    untouched: "it was not terminated",
                },
                nodes,
            }),
        ))
    }
}

/// The user_data with the servers list rewritten, refusing a stale plan: the plan
/// showed previous_servers, and if the group's configuration names others now, nothing
/// is touched.
fn rewrite_as_planned(
    planned: &LaunchConfig,
    source: &Loaded,
    servers: &[String],
) -> Result<ud::Rewritten, Diagnostics> {
    let what = source.launch.describe();
    let rewritten =
        ud::rewrite(&source.user_data, servers).map_err(|e| not_found_diag(&what, &e))?;
    if let Known::Value(planned_prev) = &planned.previous_servers {
        if *planned_prev != rewritten.previous {
            return Err(Diagnostic::error(
                "Launch configuration changed since plan",
                format!(
                    "the plan was made when {what} named the Nomad servers {planned_prev:?}; it now names {:?}. \
                     {NOTHING_CHANGED}. Run terraform plan again.",
                    rewritten.previous
                ),
            )
            .at(group_attr())
            .into());
        }
    }
    Ok(rewritten)
}

/// The state a model records.
fn encoded(m: &LaunchConfig) -> Value {
    let mut v = Value::Null;
    m.encode(&mut v);
    v
}
