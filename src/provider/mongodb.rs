//! The `mongodb` block: a connection string for a user that may manage users.

use std::time::Duration;

use crate::backends::mongo::MongoAdmin;
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
    if let Some(u) = b.get("uri").as_str() {
        if !u.starts_with("mongodb://") && !u.starts_with("mongodb+srv://") {
            diags.attr_error(
                AttrPath::root(MONGODB).attr("uri"),
                "Invalid connection string",
                "it must start with mongodb:// (mongodb+srv:// is not supported: no DNS SRV resolver is built in)",
            );
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
            Secret(u),
            b.get("tls_ca_file").as_str().map(expand_home),
            timeout,
        )),
        None => Err(Diagnostic::error(
            "MongoDB connection string missing",
            "set mongodb.uri (or MONGODB_URI)",
        )
        .at(AttrPath::root(MONGODB).attr("uri"))
        .into()),
    }
}
