//! RabbitMQ: the runbook only needs CircleCI to be able to log in, so we log in (AMQP
//! 0-9-1 with lapin) with the same credentials and close again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};

use crate::backends::tunnel::Route;

/// Why a login failed. Classified by the AMQP reply code, never by message text.
#[derive(Debug, thiserror::Error)]
pub enum MqError {
    /// The broker refused the credentials (403 ACCESS_REFUSED) or the vhost (530
    /// NOT_ALLOWED).
    #[error("RabbitMQ at {target} refused the login: {source}")]
    Refused {
        target: String,
        #[source]
        source: lapin::Error,
    },
    /// Nothing answered, or the connection broke before login.
    #[error("RabbitMQ at {target} is not reachable: {source}")]
    Unreachable {
        target: String,
        #[source]
        source: lapin::Error,
    },
    /// The tunnel through the Services machine failed (the message names the hop).
    #[error("RabbitMQ at {target}: {detail}")]
    Tunnel { target: String, detail: String },
    #[error("RabbitMQ at {target} did not answer within {}", humantime::format_duration(*.after))]
    Timeout { target: String, after: Duration },
    #[error("CA certificate file {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("RabbitMQ at {target} failed: {source}")]
    Other {
        target: String,
        #[source]
        source: lapin::Error,
    },
}

impl MqError {
    /// The broker answered but said no.
    pub fn is_refused(&self) -> bool {
        matches!(self, MqError::Refused { .. })
    }

    /// Nothing (usable) answered.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            MqError::Unreachable { .. } | MqError::Timeout { .. } | MqError::Tunnel { .. }
        )
    }
}

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
    /// Straight, or through the Services machine.
    pub route: &'a Route,
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
            .field("route", &self.route)
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

/// ACCESS_REFUSED (403) and NOT_ALLOWED (530, e.g. an unknown vhost).
const REFUSED_CODES: [u16; 2] = [403, 530];

fn classify(target: String, e: lapin::Error) -> MqError {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) if REFUSED_CODES.contains(&p.get_id()) => {
            MqError::Refused { target, source: e }
        }
        lapin::ErrorKind::IOError(_) | lapin::ErrorKind::InvalidConnectionState(_) => {
            MqError::Unreachable { target, source: e }
        }
        _ => MqError::Other { target, source: e },
    }
}

/// Opens the AMQP connection: lapin's own TCP (and TLS) connect, or, through the
/// Services machine, a stream of the tunnel's SOCKS5 end with TLS on top to the real
/// server name (lapin takes no proxy, but lets the caller make its transport).
async fn connect(
    uri: AMQPUri,
    tls: lapin::tcp::OwnedTLSConfig,
    route: Route,
    host: String,
    port: u16,
) -> lapin::Result<lapin::Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    let props = lapin::ConnectionProperties::default();
    let Route::Tunnel(services) = route else {
        return lapin::Connection::connect_uri_with_config(uri, props, tls, runtime).await;
    };
    let is_tls = uri.scheme == AMQPScheme::AMQPS;
    let transport = async move |_: AMQPUri, _| {
        use async_compat::CompatExt;
        let bridge = services.socks_bridge().map_err(std::io::Error::other)?;
        let stream = lapin::AsyncTcpStream::Plain(bridge.connect(&host, port).await?.compat());
        Ok(if is_tls {
            stream.into_tls(&host, tls.as_ref()).await?
        } else {
            stream
        })
    };
    lapin::Connection::connector(uri, runtime, transport, props).await
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
        // PLAIN, stated rather than defaulted: what RabbitMQ 3.6 (CircleCI 2.17's) offers.
        query: AMQPQueryString {
            auth_mechanism: Some(SASLMechanism::Plain),
            ..Default::default()
        },
    };
    let cert_chain = match l.ca_file {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| MqError::CaFile {
            path: p.to_path_buf(),
            source: e,
        })?),
        None => None,
    };
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain,
    };
    if l.route.is_tunnel() {
        // One channel opened and closed first, so that a failure names its hop.
        l.route
            .proxy_for(l.host, l.port, l.timeout)
            .await
            .map_err(|detail| MqError::Tunnel {
                target: target.clone(),
                detail,
            })?;
    }
    let connect = connect(uri, tls, l.route.clone(), l.host.to_string(), l.port);
    let conn = match tokio::time::timeout(l.timeout, connect).await {
        Err(_) => {
            return Err(MqError::Timeout {
                target,
                after: l.timeout,
            })
        }
        Ok(Err(e)) => return Err(classify(target, e)),
        Ok(Ok(c)) => c,
    };
    // The login succeeded; a close that never completes (a frozen broker) is not
    // waited for past the same deadline.
    let close = conn.close(200, "terraform-provider-circleci check done".into());
    if tokio::time::timeout(l.timeout, close).await.is_err() {
        log::debug!("{target}: the AMQP close got no answer within the deadline");
    }
    Ok(())
}
