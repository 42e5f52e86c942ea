//! `circleci_data_migration`: carries the data of the embedded PostgreSQL and the
//! embedded Vault's transit key over to the external services, the step the runbook
//! requires ("the content of the databases currently in use on the Services machine
//! must be exported and then imported into the external databases") and never spells
//! out. Create runs the migration once; nothing else does, unless `triggers` change.

use std::sync::Arc;

use async_trait::async_trait;

use super::{string_list, validate};
use crate::circleci::migration as mig;
use crate::circleci::mongo::{
    DEFAULT_AUTH_SOURCE as MONGO_AUTH_SOURCE, DEFAULT_DATABASES as MONGO_DATABASES,
    DEFAULT_USER as MONGO_USER,
};
use crate::circleci::postgres::{check_identifier, DEFAULT_DATABASES, DEFAULT_USER};
use crate::plugin::schema::{NestedBlock, Nesting};
use crate::plugin::{
    resource::changed, Applied, AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest,
    Resource, Schema, Type, Value,
};
use crate::provider::ProviderData;

mod container;
pub(crate) use container::fail as command_failed;
mod apply;
mod apply_mongo;
pub(crate) mod embedded_mongo;
pub mod embedded_postgres;
mod estimate;
mod settings;
mod tools;
pub(crate) mod vault_key;

const ID: &str = "circleci-data-migration";
const POSTGRES: &str = "postgres";
const MONGO: &str = "mongo";
const VAULT: &str = vault_key::BLOCK;
const EXPORT_DIR: &str = "/data/circle/external-services-export";
const STOP_TIMEOUT: &str = "10m";
const COMMAND_TIMEOUT: &str = "6h";
const SSLMODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];
/// The container the embedded PostgreSQL runs in during the export.
const CONTAINER: &str = "circleci-data-migration-postgres";
/// The restore's sslmode unless one is given: TLS, without a silent plain-text fallback.
const DEFAULT_SSLMODE: &str = "require";

/// What the last migration did; unknown in a plan that migrates.
const OUTCOME: [&str; 13] = [
    "app_stopped_at",
    "migrated_at",
    "elapsed",
    "postgres_elapsed",
    "throughput",
    "export_sha256",
    "export_bytes",
    "postgres_tables",
    "postgres_rows",
    "postgres_bytes",
    "mongo_collections",
    "mongo_documents",
    "skipped",
];

/// How many PostgreSQL databases are carried at once, unless `parallelism` says.
const DEFAULT_PARALLELISM: usize = 3;
/// sshd's MaxSessions is 10 by default: each database at work holds one session of
/// the one connection, and the cutover's record and the checks need a few more.
const MAX_PARALLELISM: usize = 8;

pub(crate) struct DataMigration {
    data: Arc<ProviderData>,
}

impl DataMigration {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        DataMigration { data }
    }
}

fn postgres_block() -> Block {
    let names = DEFAULT_DATABASES.map(|d| format!("`{d}`")).join(", ");
    super::password_attrs(
        Block::new()
            .description(
                "The embedded PostgreSQL and where its databases go. Each database is exported with `pg_dump -Fc` \
                 from a temporary container of the embedded version over the embedded data directory (as \
                 CircleCI's own export script does), then restored with `pg_restore --no-owner \
                 --no-privileges --single-transaction` into the database of the same name on the external \
                 server, logged in as `user` (the role `circleci_postgres_databases` made owner of them: no \
                 superuser is needed). Extensions are left as `circleci_postgres_databases` created them, and \
                 the `public` schema as the target has it (9.5's dumps create it; the target's initdb did).",
            )
            .attr(Attribute::new("image", Type::String).optional().computed().description(&format!(
                "The embedded PostgreSQL's image. Default `{}` (CircleCI 2.17's).",
                mig::PG_IMAGE
            )))
            .attr(Attribute::new("data_dir", Type::String).optional().computed().description(&format!(
                "The embedded data directory on the Services machine. Default `{}`.",
                mig::PG_DATA
            )))
            .attr(Attribute::new("restore_image", Type::String).optional().computed().description(
                "The image whose `pg_restore` and `psql` restore the dumps into the external PostgreSQL and \
                 compare them there, in a second temporary container with the export mounted (the embedded \
                 image's 9.5 tools cannot log in with SCRAM-SHA-256, the default of PostgreSQL 14 and later). \
                 Default: the official image of the target's release, e.g. `postgres:15`, read from the target \
                 at plan (or, when it cannot be reached then, before the stop). Refused, at plan when the tag \
                 of an official `postgres` image names a release and again before the stop from \
                 `pg_restore --version`: tools older than 9.5 (they cannot read the dumps), or older than 10 \
                 against a SCRAM target; tools newer than the target are a warning at plan (PostgreSQL \
                 documents restores into the same or a newer release).",
            ))
            .attr(Attribute::new("databases", Type::list(Type::String)).optional().computed().description(
                &format!("The databases to carry over. Default: the runbook's nine, {names}."),
            ))
            .attr(Attribute::new("host", Type::String).required().description(
                "The external PostgreSQL, as the Services machine reaches it (the restore runs there).",
            ))
            .attr(Attribute::new("port", Type::Number).optional().computed().description("Its port. Default `5432`."))
            .attr(Attribute::new("user", Type::String).optional().computed().description(
                "The role the data is restored as, owner of the target databases. Default `circle`.",
            ))
            .attr(Attribute::new("sslmode", Type::String).optional().computed().description(
                "libpq's sslmode for the restore's connection from the Services machine: `disable`, `allow`, \
                 `prefer`, `require` (default: TLS, never a silent fall back to plain text), `verify-ca` or \
                 `verify-full` (with `ca_file`). Anything but `verify-full` is a warning: the role's password and \
                 the whole of CircleCI's data would go to a server whose identity is not checked.",
            ))
            .attr(Attribute::new("ca_file", Type::String).optional().description(
                "A CA certificate (PEM) **on the Services machine** that signed the external PostgreSQL's \
                 certificate, mounted read-only into the container; required by `verify-ca` and `verify-full`.",
            ))
            .attr(Attribute::new("compression", Type::Number).optional().computed().description(
                "The zlib level of the dumps (`pg_dump -Z`), 0 to 9. Default `0`: uncompressed, the shortest \
                 downtime where CPU is what limits (compressing costs more CPU than the kept export's SHA-256 \
                 does, on the Services machine, while CircleCI is down); the export is then about the size of \
                 the tables. 1 to 9 keep a smaller export for more CPU during the downtime.",
            )),
        "The password of `user`",
        "nothing: the password is only used when the migration runs",
    )
}

fn mongo_block() -> Block {
    let names = MONGO_DATABASES.map(|d| format!("`{d}`")).join(", ");
    super::password_attrs(
        Block::new()
            .description(
                "The embedded MongoDB and where its databases go. Each database is exported with `mongodump` from \
                 a temporary container of the embedded version over the embedded data directory (as CircleCI's \
                 own export script does; `admin` is never carried), then restored with `mongorestore` into the \
                 database of the same name on the external MongoDB, logged in as `username` (the user \
                 `circleci_external_mongo` created with `readWrite` on them). The provider's `mongodb` block \
                 checks the targets before and counts and hashes them after.",
            )
            .attr(Attribute::new("image", Type::String).optional().computed().description(&format!(
                "The embedded MongoDB's image. Default `{}` (CircleCI 2.17's).",
                mig::MONGO_IMAGE
            )))
            .attr(Attribute::new("data_dir", Type::String).optional().computed().description(&format!(
                "The embedded data directory on the Services machine. Default `{}`.",
                mig::MONGO_DATA
            )))
            .attr(Attribute::new("restore_image", Type::String).optional().computed().description(
                "The image whose `mongorestore` restores the dumps into the external MongoDB, in a second \
                 temporary container with the export mounted (the embedded 3.6 tools speak the legacy opcodes \
                 MongoDB 5.1 removed). Default: the official image of the target's release line (`mongo:6.0` \
                 for 6.x; `mongo:8.0` for 5.1 to 5.3 and anything after 8.x), read at plan or before the stop. \
                 Images `mongo:4.4` and later carry the Database Tools 100.x. Refused, at plan from the tag and \
                 before the stop from `mongorestore --version`: tools older than 3.6, or the legacy tools \
                 (images before 4.4) against MongoDB 5.1 or later.",
            ))
            .attr(Attribute::new("databases", Type::list(Type::String)).optional().computed().description(
                &format!(
                    "The databases to carry over. Default: the runbook's four, {names}. One empty in the embedded \
                     MongoDB is left out; `{}` empty is an error (CircleCI's script checks for it).",
                    mig::EXPECTED_MONGO_DATABASE
                ),
            ))
            .attr(Attribute::new("hosts", Type::list(Type::String)).required().description(
                "`host:port` of each member of the external MongoDB, as the Services machine reaches them (the \
                 restore runs there). More than one needs `replica_set`.",
            ))
            .attr(Attribute::new("replica_set", Type::String).optional().description(
                "The replica set's name, when `hosts` are its members.",
            ))
            .attr(Attribute::new("username", Type::String).optional().computed().description(
                "The user the data is restored as. Default `circle`.",
            ))
            .attr(Attribute::new("auth_source", Type::String).optional().computed().description(
                "The database the user is defined in. Default `admin`.",
            ))
            .attr(Attribute::new("tls", Type::Bool).optional().computed().description(
                "Connect with TLS, as the runbook's `ssl=true`. Default `true`. The server's certificate is always \
                 verified: against `ca_file`, or the image's CA bundle (MongoDB's tools verify nothing without a \
                 CA file, so the provider always gives one).",
            ))
            .attr(Attribute::new("ca_file", Type::String).optional().description(
                "A CA certificate (PEM) **on the Services machine** that signed the external MongoDB's certificate, \
                 mounted read-only into the container.",
            )),
        "The password of `username`",
        "nothing: the password is only used when the migration runs",
    )
}

fn vault_block() -> Block {
    Block::new()
        .description(
            "The embedded Vault's transit key CircleCI encrypts contexts' secrets with. Without it, the external \
             Vault's fresh key cannot decrypt a single existing context secret. Moved with Vault's transit \
             backup and restore into the provider's `vault`. **This changes the source key for good**: Vault \
             hands out a backup only of a key marked `exportable` with `allow_plaintext_backup`, and neither \
             flag can ever be turned off again.",
        )
        .attr(Attribute::new("source_address", Type::String).required().description(
            "The embedded Vault's address, as Terraform reaches it (or the Services machine, with \
             `via_services_host`). Use `http://127.0.0.1:8200` with `via_services_host = true`: the embedded \
             Vault listens on plain HTTP, and plain HTTP to another machine (which would carry the root token \
             and the key's backup in clear) is a warning.",
        ))
        .attr(Attribute::new("source_token_wo", Type::String).required().sensitive().write_only().description(
            "A token of the embedded Vault that may update, back up and use the key (its root token), \
             write-only: never stored in the plan or state.",
        ))
        .attr(Attribute::new("source_ca_cert_file", Type::String).optional().description(
            "CA certificate (PEM) of the embedded Vault's certificate, when it uses https.",
        ))
        .attr(Attribute::new("via_services_host", Type::Bool).optional().description(
            "Reach the embedded Vault through the Services machine (an SSH `direct-tcpip` channel): then \
             `source_address` is as the Services machine reaches it, e.g. `http://127.0.0.1:8200`. Default: the \
             provider's `via_services_host`.",
        ))
        .attr(Attribute::new("source_mount", Type::String).optional().computed().description(
            "The transit mount in the embedded Vault. Default `transit`.",
        ))
        .attr(Attribute::new("key", Type::String).optional().computed().description(
            "The key's name, kept on the external Vault. Default `context-service`.",
        ))
        .attr(Attribute::new("target_mount", Type::String).optional().computed().description(
            "The transit mount in the external Vault (enabled if missing). Default `transit`.",
        ))
}

fn block() -> Block {
    let dur = |name: &str, default: &str, what: &str| {
        Attribute::new(name, Type::String)
            .optional()
            .computed()
            .description(&format!("{what}, e.g. `{default}` (default)."))
    };
    let flag = |name: &str, what: &str| {
        Attribute::new(name, Type::Bool)
            .optional()
            .computed()
            .description(what)
    };
    Block::new()
        .description(include_str!("about.md"))
        .attr(Attribute::new("id", Type::String).computed().description("Always `circleci-data-migration`."))
        .attr(Attribute::new("triggers", Type::map(Type::String)).optional().description(
            "Values whose change runs the migration again (against targets that now hold data, that needs \
             `overwrite_existing`). Nothing else does.",
        ))
        .attr(flag(
            "stop_app",
            "Stop CircleCI through `replicatedctl app stop` before the export and leave it stopped for \
             `circleci_services_restart`. Default `true`. With `false`, the migration refuses while CircleCI runs.",
        ))
        .attr(super::services_restart::allowed_versions_attr("the migration"))
        .attr(super::cutover::builds_timeout_attr())
        .attr(super::cutover::embedded_nomad_attr())
        .attr(dur("stop_timeout", STOP_TIMEOUT, "How long CircleCI may take to stop"))
        .attr(Attribute::new("on_failure", Type::String).optional().computed().description(
            "What happens when the migration fails. Either way the runbook files this cutover changed are put \
             back byte for byte as they were before its first write, and the external databases it wrote are \
             listed on the Services machine (`/data/circle/external-services-cutover/written.json`, 0600), so that \
             the next apply restores over them without `overwrite_existing`. `restore` (default): when the \
             migration stopped CircleCI, it is started again on those files and checked the runbook's way and \
             Nomad's. `stop`: CircleCI is left stopped, for a human to look.",
        ))
        .attr(dur("command_timeout", COMMAND_TIMEOUT, "The deadline of each export, import and check command"))
        .attr(Attribute::new("parallelism", Type::Number).optional().computed().description(&format!(
            "How many PostgreSQL databases are carried at once, 1 to {MAX_PARALLELISM} (each holds one SSH \
             session to the Services machine, whose sshd allows 10 by default). Each is exported, restored in \
             its own transaction and compared on its own. A free worker takes the largest left, so that the \
             longest database starts first and the small ones fill in at the end. After a failure or a stop no worker starts another restore. Default `{DEFAULT_PARALLELISM}`: on a 2-core \
             machine where both servers share the CPUs, `make bench` measured no gain beyond it; a Services \
             machine and an external server with more cores may use more."
        )))
        .attr(flag(
            "overwrite_existing",
            "Restore into target databases that already hold tables, and over a transit key of the same name \
             (the dump's objects are dropped first). Default `false`: such a target is refused before anything \
             changes, unless it already holds exactly the embedded data (then it is left as it is).",
        ))
        .attr(flag(
            "keep_export",
            "Keep the export on the Services machine as the backup before the change (mode 0600, in a 0700 \
             directory). Default `true`; `false` deletes it once the import is verified.",
        ))
        .attr(flag(
            "remove_export_on_destroy",
            "Delete the export files when this resource is destroyed. Default `false`.",
        ))
        .attr(Attribute::new("export_dir", Type::String).optional().computed().description(&format!(
            "Where the export is written on the Services machine (on the data volume). Default `{EXPORT_DIR}`."
        )))
        .attr(Attribute::new("config_root", Type::String).optional().computed().description(
            "The directory the machine's paths are under, for removing the export on destroy. Default `/`; only \
             tests and demos change it.",
        ))
        .attr(Attribute::new("app_stopped_at", Type::String).computed().description(
            "When CircleCI was stopped for the migration (RFC 3339, UTC); empty when it already was.",
        ))
        .attr(Attribute::new("migrated_at", Type::String).computed().description(
            "When the migration was verified (RFC 3339, UTC).",
        ))
        .attr(Attribute::new("elapsed", Type::String).computed().description("How long the migration took, e.g. `42.5s`."))
        .attr(Attribute::new("postgres_elapsed", Type::String).computed().description(
            "How long the PostgreSQL part took, from the temporary container's start to its removal, e.g. `20.1s`.",
        ))
        .attr(Attribute::new("throughput", Type::String).computed().description(
            "The embedded databases' size and rows over `postgres_elapsed`, e.g. `12.3 MB/s, 45000 rows/s`.",
        ))
        .attr(Attribute::new("export_sha256", Type::map(Type::String)).computed().description(
            "Each export file on the Services machine (full path) and its SHA-256.",
        ))
        .attr(Attribute::new("export_bytes", Type::Number).computed().description("The export's total size in bytes."))
        .attr(Attribute::new("postgres_tables", Type::map(Type::String)).computed().description(
            "Every table carried over (`database.schema.table`) with its row count and content checksum, equal \
             on both sides: `N rows, checksum C`.",
        ))
        .attr(Attribute::new("postgres_rows", Type::Number).computed().description("Rows carried over in all."))
        .attr(Attribute::new("postgres_bytes", Type::Number).computed().description(
            "The embedded databases' size in bytes (`pg_database_size`).",
        ))
        .attr(Attribute::new("mongo_collections", Type::map(Type::String)).computed().description(
            "Every MongoDB collection carried over (`database.collection`) with its document count and `dbHash` \
             md5, equal on both sides: `N documents, checksum C` (a capped collection: `N documents, capped \
             (compared by count)`; a view: `view on C, showing N documents`).",
        ))
        .attr(Attribute::new("mongo_documents", Type::Number).computed().description("MongoDB documents carried over in all."))
        .attr(Attribute::new("skipped", Type::list(Type::String)).computed().description(
            "Targets found already holding exactly the embedded data, left as they were (e.g. after an \
             interrupted apply).",
        ))
        .block(NestedBlock::new(POSTGRES, Nesting::Single, postgres_block()))
        .block(NestedBlock::new(MONGO, Nesting::Single, mongo_block()))
        .block(NestedBlock::new(VAULT, Nesting::Single, vault_block()))
}

fn check_image(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'))
        && !s.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a Docker image reference such as \"postgres:9.5.8\""
        ))
    }
}

fn check_auth_source(s: &str) -> Result<(), String> {
    if s == "admin" {
        return Ok(());
    }
    mig::check_mongo_database(s).map_err(|e| format!("{s:?} {e}"))
}

fn check_address(s: &str) -> Result<(), String> {
    crate::circleci::vault::Address::parse(s).map(|_| ())
}

fn validate_config(config: &Value) -> Diagnostics {
    use validate::Check;
    let mut diags = Diagnostics::new();
    let d = |min, max| Check::Duration {
        min_secs: min,
        max_secs: max,
    };
    validate::run(
        config,
        &[
            ("stop_timeout", d(1, 24 * 3600)),
            ("builds_timeout", d(0, 24 * 3600)),
            ("command_timeout", d(1, 48 * 3600)),
            (
                "parallelism",
                Check::Int {
                    min: 1,
                    max: i64::try_from(MAX_PARALLELISM).unwrap_or(i64::MAX),
                },
            ),
            ("export_dir", Check::MountPath),
            ("config_root", Check::RemotePath),
            ("on_failure", Check::OneOf(&["restore", "stop"])),
        ],
        &mut diags,
    );
    super::services_restart::validate_versions(config, &mut diags);
    super::cutover::validate(config, &mut diags);
    validate::run_in(
        config,
        POSTGRES,
        &[
            ("image", Check::Text("Invalid image", check_image)),
            ("data_dir", Check::MountPath),
            ("restore_image", Check::Text("Invalid image", check_image)),
            ("host", Check::Host),
            ("port", Check::Port),
            ("user", Check::Text("Invalid role name", check_identifier)),
            ("sslmode", Check::OneOf(&SSLMODES)),
            ("ca_file", Check::MountPath),
            ("compression", Check::Int { min: 0, max: 9 }),
            ("password_wo", Check::PasswordPair),
        ],
        &mut diags,
    );
    validate::run_in(
        config,
        MONGO,
        &[
            ("image", Check::Text("Invalid image", check_image)),
            ("data_dir", Check::MountPath),
            ("restore_image", Check::Text("Invalid image", check_image)),
            ("username", Check::NonEmpty),
            (
                "auth_source",
                Check::Text("Invalid database name", check_auth_source),
            ),
            ("ca_file", Check::MountPath),
            ("password_wo", Check::PasswordPair),
        ],
        &mut diags,
    );
    validate::run_in(
        config,
        VAULT,
        &[
            (
                "source_address",
                Check::Text("Invalid Vault address", check_address),
            ),
            (
                "source_mount",
                Check::Text("Invalid mount", super::vault_transit_client::check_name),
            ),
            (
                "target_mount",
                Check::Text("Invalid mount", super::vault_transit_client::check_name),
            ),
            (
                "key",
                Check::Text("Invalid key name", super::vault_transit_client::check_name),
            ),
        ],
        &mut diags,
    );
    databases(
        config,
        POSTGRES,
        "the runbook's nine",
        check_identifier,
        &mut diags,
    );
    databases(
        config,
        MONGO,
        "the runbook's four",
        mig::check_mongo_database,
        &mut diags,
    );
    if let Some(hosts) = config.get(MONGO).get("hosts").as_list() {
        validate::host_ports(hosts, &AttrPath::root(MONGO).attr("hosts"), &mut diags);
        if hosts.len() > 1 && config.get(MONGO).get("replica_set").is_null() {
            diags.attr_error(
                AttrPath::root(MONGO).attr("replica_set"),
                "Replica set name missing",
                "several hosts are the members of a replica set: give its name (mongorestore connects to a set \
                 as NAME/host:port,...)",
            );
        }
    }
    export_dir(config, &mut diags);
    restore_tls(config, &mut diags);
    embedded_vault_in_clear(config, &mut diags);
    let given = |b: &str| !config.get(b).is_null();
    if !given(POSTGRES) && !given(MONGO) && !given(VAULT) {
        diags.attr_error(
            AttrPath::root(POSTGRES),
            "Nothing to migrate",
            "add a postgres, mongo or vault_transit_key block (or several)",
        );
    }
    diags
}

/// The embedded Vault reached over plain HTTP across a network: its root token and the
/// key's plaintext backup would travel in clear. A warning (the embedded Vault of
/// CircleCI 2.17 listens on plain HTTP), with the way that keeps both on one machine.
fn embedded_vault_in_clear(config: &Value, diags: &mut Diagnostics) {
    let addr = config.get(VAULT).get("source_address");
    let Some(a) = addr
        .as_str()
        .and_then(|a| crate::circleci::vault::Address::parse(a).ok())
    else {
        return;
    };
    if a.clear_over_network() {
        diags.push(
            Diagnostic::warning(
                "Embedded Vault reached in plain text",
                format!(
                    "{} is plain HTTP to another machine: the embedded Vault's root token (source_token_wo) \
                     and the plaintext backup of the transit key would cross the network in clear. Reach it \
                     through the Services machine instead: via_services_host = true in this block, and \
                     source_address = \"http://127.0.0.1:8200\" (the Services machine's own loopback).",
                    a.url()
                ),
            )
            .at(AttrPath::root(VAULT).attr("source_address")),
        );
    }
}

/// The restore's TLS: `verify-ca` and `verify-full` need the CA on the Services
/// machine; anything below `verify-full` is a warning, as for the provider's own
/// PostgreSQL block, since the role's password and all the data are sent.
fn restore_tls(config: &Value, diags: &mut Diagnostics) {
    let pg = config.get(POSTGRES);
    if pg.is_null() || pg.is_unknown() || pg.get("sslmode").is_unknown() {
        return;
    }
    let mode = pg.get("sslmode").as_str().unwrap_or(DEFAULT_SSLMODE);
    if !SSLMODES.contains(&mode) {
        return;
    }
    if mode.starts_with("verify-") && pg.get("ca_file").is_null() {
        diags.attr_error(
            AttrPath::root(POSTGRES).attr("ca_file"),
            "CA certificate needed",
            format!(
                "sslmode = {mode:?} checks the external PostgreSQL's certificate against a CA the temporary \
                 container must have: set ca_file to that CA's PEM file on the Services machine"
            ),
        );
    }
    if mode != "verify-full" {
        diags.push(
            Diagnostic::warning(
                "PostgreSQL server identity not checked by the restore",
                format!(
                    "sslmode = {mode:?}{}: the restore sends the role's password and the whole of CircleCI's data \
                     without checking that the server is the one you meant ({}). Use sslmode = \"verify-full\" \
                     with ca_file.",
                    if pg.get("sslmode").is_null() { " (the default)" } else { "" },
                    match mode {
                        "disable" => "and in plain text",
                        "allow" | "prefer" => "and in plain text if the server offers no TLS",
                        "verify-ca" => "the certificate's host name is not checked",
                        _ => "any certificate is accepted",
                    }
                ),
            )
            .at(AttrPath::root(POSTGRES).attr("sslmode")),
        );
    }
}

/// `export_dir` is the migration's own directory: not the root, a system directory or
/// one of the embedded data directories (configured or default), a parent or a child
/// of one.
fn export_dir(config: &Value, diags: &mut Diagnostics) {
    let dir = config.get("export_dir");
    // A path the generic check refuses (relative, "/", ending in "/") has its error.
    let Some(dir) = dir
        .as_str()
        .filter(|d| d.starts_with('/') && !d.ends_with('/'))
    else {
        return;
    };
    let data = |block: &str, default: &'static str| {
        let v = config.get(block).get("data_dir");
        match v.as_str() {
            Some(d) => Some(d.to_string()),
            None if v.is_null() => Some(default.to_string()),
            None => None,
        }
    };
    let dirs = [
        ("postgres.data_dir", data(POSTGRES, mig::PG_DATA)),
        ("mongo.data_dir", data(MONGO, mig::MONGO_DATA)),
    ];
    let known: Vec<(&str, &str)> = dirs
        .iter()
        .filter_map(|(a, d)| d.as_deref().map(|d| (*a, d)))
        .collect();
    if let Err(why) = mig::check_export_dir(dir, &known) {
        diags.attr_error(AttrPath::root("export_dir"), "Unsafe export directory", why);
    }
}

/// The `databases` list of `block`: each name valid and listed once, at least one.
fn databases(
    config: &Value,
    block: &str,
    default: &str,
    check: fn(&str) -> Result<(), String>,
    diags: &mut Diagnostics,
) {
    let Some(list) = config.get(block).get("databases").as_list() else {
        return;
    };
    let mut seen = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let Some(db) = v.as_str() else { continue };
        let at = AttrPath::root(block).attr("databases").index(i);
        if let Err(e) = check(db) {
            diags.attr_error(at, "Invalid database name", format!("{db:?} {e}"));
        } else if seen.contains(&db) {
            diags.attr_error(at, "Duplicate database", format!("{db:?} is listed twice"));
        }
        seen.push(db);
    }
    if list.is_empty() {
        diags.attr_error(
            AttrPath::root(block).attr("databases"),
            "No databases",
            format!("list at least one database, or leave databases out for {default}"),
        );
    }
}

/// Fills the defaults of the nested blocks that are present.
fn nested_defaults(planned: &mut Value) {
    let fill = |b: &mut Value, pairs: Vec<(&str, Value)>| {
        for (k, v) in pairs {
            if b.get(k).is_null() {
                b.set(k, v);
            }
        }
    };
    let mut pg = planned.get(POSTGRES).clone();
    if !pg.is_null() && !pg.is_unknown() {
        let dbs: Vec<String> = DEFAULT_DATABASES.iter().map(|s| s.to_string()).collect();
        fill(
            &mut pg,
            vec![
                ("image", Value::string(mig::PG_IMAGE)),
                ("data_dir", Value::string(mig::PG_DATA)),
                ("databases", string_list(&dbs)),
                ("port", Value::int(5432)),
                ("user", Value::string(DEFAULT_USER)),
                ("sslmode", Value::string(DEFAULT_SSLMODE)),
                ("compression", Value::int(0)),
            ],
        );
        planned.set(POSTGRES, pg);
    }
    let mut m = planned.get(MONGO).clone();
    if !m.is_null() && !m.is_unknown() {
        let dbs: Vec<String> = MONGO_DATABASES.iter().map(|s| s.to_string()).collect();
        fill(
            &mut m,
            vec![
                ("image", Value::string(mig::MONGO_IMAGE)),
                ("data_dir", Value::string(mig::MONGO_DATA)),
                ("databases", string_list(&dbs)),
                ("username", Value::string(MONGO_USER)),
                ("auth_source", Value::string(MONGO_AUTH_SOURCE)),
                ("tls", Value::Bool(true)),
            ],
        );
        planned.set(MONGO, m);
    }
    let mut v = planned.get(VAULT).clone();
    if !v.is_null() && !v.is_unknown() {
        fill(
            &mut v,
            vec![
                ("source_mount", Value::string("transit")),
                ("key", Value::string("context-service")),
                ("target_mount", Value::string("transit")),
            ],
        );
        planned.set(VAULT, v);
    }
}

fn top_defaults() -> [(&'static str, Value); 13] {
    let [nomad, builds] = super::cutover::defaults();
    [
        nomad,
        builds,
        ("stop_app", Value::Bool(true)),
        (
            "allowed_versions",
            super::string_list(&[super::services_restart::DEFAULT_VERSIONS.to_string()]),
        ),
        ("stop_timeout", Value::string(STOP_TIMEOUT)),
        ("command_timeout", Value::string(COMMAND_TIMEOUT)),
        ("parallelism", Value::count(DEFAULT_PARALLELISM)),
        ("overwrite_existing", Value::Bool(false)),
        ("keep_export", Value::Bool(true)),
        ("remove_export_on_destroy", Value::Bool(false)),
        ("export_dir", Value::string(EXPORT_DIR)),
        ("config_root", Value::string("/")),
        ("on_failure", Value::string("restore")),
    ]
}

#[async_trait]
impl Resource for DataMigration {
    fn type_name(&self) -> &'static str {
        "circleci_data_migration"
    }

    fn schema(&self) -> Schema {
        Schema::new(0, block())
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        validate_config(config)
    }

    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        diags: &mut Diagnostics,
    ) -> Vec<AttrPath> {
        super::set_defaults(req.config, planned, top_defaults());
        nested_defaults(planned);
        planned.set("id", Value::string(ID));
        // An imported migration (made by other means) records no triggers: the first
        // plan adopts the configured ones rather than migrating again.
        let imported = req.prior.get("migrated_at").as_str() == Some("")
            && req.prior.get("triggers").is_null();
        let migrate = req.is_create() || (changed(req.prior, planned, "triggers") && !imported);
        for a in OUTCOME {
            let v = if migrate {
                Value::Unknown
            } else {
                req.prior.get(a).clone()
            };
            planned.set(a, v);
        }
        self.plan_restore_images(planned, req.config, req.prior, migrate, diags)
            .await;
        if migrate {
            self.preview_stop(planned, diags).await;
        }
        vec![]
    }

    async fn create(&self, planned: &Value, config: &Value) -> Applied {
        self.migrate(planned, config).await
    }

    async fn update(&self, _prior: &Value, planned: &Value, config: &Value) -> Applied {
        if !planned.get("migrated_at").is_unknown() {
            return Applied::from_result(Ok(planned.clone()));
        }
        self.migrate(planned, config).await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        // A migration is an event: it holds until a failed cutover puts CircleCI back
        // on the embedded data, which it then keeps writing to.
        if self.fell_back(state).await {
            return Ok(None);
        }
        Ok(Some(state.clone()))
    }

    async fn delete(&self, prior: &Value) -> Applied {
        if prior.get("remove_export_on_destroy").as_bool() != Some(true) {
            return Applied::deleted(Diagnostics::new());
        }
        match self.remove_export(prior).await {
            Ok(()) => Applied::deleted(Diagnostics::new()),
            Err(d) => Applied::kept(prior, d),
        }
    }

    async fn import(&self, id: &str) -> Result<Value, Diagnostics> {
        if id != ID {
            return Err(Diagnostic::error(
                "Invalid import ID",
                format!(
                    "import a migration made by other means as {ID:?} (got {id:?}); the resource then records \
                     that it happened and never runs it"
                ),
            )
            .into());
        }
        let mut v = Value::Null;
        v.set("id", Value::string(ID));
        for (k, d) in top_defaults() {
            v.set(k, d);
        }
        for a in OUTCOME {
            v.set(a, Value::Null);
        }
        v.set("migrated_at", Value::string(""));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    /// The restart and the next apply find the temporary containers by this prefix.
    #[test]
    fn containers_carry_the_prefix_the_restart_looks_for() {
        let prefix = crate::resources::cutover::MIGRATION_CONTAINER;
        assert!(super::CONTAINER.starts_with(prefix));
        assert!(super::apply_mongo::CONTAINER.starts_with(prefix));
        assert!(super::tools::CONTAINER.starts_with(prefix));
    }
}
