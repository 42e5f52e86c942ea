//! go-plugin start-up: magic cookie, protocol negotiation, AutoMTLS, the handshake line
//! on stdout, then gRPC until Terraform says Shutdown.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

use super::goplugin_services::{Controller, Stdio};
use super::grpc::ProviderService;
use super::resource::Provider;
use super::{goplugin, tfplugin6 as pb};

/// The cookie Terraform sets so a plugin knows it was started by Terraform.
pub(crate) const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
pub(crate) const MAGIC_COOKIE_VALUE: &str =
    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

#[derive(Debug)]
pub(crate) struct ServeError(pub String);

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything the handshake needs from the environment, read once.
#[derive(Debug, Default, Clone)]
pub(crate) struct HandshakeEnv {
    pub cookie: Option<String>,
    pub protocol_versions: Option<String>,
    pub client_cert_pem: Option<String>,
    pub min_port: Option<u16>,
    pub max_port: Option<u16>,
}

impl HandshakeEnv {
    pub(crate) fn from_process() -> Self {
        let port = |k| std::env::var(k).ok().and_then(|v| v.parse().ok());
        HandshakeEnv {
            cookie: std::env::var(MAGIC_COOKIE_KEY).ok(),
            protocol_versions: std::env::var("PLUGIN_PROTOCOL_VERSIONS").ok(),
            client_cert_pem: std::env::var("PLUGIN_CLIENT_CERT")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            min_port: port("PLUGIN_MIN_PORT"),
            max_port: port("PLUGIN_MAX_PORT"),
        }
    }

    /// Checks cookie and protocol version; Err carries the one line to print.
    pub(crate) fn check(&self) -> Result<(), ServeError> {
        if self.cookie.as_deref() != Some(MAGIC_COOKIE_VALUE) {
            return Err(ServeError(
                "this is a Terraform plugin: it is started by terraform (see the README), not run by hand".into(),
            ));
        }
        if let Some(v) = &self.protocol_versions {
            if !v.split(',').any(|p| p.trim() == "6") {
                return Err(ServeError(format!(
                    "this provider speaks plugin protocol 6 but Terraform offered {v:?}; use Terraform 1.0 or later"
                )));
            }
        }
        Ok(())
    }
}

/// A connection, plain or TLS, as tonic's server wants it.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts exactly one client certificate, byte for byte, and still checks that the
/// client proved possession of its key in the TLS handshake. Terraform's certificate is
/// a self-signed P-521 CA certificate, which WebPKI path building would reject as an
/// end-entity certificate; pinning is the right model for AutoMTLS anyway.
#[derive(Debug)]
pub(crate) struct PinnedClientCert {
    pinned: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedClientCert {
    pub(crate) fn new(
        pinned: CertificateDer<'static>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Self {
        PinnedClientCert { pinned, provider }
    }
}

impl ClientCertVerifier for PinnedClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// A fresh self-signed server certificate for this process, valid for "localhost"
/// (the name go-plugin checks). Returns the rustls config and the DER for the handshake.
pub(crate) fn tls_config(
    client_cert_pem: &str,
) -> Result<(rustls::ServerConfig, Vec<u8>), ServeError> {
    use rustls::pki_types::pem::PemObject;
    let client = CertificateDer::from_pem_slice(client_cert_pem.as_bytes())
        .map_err(|e| ServeError(format!("PLUGIN_CLIENT_CERT is not a PEM certificate: {e}")))?;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ServeError(format!("generating the server key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .map_err(|e| ServeError(format!("server certificate parameters: {e}")))?;
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "terraform-provider-circleci",
    );
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(30)).into();
    params.not_after = (now + std::time::Duration::from_secs(30 * 24 * 3600)).into();
    let cert = params
        .self_signed(&key)
        .map_err(|e| ServeError(format!("signing the server certificate: {e}")))?;
    let der = cert.der().to_vec();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PinnedClientCert::new(client.into_owned(), provider.clone()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServeError(format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| ServeError(format!("TLS server configuration: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok((cfg, der))
}

async fn bind(env: &HandshakeEnv) -> Result<TcpListener, ServeError> {
    if let (Some(lo), Some(hi)) = (env.min_port, env.max_port) {
        if lo > 0 && lo <= hi {
            for port in lo..=hi {
                if let Ok(l) = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await {
                    return Ok(l);
                }
            }
            return Err(ServeError(format!(
                "no free port on 127.0.0.1 between {lo} and {hi}"
            )));
        }
    }
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| ServeError(format!("listening on 127.0.0.1: {e}")))
}

/// Serves the provider until Terraform calls Shutdown (or stdin/ signals end it).
pub(crate) async fn serve(
    provider: Arc<dyn Provider>,
    env: HandshakeEnv,
) -> Result<(), ServeError> {
    env.check()?;
    let listener = bind(&env).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError(e.to_string()))?;

    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(16);
    let line = match &env.client_cert_pem {
        Some(pem) => {
            let (cfg, der) = tls_config(pem)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
            tokio::spawn(accept_tls(listener, acceptor, conn_tx));
            let cert = base64::engine::general_purpose::STANDARD_NO_PAD.encode(der);
            format!("1|6|tcp|{addr}|grpc|{cert}\n")
        }
        None => {
            tokio::spawn(accept_plain(listener, conn_tx));
            format!("1|6|tcp|{addr}|grpc\n")
        }
    };

    let (shutdown_tx, mut shutdown_rx) = tokio::sync::mpsc::channel::<()>(1);
    let service = ProviderService::new(provider);
    let router = tonic::transport::Server::builder()
        .add_service(pb::provider_server::ProviderServer::new(service))
        .add_service(goplugin::grpc_controller_server::GrpcControllerServer::new(
            Controller {
                shutdown: shutdown_tx,
            },
        ))
        .add_service(goplugin::grpc_stdio_server::GrpcStdioServer::new(Stdio));

    // Listen for SIGTERM before announcing ourselves, so a stop right after the
    // handshake is a clean shutdown rather than the default kill.
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    // Ctrl-C in a terminal reaches the whole process group, this plugin too. Terraform
    // answers it by calling StopProvider and waiting for the operations in flight to
    // return what they changed; dying here would lose that. So SIGINT is only logged.
    if let Ok(mut sigint) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    {
        tokio::spawn(async move {
            while sigint.recv().await.is_some() {
                log::debug!("SIGINT received: waiting for Terraform's StopProvider instead");
            }
        });
    }

    // The one and only thing this process writes to stdout.
    {
        let mut out = io::stdout().lock();
        out.write_all(line.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| ServeError(format!("writing the handshake: {e}")))?;
    }
    log::debug!("plugin server listening on {addr}");

    let shutdown = async move {
        let term = async {
            match sigterm.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = shutdown_rx.recv() => {}
            _ = term => {}
        }
    };
    router
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), shutdown)
        .await
        .map_err(|e| ServeError(format!("gRPC server: {e}")))?;
    log::debug!("plugin server stopped");
    Ok(())
}

/// Pauses after a failed accept (e.g. out of file descriptors), longer each time in a
/// row, so a persistent error does not spin a core.
struct AcceptBackoff(std::time::Duration);

impl AcceptBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(10);
    const MAX: std::time::Duration = std::time::Duration::from_secs(1);

    fn new() -> Self {
        AcceptBackoff(Self::FIRST)
    }

    async fn failed(&mut self, e: &io::Error) {
        log::warn!(
            "accept: {e}; retrying in {}",
            humantime::format_duration(self.0)
        );
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }

    fn succeeded(&mut self) {
        self.0 = Self::FIRST;
    }
}

async fn accept_plain(listener: TcpListener, tx: tokio::sync::mpsc::Sender<io::Result<Conn>>) {
    let mut backoff = AcceptBackoff::new();
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                backoff.succeeded();
                let _ = s.set_nodelay(true);
                if tx.send(Ok(Conn::Plain(s))).await.is_err() {
                    return;
                }
            }
            Err(e) => backoff.failed(&e).await,
        }
    }
}

/// Longest a client may take over the TLS handshake.
const HANDSHAKE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<io::Result<Conn>>,
) {
    let mut backoff = AcceptBackoff::new();
    loop {
        let (s, peer) = match listener.accept().await {
            Ok(x) => {
                backoff.succeeded();
                x
            }
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        // Handshakes run in their own tasks so a slow or hostile client cannot stall others.
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(s)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(Conn::Tls(Box::new(tls)))).await;
                }
                Ok(Err(e)) => log::warn!("refused TLS connection from {peer}: {e}"),
                Err(_) => log::warn!(
                    "dropped a connection from {peer}: no TLS handshake within {}",
                    humantime::format_duration(HANDSHAKE_DEADLINE)
                ),
            }
        });
    }
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[tokio::test]
    async fn a_persistent_accept_error_backs_off_instead_of_spinning() {
        let mut b = AcceptBackoff::new();
        let e = io::Error::other("too many open files");
        let start = std::time::Instant::now();
        for _ in 0..5 {
            b.failed(&e).await;
        }
        // 10 + 20 + 40 + 80 + 160 ms for five errors in a row (then up to 1 s each),
        // where a spinning loop would take none.
        let waited = start.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(300),
            "{waited:?}"
        );
        assert_eq!(b.0, std::time::Duration::from_millis(320));
        b.succeeded();
        assert_eq!(b.0, AcceptBackoff::FIRST);
    }
}
