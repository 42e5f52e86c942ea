//! The `vault` block: the Vault (or OpenBao) admin client settings.

use crate::backends::vault::VaultConfig;
use crate::plugin::{AttrPath, Diagnostic, Diagnostics};
use crate::resources::model::Known;
use crate::resources::validate::Check;
use crate::secret::Secret;

use super::{deadline_doc, env_or, expand_home, Env, DEADLINE, DEFAULT_TIMEOUT, VAULT, VIA_DOC};

/// The block's description.
pub(super) const DOC: &str =
    "The Vault (or OpenBao) used by `circleci_vault_transit_client`, with a token that may manage \
     transit keys, policies and orphan tokens (the runbook uses the root token). Nothing connects \
     until a resource needs it.";

/// `address`: a Vault address the client accepts.
fn address_check(a: &str) -> Result<(), String> {
    crate::circleci::vault::Address::parse(a).map(|_| ())
}

crate::model! {
    /// The `vault` block.
    #[derive(Default)]
    pub(crate) struct VaultBlock {
        via_services_host: Known<bool> [optional, doc(VIA_DOC)],
        address: Known<String> [optional, check(Check::Text("Invalid Vault address", address_check)), doc(
            "Vault address, e.g. `https://vault.internal:8200`. Default: env `VAULT_ADDR`."
        )],
        token: Known<Secret> [optional, sensitive, doc(
            "Token to manage Vault with. Default: env `VAULT_TOKEN`."
        )],
        ca_cert_file: Known<String> [optional, doc(
            "CA certificate (PEM) that signed Vault's certificate. Default: env `VAULT_CACERT`; else the system's CAs."
        )],
        namespace: Known<String> [optional, doc(
            "Vault Enterprise namespace. Default: env `VAULT_NAMESPACE`."
        )],
        skip_tls_verify: Known<bool> [optional, doc(
            "Do not check Vault's certificate. Only for throw-away test set-ups; the provider warns on every plan."
        )],
        timeout: Known<String> [optional, check(DEADLINE), doc(deadline_doc(
            "Time allowed for each Vault request",
            "30s",
        ))],
    }
}

fn vault_path(attr: &str) -> AttrPath {
    AttrPath::root(VAULT).attr(attr)
}

/// The warnings (each attribute's own check is declared with it).
pub(super) fn validate(b: &VaultBlock, diags: &mut Diagnostics) {
    if b.address.value().is_some_and(|a| a.starts_with("http://")) {
        diags.push(
            Diagnostic::warning(
                "Vault address without TLS",
                "the Vault admin token and the client token the provider creates travel in plain text \
                 over http://; use https://",
            )
            .at(vault_path("address")),
        );
    }
    if b.skip_tls_verify.value() == Some(&true) {
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

/// The admin client's settings from a wholly known block (an absent one is empty),
/// with the `VAULT_*` variables of `env` as fallbacks.
pub(super) fn build(b: &VaultBlock, env: Env<'_>) -> Result<VaultConfig, Diagnostics> {
    let mut diags = Diagnostics::new();
    let timeout = super::deadline(
        &b.timeout,
        vault_path("timeout"),
        DEFAULT_TIMEOUT,
        &mut diags,
    );
    let address: String = env_or(&b.address, env, "VAULT_ADDR").unwrap_or_default();
    if address.is_empty() {
        diags.attr_error(
            vault_path("address"),
            "Vault address missing",
            "set vault.address or VAULT_ADDR",
        );
    } else if let Err(e) = crate::circleci::vault::Address::parse(&address) {
        diags.attr_error(vault_path("address"), "Invalid Vault address", e);
    }
    let token = env_or(&b.token, env, "VAULT_TOKEN").unwrap_or_else(|| Secret::new(String::new()));
    if token.expose().is_empty() {
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
        token,
        ca_cert_file: env_or::<String>(&b.ca_cert_file, env, "VAULT_CACERT")
            .map(|p| expand_home(&p)),
        namespace: env_or::<String>(&b.namespace, env, "VAULT_NAMESPACE").filter(|s| !s.is_empty()),
        skip_tls_verify: b.skip_tls_verify.value().copied().unwrap_or(false),
        timeout,
        route: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_config::{block, config, env_of, s, NO_ENV};
    use super::*;
    use crate::provider::test_config::paths;

    #[test]
    fn address_checks_and_warnings_name_their_attribute() {
        let validated = |f: fn(&mut VaultBlock)| {
            super::super::validate(&config(|c| c.vault = block(f)), NO_ENV)
        };
        let d = validated(|b| b.address = s("vault.internal"));
        assert_eq!(paths(&d), ["vault.address"]);
        assert!(d.has_errors());
        let d = validated(|b| {
            b.address = s("http://vault.internal:8200");
            b.skip_tls_verify = Known::Value(true);
        });
        assert_eq!(paths(&d), ["vault.address", "vault.skip_tls_verify"]);
        assert!(!d.has_errors(), "{d}");
    }

    #[test]
    fn unset_attributes_fall_back_to_vault_variables() {
        let env = env_of(&[
            ("VAULT_ADDR", "https://vault.internal:8200/"),
            ("VAULT_TOKEN", "root"),
            ("VAULT_NAMESPACE", ""),
        ]);
        let c = build(&VaultBlock::default(), &env).unwrap();
        assert_eq!(c.address, "https://vault.internal:8200");
        assert_eq!(c.token.expose(), "root");
        assert_eq!(c.namespace, None);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        let b = VaultBlock {
            token: s("mine"),
            namespace: s("ns"),
            ..Default::default()
        };
        let c = build(&b, &env).unwrap();
        assert_eq!(c.token.expose(), "mine");
        assert_eq!(c.namespace.as_deref(), Some("ns"));
        let d = build(&VaultBlock::default(), NO_ENV).err().unwrap();
        assert_eq!(paths(&d), ["vault.address", "vault.token"]);
    }
}
