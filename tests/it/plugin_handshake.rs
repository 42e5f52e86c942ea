//! The go-plugin handshake and AutoMTLS, against the real binary.
//!
//! Terraform's own client certificate is self-signed ECDSA P-521 / SHA-512 with CA:TRUE;
//! the tests make one of the same kind. The end-to-end tests cover Terraform itself.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const COOKIE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
const BIN: &str = env!("CARGO_BIN_EXE_terraform-provider-circleci");

/// A certificate like Terraform's: P-521, SHA-512, CA:TRUE, CN=localhost.
fn terraform_like_cert() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "HashiCorp");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (
        cert.pem(),
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// The provider started as Terraform starts it; killed when dropped.
pub(crate) struct Plugin {
    pub(crate) child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    /// 127.0.0.1:PORT from the handshake line.
    pub(crate) addr: String,
    server_cert: Vec<u8>,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the provider; with `client_pem` None it serves plain TCP (no AutoMTLS).
pub(crate) fn start(client_pem: Option<&str>) -> Plugin {
    let mut cmd = Command::new(BIN);
    cmd.env("TF_PLUGIN_MAGIC_COOKIE", COOKIE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "5,6")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match client_pem {
        Some(p) => cmd.env("PLUGIN_CLIENT_CERT", p),
        None => cmd.env_remove("PLUGIN_CLIENT_CERT"),
    };
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let parts: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(&parts[..3], &["1", "6", "tcp"], "{line}");
    assert!(parts[3].starts_with("127.0.0.1:"), "{line}");
    assert_eq!(parts[4], "grpc");
    let server_cert = match parts.get(5) {
        Some(c) => {
            assert!(!c.ends_with('='), "the certificate is sent without padding");
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(c)
                .unwrap()
        }
        None => vec![],
    };
    Plugin {
        child,
        stdout,
        addr: parts[3].to_string(),
        server_cert,
    }
}

#[derive(Debug)]
struct PinServer(Vec<u8>, Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for PinServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        assert_eq!(
            end_entity.as_ref(),
            &self.0[..],
            "server presented the certificate from the handshake"
        );
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects with TLS (optionally presenting a client certificate), sends the HTTP/2
/// preface and returns how many bytes the server answered with (its SETTINGS frame),
/// or the error.
async fn h2_hello(
    p: &Plugin,
    client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> Result<usize, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinServer(p.server_cert.clone(), provider)));
    let mut cfg = match client {
        Some((c, k)) => b.with_client_auth_cert(vec![c], k).unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&p.addr)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(0)) => Err("connection closed".into()),
        Ok(Ok(n)) => Ok(n),
    }
}

#[test]
fn without_the_cookie_it_explains_itself_and_exits_1() {
    let out = Command::new(BIN)
        .env_remove("TF_PLUGIN_MAGIC_COOKIE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "stdout belongs to the handshake");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("this is a Terraform plugin"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn protocol_5_only_is_refused() {
    let out = Command::new(BIN)
        .env("TF_PLUGIN_MAGIC_COOKIE", COOKIE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("protocol 6"));
}

#[tokio::test]
async fn automtls_requires_exactly_terraforms_certificate() {
    let (pem, cert, key) = terraform_like_cert();
    let p = start(Some(&pem));
    assert!(
        !p.server_cert.is_empty(),
        "with PLUGIN_CLIENT_CERT the handshake carries the server certificate"
    );

    // The pinned certificate (P-521, CA:TRUE, like Terraform's) is accepted.
    let n = h2_hello(&p, Some((cert, key)))
        .await
        .expect("the right client certificate must be accepted");
    assert!(n >= 9, "server answered with an HTTP/2 frame");

    // No client certificate: refused.
    assert!(
        h2_hello(&p, None).await.is_err(),
        "a client without a certificate must be refused"
    );

    // Another certificate of the same kind: refused.
    let (_, other_cert, other_key) = terraform_like_cert();
    assert!(
        h2_hello(&p, Some((other_cert, other_key))).await.is_err(),
        "another certificate must be refused"
    );
}

#[test]
fn plain_tcp_without_client_cert_and_nothing_else_on_stdout() {
    let mut p = start(None);
    assert!(p.server_cert.is_empty());
    // SIGTERM ends the process cleanly, and nothing followed the handshake line.
    let st = Command::new("kill")
        .arg(p.child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    let status = p.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let mut rest = Vec::new();
    p.stdout.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}
