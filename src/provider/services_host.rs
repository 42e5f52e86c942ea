//! The `services_host` block: how to reach the CircleCI Services machine over SSH.

use crate::backends::ssh::{self, HostKeyPolicy, SshAuth, SshConfig};
use crate::plugin::value::Number;
use crate::plugin::{AttrPath, Diagnostic, Diagnostics, Value};
use crate::resources::model::Known;
use crate::resources::validate::{self, Check};
use crate::secret::Secret;

use super::{env_or, expand_home, Env, DEFAULT_TIMEOUT, SERVICES_HOST};

/// The longest SSH timeout accepted.
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The block's description.
pub(super) const DOC: &str =
    "How to reach the CircleCI **Services machine** over SSH. Every resource writes its config file there.";

crate::model! {
    /// The `services_host` block.
    #[derive(Default)]
    pub(crate) struct ServicesHostBlock {
        host: Known<String> [optional, check(Check::Host), doc(
            "Address of the Services machine. Default: env `CIRCLECI_SERVICES_HOST`."
        )],
        port: Known<Number> [optional, check(Check::Port), doc(
            "SSH port. Default: env `CIRCLECI_SERVICES_PORT`, else `22`."
        )],
        user: Known<String> [optional, doc(
            "SSH user. Default: env `CIRCLECI_SERVICES_USER`, else `ubuntu`."
        )],
        private_key: Known<Secret> [optional, sensitive, doc(
            "Private key (OpenSSH or PEM) to log in with. Conflicts with `private_key_file`. \
             When neither is set, the keys of the ssh-agent at `SSH_AUTH_SOCK` are used."
        )],
        private_key_file: Known<String> [optional, doc(
            "Path of the private key file (`~/` is expanded). Conflicts with `private_key`."
        )],
        host_key: Known<String> [optional, doc(
            "The Services machine's public host key, pinned, e.g. `ssh-ed25519 AAAA...` (a line of \
             `ssh-keyscan` output also works). One of `host_key`, `known_hosts_file` or \
             `insecure_ignore_host_key` is required."
        )],
        known_hosts_file: Known<String> [optional, doc(
            "A known_hosts file that lists the Services machine (`~/` is expanded)."
        )],
        insecure_ignore_host_key: Known<bool> [optional, doc(
            "Accept any host key. Only for throw-away test machines; the provider warns on every plan."
        )],
        sudo: Known<bool> [optional, doc(
            "Read and write files as root through `sudo -n` when `user` is not root (the SFTP server is \
             started through sudo; no shell command is built from your input). Default `true`."
        )],
        timeout: Known<String> [optional, check(Check::Duration {
            min_secs: 0,
            max_secs: MAX_TIMEOUT.as_secs()
        }), doc(
            "Time allowed to connect, and for each file operation and check, e.g. `30s` (default)."
        )],
    }
}

fn path(attr: &str) -> AttrPath {
    AttrPath::root(SERVICES_HOST).attr(attr)
}

/// The rules across attributes (each attribute's own check is declared with it).
pub(super) fn validate(b: &ServicesHostBlock, diags: &mut Diagnostics) {
    if b.private_key.value().is_some() && b.private_key_file.value().is_some() {
        diags.attr_error(
            path("private_key_file"),
            "Conflicting private keys",
            "set private_key or private_key_file, not both",
        );
    }
    if let Some(k) = b.host_key.value() {
        if let Err(e) = ssh::parse_host_key(k) {
            diags.attr_error(path("host_key"), "Invalid host key", e);
        }
    }
    let insecure = b.insecure_ignore_host_key.value() == Some(&true);
    let any_unknown = b.host_key.is_unknown()
        || b.known_hosts_file.is_unknown()
        || b.insecure_ignore_host_key.is_unknown();
    let count = [
        !b.host_key.is_null(),
        !b.known_hosts_file.is_null(),
        insecure,
    ]
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

/// The SSH settings of a wholly known block (an absent one is empty), with the
/// `CIRCLECI_SERVICES_*` variables of `env` as fallbacks.
pub(super) fn build(b: &ServicesHostBlock, env: Env<'_>) -> Result<SshConfig, Diagnostics> {
    let mut diags = Diagnostics::new();
    let host: String = env_or(&b.host, env, "CIRCLECI_SERVICES_HOST").unwrap_or_default();
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
    let port = match b.port.value() {
        None => match env("CIRCLECI_SERVICES_PORT").filter(|s| !s.is_empty()) {
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
        Some(n) => validate::port(&Value::Number(*n), path("port"), &mut diags).unwrap_or(22),
    };
    let user =
        env_or(&b.user, env, "CIRCLECI_SERVICES_USER").unwrap_or_else(|| "ubuntu".to_string());
    let auth = match (b.private_key.value(), b.private_key_file.value()) {
        (Some(k), _) => SshAuth::Key(k.clone()),
        (None, Some(f)) => SshAuth::KeyFile(expand_home(f)),
        (None, None) => SshAuth::Agent,
    };
    let host_key = if let Some(k) = b.host_key.value() {
        match ssh::parse_host_key(k) {
            Ok(k) => HostKeyPolicy::Pinned(vec![k]),
            Err(e) => {
                diags.attr_error(path("host_key"), "Invalid host key", e);
                HostKeyPolicy::Pinned(vec![])
            }
        }
    } else if let Some(f) = b.known_hosts_file.value() {
        HostKeyPolicy::KnownHosts(expand_home(f))
    } else if b.insecure_ignore_host_key.value() == Some(&true) {
        HostKeyPolicy::Insecure
    } else {
        diags.attr_error(
            AttrPath::root(SERVICES_HOST),
            "No way to check the host key",
            "set one of host_key, known_hosts_file or insecure_ignore_host_key",
        );
        HostKeyPolicy::Pinned(vec![])
    };
    let timeout = match b.timeout.value() {
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
        sudo: b.sudo.value().copied().unwrap_or(true),
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_config::{block, config, env_of, s, NO_ENV};
    use super::*;
    use crate::provider::test_config::paths;

    fn validated(f: impl FnOnce(&mut ServicesHostBlock)) -> Diagnostics {
        super::super::validate(&config(|c| c.services_host = block(f)), NO_ENV)
    }

    #[test]
    fn host_key_setting_is_required() {
        let d = validated(|b| b.host = s("10.0.1.5"));
        assert!(d.has_errors());
        assert_eq!(d.0[0].path, Some(AttrPath::root(SERVICES_HOST)));
        let d = validated(|b| {
            b.host_key = Known::Unknown;
        });
        assert!(d.is_empty(), "an unknown setting may be the one: {d}");
    }

    #[test]
    fn insecure_warns() {
        let d = validated(|b| {
            b.host = s("h");
            b.insecure_ignore_host_key = Known::Value(true);
        });
        assert!(!d.has_errors());
        assert_eq!(paths(&d), ["services_host.insecure_ignore_host_key"]);
    }

    #[test]
    fn bad_values_name_their_attribute() {
        let d = validated(|b| {
            b.host = s("bad host!");
            b.port = Known::Value(Number::Int(70000));
            b.timeout = s("soon");
            b.known_hosts_file = s("/k");
            b.private_key = s("k");
            b.private_key_file = s("/f");
        });
        assert_eq!(
            paths(&d),
            [
                "services_host.host",
                "services_host.port",
                "services_host.timeout",
                "services_host.private_key_file"
            ]
        );
    }

    #[test]
    fn unset_attributes_fall_back_to_the_environment() {
        let b = ServicesHostBlock {
            known_hosts_file: s("/k"),
            ..Default::default()
        };
        let env = env_of(&[
            ("CIRCLECI_SERVICES_HOST", "10.0.0.5"),
            ("CIRCLECI_SERVICES_PORT", "2222"),
            ("CIRCLECI_SERVICES_USER", "ops"),
        ]);
        let c = build(&b, &env).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str()),
            ("10.0.0.5", 2222, "ops")
        );
        assert!(c.sudo);
        assert!(matches!(c.auth, SshAuth::Agent));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        // The configuration wins over the environment.
        let b = ServicesHostBlock {
            host: s("services.internal"),
            port: Known::Value(Number::Int(22)),
            user: s("root"),
            sudo: Known::Value(false),
            ..b
        };
        let c = build(&b, &env).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str()),
            ("services.internal", 22, "root")
        );
        assert!(!c.sudo);
        // Defaults with no environment; a missing host and a bad port are named.
        let d = build(&ServicesHostBlock::default(), NO_ENV).err().unwrap();
        assert_eq!(paths(&d), ["services_host.host", "services_host"]);
        let env = env_of(&[
            ("CIRCLECI_SERVICES_HOST", "h"),
            ("CIRCLECI_SERVICES_PORT", "0"),
        ]);
        let d = build(&b, &env);
        assert!(d.is_ok(), "the configured port wins");
        let d = build(
            &ServicesHostBlock {
                port: Known::Null,
                ..b
            },
            &env,
        )
        .err()
        .unwrap();
        assert_eq!(paths(&d), ["services_host.port"]);
        assert!(
            d.0[0].detail.contains("CIRCLECI_SERVICES_PORT=\"0\""),
            "{d}"
        );
    }
}
