//! Connecting to the Services machine: the host key check, the login, and the SFTP
//! server (through `sudo -n` when asked).

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::RawSftpSession;

use super::{HostKeyPolicy, ServicesHost, Session, SshAuth, SshError, SUDO_SFTP};

/// `ALGORITHM SHA256:...`, as ssh-keygen -l shows it.
pub(crate) fn fingerprint(k: &PublicKey) -> String {
    format!(
        "{} {}",
        k.algorithm().as_str(),
        k.fingerprint(HashAlg::Sha256)
    )
}

/// Parses a pinned host key: `ssh-ed25519 AAAA...` with an optional comment, or a whole
/// known_hosts line (`host ssh-ed25519 AAAA...`).
pub fn parse_host_key(s: &str) -> Result<PublicKey, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    for i in 0..words.len().saturating_sub(1) {
        if words[i].starts_with("ssh-")
            || words[i].starts_with("ecdsa-")
            || words[i].starts_with("sk-")
        {
            return russh::keys::parse_public_key_base64(words[i + 1]).map_err(|e| {
                format!(
                    "the key after {:?} is not valid base64 key data: {e}",
                    words[i]
                )
            });
        }
    }
    Err("expected an OpenSSH public key such as \"ssh-ed25519 AAAA...\" (the output of ssh-keyscan)".into())
}

/// russh's callback object: checks the host key before anything else happens.
pub(super) struct Client {
    host: String,
    port: u16,
    policy: HostKeyPolicy,
    /// Why the key was refused, for the error message.
    refusal: Arc<StdMutex<Option<String>>>,
}

impl Client {
    fn check(&self, key: &PublicKey) -> Result<(), String> {
        let offered = fingerprint(key);
        let target = format!("{}:{}", self.host, self.port);
        match &self.policy {
            HostKeyPolicy::Insecure => {
                log::warn!("accepting host key {offered} of {target} without checking (insecure_ignore_host_key)");
                Ok(())
            }
            HostKeyPolicy::Pinned(keys) => {
                if keys.iter().any(|k| k.key_data() == key.key_data()) {
                    Ok(())
                } else {
                    let expected: Vec<String> = keys.iter().map(fingerprint).collect();
                    Err(format!(
                        "host key mismatch for {target}: the server offered {offered}, but host_key pins {}. \
                         Nothing was written. If the Services machine was rebuilt, update host_key \
                         (ssh-keyscan -p {} {}); otherwise someone may be intercepting the connection.",
                        expected.join(", "),
                        self.port,
                        self.host
                    ))
                }
            }
            HostKeyPolicy::KnownHosts(path) => {
                match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!(
                        "{target} is not in {} (the server offered {offered}). Nothing was written. \
                         Add it with: ssh-keyscan -p {} {} >> {}",
                        path.display(),
                        self.port,
                        self.host,
                        path.display()
                    )),
                    Err(russh::keys::Error::KeyChanged { line }) => {
                        let recorded = russh::keys::known_hosts::known_host_keys_path(&self.host, self.port, path)
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(_, k)| fingerprint(&k))
                            .collect::<Vec<_>>()
                            .join(", ");
                        Err(format!(
                            "host key mismatch for {target}: the server offered {offered}, but {} line {line} records {recorded}. \
                             Nothing was written.",
                            path.display()
                        ))
                    }
                    Err(e) => Err(format!("reading known_hosts file {}: {e}", path.display())),
                }
            }
        }
    }
}

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                if matches!(self.policy, HostKeyPolicy::Insecure) {
                    return Ok(true);
                }
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                    "{}:{} presented an SSH host certificate; pin its plain host key instead",
                    self.host, self.port
                ));
                return Ok(false);
            }
        };
        match self.check(key) {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}

async fn rsa_hash(handle: &russh::client::Handle<Client>) -> Option<HashAlg> {
    handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten()
}

impl ServicesHost {
    /// A new connection: transport and host key, login, SFTP.
    pub(super) async fn connect(&self) -> Result<Session, SshError> {
        let started = std::time::Instant::now();
        let mut handle = self.open_transport().await?;
        self.login(&mut handle).await?;
        let s = self.start_sftp(handle).await?;
        // `make bench` reads this line: the connection is on every plan's critical path.
        log::debug!(
            "SSH connection to {} ready (transport, login, SFTP): {:.1} ms",
            self.cfg.target(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        Ok(s)
    }

    /// TCP, SSH transport, and the host key check.
    async fn open_transport(&self) -> Result<russh::client::Handle<Client>, SshError> {
        let cfg = &self.cfg;
        let target = cfg.target();
        log::debug!("connecting to {target}");
        let refusal = Arc::new(StdMutex::new(None));
        let client = Client {
            host: cfg.host.clone(),
            port: cfg.port,
            policy: cfg.host_key.clone(),
            refusal: refusal.clone(),
        };
        let ssh_cfg = Arc::new(russh::client::Config {
            keepalive_interval: Some(Duration::from_secs(30)),
            // Without it Nagle holds back each small packet of the handshake and of
            // every SFTP request until the last one is acknowledged, which the server
            // delays by up to 40 ms: three such waits were most of a plan's
            // 120 ms SSH connect (`make bench`).
            nodelay: true,
            ..Default::default()
        });
        let connect = async {
            match &self.jump {
                None => {
                    let tcp = tokio::net::TcpStream::connect((cfg.host.as_str(), cfg.port))
                        .await
                        .map_err(russh::Error::IO)?;
                    // What russh's own `connect` does with `nodelay`, and the quick ACKs.
                    tcp.set_nodelay(true).map_err(russh::Error::IO)?;
                    let stream = super::quick_ack::QuickAck(tcp);
                    russh::client::connect_stream(ssh_cfg, stream, client).await
                }
                Some(via) => {
                    let stream = via.open_tunnel_boxed(&cfg.host, cfg.port).await.map_err(
                        |e: super::super::tunnel::DialError| {
                            russh::Error::IO(std::io::Error::other(crate::backends::chain(&e)))
                        },
                    )?;
                    russh::client::connect_stream(ssh_cfg, stream, client).await
                }
            }
        };
        let handle = match tokio::time::timeout(cfg.timeout, connect).await {
            Err(_) => {
                return Err(SshError::connect(format!(
                    "connecting to {target}: no answer within {}",
                    humantime::format_duration(cfg.timeout)
                )))
            }
            Ok(Err(e)) => {
                if let Some(why) = refusal.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    return Err(SshError::HostKey(why));
                }
                return Err(SshError::connect_by(format!("connecting to {target}"), e));
            }
            Ok(Ok(h)) => h,
        };
        Ok(handle)
    }

    /// Public-key login, within the timeout.
    async fn login(&self, handle: &mut russh::client::Handle<Client>) -> Result<(), SshError> {
        let cfg = &self.cfg;
        let target = cfg.target();
        let authed = tokio::time::timeout(cfg.timeout, self.authenticate(handle))
            .await
            .map_err(|_| SshError::auth(format!("authenticating to {target}: timed out")))??;
        if !authed {
            return Err(SshError::auth(format!(
                "{target} refused public-key authentication for user {:?} with {}",
                cfg.user,
                match &cfg.auth {
                    SshAuth::Key(_) => "the configured private key".to_string(),
                    SshAuth::KeyFile(p) => format!("the key in {}", p.display()),
                    SshAuth::Agent => "the keys of the ssh-agent".to_string(),
                }
            )));
        }
        Ok(())
    }

    /// The SFTP server (through `sudo -n` when asked) on a session channel.
    async fn start_sftp(&self, handle: russh::client::Handle<Client>) -> Result<Session, SshError> {
        let cfg = &self.cfg;
        let target = cfg.target();
        let late = |what: &str| {
            SshError::connect(format!(
                "{what} on {target}: no answer within {}",
                humantime::format_duration(cfg.timeout)
            ))
        };
        let channel = tokio::time::timeout(cfg.timeout, handle.channel_open_session())
            .await
            .map_err(|_| late("opening a session"))?
            .map_err(|e| SshError::connect_by(format!("opening a session on {target}"), e))?;
        let use_sudo = cfg.sudo && cfg.user != "root";
        let start = async {
            if use_sudo {
                channel.exec(true, SUDO_SFTP).await
            } else {
                channel.request_subsystem(true, "sftp").await
            }
        };
        tokio::time::timeout(cfg.timeout, start)
            .await
            .map_err(|_| late("starting SFTP"))?
            .map_err(|e| SshError::connect_by(format!("starting SFTP on {target}"), e))?;
        let sftp = RawSftpSession::new(channel.into_stream());
        sftp.set_timeout(cfg.timeout.as_secs().max(1));
        let version = sftp.init().await.map_err(|e| {
            let hint = if use_sudo {
                format!(
                    " (SFTP runs through sudo: can {:?} run `sudo -n` without a password there?)",
                    cfg.user
                )
            } else {
                String::new()
            };
            // The hint reads after the cause, so the cause is in the message here.
            SshError::connect(format!("starting SFTP on {target}: {e}{hint}"))
        })?;
        let posix_rename = version
            .extensions
            .get("posix-rename@openssh.com")
            .is_some_and(|v| v == "1");
        let fsync = version
            .extensions
            .get("fsync@openssh.com")
            .is_some_and(|v| v == "1");
        log::debug!("connected to {target} (posix-rename: {posix_rename}, fsync: {fsync})");
        Ok(Session {
            handle,
            sftp,
            posix_rename,
            fsync,
            commands: Arc::new(tokio::sync::Semaphore::new(super::EXEC_SESSIONS)),
        })
    }

    async fn authenticate(
        &self,
        handle: &mut russh::client::Handle<Client>,
    ) -> Result<bool, SshError> {
        let cfg = &self.cfg;
        let target = cfg.target();
        let key = match &cfg.auth {
            SshAuth::Key(k) => Some(
                russh::keys::decode_secret_key(k.expose(), None)
                    .map_err(|e| SshError::auth_by("the private key could not be read", e))?,
            ),
            SshAuth::KeyFile(p) => {
                Some(russh::keys::load_secret_key(p, None).map_err(|e| {
                    SshError::auth_by(format!("private key file {}", p.display()), e)
                })?)
            }
            SshAuth::Agent => None,
        };
        match key {
            Some(key) => {
                let hash = if key.algorithm().is_rsa() {
                    rsa_hash(handle).await
                } else {
                    None
                };
                let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
                let r = handle
                    .authenticate_publickey(cfg.user.clone(), key)
                    .await
                    .map_err(|e| SshError::auth_by(format!("authenticating to {target}"), e))?;
                Ok(r.success())
            }
            None => {
                let mut agent = russh::keys::agent::client::AgentClient::connect_env().await.map_err(|e| {
                    SshError::auth_by("no private key is configured and the ssh-agent (SSH_AUTH_SOCK) is not usable", e)
                })?;
                let ids = agent
                    .request_identities()
                    .await
                    .map_err(|e| SshError::auth_by("listing ssh-agent keys", e))?;
                for id in ids {
                    let key = match &id {
                        russh::keys::agent::AgentIdentity::PublicKey { key, .. } => key.clone(),
                        _ => continue,
                    };
                    let hash = if key.algorithm().is_rsa() {
                        rsa_hash(handle).await
                    } else {
                        None
                    };
                    match handle
                        .authenticate_publickey_with(cfg.user.clone(), key, hash, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => return Ok(true),
                        Ok(_) => continue,
                        Err(e) => {
                            return Err(SshError::auth_by(
                                format!("ssh-agent signing for {target}"),
                                e,
                            ))
                        }
                    }
                }
                Ok(false)
            }
        }
    }
}
