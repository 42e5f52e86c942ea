//! `circleci_nomad_client_static`: the runbook's "Nomad Clients" step for static
//! installations. On every client machine (over SSH, with the Services machine's
//! credentials and rules) only the servers list of the Nomad agent's configuration file
//! is rewritten, the agent restarted with one fixed command, and, when the Nomad
//! servers' API is given, the node awaited ready again; `batch_size` clients at a time.

mod apply;
mod file;
mod roll;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::cutover::{duration_or, StopAttrs, BUILDS_TIMEOUT};
use super::model::{self, Blocks, Field, Known, Model, Undecoded};
use super::validate::Check;
use crate::backends::ssh::{self, HostKeyPolicy, ServicesHost, SshConfig};
use crate::circleci::nomad_user_data as ud;
use crate::plugin::{
    Applied, AttrPath, Block, Diagnostic, Diagnostics, PlanRequest, Resource, Schema, Value,
};
use crate::provider::ProviderData;
use crate::secret::Secret;
use roll::{Client, Found, Restart};

/// The nested blocks' name, for the paths of their errors.
const CLIENT: &str = "client";
const DEFAULT_CONFIG: &str = "/etc/nomad/config.hcl";
const DEFAULT_SERVICE: &str = "nomad";
const DEFAULT_BATCH: i64 = 1;
const DEFAULT_READY: &str = "5m";
const DEFAULT_ROOT: &str = "/";
const DEFAULT_PORT: u16 = 22;
const OK: &str = "ok";

const DESCRIPTION: &str = "The runbook's \"Nomad Clients\" step for static installations: on each Nomad \
     client machine (over SSH, with the Services machine's credentials, host-key rules and sudo), rewrites \
     **only** the servers list of the Nomad agent's configuration (`client { servers = [...] }` or \
     `server_join { retry_join = [...] }`), keeping every other byte as it is (bytes that are not UTF-8 \
     included); writes it atomically; restarts the agent with one fixed command; and, with \
     `nomad_endpoint`, waits until the servers list the node `ready` again. `batch_size` clients at a \
     time: the first failure stops the roll, the state records which clients are done (`client_status`), \
     and the next apply continues with the rest. A first apply checks every client (reachable, file \
     readable, a servers list in it) before it changes any. Refresh reports each client's list \
     (`client_status`): a client that drifted plans an update that rolls it again. **The original is kept \
     on the client.** Before this resource first rolls a client, it copies the client's file as it is to \
     `<config_path>.circleci-original` next to it (mode 0600, written atomically, only when no such copy \
     exists; not `*.hcl`, so an agent started with `-config DIR` ignores it). A copy already there is the \
     original: every apply reads `previous_servers` from it, so a failed restart or ready wait, a killed \
     provider, a tainted or replaced resource (whose create starts with no prior state) never make the new \
     list pass for the old one; and an agent such an apply left unrestarted is restarted by the next, \
     though its file is already right. Destroy (and a client removed from the list) puts each servers list \
     in the file back to its own list in that copy, byte for byte, restarts the agent, then removes the \
     copy; with `restore_on_destroy = false` the lists stay and the copy is removed. Import with \
     `host[:port][=CONFIG_PATH],…` (the clients; `nomad_servers` is read from the first).";

crate::model! {
    /// One `client` block: a Nomad client machine, reached over SSH.
    #[derive(Clone, Debug, PartialEq)]
    pub(crate) struct ClientBlock / ClientBlockAtPlan {
        host: String [required, check(Check::Host), doc("Address of the client machine.")],
        port: Option<u16> [optional, check(Check::Port), doc("SSH port. Default `22`.")],
        user: Option<String> [optional, doc(
            "SSH user. Default: the provider's `services_host.user`. With `services_host.sudo`, commands and \
             writes go through `sudo -n` here too."
        )],
        host_key: Option<String> [optional, check(Check::Text("Invalid host key", check_host_key)), doc(
            "The machine's public host key (`ssh-ed25519 AAAA…`). Default: the provider's `known_hosts_file` \
             (or `insecure_ignore_host_key`); required when the provider pins the Services machine's \
             `host_key`."
        )],
        config_path: Option<String> [optional, check(Check::RemotePath), doc(
            "This client's configuration file, when it is not the resource's `config_path`."
        )],
        node_name: Option<String> [optional, doc(
            "The node's name in Nomad, to see it ready again. Default: the node whose name or address is `host`."
        )],
    }
}

crate::model! {
    /// `circleci_nomad_client_static`'s attributes and its `client` blocks.
    pub(crate) struct Fleet / FleetAtPlan {
        id: Known<String> [computed, doc("The first client's `host:port` at create.")],
        config_path: String [default(DEFAULT_CONFIG.to_string()), check(Check::RemotePath), doc(
            "The Nomad agent's configuration file on each client, as enterprise-setup's provisioning writes it."
        )],
        nomad_servers: Vec<String> [required, doc(
            "The external Nomad servers, `host` or `host:port` (e.g. `[\"nomad-1.internal:4647\"]`)."
        )],
        restart: String [default(Restart::Systemctl.as_str().to_string()),
            check(Check::OneOf(&["systemctl", "service", "none"])), doc(
            "How the agent is restarted after its file changed: `systemctl` (`systemctl restart SERVICE`), \
             `service` (`service SERVICE restart`) or `none`."
        )],
        service_name: String [default(DEFAULT_SERVICE.to_string()),
            check(Check::Text("Invalid service name", check_service)), doc("The agent's service.")],
        batch_size: i64 [default(DEFAULT_BATCH), doc("Clients rewritten and restarted at a time.")],
        via_services_host: Option<bool> [optional, doc(
            "Reach the client machines through the Services machine (each SSH connection inside a \
             `direct-tcpip` channel of the provider's connection to it, as `ssh -J`): for clients only \
             its network reaches. Default: the provider's `via_services_host`."
        )],
        nomad_endpoint: Option<String> [optional,
            check(Check::Text("Invalid Nomad endpoint", check_endpoint)), doc(
            "The Nomad servers' HTTP API (e.g. `circleci_external_nomad`'s `endpoint`). When set, each restarted \
             client's node must be listed `ready` again (`GET /v1/nodes`, a higher `ModifyIndex`) within \
             `ready_timeout` before the roll goes on. Through the Services machine with the provider's \
             `via_services_host`."
        )],
        nomad_ca_file: Option<String> [optional, check(Check::NonEmpty), doc(
            "CA certificate (PEM) of the Nomad API's certificate; default: the system's CAs."
        )],
        nomad_token_wo: Option<Secret> [optional, write_only, doc(
            "Nomad ACL token that may read nodes (`node:read`), write-only."
        )],
        ready_timeout: String [default(DEFAULT_READY.to_string()),
            check(Check::Duration { min_secs: 1, max_secs: 86_400 }), doc(
            "How long a restarted node may take to be ready again."
        )],
        restore_on_destroy: bool [default(true), doc(
            "Destroy (and a client removed from the list) puts back the servers lists the client's file had \
             before this resource first touched it (from the copy kept next to the file), then removes the copy."
        )],
        config_root: String [default_in_doc(DEFAULT_ROOT.to_string()), check(Check::RemotePath), doc(
            "Prefix of the Services machine's paths (for tests and chroots). Default `/`. Before a roll changes \
             anything, the Services machine says whether CircleCI runs (`replicatedctl app status`) and on which \
             Nomad (`/etc/circleconfig/shared/nomad` under this root as CircleCI last started with it; else its \
             embedded Nomad)."
        )],
        embedded_nomad_endpoint: String [stop_embedded_nomad],
        builds_timeout: String [default_in_doc(BUILDS_TIMEOUT.to_string()),
            check(Check::Duration { min_secs: 1, max_secs: 7 * 86_400 }), doc(format!(
            "With CircleCI running: how long a client's running builds may take to end before its agent is \
             restarted (default `{BUILDS_TIMEOUT}`). Before Nomad 0.8 the roll waits until the node runs no \
             build, then drains it (`POST /v1/node/:id/drain?enable=true`, which would stop what runs) and \
             restarts the agent; from 0.8 it drains with this as the `DrainSpec` deadline and waits for the \
             builds. Past it the roll stops naming the builds, that client unchanged. The drain is lifted (and, \
             from 0.8, the node made eligible) once the node is ready again, or when its restart fails. With \
             CircleCI stopped (inside the cutover) no build runs: no wait, no drain. While CircleCI runs, the \
             clients may only be moved to servers of the Nomad it uses (`/v1/status/peers`), and \
             `nomad_endpoint` must be set."
        ))],
        client_status: Known<BTreeMap<String, String>> [computed, doc(
            "Per client (`host:port`): `ok` when its file names `nomad_servers`; else what refresh found \
             (`servers list is [...]`, the file missing, unreachable) or why the roll did not finish it \
             (`pending: …`)."
        )],
        previous_servers: Known<BTreeMap<String, Vec<String>>> [computed, doc(
            "Per client: the (first) servers list its file held before this resource first touched it, as read \
             from the copy kept next to the file."
        )],
        client: Blocks<ClientBlock> [items(1, 0), doc("One Nomad client machine, reached over SSH.")],
    }
}

/// The schema's block.
fn schema_block() -> Block {
    model::block(Fleet::decls(), DESCRIPTION)
}

impl ClientBlock {
    /// The SSH port.
    fn port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }

    /// `host:port`: the client's key in the computed maps.
    fn key(&self) -> String {
        host_port(&self.host, self.port())
    }
}

impl Fleet {
    /// The clients' keys, in order.
    fn keys(&self) -> Vec<String> {
        self.client.0.iter().map(ClientBlock::key).collect()
    }

    /// Each client's status as the state records it (none before the first apply).
    fn status(&self) -> BTreeMap<String, String> {
        self.client_status.clone().known().unwrap_or_default()
    }

    /// Each client's previous servers list as the state records it.
    fn previous(&self) -> BTreeMap<String, Vec<String>> {
        self.previous_servers.clone().known().unwrap_or_default()
    }

    /// A fleet as a cutover's record holds it (its planned value when the cutover moved
    /// it). A record an older provider wrote lacks the attributes added since: as in a
    /// state, they read as their defaults.
    fn of_record(v: &Value) -> Result<Fleet, Undecoded> {
        Fleet::decode(&v.clone().conform(&schema_block()))
    }

    /// The value to store.
    fn to_state(&self) -> Value {
        let mut v = Value::Null;
        self.encode(&mut v);
        v
    }

    /// The settings of a stop of CircleCI (and of the check whether it runs).
    fn stop_settings(&self) -> super::cutover::StopSettings {
        super::cutover::StopSettings {
            root: self.config_root.clone(),
            embedded_nomad: self.embedded_nomad_endpoint.clone(),
            builds_timeout: duration_or(&self.builds_timeout, BUILDS_TIMEOUT),
        }
    }
}

/// The configuration's client blocks one by one, as its plan view reads each: a block
/// holding an unknown value leaves the others readable. `None` while the list or a
/// whole block is not known, or a block holds a value its type cannot (a port of
/// 70000, which its check names).
fn client_blocks_at_plan(config: &Value) -> Option<Vec<ClientBlockAtPlan>> {
    let each = |b: &Value| match b {
        Value::Unknown => Err(Undecoded::Unknown(CLIENT)),
        b => ClientBlockAtPlan::decode(b),
    };
    model::each_at_plan(config, CLIENT, each).ok()?.known()
}

/// What the configuration adds at apply to the planned values: the write-only token.
pub(super) struct WriteOnly {
    token: Option<Secret>,
}

impl WriteOnly {
    /// Of a configuration; `None` without one (a destroy, a fallback's move back), when
    /// reading the Nomad nodes is optional.
    fn of(config: &Value) -> Result<Option<WriteOnly>, Diagnostics> {
        if config.is_null() {
            return Ok(None);
        }
        let token = FleetAtPlan::decode(config)?
            .nomad_token_wo
            .known()
            .flatten();
        Ok(Some(WriteOnly { token }))
    }
}

/// True when one attribute's two values differ as Terraform compares them.
fn differs<T: Field>(a: &Known<T>, b: &Known<T>) -> bool {
    a.to_value() != b.to_value()
}

pub(crate) struct NomadClientStatic {
    data: Arc<ProviderData>,
}

impl NomadClientStatic {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        NomadClientStatic { data }
    }
}

fn host_port(host: &str, port: u16) -> String {
    crate::backends::tunnel::host_port(host, port)
}

fn check_service(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a service name: letters, digits, @ . _ - (not first)"
        ))
    }
}

fn check_endpoint(e: &str) -> Result<(), String> {
    if (e.starts_with("https://") || e.starts_with("http://")) && url::Url::parse(e).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "{e:?} is not an http(s) URL such as https://nomad.internal:4646"
        ))
    }
}

fn check_host_key(k: &str) -> Result<(), String> {
    ssh::parse_host_key(k).map(|_| ())
}

/// The clients as SSH targets, from the provider's `services_host` settings.
fn clients(
    f: &Fleet,
    base: &SshConfig,
    via: Option<&Arc<ServicesHost>>,
) -> Result<Vec<Client>, Diagnostics> {
    let mut out = Vec::new();
    for (i, c) in f.client.0.iter().enumerate() {
        let host_key = match (&c.host_key, &base.host_key) {
            (Some(k), _) => HostKeyPolicy::Pinned(vec![ssh::parse_host_key(k).map_err(|e| {
                Diagnostics::from(
                    Diagnostic::error("Invalid host key", e)
                        .at(AttrPath::root(CLIENT).index(i).attr("host_key")),
                )
            })?]),
            (None, HostKeyPolicy::Pinned(_)) => {
                return Err(Diagnostic::error(
                    "No host key for the client",
                    format!(
                        "the provider's services_host.host_key pins the Services machine's key, not {}'s: set \
                         this client's host_key (or the provider's known_hosts_file)",
                        c.host
                    ),
                )
                .at(AttrPath::root(CLIENT).index(i).attr("host_key"))
                .into())
            }
            (None, other) => other.clone(),
        };
        out.push(Client {
            key: c.key(),
            ssh: SshConfig {
                host: c.host.clone(),
                port: c.port(),
                user: c.user.clone().unwrap_or_else(|| base.user.clone()),
                auth: base.auth.clone(),
                host_key,
                sudo: base.sudo,
                timeout: base.timeout,
            },
            config_path: c
                .config_path
                .clone()
                .unwrap_or_else(|| f.config_path.clone()),
            node_name: c.node_name.clone(),
            via: via.cloned(),
        });
    }
    Ok(out)
}

fn warnings(w: &[(&'static str, String)]) -> Diagnostics {
    let mut d = Diagnostics::new();
    for (title, x) in w {
        d.push(Diagnostic::warning(*title, x.clone()));
    }
    d
}

/// The checks no declaration makes: at least one valid Nomad server, a batch of at
/// least one, each client listed once.
fn validate_config(config: &Value) -> Diagnostics {
    let mut diags = Diagnostics::new();
    model::validate(Fleet::decls(), config, &mut diags);
    match FleetAtPlan::decode(config) {
        Ok(p) => {
            if p.batch_size.known().is_some_and(|n| n < 1) {
                diags.attr_error(
                    AttrPath::root("batch_size"),
                    "Invalid batch size",
                    "at least 1",
                );
            }
        }
        // A value its type cannot hold: its check said so, or this does.
        Err(e) => {
            if !diags.has_errors() {
                diags.extend(e.into());
            }
        }
    }
    let servers = model::each_at_plan(
        config,
        "nomad_servers",
        model::element_at_plan::<String>("nomad_servers"),
    );
    match servers {
        Ok(Known::Value(list)) => {
            if list.is_empty() {
                diags.attr_error(
                    AttrPath::root("nomad_servers"),
                    "No Nomad servers",
                    "list at least one",
                );
            }
            for (i, s) in list.into_iter().enumerate() {
                if let Some(Err(e)) = s.known().map(|s| ud::check_server(&s)) {
                    diags.attr_error(
                        AttrPath::root("nomad_servers").index(i),
                        "Invalid Nomad server",
                        e,
                    );
                }
            }
        }
        Ok(Known::Null | Known::Unknown) => {}
        Err(e) => diags.extend(e.into()),
    }
    // Each client once: once every host and port is known.
    let keys: Option<Vec<String>> = client_blocks_at_plan(config).and_then(|cs| {
        cs.into_iter()
            .map(|c| match (c.host, c.port) {
                (Known::Value(h), Known::Value(p)) => {
                    Some(host_port(&h, p.unwrap_or(DEFAULT_PORT)))
                }
                (Known::Value(h), Known::Null) => Some(host_port(&h, DEFAULT_PORT)),
                _ => None,
            })
            .collect()
    });
    if let Some(keys) = keys {
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].contains(k) {
                diags.attr_error(
                    AttrPath::root(CLIENT).index(i).attr("host"),
                    "Duplicate client",
                    format!("{k} is listed twice"),
                );
            }
        }
    }
    diags
}

#[async_trait]
impl Resource for NomadClientStatic {
    fn type_name(&self) -> &'static str {
        "circleci_nomad_client_static"
    }

    fn schema(&self) -> Schema {
        Schema::new(0, schema_block())
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        validate_config(config)
    }

    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        diags: &mut Diagnostics,
    ) -> Vec<AttrPath> {
        model::set_defaults(Fleet::decls(), req.config, planned);
        let decoded = FleetAtPlan::decode(planned).and_then(|p| {
            let prior = if req.is_create() {
                None
            } else {
                Some(FleetAtPlan::decode(req.prior)?)
            };
            Ok((p, prior))
        });
        let (mut p, prior) = match decoded {
            Ok(x) => x,
            Err(e) => {
                diags.extend(e.into());
                return vec![];
            }
        };
        let rolls = match &prior {
            None => true,
            Some(b) => {
                p.id = b.id.clone();
                // What makes a client's file or agent differ from the last apply.
                let settings = differs(&p.client, &b.client)
                    || differs(&p.config_path, &b.config_path)
                    || differs(&p.nomad_servers, &b.nomad_servers)
                    || differs(&p.restart, &b.restart)
                    || differs(&p.service_name, &b.service_name);
                let status = b.client_status.clone().known().unwrap_or_default();
                let clients = match &b.client {
                    Known::Value(c) => c.0.len(),
                    Known::Null | Known::Unknown => 0,
                };
                settings || status.values().any(|s| s != OK) || status.len() != clients
            }
        };
        match (&prior, rolls) {
            (None, _) => {
                p.id = Known::Unknown;
                (p.client_status, p.previous_servers) = (Known::Unknown, Known::Unknown);
            }
            (Some(_), true) => {
                (p.client_status, p.previous_servers) = (Known::Unknown, Known::Unknown);
            }
            (Some(b), false) => {
                (p.client_status, p.previous_servers) =
                    (b.client_status.clone(), b.previous_servers.clone());
            }
        }
        p.encode(planned);
        vec![]
    }

    async fn create(&self, planned: &Value, config: &Value) -> Applied {
        let applied = self.create_applied(planned, config).await;
        crate::resources::services_restart::ServicesRestart::new(self.data.clone())
            .after_failed_step(
                Fleet::decode(planned).ok().map(|m| m.stop_settings()),
                applied,
            )
            .await
    }

    async fn update(&self, prior: &Value, planned: &Value, config: &Value) -> Applied {
        let applied = self.update_applied(prior, planned, config).await;
        crate::resources::services_restart::ServicesRestart::new(self.data.clone())
            .after_failed_step(
                Fleet::decode(planned).ok().map(|m| m.stop_settings()),
                applied,
            )
            .await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let mut f = Fleet::decode(state)?;
        let cs = self.clients_of(&f)?;
        let prior = f.status();
        let mut tasks = tokio::task::JoinSet::new();
        for c in cs {
            tasks.spawn(async move {
                (
                    c.key.clone(),
                    c.config_path.clone(),
                    roll::inspect(&c).await,
                )
            });
        }
        let mut status = BTreeMap::new();
        while let Some(j) = tasks.join_next().await {
            let Ok((k, path, found)) = j else { continue };
            let now = roll::status_of(&found, &f.nomad_servers, &path);
            // A client the roll did not finish stays pending while its file looks right.
            let s = match prior.get(&k) {
                Some(p) if p.starts_with("pending") && now == OK => p.clone(),
                _ => now,
            };
            status.insert(k, s);
        }
        f.client_status = Known::Value(status);
        let mut v = state.clone();
        f.encode(&mut v);
        Ok(Some(v))
    }

    async fn delete(&self, prior: &Value) -> Applied {
        self.delete_applied(prior).await
    }

    async fn import(&self, id: &str) -> Result<Value, Diagnostics> {
        let bad = |why: String| -> Diagnostics {
            Diagnostic::error(
                "Invalid import ID",
                format!(
                    "{why}. Expected host[:port][=CONFIG_PATH],host[:port][=CONFIG_PATH],… (the client machines)"
                ),
            )
            .into()
        };
        let mut list = Vec::new();
        for part in id.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (part, path) = match part.split_once('=') {
                Some((p, path)) => (p, Some(path.to_string())),
                None => (part, None),
            };
            let (host, port) = match part.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                    let p = p
                        .parse::<u16>()
                        .map_err(|_| bad(format!("{part:?}: not a port")))?;
                    (h.trim_matches(['[', ']']).to_string(), p)
                }
                _ => (part.to_string(), DEFAULT_PORT),
            };
            list.push(ClientBlock {
                host,
                port: Some(port),
                user: None,
                host_key: None,
                config_path: path,
                node_name: None,
            });
        }
        if list.is_empty() {
            return Err(bad("no client".into()));
        }
        let mut f = Fleet {
            id: Known::Null,
            config_path: DEFAULT_CONFIG.to_string(),
            nomad_servers: vec![],
            restart: Restart::Systemctl.as_str().to_string(),
            service_name: DEFAULT_SERVICE.to_string(),
            batch_size: DEFAULT_BATCH,
            via_services_host: None,
            nomad_endpoint: None,
            nomad_ca_file: None,
            nomad_token_wo: None,
            ready_timeout: DEFAULT_READY.to_string(),
            restore_on_destroy: true,
            config_root: DEFAULT_ROOT.to_string(),
            embedded_nomad_endpoint: super::cutover::DEFAULT_EMBEDDED_NOMAD.to_string(),
            builds_timeout: BUILDS_TIMEOUT.to_string(),
            client_status: Known::Null,
            previous_servers: Known::Value(BTreeMap::new()),
            client: Blocks(list),
        };
        let cs = self.clients_of(&f)?;
        let Some(first) = cs.first() else {
            return Err(bad("no client".into()));
        };
        f.id = Known::Value(first.key.clone());
        match roll::inspect(first).await {
            Ok(Found::Servers(items)) => f.nomad_servers = items,
            other => {
                return Err(Diagnostic::error(
                    "Cannot import",
                    format!(
                        "{}: {}",
                        first.key,
                        roll::status_of(&other, &[], &first.config_path)
                    ),
                )
                .into())
            }
        }
        Ok(f.to_state())
    }
}

#[cfg(test)]
mod tests;
