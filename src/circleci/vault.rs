//! "Configuring External Vault": the context service's customizations file.

use super::envfile::{self, Style};
use crate::secret::Secret;

pub(crate) const DEFAULT_PATH: &str = "/etc/circleconfig/context-service/customizations";
pub(crate) const DEFAULT_MOUNT: &str = "transit";
pub(crate) const DEFAULT_KEY: &str = "context-service";
pub(crate) const DEFAULT_KEY_TYPE: &str = "aes256-gcm96";
pub(crate) const DEFAULT_PERIOD: &str = "168h";
pub(crate) const DEFAULT_RENEW_BEFORE: &str = "72h";

/// The policy name the runbook uses for a key: `<key>_policy`.
pub(crate) fn default_policy_name(key: &str) -> String {
    format!("{key}_policy")
}

/// Scheme, host and port of a Vault address, as the file spells them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

/// The port written in `scheme://host:port`, if any (IPv6 hosts in brackets).
fn explicit_port(s: &str) -> Option<u16> {
    let rest = s.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after_host = host_port.rsplit_once(']').map_or(host_port, |(_, p)| p);
    after_host.rsplit_once(':')?.1.parse().ok()
}

impl Address {
    /// Parses `https://vault.internal:8200`. Vault's default port 8200 applies when
    /// none is given. Paths, queries and credentials are refused.
    pub(crate) fn parse(s: &str) -> Result<Address, String> {
        let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let scheme = u.scheme().to_string();
        if scheme != "http" && scheme != "https" {
            return Err(format!("{s:?} must start with https:// (or http://)"));
        }
        if !u.username().is_empty()
            || u.password().is_some()
            || u.query().is_some()
            || u.fragment().is_some()
        {
            return Err(format!("{s:?} must be scheme://host:port only"));
        }
        if u.path() != "/" && !u.path().is_empty() {
            return Err(format!("{s:?} must not have a path"));
        }
        let host = match u.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(format!("{s:?} has no host")),
        };
        Ok(Address {
            scheme,
            host,
            // The url crate drops a scheme's default port (`https://v:443` has no port
            // for it): an explicit port is kept as written; none means Vault's 8200.
            port: u.port().or_else(|| explicit_port(s)).unwrap_or(8200),
        })
    }

    /// Plain HTTP to a host other than the loopback of whoever connects: what is
    /// sent (a token, a key's backup) crosses a network in clear.
    pub(crate) fn clear_over_network(&self) -> bool {
        let loopback = self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        self.scheme == "http" && !loopback
    }

    /// `scheme://host:port`, IPv6 hosts in brackets.
    pub(crate) fn url(&self) -> String {
        if self.host.contains(':') {
            format!("{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            format!("{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

/// The file. VAULT__URL is written out in full rather than as the runbook's
/// `$VAULT__SCHEME://...`; sourcing gives the same value.
pub(crate) fn render(
    addr: &Address,
    token: &str,
    mount: &str,
) -> Result<String, envfile::EnvFileError> {
    let port = addr.port.to_string();
    let url = addr.url();
    envfile::render(
        &[
            ("VAULT__SCHEME", &addr.scheme),
            ("VAULT__HOST", &addr.host),
            ("VAULT__PORT", &port),
            ("VAULT__URL", &url),
            ("VAULT__TOKEN", token),
            ("VAULT__MOUNT__TRANSIT", mount),
        ],
        Style::Export,
    )
}

/// What the file says (Debug hides the token).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct VaultFile {
    pub address: Address,
    pub token: Secret,
    pub mount: String,
}

/// Reads the file back; accepts the runbook's hand-written form too (VAULT__URL built
/// from the other three variables is not needed: scheme, host and port are read).
pub(crate) fn parse(text: &str) -> Result<VaultFile, String> {
    // The runbook writes `export VAULT__URL=$VAULT__SCHEME://...`, an expansion our
    // parser refuses on purpose; drop that one line, it adds nothing.
    let filtered: String = text
        .split_inclusive('\n')
        .filter(|l| {
            !l.trim_start()
                .trim_start_matches("export ")
                .trim_start()
                .starts_with("VAULT__URL=$")
        })
        .collect();
    let a = envfile::parse(&filtered).map_err(|e| e.to_string())?;
    let get = |k: &str| {
        envfile::lookup(&a, k)
            .map(str::to_string)
            .ok_or(format!("{k} is not set in the file"))
    };
    let scheme = get("VAULT__SCHEME")?;
    let host = get("VAULT__HOST")?;
    let port = get("VAULT__PORT")?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("VAULT__PORT {port:?} is not a port number"))?;
    Ok(VaultFile {
        address: Address { scheme, host, port },
        token: Secret::new(get("VAULT__TOKEN")?),
        mount: get("VAULT__MOUNT__TRANSIT")?,
    })
}

/// The policy CircleCI's token gets: `update` on encrypt and decrypt of one key. (The
/// runbook's `decrypt` capability does not exist, and its `*` covers every key.)
pub(crate) fn policy_hcl(mount: &str, key: &str) -> String {
    let m = mount.trim_matches('/');
    format!(
        "# Managed by Terraform (circleci_vault_transit_client): encrypt and decrypt with one key.\n\
         path \"{m}/encrypt/{key}\" {{\n  capabilities = [\"update\"]\n}}\n\n\
         path \"{m}/decrypt/{key}\" {{\n  capabilities = [\"update\"]\n}}\n"
    )
}

/// The key named in a policy written by [`policy_hcl`] (for import).
pub(crate) fn key_from_policy(rules: &str, mount: &str) -> Option<String> {
    let prefix = format!("path \"{}/encrypt/", mount.trim_matches('/'));
    let start = rules.find(&prefix)? + prefix.len();
    let end = rules[start..].find('"')? + start;
    Some(rules[start..end].to_string())
}

/// Splits the policies of a token lookup into `default` and the rest.
pub(crate) fn non_default_policies(p: &[String]) -> Vec<String> {
    p.iter()
        .filter(|x| *x != "default" && *x != "root")
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_default_ports_are_kept() {
        for (addr, port) in [
            ("https://vault.example.com:443", 443),
            ("http://vault.example.com:80", 80),
            ("https://vault.example.com", 8200),
            ("https://vault.example.com:8201", 8201),
            ("https://[::1]:443", 443),
            ("https://[::1]", 8200),
        ] {
            let a = Address::parse(addr).unwrap();
            assert_eq!(a.port, port, "{addr}");
        }
        assert_eq!(
            Address::parse("https://vault.example.com:443")
                .unwrap()
                .url(),
            "https://vault.example.com:443"
        );
    }

    #[test]
    fn policy_grants_update_on_one_key() {
        let p = policy_hcl("transit", "context-service");
        assert!(p.contains("path \"transit/encrypt/context-service\""));
        assert!(p.contains("path \"transit/decrypt/context-service\""));
        assert!(!p.contains("\"decrypt\"]"), "no such capability as decrypt");
        assert!(!p.contains('*'));
        assert_eq!(
            key_from_policy(&p, "transit").as_deref(),
            Some("context-service")
        );
    }

    #[test]
    fn addresses() {
        let a = Address::parse("https://vault.internal:8200").unwrap();
        assert_eq!(
            a,
            Address {
                scheme: "https".into(),
                host: "vault.internal".into(),
                port: 8200
            }
        );
        assert_eq!(Address::parse("https://vault.internal").unwrap().port, 8200);
        assert_eq!(
            Address::parse("https://[::1]:9200").unwrap().url(),
            "https://[::1]:9200"
        );
        for bad in [
            "vault.internal:8200",
            "ftp://v",
            "https://v:8200/v1",
            "https://u:p@v:1",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_round_trip_and_runbook_form() {
        let a = Address::parse("https://vault.internal:8200").unwrap();
        let text = render(&a, "s.token\"$", "transit").unwrap();
        let f = parse(&text).unwrap();
        assert_eq!(f.token.expose(), "s.token\"$");
        assert_eq!(f.address, a);
        assert!(!format!("{f:?}").contains("s.token"));
        let runbook = "export VAULT__SCHEME=\"https\"\nexport VAULT__HOST=\"v\"\nexport VAULT__PORT=\"8200\"\n\
                       export VAULT__URL=$VAULT__SCHEME://$VAULT__HOST:$VAULT__PORT\nexport VAULT__TOKEN=\"t\"\n\
                       export VAULT__MOUNT__TRANSIT=\"transit\"\n";
        assert_eq!(parse(runbook).unwrap().token.expose(), "t");
    }

    #[test]
    fn clear_text_is_plain_http_off_loopback() {
        let clear = |s: &str| Address::parse(s).unwrap().clear_over_network();
        assert!(clear("http://services.internal:8200"));
        assert!(clear("http://10.0.0.5:8200"));
        assert!(!clear("http://127.0.0.1:8200"));
        assert!(!clear("http://127.0.0.2:8200"));
        assert!(!clear("http://[::1]:8200"));
        assert!(!clear("http://LOCALHOST:8200"));
        assert!(!clear("https://services.internal:8200"));
    }
}
