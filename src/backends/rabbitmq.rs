//! RabbitMQ: the runbook only needs CircleCI to be able to log in, so we log in (AMQP
//! 0-9-1 with lapin) with the same credentials and close again.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPScheme, AMQPUri, AMQPUserInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqErrorKind {
    /// The broker refused the credentials or the vhost.
    Refused,
    /// Nothing answered, or the connection broke before login.
    Unreachable,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqError {
    pub kind: MqErrorKind,
    pub message: String,
}

impl fmt::Display for MqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MqError {}

/// Where and as whom to log in. Debug hides the password.
pub struct Login<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    pub vhost: &'a str,
    pub tls: bool,
    pub ca_file: Option<&'a Path>,
    pub timeout: Duration,
}

impl fmt::Debug for Login<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("vhost", &self.vhost)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Login<'_> {
    fn target(&self) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.to_string()
        };
        format!(
            "{scheme}://{}@{host}:{} (vhost {:?})",
            self.user, self.port, self.vhost
        )
    }
}

fn classify(e: &lapin::Error) -> MqErrorKind {
    let text = e.to_string().to_ascii_lowercase();
    match e.kind() {
        lapin::ErrorKind::ProtocolError(_)
            if text.contains("access") || text.contains("refused") =>
        {
            MqErrorKind::Refused
        }
        lapin::ErrorKind::ProtocolError(_) => MqErrorKind::Other,
        lapin::ErrorKind::IOError(_) if text.contains("refused") && !text.contains("access") => {
            MqErrorKind::Unreachable
        }
        lapin::ErrorKind::IOError(_) => MqErrorKind::Unreachable,
        _ if text.contains("access_refused") || text.contains("access refused") => {
            MqErrorKind::Refused
        }
        _ => MqErrorKind::Other,
    }
}

/// Logs in and closes; Ok when the broker accepted the credentials for the vhost.
pub async fn login(l: &Login<'_>) -> Result<(), MqError> {
    let target = l.target();
    let uri = AMQPUri {
        scheme: if l.tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: l.user.to_string(),
                password: l.password.to_string(),
            },
            host: l.host.to_string(),
            port: l.port,
        },
        vhost: l.vhost.to_string(),
        query: Default::default(),
    };
    let cert_chain = match l.ca_file {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| MqError {
            kind: MqErrorKind::Other,
            message: format!("tls_ca_file {}: {e}", p.display()),
        })?),
        None => None,
    };
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain,
    };
    let runtime = lapin::runtime::default_runtime().map_err(|e| MqError {
        kind: MqErrorKind::Other,
        message: format!("AMQP runtime: {e}"),
    })?;
    let connect = lapin::Connection::connect_uri_with_config(
        uri,
        lapin::ConnectionProperties::default(),
        tls,
        runtime,
    );
    let conn = match tokio::time::timeout(l.timeout, connect).await {
        Err(_) => {
            return Err(MqError {
                kind: MqErrorKind::Unreachable,
                message: format!(
                    "RabbitMQ at {target} did not answer within {}",
                    humantime::format_duration(l.timeout)
                ),
            })
        }
        Ok(Err(e)) => {
            let kind = classify(&e);
            let what = match kind {
                MqErrorKind::Refused => "refused the login",
                MqErrorKind::Unreachable => "is not reachable",
                MqErrorKind::Other => "failed",
            };
            return Err(MqError {
                kind,
                message: format!("RabbitMQ at {target} {what}: {e}"),
            });
        }
        Ok(Ok(c)) => c,
    };
    let _ = conn
        .close(200, "terraform-provider-circleci check done".into())
        .await;
    Ok(())
}
