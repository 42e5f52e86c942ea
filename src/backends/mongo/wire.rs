//! One connection to one MongoDB server: TCP (and TLS), the `isMaster` handshake over
//! OP_QUERY (every server version answers it, so an old server is told apart from a
//! broken one), then commands over OP_MSG (MongoDB 3.6, wire version 6, and later),
//! and SCRAM authentication.

use std::sync::Arc;
use std::time::Duration;

use bson::{doc, spec::BinarySubtype, Binary, Bson, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::scram::Conversation;
use super::uri::Mechanism;

const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_MSG: i32 = 2013;
/// MongoDB 3.6: the first version with OP_MSG, and the oldest CircleCI 2.17 runs.
pub(super) const MIN_WIRE_VERSION: i32 = 6;
const MAX_MESSAGE: usize = 48_000_000;

pub(super) use crate::backends::tunnel::Io;
use crate::backends::tunnel::Route;

/// What can go wrong on one connection. Library errors are sources, printed after the
/// message by [`crate::backends::chain`].
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection (direct, or through the Services machine) could not be opened.
    #[error(transparent)]
    Dial(Box<crate::backends::tunnel::DialError>),
    /// The host is not a name a TLS certificate can hold.
    #[error("{host} is not a TLS server name")]
    Name {
        host: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The TLS handshake failed.
    #[error("TLS")]
    Tls(#[source] std::io::Error),
    /// Reading or writing failed; `step` says which.
    #[error("{step}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// No answer within the deadline.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Late(Duration),
    /// The connection was lost earlier and not opened again.
    #[error("no connection")]
    Closed,
    /// The server answered something that is not MongoDB's protocol.
    #[error("{0}")]
    Protocol(String),
    /// The server answered a command with `ok: 0`: its answer, not a cause.
    #[error("{message}{}", .code.map(|c| format!(" (code {c}, {code_name})")).unwrap_or_default())]
    Command {
        code: Option<i32>,
        code_name: String,
        message: String,
    },
}

/// TLS settings for a connection.
#[derive(Clone, Default)]
pub(super) struct TlsSettings {
    pub enabled: bool,
    pub ca_file: Option<std::path::PathBuf>,
    /// Exactly these PEM certificates (before `ca_file`), and where they came from.
    pub ca_pem: Option<(String, Vec<u8>)>,
    pub insecure: bool,
    /// Accept a certificate issued for another name (`tlsAllowInvalidHostnames`).
    pub any_name: bool,
}

/// Whose certificates a connection trusts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Trust<'a> {
    /// The connection string's `tlsCAFile`, else this file (the provider's), else the
    /// system's CAs where Terraform runs.
    Ca(Option<&'a std::path::PathBuf>),
    /// Exactly these PEM certificates, read from `origin` (the Services machine's CA
    /// store: what CircleCI there trusts).
    Pem { origin: &'a str, pem: &'a [u8] },
}

/// A connected, handshaken server.
pub(super) struct Conn {
    io: Box<dyn Io>,
    next_id: i32,
    /// The `isMaster` reply.
    pub hello: Document,
}

fn tls_config(t: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let chain = |roots: rustls::RootCertStore, origin: &str| {
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("{origin}: {e}"))
    };
    let verifier: Arc<dyn ServerCertVerifier> = if t.insecure {
        Arc::new(crate::backends::tls::NoCertCheck::new(provider.clone()))
    } else if let Some((origin, pem)) = &t.ca_pem {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pem) {
            let c = c.map_err(|e| format!("{origin}: {e}"))?;
            roots.add(c).map_err(|e| format!("{origin}: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("{origin} holds no CA certificate"));
        }
        chain(roots, origin)?
    } else if let Some(p) = &t.ca_file {
        let origin = format!("CA certificate file {}", p.display());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(p).map_err(|e| format!("{origin}: {e}"))? {
            let c = c.map_err(|e| format!("{origin}: {e}"))?;
            roots.add(c).map_err(|e| format!("{origin}: {e}"))?;
        }
        chain(roots, &origin)?
    } else {
        Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|e| format!("the system's CA certificates: {e}"))?,
        )
    };
    let verifier = if t.any_name && !t.insecure {
        Arc::new(crate::backends::tls::AnyName(verifier))
    } else {
        verifier
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The TLS client configuration, built once per connection string (the CA file is
/// read here, so a missing one is reported before any host is tried); `None` without
/// TLS.
pub(super) fn client_tls(t: &TlsSettings) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if t.enabled {
        tls_config(t).map(|c| Some(Arc::new(c)))
    } else {
        Ok(None)
    }
}

async fn open_io(
    route: &Route,
    host: &str,
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: std::time::Duration,
) -> Result<Box<dyn Io>, WireError> {
    let io = route
        .dial(host, port, timeout)
        .await
        .map_err(|e| WireError::Dial(Box::new(e)))?;
    let Some(cfg) = tls else {
        return Ok(io);
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|source| {
        WireError::Name {
            host: host.to_string(),
            source,
        }
    })?;
    let s = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, io)
        .await
        .map_err(WireError::Tls)?;
    Ok(Box::new(s))
}

fn reply_error(d: &Document) -> Option<WireError> {
    let ok = match d.get("ok") {
        Some(Bson::Double(x)) => *x == 1.0,
        Some(Bson::Int32(x)) => *x == 1,
        Some(Bson::Int64(x)) => *x == 1,
        Some(Bson::Boolean(b)) => *b,
        _ => false,
    };
    if ok {
        return None;
    }
    Some(WireError::Command {
        code: d.get_i32("code").ok(),
        code_name: d.get_str("codeName").unwrap_or_default().to_string(),
        message: d
            .get_str("errmsg")
            .unwrap_or("the server answered ok: 0")
            .to_string(),
    })
}

impl Conn {
    /// Connects to `host:port` and makes the `isMaster` handshake. `sasl_user` is
    /// `db.user`, to learn the mechanisms the server offers that user.
    pub(super) async fn open(
        route: &Route,
        (host, port): (&str, u16),
        tls: Option<&Arc<rustls::ClientConfig>>,
        sasl_user: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<Conn, WireError> {
        let io = open_io(route, host, port, tls, timeout).await?;
        let mut c = Conn {
            io,
            next_id: 1,
            hello: Document::new(),
        };
        let mut hello = doc! {
            "isMaster": 1,
            "client": {
                "driver": {"name": "terraform-provider-circleci", "version": env!("CARGO_PKG_VERSION")},
                "os": {"type": std::env::consts::OS},
            },
        };
        if let Some(u) = sasl_user {
            hello.insert("saslSupportedMechs", u);
        }
        let reply = c.query_command("admin", hello).await?;
        if let Some(e) = reply_error(&reply) {
            return Err(e);
        }
        c.hello = reply;
        Ok(c)
    }

    pub(super) fn max_wire_version(&self) -> i32 {
        self.hello.get_i32("maxWireVersion").unwrap_or(0)
    }

    pub(super) fn is_primary(&self) -> bool {
        self.hello.get_bool("ismaster").unwrap_or(false)
            || self.hello.get_bool("isWritablePrimary").unwrap_or(false)
    }

    /// The mechanism to use: the configured one, else SCRAM-SHA-256 when the server
    /// offers it for this user, else SCRAM-SHA-1 (all 3.6 has).
    pub(super) fn mechanism(&self, configured: Option<Mechanism>) -> Mechanism {
        if let Some(m) = configured {
            return m;
        }
        let offered = self
            .hello
            .get_array("saslSupportedMechs")
            .map(|a| a.iter().any(|m| m.as_str() == Some("SCRAM-SHA-256")))
            .unwrap_or(false);
        if offered {
            Mechanism::ScramSha256
        } else {
            Mechanism::ScramSha1
        }
    }

    fn header(&mut self, len: usize, op: i32) -> Result<Vec<u8>, WireError> {
        if len > MAX_MESSAGE {
            return Err(WireError::Protocol("message too large".into()));
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut h = Vec::with_capacity(16 + len);
        let total =
            i32::try_from(16 + len).map_err(|_| WireError::Protocol("message too large".into()))?;
        h.extend_from_slice(&total.to_le_bytes());
        h.extend_from_slice(&id.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&op.to_le_bytes());
        Ok(h)
    }

    async fn read_message(&mut self) -> Result<(i32, Vec<u8>), WireError> {
        let io_err = |source| WireError::Io {
            step: "reading the reply",
            source,
        };
        let mut header = [0u8; 16];
        self.io.read_exact(&mut header).await.map_err(io_err)?;
        let len = i32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let len = usize::try_from(len).unwrap_or(0);
        let op = i32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        if !(16..=MAX_MESSAGE).contains(&len) {
            return Err(WireError::Protocol(format!("a reply of {len} bytes")));
        }
        let mut body = vec![0u8; len - 16];
        self.io.read_exact(&mut body).await.map_err(io_err)?;
        Ok((op, body))
    }

    /// A command over OP_QUERY on `db.$cmd`: only for the handshake.
    async fn query_command(&mut self, db: &str, cmd: Document) -> Result<Document, WireError> {
        let mut body = Vec::new();
        body.extend_from_slice(&0i32.to_le_bytes());
        body.extend_from_slice(format!("{db}.$cmd").as_bytes());
        body.push(0);
        body.extend_from_slice(&0i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        cmd.to_writer(&mut body)
            .map_err(|e| WireError::Protocol(e.to_string()))?;
        let mut msg = self.header(body.len(), OP_QUERY)?;
        msg.extend_from_slice(&body);
        self.io
            .write_all(&msg)
            .await
            .map_err(|source| WireError::Io {
                step: "sending the handshake",
                source,
            })?;
        let (op, body) = self.read_message().await?;
        if op != OP_REPLY || body.len() < 20 {
            return Err(WireError::Protocol(format!(
                "the handshake reply is not OP_REPLY (opcode {op})"
            )));
        }
        Document::from_reader(&body[20..])
            .map_err(|e| WireError::Protocol(format!("the handshake reply: {e}")))
    }

    /// Runs `cmd` on database `db` over OP_MSG; `ok: 0` is an error.
    pub(super) async fn command(
        &mut self,
        db: &str,
        mut cmd: Document,
    ) -> Result<Document, WireError> {
        cmd.insert("$db", db);
        let mut body = Vec::new();
        body.extend_from_slice(&0u32.to_le_bytes());
        body.push(0);
        cmd.to_writer(&mut body)
            .map_err(|e| WireError::Protocol(e.to_string()))?;
        let mut msg = self.header(body.len(), OP_MSG)?;
        msg.extend_from_slice(&body);
        self.io
            .write_all(&msg)
            .await
            .map_err(|source| WireError::Io {
                step: "sending a command",
                source,
            })?;
        let (op, body) = self.read_message().await?;
        if op != OP_MSG || body.len() < 5 || body[4] != 0 {
            return Err(WireError::Protocol(format!(
                "the reply is not a one-document OP_MSG (opcode {op})"
            )));
        }
        let reply = Document::from_reader(&body[5..])
            .map_err(|e| WireError::Protocol(format!("the reply: {e}")))?;
        match reply_error(&reply) {
            Some(e) => Err(e),
            None => Ok(reply),
        }
    }

    /// SCRAM authentication as `user` against `source`.
    pub(super) async fn authenticate(
        &mut self,
        source: &str,
        user: &str,
        password: &str,
        mechanism: Mechanism,
    ) -> Result<(), WireError> {
        let proto = |m: String| WireError::Command {
            code: Some(18),
            code_name: "AuthenticationFailed".into(),
            message: m,
        };
        let bin = |b: Vec<u8>| Binary {
            subtype: BinarySubtype::Generic,
            bytes: b,
        };
        let payload = |d: &Document| -> Vec<u8> {
            match d.get("payload") {
                Some(Bson::Binary(b)) => b.bytes.clone(),
                _ => Vec::new(),
            }
        };
        let mut conv = Conversation::new(mechanism, user).map_err(proto)?;
        let start = self
            .command(
                source,
                doc! {
                    "saslStart": 1,
                    "mechanism": mechanism.name(),
                    "payload": bin(conv.client_first()),
                    "autoAuthorize": 1,
                    "options": {"skipEmptyExchange": true},
                },
            )
            .await?;
        let id = start
            .get("conversationId")
            .cloned()
            .unwrap_or(Bson::Int32(1));
        let fin = conv
            .client_final(&payload(&start), password)
            .await
            .map_err(proto)?;
        let mut step = self
            .command(
                source,
                doc! {"saslContinue": 1, "conversationId": id.clone(), "payload": bin(fin)},
            )
            .await?;
        conv.verify_server(&payload(&step)).map_err(proto)?;
        // Servers that ignore skipEmptyExchange want one more, empty round.
        for _ in 0..2 {
            if step.get_bool("done").unwrap_or(false) {
                return Ok(());
            }
            step = self
                .command(
                    source,
                    doc! {"saslContinue": 1, "conversationId": id.clone(), "payload": bin(Vec::new())},
                )
                .await?;
        }
        Err(proto("the SCRAM conversation did not finish".into()))
    }
}

/// Bounds one step.
pub(super) async fn within<T>(
    after: Duration,
    f: impl std::future::Future<Output = Result<T, WireError>>,
) -> Result<T, WireError> {
    match tokio::time::timeout(after, f).await {
        Ok(r) => r,
        Err(_) => Err(WireError::Late(after)),
    }
}
