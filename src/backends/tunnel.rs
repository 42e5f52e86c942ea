//! How the provider reaches a backend: straight from where Terraform runs, or through
//! the Services machine (`via_services_host`), over an SSH `direct-tcpip` channel of the
//! one SSH connection every resource shares. Through the tunnel the host name is
//! resolved on the Services machine's side (sshd connects to it), so names that only
//! its network knows work; TLS runs end to end inside the channel and still verifies
//! the real server name. A channel is no SSH session: `MaxSessions` does not limit them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::backends::ssh::{ServicesHost, SshError};

/// A byte stream to a backend: a TCP connection or an SSH channel.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A stream being opened (see [`Route::dial`]).
pub type Dialing = Pin<Box<dyn Future<Output = Result<Box<dyn Io>, DialError>> + Send + 'static>>;

/// The route to the backends of one configuration block.
#[derive(Clone, Default)]
pub enum Route {
    /// A TCP connection from where Terraform runs.
    #[default]
    Direct,
    /// A `direct-tcpip` channel through the Services machine.
    Tunnel(Arc<ServicesHost>),
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Direct => f.write_str("Direct"),
            Route::Tunnel(h) => write!(f, "Tunnel({})", h.config().target()),
        }
    }
}

/// Which hop failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DialError {
    /// A direct TCP connection failed.
    #[error("connecting to {target}: {detail}")]
    Tcp { target: String, detail: String },
    /// The SSH connection to the Services machine itself failed.
    #[error("the SSH connection to the Services machine failed, so {target} could not be reached through it: {source}")]
    Ssh { target: String, source: SshError },
    /// sshd said no: `AllowTcpForwarding no`, or `PermitOpen` without this target.
    #[error("the Services machine ({services}) refused the tunnel to {target}: {reason} (its sshd_config's AllowTcpForwarding or PermitOpen forbids it)")]
    Refused {
        services: String,
        target: String,
        reason: String,
    },
    /// sshd tried and could not connect: the backend is down, or unknown or
    /// unreachable from the Services machine.
    #[error("the Services machine ({services}) could not connect to {target}: {reason}")]
    Unreachable {
        services: String,
        target: String,
        reason: String,
    },
    /// No answer within the deadline.
    #[error("connecting to {target}{via}: no answer within {}", humantime::format_duration(*.after))]
    Timeout {
        target: String,
        via: String,
        after: Duration,
    },
}

/// `host:port`, with brackets around an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Route {
    pub fn is_tunnel(&self) -> bool {
        matches!(self, Route::Tunnel(_))
    }

    /// " through the Services machine user@host:port", or nothing.
    pub fn via(&self) -> String {
        match self {
            Route::Direct => String::new(),
            Route::Tunnel(h) => format!(" through the Services machine {}", h.config().target()),
        }
    }

    /// Opens a stream to `host:port` within `timeout`. The future owns what it needs
    /// and is boxed as `Send`: a future borrowing the host name across SSH's awaits is
    /// not `Send` for every lifetime, which callers that spawn it need.
    pub fn dial(&self, host: &str, port: u16, timeout: Duration) -> Dialing {
        let route = self.clone();
        let host = host.to_string();
        Box::pin(async move {
            let target = host_port(&host, port);
            let open = async {
                match &route {
                    Route::Direct => {
                        let tcp = TcpStream::connect(target.clone()).await.map_err(|e| {
                            DialError::Tcp {
                                target: target.clone(),
                                detail: e.to_string(),
                            }
                        })?;
                        let _ = tcp.set_nodelay(true);
                        Ok(Box::new(tcp) as Box<dyn Io>)
                    }
                    Route::Tunnel(h) => h.open_tunnel(&host, port).await.map(|s| {
                        log::debug!("tunnel to {target} through {}", h.config().target());
                        Box::new(s) as Box<dyn Io>
                    }),
                }
            };
            match tokio::time::timeout(timeout, open).await {
                Ok(r) => r,
                Err(_) => Err(DialError::Timeout {
                    target: target.clone(),
                    via: route.via(),
                    after: timeout,
                }),
            }
        })
    }
}
