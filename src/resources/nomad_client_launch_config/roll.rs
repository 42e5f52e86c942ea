//! Replacing the running Nomad clients batch by batch after the group was switched.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;
use crate::backends::nomad::Node;
use crate::plugin::stop;
use crate::resources::nomad_drain::{Drainer, NotDrained};

/// With CircleCI running: how the rollout waits for the builds on each client of the
/// Nomad CircleCI uses and drains it before terminating it.
pub(super) struct GroupDrain {
    pub(super) drainer: Drainer,
    /// The nodes of each instance to replace that this Nomad lists (a client that
    /// registered again under a new ID may be listed twice).
    pub(super) nodes: BTreeMap<String, Vec<Node>>,
}

/// Which nodes each of `instances` is, from the Nomad's nodes with the EC2 instance each
/// says it runs on. An instance no node names is not a client of this Nomad and runs
/// none of its builds; unless some node that is not down does not say: then it may be
/// that one, and the refusal says so.
pub(super) fn instance_nodes(
    instances: &[String],
    nodes: &[(Node, Option<String>)],
) -> Result<BTreeMap<String, Vec<Node>>, String> {
    let mut out: BTreeMap<String, Vec<Node>> = BTreeMap::new();
    for (n, id) in nodes {
        if let Some(id) = id.as_ref().filter(|id| instances.contains(id)) {
            out.entry(id.clone()).or_default().push(n.clone());
        }
    }
    let unmatched: Vec<&str> = instances
        .iter()
        .filter(|i| !out.contains_key(*i))
        .map(String::as_str)
        .collect();
    let silent: Vec<String> = nodes
        .iter()
        .filter(|(n, id)| id.is_none() && n.status != "down")
        .map(|(n, _)| format!("{} ({})", n.name, n.id))
        .collect();
    if !unmatched.is_empty() && !silent.is_empty() {
        return Err(format!(
            "Its node(s) {} do not say which EC2 instance they run on (no {} attribute: Nomad's AWS \
             fingerprint did not run there), so whether instance(s) {} are among them, with builds running, \
             is not known.",
            silent.join(", "),
            crate::backends::nomad::AWS_INSTANCE_ID_ATTRS[0],
            unmatched.join(", ")
        ));
    }
    Ok(out)
}

/// Instances to replace: everything in the group that is not already going away.
pub(super) fn live_instances(g: &Group) -> Vec<String> {
    g.instances
        .iter()
        .filter(|i| !i.state.starts_with("Terminat") && !i.state.starts_with("Detach"))
        .map(|i| i.id.clone())
        .collect()
}

/// (new instances InService, how many are needed) once `replaced` old instances have
/// been terminated: as many as were replaced, capped by the desired capacity.
pub(super) fn replacements(g: &Group, old: &[String], replaced: usize) -> (usize, usize) {
    let fresh = g
        .instances
        .iter()
        .filter(|i| i.state == "InService" && !old.contains(&i.id))
        .count();
    (
        fresh,
        replaced.min(usize::try_from(g.desired_capacity).unwrap_or(0)),
    )
}

pub(super) struct RolloutFailure {
    pub(super) replaced: Vec<String>,
    pub(super) pending: Vec<String>,
    pub(super) diags: Diagnostics,
}

impl NomadClientLaunchConfig {
    /// Replaces `old` instances in batches; each batch waits until as many new instances
    /// are InService as have been replaced so far (capped by the desired capacity).
    pub(super) async fn rollout(
        &self,
        c: &AwsClients,
        group: &str,
        old: &[String],
        batch: usize,
        timeout: Duration,
        drain: Option<&GroupDrain>,
    ) -> Result<Vec<String>, RolloutFailure> {
        // Waiting for builds is bounded by builds_timeout, not by this: it moves the
        // deadline on by the time it took.
        let mut deadline = Instant::now() + timeout.min(MAX_ROLLOUT);
        let t = self.data.timeout();
        let mut replaced: Vec<String> = Vec::new();
        const LEFT: &str =
            "The group already uses the new configuration; pending_instance_ids lists the \
                            instances not yet replaced";
        let fail =
            |replaced: &[String], done: usize, summary: &str, detail: String| RolloutFailure {
                replaced: replaced.to_vec(),
                pending: old[done..]
                    .iter()
                    .filter(|i| !replaced.contains(i))
                    .cloned()
                    .collect(),
                diags: Diagnostic::error(summary, format!("{detail}. {LEFT}.")).into(),
            };
        let describe = || async {
            match c.autoscaling.group(group).await {
                Ok(Some(g)) => Ok(g),
                Ok(None) => Err((
                    "Auto Scaling group disappeared during the rollout",
                    format!("group {group} no longer exists"),
                )),
                Err(e) => Err(("Rollout interrupted", crate::backends::chain(&e))),
            }
        };
        let stopped = |replaced: &[String], done: usize| {
            fail(
                replaced,
                done,
                "Stopped during the rollout",
                format!(
                    "Terraform asked the provider to stop after {} of {} instances of {group} were replaced; \
                     run terraform apply again to replace the rest",
                    replaced.len(),
                    old.len()
                ),
            )
        };
        let mut done = 0;
        for chunk in old.chunks(batch.max(1)) {
            if stop::requested() {
                return Err(stopped(&replaced, done));
            }
            let live = match describe().await {
                Ok(g) => live_instances(&g),
                Err((summary, detail)) => return Err(fail(&replaced, done, summary, detail)),
            };
            let ids: Vec<&String> = chunk.iter().filter(|id| live.contains(id)).collect();
            // With CircleCI running: every build on the batch's clients ends, and each
            // is drained, before any of them is terminated.
            let mut drained: Vec<(&String, String, Node)> = Vec::new();
            if let Some(d) = drain {
                crate::fault_point::point("circleci_nomad_client_launch_config.before_drain").await;
                let waited = Instant::now();
                // As the nodes are now: a drain someone else set since the first look is
                // theirs, not lifted by this rollout.
                let now = match d.drainer.api.nodes(t).await {
                    Ok(n) => n,
                    Err(e) => {
                        return Err(fail(
                            &replaced,
                            done,
                            "Client not drained",
                            format!(
                                "reading the nodes of the Nomad at {}: {e}. No instance of this batch was \
                                 terminated",
                                d.drainer.api.endpoint
                            ),
                        ))
                    }
                };
                for id in &ids {
                    let Some(nodes) = d.nodes.get(*id) else {
                        log::info!(
                            "rollout of {group}: no node of the Nomad at {} runs on {id}: no build of CircleCI's \
                             runs there",
                            d.drainer.api.endpoint
                        );
                        continue;
                    };
                    for known in nodes {
                        let Some(node) = now.iter().find(|n| n.id == known.id) else {
                            continue; // gone from Nomad since
                        };
                        if node.status == "down" {
                            log::info!(
                                "rollout of {group}: node {} of {id} is down: no build runs there",
                                node.name
                            );
                            continue;
                        }
                        let what = format!("instance {id} (node {})", node.name);
                        match d.drainer.drain(&what, node, t).await {
                            Ok((_, enabled)) => {
                                if enabled {
                                    drained.push((id, what, node.clone()));
                                }
                            }
                            Err(NotDrained {
                                why,
                                enabled,
                                timed_out,
                            }) => {
                                if enabled {
                                    drained.push((id, what, node.clone()));
                                }
                                let lifted = lift(&d.drainer, &drained, t).await;
                                let mut f = fail(
                                    &replaced,
                                    done,
                                    if stop::requested() {
                                        "Stopped during the rollout"
                                    } else {
                                        "Client not drained"
                                    },
                                    format!("{why}{lifted}"),
                                );
                                if timed_out {
                                    for x in &mut f.diags.0 {
                                        x.path = Some(AttrPath::root("builds_timeout"));
                                    }
                                }
                                return Err(f);
                            }
                        }
                    }
                }
                deadline += waited.elapsed();
            }
            for id in &ids {
                if let Err(e) = c.autoscaling.replace_instance(id).await {
                    let left: Vec<_> = drained
                        .iter()
                        .filter(|(d, _, _)| !replaced.contains(*d))
                        .cloned()
                        .collect();
                    let lifted = match drain {
                        Some(d) => lift(&d.drainer, &left, t).await,
                        None => String::new(),
                    };
                    return Err(fail(
                        &replaced,
                        done,
                        "Rollout interrupted",
                        format!("terminating {id}: {}{lifted}", crate::backends::chain(&e)),
                    ));
                }
                log::info!("rollout of {group}: terminated {id}");
                replaced.push((*id).clone());
            }
            done += chunk.len();
            if let Some(why) =
                crate::fault_point::failure("circleci_nomad_client_launch_config.rollout")
            {
                return Err(fail(&replaced, done, "Rollout interrupted", why));
            }
            let mut pause = Duration::from_millis(250);
            loop {
                let g = match describe().await {
                    Ok(g) => g,
                    Err((summary, detail)) => return Err(fail(&replaced, done, summary, detail)),
                };
                let (fresh, need) = replacements(&g, old, replaced.len());
                log::debug!("rollout of {group}: {fresh} of {need} replacements InService");
                if fresh >= need {
                    break;
                }
                if Instant::now()
                    .checked_add(pause)
                    .is_none_or(|t| t > deadline)
                {
                    return Err(fail(
                        &replaced,
                        done,
                        "Rollout timed out",
                        format!(
                            "after {}: {fresh} of {need} replacement instances are InService in {group}",
                            humantime::format_duration(timeout)
                        ),
                    ));
                }
                if stop::or_stop(tokio::time::sleep(pause)).await.is_none() {
                    return Err(stopped(&replaced, done));
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
        Ok(replaced)
    }

    /// Runs the rollout (if configured) and records its outcome in `state`.
    pub(super) async fn roll(
        &self,
        c: &AwsClients,
        state: &mut LaunchConfig,
        old: &[String],
        drain: Option<&GroupDrain>,
        diags: &mut Diagnostics,
    ) {
        let (terminate, batch, timeout) = state.rollout_settings();
        let (replaced, pending) = if !terminate || old.is_empty() {
            (vec![], vec![])
        } else {
            let group = &state.autoscaling_group_name;
            match self.rollout(c, group, old, batch, timeout, drain).await {
                Ok(replaced) => (replaced, vec![]),
                Err(f) => {
                    diags.extend(f.diags);
                    (f.replaced, f.pending)
                }
            }
        };
        state.replaced_instance_ids = Known::Value(replaced);
        state.pending_instance_ids = Known::Value(pending);
    }
}

/// Lifts the drains `drained` (instance, label, node) this rollout enabled on clients it
/// did not terminate; what came of it, to append to the failure.
async fn lift(d: &Drainer, drained: &[(&String, String, Node)], t: Duration) -> String {
    let mut out = String::new();
    for (_, what, node) in drained {
        match d.lift(what, node, t).await {
            Ok(()) => out.push_str(&format!("; the drain of {what} was lifted")),
            Err(e) => out.push_str(&format!("; {e}: lift it by hand")),
        }
    }
    out
}

/// What launches the instances of `g`, as the cutover's record keeps it.
pub(super) fn moved(group: &str, before: &Launch) -> crate::resources::cutover::MovedGroup {
    let mut m = crate::resources::cutover::MovedGroup {
        group: group.to_string(),
        ..Default::default()
    };
    match before {
        Launch::Config(n) => m.launch_configuration = Some(n.clone()),
        Launch::Template { id, version } => {
            m.launch_template_id = Some(id.clone());
            m.launch_template_version = Some(version.clone());
        }
    }
    m
}

/// A fallback's undoing of a cutover's switch of group `m.group` (CircleCI stopped):
/// the group back on what it used before, and every instance it runs replaced from
/// that, all at once (no build runs), within `timeout`. What was done, for messages.
pub(crate) async fn move_back(
    data: Arc<crate::provider::ProviderData>,
    m: &crate::resources::cutover::MovedGroup,
    timeout: Duration,
) -> Result<String, Diagnostics> {
    let before = launch_from(
        m.launch_configuration.as_deref(),
        m.launch_template_id.as_deref(),
        m.launch_template_version.as_deref(),
    )
    .ok_or_else(|| {
        Diagnostics::from(Diagnostic::error(
            "The cutover's record names no launch configuration",
            format!("Auto Scaling group {} cannot be switched back", m.group),
        ))
    })?;
    let lc = NomadClientLaunchConfig::new(data.clone());
    let aws = data.aws()?;
    let c = aws.clients().await.map_err(|e| aws_diag(e, ""))?;
    let g = lc.group(c, &m.group).await?;
    let now = current_launch(&g)?;
    if now != before {
        lc.switch(c, &m.group, &before).await.map_err(|e| {
            aws_diag(
                e,
                &format!("Auto Scaling group {} stays on {}", m.group, now.describe()),
            )
        })?;
    }
    let old = live_instances(&g);
    let replaced = lc
        .rollout(c, &m.group, &old, old.len().max(1), timeout, None)
        .await
        .map_err(|f| f.diags)?;
    Ok(format!(
        "Auto Scaling group {} is back on {} ({} instance(s) replaced: {})",
        m.group,
        before.describe(),
        replaced.len(),
        replaced.join(", ")
    ))
}
