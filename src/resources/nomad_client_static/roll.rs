//! One Nomad client machine over SSH: read its configuration file, rewrite only the
//! servers list, restart the agent with one fixed command, and wait until the Nomad
//! servers see the node ready again; and the roll over the fleet, batch by batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backends::nomad::Node;
use crate::backends::ssh::{Program, RemoteCommand, ServicesHost, SshConfig};
use crate::circleci::nomad_user_data as ud;
pub(super) use crate::resources::nomad_drain::{Drainer, NomadApi, NotDrained};

use super::file;

/// Warning titles.
pub(super) const NOT_CHECKED: &str = "Nomad nodes not checked";
pub(super) const KEPT_LIST: &str = "Servers list not put back";
pub(super) const OTHER_LISTS: &str = "Servers lists not as in the original";

/// How the Nomad agent is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Restart {
    Systemctl,
    Service,
    None,
}

impl Restart {
    pub(super) fn parse(s: &str) -> Option<Restart> {
        match s {
            "systemctl" => Some(Restart::Systemctl),
            "service" => Some(Restart::Service),
            "none" => Some(Restart::None),
            _ => None,
        }
    }

    /// The word the configuration gives.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Restart::Systemctl => "systemctl",
            Restart::Service => "service",
            Restart::None => "none",
        }
    }

    /// The one command, or none.
    fn command(self, service: &str) -> Result<Option<RemoteCommand>, String> {
        match self {
            Restart::Systemctl => {
                RemoteCommand::new(Program::Systemctl, ["restart", service]).map(Some)
            }
            Restart::Service => {
                RemoteCommand::new(Program::Service, [service, "restart"]).map(Some)
            }
            Restart::None => Ok(None),
        }
    }
}

/// One client machine as configured.
#[derive(Clone, Debug)]
pub(super) struct Client {
    /// `host:port`, the client's key in the computed maps.
    pub key: String,
    pub ssh: SshConfig,
    pub config_path: String,
    /// The node's name in Nomad; else the node whose name or address is the host.
    pub node_name: Option<String>,
    /// The Services machine, when the client is reached through it.
    pub via: Option<Arc<ServicesHost>>,
}

impl Client {
    /// An SSH connection to this machine (made on first use).
    fn host(&self) -> ServicesHost {
        let h = ServicesHost::new(self.ssh.clone());
        match &self.via {
            Some(v) => h.through(v.clone()),
            None => h,
        }
    }

    fn is_node(&self, n: &Node) -> bool {
        match &self.node_name {
            Some(name) => &n.name == name,
            None => n.name == self.ssh.host || n.address == self.ssh.host,
        }
    }

    fn node_text(&self) -> String {
        match &self.node_name {
            Some(n) => format!("node {n:?}"),
            None => format!("the node named or addressed {:?}", self.ssh.host),
        }
    }
}

/// How the roll treats every client.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub restart: Restart,
    pub service: String,
    pub batch: usize,
    pub nomad: Option<NomadApi>,
    /// CircleCI runs: builds are waited for and nodes drained around each restart.
    pub drain: Option<Drainer>,
    /// The deadline of each SSH command.
    pub timeout: Duration,
}

/// What one client's file holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// The servers list's items (the first list, if the file has several).
    Servers(Vec<String>),
    Missing,
    NoList(String),
}

/// Reads the client's file and finds its servers list.
pub(super) async fn inspect(c: &Client) -> Result<Found, String> {
    let h = c.host();
    let f = h
        .read_file(&c.config_path)
        .await
        .map_err(|e| crate::backends::chain(&e))?;
    let Some(f) = f else {
        return Ok(Found::Missing);
    };
    Ok(match file::lists(&f.content) {
        Ok(lists) => Found::Servers(lists[0].items.clone()),
        Err(e) => Found::NoList(e.to_string()),
    })
}

/// One client's status for the computed map: `ok` when its file names `servers`.
pub(super) fn status_of(found: &Result<Found, String>, servers: &[String], path: &str) -> String {
    match found {
        Ok(Found::Servers(items)) if items == servers => "ok".into(),
        Ok(Found::Servers(items)) => format!("servers list is {}", ud::render_list(items)),
        Ok(Found::Missing) => format!("{path} is missing"),
        Ok(Found::NoList(why)) => format!("no servers list in {path}: {why}"),
        Err(e) => format!("unreachable: {e}"),
    }
}

/// Removes the client's kept original (`kept`), if there.
pub(super) async fn remove_kept(c: &Client, kept: &str) -> Result<(), String> {
    c.host()
        .remove_file(kept)
        .await
        .map(|_| ())
        .map_err(|e| crate::backends::chain(&e))
}

/// What the roll sets one client's file to.
#[derive(Clone, Debug)]
pub(super) enum Goal {
    /// Every servers list to `servers`. Before anything changes, the file as found is
    /// kept next to it (once: a copy already there is the original). `recorded`: the
    /// previous list a state from before these copies records (the copy then gets it);
    /// `settled`: the state says this client's last roll finished.
    Servers {
        servers: Vec<String>,
        recorded: Option<Vec<String>>,
        settled: bool,
    },
    /// Every servers list back to its own list in the kept original (without a copy: to
    /// `recorded`); the copy removed once the agent runs it. `applied`: the list this
    /// resource set.
    Original {
        applied: Vec<String>,
        recorded: Option<Vec<String>>,
    },
}

/// One client through to its goal: the file written (when it changes), the agent
/// restarted and its node seen ready again. `previous` gets the original list as soon as
/// it is known (a failure later does not lose it); `Ok` carries a warning, if any
/// (title, detail).
async fn step(
    c: &Client,
    plan: &Plan,
    goal: &Goal,
    ready: Option<(&NomadApi, Option<u64>)>,
    previous: &mut Option<Vec<String>>,
) -> Result<Option<(&'static str, String)>, String> {
    let h = c.host();
    let path = &c.config_path;
    let kept = file::kept_path(path);
    let f = h
        .read_file(path)
        .await
        .map_err(|e| crate::backends::chain(&e))?
        .ok_or_else(|| format!("{path} is missing"))?;
    let lists = file::lists(&f.content).map_err(|e| format!("{path}: {e}"))?;
    let copy = h
        .read_file(&kept)
        .await
        .map_err(|e| crate::backends::chain(&e))?
        .map(|k| k.content);
    let had_copy = copy.is_some();
    let kept_lists = |o: &[u8]| {
        file::lists(o).map_err(|e| {
            format!("{kept} (the original of {path}, kept by this resource; remove it if it is not): {e}")
        })
    };
    let render = |l: &[String]| ud::render_list(l).into_bytes();
    let mut warning = None;
    // The bytes to write, and whether to restart even when they are already there (an
    // earlier apply may have written them and stopped before its restart).
    let (bytes, force) = match goal {
        Goal::Servers {
            servers,
            recorded,
            settled,
        } => {
            let original = match copy {
                Some(o) => o,
                None => {
                    let o = match recorded {
                        Some(r) if lists[0].items != *r => {
                            file::splice(&f.content, &lists, |_| render(r))
                        }
                        _ => f.content.clone(),
                    };
                    h.write_file(&kept, &o, 0o600)
                        .await
                        .map_err(|e| crate::backends::chain(&e))?;
                    log::info!("{}: {path} kept as it was in {kept}", c.ssh.target());
                    o
                }
            };
            *previous = Some(kept_lists(&original)?[0].items.clone());
            let to = render(servers);
            (
                file::splice(&f.content, &lists, |_| to.clone()),
                had_copy && !settled,
            )
        }
        Goal::Original { applied, recorded } => match (copy, recorded) {
            (Some(o), _) => {
                let ol = kept_lists(&o)?;
                let bytes = if ol.len() == lists.len() {
                    file::splice(&f.content, &lists, |i| o[ol[i].span.clone()].to_vec())
                } else {
                    warning = Some((
                        OTHER_LISTS,
                        format!(
                            "{path} has {} servers lists and its original ({kept}) {}: each got the original's first",
                            lists.len(),
                            ol.len()
                        ),
                    ));
                    file::splice(&f.content, &lists, |_| o[ol[0].span.clone()].to_vec())
                };
                (bytes, ol.iter().any(|l| l.items != *applied))
            }
            (None, Some(r)) => (file::splice(&f.content, &lists, |_| render(r)), false),
            (None, None) => {
                return Ok(Some((
                    KEPT_LIST,
                    format!(
                        "{path} keeps its servers list: no original of it was kept ({kept}) or recorded (imported?)"
                    ),
                )))
            }
        },
    };
    let changed = bytes != f.content;
    let restart = if changed || force {
        plan.restart.command(&plan.service)?
    } else {
        None
    };
    // With CircleCI running, the node's builds end and it is drained first.
    let mut ready = ready;
    let mut drained = None;
    if let (Some(d), Some(_)) = (&plan.drain, &restart) {
        let nodes = d.api.nodes(plan.timeout).await.map_err(|e| {
            format!(
                "reading the nodes, to wait for the builds on {}: {e}",
                c.node_text()
            )
        })?;
        match nodes.into_iter().find(|n| c.is_node(n)) {
            Some(n) => match d.drain(&c.node_text(), &n, plan.timeout).await {
                Ok((index, enabled)) => {
                    ready = ready.map(|(a, _)| (a, Some(index)));
                    if enabled {
                        drained = Some(n);
                    }
                }
                Err(NotDrained { why, enabled, .. }) => {
                    if !enabled {
                        return Err(why);
                    }
                    return Err(match d.lift(&c.node_text(), &n, plan.timeout).await {
                        Ok(()) => format!("{why}; the drain was lifted"),
                        Err(l) => format!("{why}; {l}"),
                    });
                }
            },
            // CircleCI runs on this Nomad: a client it does not list cannot be told
            // apart from one whose builds would be cut off.
            None => {
                return Err(format!(
                    "Nomad at {} does not list {}, so its builds cannot be waited for while CircleCI runs. Set \
                     its node_name, or roll it while CircleCI is stopped",
                    d.api.endpoint,
                    c.node_text()
                ))
            }
        }
    }
    let done = write_and_restart(
        c,
        &h,
        plan,
        path,
        &f,
        &bytes,
        changed,
        restart,
        ready,
        lists.len(),
    )
    .await;
    if let (Some(d), Some(n)) = (&plan.drain, &drained) {
        let lifted = d.lift(&c.node_text(), n, plan.timeout).await;
        match (&done, lifted) {
            (_, Ok(())) => {}
            (Ok(()), Err(l)) => return Err(format!("the agent runs the new list, but {l}")),
            (Err(e), Err(l)) => return Err(format!("{e}; {l}")),
        }
    }
    done?;
    if had_copy && matches!(goal, Goal::Original { .. }) {
        h.remove_file(&kept).await.map_err(|e| {
            format!(
                "{path} has its original servers lists back, but removing {kept}: {}",
                crate::backends::chain(&e)
            )
        })?;
    }
    Ok(warning)
}

/// Writes `bytes` (when `changed`), runs `restart` (if any) and waits for the node.
#[allow(clippy::too_many_arguments)]
async fn write_and_restart(
    c: &Client,
    h: &ServicesHost,
    plan: &Plan,
    path: &str,
    f: &crate::backends::ssh::RemoteFile,
    bytes: &[u8],
    changed: bool,
    restart: Option<RemoteCommand>,
    ready: Option<(&NomadApi, Option<u64>)>,
    lists: usize,
) -> Result<(), String> {
    if changed {
        h.write_file(path, bytes, f.mode & 0o7777)
            .await
            .map_err(|e| crate::backends::chain(&e))?;
        log::info!(
            "{}: {path} rewritten ({lists} servers lists)",
            c.ssh.target()
        );
        crate::fault_point::point("circleci_nomad_client_static.after_write").await;
    }
    if let Some(cmd) = restart {
        let out = h
            .run(&cmd, None, plan.timeout)
            .await
            .map_err(|e| crate::backends::chain(&e))?;
        if !out.success() {
            return Err(format!(
                "{}, but `{cmd}` exited with {:?}: {}",
                if changed {
                    "the file was rewritten"
                } else {
                    "the file was already rewritten (the agent not restarted since)"
                },
                out.status,
                out.evidence()
            ));
        }
        log::info!("{}: `{cmd}` done", c.ssh.target());
        if let Some((api, before)) = ready {
            wait_ready(c, api, before, plan.timeout).await?;
        }
    }
    Ok(())
}

/// Waits until the client's node is ready with a higher ModifyIndex than `before`.
async fn wait_ready(
    c: &Client,
    api: &NomadApi,
    before: Option<u64>,
    timeout: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let mut last = String::from("not listed");
    loop {
        match api.nodes(timeout).await {
            Ok(nodes) => {
                if let Some(n) = nodes.iter().find(|n| c.is_node(n)) {
                    let fresh = before.is_none_or(|b| n.modify_index > b);
                    if n.status == "ready" && fresh {
                        return Ok(());
                    }
                    last = format!(
                        "{} (ModifyIndex {}{})",
                        n.status,
                        n.modify_index,
                        if fresh {
                            ""
                        } else {
                            ", not registered again yet"
                        }
                    );
                }
            }
            Err(e) => last = e,
        }
        if started.elapsed() >= api.ready_timeout {
            return Err(format!(
                "the agent was restarted, but Nomad at {} did not list {} as ready again within {} (last seen: {last})",
                api.endpoint,
                c.node_text(),
                humantime::format_duration(api.ready_timeout)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Where the roll stopped.
pub(super) struct Stopped {
    /// What stopped it, one line each (`client key (target): why`), for the message.
    pub failures: Vec<String>,
    /// Each client of the batch that failed, and why.
    pub failed: BTreeMap<String, String>,
}

/// The roll's result: each client's original list (once known: also for a client that
/// failed after), the clients done, the first stop, and warnings (title, detail).
pub(super) struct Rolled {
    pub previous: BTreeMap<String, Vec<String>>,
    pub done: Vec<String>,
    pub stopped: Option<Stopped>,
    pub warnings: Vec<(&'static str, String)>,
}

/// Takes each client to the goal paired with it, `plan.batch` clients at a time. The
/// first batch with a failure ends the roll (its other clients finish).
pub(super) async fn roll(clients: &[(Client, Goal)], plan: &Plan) -> Rolled {
    let mut out = Rolled {
        previous: BTreeMap::new(),
        done: Vec::new(),
        stopped: None,
        warnings: Vec::new(),
    };
    let plan = Arc::new(plan.clone());
    for (n, batch) in clients.chunks(plan.batch.max(1)).enumerate() {
        if n > 0 {
            crate::fault_point::point("circleci_nomad_client_static.between_batches").await;
        }
        if crate::plugin::stop::requested() {
            out.stopped = Some(Stopped {
                failures: vec![format!(
                    "stopped (Terraform was interrupted) before {}",
                    keys(batch)
                )],
                failed: BTreeMap::new(),
            });
            return out;
        }
        let mut wait = plan.nomad.is_some();
        let before: BTreeMap<String, Option<u64>> = match &plan.nomad {
            Some(api) => match api.nodes(plan.timeout).await {
                Err(e) if api.optional => {
                    out.warnings.push((
                        NOT_CHECKED,
                        format!(
                            "{} restarted without waiting for their nodes: {e}",
                            keys(batch)
                        ),
                    ));
                    wait = false;
                    BTreeMap::new()
                }
                Ok(nodes) => batch
                    .iter()
                    .map(|(c, _)| {
                        let idx = nodes.iter().find(|n| c.is_node(n)).map(|n| n.modify_index);
                        (c.key.clone(), idx)
                    })
                    .collect(),
                Err(e) => {
                    out.stopped = Some(Stopped {
                        failures: vec![format!(
                            "reading the nodes before restarting {}: {e}",
                            keys(batch)
                        )],
                        failed: BTreeMap::new(),
                    });
                    return out;
                }
            },
            None => BTreeMap::new(),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for (c, goal) in batch {
            let (c, plan, goal) = (c.clone(), plan.clone(), goal.clone());
            let api = plan.nomad.clone().filter(|_| wait);
            let before = before.get(&c.key).copied().flatten();
            tasks.spawn(async move {
                let mut previous = None;
                let ready = api.as_ref().map(|a| (a, before));
                let r = step(&c, &plan, &goal, ready, &mut previous).await;
                (c.key.clone(), c.ssh.target(), previous, r)
            });
        }
        let mut failures = Vec::new();
        let mut failed = BTreeMap::new();
        while let Some(j) = tasks.join_next().await {
            match j {
                Ok((key, target, previous, r)) => {
                    if let Some(p) = previous {
                        out.previous.insert(key.clone(), p);
                    }
                    match r {
                        Ok(warning) => {
                            if let Some((title, w)) = warning {
                                out.warnings.push((title, format!("{key}: {w}")));
                            }
                            out.done.push(key);
                        }
                        Err(e) => {
                            failures.push(format!("{key} ({target}): {e}"));
                            failed.insert(key, e);
                        }
                    }
                }
                Err(e) => failures.push(format!("a client's task failed: {e}")),
            }
        }
        if !failures.is_empty() {
            failures.sort();
            out.stopped = Some(Stopped { failures, failed });
            return out;
        }
    }
    out
}

fn keys(batch: &[(Client, Goal)]) -> String {
    batch
        .iter()
        .map(|(c, _)| c.key.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
