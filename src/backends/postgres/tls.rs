//! TLS for every PostgreSQL connection, with libpq's sslmode meanings: `prefer` and
//! `require` check only the handshake, `verify-ca` the chain, `verify-full` the chain
//! and the host name.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::CertificateDer;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{answer_or_cause, code_of, target, PgError, SslMode};
use crate::backends::tls::{AnyName, NoCertCheck};
use crate::backends::tunnel::Route;

/// A channel through the Services machine.
type Tunnel = russh::ChannelStream<russh::client::Msg>;
use tokio_postgres::tls::MakeTlsConnect;

/// The TLS side of every connection, built once from sslmode and sslrootcert, and the
/// route to the server (straight, or through the Services machine).
#[derive(Clone)]
pub struct Tls {
    mode: SslMode,
    connector: MakeRustlsConnect,
    route: Route,
}

impl Tls {
    /// The TLS settings for `mode`, trusting the CA certificates in `rootcert`.
    pub fn new(mode: SslMode, rootcert: Option<&std::path::Path>) -> Result<Tls, PgError> {
        use rustls::pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::tls("TLS set-up", e))?;
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                Arc::new(NoCertCheck::new(provider.clone()))
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let path = rootcert.ok_or_else(|| {
                    PgError::TlsSettings {
                        what: "sslmode verify-ca and verify-full need sslrootcert: the CA certificate (PEM) that signed the server's".into(),
                        source: None,
                    }
                })?;
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| PgError::tls(format!("sslrootcert {}", path.display()), e))?;
                for c in certs {
                    let c =
                        c.map_err(|e| PgError::tls(format!("sslrootcert {}", path.display()), e))?;
                    roots
                        .add(c)
                        .map_err(|e| PgError::tls(format!("sslrootcert {}", path.display()), e))?;
                }
                if roots.is_empty() {
                    return Err(PgError::TlsSettings {
                        what: format!("sslrootcert {} holds no certificate", path.display()),
                        source: None,
                    });
                }
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| PgError::tls(format!("sslrootcert {}", path.display()), e))?;
                if mode == SslMode::VerifyCa {
                    Arc::new(AnyName(webpki))
                } else {
                    webpki
                }
            }
        };
        let cfg = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Tls {
            mode,
            connector: MakeRustlsConnect::new(cfg),
            route: Route::Direct,
        })
    }

    /// The same, reaching the server by `route`.
    /// How the connections are made.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The same, reaching the server by `route`.
    pub fn with_route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }

    /// Opens one connection; the task driving it is returned so callers can wait for
    /// it to end.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        dbname: &str,
        timeout: Duration,
    ) -> Result<(Client, JoinHandle<()>), PgError> {
        let mut c = tokio_postgres::Config::new();
        c.host(host)
            .port(port)
            .user(user)
            .password(password)
            .dbname(dbname)
            .application_name("terraform-provider-circleci")
            .connect_timeout(timeout)
            .ssl_mode(match self.mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        let who = target(user, host, port);
        if let Route::Tunnel(h) = &self.route {
            // The stream is a channel through the Services machine; TLS still checks
            // the server's own name, `host`.
            let open = tokio::time::timeout(timeout, h.open_tunnel(host, port));
            let stream = match open.await {
                Ok(r) => r.map_err(|e| PgError::Connect {
                    target: who.clone(),
                    database: dbname.to_string(),
                    answer: String::new(),
                    code: None,
                    cert: false,
                    source: Some(Box::new(e)),
                })?,
                Err(_) => {
                    return Err(PgError::Timeout {
                        target: who,
                        database: dbname.to_string(),
                        after: timeout,
                    })
                }
            };
            let tls = MakeTlsConnect::<Tunnel>::make_tls_connect(&mut self.connector.clone(), host)
                .map_err(|e| PgError::tls(format!("TLS for {host}"), e))?;
            let r = tokio::time::timeout(timeout, c.connect_raw(stream, tls)).await;
            let (client, conn) = connected(r, who, dbname, timeout)?;
            return Ok((client, spawn_connection(conn)));
        }
        let r = tokio::time::timeout(timeout, c.connect(self.connector.clone())).await;
        let (client, conn) = connected(r, who, dbname, timeout)?;
        Ok((client, spawn_connection(conn)))
    }
}

/// The connection attempt's outcome, as the provider reports it.
fn connected<T>(
    r: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    who: String,
    dbname: &str,
    timeout: Duration,
) -> Result<T, PgError> {
    match r {
        Err(_) => Err(PgError::Timeout {
            target: who,
            database: dbname.to_string(),
            after: timeout,
        }),
        Ok(Err(e)) => {
            let code = code_of(&e);
            let cert = crate::backends::find_in_chain::<rustls::Error>(&e).is_some();
            let (answer, source) = answer_or_cause(e);
            Err(PgError::Connect {
                target: who,
                database: dbname.to_string(),
                answer,
                code,
                cert,
                source,
            })
        }
        Ok(Ok(x)) => Ok(x),
    }
}

/// Drives a connection in its own task until it ends.
fn spawn_connection<F>(conn: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("PostgreSQL connection ended: {e}");
        }
    })
}
