//! The schema of `circleci_nomad_client_static`.

use super::{CLIENT, PREVIOUS, STATUS};
use crate::plugin::{Attribute, Block, NestedBlock, Nesting, Type};

fn client_block() -> Block {
    Block::new()
        .description("One Nomad client machine, reached over SSH.")
        .attr(Attribute::new("host", Type::String).required().description("Address of the client machine."))
        .attr(Attribute::new("port", Type::Number).optional().description("SSH port. Default `22`."))
        .attr(Attribute::new("user", Type::String).optional().description(
            "SSH user. Default: the provider's `services_host.user`. With `services_host.sudo`, commands and \
             writes go through `sudo -n` here too.",
        ))
        .attr(Attribute::new("host_key", Type::String).optional().description(
            "The machine's public host key (`ssh-ed25519 AAAA…`). Default: the provider's `known_hosts_file` \
             (or `insecure_ignore_host_key`); required when the provider pins the Services machine's \
             `host_key`.",
        ))
        .attr(Attribute::new("config_path", Type::String).optional().description(
            "This client's configuration file, when it is not the resource's `config_path`.",
        ))
        .attr(Attribute::new("node_name", Type::String).optional().description(
            "The node's name in Nomad, to see it ready again. Default: the node whose name or address is `host`.",
        ))
}

pub(super) fn block() -> Block {
    Block::new()
        .description(
            "The runbook's \"Nomad Clients\" step for static installations: on each Nomad client machine (over \
             SSH, with the Services machine's credentials, host-key rules and sudo), rewrites **only** the servers \
             list of the Nomad agent's configuration (`client { servers = [...] }` or `server_join { retry_join = \
             [...] }`), keeping every other byte as it is (bytes that are not UTF-8 included); writes it \
             atomically; restarts the agent with one fixed command; and, with `nomad_endpoint`, waits until the \
             servers list the node `ready` again. `batch_size` \
             clients at a time: the first failure stops the roll, the state records which clients are done \
             (`client_status`), and the next apply continues with the rest. A first apply checks every client \
             (reachable, file readable, a servers list in it) before it changes any. Refresh reports each \
             client's list (`client_status`): a client that drifted plans an update that rolls it again. \
             **The original is kept on the client.** Before this resource first rolls a client, it copies the \
             client's file as it is to `<config_path>.circleci-original` next to it (mode 0600, written atomically, \
             only when no such copy exists; not `*.hcl`, so an agent started with `-config DIR` ignores it). \
             A copy already there is the original: every apply reads `previous_servers` from it, so a failed \
             restart or ready wait, a killed provider, a tainted or replaced resource (whose create starts with \
             no prior state) never make the new list pass for the old one; and an agent such an apply left \
             unrestarted is restarted by the next, though its file is already right. Destroy (and a client removed from \
             the list) puts each servers list in the file back to its own list in that copy, byte for byte, \
             restarts the agent, then removes the copy; with `restore_on_destroy = false` the lists stay and \
             the copy is removed. Import with `host[:port][=CONFIG_PATH],…` (the clients; `nomad_servers` is \
             read from the first).",
        )
        .attr(Attribute::new("id", Type::String).computed().description("The first client's `host:port` at create."))
        .attr(Attribute::new("config_path", Type::String).optional().computed().description(
            "The Nomad agent's configuration file on each client, as enterprise-setup's provisioning writes it. \
             Default `/etc/nomad/config.hcl`.",
        ))
        .attr(Attribute::new("nomad_servers", Type::list(Type::String)).required().description(
            "The external Nomad servers, `host` or `host:port` (e.g. `[\"nomad-1.internal:4647\"]`).",
        ))
        .attr(Attribute::new("restart", Type::String).optional().computed().description(
            "How the agent is restarted after its file changed: `systemctl` (`systemctl restart SERVICE`), \
             `service` (`service SERVICE restart`) or `none`. Default `systemctl`.",
        ))
        .attr(Attribute::new("service_name", Type::String).optional().computed().description(
            "The agent's service. Default `nomad`.",
        ))
        .attr(Attribute::new("batch_size", Type::Number).optional().computed().description(
            "Clients rewritten and restarted at a time. Default `1`.",
        ))
        .attr(Attribute::new("via_services_host", Type::Bool).optional().description(
            "Reach the client machines through the Services machine (each SSH connection inside a \
             `direct-tcpip` channel of the provider's connection to it, as `ssh -J`): for clients only \
             its network reaches. Default: the provider's `via_services_host`.",
        ))
        .attr(Attribute::new("nomad_endpoint", Type::String).optional().description(
            "The Nomad servers' HTTP API (e.g. `circleci_external_nomad`'s `endpoint`). When set, each restarted \
             client's node must be listed `ready` again (`GET /v1/nodes`, a higher `ModifyIndex`) within \
             `ready_timeout` before the roll goes on. Through the Services machine with the provider's \
             `via_services_host`.",
        ))
        .attr(Attribute::new("nomad_ca_file", Type::String).optional().description(
            "CA certificate (PEM) of the Nomad API's certificate; default: the system's CAs.",
        ))
        .attr(Attribute::new("nomad_token_wo", Type::String).optional().sensitive().write_only().description(
            "Nomad ACL token that may read nodes (`node:read`), write-only.",
        ))
        .attr(Attribute::new("ready_timeout", Type::String).optional().computed().description(
            "How long a restarted node may take to be ready again. Default `5m`.",
        ))
        .attr(Attribute::new("restore_on_destroy", Type::Bool).optional().computed().description(
            "Destroy (and a client removed from the list) puts back the servers lists the client's file had \
             before this resource first touched it (from the copy kept next to the file), then removes the copy. \
             Default `true`.",
        ))
        .attr(Attribute::new("config_root", Type::String).optional().computed().description(
            "Prefix of the Services machine's paths (for tests and chroots). Default `/`. Before a roll changes \
             anything, the Services machine says whether CircleCI runs (`replicatedctl app status`) and on which \
             Nomad (`/etc/circleconfig/shared/nomad` under this root as CircleCI last started with it; else its \
             embedded Nomad).",
        ))
        .attr(crate::resources::cutover::embedded_nomad_attr())
        .attr(Attribute::new("builds_timeout", Type::String).optional().computed().description(&format!(
            "With CircleCI running: how long a client's running builds may take to end before its agent is \
             restarted (default `{}`). Before Nomad 0.8 the roll waits until the node runs no build, then drains \
             it (`POST /v1/node/:id/drain?enable=true`, which would stop what runs) and restarts the agent; from \
             0.8 it drains with this as the `DrainSpec` deadline and waits for the builds. Past it the roll stops \
             naming the builds, that client unchanged. The drain is lifted (and, from 0.8, the node made \
             eligible) once the node is ready again, or when its restart fails. With CircleCI stopped (inside the \
             cutover) no build runs: no wait, no drain. While CircleCI runs, the clients may only be moved to \
             servers of the Nomad it uses (`/v1/status/peers`), and `nomad_endpoint` must be set.",
            crate::resources::cutover::BUILDS_TIMEOUT
        )))
        .attr(Attribute::new(STATUS, Type::map(Type::String)).computed().description(
            "Per client (`host:port`): `ok` when its file names `nomad_servers`; else what refresh found (`servers \
             list is [...]`, the file missing, unreachable) or why the roll did not finish it (`pending: …`).",
        ))
        .attr(Attribute::new(PREVIOUS, Type::map(Type::list(Type::String))).computed().description(
            "Per client: the (first) servers list its file held before this resource first touched it, as read \
             from the copy kept next to the file.",
        ))
        .block(NestedBlock::new(CLIENT, Nesting::List, client_block()).items(1, 0))
}
