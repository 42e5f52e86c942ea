//! The `mongodb` block: a connection string for a user that may manage users.

use std::time::Duration;

use crate::backends::mongo::{uri, MongoAdmin};
use crate::plugin::{AttrPath, Attribute, Block, Diagnostic, Diagnostics, Type, Value};
use crate::secret::Secret;

use super::{env_or, expand_home, MONGODB};

pub(super) fn block() -> Block {
    Block::new()
        .description(
            "The MongoDB used by `circleci_external_mongo`: a connection string for a user that may manage \
             users (e.g. `root` or `userAdminAnyDatabase`). Nothing connects until a resource needs it.",
        )
        .attr(super::via_attr())
        .attr(Attribute::new("uri", Type::String).optional().sensitive().description(
            "Connection string, e.g. `mongodb://admin:PASSWORD@m1:27017,m2:27017/?replicaSet=rs0&tls=true`. \
             Default: env `MONGODB_URI`.",
        ))
        .attr(Attribute::new("tls_ca_file", Type::String).optional().description(
            "CA certificate (PEM) that signed the servers' certificates; turns TLS on.",
        ))
        .attr(super::deadline_attr(
            "timeout",
            "Time allowed for each MongoDB command, and to connect and find the primary (unless the \
             connection string sets `connectTimeoutMS` / `serverSelectionTimeoutMS`)",
            "15s",
        ))
}

pub(super) fn validate(b: &Value, diags: &mut Diagnostics) {
    super::validate_deadlines(b, MONGODB, &["timeout"], diags);
    // The connection string holds the admin password, so its diagnostics are attached
    // to the block: Terraform prints the line of the attribute a diagnostic is on.
    let (uri, origin) = match b.get("uri").as_str() {
        Some(u) => (Some(u.to_string()), "mongodb.uri"),
        None if b.get("uri").is_unknown() => (None, ""),
        None => (std::env::var("MONGODB_URI").ok(), "MONGODB_URI"),
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

pub(super) fn build(b: &Value) -> Result<MongoAdmin, Diagnostics> {
    let mut diags = Diagnostics::new();
    let timeout = super::deadline(b, MONGODB, "timeout", Duration::from_secs(15), &mut diags);
    if diags.has_errors() {
        return Err(diags);
    }
    match env_or(b.get("uri"), "MONGODB_URI") {
        Some(u) => Ok(MongoAdmin::new(
            Secret::new(u),
            b.get("tls_ca_file").as_str().map(expand_home),
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
