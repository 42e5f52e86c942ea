//! The provider's own configuration, and the clients it hands to resources. Nothing
//! connects during configure: Terraform configures the provider on every run.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::backends::ssh::{self, HostKeyPolicy, Secret, ServicesHost, SshAuth, SshConfig};
use crate::plugin::{
    AttrPath, Attribute, Block, ClientInfo, Diagnostic, Diagnostics, NestedBlock, Nesting,
    Provider, Resource, Schema, Type, Value,
};
use crate::resources::{self, validate};

pub const SERVICES_HOST: &str = "services_host";

/// What resources get from the configured provider.
#[derive(Default)]
pub struct ProviderData {
    services: RwLock<Option<Result<Arc<ServicesHost>, Diagnostics>>>,
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
                .block(NestedBlock::new(SERVICES_HOST, Nesting::Single, services_host_block())),
        )
    }

    fn resources(&self) -> Vec<Arc<dyn Resource>> {
        resources::all(self.data.clone())
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        validate_services_host(config.get(SERVICES_HOST), &mut diags);
        diags
    }

    async fn configure(&self, config: &Value, client: &ClientInfo) -> Diagnostics {
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
                .unwrap_or_else(|e| e.into_inner()) = Some(Err(d.clone()));
            return d;
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
        diags
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
