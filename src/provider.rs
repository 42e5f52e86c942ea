//! The provider's own configuration, and the clients it hands to resources. Nothing
//! connects during configure: Terraform configures the provider on every run.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::backends::aws::{Aws, AwsSettings};
use crate::backends::mongo::MongoAdmin;
use crate::backends::postgres::{PgAdmin, PgConfig, SslMode};
use crate::backends::ssh::{self, HostKeyPolicy, Secret, ServicesHost, SshAuth, SshConfig};
use crate::backends::vault::{Vault, VaultConfig};
use crate::plugin::{
    AttrPath, Attribute, Block, ClientInfo, Diagnostic, Diagnostics, NestedBlock, Nesting,
    Provider, Resource, Schema, Type, Value,
};
use crate::resources::{self, validate};

pub const SERVICES_HOST: &str = "services_host";
pub const POSTGRES: &str = "postgres";
pub const VAULT: &str = "vault";
pub const MONGODB: &str = "mongodb";
pub const AWS: &str = "aws";

/// What resources get from the configured provider.
#[derive(Default)]
pub struct ProviderData {
    services: RwLock<Option<Result<Arc<ServicesHost>, Diagnostics>>>,
    postgres: RwLock<Option<Result<Arc<PgAdmin>, Diagnostics>>>,
    vault: RwLock<Option<Result<Arc<Vault>, Diagnostics>>>,
    mongo: RwLock<Option<Result<Arc<MongoAdmin>, Diagnostics>>>,
    aws: RwLock<Option<Result<Arc<Aws>, Diagnostics>>>,
    client: RwLock<ClientInfo>,
}

impl ProviderData {
    /// The Services machine, or an error saying why it is not usable.
    pub fn services(&self) -> Result<Arc<ServicesHost>, Diagnostics> {
        match &*self.services.read().unwrap_or_else(|e| e.into_inner()) {
            Some(r) => r.clone(),
            None => Err(Diagnostic::error(
                "Provider not configured",
                "the provider was not configured before this resource was used (a bug in Terraform or this provider)",
            )
            .into()),
        }
    }

    /// The PostgreSQL admin connection settings, or why there are none.
    pub fn postgres(&self) -> Result<Arc<PgAdmin>, Diagnostics> {
        match &*self.postgres.read().unwrap_or_else(|e| e.into_inner()) {
            Some(r) => r.clone(),
            None => Err(Diagnostic::error(
                "postgres not configured",
                "add a postgres block (the admin connection used to create the role and databases) to the \
                 provider \"circleci\" configuration, or set PGHOST and the other libpq environment variables",
            )
            .into()),
        }
    }

    /// The Vault admin client, or why there is none.
    pub fn vault(&self) -> Result<Arc<Vault>, Diagnostics> {
        match &*self.vault.read().unwrap_or_else(|e| e.into_inner()) {
            Some(r) => r.clone(),
            None => Err(Diagnostic::error(
                "vault not configured",
                "add a vault block (address and a token allowed to manage transit keys, policies and tokens) to \
                 the provider \"circleci\" configuration, or set VAULT_ADDR and VAULT_TOKEN",
            )
            .into()),
        }
    }

    /// The MongoDB admin client, or why there is none.
    pub fn mongo(&self) -> Result<Arc<MongoAdmin>, Diagnostics> {
        match &*self.mongo.read().unwrap_or_else(|e| e.into_inner()) {
            Some(r) => r.clone(),
            None => Err(Diagnostic::error(
                "mongodb not configured",
                "add a mongodb block (a connection string for a user that may manage users) to the provider \
                 \"circleci\" configuration, or set MONGODB_URI",
            )
            .into()),
        }
    }

    /// The AWS settings (the chain is loaded on first use), or why they are unusable.
    pub fn aws(&self) -> Result<Arc<Aws>, Diagnostics> {
        match &*self.aws.read().unwrap_or_else(|e| e.into_inner()) {
            Some(r) => r.clone(),
            None => Err(Diagnostic::error(
                "Provider not configured",
                "the provider was not configured before this resource was used (a bug in Terraform or this provider)",
            )
            .into()),
        }
    }

    pub fn client(&self) -> ClientInfo {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The SSH timeout, also used for the checks resources make.
    pub fn timeout(&self) -> Duration {
        match &*self.services.read().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(h)) => h.config().timeout,
            _ => DEFAULT_TIMEOUT,
        }
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct CircleCiProvider {
    data: Arc<ProviderData>,
}

impl Default for CircleCiProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl CircleCiProvider {
    pub fn new() -> Self {
        CircleCiProvider {
            data: Arc::new(ProviderData::default()),
        }
    }
}

fn services_host_block() -> Block {
    Block::new()
        .description("How to reach the CircleCI **Services machine** over SSH. Every resource writes its config file there.")
        .attr(Attribute::new("host", Type::String).optional().description(
            "Address of the Services machine. Default: env `CIRCLECI_SERVICES_HOST`.",
        ))
        .attr(Attribute::new("port", Type::Number).optional().description(
            "SSH port. Default: env `CIRCLECI_SERVICES_PORT`, else `22`.",
        ))
        .attr(Attribute::new("user", Type::String).optional().description(
            "SSH user. Default: env `CIRCLECI_SERVICES_USER`, else `ubuntu`.",
        ))
        .attr(Attribute::new("private_key", Type::String).optional().sensitive().description(
            "Private key (OpenSSH or PEM) to log in with. Conflicts with `private_key_file`. \
             When neither is set, the keys of the ssh-agent at `SSH_AUTH_SOCK` are used.",
        ))
        .attr(Attribute::new("private_key_file", Type::String).optional().description(
            "Path of the private key file (`~/` is expanded). Conflicts with `private_key`.",
        ))
        .attr(Attribute::new("host_key", Type::String).optional().description(
            "The Services machine's public host key, pinned, e.g. `ssh-ed25519 AAAA...` (a line of \
             `ssh-keyscan` output also works). One of `host_key`, `known_hosts_file` or \
             `insecure_ignore_host_key` is required.",
        ))
        .attr(Attribute::new("known_hosts_file", Type::String).optional().description(
            "A known_hosts file that lists the Services machine (`~/` is expanded).",
        ))
        .attr(Attribute::new("insecure_ignore_host_key", Type::Bool).optional().description(
            "Accept any host key. Only for throw-away test machines; the provider warns on every plan.",
        ))
        .attr(Attribute::new("sudo", Type::Bool).optional().description(
            "Read and write files as root through `sudo -n` when `user` is not root (the SFTP server is \
             started through sudo; no shell command is built from your input). Default `true`.",
        ))
        .attr(Attribute::new("timeout", Type::String).optional().description(
            "Time allowed to connect, and for each file operation and check, e.g. `30s` (default).",
        ))
}

fn postgres_block() -> Block {
    Block::new()
        .description(
            "The PostgreSQL administrator connection used to create the CircleCI role, databases and \
             extensions. Nothing connects until a resource needs it. Each attribute falls back to the \
             libpq environment variable named in its description.",
        )
        .attr(Attribute::new("host", Type::String).optional().description("Server address. Default: env `PGHOST`."))
        .attr(Attribute::new("port", Type::Number).optional().description("Port. Default: env `PGPORT`, else `5432`."))
        .attr(Attribute::new("username", Type::String).optional().description(
            "Administrator role (needs CREATEROLE and CREATEDB, or superuser). Default: env `PGUSER`, else `postgres`.",
        ))
        .attr(Attribute::new("password", Type::String).optional().sensitive().description(
            "Administrator password. Default: env `PGPASSWORD`.",
        ))
        .attr(Attribute::new("database", Type::String).optional().description(
            "Maintenance database to connect to. Default: env `PGDATABASE`, else `postgres`.",
        ))
        .attr(Attribute::new("sslmode", Type::String).optional().description(
            "`disable`, `prefer` (default), `require`, `verify-ca` or `verify-full`, with libpq's meanings: \
             `prefer` and `require` do not check the certificate; `verify-ca` checks it was signed by \
             `sslrootcert`; `verify-full` also checks the host name. Default: env `PGSSLMODE`.",
        ))
        .attr(Attribute::new("sslrootcert", Type::String).optional().description(
            "CA certificate file (PEM) for `verify-ca` and `verify-full`. Default: env `PGSSLROOTCERT`.",
        ))
        .attr(Attribute::new("connect_timeout", Type::String).optional().description(
            "Time allowed to connect, e.g. `15s` (default). Default: env `PGCONNECT_TIMEOUT` (seconds).",
        ))
}

fn vault_block() -> Block {
    Block::new()
        .description(
            "The Vault (or OpenBao) used by `circleci_vault_transit_client`, with a token that may manage \
             transit keys, policies and orphan tokens (the runbook uses the root token). Nothing connects \
             until a resource needs it.",
        )
        .attr(Attribute::new("address", Type::String).optional().description(
            "Vault address, e.g. `https://vault.internal:8200`. Default: env `VAULT_ADDR`.",
        ))
        .attr(Attribute::new("token", Type::String).optional().sensitive().description(
            "Token to manage Vault with. Default: env `VAULT_TOKEN`.",
        ))
        .attr(Attribute::new("ca_cert_file", Type::String).optional().description(
            "CA certificate (PEM) that signed Vault's certificate. Default: env `VAULT_CACERT`; else the system's CAs.",
        ))
        .attr(Attribute::new("namespace", Type::String).optional().description(
            "Vault Enterprise namespace. Default: env `VAULT_NAMESPACE`.",
        ))
        .attr(Attribute::new("skip_tls_verify", Type::Bool).optional().description(
            "Do not check Vault's certificate. Only for throw-away test set-ups; the provider warns on every plan.",
        ))
}

fn mongodb_block() -> Block {
    Block::new()
        .description(
            "The MongoDB used by `circleci_external_mongo`: a connection string for a user that may manage \
             users (e.g. `root` or `userAdminAnyDatabase`). Nothing connects until a resource needs it.",
        )
        .attr(Attribute::new("uri", Type::String).optional().sensitive().description(
            "Connection string, e.g. `mongodb://admin:PASSWORD@m1:27017,m2:27017/?replicaSet=rs0&tls=true`. \
             Default: env `MONGODB_URI`.",
        ))
        .attr(Attribute::new("tls_ca_file", Type::String).optional().description(
            "CA certificate (PEM) that signed the servers' certificates; turns TLS on.",
        ))
}

fn aws_block() -> Block {
    Block::new()
        .description(
            "AWS, for `circleci_nomad_client_launch_config` (EC2 Auto Scaling and launch templates). Unset \
             attributes fall back to the standard AWS chain: environment variables, the shared config and \
             credentials files (profiles, SSO), container and instance metadata. Nothing connects until a \
             resource needs it.",
        )
        .attr(Attribute::new("region", Type::String).optional().description(
            "AWS region of the Nomad client Auto Scaling group, e.g. `us-east-1`. Default: env `AWS_REGION`, \
             else the profile's region.",
        ))
        .attr(Attribute::new("profile", Type::String).optional().description(
            "Named profile of the shared AWS config and credentials files. Default: env `AWS_PROFILE`, else \
             `default`.",
        ))
        .attr(Attribute::new("endpoint", Type::String).optional().description(
            "Send every AWS request (Auto Scaling and EC2) to this URL instead of AWS's public endpoints: for \
             tests (moto) and private endpoints. Empty means unset. Default: env `AWS_ENDPOINT_URL`.",
        ))
}

fn aws_path(attr: &str) -> AttrPath {
    AttrPath::root(AWS).attr(attr)
}

fn validate_aws(b: &Value, diags: &mut Diagnostics) {
    if let Some(e) = b.get("endpoint").as_str().filter(|e| !e.is_empty()) {
        match url::Url::parse(e) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => diags.attr_error(
                aws_path("endpoint"),
                "Invalid endpoint",
                format!("{e:?} is not an http:// or https:// URL"),
            ),
        }
    }
    // Empty strings mean "unset" (the standard chain decides), as for endpoint.
    if let Some(r) = b.get("region").as_str().filter(|r| !r.is_empty()) {
        let ok = r
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if !ok {
            diags.attr_error(
                aws_path("region"),
                "Invalid region",
                format!("{r:?} is not an AWS region name (e.g. us-east-1)"),
            );
        }
    }
}

fn vault_path(attr: &str) -> AttrPath {
    AttrPath::root(VAULT).attr(attr)
}

fn validate_vault(b: &Value, diags: &mut Diagnostics) {
    if b.is_null() || b.is_unknown() {
        return;
    }
    if let Some(a) = b.get("address").as_str() {
        if let Err(e) = crate::circleci::vault::Address::parse(a) {
            diags.attr_error(vault_path("address"), "Invalid Vault address", e);
        }
    }
    if b.get("skip_tls_verify").as_bool() == Some(true) {
        diags.push(
            Diagnostic::warning(
                "Vault TLS verification is off",
                "skip_tls_verify = true: the Vault token is sent to whatever answers at this address. Use \
                 ca_cert_file instead for anything but a throw-away test set-up.",
            )
            .at(vault_path("skip_tls_verify")),
        );
    }
}

fn vault_config(b: &Value, timeout: Duration) -> Result<VaultConfig, Diagnostics> {
    let mut diags = Diagnostics::new();
    let address = env_or(b.get("address"), "VAULT_ADDR").unwrap_or_default();
    if address.is_empty() {
        diags.attr_error(
            vault_path("address"),
            "Vault address missing",
            "set vault.address or VAULT_ADDR",
        );
    } else if let Err(e) = crate::circleci::vault::Address::parse(&address) {
        diags.attr_error(vault_path("address"), "Invalid Vault address", e);
    }
    let token = env_or(b.get("token"), "VAULT_TOKEN").unwrap_or_default();
    if token.is_empty() {
        diags.attr_error(
            vault_path("token"),
            "Vault token missing",
            "set vault.token or VAULT_TOKEN",
        );
    }
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(VaultConfig {
        address: address.trim_end_matches('/').to_string(),
        token: Secret(token),
        ca_cert_file: env_or(b.get("ca_cert_file"), "VAULT_CACERT").map(|p| expand_home(&p)),
        namespace: env_or(b.get("namespace"), "VAULT_NAMESPACE").filter(|s| !s.is_empty()),
        skip_tls_verify: b.get("skip_tls_verify").as_bool().unwrap_or(false),
        timeout,
    })
}

fn pg_path(attr: &str) -> AttrPath {
    AttrPath::root(POSTGRES).attr(attr)
}

fn validate_postgres(b: &Value, diags: &mut Diagnostics) {
    if b.is_null() || b.is_unknown() {
        return;
    }
    if let Some(h) = b.get("host").as_str() {
        validate::host(h, pg_path("host"), diags);
    }
    validate::port(b.get("port"), pg_path("port"), diags);
    if let Some(m) = b.get("sslmode").as_str() {
        if SslMode::parse(m).is_none() {
            diags.attr_error(
                pg_path("sslmode"),
                "Invalid sslmode",
                format!("{m:?} is not one of {}", SslMode::ALL.join(", ")),
            );
        }
    }
    if let Some(t) = b.get("connect_timeout").as_str() {
        validate::duration(t, pg_path("connect_timeout"), diags);
    }
    if matches!(b.get("sslmode").as_str(), Some("verify-ca" | "verify-full"))
        && b.get("sslrootcert").is_null()
        && std::env::var("PGSSLROOTCERT").is_err()
    {
        diags.attr_error(
            pg_path("sslrootcert"),
            "CA certificate needed",
            "sslmode verify-ca and verify-full check the server's certificate against sslrootcert; set it \
             to the PEM file of the CA that signed the server's certificate",
        );
    }
}

fn pg_config(b: &Value) -> Result<PgConfig, Diagnostics> {
    let mut diags = Diagnostics::new();
    let host = env_or(b.get("host"), "PGHOST").unwrap_or_default();
    if host.is_empty() {
        diags.attr_error(
            pg_path("host"),
            "PostgreSQL address missing",
            "set postgres.host or PGHOST",
        );
    } else {
        validate::host(&host, pg_path("host"), &mut diags);
    }
    let port = match b.get("port") {
        Value::Null => match std::env::var("PGPORT").ok().filter(|s| !s.is_empty()) {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).unwrap_or_else(|| {
                diags.attr_error(
                    pg_path("port"),
                    "Invalid port",
                    format!("PGPORT={p:?} is not a port number"),
                );
                5432
            }),
            None => 5432,
        },
        v => validate::port(v, pg_path("port"), &mut diags).unwrap_or(5432),
    };
    let sslmode_s = env_or(b.get("sslmode"), "PGSSLMODE").unwrap_or_else(|| "prefer".into());
    let sslmode = SslMode::parse(&sslmode_s).unwrap_or_else(|| {
        diags.attr_error(
            pg_path("sslmode"),
            "Invalid sslmode",
            format!("{sslmode_s:?} is not one of {}", SslMode::ALL.join(", ")),
        );
        SslMode::Prefer
    });
    let connect_timeout = match b.get("connect_timeout").as_str() {
        Some(t) => validate::duration(t, pg_path("connect_timeout"), &mut diags),
        None => std::env::var("PGCONNECT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
    }
    .unwrap_or(Duration::from_secs(15));
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(PgConfig {
        host,
        port,
        user: env_or(b.get("username"), "PGUSER").unwrap_or_else(|| "postgres".into()),
        password: Secret(env_or(b.get("password"), "PGPASSWORD").unwrap_or_default()),
        database: env_or(b.get("database"), "PGDATABASE").unwrap_or_else(|| "postgres".into()),
        sslmode,
        sslrootcert: env_or(b.get("sslrootcert"), "PGSSLROOTCERT").map(|p| expand_home(&p)),
        connect_timeout,
    })
}

fn path(attr: &str) -> AttrPath {
    AttrPath::root(SERVICES_HOST).attr(attr)
}

fn env_or(v: &Value, env: &str) -> Option<String> {
    match v.as_str() {
        Some(s) => Some(s.to_string()),
        None => std::env::var(env).ok().filter(|s| !s.is_empty()),
    }
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

fn validate_services_host(b: &Value, diags: &mut Diagnostics) {
    if b.is_null() || b.is_unknown() {
        return;
    }
    if let Some(h) = b.get("host").as_str() {
        validate::host(h, path("host"), diags);
    }
    if !b.get("port").is_null() && !b.get("port").is_unknown() {
        validate::port(b.get("port"), path("port"), diags);
    }
    if let Some(t) = b.get("timeout").as_str() {
        validate::duration(t, path("timeout"), diags);
    }
    if b.get("private_key").as_str().is_some() && b.get("private_key_file").as_str().is_some() {
        diags.attr_error(
            path("private_key_file"),
            "Conflicting private keys",
            "set private_key or private_key_file, not both",
        );
    }
    if let Some(k) = b.get("host_key").as_str() {
        if let Err(e) = ssh::parse_host_key(k) {
            diags.attr_error(path("host_key"), "Invalid host key", e);
        }
    }
    let set = |n: &str| !b.get(n).is_null();
    let insecure = b.get("insecure_ignore_host_key").as_bool() == Some(true);
    let any_unknown = ["host_key", "known_hosts_file", "insecure_ignore_host_key"]
        .iter()
        .any(|n| b.get(n).is_unknown());
    let count = [set("host_key"), set("known_hosts_file"), insecure]
        .iter()
        .filter(|x| **x)
        .count();
    if !any_unknown && count == 0 {
        diags.attr_error(
            AttrPath::root(SERVICES_HOST),
            "No way to check the host key",
            "set one of host_key (pin the key: the output of `ssh-keyscan -p PORT HOST`), known_hosts_file, \
             or insecure_ignore_host_key = true (test machines only)",
        );
    } else if count > 1 {
        diags.attr_error(
            path("host_key"),
            "Conflicting host key settings",
            "set only one of host_key, known_hosts_file and insecure_ignore_host_key",
        );
    }
    if insecure {
        diags.push(
            Diagnostic::warning(
                "Host key checking is off",
                "insecure_ignore_host_key = true: the provider will write secrets to whatever machine answers \
                 at this address. Pin host_key for anything but a throw-away test machine.",
            )
            .at(path("insecure_ignore_host_key")),
        );
    }
}

fn ssh_config(b: &Value) -> Result<SshConfig, Diagnostics> {
    let mut diags = Diagnostics::new();
    let host = match env_or(b.get("host"), "CIRCLECI_SERVICES_HOST") {
        Some(h) => h,
        None => {
            diags.attr_error(
                path("host"),
                "Services machine address missing",
                "set services_host.host or the environment variable CIRCLECI_SERVICES_HOST",
            );
            String::new()
        }
    };
    if !host.is_empty() {
        validate::host(&host, path("host"), &mut diags);
    }
    let port = match b.get("port") {
        Value::Null => match std::env::var("CIRCLECI_SERVICES_PORT")
            .ok()
            .filter(|s| !s.is_empty())
        {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).unwrap_or_else(|| {
                diags.attr_error(
                    path("port"),
                    "Invalid port",
                    format!("CIRCLECI_SERVICES_PORT={p:?} is not a port number (1-65535)"),
                );
                22
            }),
            None => 22,
        },
        v => validate::port(v, path("port"), &mut diags).unwrap_or(22),
    };
    let user =
        env_or(b.get("user"), "CIRCLECI_SERVICES_USER").unwrap_or_else(|| "ubuntu".to_string());
    let auth = match (
        b.get("private_key").as_str(),
        b.get("private_key_file").as_str(),
    ) {
        (Some(k), _) => SshAuth::Key(Secret(k.to_string())),
        (None, Some(f)) => SshAuth::KeyFile(expand_home(f)),
        (None, None) => SshAuth::Agent,
    };
    let host_key = if let Some(k) = b.get("host_key").as_str() {
        match ssh::parse_host_key(k) {
            Ok(k) => HostKeyPolicy::Pinned(vec![k]),
            Err(e) => {
                diags.attr_error(path("host_key"), "Invalid host key", e);
                HostKeyPolicy::Pinned(vec![])
            }
        }
    } else if let Some(f) = b.get("known_hosts_file").as_str() {
        HostKeyPolicy::KnownHosts(expand_home(f))
    } else if b.get("insecure_ignore_host_key").as_bool() == Some(true) {
        HostKeyPolicy::Insecure
    } else {
        diags.attr_error(
            AttrPath::root(SERVICES_HOST),
            "No way to check the host key",
            "set one of host_key, known_hosts_file or insecure_ignore_host_key",
        );
        HostKeyPolicy::Pinned(vec![])
    };
    let timeout = match b.get("timeout").as_str() {
        Some(t) => validate::duration(t, path("timeout"), &mut diags).unwrap_or(DEFAULT_TIMEOUT),
        None => DEFAULT_TIMEOUT,
    };
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(SshConfig {
        host,
        port,
        user,
        auth,
        host_key,
        sudo: b.get("sudo").as_bool().unwrap_or(true),
        timeout,
    })
}

impl CircleCiProvider {
    fn configure_aws(&self, b: &Value, timeout: Duration) {
        let r = if !b.is_fully_known() {
            Err(Diagnostic::error(
                "Provider configuration not known yet",
                "aws depends on values known only after apply; apply those resources first (-target)",
            )
            .at(AttrPath::root(AWS))
            .into())
        } else {
            let s = |n: &str| {
                b.get(n)
                    .as_str()
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
            };
            Ok(Arc::new(Aws::new(AwsSettings {
                region: s("region"),
                profile: s("profile"),
                endpoint: s("endpoint"),
                timeout,
            })))
        };
        *self.data.aws.write().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }

    fn configure_mongo(&self, b: &Value) {
        let uri = if b.get("uri").is_unknown() {
            None
        } else {
            env_or(b.get("uri"), "MONGODB_URI")
        };
        let r = match uri {
            Some(u) => Some(Ok(Arc::new(MongoAdmin::new(
                Secret(u),
                b.get("tls_ca_file").as_str().map(expand_home),
                Duration::from_secs(15),
            )))),
            None if b.is_null() => None,
            None => Some(Err(Diagnostic::error(
                "MongoDB connection string missing or not known yet",
                "set mongodb.uri (or MONGODB_URI) to a value known at plan time",
            )
            .at(AttrPath::root(MONGODB).attr("uri"))
            .into())),
        };
        *self.data.mongo.write().unwrap_or_else(|e| e.into_inner()) = r;
    }

    fn configure_vault(&self, b: &Value) -> Diagnostics {
        let slot = &self.data.vault;
        if !b.is_fully_known() {
            let d: Diagnostics = Diagnostic::error(
                "Provider configuration not known yet",
                "vault depends on values known only after apply; apply those resources first (-target)",
            )
            .at(AttrPath::root(VAULT))
            .into();
            *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(Err(d));
            return Diagnostics::new();
        }
        if b.is_null() && std::env::var("VAULT_ADDR").is_err() {
            *slot.write().unwrap_or_else(|e| e.into_inner()) = None;
            return Diagnostics::new();
        }
        let r = vault_config(b, Duration::from_secs(30)).map(|c| Arc::new(Vault::new(c)));
        let diags = match &r {
            Err(d) if !b.is_null() => d.clone(),
            _ => Diagnostics::new(),
        };
        *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(r);
        diags
    }

    fn configure_postgres(&self, b: &Value) -> Diagnostics {
        let slot = &self.data.postgres;
        if !b.is_fully_known() {
            let d: Diagnostics = Diagnostic::error(
                "Provider configuration not known yet",
                "postgres depends on values known only after apply; apply those resources first (-target)",
            )
            .at(AttrPath::root(POSTGRES))
            .into();
            *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(Err(d));
            return Diagnostics::new();
        }
        if b.is_null() && std::env::var("PGHOST").is_err() {
            *slot.write().unwrap_or_else(|e| e.into_inner()) = None;
            return Diagnostics::new();
        }
        let r = pg_config(b).map(|c| Arc::new(PgAdmin::new(c)));
        let diags = match &r {
            Err(d) if !b.is_null() => d.clone(),
            _ => Diagnostics::new(),
        };
        *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(r);
        diags
    }
}

#[async_trait]
impl Provider for CircleCiProvider {
    fn schema(&self) -> Schema {
        Schema::new(
            0,
            Block::new()
                .description(
                    "Moves CircleCI Server 2.17's datastores to external services, following the runbook \
                     *Adding External Services to CircleCI Server v2.17*.",
                )
                .block(NestedBlock::new(SERVICES_HOST, Nesting::Single, services_host_block()))
                .block(NestedBlock::new(POSTGRES, Nesting::Single, postgres_block()))
                .block(NestedBlock::new(VAULT, Nesting::Single, vault_block()))
                .block(NestedBlock::new(MONGODB, Nesting::Single, mongodb_block()))
                .block(NestedBlock::new(AWS, Nesting::Single, aws_block())),
        )
    }

    fn resources(&self) -> Vec<Arc<dyn Resource>> {
        resources::all(self.data.clone())
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        validate_services_host(config.get(SERVICES_HOST), &mut diags);
        validate_postgres(config.get(POSTGRES), &mut diags);
        validate_vault(config.get(VAULT), &mut diags);
        validate_aws(config.get(AWS), &mut diags);
        if let Some(u) = config.get(MONGODB).get("uri").as_str() {
            if !u.starts_with("mongodb://") && !u.starts_with("mongodb+srv://") {
                diags.attr_error(
                    AttrPath::root(MONGODB).attr("uri"),
                    "Invalid connection string",
                    "it must start with mongodb:// (mongodb+srv:// is not supported: no DNS SRV resolver is built in)",
                );
            }
        }
        diags
    }

    async fn configure(&self, config: &Value, client: &ClientInfo) -> Diagnostics {
        let mut pg_diags = self.configure_postgres(config.get(POSTGRES));
        pg_diags.extend(self.configure_vault(config.get(VAULT)));
        self.configure_mongo(config.get(MONGODB));
        self.configure_aws(config.get(AWS), Duration::from_secs(30));
        *self.data.client.write().unwrap_or_else(|e| e.into_inner()) = client.clone();
        let b = config.get(SERVICES_HOST);
        if !b.is_fully_known() {
            let d: Diagnostics = Diagnostic::error(
                "Provider configuration not known yet",
                "services_host depends on values known only after apply; apply those resources first (-target)",
            )
            .at(AttrPath::root(SERVICES_HOST))
            .into();
            *self
                .data
                .services
                .write()
                .unwrap_or_else(|e| e.into_inner()) = Some(Err(d));
            // Not an error yet: a plan that creates resources needs no connection.
            return pg_diags;
        }
        let result = if b.is_null() && std::env::var("CIRCLECI_SERVICES_HOST").is_err() {
            Err(Diagnostic::error(
                "services_host not configured",
                "add a services_host block to the provider \"circleci\" configuration: every resource writes a \
                 config file on the CircleCI Services machine over SSH",
            )
            .at(AttrPath::root(SERVICES_HOST))
            .into())
        } else {
            ssh_config(b).map(|c| Arc::new(ServicesHost::new(c)))
        };
        // A missing block surfaces only when a resource needs the Services machine, so a
        // configuration with no resources yet still plans; a wrong block fails here.
        let diags = match &result {
            Err(d) if !b.is_null() => d.clone(),
            _ => Diagnostics::new(),
        };
        *self
            .data
            .services
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(result);
        pg_diags.extend(diags);
        pg_diags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(pairs: &[(&str, Value)]) -> Value {
        let mut v = Value::Null;
        for (k, x) in pairs {
            v.set(k, x.clone());
        }
        v
    }

    #[test]
    fn aws_block_checks_name_their_attribute() {
        let mut d = Diagnostics::new();
        validate_aws(
            &obj(&[
                ("region", Value::string("US East")),
                ("endpoint", Value::string("127.0.0.1:5000")),
            ]),
            &mut d,
        );
        let paths: Vec<String> =
            d.0.iter()
                .filter_map(|x| x.path.as_ref().map(|p| p.to_string()))
                .collect();
        assert_eq!(paths, vec!["aws.endpoint", "aws.region"]);
        let mut d = Diagnostics::new();
        validate_aws(
            &obj(&[
                ("region", Value::string("")),
                ("endpoint", Value::string("")),
                ("profile", Value::string("ops")),
            ]),
            &mut d,
        );
        assert!(d.is_empty(), "empty means unset: {d}");
        validate_aws(
            &obj(&[
                ("region", Value::string("eu-west-3")),
                ("endpoint", Value::string("http://127.0.0.1:55000")),
            ]),
            &mut d,
        );
        assert!(d.is_empty(), "{d}");
    }

    #[test]
    fn host_key_setting_is_required() {
        let mut d = Diagnostics::new();
        validate_services_host(&obj(&[("host", Value::string("10.0.1.5"))]), &mut d);
        assert!(d.has_errors());
        assert_eq!(d.0[0].path, Some(AttrPath::root(SERVICES_HOST)));
    }

    #[test]
    fn insecure_warns() {
        let mut d = Diagnostics::new();
        validate_services_host(
            &obj(&[
                ("host", Value::string("h")),
                ("insecure_ignore_host_key", Value::Bool(true)),
            ]),
            &mut d,
        );
        assert!(!d.has_errors());
        assert_eq!(d.0.len(), 1);
    }

    #[test]
    fn bad_values_name_their_attribute() {
        let mut d = Diagnostics::new();
        validate_services_host(
            &obj(&[
                ("host", Value::string("bad host!")),
                ("port", Value::int(70000)),
                ("timeout", Value::string("soon")),
                ("known_hosts_file", Value::string("/k")),
            ]),
            &mut d,
        );
        let paths: Vec<String> =
            d.0.iter()
                .filter_map(|x| x.path.as_ref().map(|p| p.to_string()))
                .collect();
        assert!(
            paths.contains(&"services_host.host".to_string()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"services_host.port".to_string()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"services_host.timeout".to_string()),
            "{paths:?}"
        );
    }
}
