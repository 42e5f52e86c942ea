//! Waiting for a Nomad client's builds and draining its node before the client is
//! restarted or replaced, by the servers' version: shared by the static clients' roll
//! and the launch configuration's rollout.

use std::time::{Duration, Instant};

use crate::backends::nomad::{self as nb, Node};
use crate::backends::tunnel::Route;

/// The Nomad servers' API, to see a restarted node ready again.
#[derive(Clone, Debug)]
pub(crate) struct NomadApi {
    pub endpoint: String,
    pub ca_file: Option<std::path::PathBuf>,
    /// CA certificates as PEM text instead (the Services machine's bundle), with a label.
    pub ca_pem: Option<(&'static str, Vec<u8>)>,
    pub token: Option<crate::secret::Secret>,
    pub ready_timeout: Duration,
    pub route: Route,
    /// When the nodes cannot be read (a destroy has no token: Terraform sends no
    /// configuration then), roll on without waiting, with a warning.
    pub optional: bool,
}

impl NomadApi {
    fn ca(&self) -> Option<nb::Ca<'_>> {
        match (&self.ca_file, &self.ca_pem) {
            (Some(f), _) => Some(nb::Ca::File(f)),
            (None, Some((label, pem))) => Some(nb::Ca::Pem { label, pem }),
            (None, None) => None,
        }
    }

    /// One node with its attributes; None when Nomad no longer knows it.
    pub(crate) async fn node(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<nb::NodeDetail>, String> {
        nb::node(
            &self.route,
            &self.endpoint,
            id,
            self.ca(),
            self.token.as_ref().map(|t| t.expose()),
            timeout,
        )
        .await
        .map_err(|e| crate::backends::chain(&e))
    }

    /// The nodes the Nomad servers list.
    pub(crate) async fn nodes(&self, timeout: Duration) -> Result<Vec<Node>, String> {
        nb::nodes(
            &self.route,
            &self.endpoint,
            self.ca(),
            self.token.as_ref().map(|t| t.expose()),
            timeout,
        )
        .await
        .map_err(|e| crate::backends::chain(&e))
    }

    /// The servers' RPC addresses (`/v1/status/peers`).
    pub(crate) async fn peers(&self, timeout: Duration) -> Result<Vec<String>, String> {
        nb::peers(
            &self.route,
            &self.endpoint,
            self.ca(),
            self.token.as_ref().map(|t| t.expose()),
            timeout,
        )
        .await
        .map_err(|e| crate::backends::chain(&e))
    }

    /// The answering server's version (`/v1/agent/self`).
    pub(crate) async fn version(&self, timeout: Duration) -> Result<String, String> {
        nb::version(
            &self.route,
            &self.endpoint,
            self.ca(),
            self.token.as_ref().map(|t| t.expose()),
            timeout,
        )
        .await
        .map_err(|e| crate::backends::chain(&e))
    }

    /// The allocations placed on node `id`.
    pub(crate) async fn node_allocations(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Vec<nb::Allocation>, String> {
        nb::node_allocations(
            &self.route,
            &self.endpoint,
            id,
            self.ca(),
            self.token.as_ref().map(|t| t.expose()),
            timeout,
        )
        .await
        .map_err(|e| crate::backends::chain(&e))
    }

    pub(crate) async fn drain(
        &self,
        api: nb::DrainApi,
        id: &str,
        d: nb::Drain,
        timeout: Duration,
    ) -> Result<(), String> {
        nb::drain(
            &self.route,
            &self.endpoint,
            api,
            id,
            d,
            self.ca(),
            self.token.as_ref().map(|t| t.expose()),
            timeout,
        )
        .await
        .map_err(|e| crate::backends::chain(&e))
    }
}

/// With CircleCI running: each client's builds end, and its node is drained, before its
/// agent restarts; the drain is lifted once the node is ready again.
#[derive(Clone, Debug)]
pub(crate) struct Drainer {
    /// The Nomad servers CircleCI schedules on (the resource's `nomad_endpoint`).
    pub api: NomadApi,
    pub kind: nb::DrainApi,
    /// How long a client's running builds may take to end (`builds_timeout`).
    pub builds_timeout: Duration,
    /// What a drain that did not complete leaves of the client, for messages: "its
    /// agent was not restarted", "it was not terminated".
    pub untouched: &'static str,
}

/// How often a client's builds are looked at while waiting for them.
const BUILDS_POLL: Duration = Duration::from_secs(1);

/// A build, for messages.
fn build_text(a: &nb::Allocation) -> String {
    format!(
        "{} (job {}, {})",
        if a.name.is_empty() { &a.id } else { &a.name },
        a.job_id,
        a.client_status
    )
}

/// How long past `builds_timeout` a 0.8 drain's own deadline lies: the roll lifts the
/// drain at `builds_timeout`, long before Nomad would stop what still runs.
const DEADLINE_MARGIN: Duration = Duration::from_secs(3600);

/// Why a drain did not end in a client ready to restart, and whether this roll had
/// enabled it (then it must be lifted).
pub(crate) struct NotDrained {
    pub why: String,
    pub enabled: bool,
    /// What ended it was `builds_timeout`.
    pub timed_out: bool,
}

impl Drainer {
    /// Waits, within `builds_timeout`, until `node` runs no build, and drains it so that
    /// no new one lands: before 0.8 after the wait (a drain stops what runs at once);
    /// from 0.8 first, with a deadline far past `builds_timeout` (Nomad would stop what
    /// still runs there; the roll gives up and lifts the drain at `builds_timeout`). A
    /// node already draining or ineligible (someone else's) is waited for, not drained.
    /// The node's ModifyIndex once drained (the restart must raise it again), and
    /// whether this roll drained it.
    pub(crate) async fn drain(
        &self,
        what: &str,
        node: &Node,
        timeout: Duration,
    ) -> Result<(u64, bool), NotDrained> {
        let theirs = node.drain || node.eligibility == "ineligible";
        let mut enabled = false;
        let fail = |why: String, enabled: bool| NotDrained {
            why,
            enabled,
            timed_out: false,
        };
        let started = Instant::now();
        if self.kind == nb::DrainApi::Spec && !theirs {
            self.api
                .drain(
                    self.kind,
                    &node.id,
                    nb::Drain::Enable {
                        deadline: self.builds_timeout + DEADLINE_MARGIN,
                    },
                    timeout,
                )
                .await
                .map_err(|e| {
                    fail(
                        format!("draining {} at {}: {e}", what, self.api.endpoint),
                        true,
                    )
                })?;
            enabled = true;
            log::info!("{}: node {} draining", what, node.name);
        }
        let mut logged = Vec::new();
        loop {
            let running: Vec<String> = self
                .api
                .node_allocations(&node.id, timeout)
                .await
                .map_err(|e| fail(e, enabled))?
                .iter()
                .filter(|a| a.active())
                .map(build_text)
                .collect();
            // From 0.8, Nomad marks the drain complete itself (a change of the node's
            // ModifyIndex): wait for that too, so that the index read below is the
            // last before the restart.
            let settling = enabled
                && running.is_empty()
                && self
                    .api
                    .nodes(timeout)
                    .await
                    .map_err(|e| fail(e, enabled))?
                    .iter()
                    .any(|n| n.id == node.id && n.drain);
            if running.is_empty() && !settling {
                break;
            }
            if started.elapsed() >= self.builds_timeout {
                return Err(NotDrained {
                    timed_out: true,
                    ..fail(
                        if running.is_empty() {
                            format!(
                            "Nomad at {} did not mark the drain of {} complete within {} (builds_timeout). {}",
                            self.api.endpoint,
                            what,
                            humantime::format_duration(self.builds_timeout),
                            crate::resources::capitalized(self.untouched)
                        )
                        } else {
                            format!(
                                "{} build(s) still run on {} after {} (builds_timeout): {}. {}",
                                running.len(),
                                what,
                                humantime::format_duration(self.builds_timeout),
                                running.join(", "),
                                crate::resources::capitalized(self.untouched)
                            )
                        },
                        enabled,
                    )
                });
            }
            if running != logged {
                log::info!(
                    "{}: waiting for {} build(s) on node {}: {}",
                    what,
                    running.len(),
                    node.name,
                    running.join("; ")
                );
                logged = running;
            }
            if crate::plugin::stop::or_stop(tokio::time::sleep(BUILDS_POLL))
                .await
                .is_none()
            {
                return Err(fail(
                    format!(
                        "stopped (Terraform was interrupted) while waiting for the builds on {}; {}",
                        what, self.untouched
                    ),
                    enabled,
                ));
            }
        }
        if self.kind == nb::DrainApi::Toggle && !theirs {
            // A build placed since the last look would be stopped now: Nomad before 0.8
            // has no way to keep new work off a node without stopping what runs.
            self.api
                .drain(
                    self.kind,
                    &node.id,
                    nb::Drain::Enable {
                        deadline: Duration::ZERO,
                    },
                    timeout,
                )
                .await
                .map_err(|e| {
                    fail(
                        format!("draining {} at {}: {e}", what, self.api.endpoint),
                        true,
                    )
                })?;
            enabled = true;
            log::info!("{}: node {} runs no build; drained", what, node.name);
        }
        let nodes = self
            .api
            .nodes(timeout)
            .await
            .map_err(|e| fail(e, enabled))?;
        Ok((
            nodes
                .iter()
                .find(|n| n.id == node.id)
                .map_or(node.modify_index, |n| n.modify_index),
            enabled,
        ))
    }

    /// Lifts the drain (and, from 0.8, makes the node eligible again).
    pub(crate) async fn lift(
        &self,
        what: &str,
        node: &Node,
        timeout: Duration,
    ) -> Result<(), String> {
        self.api
            .drain(self.kind, &node.id, nb::Drain::Disable, timeout)
            .await
            .map_err(|e| {
                format!(
                    "lifting the drain of {} at {}: {e}",
                    what, self.api.endpoint
                )
            })?;
        log::info!("{}: node {} takes builds again", what, node.name);
        Ok(())
    }
}
