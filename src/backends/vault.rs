//! Vault (or OpenBao, which speaks the same API): transit keys, policies and tokens.
//! `vaultrs` makes the calls. Tokens are handled as [`Secret`]s and never logged; the
//! provider's own logger also drops everything below `warn` from HTTP libraries.

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use vaultrs::api::transit::KeyType;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::secret::Secret;

/// How to reach Vault, and as whom.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// Vault's address, `https://host:port`.
    pub address: String,
    /// The token the provider acts with.
    pub token: Secret,
    /// The CA certificate file TLS trusts.
    pub ca_cert_file: Option<PathBuf>,
    /// The Vault Enterprise namespace, if any.
    pub namespace: Option<String>,
    /// Skip checking Vault's certificate (explicit opt-in only).
    pub skip_tls_verify: bool,
    /// The longest wait for each request.
    pub timeout: Duration,
    /// Straight from where Terraform runs, or through the Services machine.
    pub route: crate::backends::tunnel::Route,
}

/// What failed, at which Vault. Classified by the HTTP status Vault answered with.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Vault answered with an error status.
    #[error("{what} at {address}: HTTP {status}{}{}", if .errors.is_empty() { String::new() } else { format!(": {}", .errors.join("; ")) }, if *.status == 403 { " (permission denied: check the provider's vault token and its policies)" } else { "" })]
    Api {
        what: String,
        address: String,
        status: u16,
        errors: Vec<String>,
    },
    /// No answer, or not one Vault's API gives: `detail` says why in words (no answer
    /// in time, the tunnel's failing hop), or the HTTP client's error is the source.
    #[error("{what} at {address}{}", .detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Transport {
        what: String,
        address: String,
        detail: Option<String>,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The client settings cannot be used.
    #[error("Vault address {address:?}: {detail}")]
    Settings { address: String, detail: String },
    /// A request we refuse to send, or an answer that makes no sense.
    #[error("{0}")]
    Invalid(String),
}

impl VaultError {
    /// Vault answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, VaultError::Api { status: 404, .. })
    }
}

/// A token fresh from Vault: the secret and what may be stored about it.
pub struct NewToken {
    pub token: Secret,
    pub accessor: String,
    pub ttl: Duration,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("accessor", &self.accessor)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// What a lookup tells about a token (never the token itself).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub accessor: String,
    pub ttl: Duration,
    pub expire_time: Option<String>,
    pub policies: Vec<String>,
    pub orphan: bool,
}

/// The encryption key types transit offers for encrypt/decrypt.
pub(crate) const KEY_TYPES: [&str; 3] = ["aes256-gcm96", "aes128-gcm96", "chacha20-poly1305"];

fn key_type(s: &str) -> Option<KeyType> {
    match s {
        "aes256-gcm96" => Some(KeyType::Aes256Gcm96),
        "aes128-gcm96" => Some(KeyType::Aes128Gcm96),
        "chacha20-poly1305" => Some(KeyType::Chacha20Poly1305),
        _ => None,
    }
}

/// A Vault client: transit mounts and keys, policies and tokens.
pub struct Vault {
    cfg: VaultConfig,
    /// Built on first use; a failure is not kept (building again fails the same way
    /// and costs nothing), so errors need no `Clone`.
    admin: OnceLock<VaultClient>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault").field("cfg", &self.cfg).finish()
    }
}

impl Vault {
    /// A client for the Vault in `cfg`; it connects on first use.
    pub fn new(cfg: VaultConfig) -> Self {
        Vault {
            cfg,
            admin: OnceLock::new(),
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &VaultConfig {
        &self.cfg
    }

    /// The same Vault reached by `route` (a resource's own check).
    pub fn with_route(&self, route: crate::backends::tunnel::Route) -> Vault {
        Vault::new(VaultConfig {
            route,
            ..self.cfg.clone()
        })
    }

    fn err(&self, what: &str, e: ClientError) -> VaultError {
        let (what, address) = (what.to_string(), self.cfg.address.clone());
        // Read once: a dial that succeeds meanwhile clears the entry.
        let tunnel_failure = self.tunnel_failure();
        match e {
            ClientError::APIError { code, errors } => VaultError::Api {
                what,
                address,
                status: code,
                errors,
            },
            // The tunnel's failure, naming its hop, is the cause; the HTTP client only
            // saw its proxy refuse.
            ClientError::RestClientError { .. } if tunnel_failure.is_some() => {
                VaultError::Transport {
                    what,
                    address,
                    detail: None,
                    source: tunnel_failure.map(|f| Box::new(f) as _),
                }
            }
            ClientError::RestClientError { source }
                if super::find_in_chain::<reqwest::Error>(&source)
                    .is_some_and(reqwest::Error::is_timeout) =>
            {
                VaultError::Transport {
                    what,
                    address,
                    detail: Some(format!(
                        "no answer within {}",
                        humantime::format_duration(self.cfg.timeout)
                    )),
                    source: None,
                }
            }
            // The HTTP client's own error, without vaultrs's wrapper line.
            ClientError::RestClientError { source } => VaultError::Transport {
                what,
                address,
                detail: None,
                source: Some(Box::new(source)),
            },
            other => VaultError::Transport {
                what,
                address,
                detail: None,
                source: Some(Box::new(other)),
            },
        }
    }

    /// A client for `token`, with the provider's address, CA and namespace.
    fn client_for(&self, token: &str) -> Result<VaultClient, VaultError> {
        super::install_crypto_provider();
        let mut b = VaultClientSettingsBuilder::default();
        b.address(&self.cfg.address)
            .token(token)
            .verify(!self.cfg.skip_tls_verify)
            .timeout(Some(self.cfg.timeout))
            .ca_certs(
                self.cfg
                    .ca_cert_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>(),
            );
        if let Some(ns) = &self.cfg.namespace {
            b.set_namespace(ns.clone());
        }
        let settings = b.build().map_err(|e| VaultError::Settings {
            address: self.cfg.address.clone(),
            detail: e.to_string(),
        })?;
        let mut client =
            VaultClient::new(settings).map_err(|e| self.err("setting up the Vault client", e))?;
        if let crate::backends::tunnel::Route::Tunnel(h) = &self.cfg.route {
            client.http.http = self.proxied_http(h)?;
        }
        Ok(client)
    }

    /// The HTTP client vaultrs would build from these settings, through the local
    /// SOCKS5 end of the tunnel (vaultrs takes no proxy of its own).
    fn proxied_http(
        &self,
        h: &std::sync::Arc<crate::backends::ssh::ServicesHost>,
    ) -> Result<reqwest::Client, VaultError> {
        let settings = |detail: String| VaultError::Settings {
            address: self.cfg.address.clone(),
            detail,
        };
        let proxy = h.socks_proxy().map_err(settings)?;
        let mut b = reqwest::ClientBuilder::new()
            .tls_backend_rustls()
            .timeout(self.cfg.timeout)
            .tls_danger_accept_invalid_certs(self.cfg.skip_tls_verify)
            .proxy(reqwest::Proxy::all(proxy.expose()).map_err(|e| settings(super::chain(&e)))?);
        if self.cfg.address.starts_with("http://") {
            b = b.tls_certs_only(Vec::new());
        } else {
            if let Some(path) = &self.cfg.ca_cert_file {
                let pem = std::fs::read(path)
                    .map_err(|e| settings(format!("{}: {e}", path.display())))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| settings(format!("{}: {}", path.display(), super::chain(&e))))?;
                b = b.tls_certs_merge(certs);
            }
        }
        b.build().map_err(|e| settings(super::chain(&e)))
    }

    /// Why the tunnel to this Vault failed last, naming the hop (through the tunnel).
    fn tunnel_failure(&self) -> Option<std::sync::Arc<crate::backends::tunnel::DialError>> {
        let crate::backends::tunnel::Route::Tunnel(h) = &self.cfg.route else {
            return None;
        };
        let (host, port) = crate::backends::tunnel::url_host_port(&self.cfg.address).ok()?;
        let port = port?;
        h.tunnel_failure(&crate::backends::tunnel::host_port(&host, port))
    }

    fn admin(&self) -> Result<&VaultClient, VaultError> {
        if let Some(c) = self.admin.get() {
            return Ok(c);
        }
        let c = self.client_for(self.cfg.token.expose())?;
        Ok(self.admin.get_or_init(|| c))
    }

    /// The version the server reports (`GET /v1/sys/health`, which needs no token and
    /// which a standby, sealed or uninitialized server answers too, with its status).
    pub async fn version(&self) -> Result<String, VaultError> {
        let what = "reading Vault's version (sys/health)";
        let transport = |e: reqwest::Error| match self.tunnel_failure() {
            Some(why) => VaultError::Transport {
                what: what.to_string(),
                address: self.cfg.address.clone(),
                detail: None,
                source: Some(Box::new(why)),
            },
            None => VaultError::Transport {
                what: what.to_string(),
                address: self.cfg.address.clone(),
                detail: None,
                source: Some(Box::new(e)),
            },
        };
        let url = format!(
            "{}/v1/sys/health?standbyok=true&perfstandbyok=true",
            self.cfg.address.trim_end_matches('/')
        );
        let resp = self
            .admin()?
            .http
            .http
            .get(&url)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(transport)?;
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .ok_or_else(|| VaultError::Api {
                what: what.to_string(),
                address: self.cfg.address.clone(),
                status,
                errors: vec![format!(
                    "no version in the answer {:?}",
                    body.chars().take(200).collect::<String>()
                )],
            })
    }

    /// Whether a secrets engine is mounted at `mount`.
    pub async fn mount_exists(&self, mount: &str) -> Result<bool, VaultError> {
        let c = self.admin()?;
        let mounts = vaultrs::sys::mount::list(c)
            .await
            .map_err(|e| self.err("listing secret engines", e))?;
        Ok(mounts.contains_key(&format!("{}/", mount.trim_end_matches('/'))))
    }

    /// Mounts the transit secrets engine at `mount`.
    pub async fn enable_transit(&self, mount: &str) -> Result<(), VaultError> {
        let c = self.admin()?;
        vaultrs::sys::mount::enable(c, mount, "transit", None)
            .await
            .map_err(|e| self.err(&format!("enabling transit at {mount:?}"), e))
    }

    /// Whether transit key `key` exists in `mount`.
    pub async fn key_exists(&self, mount: &str, key: &str) -> Result<bool, VaultError> {
        let c = self.admin()?;
        match vaultrs::transit::key::read(c, mount, key).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = self.err(&format!("reading transit key {mount}/{key}"), e);
                if e.is_not_found() {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates transit key `key` of type `kind` in `mount`.
    pub async fn create_key(&self, mount: &str, key: &str, kind: &str) -> Result<(), VaultError> {
        let c = self.admin()?;
        let kt = key_type(kind).ok_or_else(|| {
            VaultError::Invalid(format!("{kind:?} is not one of {}", KEY_TYPES.join(", ")))
        })?;
        let mut opts = vaultrs::api::transit::requests::CreateKeyRequest::builder();
        opts.key_type(kt);
        vaultrs::transit::key::create(c, mount, key, Some(&mut opts))
            .await
            .map_err(|e| self.err(&format!("creating transit key {mount}/{key}"), e))
    }

    /// Transit refuses to delete a key until `deletion_allowed` is set.
    pub async fn delete_key(&self, mount: &str, key: &str) -> Result<(), VaultError> {
        let c = self.admin()?;
        let mut opts = vaultrs::api::transit::requests::UpdateKeyConfigurationRequest::builder();
        opts.deletion_allowed(true);
        vaultrs::transit::key::update(c, mount, key, Some(&mut opts))
            .await
            .map_err(|e| {
                self.err(
                    &format!("allowing deletion of transit key {mount}/{key}"),
                    e,
                )
            })?;
        vaultrs::transit::key::delete(c, mount, key)
            .await
            .map_err(|e| self.err(&format!("deleting transit key {mount}/{key}"), e))
    }

    /// The rules of policy `name`, or `None` when there is no such policy.
    pub async fn read_policy(&self, name: &str) -> Result<Option<String>, VaultError> {
        let c = self.admin()?;
        match vaultrs::sys::policy::read(c, name).await {
            Ok(p) => Ok(Some(p.rules)),
            Err(e) => {
                let e = self.err(&format!("reading policy {name:?}"), e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Writes policy `name` with `rules` (HCL).
    pub async fn write_policy(&self, name: &str, rules: &str) -> Result<(), VaultError> {
        let c = self.admin()?;
        vaultrs::sys::policy::set(c, name, rules)
            .await
            .map_err(|e| self.err(&format!("writing policy {name:?}"), e))
    }

    /// Deletes policy `name`.
    pub async fn delete_policy(&self, name: &str) -> Result<(), VaultError> {
        let c = self.admin()?;
        vaultrs::sys::policy::delete(c, name)
            .await
            .map_err(|e| self.err(&format!("deleting policy {name:?}"), e))
    }

    /// An orphan periodic token with `default` and `policy`: it outlives the token that
    /// created it (a child would be revoked with its parent).
    pub async fn create_token(
        &self,
        policy: &str,
        period: &str,
        display_name: &str,
    ) -> Result<NewToken, VaultError> {
        let c = self.admin()?;
        let mut opts = vaultrs::api::token::requests::CreateOrphanTokenRequest::builder();
        opts.policies(vec!["default".to_string(), policy.to_string()])
            .period(period)
            .renewable(true)
            .no_parent(true)
            .display_name(display_name);
        let auth = vaultrs::token::new_orphan(c, Some(&mut opts))
            .await
            .map_err(|e| self.err("creating the client token", e))?;
        Ok(NewToken {
            token: Secret::new(auth.client_token),
            accessor: auth.accessor,
            ttl: Duration::from_secs(auth.lease_duration),
        })
    }

    fn info(r: vaultrs::api::token::responses::LookupTokenResponse) -> TokenInfo {
        TokenInfo {
            accessor: r.accessor,
            ttl: Duration::from_secs(r.ttl),
            expire_time: r.expire_time,
            policies: r.policies,
            orphan: r.orphan,
        }
    }

    /// `Ok(None)` when the accessor no longer names a token (revoked or expired).
    pub async fn lookup_accessor(&self, accessor: &str) -> Result<Option<TokenInfo>, VaultError> {
        if accessor.is_empty() {
            return Ok(None);
        }
        let c = self.admin()?;
        match vaultrs::token::lookup_accessor(c, accessor).await {
            Ok(r) => Ok(Some(Self::info(r))),
            // Vault answers 400 "invalid accessor" for unknown accessors. A 403 is the
            // admin token lacking a permission, never "the token is gone": reading it
            // as gone would mint a new token on every refresh.
            Err(ClientError::APIError {
                code: 400 | 404, ..
            }) => Ok(None),
            Err(e) => Err(self.err(
                "looking up the client token by accessor (the provider's token needs `update` on \
                 auth/token/lookup-accessor)",
                e,
            )),
        }
    }

    /// Looks a token up by its value (import: the token comes from the file).
    pub async fn lookup_token(&self, token: &Secret) -> Result<Option<TokenInfo>, VaultError> {
        let c = self.admin()?;
        match vaultrs::token::lookup(c, token.expose()).await {
            Ok(r) => Ok(Some(Self::info(r))),
            Err(ClientError::APIError {
                code: 400 | 403 | 404,
                ..
            }) => Ok(None),
            Err(e) => Err(self.err("looking up the client token", e)),
        }
    }

    /// Renews the token behind `accessor` by `increment` (a Vault duration); returns the
    /// token's new time to live.
    pub async fn renew_accessor(
        &self,
        accessor: &str,
        increment: &str,
    ) -> Result<Duration, VaultError> {
        let c = self.admin()?;
        let auth = vaultrs::token::renew_accessor(c, accessor, Some(increment))
            .await
            .map_err(|e| self.err("renewing the client token", e))?;
        Ok(Duration::from_secs(auth.lease_duration))
    }

    /// Revokes by accessor; an already-gone token is fine.
    pub async fn revoke_accessor(&self, accessor: &str) -> Result<(), VaultError> {
        if accessor.is_empty() {
            return Ok(());
        }
        let c = self.admin()?;
        match vaultrs::token::revoke_accessor(c, accessor).await {
            Ok(())
            | Err(ClientError::APIError {
                code: 400 | 404, ..
            }) => Ok(()),
            Err(e) => Err(self.err("revoking the client token", e)),
        }
    }

    /// Marks a transit key exportable with plaintext backups allowed: what Vault needs
    /// before it hands out a backup. Vault never lets either flag be turned off again.
    pub async fn allow_backup(&self, mount: &str, key: &str) -> Result<(), VaultError> {
        let c = self.admin()?;
        let mut opts = vaultrs::api::transit::requests::UpdateKeyConfigurationRequest::builder();
        opts.exportable(true).allow_plaintext_backup(true);
        vaultrs::transit::key::update(c, mount, key, Some(&mut opts))
            .await
            .map_err(|e| {
                self.err(
                    &format!("allowing a backup of transit key {mount}/{key}"),
                    e,
                )
            })
    }

    /// A plaintext backup of the key (every version, its configuration): as secret as
    /// the key itself.
    pub async fn backup_key(&self, mount: &str, key: &str) -> Result<Secret, VaultError> {
        let c = self.admin()?;
        let r = vaultrs::transit::key::backup(c, mount, key)
            .await
            .map_err(|e| self.err(&format!("backing up transit key {mount}/{key}"), e))?;
        Ok(Secret::new(r.backup))
    }

    /// Restores `backup` into transit mount `mount`, under the name it was backed up
    /// with (`key`, for messages); `force` replaces a key of that name. (Vault takes a
    /// new name only in the path, which vaultrs does not send; the migration keeps the
    /// name anyway.)
    pub async fn restore_key(
        &self,
        mount: &str,
        key: &str,
        backup: &Secret,
        force: bool,
    ) -> Result<(), VaultError> {
        let c = self.admin()?;
        let mut opts = vaultrs::api::transit::requests::RestoreKeyRequest::builder();
        opts.force(force);
        vaultrs::transit::key::restore(c, mount, backup.expose(), Some(&mut opts))
            .await
            .map_err(|e| self.err(&format!("restoring transit key {mount}/{key}"), e))
    }

    /// Encrypts `plaintext` (raw bytes) with the admin token; the ciphertext.
    pub async fn encrypt(
        &self,
        mount: &str,
        key: &str,
        plaintext: &[u8],
    ) -> Result<String, VaultError> {
        let c = self.admin()?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(plaintext);
        vaultrs::transit::data::encrypt(c, mount, key, &b64, None)
            .await
            .map(|r| r.ciphertext)
            .map_err(|e| self.err(&format!("encrypting with {mount}/{key}"), e))
    }

    /// Decrypts `ciphertext` with the admin token; the raw bytes.
    pub async fn decrypt(
        &self,
        mount: &str,
        key: &str,
        ciphertext: &str,
    ) -> Result<Vec<u8>, VaultError> {
        let c = self.admin()?;
        let r = vaultrs::transit::data::decrypt(c, mount, key, ciphertext, None)
            .await
            .map_err(|e| self.err(&format!("decrypting with {mount}/{key}"), e))?;
        base64::engine::general_purpose::STANDARD
            .decode(r.plaintext.as_bytes())
            .map_err(|e| {
                VaultError::Invalid(format!("{mount}/{key} decrypted to invalid base64: {e}"))
            })
    }

    /// Encrypts and decrypts a probe with `token`, as CircleCI's context service will.
    pub async fn probe(&self, token: &Secret, mount: &str, key: &str) -> Result<(), VaultError> {
        let c = self.client_for(token.expose())?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let probe = b64.encode(b"terraform-provider-circleci probe");
        let ct = vaultrs::transit::data::encrypt(&c, mount, key, &probe, None)
            .await
            .map_err(|e| {
                self.err(
                    &format!("encrypting with {mount}/{key} using the new token"),
                    e,
                )
            })?;
        let pt = vaultrs::transit::data::decrypt(&c, mount, key, &ct.ciphertext, None)
            .await
            .map_err(|e| {
                self.err(
                    &format!("decrypting with {mount}/{key} using the new token"),
                    e,
                )
            })?;
        if pt.plaintext != probe {
            return Err(VaultError::Invalid(format!(
                "{mount}/{key} decrypted the probe to something else"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport failure says why in words, or keeps the client's error as its
    /// source; either way the chain says it once.
    #[test]
    fn a_transport_failure_says_its_cause_once() {
        let by_source = VaultError::Transport {
            what: "reading key k".into(),
            address: "https://vault:8200".into(),
            detail: None,
            source: Some(Box::new(std::io::Error::other("connection reset"))),
        };
        assert_eq!(by_source.to_string(), "reading key k at https://vault:8200");
        assert_eq!(
            crate::backends::chain(&by_source),
            "reading key k at https://vault:8200: connection reset"
        );
        let in_words = VaultError::Transport {
            what: "reading key k".into(),
            address: "https://vault:8200".into(),
            detail: Some("no answer within 5s".into()),
            source: None,
        };
        assert_eq!(
            crate::backends::chain(&in_words),
            "reading key k at https://vault:8200: no answer within 5s"
        );
    }

    #[test]
    fn new_token_debug_hides_the_token() {
        let t = NewToken {
            token: Secret::new("s.abcdef"),
            accessor: "acc".into(),
            ttl: Duration::ZERO,
        };
        assert!(!format!("{t:?}").contains("abcdef"));
    }
}
