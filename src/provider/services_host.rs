//! The `services_host` block: how to reach the CircleCI Services machine over SSH.

use crate::backends::ssh::{self, HostKeyPolicy, SshAuth, SshConfig};
use crate::plugin::{AttrPath, Attribute, Block, Diagnostic, Diagnostics, Type, Value};
use crate::resources::validate;
use crate::secret::Secret;

use super::{env_or, expand_home, DEFAULT_TIMEOUT, SERVICES_HOST};

/// The longest SSH timeout accepted.
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

pub(super) fn block() -> Block {
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

pub(super) fn validate(b: &Value, diags: &mut Diagnostics) {
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
        validate::duration_at_most(t, MAX_TIMEOUT, path("timeout"), diags);
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

pub(super) fn build(b: &Value) -> Result<SshConfig, Diagnostics> {
    let mut diags = Diagnostics::new();
    let host = env_or(b.get("host"), "CIRCLECI_SERVICES_HOST").unwrap_or_default();
    if host.is_empty() {
        diags.attr_error(
            path("host"),
            "Services machine address missing",
            "set services_host.host or the environment variable CIRCLECI_SERVICES_HOST",
        );
    }
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
        (Some(k), _) => SshAuth::Key(Secret::new(k.to_string())),
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
        Some(t) => validate::duration_at_most(t, MAX_TIMEOUT, path("timeout"), &mut diags)
            .unwrap_or(DEFAULT_TIMEOUT),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_setting_is_required() {
        let mut d = Diagnostics::new();
        validate(
            &Value::object(&[("host", Value::string("10.0.1.5"))]),
            &mut d,
        );
        assert!(d.has_errors());
        assert_eq!(d.0[0].path, Some(AttrPath::root(SERVICES_HOST)));
    }

    #[test]
    fn insecure_warns() {
        let mut d = Diagnostics::new();
        validate(
            &Value::object(&[
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
        validate(
            &Value::object(&[
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
