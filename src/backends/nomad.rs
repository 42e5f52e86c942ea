//! Nomad's HTTP API: `GET /v1/status/leader` (the cluster has a leader, as CircleCI's
//! services will reach it), `GET /v1/nodes` (a restarted client is ready again; how
//! many clients can take builds) and `GET /v1/allocations` (the builds running).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{chain, find_in_chain};
use crate::backends::tunnel::Route;

/// Why the leader check failed; TLS failures are told apart by the rustls error in the
/// source chain, never by message text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NomadError {
    #[error("Nomad at {endpoint} has no cluster leader{}", if *.elections { ": the servers have not elected one (are enough of them up?)" } else { "" })]
    NoLeader { endpoint: String, elections: bool },
    #[error("Nomad at {endpoint} answered 403 Permission denied: {}", if *.with_token { "the ACL token was refused" } else { "ACLs are on and no ACL token was given" })]
    PermissionDenied { endpoint: String, with_token: bool },
    #[error("Nomad at {endpoint} is not reachable")]
    Tls {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Nomad at {endpoint} is not reachable")]
    Unreachable {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("CA certificate file {}: {detail}", path.display())]
    CaFile { path: PathBuf, detail: String },
    #[error("Nomad at {endpoint} gave no answer within {}", humantime::format_duration(*.after))]
    Timeout { endpoint: String, after: Duration },
    #[error("Nomad at {endpoint} answered HTTP {status}: {body}")]
    Http {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("Nomad at {endpoint} answered {body:?}, which is not what its API documents")]
    BadAnswer { endpoint: String, body: String },
    #[error("HTTP client")]
    Client(#[source] reqwest::Error),
    /// The way through the Services machine failed (the message names the hop).
    #[error("Nomad at {endpoint} is not reachable")]
    Tunnel {
        endpoint: String,
        #[source]
        source: crate::backends::tunnel::DialError,
    },
    /// Nomad is reached through the Services machine, and none is configured.
    #[error("Nomad at {endpoint} is reached through the Services machine, and the provider's services_host settings are missing or not usable")]
    NoServices { endpoint: String },
    #[error("Nomad endpoint {endpoint:?} is not a URL")]
    BadEndpoint {
        endpoint: String,
        #[source]
        source: url::ParseError,
    },
}

/// CA certificates trusted besides the system's.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ca<'a> {
    /// A PEM file where Terraform runs.
    File(&'a Path),
    /// PEM text, e.g. the Services machine's own bundle; `label` names it in errors.
    Pem { label: &'a str, pem: &'a [u8] },
}

impl<'a> Ca<'a> {
    /// A file, when there is one.
    pub(crate) fn file(p: Option<&'a Path>) -> Option<Ca<'a>> {
        p.map(Ca::File)
    }
}

/// One GET of the Nomad HTTP API `path` (`/v1/...`): the status and the body.
async fn get(
    route: &Route,
    endpoint: &str,
    path: &str,
    ca: Option<Ca<'_>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), NomadError> {
    request(route, endpoint, path, None, ca, token, timeout).await
}

/// One request of the Nomad HTTP API `path` (`/v1/...`): a GET, or a POST of `body`
/// (JSON); the status and the body. Through the Services machine when `route` says so;
/// `ca` added to the system's CAs.
async fn request(
    route: &Route,
    endpoint: &str,
    path: &str,
    body: Option<String>,
    ca: Option<Ca<'_>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), NomadError> {
    super::install_crypto_provider();
    let endpoint_s = endpoint.to_string();
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout);
    if route.is_tunnel() {
        let tunnel = |source| NomadError::Tunnel {
            endpoint: endpoint_s.clone(),
            source,
        };
        let (host, port) = crate::backends::tunnel::url_host_port(endpoint).map_err(|source| {
            NomadError::BadEndpoint {
                endpoint: endpoint_s.clone(),
                source,
            }
        })?;
        let port = port.unwrap_or(4646);
        if let Some(p) = route
            .proxy_for(&host, port, timeout)
            .await
            .map_err(tunnel)?
        {
            let proxy = reqwest::Proxy::all(p.expose()).map_err(NomadError::Client)?;
            b = b.proxy(proxy);
        }
    }
    if let Some(c) = ca {
        let (path, pem) = match c {
            Ca::File(p) => {
                let pem = std::fs::read(p).map_err(|e| NomadError::CaFile {
                    path: p.to_path_buf(),
                    detail: e.to_string(),
                })?;
                (p.to_path_buf(), pem)
            }
            Ca::Pem { label, pem } => (PathBuf::from(label), pem.to_vec()),
        };
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| NomadError::CaFile {
                path,
                detail: chain(&e),
            })?;
        b = b.tls_certs_merge(certs);
    }
    let client = b.build().map_err(NomadError::Client)?;
    let url = format!("{}{path}", endpoint.trim_end_matches('/'));
    let mut req = match body {
        Some(b) => client
            .post(&url)
            .header("Content-Type", "application/json")
            .body(b),
        None => client.get(&url),
    };
    if let Some(t) = token {
        req = req.header("X-Nomad-Token", t);
    }
    let resp = req.send().await.map_err(|e| {
        let endpoint = endpoint_s.clone();
        if find_in_chain::<rustls::Error>(&e).is_some() {
            NomadError::Tls {
                endpoint,
                source: e,
            }
        } else if e.is_timeout() {
            NomadError::Timeout {
                endpoint,
                after: timeout,
            }
        } else {
            NomadError::Unreachable {
                endpoint,
                source: e,
            }
        }
    })?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    match status {
        403 => Err(NomadError::PermissionDenied {
            endpoint: endpoint_s,
            with_token: token.is_some(),
        }),
        _ => Ok((status, body)),
    }
}

/// The leader's address as Nomad reports it (`"10.0.0.1:4647"`).
pub(crate) async fn leader(
    route: &Route,
    endpoint: &str,
    ca: Option<Ca<'_>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<String, NomadError> {
    let (status, body) = get(route, endpoint, "/v1/status/leader", ca, token, timeout).await?;
    let endpoint = endpoint.to_string();
    match status {
        200 => match serde_json::from_str::<String>(&body) {
            Ok(l) if l.is_empty() => Err(NomadError::NoLeader {
                endpoint,
                elections: false,
            }),
            Ok(l) => Ok(l),
            Err(_) => Err(NomadError::BadAnswer { endpoint, body }),
        },
        500 if body.contains("No cluster leader") => Err(NomadError::NoLeader {
            endpoint,
            elections: true,
        }),
        _ => Err(NomadError::Http {
            endpoint,
            status,
            body: body.trim().to_string(),
        }),
    }
}

/// A client node as `GET /v1/nodes` lists it (the fields the provider reads).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Address", default)]
    pub address: String,
    /// `initializing`, `ready` or `down`.
    #[serde(rename = "Status")]
    pub status: String,
    /// Raft index of the node's last change: a client that registers again (after a
    /// restart) gets a higher one.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
    /// Draining: no new allocation is placed on it.
    #[serde(rename = "Drain", default)]
    pub drain: bool,
    /// `eligible` or `ineligible` (Nomad 0.8 and later; 0.5.6 does not list it).
    #[serde(rename = "SchedulingEligibility", default)]
    pub eligibility: String,
}

impl Node {
    /// Ready, not draining and, where Nomad says, eligible: it can take a build.
    pub(crate) fn schedulable(&self) -> bool {
        self.status == "ready" && !self.drain && self.eligibility != "ineligible"
    }
}

/// The client nodes the Nomad servers know (`GET /v1/nodes`).
pub(crate) async fn nodes(
    route: &Route,
    endpoint: &str,
    ca: Option<Ca<'_>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Vec<Node>, NomadError> {
    json(route, endpoint, "/v1/nodes", ca, token, timeout).await
}

/// One JSON answer of the API (a list, or one object).
async fn json<T: for<'de> serde::Deserialize<'de>>(
    route: &Route,
    endpoint: &str,
    path: &str,
    ca: Option<Ca<'_>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<T, NomadError> {
    let (status, body) = get(route, endpoint, path, ca, token, timeout).await?;
    let endpoint = endpoint.to_string();
    match status {
        200 => serde_json::from_str(&body).map_err(|_| NomadError::BadAnswer {
            endpoint,
            body: body.chars().take(200).collect(),
        }),
        _ => Err(NomadError::Http {
            endpoint,
            status,
            body: body.trim().chars().take(500).collect(),
        }),
    }
}

/// An allocation as `GET /v1/allocations` lists it (the fields the provider reads):
/// for CircleCI, one build (a job, or one of its parallel runs).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct Allocation {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "JobID", default)]
    pub job_id: String,
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    /// `pending`, `running`, `complete`, `failed` or `lost`.
    #[serde(rename = "ClientStatus", default)]
    pub client_status: String,
}

impl Allocation {
    /// Placed and not finished: a build that stopping CircleCI or its client would cut off.
    pub(crate) fn active(&self) -> bool {
        matches!(self.client_status.as_str(), "pending" | "running")
    }
}

/// Every allocation the Nomad servers know (`GET /v1/allocations`).
pub(crate) async fn allocations(
    route: &Route,
    endpoint: &str,
    ca: Option<Ca<'_>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Vec<Allocation>, NomadError> {
    json(route, endpoint, "/v1/allocations", ca, token, timeout).await
}

/// The servers' RPC addresses (`GET /v1/status/peers`, `["10.0.0.1:4647", ...]`): the
/// members of the cluster that answers.
pub(crate) async fn peers(
    route: &Route,
    endpoint: &str,
    ca: Option<Ca<'_>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Vec<String>, NomadError> {
    json(route, endpoint, "/v1/status/peers", ca, token, timeout).await
}

/// The version of the Nomad agent that answers (`GET /v1/agent/self`): its
/// `config.Version`, a string up to 0.6, an object with a `Version` string from 0.7 on.
pub(crate) async fn version(
    route: &Route,
    endpoint: &str,
    ca: Option<Ca<'_>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<String, NomadError> {
    let (status, body) = get(route, endpoint, "/v1/agent/self", ca, token, timeout).await?;
    let endpoint = endpoint.to_string();
    if status != 200 {
        return Err(NomadError::Http {
            endpoint,
            status,
            body: body.trim().chars().take(500).collect(),
        });
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|_| NomadError::BadAnswer {
        endpoint: endpoint.clone(),
        body: body.chars().take(200).collect(),
    })?;
    let version = &v["config"]["Version"];
    version
        .as_str()
        .or_else(|| version["Version"].as_str())
        .map(str::to_string)
        .ok_or(NomadError::BadAnswer {
            endpoint,
            body: body.chars().take(200).collect(),
        })
}

/// How a Nomad server drains a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DrainApi {
    /// Before 0.8: `POST /v1/node/:id/drain?enable=true|false`. Enabling stops the
    /// node's running allocations at once (they are migrated).
    Toggle,
    /// 0.8 and later: a `DrainSpec` with a deadline (batch allocations may run until
    /// it), and scheduling eligibility apart (`POST /v1/node/:id/eligibility`).
    Spec,
}

impl DrainApi {
    /// The API of a server of `version` (`0.5.6`, `0.8.7`, `1.4.2+ent`, ...).
    pub(crate) fn of(version: &str) -> Result<DrainApi, String> {
        let mut parts = version
            .trim_start_matches('v')
            .split(|c: char| !c.is_ascii_digit())
            .map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(0)), Some(Ok(minor))) if minor < 8 => Ok(DrainApi::Toggle),
            (Some(Ok(_)), Some(Ok(_))) => Ok(DrainApi::Spec),
            _ => Err(format!("{version:?} is not a Nomad version")),
        }
    }
}

/// A node ID as Nomad gives it (a UUID), before it goes into a path; an empty `tail`
/// is the node itself.
fn node_path(id: &str, tail: &str) -> Result<String, String> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(format!("{id:?} is not a Nomad node ID"));
    }
    Ok(match tail {
        "" => format!("/v1/node/{id}"),
        _ => format!("/v1/node/{id}/{tail}"),
    })
}

/// One node as `GET /v1/node/:id` reads it (the fields the provider reads).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct NodeDetail {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    /// What the client fingerprinted: `kernel.name`, `unique.platform.aws.instance-id`, ...
    #[serde(rename = "Attributes", default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// The attributes in which a client on EC2 reports its instance ID: Nomad's AWS
/// fingerprinter writes `unique.platform.aws.instance-id` (before 0.5, without the
/// `unique.` prefix).
pub(crate) const AWS_INSTANCE_ID_ATTRS: [&str; 2] = [
    "unique.platform.aws.instance-id",
    "platform.aws.instance-id",
];

impl NodeDetail {
    /// The EC2 instance the client runs on, when its AWS fingerprint says.
    pub(crate) fn aws_instance_id(&self) -> Option<&str> {
        AWS_INSTANCE_ID_ATTRS
            .iter()
            .find_map(|k| self.attributes.get(*k))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// One node with its attributes (`GET /v1/node/:id`); None when the servers do not
/// know it (404: garbage-collected since it was listed).
pub(crate) async fn node(
    route: &Route,
    endpoint: &str,
    id: &str,
    ca: Option<Ca<'_>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Option<NodeDetail>, NomadError> {
    let path = node_path(id, "").map_err(|body| NomadError::BadAnswer {
        endpoint: endpoint.to_string(),
        body,
    })?;
    match json(route, endpoint, &path, ca, token, timeout).await {
        Ok(d) => Ok(Some(d)),
        Err(NomadError::Http { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The allocations placed on one node (`GET /v1/node/:id/allocations`).
pub(crate) async fn node_allocations(
    route: &Route,
    endpoint: &str,
    node: &str,
    ca: Option<Ca<'_>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Vec<Allocation>, NomadError> {
    let path = node_path(node, "allocations").map_err(|body| NomadError::BadAnswer {
        endpoint: endpoint.to_string(),
        body,
    })?;
    json(route, endpoint, &path, ca, token, timeout).await
}

/// What to do with a node's drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drain {
    /// Enable it; with [`DrainApi::Spec`], allocations get until the deadline.
    Enable { deadline: Duration },
    /// Disable it and make the node eligible for new allocations again.
    Disable,
}

/// The request bodies and paths for `drain` on `api`, in order.
pub(crate) fn drain_requests(
    api: DrainApi,
    node: &str,
    drain: Drain,
) -> Result<Vec<(String, String)>, String> {
    Ok(match (api, drain) {
        (DrainApi::Toggle, Drain::Enable { .. }) => {
            vec![(node_path(node, "drain?enable=true")?, String::new())]
        }
        (DrainApi::Toggle, Drain::Disable) => {
            vec![(node_path(node, "drain?enable=false")?, String::new())]
        }
        (DrainApi::Spec, Drain::Enable { deadline }) => vec![(
            node_path(node, "drain")?,
            serde_json::json!({
                "DrainSpec": {"Deadline": u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX), "IgnoreSystemJobs": false},
                "MarkEligible": false,
            })
            .to_string(),
        )],
        (DrainApi::Spec, Drain::Disable) => vec![
            (
                node_path(node, "drain")?,
                serde_json::json!({"DrainSpec": null, "MarkEligible": true}).to_string(),
            ),
            (
                node_path(node, "eligibility")?,
                serde_json::json!({"Eligibility": "eligible"}).to_string(),
            ),
        ],
    })
}

/// Enables or disables one node's drain on the servers at `endpoint`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn drain(
    route: &Route,
    endpoint: &str,
    api: DrainApi,
    node: &str,
    drain: Drain,
    ca: Option<Ca<'_>>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(), NomadError> {
    let requests = drain_requests(api, node, drain).map_err(|body| NomadError::BadAnswer {
        endpoint: endpoint.to_string(),
        body,
    })?;
    for (path, body) in requests {
        let (status, answer) =
            request(route, endpoint, &path, Some(body), ca, token, timeout).await?;
        if status != 200 {
            return Err(NomadError::Http {
                endpoint: endpoint.to_string(),
                status,
                body: answer.trim().chars().take(500).collect(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_api_follows_the_version() {
        assert_eq!(DrainApi::of("0.5.6"), Ok(DrainApi::Toggle));
        assert_eq!(DrainApi::of("0.7.1"), Ok(DrainApi::Toggle));
        assert_eq!(DrainApi::of("0.8.0"), Ok(DrainApi::Spec));
        assert_eq!(DrainApi::of("1.4.2+ent"), Ok(DrainApi::Spec));
        assert!(DrainApi::of("dev").is_err());
    }

    #[test]
    fn a_node_says_its_ec2_instance_in_either_spelling() {
        // As GET /v1/node/:id answers (trimmed): 0.5's AWS fingerprint.
        let n: NodeDetail = serde_json::from_str(
            r#"{"ID":"fb2170a8-257d-3c64-b14d-bc06cc94e34c","Name":"ip-10-0-3-7","HTTPAddr":"10.0.3.7:4646",
                "Attributes":{"kernel.name":"linux","unique.platform.aws.instance-id":"i-0abc"},"Drain":false}"#,
        )
        .unwrap();
        assert_eq!(n.aws_instance_id(), Some("i-0abc"));
        let old: NodeDetail = serde_json::from_str(
            r#"{"ID":"x","Name":"n","Attributes":{"platform.aws.instance-id":"i-1\n"}}"#,
        )
        .unwrap();
        assert_eq!(old.aws_instance_id(), Some("i-1"));
        let none: NodeDetail = serde_json::from_str(r#"{"ID":"x","Name":"n"}"#).unwrap();
        assert_eq!(none.aws_instance_id(), None);
        assert_eq!(
            node_path("fb2170a8-257d-3c64-b14d-bc06cc94e34c", "").unwrap(),
            "/v1/node/fb2170a8-257d-3c64-b14d-bc06cc94e34c"
        );
    }

    #[test]
    fn drain_requests_match_each_api() {
        let id = "fb2170a8-257d-3c64-b14d-bc06cc94e34c";
        let on = Drain::Enable {
            deadline: Duration::from_secs(60),
        };
        assert_eq!(
            drain_requests(DrainApi::Toggle, id, on).unwrap(),
            [(format!("/v1/node/{id}/drain?enable=true"), String::new())]
        );
        let spec = drain_requests(DrainApi::Spec, id, on).unwrap();
        assert_eq!(spec[0].0, format!("/v1/node/{id}/drain"));
        let body: serde_json::Value = serde_json::from_str(&spec[0].1).unwrap();
        assert_eq!(body["DrainSpec"]["Deadline"], 60_000_000_000u64);
        assert_eq!(body["MarkEligible"], false);
        let off = drain_requests(DrainApi::Spec, id, Drain::Disable).unwrap();
        assert_eq!(off[1].0, format!("/v1/node/{id}/eligibility"));
        assert!(off[1].1.contains("\"eligible\""));
        assert!(drain_requests(DrainApi::Toggle, "../../v1/jobs", on).is_err());
    }
}
