//! `circleci_external_nomad`: the runbook's "Setting up an External Nomad Server".
//! Checks the cluster has a leader, then writes NOMAD_API_ENDPOINT.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use super::config_file::{
    cannot_import, record_version, Change, Compat, FileAttrs, FileResource, Found, Halted,
    PlannedContent, Prepared, Spec,
};
use super::model::{Known, Model};
use super::validate::Check;
use crate::backends::nomad::{self as nb, NomadError};
use crate::circleci::nomad as file;
use crate::circleci::versions;
use crate::plugin::{AttrPath, Diagnostic, Diagnostics, PlanRequest, Value};
use crate::provider::ProviderData;
use crate::secret::Secret;

pub(crate) struct ExternalNomad {
    data: Arc<ProviderData>,
}

impl ExternalNomad {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        ExternalNomad { data }
    }
}

crate::model! {
    /// `circleci_external_nomad`'s own attributes.
    pub(crate) struct Nomad / NomadAtPlan {
        endpoint: String [required, check(Check::Text("Invalid endpoint", file::check_endpoint)), doc(
            "Nomad's HTTP API as the Services machine reaches it, e.g. `https://nomad.internal:4646`."
        )],
        ca_cert_file: Option<String> [optional, doc(
            "CA certificate (PEM) that signed Nomad's certificate, for the check; default: the system's CAs."
        )],
        acl_token_wo: Option<Secret> [optional, write_only, doc(
            "Nomad ACL token for the check, write-only (never stored). Not written to the file."
        )],
        leader: Known<String> [computed, doc(
            "The leader Nomad reported at the last apply (empty with `verify = false`)."
        )],
    }
}

/// The ACL token from the configuration (write-only: never in the plan).
fn token(config: &Value) -> Option<Secret> {
    NomadAtPlan::decode(config)
        .ok()?
        .acl_token_wo
        .known()
        .flatten()
}

fn render(endpoint: &str) -> Result<String, Diagnostics> {
    file::render(endpoint).map_err(|e| {
        Diagnostics::from(Diagnostic::error(
            "Could not render the Nomad config file",
            e.to_string(),
        ))
    })
}

impl ExternalNomad {
    /// The version of the Nomad agent at `endpoint` (`GET /v1/agent/self`), and where.
    async fn found(
        &self,
        route: &crate::backends::tunnel::Route,
        endpoint: &str,
        ca: Option<&std::path::Path>,
        token: Option<&str>,
    ) -> Result<Found, NomadError> {
        let version = nb::version(
            route,
            endpoint,
            nb::Ca::file(ca),
            token,
            self.data.timeout(),
        )
        .await?;
        Ok(Found {
            version,
            at: endpoint.to_string(),
        })
    }
}

/// A failed leader check as a diagnostic on the attribute at fault.
fn leader_diag(e: NomadError, path: &str) -> Diagnostics {
    let (summary, at, hint) = match &e {
        NomadError::NoLeader { .. } => ("Nomad has no cluster leader", "endpoint", ""),
        NomadError::PermissionDenied { with_token, .. } => (
            "Nomad refused the request (403)",
            "acl_token_wo",
            if *with_token {
                ""
            } else {
                " (set acl_token_wo)"
            },
        ),
        NomadError::Tls { .. } => (
            "Nomad's TLS certificate is not trusted",
            "ca_cert_file",
            " (is ca_cert_file the CA that signed Nomad's certificate?)",
        ),
        NomadError::CaFile { .. } => ("Nomad check failed", "ca_cert_file", ""),
        NomadError::Unreachable { .. } => ("Nomad is not reachable", "endpoint", ""),
        _ => ("Nomad check failed", "endpoint", ""),
    };
    Diagnostic::error(
        summary,
        format!(
            "{}{hint}. Nothing was written to {path}. Set verify = false to write the file anyway.",
            crate::backends::chain(&e)
        ),
    )
    .at(AttrPath::root(at))
    .into()
}

#[async_trait]
impl FileResource for ExternalNomad {
    type Pending = ();
    type Own = Nomad;

    const SPEC: Spec = Spec {
        type_name: "circleci_external_nomad",
        description: "Points CircleCI Server at an external Nomad server cluster (runbook: *Setting up an \
                      External Nomad Server*). Checks that `GET /v1/status/leader` names a leader, then \
                      writes `NOMAD_API_ENDPOINT` to the config file on the Services machine (mode 0600). \
                      Pointing the Nomad clients at the servers is \
                      `circleci_nomad_client_launch_config`'s job.",
        what: "Nomad",
        default_path: file::DEFAULT_PATH,
        default_path_doc: "`/etc/circleconfig/shared/nomad`",
        verify_doc: "Check the cluster has a leader (see `verify_via_services_host` for from where) before writing. Default `true`.",
        drift_doc: "",
        secret_in_file: false,
        changes: None,
        compat: Some(Compat {
            table: versions::NOMAD,
            attr: Some("endpoint"),
        }),
    };

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        let Ok(config) = NomadAtPlan::decode(config) else {
            return;
        };
        if config
            .endpoint
            .known()
            .is_some_and(|e| e.starts_with("http://"))
        {
            diags.push(
                Diagnostic::warning(
                    "Nomad endpoint without TLS",
                    "CircleCI (and the check, with acl_token_wo) will talk to Nomad in plain text over \
                     http://; use https:// with Nomad's TLS",
                )
                .at(AttrPath::root("endpoint")),
            );
        }
    }

    async fn plan(&self, req: &PlanRequest<'_>, planned: &mut Value, diags: &mut Diagnostics) {
        // Every apply re-checks the leader, so any change (or drift to repair) makes it
        // unknown.
        let views = (
            NomadAtPlan::decode(planned),
            NomadAtPlan::decode(req.config),
            FileAttrs::of(req.prior),
            FileAttrs::of(planned),
            FileAttrs::of(req.config),
        );
        let (Ok(mut now), Ok(config), Ok(prior_file), Ok(file), Ok(config_file)) = views else {
            let (a, b, c, d, e) = views;
            let err = [a.err(), b.err(), c.err(), d.err(), e.err()]
                .into_iter()
                .flatten()
                .next();
            if let Some(e) = err {
                diags.extend(Diagnostics::from(e));
            }
            return;
        };
        let own_changed = match NomadAtPlan::decode(req.prior) {
            Ok(was) => was.endpoint != now.endpoint || was.ca_cert_file != now.ca_cert_file,
            Err(_) => true,
        };
        let any_change = own_changed
            || prior_file.config_path != file.config_path
            || prior_file.verify != file.verify
            || config.endpoint.is_unknown()
            || config.ca_cert_file.is_unknown()
            || config_file.config_path.is_unknown()
            || config_file.verify.is_unknown();
        if req.is_create() || any_change || prior_file.drifted() || prior_file.digest() == Some("")
        {
            now.leader = Known::Unknown;
            now.encode(planned);
        }
    }

    fn planned_content(&self, planned: &Value, _config: &Value) -> PlannedContent {
        let endpoint = NomadAtPlan::decode(planned)
            .ok()
            .and_then(|p| p.endpoint.known());
        match endpoint.as_deref().map(render) {
            Some(Ok(c)) => PlannedContent::Known(c),
            _ => PlannedContent::Unknown,
        }
    }

    async fn prepare(&self, c: Change<'_>) -> Result<Prepared<()>, Halted> {
        let (planned, config) = (c.planned, c.config);
        let (mut m, common) = (
            Nomad::decode(planned).map_err(Diagnostics::from)?,
            c.common()?,
        );
        let content = render(&m.endpoint)?;
        let mut state = planned.clone();
        m.leader = Known::Value(String::new());
        let mut version = None;
        if common.verify {
            let ca = m.ca_cert_file.as_deref().map(Path::new);
            let token = token(config);
            let token = token.as_ref().map(Secret::expose);
            let path = &common.config_path;
            let route = self
                .data
                .check_route(planned, || self.data.route())
                .map_err(Halted::from)?;
            m.leader = Known::Value(
                nb::leader(
                    &route,
                    &m.endpoint,
                    nb::Ca::file(ca),
                    token,
                    self.data.timeout(),
                )
                .await
                .map_err(|e| leader_diag(e, path))?,
            );
            let found = self
                .found(&route, &m.endpoint, ca, token)
                .await
                .map_err(|e| leader_diag(e, path))?;
            if let Some(c) = &Self::SPEC.compat {
                c.refuse(&found, path)?;
            }
            version = Some(found.version);
        }
        m.encode(&mut state);
        record_version(&mut state, planned, version.as_deref());
        Ok(Prepared {
            state,
            content: Some(content),
            pending: (),
        })
    }

    async fn server_version(
        &self,
        planned: &Value,
        config: &Value,
    ) -> Option<Result<Found, String>> {
        let m = NomadAtPlan::decode(planned).ok()?;
        let endpoint = m.endpoint.known()?;
        let ca = m.ca_cert_file.known().flatten();
        let route = self.data.check_route(planned, || self.data.route()).ok()?;
        let token = token(config);
        Some(
            self.found(
                &route,
                &endpoint,
                ca.as_deref().map(Path::new),
                token.as_ref().map(Secret::expose),
            )
            .await
            .map_err(|e| crate::backends::chain(&e)),
        )
    }

    fn refresh_from_file(&self, text: &str, fresh: &mut Value) {
        if let (Ok(mut m), Ok(e)) = (Nomad::decode(fresh), file::parse(text)) {
            m.endpoint = e;
            m.encode(fresh);
        }
    }

    async fn import(&self, id: &str, text: &str) -> Result<Value, Diagnostics> {
        let endpoint = file::parse(text).map_err(|e| cannot_import(id, e))?;
        let mut v = Value::Null;
        Nomad {
            endpoint,
            ca_cert_file: None,
            acl_token_wo: None,
            leader: Known::Value(String::new()),
        }
        .encode(&mut v);
        Ok(v)
    }
}
