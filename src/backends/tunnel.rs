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
pub(crate) type Dialing =
    Pin<Box<dyn Future<Output = Result<Box<dyn Io>, DialError>> + Send + 'static>>;

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
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// A direct TCP connection failed.
    #[error("connecting to {target}")]
    Tcp {
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// The local SOCKS5 end of the tunnel, for clients that only take a proxy, could
    /// not start.
    #[error("the local end of the tunnel through the Services machine could not start: {reason}")]
    Proxy { reason: String },
    /// The SSH connection to the Services machine itself failed.
    /// The SSH error is the source: [`super::chain`] prints it after this message.
    #[error("the SSH connection to the Services machine failed, so {target} could not be reached through it")]
    Ssh {
        target: String,
        #[source]
        source: SshError,
    },
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
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host (without IPv6 brackets) and port (the scheme's default if none) of a URL.
pub(crate) fn url_host_port(url: &str) -> Result<(String, Option<u16>), url::ParseError> {
    let u = reqwest::Url::parse(url)?;
    let host = u.host_str().unwrap_or_default().trim_matches(['[', ']']);
    Ok((host.to_string(), u.port_or_known_default()))
}

impl Route {
    pub fn is_tunnel(&self) -> bool {
        matches!(self, Route::Tunnel(_))
    }

    /// For a client that only takes a proxy: first a channel to `host:port` opened and
    /// closed (so that a failure names its hop), then the proxy URL; `None` direct.
    pub async fn proxy_for(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Option<crate::secret::Secret>, DialError> {
        let Route::Tunnel(h) = self else {
            return Ok(None);
        };
        drop(self.dial(host, port, timeout).await?);
        h.socks_proxy()
            .map(Some)
            .map_err(|reason| DialError::Proxy { reason })
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
                                source: e,
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

/// A SOCKS5 endpoint on 127.0.0.1 whose CONNECTs become `direct-tcpip` channels
/// through the Services machine: how clients that only take a proxy (reqwest, for
/// Vault and Nomad) use the tunnel. `socks5h`: the name travels to the Services
/// machine unresolved. A random username and password (RFC 1929), made per process,
/// keep other local users out (compared in constant time). Each client is served in its
/// own task and has [`HANDSHAKE_DEADLINE`] to finish its handshake; a failed `accept`
/// is retried after a back-off and never ends the bridge.
pub struct SocksBridge {
    addr: std::net::SocketAddr,
    user: String,
    pass: crate::secret::Secret,
    /// The last failure per target, for the error of the client that asked.
    failures: Failures,
    /// The accept loop, ended when the bridge goes.
    accepting: tokio::task::AbortHandle,
}

impl Drop for SocksBridge {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

type Failures = Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<DialError>>>>;

/// Opens the stream a client's CONNECT asks for (a `direct-tcpip` channel).
type Connector = Arc<dyn Fn(String, u16) -> Dialing + Send + Sync>;

/// How long a client of the bridge has for its greeting, authentication and CONNECT
/// request. The bridge's clients are this process's own (reqwest, lapin), which send
/// all three at once; one that has not finished in this time never will, and its
/// connection is closed so that it holds no task or file descriptor.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Where incoming connections come from: the bridge's listener (a trait so that a
/// test can make `accept` fail).
trait Accept: Send + 'static {
    fn accept(&mut self) -> impl Future<Output = std::io::Result<TcpStream>> + Send;
}

impl Accept for tokio::net::TcpListener {
    async fn accept(&mut self) -> std::io::Result<TcpStream> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

/// The first pause after a failed `accept`; it doubles with each failure in a row.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause between two `accept`s that fail.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts clients, each served in its own task, for as long as the bridge lives. A
/// failed `accept` (too many open files, a connection reset before it was taken) is
/// logged and tried again after a pause: the bridge's address stays handed out, so it
/// must keep answering.
async fn accept_loop(
    mut listener: impl Accept,
    addr: std::net::SocketAddr,
    connector: Connector,
    creds: Arc<(String, crate::secret::Secret)>,
    failures: Failures,
    deadline: Duration,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let tcp = match listener.accept().await {
            Ok(tcp) => {
                backoff = ACCEPT_BACKOFF_MIN;
                tcp
            }
            Err(e) => {
                log::warn!(
                    "the tunnel's SOCKS5 end on {addr} could not accept a connection: {e}; trying again in {}",
                    humantime::format_duration(backoff)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let (connector, creds, failures) = (connector.clone(), creds.clone(), failures.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(
                tcp,
                &connector,
                &creds.0,
                creds.1.expose(),
                deadline,
                &failures,
            )
            .await
            {
                log::debug!("tunnel proxy: {e}");
            }
        });
    }
}

impl fmt::Debug for SocksBridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SocksBridge({})", self.addr)
    }
}

fn random_hex(n: usize) -> Result<String, String> {
    let mut b = vec![0u8; n];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut b)
        .map_err(|_| "no random numbers".to_string())?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl SocksBridge {
    /// Listens on a free loopback port; each accepted connection is served in its own
    /// task. Must run inside the Tokio runtime.
    pub fn start(host: Arc<ServicesHost>) -> Result<SocksBridge, String> {
        let connector: Connector = Arc::new(move |name: String, port: u16| -> Dialing {
            let host = host.clone();
            Box::pin(async move {
                host.open_tunnel(&name, port)
                    .await
                    .map(|s| Box::new(s) as Box<dyn Io>)
            })
        });
        Self::start_with(connector, HANDSHAKE_DEADLINE)
    }

    /// [`Self::start`] with the channel opener and the handshake deadline given.
    fn start_with(connector: Connector, deadline: Duration) -> Result<SocksBridge, String> {
        let local = |e: std::io::Error| format!("the local end of the tunnel: {e}");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(local)?;
        std_listener.set_nonblocking(true).map_err(local)?;
        let addr = std_listener.local_addr().map_err(local)?;
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(local)?;
        Self::start_on(listener, addr, connector, deadline)
    }

    /// [`Self::start_with`] on a listener already bound to `addr`.
    fn start_on(
        listener: impl Accept,
        addr: std::net::SocketAddr,
        connector: Connector,
        deadline: Duration,
    ) -> Result<SocksBridge, String> {
        let user = random_hex(8)?;
        let pass = crate::secret::Secret::new(random_hex(16)?);
        let failures: Failures = Arc::default();
        let creds = Arc::new((user.clone(), pass.clone()));
        let accepting = tokio::spawn(accept_loop(
            listener,
            addr,
            connector,
            creds,
            failures.clone(),
            deadline,
        ));
        Ok(SocksBridge {
            addr,
            user,
            pass,
            failures,
            accepting: accepting.abort_handle(),
        })
    }

    /// Why the last tunnel to `target` failed, if it did.
    pub fn failure(&self, target: &str) -> Option<Arc<DialError>> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .cloned()
    }

    /// A TCP connection to `host:port` through this bridge: the client side of SOCKS5
    /// (RFC 1928/1929), for a client that connects its own socket but takes no proxy
    /// (lapin). The failure, if the tunnel failed, names its hop.
    pub async fn connect(&self, host: &str, port: u16) -> std::io::Result<TcpStream> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let fail = |what: &str| match self.failure(&host_port(host, port)) {
            Some(why) => std::io::Error::other(why),
            None => std::io::Error::other(what.to_string()),
        };
        let name = u8::try_from(host.len()).map_err(|_| fail("a host name over 255 bytes"))?;
        let mut tcp = TcpStream::connect(self.addr).await?;
        let _ = tcp.set_nodelay(true);
        tcp.write_all(&[5, 1, 2]).await?;
        let mut reply = [0u8; 2];
        tcp.read_exact(&mut reply).await?;
        if reply != [5, 2] {
            return Err(fail(
                "the tunnel's SOCKS5 end refused the authentication method",
            ));
        }
        let (user, pass) = (self.user.as_bytes(), self.pass.expose().as_bytes());
        let too_long = || fail("a SOCKS5 user or password over 255 bytes");
        let mut auth = vec![1, u8::try_from(user.len()).map_err(|_| too_long())?];
        auth.extend_from_slice(user);
        auth.push(u8::try_from(pass.len()).map_err(|_| too_long())?);
        auth.extend_from_slice(pass);
        tcp.write_all(&auth).await?;
        tcp.read_exact(&mut reply).await?;
        if reply[1] != 0 {
            return Err(fail("the tunnel's SOCKS5 end refused the credentials"));
        }
        let mut req = vec![5, 1, 0, 3, name];
        req.extend_from_slice(host.as_bytes());
        req.extend_from_slice(&port.to_be_bytes());
        tcp.write_all(&req).await?;
        let mut head = [0u8; 10];
        tcp.read_exact(&mut head).await?;
        if head[1] != 0 {
            return Err(fail("the tunnel failed"));
        }
        Ok(tcp)
    }

    /// The proxy URL for reqwest (it holds the per-process password: never log it).
    pub fn proxy_url(&self) -> crate::secret::Secret {
        crate::secret::Secret::new(format!(
            "socks5h://{}:{}@{}",
            self.user,
            self.pass.expose(),
            self.addr
        ))
    }
}

/// RFC 1929's version byte and both fields against the bridge's credentials, in
/// constant time: both fields are always compared, and neither comparison stops at
/// the first differing byte. (A length that differs is refused at once; the lengths
/// are the same for every process and no secret.)
fn credentials_match(
    version: u8,
    user: &[u8],
    pass: &[u8],
    want_user: &str,
    want_pass: &str,
) -> bool {
    use aws_lc_rs::constant_time::verify_slices_are_equal;
    let user_ok = verify_slices_are_equal(user, want_user.as_bytes()).is_ok();
    let pass_ok = verify_slices_are_equal(pass, want_pass.as_bytes()).is_ok();
    (version == 1) & user_ok & pass_ok
}

/// One SOCKS5 client: greeting, username/password and CONNECT request within
/// `deadline` (else the connection is closed), then the channel, then bytes both ways.
async fn serve(
    mut tcp: TcpStream,
    connector: &Connector,
    user: &str,
    pass: &str,
    deadline: Duration,
    failures: &Failures,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let io = |e: std::io::Error| e.to_string();
    let (target, port) = match tokio::time::timeout(deadline, handshake(&mut tcp, user, pass)).await
    {
        Ok(r) => r?,
        Err(_) => {
            return Err(format!(
                "a client that did not finish the SOCKS5 handshake within {} was disconnected",
                humantime::format_duration(deadline)
            ))
        }
    };
    let at = host_port(&target, port);
    let record = |why: Option<Arc<DialError>>| {
        let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
        match why {
            Some(w) => f.insert(at.clone(), w),
            None => f.remove(&at),
        };
    };
    match connector(target.clone(), port).await {
        Ok(mut ch) => {
            record(None);
            tcp.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
                .await
                .map_err(io)?;
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut ch).await;
            Ok(())
        }
        Err(e) => {
            let code = match e {
                DialError::Refused { .. } => 2,
                DialError::Unreachable { .. } => 5,
                _ => 1,
            };
            // Recorded before the client hears of it: it asks why at once.
            let why = super::chain(&e);
            record(Some(Arc::new(e)));
            let _ = tcp.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await;
            Err(why)
        }
    }
}

/// The client's side of the handshake, up to its CONNECT request: the target it asks
/// for.
async fn handshake(tcp: &mut TcpStream, user: &str, pass: &str) -> Result<(String, u16), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |e: std::io::Error| e.to_string();
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await.map_err(io)?;
    let mut methods = vec![0u8; usize::from(head[1])];
    tcp.read_exact(&mut methods).await.map_err(io)?;
    if head[0] != 5 || !methods.contains(&2) {
        let _ = tcp.write_all(&[5, 0xff]).await;
        return Err("a client without username/password authentication".into());
    }
    tcp.write_all(&[5, 2]).await.map_err(io)?;
    let mut v = [0u8; 2];
    tcp.read_exact(&mut v).await.map_err(io)?;
    let mut u = vec![0u8; usize::from(v[1])];
    tcp.read_exact(&mut u).await.map_err(io)?;
    let mut plen = [0u8; 1];
    tcp.read_exact(&mut plen).await.map_err(io)?;
    let mut p = vec![0u8; usize::from(plen[0])];
    tcp.read_exact(&mut p).await.map_err(io)?;
    let ok = credentials_match(v[0], &u, &p, user, pass);
    tcp.write_all(&[1, if ok { 0 } else { 1 }])
        .await
        .map_err(io)?;
    if !ok {
        return Err("wrong credentials".into());
    }
    let mut req = [0u8; 4];
    tcp.read_exact(&mut req).await.map_err(io)?;
    let target = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            tcp.read_exact(&mut a).await.map_err(io)?;
            std::net::Ipv4Addr::from(a).to_string()
        }
        3 => {
            let mut n = [0u8; 1];
            tcp.read_exact(&mut n).await.map_err(io)?;
            let mut name = vec![0u8; usize::from(n[0])];
            tcp.read_exact(&mut name).await.map_err(io)?;
            String::from_utf8(name).map_err(|_| "a host name that is not UTF-8".to_string())?
        }
        4 => {
            let mut a = [0u8; 16];
            tcp.read_exact(&mut a).await.map_err(io)?;
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => return Err("an unknown address type".into()),
    };
    let mut port = [0u8; 2];
    tcp.read_exact(&mut port).await.map_err(io)?;
    let port = u16::from_be_bytes(port);
    if req[0] != 5 || req[1] != 1 {
        let _ = tcp.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]).await;
        return Err("only CONNECT is served".into());
    }
    Ok((target, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The SSH failure is the source of a dial error: the message says which hop, the
    /// chain adds the cause once.
    #[test]
    fn the_ssh_cause_is_the_source_and_is_printed_once() {
        let e = DialError::Ssh {
            target: "pg.internal:5432".into(),
            source: SshError::connect_by(
                "connecting to u@svc:22",
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"),
            ),
        };
        assert!(!e.to_string().contains("Connection refused"), "{e}");
        assert_eq!(
            crate::backends::chain(&e),
            "the SSH connection to the Services machine failed, so pg.internal:5432 could not be \
             reached through it: connecting to u@svc:22: Connection refused"
        );
    }

    /// A connector that opens a plain TCP connection (instead of an SSH channel).
    fn tcp_connector() -> Connector {
        Arc::new(|name: String, port: u16| -> Dialing {
            Box::pin(async move {
                let target = host_port(&name, port);
                TcpStream::connect(&target)
                    .await
                    .map(|s| Box::new(s) as Box<dyn Io>)
                    .map_err(|e| DialError::Tcp { target, source: e })
            })
        })
    }

    /// An echo server on loopback: the backend the bridge tunnels to.
    async fn echo_server() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        port
    }

    async fn echoes(bridge: &SocksBridge, port: u16) {
        let mut s = tokio::time::timeout(Duration::from_secs(2), bridge.connect("127.0.0.1", port))
            .await
            .expect("the handshake did not finish")
            .unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
            .await
            .expect("no echo")
            .unwrap();
        assert_eq!(&got, b"ping");
    }

    /// Reads until the bridge closes the connection.
    async fn closed_within(s: &mut TcpStream, within: Duration) {
        let mut buf = [0u8; 16];
        loop {
            match tokio::time::timeout(within, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("the bridge kept the connection open for {within:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_handshake_neither_blocks_others_nor_lives_past_its_deadline() {
        let port = echo_server().await;
        let deadline = Duration::from_millis(400);
        let bridge = SocksBridge::start_with(tcp_connector(), deadline).unwrap();
        // One client sends nothing, another half a greeting.
        let t0 = std::time::Instant::now();
        let mut silent = TcpStream::connect(bridge.addr).await.unwrap();
        let mut half = TcpStream::connect(bridge.addr).await.unwrap();
        half.write_all(&[5]).await.unwrap();
        // Others are served meanwhile.
        echoes(&bridge, port).await;
        echoes(&bridge, port).await;
        // The stalled ones are closed at the deadline, not before and not much after.
        closed_within(&mut silent, Duration::from_millis(1500)).await;
        closed_within(&mut half, Duration::from_millis(1500)).await;
        let waited = t0.elapsed();
        assert!(
            waited + Duration::from_millis(50) >= deadline,
            "closed after {waited:?}, before the deadline"
        );
        // And a client served before the deadline is not cut at it.
        let mut s = bridge.connect("127.0.0.1", port).await.unwrap();
        tokio::time::sleep(deadline + Duration::from_millis(200)).await;
        s.write_all(b"late").await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"late");
    }

    /// A listener whose first `accept`s fail as with too many open files.
    struct Flaky {
        inner: tokio::net::TcpListener,
        failures: usize,
    }

    impl Accept for Flaky {
        async fn accept(&mut self) -> std::io::Result<TcpStream> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(std::io::Error::from_raw_os_error(24));
            }
            tokio::net::TcpListener::accept(&self.inner)
                .await
                .map(|(s, _)| s)
        }
    }

    #[tokio::test]
    async fn accept_errors_do_not_end_the_bridge() {
        let port = echo_server().await;
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let flaky = Flaky { inner, failures: 5 };
        let bridge =
            SocksBridge::start_on(flaky, addr, tcp_connector(), HANDSHAKE_DEADLINE).unwrap();
        echoes(&bridge, port).await;
        echoes(&bridge, port).await;
    }

    /// The bridge's answer to a username/password sub-negotiation.
    async fn auth_reply(bridge: &SocksBridge, user: &[u8], pass: &[u8]) -> [u8; 2] {
        let mut s = TcpStream::connect(bridge.addr).await.unwrap();
        s.write_all(&[5, 1, 2]).await.unwrap();
        let mut r = [0u8; 2];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(r, [5, 2]);
        let mut auth = vec![1, user.len() as u8];
        auth.extend_from_slice(user);
        auth.push(pass.len() as u8);
        auth.extend_from_slice(pass);
        s.write_all(&auth).await.unwrap();
        s.read_exact(&mut r).await.unwrap();
        r
    }

    #[tokio::test]
    async fn wrong_credentials_are_refused() {
        let bridge = SocksBridge::start_with(tcp_connector(), HANDSHAKE_DEADLINE).unwrap();
        let user = bridge.user.clone().into_bytes();
        let pass = bridge.pass.expose().as_bytes().to_vec();
        assert_eq!(auth_reply(&bridge, &user, &pass).await, [1, 0]);
        // The same length, one byte off (last, then first).
        let mut p = pass.clone();
        let last = p.len() - 1;
        p[last] ^= 1;
        assert_eq!(auth_reply(&bridge, &user, &p).await, [1, 1]);
        let mut p = pass.clone();
        p[0] ^= 1;
        assert_eq!(auth_reply(&bridge, &user, &p).await, [1, 1]);
        // Another length: a prefix, and the password with a byte more.
        assert_eq!(auth_reply(&bridge, &user, &pass[..4]).await, [1, 1]);
        let mut p = pass.clone();
        p.push(b'0');
        assert_eq!(auth_reply(&bridge, &user, &p).await, [1, 1]);
        assert_eq!(auth_reply(&bridge, &user, b"").await, [1, 1]);
        // The right password with a wrong user.
        let mut u = user.clone();
        u[0] ^= 1;
        assert_eq!(auth_reply(&bridge, &u, &pass).await, [1, 1]);
    }

    #[test]
    fn credentials_compare_both_fields() {
        let ok = |u: &[u8], p: &[u8]| credentials_match(1, u, p, "user", "secret-pass");
        assert!(ok(b"user", b"secret-pass"));
        assert!(!ok(b"user", b"secret-pasS"));
        assert!(!ok(b"user", b"secret"));
        assert!(!ok(b"usex", b"secret-pass"));
        assert!(!ok(b"", b""));
        assert!(!credentials_match(
            2,
            b"user",
            b"secret-pass",
            "user",
            "secret-pass"
        ));
    }
}
