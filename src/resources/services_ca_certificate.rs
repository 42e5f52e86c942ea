//! `circleci_services_ca_certificate`: the runbook's Troubleshooting fix for TLS to the
//! external services. The CA certificate goes to
//! `/usr/local/share/ca-certificates/<name>.crt` and `update-ca-certificates` runs; with
//! `jvm_trust_name_service`, `/etc/environment` gets the runbook's `JVM_OPTS` line in a
//! managed block (every other line is the operator's). Destroy undoes both.

use std::sync::Arc;

use async_trait::async_trait;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::config_file::block_error;
use super::model::{self, Known, Model};
use super::validate::Check;
use super::{file_sha256, managed_block, run_command, ssh_diag};
use crate::backends::ssh::{Program, ServicesHost};
use crate::plugin::{
    Applied, AttrPath, Diagnostic, Diagnostics, PlanRequest, Resource, Schema, Value,
};
use crate::provider::ProviderData;

const TYPE: &str = "circleci_services_ca_certificate";
const CA_DIR: &str = "usr/local/share/ca-certificates";
const ENVIRONMENT: &str = "etc/environment";
/// The runbook's line, as it gives it.
const JVM_LINE: &str = "export JVM_OPTS='-Djdk.tls.trustNameService=true'\n";
/// Before each owner's name in the JVM_OPTS block: every instance of this resource with
/// `jvm_trust_name_service = true` adds its line, and the block (with the runbook's
/// line) goes only when the last owner removes its own.
const OWNER: &str = "# wanted by circleci_services_ca_certificate ";

/// The owners named in a JVM_OPTS block.
fn owners(block: &[u8]) -> std::collections::BTreeSet<String> {
    String::from_utf8_lossy(block)
        .lines()
        .filter_map(|l| l.strip_prefix(OWNER))
        .map(str::to_string)
        .collect()
}

/// The block's content for these owners (none: no block).
fn jvm_block(owners: &std::collections::BTreeSet<String>) -> String {
    let mut out = JVM_LINE.to_string();
    for o in owners {
        out.push_str(&format!("{OWNER}{o}\n"));
    }
    out
}

pub(crate) struct ServicesCaCertificate {
    data: Arc<ProviderData>,
}

impl ServicesCaCertificate {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        ServicesCaCertificate { data }
    }
}

/// The one certificate in `pem`, as DER, or why not. Nothing else may be in the text:
/// no other PEM block (a private key would be written world-readable into the trust
/// store, and kept in the plan and state), no second certificate, no other text. The
/// text is never quoted back: it may be a key.
pub(crate) fn parse_ca(pem: &str) -> Result<CertificateDer<'static>, String> {
    pem_shape(pem)?;
    der_of(pem)
}

/// The diagnostic for a `certificate_pem` that `parse_ca` refused. When the text holds
/// something besides certificates (it may be a private key), the diagnostic is on the
/// resource: on the attribute, Terraform would print its whole expression, an inline
/// key included.
fn invalid_pem(pem: &str, e: String) -> Diagnostic {
    if pem_shape(pem).is_err() {
        Diagnostic::error(
            "Invalid CA certificate",
            format!(
                "certificate_pem: {e} (This is about certificate_pem: Terraform would print its whole \
                 expression, which may hold a key, so this message points at the resource.)"
            ),
        )
    } else {
        Diagnostic::error("Invalid CA certificate", e).at(AttrPath::root("certificate_pem"))
    }
}

/// Only PEM blocks, each closed, every one a CERTIFICATE: the text is never quoted.
fn pem_shape(pem: &str) -> Result<(), String> {
    let mut found: Vec<String> = vec![];
    let mut open: Option<&str> = None;
    for (n, line) in pem.lines().enumerate() {
        let line = line.trim();
        match open {
            None if line.is_empty() => {}
            None => match line
                .strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
            {
                Some(label) => open = Some(label),
                None => {
                    return Err(format!(
                        "line {}: text outside a PEM block; give exactly one CERTIFICATE block",
                        n + 1
                    ))
                }
            },
            Some(label) => {
                if line.starts_with("-----END ") {
                    if line != format!("-----END {label}-----") {
                        return Err(format!(
                            "line {}: the {label} block ends with another label",
                            n + 1
                        ));
                    }
                    found.push(label.to_string());
                    open = None;
                }
            }
        }
    }
    if let Some(label) = open {
        return Err(format!("the {label} block has no END line"));
    }
    let others: Vec<&String> = found.iter().filter(|l| *l != "CERTIFICATE").collect();
    if !others.is_empty() {
        let names: Vec<&str> = others.iter().map(|l| l.as_str()).collect();
        return Err(format!(
            "it holds a {} block besides the certificate: give exactly one CERTIFICATE block (a key must \
             never go into the trust store, the plan or the state)",
            names.join(" and a ")
        ));
    }
    Ok(())
}

/// The one certificate in a text of CERTIFICATE blocks.
fn der_of(pem: &str) -> Result<CertificateDer<'static>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    let [cert] = <[CertificateDer<'static>; 1]>::try_from(certs).map_err(|v| {
        if v.is_empty() {
            "no CERTIFICATE block in it".to_string()
        } else {
            format!("{} certificates in it; give one per resource", v.len())
        }
    })?;
    webpki::anchor_from_trusted_cert(&cert)
        .map_err(|e| format!("not an X.509 certificate: {e:?}"))?;
    Ok(cert)
}

fn check_name(n: &str) -> Result<(), String> {
    let ok = n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && n.len() <= 200;
    if !ok {
        return Err(format!(
            "{n:?}: letters, digits, '.', '_' and '-' only, starting with a letter or digit"
        ));
    }
    if n.ends_with(".crt") {
        return Err(format!("{n:?}: leave out .crt, the provider adds it"));
    }
    Ok(())
}

fn under(root: &str, rel: &str) -> String {
    format!("{}/{rel}", root.trim_end_matches('/'))
}

struct Paths {
    cert: String,
    environment: String,
}

fn paths(name: &str, root: &str) -> Paths {
    Paths {
        cert: under(root, &format!("{CA_DIR}/{name}.crt")),
        environment: under(root, ENVIRONMENT),
    }
}

const DESCRIPTION: &str = "Makes the Services machine trust a CA, as the runbook's Troubleshooting says: \
    the certificate is written to `/usr/local/share/ca-certificates/<name>.crt` (mode 0644) and \
    `update-ca-certificates` runs. With `jvm_trust_name_service = true` the runbook's `export \
    JVM_OPTS='-Djdk.tls.trustNameService=true'` line goes into `/etc/environment`, in a managed block \
    (the file's other lines are kept), with a comment line naming each instance that asked for it: \
    the line stays while any instance asks for it. Destroy removes the certificate, runs \
    `update-ca-certificates` again and removes the block. CircleCI reads both when it starts: put \
    this resource in `circleci_services_restart`'s triggers.";

crate::model! {
    /// `circleci_services_ca_certificate`'s attributes.
    struct CaCert / CaCertAtPlan {
        id: Known<String> [computed, doc("The certificate file's path.")],
        name: String [required, check(Check::Text("Invalid name", check_name)), replaces, doc(
            "File name without `.crt`, e.g. `internal-ca`."
        )],
        certificate_pem: String [required, doc(
            "The CA certificate, PEM (one `CERTIFICATE` block), checked as X.509 at plan."
        )],
        jvm_trust_name_service: bool [default(false), doc(
            "Also add the runbook's `JVM_OPTS='-Djdk.tls.trustNameService=true'` line to \
             `/etc/environment`."
        )],
        config_root: String [default("/".to_string()), check(Check::RemotePath), replaces, doc(
            "The directory `/usr/local/share/ca-certificates` and `/etc/environment` are under on \
             the Services machine; only tests and demos change it."
        )],
        fingerprint_sha256: Known<String> [computed, doc(
            "SHA-256 of the certificate (DER), lower-case hex."
        )],
        drift: Known<String> [computed, doc(
            "What refresh found different: the certificate file changed or missing, or the JVM_OPTS \
             block missing. Not empty: the next plan writes them again."
        )],
    }
}

impl CaCert {
    fn paths(&self) -> Paths {
        paths(&self.name, &self.config_root)
    }
}

impl ServicesCaCertificate {
    async fn update_ca_certificates(&self, h: &ServicesHost) -> Result<(), Diagnostics> {
        let (_, out) = run_command(
            h,
            Program::UpdateCaCertificates,
            &[],
            None,
            self.data.timeout(),
        )
        .await?;
        if out.success() {
            return Ok(());
        }
        Err(Diagnostic::error(
            "update-ca-certificates failed",
            format!(
                "on {} it exited with {:?}:\n{}",
                h.config().target(),
                out.status,
                out.evidence()
            ),
        )
        .into())
    }

    /// Adds (`want`) or removes `owner`'s claim on the JVM_OPTS block of
    /// /etc/environment: the block is there while any instance claims it.
    async fn environment(
        &self,
        h: &ServicesHost,
        path: &str,
        owner: &str,
        want: bool,
        wanted: bool,
    ) -> Result<(), Diagnostics> {
        let _turn = managed_block::lock(path).await;
        let fail = |e| ssh_diag(&format!("Could not update {path}"), e);
        let file = h.read_file(path).await.map_err(fail)?;
        let bytes = file.as_ref().map(|f| f.content.clone()).unwrap_or_default();
        let bad = |e| block_error(path, e);
        let block = managed_block::extract(&bytes, TYPE).map_err(bad)?;
        let mut who = block.as_deref().map(owners).unwrap_or_default();
        let next = if want {
            who.insert(owner.to_string());
            managed_block::upsert(&bytes, TYPE, &jvm_block(&who)).map_err(bad)?
        } else if !(who.remove(owner) || (wanted && who.is_empty() && block.is_some())) {
            // Not ours: a block another instance made stays. A block with no owner
            // lines (an earlier version's) goes when an instance that asked for it stops.
            return Ok(());
        } else if who.is_empty() {
            managed_block::remove(&bytes, TYPE).map_err(bad)?
        } else {
            managed_block::upsert(&bytes, TYPE, &jvm_block(&who)).map_err(bad)?
        };
        if next == bytes {
            return Ok(());
        }
        // /etc/environment is read by every login: keep its mode (0644 when new).
        let mode = file.map_or(0o644, |f| f.mode);
        h.write_file(path, &next, mode).await.map_err(fail)
    }

    /// Writes the certificate and the JVM_OPTS claim; `wanted`: the prior state asked
    /// for the JVM_OPTS line.
    async fn apply(&self, planned: &Value, wanted: bool) -> Applied {
        let r = async {
            let h = self.data.services()?;
            let mut m = CaCert::decode(planned)?;
            let p = m.paths();
            let pem = m.certificate_pem.as_str();
            let cert = parse_ca(pem).map_err(|e| Diagnostics::from(invalid_pem(pem, e)))?;
            h.check_writable(&p.cert)
                .await
                .map_err(|e| ssh_diag("Cannot write the certificate: nothing was changed", e))?;
            let mut text = pem.trim().to_string();
            text.push('\n');
            h.write_file(&p.cert, text.as_bytes(), 0o644)
                .await
                .map_err(|e| ssh_diag(&format!("Could not write {}", p.cert), e))?;
            m.id = Known::Value(p.cert.clone());
            m.fingerprint_sha256 = Known::Value(file_sha256(cert.as_ref()));
            m.drift = Known::Value(String::new());
            let rest = async {
                self.update_ca_certificates(&h).await?;
                self.environment(
                    &h,
                    &p.environment,
                    &m.name,
                    m.jvm_trust_name_service,
                    wanted,
                )
                .await
            }
            .await;
            let mut state = planned.clone();
            Ok(match rest {
                Ok(()) => {
                    m.encode(&mut state);
                    Applied {
                        state: Some(state),
                        diags: Diagnostics::new(),
                    }
                }
                // The certificate is in place: recorded, with the step left to do as drift.
                Err(d) => {
                    m.drift = Known::Value(
                        "the last apply did not finish: update-ca-certificates or /etc/environment"
                            .to_string(),
                    );
                    m.encode(&mut state);
                    Applied {
                        state: Some(state),
                        diags: d,
                    }
                }
            })
        }
        .await;
        r.unwrap_or_else(|d: Diagnostics| Applied::from_result(Err(d)))
    }
}

#[async_trait]
impl Resource for ServicesCaCertificate {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn schema(&self) -> Schema {
        Schema::new(0, model::block(CaCert::decls(), DESCRIPTION))
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        model::validate(CaCert::decls(), config, &mut diags);
        if let Ok(Known::Value(pem)) = CaCertAtPlan::decode(config).map(|c| c.certificate_pem) {
            if let Err(e) = parse_ca(&pem) {
                diags.push(invalid_pem(&pem, e));
            }
        }
        diags
    }

    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        diags: &mut Diagnostics,
    ) -> Vec<AttrPath> {
        model::set_defaults(CaCert::decls(), req.config, planned);
        let mut p = match CaCertAtPlan::decode(planned) {
            Ok(p) => p,
            Err(e) => {
                diags.extend(e.into());
                return vec![];
            }
        };
        p.id = match (&p.name, &p.config_root) {
            (Known::Value(name), Known::Value(root)) => Known::Value(paths(name, root).cert),
            _ => Known::Unknown,
        };
        p.fingerprint_sha256 = match &p.certificate_pem {
            Known::Value(pem) => {
                parse_ca(pem).map_or(Known::Unknown, |c| Known::Value(file_sha256(c.as_ref())))
            }
            _ => Known::Unknown,
        };
        p.drift = Known::Value(String::new());
        p.encode(planned);
        if req.is_create() {
            return vec![];
        }
        model::replaced(CaCert::decls(), req.prior, planned)
    }

    async fn create(&self, planned: &Value, _config: &Value) -> Applied {
        self.apply(planned, false).await
    }

    async fn update(&self, prior: &Value, planned: &Value, _config: &Value) -> Applied {
        match CaCert::decode(prior) {
            Ok(before) => self.apply(planned, before.jvm_trust_name_service).await,
            Err(e) => Applied::from_result(Err(e.into())),
        }
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let h = self.data.services()?;
        let mut m = CaCert::decode(state)?;
        let p = m.paths();
        let mut drift = Vec::new();
        let file = h
            .read_file(&p.cert)
            .await
            .map_err(|e| ssh_diag(&format!("Could not read {}", p.cert), e))?;
        let found = file
            .as_ref()
            .and_then(|f| parse_ca(&String::from_utf8_lossy(&f.content)).ok())
            .map(|c| file_sha256(c.as_ref()));
        match found {
            None => drift.push(format!("{} is missing or not a certificate", p.cert)),
            Some(fp) if Known::Value(fp.clone()) != m.fingerprint_sha256 => {
                drift.push(format!("{} holds another certificate", p.cert))
            }
            Some(_) => {}
        }
        if m.jvm_trust_name_service {
            let env = h
                .read_file(&p.environment)
                .await
                .map_err(|e| ssh_diag(&format!("Could not read {}", p.environment), e))?;
            let block = env
                .and_then(|f| managed_block::extract(&f.content, TYPE).ok().flatten())
                .unwrap_or_default();
            if !block.starts_with(JVM_LINE.as_bytes()) || !owners(&block).contains(&m.name) {
                drift.push(format!(
                    "the JVM_OPTS block of {} is missing or changed",
                    p.environment
                ));
            }
        }
        let mut fresh = state.clone();
        m.drift = Known::Value(drift.join("; "));
        m.encode(&mut fresh);
        Ok(Some(fresh))
    }

    async fn delete(&self, prior: &Value) -> Applied {
        let r = async {
            let h = self.data.services()?;
            let m = CaCert::decode(prior)?;
            let p = m.paths();
            h.remove_file(&p.cert)
                .await
                .map_err(|e| ssh_diag(&format!("Could not delete {}", p.cert), e))?;
            self.update_ca_certificates(&h).await?;
            self.environment(&h, &p.environment, &m.name, false, m.jvm_trust_name_service)
                .await
        }
        .await;
        match r {
            Ok(()) => Applied::deleted(Diagnostics::new()),
            Err(d) => Applied::kept(prior, d),
        }
    }

    async fn import(&self, id: &str) -> Result<Value, Diagnostics> {
        let h = self.data.services()?;
        let invalid = || {
            Diagnostics::from(Diagnostic::error(
                "Invalid import ID",
                format!("the import ID is the certificate's path, e.g. /{CA_DIR}/internal-ca.crt; got {id:?}"),
            ))
        };
        let (root, name) = id
            .strip_suffix(".crt")
            .and_then(|p| p.rsplit_once(&format!("/{CA_DIR}/")))
            .ok_or_else(invalid)?;
        check_name(name).map_err(|_| invalid())?;
        let file = h
            .read_file(id)
            .await
            .map_err(|e| ssh_diag(&format!("Could not read {id}"), e))?
            .ok_or_else(|| {
                Diagnostics::from(Diagnostic::error(
                    "Nothing to import",
                    format!("there is no file {id}"),
                ))
            })?;
        let pem = String::from_utf8_lossy(&file.content).into_owned();
        let cert = parse_ca(&pem).map_err(|e| {
            Diagnostics::from(Diagnostic::error(
                "Cannot import this file",
                format!("{id}: {e}"),
            ))
        })?;
        let mut v = Value::Null;
        CaCert {
            id: Known::Value(id.to_string()),
            name: name.to_string(),
            certificate_pem: pem,
            jvm_trust_name_service: false,
            config_root: if root.is_empty() { "/" } else { root }.to_string(),
            fingerprint_sha256: Known::Value(file_sha256(cert.as_ref())),
            drift: Known::Value(String::new()),
        }
        .encode(&mut v);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_certificates_are_checked() {
        assert!(check_name("internal-ca").is_ok());
        assert!(check_name("../x").is_err());
        assert!(check_name("ca.crt").is_err());
        assert!(check_name("").is_err());
        assert!(parse_ca("hello")
            .unwrap_err()
            .contains("text outside a PEM block"));
        assert!(parse_ca("").unwrap_err().contains("no CERTIFICATE"));
        let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(parse_ca(junk).unwrap_err().contains("not an X.509"));
    }

    /// Anything but exactly one certificate is refused, naming what was found and
    /// never quoting it.
    #[test]
    fn only_exactly_one_certificate_is_accepted() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap().pem();
        assert!(parse_ca(&cert).is_ok());
        assert!(parse_ca(&format!("\n{cert}\n")).is_ok());
        let key_pem = key.serialize_pem();
        let secret_line = key_pem.lines().nth(1).unwrap().to_string();
        for (text, what) in [
            (format!("{cert}{key_pem}"), "a PRIVATE KEY block"),
            (format!("{key_pem}{cert}"), "a PRIVATE KEY block"),
            (format!("{cert}{cert}"), "2 certificates"),
            (format!("{cert}trailing junk\n"), "text outside a PEM block"),
            (format!("{cert}{}", &key_pem[..40]), "has no END line"),
        ] {
            let e = parse_ca(&text).unwrap_err();
            assert!(e.contains(what), "{e}");
            assert!(!e.contains(&secret_line), "the key is quoted: {e}");
        }
    }

    #[test]
    fn the_jvm_block_names_its_owners() {
        let mut who = std::collections::BTreeSet::new();
        who.insert("b".to_string());
        who.insert("a".to_string());
        let block = jvm_block(&who);
        assert!(block.starts_with(JVM_LINE));
        assert_eq!(owners(block.as_bytes()), who);
        assert!(owners(JVM_LINE.as_bytes()).is_empty());
    }
}
