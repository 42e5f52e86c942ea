//! Nomad: `GET /v1/status/leader` over HTTP(S), as CircleCI's services will reach it.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::chain;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NomadErrorKind {
    NoLeader,
    PermissionDenied,
    Tls,
    Unreachable,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NomadError {
    pub kind: NomadErrorKind,
    pub message: String,
}

impl fmt::Display for NomadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NomadError {}

/// The leader's address as Nomad reports it (`"10.0.0.1:4647"`).
pub async fn leader(
    endpoint: &str,
    ca_file: Option<&Path>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<String, NomadError> {
    super::install_crypto_provider();
    let err = |kind, message: String| NomadError { kind, message };
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout);
    if let Some(p) = ca_file {
        let pem = std::fs::read(p).map_err(|e| {
            err(
                NomadErrorKind::Other,
                format!("ca_cert_file {}: {e}", p.display()),
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            err(
                NomadErrorKind::Other,
                format!("ca_cert_file {}: {e}", p.display()),
            )
        })?;
        b = b.tls_certs_merge(certs);
    }
    let client = b
        .build()
        .map_err(|e| err(NomadErrorKind::Other, format!("HTTP client: {}", chain(&e))))?;
    let url = format!("{}/v1/status/leader", endpoint.trim_end_matches('/'));
    let mut req = client.get(&url);
    if let Some(t) = token {
        req = req.header("X-Nomad-Token", t);
    }
    let resp = req.send().await.map_err(|e| {
        let m = chain(&e);
        let kind = if m.contains("certificate") || m.contains("tls") || m.contains("TLS") {
            NomadErrorKind::Tls
        } else {
            NomadErrorKind::Unreachable
        };
        let hint = if kind == NomadErrorKind::Tls {
            " (is ca_cert_file the CA that signed Nomad's certificate?)"
        } else {
            ""
        };
        err(
            kind,
            format!("Nomad at {endpoint} is not reachable: {m}{hint}"),
        )
    })?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    match status {
        200 => serde_json::from_str::<String>(&body)
            .map_err(|_| err(NomadErrorKind::Other, format!("Nomad at {endpoint} answered {body:?} to /v1/status/leader")))
            .and_then(|l| {
                if l.is_empty() {
                    Err(err(NomadErrorKind::NoLeader, format!("Nomad at {endpoint} has no cluster leader")))
                } else {
                    Ok(l)
                }
            }),
        403 => Err(err(
            NomadErrorKind::PermissionDenied,
            format!(
                "Nomad at {endpoint} answered 403 Permission denied: {}",
                if token.is_some() { "the ACL token was refused" } else { "ACLs are on; set acl_token_wo" }
            ),
        )),
        500 if body.contains("No cluster leader") => Err(err(
            NomadErrorKind::NoLeader,
            format!("Nomad at {endpoint} has no cluster leader: the servers have not elected one (are enough of them up?)"),
        )),
        _ => Err(err(NomadErrorKind::Other, format!("Nomad at {endpoint} answered HTTP {status}: {}", body.trim()))),
    }
}
