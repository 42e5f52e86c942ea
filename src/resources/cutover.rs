//! The cutover's shared knowledge, for every resource that stops CircleCI (the data
//! migration and the restart): the builds that must finish before the stop, what the
//! Nomad servers CircleCI uses showed before the first stop, and the capacity check
//! after the start.
//!
//! What was observed before the first stop is kept on the Services machine
//! ([`RECORD`], 0600), not only in Terraform's state: the resource that stops CircleCI
//! is not always the one that starts it (the migration stops, the restart starts), and
//! a failed or tainted apply has no prior state. The record is opened by the first
//! stop, kept by every later one until a start passes all its checks, then removed.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::backends::chain;
use crate::backends::nomad::{self as nb, Allocation, Node, NomadError};
use crate::backends::ssh::ServicesHost;
use crate::backends::tunnel::Route;
use crate::circleci::restart::files;
use crate::plugin::{stop, AttrPath, Diagnostic, Diagnostics};
use crate::provider::ProviderData;
use crate::resources::model::Decl;
use crate::resources::ssh_diag;

mod way_back;
mod written;
pub(crate) use way_back::WayBack;
pub(crate) use written::{target_mongo, target_pg};

/// What every temporary container of the data migration is named after
/// (`circleci-data-migration-postgres`, `-mongo`): each runs a server over embedded
/// data that CircleCI's own must never share.
pub(crate) const MIGRATION_CONTAINER: &str = "circleci-data-migration-";

/// The migration's temporary containers running on the Services machine now.
pub(crate) async fn migration_containers(
    h: &ServicesHost,
    deadline: Duration,
) -> Result<Vec<String>, Diagnostics> {
    let filter = format!("name={MIGRATION_CONTAINER}");
    let (cmd, out) = crate::resources::run_command(
        h,
        crate::backends::ssh::Program::Docker,
        &["ps", "--filter", &filter, "--format", "{{.Names}}"],
        None,
        deadline,
    )
    .await?;
    if !out.success() {
        return Err(crate::resources::data_migration::command_failed(
            "Could not list the migration's containers",
            &cmd,
            &out,
        ));
    }
    Ok(out
        .stdout_text()
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(MIGRATION_CONTAINER))
        .map(str::to_string)
        .collect())
}

/// Before CircleCI starts (and before a migration begins): no migration container may
/// run over the embedded data, where CircleCI's own server would be a second one on
/// the same data directory (PostgreSQL's interlock does not reach across containers).
/// Each one left (by a killed provider, a dropped connection, a failed `docker rm`) is
/// removed; one that stays is an error naming it, and CircleCI is not started.
pub(crate) async fn remove_migration_containers(
    h: &ServicesHost,
    deadline: Duration,
    outcome: &str,
) -> Result<(), Diagnostics> {
    let left = migration_containers(h, deadline).await?;
    remove_listed_migration_containers(h, deadline, outcome, left).await
}

/// [`remove_migration_containers`] of those `left` (as [`migration_containers`] listed
/// them just now).
pub(crate) async fn remove_listed_migration_containers(
    h: &ServicesHost,
    deadline: Duration,
    outcome: &str,
    left: Vec<String>,
) -> Result<(), Diagnostics> {
    if left.is_empty() {
        return Ok(());
    }
    for name in &left {
        log::warn!("removing the migration's container {name}, left by an earlier run");
        let _ = crate::resources::run_command(
            h,
            crate::backends::ssh::Program::Docker,
            &["rm", "-f", name],
            None,
            deadline,
        )
        .await;
    }
    let still = migration_containers(h, deadline).await?;
    if still.is_empty() {
        return Ok(());
    }
    Err(Diagnostic::error(
        "A migration container still runs",
        format!(
            "{} still run(s) on the Services machine over the embedded data; docker rm -f did not remove \
             it. CircleCI is not started while it runs: its own server would share the data directory. \
             {outcome} Remove it by hand (docker rm -f NAME), then apply again.",
            still.join(", ")
        ),
    )
    .into())
}

/// Where CircleCI's own Nomad server answers on the Services machine: Replicated runs
/// it in the `nomad` container, and CircleCI's 2.x docs run the `nomad` CLI there with
/// its default address.
pub(crate) const DEFAULT_EMBEDDED_NOMAD: &str = "http://127.0.0.1:4646";
pub(crate) const BUILDS_TIMEOUT: &str = "30m";
/// The cutover's directory on the Services machine, for messages.
pub(crate) const DIR: &str = "/data/circle/external-services-cutover";
/// The record, under `config_root`: next to the embedded data and the export.
pub(crate) const RECORD: &str = "data/circle/external-services-cutover/record.json";
/// How often running builds are looked at while waiting for them.
const BUILDS_POLL: Duration = Duration::from_secs(2);
/// The Services machine's CA bundle (Debian's), which CircleCI's clients trust.
const SERVICES_CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
/// That bundle, as errors name it.
pub(crate) const SERVICES_CA_LABEL: &str =
    "the Services machine's /etc/ssl/certs/ca-certificates.crt";

/// The attributes every resource that stops CircleCI has, declared once: a resource's
/// model declares `embedded_nomad_endpoint: String [stop_embedded_nomad]` and so on.
pub(crate) trait StopAttrs {
    /// `embedded_nomad_endpoint`.
    fn stop_embedded_nomad(self) -> Self;
    /// `builds_timeout`.
    fn stop_builds_timeout(self) -> Self;
    /// `allowed_versions`; `what` may run on them ("this restart").
    fn stop_allowed_versions(self, what: &str) -> Self;
}

impl StopAttrs for Decl {
    fn stop_embedded_nomad(self) -> Self {
        self.default(DEFAULT_EMBEDDED_NOMAD.to_string())
            .check(crate::resources::validate::Check::Text(
                "Invalid embedded_nomad_endpoint",
                crate::circleci::nomad::check_endpoint,
            ))
            .doc(
            "CircleCI's own (embedded) Nomad server's HTTP API, as the Services machine reaches it. \
             Until `/etc/circleconfig/shared/nomad` names an external Nomad, CircleCI schedules builds \
             there: the running builds and the clients that can take them are read from it before \
             CircleCI is stopped.",
        )
    }

    fn stop_builds_timeout(self) -> Self {
        self.default(BUILDS_TIMEOUT.to_string())
            .check(crate::resources::validate::Check::Duration {
                min_secs: 0,
                max_secs: 24 * 3600,
            })
            .doc(
                "How long to wait, before CircleCI is stopped, for the builds running on the Nomad \
                 servers CircleCI uses (their pending and running allocations) to finish. Past it the \
                 apply fails naming the builds still running, and CircleCI is not stopped. `0s` stops \
                 at once and cuts running builds off (a warning names them).",
            )
    }

    fn stop_allowed_versions(self, what: &str) -> Self {
        self.default(vec![super::services_restart::DEFAULT_VERSIONS.to_string()])
            .check(crate::resources::validate::Check::Value(
                super::services_restart::check_versions,
            ))
            .doc(format!(
                "CircleCI versions (Replicated's `VersionLabel`) {what} may run on; `x` matches any \
                 part (the runbook is for 2.17). Checked before CircleCI is stopped."
            ))
    }
}

/// The settings a stop needs.
#[derive(Clone, Debug)]
pub(crate) struct StopSettings {
    pub root: String,
    pub embedded_nomad: String,
    pub builds_timeout: Duration,
}

/// How long one part of the cutover took, at info level as `timing: PART: N s`: the
/// operator sees where the downtime went, and `make bench` adds the parts up.
pub(crate) fn timing(part: &str, took: Duration) {
    log::info!("timing: {part}: {:.2} s", took.as_secs_f64());
}

/// A duration attribute's value (`builds_timeout`, say); `default` when it does not
/// parse (the plan's check refuses it), and a minute should `default` not parse either.
pub(crate) fn duration_or(s: &str, default: &str) -> Duration {
    humantime::parse_duration(s)
        .or_else(|_| humantime::parse_duration(default))
        .unwrap_or(Duration::from_secs(60))
}

/// What was observed before the first stop of a cutover.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub version: u32,
    /// When (RFC 3339, UTC).
    pub taken_at: String,
    /// The Nomad servers asked, each with what came of it.
    pub nomad_servers: Vec<String>,
    /// The clients that could take builds, `NAME (ID)`, across those servers.
    pub nomad_clients: Vec<String>,
    /// The app's `LastModifiedAt` values this cutover has seen: before its first stop,
    /// and once stopped. Any other means someone started or stopped CircleCI since.
    #[serde(default)]
    pub app_modified: Vec<String>,
    /// What the runbook's checks observed on the running CircleCI before the first
    /// stop (see `circleci::restart::observations`); a fallback must observe the same.
    #[serde(default)]
    pub observed: Option<std::collections::BTreeMap<String, String>>,
    /// The Auto Scaling groups of Nomad clients this cutover switched (while CircleCI
    /// was stopped), each with what it launched from before: a fallback switches them
    /// back and replaces their instances.
    #[serde(default)]
    pub moved_groups: Vec<MovedGroup>,
    /// The static Nomad client fleets this cutover rolled (while CircleCI was stopped),
    /// each as its resource's planned settings (no secret is among them): a fallback
    /// puts each client's servers lists back from the copy kept next to its file.
    #[serde(default)]
    pub moved_static: Vec<serde_json::Value>,
    /// Reopened by the way back (see `way_back`): only a destroy going back may use it.
    #[serde(default)]
    pub way_back: bool,
}

/// An Auto Scaling group of Nomad clients, and the launch configuration or template
/// version it used before the cutover switched it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MovedGroup {
    pub group: String,
    #[serde(default)]
    pub launch_configuration: Option<String>,
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_version: Option<String>,
}

/// One Nomad server's answer: its clients and builds, or why there is none.
pub(crate) struct Seen {
    endpoint: String,
    /// The server the running CircleCI schedules on.
    in_use: bool,
    answer: Result<(Vec<Node>, Vec<Allocation>), NomadError>,
}

/// A build, for messages: `NAME (job JOB, on CLIENT) at ENDPOINT`.
fn describe_build(a: &Allocation, nodes: &[Node], endpoint: &str) -> String {
    let client = nodes
        .iter()
        .find(|n| n.id == a.node_id)
        .map_or_else(|| short(&a.node_id).to_string(), |n| n.name.clone());
    format!(
        "{} (job {}, {} on client {client}) at {endpoint}",
        if a.name.is_empty() { &a.id } else { &a.name },
        a.job_id,
        a.client_status
    )
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A client, for the record and messages.
fn describe_client(n: &Node) -> String {
    format!("{} ({})", n.name, short(&n.id))
}

/// A client's state, for evidence.
fn client_state(n: &Node) -> String {
    let mut s = format!("{} ({}): {}", n.name, short(&n.id), n.status);
    if n.drain {
        s.push_str(", draining");
    }
    if !n.eligibility.is_empty() {
        s.push_str(&format!(", {}", n.eligibility));
    }
    s
}

/// The builds running on the servers that answered.
fn running(seen: &[Seen]) -> Vec<String> {
    let mut out = Vec::new();
    for s in seen {
        if let Ok((nodes, allocs)) = &s.answer {
            for a in allocs.iter().filter(|a| a.active()) {
                out.push(describe_build(a, nodes, &s.endpoint));
            }
        }
    }
    out
}

/// The schedulable clients of the server the running CircleCI uses.
fn schedulable(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.in_use)
        .filter_map(|s| s.answer.as_ref().ok())
        .flat_map(|(nodes, _)| {
            nodes
                .iter()
                .filter(|n| n.schedulable())
                .map(describe_client)
        })
        .collect()
}

/// The capacity check after a start: `now` (the nodes of the servers CircleCI now uses)
/// must list at least as many schedulable clients as the record, and at least one.
/// The label of the passed check, or the evidence.
pub(crate) fn capacity(
    endpoint: &str,
    now: &[Node],
    before: Option<&Record>,
) -> Result<String, String> {
    let want = before.map_or(1, |r| r.nomad_clients.len().max(1));
    let ready: Vec<&Node> = now.iter().filter(|n| n.schedulable()).collect();
    let since = match before {
        Some(r) if r.nomad_clients.is_empty() => {
            "none before the stop, so at least one".to_string()
        }
        Some(r) => format!(
            "{} before the stop ({})",
            r.nomad_clients.len(),
            r.nomad_clients.join(", ")
        ),
        None => "no record from before the stop, so at least one".to_string(),
    };
    if ready.len() >= want {
        return Ok(format!(
            "{} ready, eligible clients at {endpoint}; {since}",
            ready.len()
        ));
    }
    let mut evidence = vec![format!(
        "{} ready, eligible clients at {endpoint}, fewer than {since}. (The record of before is \
         {DIR}/record.json; it is kept until a start passes every check.)",
        ready.len()
    )];
    if now.is_empty() {
        evidence.push("(Nomad lists no client at all)".into());
    }
    evidence.extend(now.iter().map(client_state));
    Err(evidence.join("\n"))
}

/// The servers of `servers` (`host` or `host:port`, as a client's servers list has them)
/// that are not among `peers` (a cluster's RPC addresses, `IP:port`): compared as
/// written, then by the addresses a name resolves to here (within 5 s).
pub(crate) async fn outside_peers(servers: &[String], peers: &[String]) -> Vec<String> {
    let peers: Vec<String> = peers.iter().map(|p| p.to_ascii_lowercase()).collect();
    let mut out = Vec::new();
    for s in servers {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse().unwrap_or(4647),
            ),
            _ => (s.trim_matches(['[', ']']).to_string(), 4647u16),
        };
        let literal = crate::backends::tunnel::host_port(&host, port).to_ascii_lowercase();
        if peers.contains(&literal) {
            continue;
        }
        let resolved = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        let found = match resolved {
            Ok(Ok(addrs)) => {
                let mut addrs = addrs;
                addrs.any(|a| peers.contains(&a.to_string()))
            }
            _ => false,
        };
        if !found {
            out.push(s.clone());
        }
    }
    out
}

/// The refusal's text: `outside` are not among the `peers` of the Nomad at `in_use`.
pub(crate) fn not_among(in_use: &str, peers: &[String], outside: &[String]) -> String {
    format!(
        "CircleCI runs and schedules its builds on the Nomad at {in_use} (servers {}). {} {} not among them: \
         moved there now, the clients would leave CircleCI without the clients its builds run on until it is \
         restarted. Move them while CircleCI is stopped, inside the cutover (depends_on the \
         circleci_data_migration that stops it, as examples/complete does), or list that Nomad's servers. \
         Nothing was changed.",
        peers.join(", "),
        outside.join(", "),
        if outside.len() == 1 { "is" } else { "are" }
    )
}

/// The kept originals, next to the record.
const KEPT: &str = "data/circle/external-services-cutover/kept";

/// A runbook file as it was before the cutover's first write: its bytes and mode, or
/// no file at all.
#[derive(Serialize, Deserialize)]
struct Original {
    path: String,
    existed: bool,
    mode: u32,
    content_base64: String,
    /// The app's `LastModifiedAt` when the copy was kept: a start or stop since, other
    /// than the cutover's own, makes the copy out of date.
    #[serde(default)]
    app_modified: String,
}

/// Replicated's view of the app (`replicatedctl app status`).
pub(crate) async fn app_status(
    data: &ProviderData,
    h: &ServicesHost,
) -> Result<crate::circleci::restart::AppStatus, Diagnostics> {
    let (cmd, out) = crate::resources::run_command(
        h,
        crate::backends::ssh::Program::Replicatedctl,
        &["app", "status", "-o", "json"],
        None,
        data.timeout(),
    )
    .await?;
    if !out.success() {
        return Err(Diagnostic::error(
            format!("`{cmd}` failed"),
            format!("it exited with {:?}: {}", out.status, out.evidence()),
        )
        .into());
    }
    crate::circleci::restart::parse_status(&out.stdout_text())
        .map_err(|e| Diagnostic::error("Unexpected answer from Replicated", e).into())
}

/// The Services machine's root and the runbook file `path` is, when it is one of the
/// runbook's files (under some root): only those point CircleCI anywhere.
pub(crate) fn runbook_file(path: &str) -> Option<(String, &'static str)> {
    files::ALL.iter().find_map(|f| {
        let root = path.strip_suffix(f)?.strip_suffix('/')?;
        Some((if root.is_empty() { "/" } else { root }.to_string(), *f))
    })
}

/// Where a JSON file kept on the Services machine does not parse, without quoting it
/// (a kept config file holds passwords).
fn parse_error(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {}, column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// Where the original of runbook file `f` is kept, under `root`.
fn kept_path(root: &str, f: &str) -> String {
    format!(
        "{}/{KEPT}/{}.json",
        root.trim_end_matches('/'),
        f.replace('/', "_")
    )
}

/// Before a file resource writes runbook file `path`: keeps the file as it is now
/// (`now`: its bytes and mode, `None` when there is none), 0600 on the Services
/// machine, unless an earlier write of this cutover kept it already (that copy is what
/// CircleCI had before the cutover). Not a runbook file: nothing to keep.
pub(crate) async fn keep_original(
    data: &ProviderData,
    h: &ServicesHost,
    path: &str,
    now: Option<(&[u8], u32)>,
) -> Result<(), Diagnostics> {
    let Some((root, f)) = runbook_file(path) else {
        return Ok(());
    };
    let kept = kept_path(&root, f);
    let fail = |e| {
        ssh_diag(
            &format!("Could not keep the original of {path} in {kept}"),
            e,
        )
    };
    if h.read_file(&kept).await.map_err(fail)?.is_some() {
        return Ok(());
    }
    let app_modified = match app_status(data, h).await {
        Ok(st) => st.modified,
        Err(_) => String::new(),
    };
    let original = Original {
        app_modified,
        path: path.to_string(),
        existed: now.is_some(),
        mode: now.map_or(0o600, |(_, m)| m & 0o7777),
        content_base64: now.map_or_else(String::new, |(b, _)| {
            base64::engine::general_purpose::STANDARD.encode(b)
        }),
    };
    let json = serde_json::to_vec(&original).unwrap_or_default();
    write_private(h, &root, &kept, &json).await.map_err(fail)?;
    log::info!("kept the original of {path} before the cutover's first write of it");
    Ok(())
}

/// Writes `bytes` to `path`, a file of the cutover's under `root`, 0600, its directory
/// made 0700 first: what the cutover keeps can hold passwords.
pub(crate) async fn write_private(
    h: &ServicesHost,
    root: &str,
    path: &str,
    bytes: &[u8],
) -> Result<(), crate::backends::ssh::SshError> {
    h.private_dir(&format!("{}{DIR}", root.trim_end_matches('/')))
        .await?;
    h.write_file(path, bytes, 0o600).await
}

/// Whether a copy kept when the app's `LastModifiedAt` was `kept` is out of date:
/// CircleCI was started or stopped outside the cutover since (`reference` is the value
/// the cutover last left it with; the record lists the cutover's own values). An
/// unknown value (Replicated did not answer) counts as current.
fn out_of_date(reference: &str, record: Option<&Record>, kept: &str) -> bool {
    let epochs: Vec<&str> = match record {
        Some(r) if !r.app_modified.is_empty() => {
            r.app_modified.iter().map(String::as_str).collect()
        }
        _ => vec![reference],
    };
    let current = reference.is_empty() || epochs.contains(&reference);
    let known = kept.is_empty() || kept == reference || epochs.contains(&kept);
    !(current && known)
}

/// The plan's warning on a resource that will stop a running CircleCI; `then` says
/// what follows the stop.
pub(crate) fn stop_warning(
    builds: &Result<Vec<String>, String>,
    s: &StopSettings,
    then: &str,
) -> Diagnostic {
    let now = match builds {
        Err(e) => format!(
            "The running builds could not be read now ({e}); the apply reads them again, and waits for them, \
             before the stop."
        ),
        Ok(b) if b.is_empty() => "No build runs on the Nomad servers CircleCI uses now.".to_string(),
        Ok(b) => format!(
            "{} build(s) run now on the Nomad servers CircleCI uses:\n{}\nThe apply waits up to {} \
             (builds_timeout) for them to finish before the stop.",
            b.len(),
            b.join("\n"),
            humantime::format_duration(s.builds_timeout)
        ),
    };
    Diagnostic::warning(
        "This apply stops CircleCI",
        format!(
            "CircleCI is running and will be stopped (replicatedctl app stop), then {then}; no build can run \
             until it is started again. {now}"
        ),
    )
}

/// The cutover's view of one Services machine.
pub(crate) struct Cutover<'a> {
    data: &'a ProviderData,
    s: &'a StopSettings,
    /// One change of the migration's record at a time (imports run in parallel).
    lock: tokio::sync::Mutex<()>,
}

impl<'a> Cutover<'a> {
    pub(crate) fn new(data: &'a ProviderData, s: &'a StopSettings) -> Self {
        Cutover {
            data,
            s,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.s.root.trim_end_matches('/'))
    }

    /// The bytes of `rel` under the root on the Services machine, if it is there.
    async fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, Diagnostics> {
        let h = self.data.services()?;
        let path = self.path(rel);
        h.read_file(&path)
            .await
            .map(|f| f.map(|f| f.content))
            .map_err(|e| ssh_diag(&format!("Could not read {path}"), e))
    }

    /// The external Nomad the Services machine's file names, if any.
    async fn file_endpoint(&self) -> Result<Option<String>, Diagnostics> {
        let path = self.path(files::NOMAD);
        let Some(content) = self.read(files::NOMAD).await? else {
            return Ok(None);
        };
        crate::circleci::nomad::parse(&String::from_utf8_lossy(&content))
            .map(Some)
            .map_err(|e| {
                Diagnostic::error(
                    "A config file on the Services machine does not parse",
                    format!("{path}: {e}. Nothing was stopped."),
                )
                .into()
            })
    }

    /// The CAs the Services machine trusts (its Debian bundle), when it has one.
    pub(crate) async fn services_ca(&self) -> Option<Vec<u8>> {
        let h = self.data.services().ok()?;
        h.read_file(&self.path(SERVICES_CA_BUNDLE))
            .await
            .ok()
            .flatten()
            .map(|f| f.content)
    }

    /// Asks one Nomad server, through the Services machine, as CircleCI reaches it.
    async fn ask(&self, endpoint: &str, ca: Option<&[u8]>, with_allocs: bool) -> Seen {
        let answer = async {
            let route =
                Route::Tunnel(self.data.services().map_err(|_| NomadError::NoServices {
                    endpoint: endpoint.to_string(),
                })?);
            let ca = ca.map(|pem| nb::Ca::Pem {
                label: SERVICES_CA_LABEL,
                pem,
            });
            let t = self.data.timeout();
            let nodes = nb::nodes(&route, endpoint, ca, None, t).await?;
            let allocs = if with_allocs {
                nb::allocations(&route, endpoint, ca, None, t).await?
            } else {
                Vec::new()
            };
            Ok((nodes, allocs))
        }
        .await;
        Seen {
            endpoint: endpoint.to_string(),
            in_use: false,
            answer,
        }
    }

    /// The Nomad the running CircleCI uses: what the nomad file said when this cutover
    /// first changed it (its kept copy), else what it says now; no file: the embedded
    /// one. (CircleCI reads the file only when it starts.)
    async fn in_use(&self, now: Option<&String>) -> Result<String, Diagnostics> {
        let h = self.data.services()?;
        let kept = kept_path(&self.s.root, files::NOMAD);
        let original = h
            .read_file(&kept)
            .await
            .map_err(|e| ssh_diag(&format!("Could not read {kept}"), e))?
            .and_then(|k| serde_json::from_slice::<Original>(&k.content).ok());
        let text = match original {
            Some(o) if !o.existed => None,
            Some(o) => base64::engine::general_purpose::STANDARD
                .decode(o.content_base64.as_bytes())
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            None => {
                return Ok(now
                    .cloned()
                    .unwrap_or_else(|| self.s.embedded_nomad.clone()))
            }
        };
        Ok(text
            .and_then(|t| crate::circleci::nomad::parse(&t).ok())
            .unwrap_or_else(|| self.s.embedded_nomad.clone()))
    }

    /// Every Nomad server CircleCI may schedule on around this stop: the one the running
    /// CircleCI uses (which must answer), the one the nomad file names for its next
    /// start (which must answer too), and the embedded one besides (a warning when it
    /// does not answer: the running CircleCI does not use it).
    async fn look(&self) -> Result<Vec<Seen>, Diagnostics> {
        let file = self.file_endpoint().await?;
        let in_use = self.in_use(file.as_ref()).await?;
        let ca = self.services_ca().await;
        let mut endpoints = vec![in_use.clone()];
        for e in [file.clone(), Some(self.s.embedded_nomad.clone())]
            .into_iter()
            .flatten()
        {
            if !endpoints.contains(&e) {
                endpoints.push(e);
            }
        }
        let mut seen = Vec::new();
        for e in endpoints {
            let mut s = self.ask(&e, ca.as_deref(), true).await;
            s.in_use = e == in_use;
            if let Err(err) = &s.answer {
                let embedded = e == self.s.embedded_nomad;
                if s.in_use && embedded {
                    return Err(Diagnostic::error(
                        "CircleCI's embedded Nomad did not answer",
                        format!(
                            "{}. The running CircleCI schedules builds on its embedded Nomad server (there \
                             was no /{} when it started); its running builds and clients are read before \
                             CircleCI stops. Is embedded_nomad_endpoint where that server's HTTP API answers on \
                             the Services machine? Nothing was stopped.",
                            chain(err),
                            files::NOMAD
                        ),
                    )
                    .at(AttrPath::root("embedded_nomad_endpoint"))
                    .into());
                }
                if !embedded {
                    return Err(Diagnostic::error(
                        "Nomad did not answer before the stop",
                        format!(
                            "{}. {} Nothing was stopped.",
                            chain(err),
                            if s.in_use {
                                "The running CircleCI schedules builds on this Nomad."
                            } else {
                                "The nomad file names this Nomad, which CircleCI uses from its next start."
                            }
                        ),
                    )
                    .into());
                }
            }
            seen.push(s);
        }
        Ok(seen)
    }

    /// The builds running now, for the plan's warning; why they cannot be read.
    pub(crate) async fn running_builds(&self) -> Result<Vec<String>, String> {
        match self.look().await {
            Ok(seen) => Ok(running(&seen)),
            Err(d) => Err(d
                .0
                .iter()
                .map(|x| format!("{}: {}", x.summary, x.detail))
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    /// Before CircleCI is stopped: waits (within `builds_timeout`) until no build runs
    /// on the Nomad servers it may use, then records what those servers show, unless
    /// a record from an earlier stop of this cutover is open (it describes CircleCI as
    /// it was). Warnings (builds cut off with `0s`) go into `diags`.
    pub(crate) async fn before_stop(&self, diags: &mut Diagnostics) -> Result<Record, Diagnostics> {
        let seen = self.let_builds_finish(diags).await?;
        if let Some(open) = self.load_unless_going_back().await? {
            log::info!(
                "cutover record from {} kept: {} Nomad client(s) before the first stop",
                open.taken_at,
                open.nomad_clients.len()
            );
            return Ok(open);
        }
        let record = Record {
            version: 1,
            taken_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            nomad_servers: seen
                .iter()
                .map(|s| match &s.answer {
                    Ok((n, _)) => format!("{}: {} client(s)", s.endpoint, n.len()),
                    Err(e) => format!("{}: no answer ({})", s.endpoint, chain(e)),
                })
                .collect(),
            nomad_clients: schedulable(&seen),
            app_modified: match self.data.services() {
                Ok(h) => vec![app_status(self.data, &h).await?.modified],
                Err(d) => return Err(d),
            },
            observed: None,
            moved_groups: Vec::new(),
            moved_static: Vec::new(),
            way_back: false,
        };
        self.save(&record).await?;
        Ok(record)
    }

    /// Waits (within `builds_timeout`) until no build runs on the Nomad servers
    /// CircleCI may use; what they showed last. An error names the builds still
    /// running; nothing was changed then.
    pub(crate) async fn let_builds_finish(
        &self,
        diags: &mut Diagnostics,
    ) -> Result<Vec<Seen>, Diagnostics> {
        let started = Instant::now();
        let within = self.s.builds_timeout;
        let mut last = Vec::new();
        let seen = loop {
            let seen = self.look().await?;
            let now = running(&seen);
            if now.is_empty() {
                break seen;
            }
            if within.is_zero() {
                diags.push(
                    Diagnostic::warning(
                        "Running builds cut off",
                        format!(
                            "builds_timeout = \"0s\": CircleCI is stopped without waiting for these builds:\n{}",
                            now.join("\n")
                        ),
                    )
                    .at(AttrPath::root("builds_timeout")),
                );
                break seen;
            }
            if started.elapsed() >= within {
                return Err(Diagnostic::error(
                    "Builds still running",
                    format!(
                        "after waiting {} for the running builds to finish, {} still run{}:\n{}\nCircleCI was \
                         not stopped and nothing was changed. Let them finish (or cancel them) and run Terraform again, \
                         or raise builds_timeout.",
                        humantime::format_duration(within),
                        now.len(),
                        if now.len() == 1 { "s" } else { "" },
                        now.join("\n")
                    ),
                )
                .at(AttrPath::root("builds_timeout"))
                .into());
            }
            if now != last {
                log::info!(
                    "waiting for {} running build(s) before stopping CircleCI: {}",
                    now.len(),
                    now.join("; ")
                );
                last = now;
            }
            if stop::or_stop(tokio::time::sleep(BUILDS_POLL))
                .await
                .is_none()
            {
                return Err(Diagnostic::error(
                    "Stopped",
                    "Terraform asked the provider to stop while it waited for running builds; CircleCI was not \
                     stopped and nothing was changed.",
                )
                .into());
            }
        };
        for s in &seen {
            if let Err(e) = &s.answer {
                diags.push(Diagnostic::warning(
                    "CircleCI's embedded Nomad did not answer",
                    format!(
                        "{}. The running CircleCI uses the Nomad /{} names, which answered; builds on the \
                         embedded one, if any, were not waited for. Check embedded_nomad_endpoint.",
                        chain(e),
                        files::NOMAD
                    ),
                ));
            }
        }
        Ok(seen)
    }

    /// Once CircleCI is stopped by the cutover: the app's new `LastModifiedAt`
    /// (`modified`, from the status that showed it stopped) is the cutover's own, so
    /// that the copies kept after it stay current.
    pub(crate) async fn note_stop(&self, modified: &str) -> Result<(), Diagnostics> {
        let Some(mut r) = self.load().await? else {
            return Ok(());
        };
        if !r.app_modified.iter().any(|m| m == modified) {
            r.app_modified.push(modified.to_string());
            self.save(&r).await?;
        }
        Ok(())
    }

    /// Adds what the checks observed to the open record.
    pub(crate) async fn note_observed(
        &self,
        observed: std::collections::BTreeMap<String, String>,
    ) -> Result<Record, Diagnostics> {
        let mut r = self.load().await?.unwrap_or_default();
        r.observed = Some(observed);
        self.save(&r).await?;
        Ok(r)
    }

    /// The open record, if any, for a cutover: one the way back reopened is refused
    /// (a destroy going back did not finish; its record describes CircleCI before the
    /// first cutover, not as it runs now).
    pub(crate) async fn load_unless_going_back(&self) -> Result<Option<Record>, Diagnostics> {
        match self.load().await? {
            Some(r) if r.way_back => Err(Diagnostic::error(
                "CircleCI is being taken back to before its first cutover",
                format!(
                    "{} is the record the way back (terraform destroy with on_destroy = \"go_back\") reopened, and \
                     that destroy did not finish. Run terraform destroy again to finish it; to abandon it instead, \
                     remove that file and the kept originals beside it, then apply.",
                    self.path(RECORD)
                ),
            )
            .into()),
            r => Ok(r),
        }
    }

    /// The open record, if any.
    pub(crate) async fn load(&self) -> Result<Option<Record>, Diagnostics> {
        self.read_json(
            RECORD,
            "The cutover record on the Services machine does not parse",
            "It holds what CircleCI showed before the first stop; remove it only if no cutover is under way.",
        )
        .await
    }

    async fn save(&self, r: &Record) -> Result<(), Diagnostics> {
        self.write_json(RECORD, r, "the cutover record").await
    }

    /// The JSON file `rel` under the root, if it is there; `unreadable` is the error's
    /// summary, `holds` what the file is for.
    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        rel: &str,
        unreadable: &str,
        holds: &str,
    ) -> Result<Option<T>, Diagnostics> {
        let path = self.path(rel);
        let Some(content) = self.read(rel).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&content).map(Some).map_err(|e| {
            Diagnostic::error(unreadable, format!("{path}: {}. {holds}", parse_error(&e))).into()
        })
    }

    /// Writes `value` as JSON to `rel` under the root, 0600; `what` names it.
    async fn write_json<T: Serialize>(
        &self,
        rel: &str,
        value: &T,
        what: &str,
    ) -> Result<(), Diagnostics> {
        let h = self.data.services()?;
        let path = self.path(rel);
        let json = serde_json::to_vec_pretty(value).unwrap_or_default();
        write_private(&h, &self.s.root, &path, &json)
            .await
            .map_err(|e| ssh_diag(&format!("Could not write {what} {path}"), e))
    }

    /// Removes `rel` under the root, if it is there; `what` names it.
    async fn remove(&self, rel: &str, what: &str) -> Result<(), Diagnostics> {
        let h = self.data.services()?;
        let path = self.path(rel);
        h.remove_file(&path)
            .await
            .map(|_| ())
            .map_err(|e| ssh_diag(&format!("Could not remove {what} {path}"), e))
    }

    /// The originals this cutover kept, by file.
    async fn originals(&self) -> Result<Vec<Original>, Diagnostics> {
        let h = self.data.services()?;
        let mut out = Vec::new();
        for f in files::ALL {
            let kept = kept_path(&self.s.root, f);
            let Some(k) = h
                .read_file(&kept)
                .await
                .map_err(|e| ssh_diag(&format!("Could not read {kept}"), e))?
            else {
                continue;
            };
            let o: Original = serde_json::from_slice(&k.content).map_err(|e| {
                Diagnostics::from(Diagnostic::error(
                    "A kept original on the Services machine does not parse",
                    format!(
                        "{kept}: {}. It holds a config file as it was before the cutover.",
                        parse_error(&e)
                    ),
                ))
            })?;
            out.push(o);
        }
        Ok(out)
    }

    /// Puts back every runbook file this cutover changed as it was before its first
    /// write: the same bytes and mode, or no file. `reference` is the app's
    /// `LastModifiedAt` as the cutover last left it: when it is not one the cutover has
    /// seen (someone started or stopped CircleCI since), or a copy was kept before such
    /// a change, CircleCI already runs on the files as they are, and those copies are
    /// out of date: not put back. The paths put back, and those left.
    pub(crate) async fn restore(
        &self,
        reference: &str,
        record: Option<&Record>,
    ) -> Result<(Vec<String>, Vec<String>), Diagnostics> {
        let h = self.data.services()?;
        let mut done = Vec::new();
        let mut stale = Vec::new();
        for o in self.originals().await? {
            if out_of_date(reference, record, &o.app_modified) {
                stale.push(o.path.clone());
                continue;
            }
            let path = o.path.clone();
            let fail = |e| ssh_diag(&format!("Could not put back {path}"), e);
            if o.existed {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(o.content_base64.as_bytes())
                    .map_err(|e| {
                        Diagnostics::from(Diagnostic::error(
                            "A kept original on the Services machine does not parse",
                            format!("the copy of {path}: {e}"),
                        ))
                    })?;
                h.write_file(&path, &bytes, o.mode).await.map_err(fail)?;
                log::info!("put back {path} as it was before the cutover");
            } else {
                h.remove_file(&path).await.map_err(fail)?;
                log::info!("removed {path}: there was none before the cutover");
            }
            done.push(path);
        }
        Ok((done, stale))
    }

    /// The kept originals go (they are back in place, or the cutover is over).
    pub(crate) async fn drop_originals(&self) -> Result<(), Diagnostics> {
        let h = self.data.services()?;
        for f in files::ALL {
            let kept = kept_path(&self.s.root, f);
            h.remove_file(&kept)
                .await
                .map_err(|e| ssh_diag(&format!("Could not remove {kept}"), e))?;
        }
        Ok(())
    }

    /// Ends the cutover, its start verified: the kept originals, the record and the
    /// migration's targets go (those are CircleCI's data now).
    pub(crate) async fn forget(&self) -> Result<(), Diagnostics> {
        self.drop_originals().await?;
        self.close().await?;
        self.drop_written().await
    }

    /// Ends a cutover undone by a fallback: the kept originals and the record go; the
    /// migration's targets stay listed, so that the retry restores over them.
    pub(crate) async fn fell_back(&self) -> Result<(), Diagnostics> {
        self.note_fell_back().await?;
        self.drop_originals().await?;
        self.close().await
    }

    /// After a client group was switched while the cutover has CircleCI stopped: the
    /// group and what it used before, unless already listed (the first switch of this
    /// cutover saw what CircleCI ran with). False when no cutover is open.
    pub(crate) async fn note_moved_group(&self, g: MovedGroup) -> Result<bool, Diagnostics> {
        let _one = Self::moved_lock().lock().await;
        let Some(mut r) = self.load().await? else {
            return Ok(false);
        };
        if !r.moved_groups.iter().any(|m| m.group == g.group) {
            log::info!("cutover record: Auto Scaling group {} switched", g.group);
            r.moved_groups.push(g);
            self.save(&r).await?;
        }
        Ok(true)
    }

    /// One change of the record's moved clients at a time, across every resource of the
    /// apply (each has its own `Cutover`).
    fn moved_lock() -> &'static tokio::sync::Mutex<()> {
        static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        &LOCK
    }

    /// Before a static client fleet is rolled while the cutover has CircleCI stopped:
    /// its settings (`fleet`, keyed by its `id`), unless listed. False when no cutover
    /// is open.
    pub(crate) async fn note_moved_static(
        &self,
        fleet: serde_json::Value,
    ) -> Result<bool, Diagnostics> {
        let _one = Self::moved_lock().lock().await;
        let Some(mut r) = self.load().await? else {
            return Ok(false);
        };
        let key = |v: &serde_json::Value| v["client"].to_string();
        if !r.moved_static.iter().any(|m| key(m) == key(&fleet)) {
            r.moved_static.push(fleet);
            self.save(&r).await?;
        }
        Ok(true)
    }

    /// Once a fallback moved them back: no client is the cutover's to undo.
    pub(crate) async fn clear_moved_clients(&self) -> Result<(), Diagnostics> {
        let _one = Self::moved_lock().lock().await;
        if let Some(mut r) = self.load().await? {
            if !r.moved_groups.is_empty() || !r.moved_static.is_empty() {
                r.moved_groups.clear();
                r.moved_static.clear();
                self.save(&r).await?;
            }
        }
        Ok(())
    }

    /// Whether CircleCI is stopped inside an open cutover (the record is there): a
    /// failure now must fall back.
    pub(crate) async fn inside(&self) -> Result<bool, Diagnostics> {
        let h = self.data.services()?;
        let st = app_status(self.data, &h).await?;
        Ok(st.settled_in("stopped") && self.load_unless_going_back().await?.is_some())
    }

    /// Closes the record.
    async fn close(&self) -> Result<(), Diagnostics> {
        self.remove(RECORD, "the cutover record").await
    }

    /// Whether CircleCI runs now and, when it does, the Nomad it schedules builds on (see
    /// [`Cutover::in_use`]). A start or stop under way is an error: apply again once it
    /// settled.
    pub(crate) async fn running_on(&self) -> Result<Option<String>, Diagnostics> {
        let h = self.data.services()?;
        let st = app_status(self.data, &h).await?;
        if st.settled_in("stopped") {
            return Ok(None);
        }
        if !st.settled_in("started") {
            return Err(Diagnostic::error(
                "CircleCI is starting or stopping",
                format!(
                    "Replicated reports the app {} (desired: {}){}. Nomad clients are moved only while CircleCI \
                     is stopped, or while it runs on the servers they move to. Nothing was changed; apply again \
                     once it has settled.",
                    st.state,
                    st.desired,
                    if st.transitioning { ", in transition" } else { "" }
                ),
            )
            .into());
        }
        let file = self.file_endpoint().await?;
        Ok(Some(self.in_use(file.as_ref()).await?))
    }

    /// The servers' RPC addresses of the Nomad at `endpoint`, asked through the
    /// Services machine as CircleCI reaches it.
    pub(crate) async fn peers(&self, endpoint: &str) -> Result<Vec<String>, NomadError> {
        let ca = self.services_ca().await;
        let route = Route::Tunnel(self.data.services().map_err(|_| NomadError::NoServices {
            endpoint: endpoint.to_string(),
        })?);
        let ca = ca.as_deref().map(|pem| nb::Ca::Pem {
            label: SERVICES_CA_LABEL,
            pem,
        });
        nb::peers(&route, endpoint, ca, None, self.data.timeout()).await
    }

    /// Before clients are pointed at `servers` (`at` names the attribute): nothing when
    /// CircleCI is stopped; when it runs, the Nomad it schedules on, provided `servers`
    /// are among that Nomad's servers; else the refusal (nothing was changed).
    pub(crate) async fn clients_may_move(
        &self,
        servers: &[String],
        at: AttrPath,
    ) -> Result<Option<String>, Diagnostics> {
        let Some(in_use) = self.running_on().await? else {
            return Ok(None);
        };
        let refused = |detail: String| -> Diagnostics {
            Diagnostic::error("Clients would leave the Nomad CircleCI uses", detail)
                .at(at.clone())
                .into()
        };
        let peers = self.peers(&in_use).await.map_err(|e| {
            refused(format!(
                "CircleCI runs and schedules its builds on the Nomad at {in_use}, whose servers could not be \
                 read ({}): whether {} are among them is not known. Nothing was changed.",
                chain(&e),
                servers.join(", ")
            ))
        })?;
        let outside = outside_peers(servers, &peers).await;
        if !outside.is_empty() {
            return Err(refused(not_among(&in_use, &peers, &outside)));
        }
        Ok(Some(in_use))
    }

    /// After a start: the capacity check against the Nomad CircleCI now uses
    /// (`endpoint`). The passed check's label, or the failure with its evidence.
    pub(crate) async fn check_capacity(
        &self,
        endpoint: &str,
        before: Option<&Record>,
    ) -> Result<String, Diagnostic> {
        let ca = self.services_ca().await;
        let seen = self.ask(endpoint, ca.as_deref(), false).await;
        let fail = |evidence: String| {
            Diagnostic::error(
                "CircleCI check failed: nomad",
                format!("the Nomad servers CircleCI uses after the start fall short. Evidence:\n{evidence}"),
            )
        };
        match seen.answer {
            Ok((nodes, _)) => capacity(endpoint, &nodes, before).map_err(fail),
            Err(e) => Err(fail(chain(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_that_does_not_parse_is_its_default() {
        assert_eq!(duration_or("90s", "30m"), Duration::from_secs(90));
        assert_eq!(duration_or("soon", "30m"), Duration::from_secs(1800));
        assert_eq!(duration_or("", "never"), Duration::from_secs(60));
    }

    fn node(id: &str, status: &str, drain: bool, elig: &str) -> Node {
        Node {
            id: id.into(),
            name: format!("client-{id}"),
            address: String::new(),
            status: status.into(),
            modify_index: 1,
            drain,
            eligibility: elig.into(),
        }
    }

    fn record(n: usize) -> Record {
        Record {
            version: 1,
            nomad_clients: (0..n).map(|i| format!("c{i}")).collect(),
            ..Record::default()
        }
    }

    #[test]
    fn capacity_counts_only_clients_that_can_take_builds() {
        let now = vec![
            node("a", "ready", false, ""),
            node("b", "ready", false, "eligible"),
            node("c", "ready", true, ""),
            node("d", "ready", false, "ineligible"),
            node("e", "initializing", false, ""),
            node("f", "down", false, ""),
        ];
        assert!(capacity("http://n:4646", &now, Some(&record(2))).is_ok());
        let e = capacity("http://n:4646", &now, Some(&record(3))).unwrap_err();
        assert!(
            e.starts_with("2 ready, eligible clients at http://n:4646, fewer than 3"),
            "{e}"
        );
        assert!(e.contains("client-c (c): ready, draining"), "{e}");
        assert!(e.contains("client-d (d): ready, ineligible"), "{e}");
    }

    #[test]
    fn runbook_files_are_known_under_any_root() {
        assert_eq!(
            runbook_file("/etc/circleconfig/shared/redis"),
            Some(("/".to_string(), files::REDIS))
        );
        assert_eq!(
            runbook_file("/tmp/x/etc/circle-installation-customizations"),
            Some(("/tmp/x".to_string(), files::MONGO))
        );
        assert_eq!(runbook_file("/tmp/xetc/circleconfig/shared/redis"), None);
        assert_eq!(runbook_file("/etc/circleconfig/shared/redis.bak"), None);
        assert_eq!(
            kept_path("/tmp/x/", files::NOMAD),
            "/tmp/x/data/circle/external-services-cutover/kept/etc_circleconfig_shared_nomad.json"
        );
    }

    #[test]
    fn copies_from_before_an_outside_start_are_out_of_date() {
        let r = Record {
            app_modified: vec!["t0".into(), "t1".into()],
            ..Record::default()
        };
        // Kept while running (t0) or once the cutover stopped it (t1): current.
        assert!(!out_of_date("t1", Some(&r), "t0"));
        assert!(!out_of_date("t1", Some(&r), "t1"));
        // Started by hand since (t3): nothing is current any more.
        assert!(out_of_date("t3", Some(&r), "t0"));
        // Kept before a change the cutover did not make.
        assert!(out_of_date("t1", Some(&r), "t-1"));
        // No record (never stopped): current only while nothing changed.
        assert!(!out_of_date("t0", None, "t0"));
        assert!(out_of_date("t2", None, "t0"));
        assert!(!out_of_date("t2", None, ""));
    }

    #[tokio::test]
    async fn servers_are_compared_with_the_peers_as_written_or_resolved() {
        let peers = vec!["10.0.1.150:4647".to_string(), "127.0.0.1:4647".to_string()];
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(
            outside_peers(&s(&["10.0.1.150:4647", "10.0.1.150"]), &peers)
                .await
                .is_empty()
        );
        assert!(outside_peers(&s(&["localhost:4647"]), &peers)
            .await
            .is_empty());
        assert_eq!(
            outside_peers(&s(&["10.0.1.151:4647", "127.0.0.1:4648"]), &peers).await,
            s(&["10.0.1.151:4647", "127.0.0.1:4648"])
        );
        assert_eq!(
            outside_peers(&s(&["nomad-1.invalid:4647"]), &peers).await,
            s(&["nomad-1.invalid:4647"])
        );
    }

    #[test]
    fn capacity_wants_at_least_one_client() {
        assert!(capacity("e", &[], Some(&record(0))).is_err());
        assert!(capacity("e", &[], None)
            .unwrap_err()
            .contains("no client at all"));
        assert!(capacity("e", &[node("a", "ready", false, "")], None).is_ok());
    }

    #[test]
    fn running_builds_name_job_and_client() {
        let nodes = vec![node("0123456789", "ready", false, "")];
        let a = |st: &str| Allocation {
            id: "alloc-1".into(),
            name: "build-42.build[0]".into(),
            job_id: "build-42".into(),
            node_id: "0123456789".into(),
            client_status: st.into(),
        };
        let seen = vec![Seen {
            endpoint: "http://e".into(),
            in_use: true,
            answer: Ok((nodes, vec![a("running"), a("complete"), a("pending")])),
        }];
        let r = running(&seen);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            "build-42.build[0] (job build-42, running on client client-0123456789) at http://e"
        );
    }

    #[test]
    fn the_server_in_use_stands_for_before() {
        let seen = vec![
            Seen {
                endpoint: "embedded".into(),
                in_use: false,
                answer: Ok((
                    vec![node("a", "ready", false, ""), node("b", "ready", false, "")],
                    vec![],
                )),
            },
            Seen {
                endpoint: "external".into(),
                in_use: true,
                answer: Ok((
                    vec![node("c", "ready", false, ""), node("d", "down", false, "")],
                    vec![],
                )),
            },
        ];
        assert_eq!(schedulable(&seen), vec!["client-c (c)"]);
    }
}
