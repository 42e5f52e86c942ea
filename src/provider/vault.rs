//! The `vault` block: the Vault (or OpenBao) admin client settings.

use crate::backends::vault::VaultConfig;
use crate::plugin::{AttrPath, Attribute, Block, Diagnostic, Diagnostics, Type, Value};
use crate::secret::Secret;

use super::{env_or, expand_home, DEFAULT_TIMEOUT, VAULT};

pub(super) fn block() -> Block {
    Block::new()
        .description(
            "The Vault (or OpenBao) used by `circleci_vault_transit_client`, with a token that may manage \
             transit keys, policies and orphan tokens (the runbook uses the root token). Nothing connects \
             until a resource needs it.",
        )
        .attr(super::via_attr())
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
        .attr(super::deadline_attr("timeout", "Time allowed for each Vault request", "30s"))
}

fn vault_path(attr: &str) -> AttrPath {
    AttrPath::root(VAULT).attr(attr)
}

pub(super) fn validate(b: &Value, diags: &mut Diagnostics) {
    if b.is_null() || b.is_unknown() {
        return;
    }
    super::validate_deadlines(b, VAULT, &["timeout"], diags);
    if let Some(a) = b.get("address").as_str() {
        if let Err(e) = crate::circleci::vault::Address::parse(a) {
            diags.attr_error(vault_path("address"), "Invalid Vault address", e);
        }
    }
    if b.get("address")
        .as_str()
        .is_some_and(|a| a.starts_with("http://"))
    {
        diags.push(
            Diagnostic::warning(
                "Vault address without TLS",
                "the Vault admin token and the client token the provider creates travel in plain text \
                 over http://; use https://",
            )
            .at(vault_path("address")),
        );
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

pub(super) fn build(b: &Value) -> Result<VaultConfig, Diagnostics> {
    let mut diags = Diagnostics::new();
    let timeout = super::deadline(b, VAULT, "timeout", DEFAULT_TIMEOUT, &mut diags);
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
        token: Secret::new(token),
        ca_cert_file: env_or(b.get("ca_cert_file"), "VAULT_CACERT").map(|p| expand_home(&p)),
        namespace: env_or(b.get("namespace"), "VAULT_NAMESPACE").filter(|s| !s.is_empty()),
        skip_tls_verify: b.get("skip_tls_verify").as_bool().unwrap_or(false),
        timeout,
        route: Default::default(),
    })
}
