//! `circleci_vault_transit_client`: the runbook's "Configuring External Vault". A
//! transit key, a policy that may only encrypt and decrypt with it, and an orphan
//! periodic token with that policy, written straight from Vault into the context
//! service's customizations file. The token never enters the Terraform state: the
//! state keeps its accessor and the file's hash.

use std::sync::Arc;

use async_trait::async_trait;

use super::config_file::{
    cannot_import, record_version, Change, Common, Compat, FileAttrs, FileResource, Found, Halted,
    PlannedContent, Prepared, Refresh, Spec,
};
use super::model::{Known, Model, Undecoded};
use super::validate::{self, Check};
use crate::backends::vault::{self as vb, NewToken, Vault, VaultError};
use crate::circleci::vault::{self as file, Address};
use crate::circleci::versions;
use crate::plugin::{AttrPath, Diagnostic, Diagnostics, PlanRequest, Value};
use crate::provider::ProviderData;
use crate::secret::Secret;

/// The longest token period accepted: a year.
const MAX_PERIOD: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

pub(crate) struct VaultTransitClient {
    data: Arc<ProviderData>,
}

impl VaultTransitClient {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        VaultTransitClient { data }
    }
}

crate::model! {
    /// `circleci_vault_transit_client`'s own attributes. A change of mount, key, key type
    /// or policy makes a new key/policy pairing: it replaces the resource.
    pub(crate) struct VaultClient / VaultClientAtPlan {
        transit_mount: String [default(file::DEFAULT_MOUNT.to_string()),
            check(Check::Text("Invalid name", check_name)), replaces, doc(
            "Path of the transit secrets engine. It must exist unless `create_mount` is set."
        )],
        create_mount: bool [default(false), doc(
            "Enable the transit engine at `transit_mount` if it is missing."
        )],
        key_name: String [default(file::DEFAULT_KEY.to_string()),
            check(Check::Text("Invalid name", check_name)), replaces, doc(
            "Transit key name. An existing key is adopted."
        )],
        key_type: String [default(file::DEFAULT_KEY_TYPE.to_string()),
            check(Check::OneOf(&vb::KEY_TYPES)), replaces, doc(
            "`aes256-gcm96`, `aes128-gcm96` (Vault 1.4 or later) or `chacha20-poly1305`; used when \
             the key is created."
        )],
        policy_name: String [optional, computed, check(Check::Text("Invalid name", check_name)),
            replaces, doc(
            "Name of the policy. Default `<key_name>_policy` (the runbook's `context-service_policy`)."
        )],
        token_period: String [default(file::DEFAULT_PERIOD.to_string()), doc(
            "Period of the client token: it lives as long as it is renewed within it."
        )],
        token_renew_before: String [default(file::DEFAULT_RENEW_BEFORE.to_string()), doc(
            "Refresh renews the token when less than this is left."
        )],
        address_for_services: String [optional, computed,
            check(Check::Text("Invalid address", check_address)), doc(
            "The Vault URL the Services machine uses, written to the file. Default: the provider's \
             `vault.address`."
        )],
        delete_key_on_destroy: bool [default(false), doc(
            "Delete the transit key on destroy. Losing the key makes every stored context unreadable."
        )],
        token_accessor: Known<String> [computed, doc(
            "Accessor of the client token (not the token). Empty after refresh when the token was \
             revoked or expired; the next apply then creates a new one."
        )],
        token_expire_time: Known<String> [computed, doc(
            "When the client token expires unless renewed (RFC 3339)."
        )],
        policy: Known<String> [computed, doc(
            "The policy's HCL, as written to Vault; refresh shows it as Vault has it."
        )],
    }
}

struct Inputs {
    mount: String,
    create_mount: bool,
    key: String,
    key_type: String,
    policy_name: String,
    period: String,
    renew_before: std::time::Duration,
    address: String,
    delete_key: bool,
    verify: bool,
    path: String,
    /// Unknown when the plan makes a new token.
    accessor: Known<String>,
}

/// The settings of a planned value or a stored state (defaults filled).
fn inputs(v: &Value) -> Result<Inputs, Diagnostics> {
    let m = VaultClient::decode(v)?;
    let common = Common::of(v)?;
    let renew_before = humantime::parse_duration(&m.token_renew_before).map_err(|e| {
        Diagnostics::from(
            Diagnostic::error("Invalid token_renew_before", e.to_string())
                .at(AttrPath::root("token_renew_before")),
        )
    })?;
    Ok(Inputs {
        mount: m.transit_mount,
        create_mount: m.create_mount,
        key: m.key_name,
        key_type: m.key_type,
        policy_name: m.policy_name,
        period: m.token_period,
        renew_before,
        address: m.address_for_services,
        delete_key: m.delete_key_on_destroy,
        verify: common.verify,
        path: common.config_path,
        accessor: m.token_accessor,
    })
}

fn vault_diag(summary: &str, e: VaultError) -> Diagnostics {
    Diagnostic::error(summary, crate::backends::chain(&e)).into()
}

/// A name Vault accepts in a path segment: no slashes, spaces or control characters
/// (leading and trailing slashes are tolerated).
pub(crate) fn check_name(raw: &str) -> Result<(), String> {
    let v = raw.trim_matches('/');
    if v.is_empty() {
        return Err(format!("{raw:?} must not be empty"));
    }
    if v.chars()
        .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{raw:?} may contain only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn check_address(a: &str) -> Result<(), String> {
    Address::parse(a).map(|_| ())
}

impl VaultTransitClient {
    /// Mount, key and policy; then, when the plan asks for one, a new token, checked and
    /// rendered into the file (the core writes it; `finish` revokes what must go).
    async fn apply(&self, planned: &Value) -> Result<Prepared<Option<NewToken>>, Diagnostics> {
        let i = inputs(planned)?;
        // What the state records: the plan, with the policy as written.
        let mut out = VaultClient::decode(planned)?;
        let vault = self.data.vault()?;
        let addr = Address::parse(&i.address).map_err(|e| {
            Diagnostics::from(
                Diagnostic::error("Invalid address", e).at(AttrPath::root("address_for_services")),
            )
        })?;
        // Before anything is created: a Vault older than CircleCI's is refused.
        let found = Found {
            version: vault
                .version()
                .await
                .map_err(|e| vault_diag("Could not reach Vault", e))?,
            at: vault.config().address.clone(),
        };
        if let Some(c) = &Self::SPEC.compat {
            c.refuse(&found, &i.path)?;
        }
        if !vault
            .mount_exists(&i.mount)
            .await
            .map_err(|e| vault_diag("Could not reach Vault", e))?
        {
            if !i.create_mount {
                return Err(Diagnostic::error(
                    "Transit engine not enabled",
                    format!(
                        "there is no secrets engine at {:?} on {}. The runbook expects transit to be enabled \
                         (`vault secrets enable transit`); or set create_mount = true.",
                        i.mount,
                        vault.config().address
                    ),
                )
                .at(AttrPath::root("transit_mount"))
                .into());
            }
            vault
                .enable_transit(&i.mount)
                .await
                .map_err(|e| vault_diag("Could not enable the transit engine", e))?;
        }
        if !vault
            .key_exists(&i.mount, &i.key)
            .await
            .map_err(|e| vault_diag("Could not read the transit key", e))?
        {
            vault
                .create_key(&i.mount, &i.key, &i.key_type)
                .await
                .map_err(|e| vault_diag("Could not create the transit key", e))?;
            log::info!("created transit key {}/{}", i.mount, i.key);
        }
        let hcl = file::policy_hcl(&i.mount, &i.key);
        vault
            .write_policy(&i.policy_name, &hcl)
            .await
            .map_err(|e| vault_diag("Could not write the policy", e))?;

        let mut state = planned.clone();
        out.policy = Known::Value(hcl);
        out.encode(&mut state);
        record_version(
            &mut state,
            planned,
            i.verify.then_some(found.version.as_str()),
        );
        if i.accessor != Known::Unknown {
            return Ok(Prepared {
                state,
                content: None,
                pending: None,
            });
        }
        let check = vault.with_route(
            self.data
                .check_route(planned, || Ok(vault.config().route.clone()))?,
        );
        let new = vault
            .create_token(&i.policy_name, &i.period, &format!("circleci-{}", i.key))
            .await
            .map_err(|e| vault_diag("Could not create the client token", e))?;
        match self.check_and_render(&check, &i, &addr, &new.token).await {
            Ok(content) => Ok(Prepared {
                state,
                content: Some(content),
                pending: Some(new),
            }),
            Err(mut d) => {
                // Leave nothing half-done: the new token goes away again.
                d.extend(revoke_unused(&vault, &new).await);
                Err(d)
            }
        }
    }

    /// Probe the token (if asked), then render the file.
    async fn check_and_render(
        &self,
        vault: &Vault,
        i: &Inputs,
        addr: &Address,
        token: &Secret,
    ) -> Result<String, Diagnostics> {
        if i.verify {
            vault.probe(token, &i.mount, &i.key).await.map_err(|e| {
                Diagnostics::from(
                    Diagnostic::error(
                        "The new token cannot use the key",
                        format!(
                            "{}. The token was revoked and nothing was written.",
                            crate::backends::chain(&e)
                        ),
                    )
                    .at(AttrPath::root("verify")),
                )
            })?;
        }
        file::render(addr, token.expose(), &i.mount).map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Could not render the Vault config file",
                e.to_string(),
            ))
        })
    }
}

/// Records the client token in `state`: its accessor, and when it expires (empty
/// while not known).
fn record_token(state: &mut Value, accessor: &str, expire: String) -> Result<(), Undecoded> {
    let mut m = VaultClient::decode(state)?;
    m.token_accessor = Known::Value(accessor.to_string());
    m.token_expire_time = Known::Value(expire);
    m.encode(state);
    Ok(())
}

/// Revokes a token that was made but is not used; a failure is a warning naming the
/// accessor, so the operator can revoke it by hand.
async fn revoke_unused(vault: &Vault, new: &NewToken) -> Diagnostics {
    match vault.revoke_accessor(&new.accessor).await {
        Ok(()) => Diagnostics::new(),
        Err(e) => Diagnostic::warning(
            "Unused client token not revoked",
            format!(
                "a client token (accessor {}) was created but not used, and revoking it failed: {}. \
                 Revoke it by hand: vault token revoke -accessor {}",
                new.accessor,
                crate::backends::chain(&e),
                new.accessor
            ),
        )
        .into(),
    }
}

#[async_trait]
impl FileResource for VaultTransitClient {
    type Pending = Option<NewToken>;
    type Own = VaultClient;

    const SPEC: Spec = Spec {
        type_name: "circleci_vault_transit_client",
        description: "Connects CircleCI's context service to an external Vault (runbook: *Configuring \
                      External Vault*). Creates the transit key (kept on destroy by default), a policy \
                      allowing only `update` on `<mount>/encrypt/<key>` and `<mount>/decrypt/<key>`, and an \
                      orphan periodic client token with that policy; checks the token can encrypt and \
                      decrypt; and writes `VAULT__SCHEME`, `VAULT__HOST`, `VAULT__PORT`, `VAULT__URL`, \
                      `VAULT__TOKEN` and `VAULT__MOUNT__TRANSIT` to the customizations file (mode 0600). \
                      **The token never enters the Terraform state**: it goes from Vault straight into the \
                      file; the state keeps its accessor. Refresh renews the token when less than \
                      `token_renew_before` is left, and reports a revoked token, a missing key, a changed \
                      policy and a changed or missing file.",
        what: "Vault",
        default_path: file::DEFAULT_PATH,
        default_path_doc: "`/etc/circleconfig/context-service/customizations`",
        verify_doc: "Encrypt and decrypt a probe with the new token before writing the file. Default `true`.",
        drift_doc: ", the client token revoked or expired, the transit key missing; a non-empty value \
                    also makes a new token",
        secret_in_file: true,
        changes: Some("The transit key and the policy"),
        compat: Some(Compat {
            table: versions::VAULT,
            attr: None,
        }),
    };

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        let c = match VaultClientAtPlan::decode(config) {
            Ok(c) => c,
            Err(e) => return diags.extend(e.into()),
        };
        if matches!(&c.address_for_services, Known::Value(a) if a.starts_with("http://")) {
            diags.push(
                Diagnostic::warning(
                    "Vault address without TLS",
                    "CircleCI's context service will send its Vault token in plain text over http://; use \
                     https://",
                )
                .at(AttrPath::root("address_for_services")),
            );
        }
        // Each bound checked where it is set; the two compared once both are known (a
        // null one at its default).
        let mut within = |k: &Known<String>, name: &str, default: &str| match k {
            Known::Value(x) => {
                validate::duration_at_most(x, MAX_PERIOD, AttrPath::root(name), diags).map(Some)
            }
            Known::Null => Some(humantime::parse_duration(default).ok()),
            Known::Unknown => None,
        };
        let period = within(&c.token_period, "token_period", file::DEFAULT_PERIOD);
        let before = within(
            &c.token_renew_before,
            "token_renew_before",
            file::DEFAULT_RENEW_BEFORE,
        );
        if let (Some(Some(p)), Some(Some(b))) = (period, before) {
            if b >= p {
                diags.attr_error(
                    AttrPath::root("token_renew_before"),
                    "Renewal window too long",
                    "token_renew_before must be shorter than token_period, or every refresh renews the token",
                );
            }
        }
    }

    async fn plan(&self, req: &PlanRequest<'_>, planned: &mut Value, diags: &mut Diagnostics) {
        let (cfg, mut p) = match (
            VaultClientAtPlan::decode(req.config),
            VaultClientAtPlan::decode(planned),
        ) {
            (Ok(c), Ok(p)) => (c, p),
            (Err(e), _) | (_, Err(e)) => return diags.extend(e.into()),
        };
        if cfg.policy_name.is_null() {
            p.policy_name = match &p.key_name {
                Known::Value(k) => Known::Value(file::default_policy_name(k)),
                _ => Known::Unknown,
            };
        }
        if cfg.address_for_services.is_null() {
            p.address_for_services = match self.data.vault() {
                Ok(v) => Known::Value(v.config().address.clone()),
                Err(d) => {
                    diags.extend(d);
                    Known::Unknown
                }
            };
        }
        p.policy = match (&p.transit_mount, &p.key_name) {
            (Known::Value(m), Known::Value(k)) => Known::Value(file::policy_hcl(m, k)),
            _ => Known::Unknown,
        };
        let (was, was_file, file) = match (
            VaultClientAtPlan::decode(req.prior).ok(),
            FileAttrs::of(req.prior),
            FileAttrs::of(planned),
        ) {
            (was, Ok(a), Ok(b)) => (was, a, b),
            (_, Err(e), _) | (_, _, Err(e)) => return diags.extend(e.into()),
        };
        let new_token = match &was {
            None => true,
            Some(was) => {
                was.token_accessor.value().is_none_or(String::is_empty)
                    || was.token_period != p.token_period
                    || was.address_for_services != p.address_for_services
            }
        } || req.is_create()
            || was_file.drifted()
            || was_file.config_path != file.config_path;
        if new_token {
            p.token_accessor = Known::Unknown;
            p.token_expire_time = Known::Unknown;
            FileAttrs::put_one(planned, |f| f.file_sha256 = Known::Unknown);
        }
        p.encode(planned);
    }

    fn planned_content(&self, _planned: &Value, _config: &Value) -> PlannedContent {
        // The file holds a token Vault makes during apply: `plan` marks the hash unknown
        // when a new token is coming, and keeps it otherwise.
        PlannedContent::Keep
    }

    async fn prepare(&self, c: Change<'_>) -> Result<Prepared<Option<NewToken>>, Halted> {
        self.apply(c.planned).await.map_err(Halted::from)
    }

    async fn finish(
        &self,
        pending: Option<NewToken>,
        c: Change<'_>,
        state: &mut Value,
        written: Result<(), &Diagnostics>,
    ) -> Diagnostics {
        let Some(new) = pending else {
            return Diagnostics::new();
        };
        if written.is_ok() {
            // Recorded first: whatever fails below, the state knows the token in the file.
            if let Err(e) = record_token(state, &new.accessor, String::new()) {
                return e.into();
            }
        }
        let vault = match self.data.vault() {
            Ok(v) => v,
            Err(d) => return d,
        };
        if written.is_err() {
            return revoke_unused(&vault, &new).await;
        }
        let mut diags = Diagnostics::new();
        let old = c
            .prior
            .and_then(|p| VaultClientAtPlan::decode(p).ok())
            .and_then(|b| b.token_accessor.known());
        if let Some(old) = old.as_deref() {
            if !old.is_empty() && old != new.accessor {
                if let Err(e) = vault.revoke_accessor(old).await {
                    diags.push(Diagnostic::warning(
                        "Previous client token not revoked",
                        format!(
                            "the new token (accessor {}) is in place, but revoking the previous one (accessor \
                             {old}) failed: {}. Revoke it by hand: vault token revoke -accessor {old}",
                            new.accessor,
                            crate::backends::chain(&e)
                        ),
                    ));
                }
            }
        }
        let expire = vault
            .lookup_accessor(&new.accessor)
            .await
            .ok()
            .flatten()
            .and_then(|t| t.expire_time)
            .unwrap_or_default();
        if let Err(e) = record_token(state, &new.accessor, expire) {
            diags.extend(e.into());
        }
        log::info!("new client token {} written", new.accessor);
        diags
    }

    async fn refresh(&self, r: Refresh<'_>) -> Result<(), Diagnostics> {
        let (state, fresh, drift) = (r.state, r.fresh, r.drift);
        let i = inputs(state)?;
        let mut m = VaultClient::decode(fresh)?;
        let vault = self.data.vault()?;
        let accessor = i.accessor.clone().known().unwrap_or_default();
        match vault
            .lookup_accessor(&accessor)
            .await
            .map_err(|e| vault_diag("Could not look up the client token", e))?
        {
            None => {
                drift.push("the client token was revoked or has expired".to_string());
                m.token_accessor = Known::Value(String::new());
                m.token_expire_time = Known::Value(String::new());
            }
            Some(mut info) => {
                if info.ttl < i.renew_before {
                    vault
                        .renew_accessor(&accessor, &i.period)
                        .await
                        .map_err(|e| vault_diag("Could not renew the client token", e))?;
                    log::info!(
                        "renewed client token {accessor} (had {}s left)",
                        info.ttl.as_secs()
                    );
                    if let Ok(Some(after)) = vault.lookup_accessor(&accessor).await {
                        info = after;
                    }
                }
                m.token_expire_time = Known::Value(info.expire_time.unwrap_or_default());
            }
        }
        if !vault
            .key_exists(&i.mount, &i.key)
            .await
            .map_err(|e| vault_diag("Could not read the transit key", e))?
        {
            drift.push(format!("transit key {}/{} is missing", i.mount, i.key));
        }
        let policy = vault
            .read_policy(&i.policy_name)
            .await
            .map_err(|e| vault_diag("Could not read the policy", e))?;
        m.policy = Known::Value(policy.unwrap_or_default());
        m.encode(fresh);
        Ok(())
    }

    async fn delete_backend(&self, prior: &Value) -> Result<Diagnostics, Diagnostics> {
        let i = inputs(prior)?;
        let vault = self.data.vault()?;
        let accessor = i.accessor.known().unwrap_or_default();
        vault
            .revoke_accessor(&accessor)
            .await
            .map_err(|e| vault_diag("Could not revoke the client token", e))?;
        vault
            .delete_policy(&i.policy_name)
            .await
            .map_err(|e| vault_diag("Could not delete the policy", e))?;
        if i.delete_key {
            vault
                .delete_key(&i.mount, &i.key)
                .await
                .map_err(|e| vault_diag("Could not delete the transit key", e))?;
            log::info!("deleted transit key {}/{}", i.mount, i.key);
        }
        Ok(Diagnostics::new())
    }

    async fn server_version(
        &self,
        _planned: &Value,
        _config: &Value,
    ) -> Option<Result<Found, String>> {
        let vault = self.data.vault().ok()?;
        Some(
            vault
                .version()
                .await
                .map(|version| Found {
                    version,
                    at: vault.config().address.clone(),
                })
                .map_err(|e| crate::backends::chain(&e)),
        )
    }

    async fn import(&self, id: &str, text: &str) -> Result<Value, Diagnostics> {
        let parsed = file::parse(text).map_err(|e| cannot_import(id, e))?;
        let vault = self.data.vault()?;
        let info = vault
            .lookup_token(&parsed.token)
            .await
            .map_err(|e| vault_diag("Could not look up the token from the file", e))?
            .ok_or_else(|| {
                Diagnostics::from(Diagnostic::error(
                    "The token in the file is not valid",
                    format!(
                        "Vault does not know the VAULT__TOKEN in {id} (revoked or expired). Remove the file and \
                         let Terraform create the resource instead of importing it."
                    ),
                ))
            })?;
        let policy_name = file::non_default_policies(&info.policies)
            .into_iter()
            .next()
            .unwrap_or_else(|| file::default_policy_name(file::DEFAULT_KEY));
        let rules = vault
            .read_policy(&policy_name)
            .await
            .map_err(|e| vault_diag("Could not read the policy", e))?
            .unwrap_or_default();
        let key = file::key_from_policy(&rules, &parsed.mount)
            .unwrap_or_else(|| file::DEFAULT_KEY.to_string());
        let mut v = Value::Null;
        VaultClient {
            transit_mount: parsed.mount.clone(),
            create_mount: false,
            key_name: key,
            key_type: file::DEFAULT_KEY_TYPE.to_string(),
            policy_name,
            token_period: file::DEFAULT_PERIOD.to_string(),
            token_renew_before: file::DEFAULT_RENEW_BEFORE.to_string(),
            address_for_services: parsed.address.url(),
            delete_key_on_destroy: false,
            token_accessor: Known::Value(info.accessor.clone()),
            token_expire_time: Known::Value(info.expire_time.clone().unwrap_or_default()),
            policy: Known::Value(rules),
        }
        .encode(&mut v);
        Ok(v)
    }
}
