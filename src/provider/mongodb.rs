//! The `mongodb` block: a connection string for a user that may manage users.

use std::time::Duration;

use crate::backends::mongo::{uri, MongoAdmin};
use crate::plugin::{AttrPath, Diagnostic, Diagnostics};
use crate::resources::model::Known;
use crate::secret::Secret;

use super::{deadline_doc, env_or, expand_home, Env, DEADLINE, MONGODB, VIA_DOC};

/// The block's description.
pub(super) const DOC: &str =
    "The MongoDB used by `circleci_external_mongo`: a connection string for a user that may manage \
     users (e.g. `root` or `userAdminAnyDatabase`). Nothing connects until a resource needs it.";

crate::model! {
    /// The `mongodb` block.
    #[derive(Default)]
    pub(crate) struct MongodbBlock {
        via_services_host: Known<bool> [optional, doc(VIA_DOC)],
        uri: Known<Secret> [optional, sensitive, doc(
            "Connection string, e.g. `mongodb://admin:PASSWORD@m1:27017,m2:27017/?replicaSet=rs0&tls=true`. \
             Default: env `MONGODB_URI`."
        )],
        tls_ca_file: Known<String> [optional, doc(
            "CA certificate (PEM) that signed the servers' certificates; turns TLS on."
        )],
        timeout: Known<String> [optional, check(DEADLINE), doc(deadline_doc(
            "Time allowed for each MongoDB command, and to connect and find the primary (unless the \
             connection string sets `connectTimeoutMS` / `serverSelectionTimeoutMS`)",
            "15s",
        ))],
    }
}

/// The connection string's checks: of the block `b` when written, else of MONGODB_URI
/// in `env` (each attribute's own check is declared with it).
pub(super) fn validate(b: Option<&MongodbBlock>, env: Env<'_>, diags: &mut Diagnostics) {
    // The connection string holds the admin password, so its diagnostics are attached
    // to the block: Terraform prints the line of the attribute a diagnostic is on.
    let given = b.map_or(&Known::Null, |b| &b.uri);
    let (uri, origin) = match given {
        Known::Value(u) => (Some(u.expose().to_string()), "mongodb.uri"),
        Known::Unknown => (None, ""),
        Known::Null => (env("MONGODB_URI"), "MONGODB_URI"),
    };
    let Some(u) = uri else { return };
    let at = AttrPath::root(MONGODB);
    // A bad MONGODB_URI is reported when something connects: it may not be used at all.
    let from_config = origin == "mongodb.uri";
    if !u.starts_with("mongodb://") && from_config {
        diags.push(
            Diagnostic::error(
                "Invalid connection string",
                format!(
                    "{origin} must start with mongodb:// (mongodb+srv:// is not supported: no DNS SRV \
                     resolver is built in)"
                ),
            )
            .at(at),
        );
        return;
    }
    match uri::parse(&u) {
        Err(e) if from_config => diags
            .push(Diagnostic::error("Invalid connection string", format!("{origin}: {e}")).at(at)),
        Err(_) => {}
        Ok(c) => {
            for what in c.weakened_checks() {
                diags.push(
                    Diagnostic::warning(
                        "MongoDB certificate checks turned off",
                        format!(
                            "{origin} sets {what}: the admin connection to {} would accept a server that \
                             is not who it claims to be, and send it the admin password. Give the CA \
                             instead (tlsCAFile, or mongodb.tls_ca_file).",
                            c.hosts_text()
                        ),
                    )
                    .at(at.clone()),
                );
            }
        }
    }
}

/// The admin client from a wholly known block (an absent one is empty), with
/// MONGODB_URI of `env` as the fallback.
pub(super) fn build(b: &MongodbBlock, env: Env<'_>) -> Result<MongoAdmin, Diagnostics> {
    let mut diags = Diagnostics::new();
    let timeout = super::deadline(
        &b.timeout,
        AttrPath::root(MONGODB).attr("timeout"),
        Duration::from_secs(15),
        &mut diags,
    );
    if diags.has_errors() {
        return Err(diags);
    }
    match env_or::<Secret>(&b.uri, env, "MONGODB_URI") {
        Some(u) => Ok(MongoAdmin::new(
            u,
            b.tls_ca_file.value().map(|f| expand_home(f)),
            timeout,
        )),
        None => Err(Diagnostic::error(
            "MongoDB connection string missing",
            "set mongodb.uri (or MONGODB_URI)",
        )
        .at(AttrPath::root(MONGODB))
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_config::{block, config, env_of, s, NO_ENV};
    use super::*;
    use crate::provider::test_config::paths;

    #[test]
    fn connection_string_diagnostics_point_at_the_block() {
        let d = super::super::validate(
            &config(|c| c.mongodb = block(|b: &mut MongodbBlock| b.uri = s("mongodb+srv://h/"))),
            NO_ENV,
        );
        assert_eq!(paths(&d), ["mongodb"], "never at the sensitive uri");
        assert!(d.has_errors());
        // MONGODB_URI alone: its weakened checks warn, its errors wait for a use.
        let env = env_of(&[(
            "MONGODB_URI",
            "mongodb://h:27017/?tls=true&tlsInsecure=true",
        )]);
        let d = super::super::validate(&config(|_| {}), &env);
        assert_eq!(paths(&d), ["mongodb"]);
        assert!(!d.has_errors(), "{d}");
        let env = env_of(&[("MONGODB_URI", "nonsense")]);
        assert!(super::super::validate(&config(|_| {}), &env).is_empty());
        let d = super::super::validate(
            &config(|c| c.mongodb = block(|b: &mut MongodbBlock| b.uri = Known::Unknown)),
            &env,
        );
        assert!(d.is_empty(), "{d}");
    }

    #[test]
    fn the_uri_falls_back_to_mongodb_uri() {
        assert!(build(&MongodbBlock::default(), NO_ENV).is_err());
        let env = env_of(&[("MONGODB_URI", "mongodb://h:27017/")]);
        assert!(build(&MongodbBlock::default(), &env).is_ok());
        let d = build(
            &MongodbBlock {
                timeout: s("2h"),
                ..Default::default()
            },
            &env,
        )
        .err()
        .unwrap();
        assert_eq!(paths(&d), ["mongodb.timeout"]);
    }
}
