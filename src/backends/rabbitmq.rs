//! RabbitMQ: the runbook only needs CircleCI to be able to log in, so we log in (AMQP
//! 0-9-1 with lapin) with the same credentials and close again. The broker's version
//! (for the compatibility table) is read from its `Connection.Start`, before any login.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};

use crate::backends::tunnel::Route;

/// Why a login failed. Classified by the AMQP reply code, never by message text. A
/// library error is the source, not part of the message: [`crate::backends::chain`]
/// prints both.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MqError {
    /// The broker refused the credentials (403 ACCESS_REFUSED) or the vhost (530
    /// NOT_ALLOWED).
    #[error("RabbitMQ at {target} refused the login")]
    Refused {
        target: String,
        #[source]
        source: lapin::Error,
    },
    /// Nothing answered, or the connection broke before login.
    #[error("RabbitMQ at {target} is not reachable")]
    Unreachable {
        target: String,
        #[source]
        source: lapin::Error,
    },
    /// The tunnel through the Services machine failed (the message names the hop).
    #[error("RabbitMQ at {target}")]
    Tunnel {
        target: String,
        #[source]
        source: Box<crate::backends::tunnel::DialError>,
    },
    #[error("RabbitMQ at {target} did not answer within {}", humantime::format_duration(*.after))]
    Timeout { target: String, after: Duration },
    #[error("CA certificate file {}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The broker's `Connection.Start` did not arrive or did not parse.
    #[error("RabbitMQ at {target} did not announce itself: {detail}")]
    Start { target: String, detail: String },
    #[error("RabbitMQ at {target} failed")]
    Other {
        target: String,
        #[source]
        source: lapin::Error,
    },
}

impl MqError {
    /// The broker answered but said no.
    pub(crate) fn is_refused(&self) -> bool {
        matches!(self, MqError::Refused { .. })
    }

    /// Nothing (usable) answered.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            MqError::Unreachable { .. } | MqError::Timeout { .. } | MqError::Tunnel { .. }
        )
    }
}

/// Where and as whom to log in. Debug hides the password.
pub(crate) struct Login<'a> {
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

/// The TLS settings of a login: the CA file's certificates, if one is given.
fn owned_tls(ca_file: Option<&Path>) -> Result<lapin::tcp::OwnedTLSConfig, MqError> {
    let cert_chain = match ca_file {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| MqError::CaFile {
            path: p.to_path_buf(),
            source: e,
        })?),
        None => None,
    };
    Ok(lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain,
    })
}

/// The AMQP 0-9-1 protocol header a client opens with.
const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

/// The largest `Connection.Start` frame read: RabbitMQ's is under 1 KiB.
const MAX_START: usize = 64 * 1024;

/// The broker's version, as its `Connection.Start` announces it (server-properties
/// `version`; empty when it names none). Sends only the protocol header: no user name
/// or password. The connection is then dropped, which RabbitMQ logs as closed during
/// the handshake.
pub(crate) async fn server_version(l: &Login<'_>) -> Result<String, MqError> {
    use async_compat::CompatExt;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

    let target = l.target();
    let failed = |detail: String| MqError::Start {
        target: target.clone(),
        detail,
    };
    let work = async {
        let tcp = l
            .route
            .dial(l.host, l.port, l.timeout)
            .await
            .map_err(|e| MqError::Tunnel {
                target: target.clone(),
                source: Box::new(e),
            })?;
        let mut s: Box<dyn Stream> = if l.tls {
            let tls = owned_tls(l.ca_file)?;
            let plain = lapin::tcp::AsyncTcpStream::Plain(tcp.compat());
            let secured = plain
                .into_tls(l.host, tls.as_ref())
                .await
                .map_err(|e| failed(format!("TLS handshake: {e}")))?;
            Box::new(async_compat::Compat::new(secured))
        } else {
            Box::new(tcp)
        };
        s.write_all(PROTOCOL_HEADER)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut buf = Vec::new();
        loop {
            if let Some(v) = start_version(&buf).map_err(&failed)? {
                return Ok(v);
            }
            let mut chunk = [0u8; 4096];
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| failed(e.to_string()))?;
            if n == 0 {
                return Err(failed(
                    "the connection closed before Connection.Start".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(l.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(MqError::Timeout {
            target: target.clone(),
            after: l.timeout,
        }),
    }
}

/// The version in a `Connection.Start` frame at the start of `buf`: `None` while the
/// frame is incomplete; an error when it is something else (a broker speaking another
/// protocol answers with its own header).
fn start_version(buf: &[u8]) -> Result<Option<String>, String> {
    use lapin::protocol::{connection, AMQPClass};
    use lapin::types::AMQPValue;
    if buf.len() >= 4 && buf.starts_with(b"AMQP") {
        return Err(format!(
            "it answered with the protocol header {:?}",
            &buf[..buf.len().min(8)]
        ));
    }
    if buf.len() < 7 {
        return Ok(None);
    }
    if buf[0] != 1 {
        return Err(format!(
            "the first frame is of type {}, not a method",
            buf[0]
        ));
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size > MAX_START {
        return Err(format!("the first frame claims {size} bytes"));
    }
    if buf.len() < 7 + size + 1 {
        return Ok(None);
    }
    match lapin::protocol::parse_class(&buf[7..7 + size]) {
        Ok((_, AMQPClass::Connection(connection::AMQPMethod::Start(start)))) => {
            Ok(Some(match start.server_properties.inner().get("version") {
                Some(AMQPValue::LongString(v)) => v.to_string(),
                Some(AMQPValue::ShortString(v)) => v.to_string(),
                _ => String::new(),
            }))
        }
        Ok((_, other)) => Err(format!(
            "the first method is {other:?}, not Connection.Start"
        )),
        Err(e) => Err(format!("Connection.Start does not parse: {e}")),
    }
}

/// Logs in and closes; Ok when the broker accepted the credentials for the vhost.
pub(crate) async fn login(l: &Login<'_>) -> Result<(), MqError> {
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
    let tls = owned_tls(l.ca_file)?;
    if l.route.is_tunnel() {
        // One channel opened and closed first, so that a failure names its hop.
        l.route
            .proxy_for(l.host, l.port, l.timeout)
            .await
            .map_err(|e| MqError::Tunnel {
                target: target.clone(),
                source: Box::new(e),
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

#[cfg(test)]
mod tests {
    use super::start_version;

    /// The library's error is the source: the message names the file, the chain prints
    /// the cause once.
    #[test]
    fn the_cause_is_the_source_and_is_printed_once() {
        let e = super::MqError::CaFile {
            path: "/etc/ca.pem".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(e.to_string(), "CA certificate file /etc/ca.pem");
        let text = crate::backends::chain(&e);
        assert_eq!(text, "CA certificate file /etc/ca.pem: no such file");
    }

    /// A `Connection.Start` frame as RabbitMQ 3.6 sends it (server-properties with
    /// `product`, `version`, a nested `capabilities` table), built by hand from the
    /// AMQP 0-9-1 specification.
    fn start_frame(version: &str) -> Vec<u8> {
        fn short(s: &str) -> Vec<u8> {
            let mut v = vec![s.len() as u8];
            v.extend_from_slice(s.as_bytes());
            v
        }
        fn long(s: &str) -> Vec<u8> {
            let mut v = (s.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(s.as_bytes());
            v
        }
        let mut caps = short("publisher_confirms");
        caps.extend([b't', 1]);
        let mut table = short("capabilities");
        table.push(b'F');
        table.extend((caps.len() as u32).to_be_bytes());
        table.extend(caps);
        table.extend(short("product"));
        table.push(b'S');
        table.extend(long("RabbitMQ"));
        table.extend(short("version"));
        table.push(b'S');
        table.extend(long(version));
        let mut payload = vec![0, 10, 0, 10, 0, 9];
        payload.extend((table.len() as u32).to_be_bytes());
        payload.extend(table);
        payload.extend(long("AMQPLAIN PLAIN"));
        payload.extend(long("en_US"));
        let mut frame = vec![1, 0, 0];
        frame.extend((payload.len() as u32).to_be_bytes());
        frame.extend(payload);
        frame.push(0xCE);
        frame
    }

    #[test]
    fn the_version_is_read_from_connection_start() {
        let f = start_frame("3.6.16");
        assert_eq!(start_version(&f), Ok(Some("3.6.16".to_string())));
        // Arriving in pieces: not yet complete.
        assert_eq!(start_version(&f[..5]), Ok(None));
        assert_eq!(start_version(&f[..f.len() - 1]), Ok(None));
    }

    #[test]
    fn another_protocol_or_frame_is_an_error() {
        // A broker that does not speak 0-9-1 answers with the header it does speak.
        assert!(start_version(b"AMQP\x00\x00\x09\x00").is_err());
        assert!(start_version(&[8, 0, 0, 0, 0, 0, 0, 0xCE]).is_err());
        assert!(start_version(&[1, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
    }
}
