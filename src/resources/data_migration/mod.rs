//! `circleci_data_migration`: carries the data of the embedded PostgreSQL and the
//! embedded Vault's transit key over to the external services, the step the runbook
//! requires ("the content of the databases currently in use on the Services machine
//! must be exported and then imported into the external databases") and never spells
//! out. Create runs the migration once; nothing else does, unless `triggers` change.
//!
//! This file holds the resource's attributes (one `model!` declaration each, the
//! `postgres`, `mongo` and `vault_transit_key` blocks included) and its hooks:
//! validate, plan, read, import. What create, update and delete do is in `apply`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::cutover::{duration_or, StopAttrs, StopSettings};
use super::model::{self, Known, Model, One, Undecoded};
use super::validate::{self, Check};
use crate::circleci::migration as mig;
use crate::circleci::mongo::{
    DEFAULT_AUTH_SOURCE as MONGO_AUTH_SOURCE, DEFAULT_DATABASES as MONGO_DATABASES,
    DEFAULT_USER as MONGO_USER,
};
use crate::circleci::postgres::{check_identifier, DEFAULT_DATABASES, DEFAULT_USER};
use crate::plugin::{
    Applied, AttrPath, Diagnostic, Diagnostics, PlanRequest, Resource, Schema, Value,
};
use crate::provider::ProviderData;
use crate::secret::Secret;

mod apply;
mod apply_mongo;
mod container;
pub(crate) use container::fail as command_failed;
pub(crate) mod embedded_mongo;
pub mod embedded_postgres;
mod estimate;
mod settings;
mod tools;
pub(crate) mod vault_key;
mod workers;

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

/// How many databases (PostgreSQL and MongoDB together) are carried at once, unless
/// `parallelism` says.
const DEFAULT_PARALLELISM: i64 = 2;
/// sshd's MaxSessions is 10 by default: each database at work holds one session of
/// the one connection (both parts together), and the parts' starts and the cutover's
/// record need a few more. The SSH layer never has more than nine commands open at
/// once (`ssh::EXEC_SESSIONS`), so these wait for a session rather than fail.
const MAX_PARALLELISM: i64 = 8;

pub(crate) struct DataMigration {
    data: Arc<ProviderData>,
}

impl DataMigration {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        DataMigration { data }
    }
}

/// A duration attribute's description: what it bounds, and its default.
fn duration_doc(what: &str, default: &str) -> String {
    format!("{what}, e.g. `{default}` (default).")
}

/// A duration within `[min, max]` seconds.
const fn duration_check(min_secs: u64, max_secs: u64) -> Check {
    Check::Duration { min_secs, max_secs }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The names of `dbs` as the descriptions list them.
fn listed(dbs: &[&str]) -> String {
    dbs.iter()
        .map(|d| format!("`{d}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

const WHOSE: &str = "The password of `user`";
const MONGO_WHOSE: &str = "The password of `username`";
const APPLIES_TO: &str = "nothing: the password is only used when the migration runs";

crate::model! {
    /// `circleci_data_migration`'s attributes. The blocks are read through [`Parts`],
    /// which reads a block even while the plan leaves some of its values unknown.
    #[allow(dead_code, reason = "the blocks are read through Parts")]
    pub(super) struct Migration / MigrationAtPlan {
        id: Known<String> [computed, doc("Always `circleci-data-migration`.")],
        triggers: Option<BTreeMap<String, Option<String>>> [optional, doc(
            "Values whose change runs the migration again (against targets that now hold data, that needs \
             `overwrite_existing`). Nothing else does."
        )],
        stop_app: bool [default_in_doc(true), doc(
            "Stop CircleCI through `replicatedctl app stop` before the export and leave it stopped for \
             `circleci_services_restart`. Default `true`. With `false`, the migration refuses while CircleCI runs."
        )],
        allowed_versions: Vec<String> [stop_allowed_versions("the migration")],
        builds_timeout: String [stop_builds_timeout],
        embedded_nomad_endpoint: String [stop_embedded_nomad],
        stop_timeout: String [default_in_doc(STOP_TIMEOUT.to_string()),
            check(duration_check(1, 24 * 3600)),
            doc(duration_doc("How long CircleCI may take to stop", STOP_TIMEOUT))],
        on_failure: String [default_in_doc("restore".to_string()),
            check(Check::OneOf(&["restore", "stop"])), doc(
            "What happens when the migration fails. Either way the runbook files this cutover changed are put \
             back byte for byte as they were before its first write, and the external databases it wrote are \
             listed on the Services machine (`/data/circle/external-services-cutover/written.json`, 0600), so that \
             the next apply restores over them without `overwrite_existing`. `restore` (default): when the \
             migration stopped CircleCI, it is started again on those files and checked the runbook's way and \
             Nomad's. `stop`: CircleCI is left stopped, for a human to look."
        )],
        command_timeout: String [default_in_doc(COMMAND_TIMEOUT.to_string()),
            check(duration_check(1, 48 * 3600)),
            doc(duration_doc("The deadline of each export, import and check command", COMMAND_TIMEOUT))],
        parallelism: i64 [default_in_doc(DEFAULT_PARALLELISM),
            check(Check::Int { min: 1, max: MAX_PARALLELISM }), doc(format!(
            "How many databases are carried at once, 1 to {MAX_PARALLELISM}: the PostgreSQL and the MongoDB \
             databases together, as both parts run at the same time (each database under way holds one SSH \
             session to the Services machine, whose sshd allows 10 by default; the PostgreSQL databases go \
             as jobs to commands kept open in the containers between them instead of a `docker exec` per \
             database each way: one of each kind per worker at 1 and 2, two at 3 and 4, one at 5 and 6, \
             none from 7 on, to leave sshd's sessions to the rest). Each is exported, then \
             restored and compared on its own, all or nothing (a PostgreSQL database in one transaction; a \
             MongoDB database that was empty loses again what a failed restore wrote). Among \
             the PostgreSQL databases a free worker takes the largest left, so that the longest database \
             starts first and the small ones fill in at the end; the MongoDB databases go in list order. \
             After a failure in either part or a stop no worker takes another database nor starts another \
             restore; those under way finish. Default `{DEFAULT_PARALLELISM}`: on a 2-core machine where \
             both servers share the CPUs, `make bench` measured the PostgreSQL databases faster at 2 than \
             at 3 (the CPUs are busy throughout at 2); a Services machine and an external server with more \
             cores may use more."
        ))],
        overwrite_existing: bool [default_in_doc(false), doc(
            "Restore into target databases that already hold tables, and over a transit key of the same name \
             (the dump's objects are dropped first). Default `false`: such a target is refused before anything \
             changes, unless it already holds exactly the embedded data (then it is left as it is)."
        )],
        keep_export: bool [default_in_doc(true), doc(
            "Keep the export on the Services machine as the backup before the change (mode 0600, in a 0700 \
             directory). Default `true`; `false` deletes it once the import is verified."
        )],
        remove_export_on_destroy: bool [default(false), doc(
            "Delete the export files when this resource is destroyed."
        )],
        export_dir: String [default(EXPORT_DIR.to_string()), check(Check::MountPath), doc(
            "Where the export is written on the Services machine (on the data volume)."
        )],
        config_root: String [default_in_doc("/".to_string()), check(Check::RemotePath), doc(
            "The directory the machine's paths are under, for removing the export on destroy. Default `/`; only \
             tests and demos change it."
        )],
        app_stopped_at: Known<String> [computed, doc(
            "When CircleCI was stopped for the migration (RFC 3339, UTC); empty when it already was."
        )],
        migrated_at: Known<String> [computed, doc(
            "When the migration was verified (RFC 3339, UTC)."
        )],
        elapsed: Known<String> [computed, doc("How long the migration took, e.g. `42.5s`.")],
        postgres_elapsed: Known<String> [computed, doc(
            "How long the PostgreSQL part took, from the temporary container's start to its removal, e.g. `20.1s`."
        )],
        throughput: Known<String> [computed, doc(
            "The embedded databases' size and rows over `postgres_elapsed`, e.g. `12.3 MB/s, 45000 rows/s`."
        )],
        export_sha256: Known<BTreeMap<String, String>> [computed, doc(
            "Each export file on the Services machine (full path) and its SHA-256."
        )],
        export_bytes: Known<i64> [computed, doc("The export's total size in bytes.")],
        postgres_tables: Known<BTreeMap<String, String>> [computed, doc(
            "Every table carried over (`database.schema.table`) with its row count and content checksum, equal \
             on both sides: `N rows, checksum C`."
        )],
        postgres_rows: Known<i64> [computed, doc("Rows carried over in all.")],
        postgres_bytes: Known<i64> [computed, doc(
            "The embedded databases' size in bytes (`pg_database_size`)."
        )],
        mongo_collections: Known<BTreeMap<String, String>> [computed, doc(
            "Every MongoDB collection carried over (`database.collection`) with its document count and `dbHash` \
             md5, equal on both sides: `N documents, checksum C` (a capped collection: `N documents, capped \
             (compared by count)`; a view: `view on C, showing N documents`)."
        )],
        mongo_documents: Known<i64> [computed, doc("MongoDB documents carried over in all.")],
        skipped: Known<Vec<String>> [computed, doc(
            "Targets found already holding exactly the embedded data, left as they were (e.g. after an \
             interrupted apply)."
        )],
        postgres: Known<One<Pg>> [optional, doc(
            "The embedded PostgreSQL and where its databases go. Each database is exported with `pg_dump -Fc` \
             from a temporary container of the embedded version over the embedded data directory (as \
             CircleCI's own export script does), then restored with `pg_restore --no-owner \
             --no-privileges --single-transaction` into the database of the same name on the external \
             server, logged in as `user` (the role `circleci_postgres_databases` made owner of them: no \
             superuser is needed). Extensions are left as `circleci_postgres_databases` created them, and \
             the `public` schema as the target has it (9.5's dumps create it; the target's initdb did)."
        )],
        mongo: Known<One<Mongo>> [optional, doc(
            "The embedded MongoDB and where its databases go. Each database is exported with `mongodump` from \
             a temporary container of the embedded version over the embedded data directory (as CircleCI's \
             own export script does; `admin` is never carried), then restored with `mongorestore` into the \
             database of the same name on the external MongoDB, logged in as `username` (the user \
             `circleci_external_mongo` created with `readWrite` on them). The provider's `mongodb` block \
             checks the targets before and counts and hashes them after."
        )],
        vault_transit_key: Known<One<VaultKey>> [optional, doc(
            "The embedded Vault's transit key CircleCI encrypts contexts' secrets with. Without it, the external \
             Vault's fresh key cannot decrypt a single existing context secret. Moved with Vault's transit \
             backup and restore into the provider's `vault`. **This changes the source key for good**: Vault \
             hands out a backup only of a key marked `exportable` with `allow_plaintext_backup`, and neither \
             flag can ever be turned off again."
        )],
    }
}

crate::model! {
    /// The `postgres` block: the embedded PostgreSQL, and the external one it goes to.
    pub(super) struct Pg / PgAtPlan {
        image: String [default_in_doc(mig::PG_IMAGE.to_string()),
            check(Check::Text("Invalid image", check_image)), doc(format!(
            "The embedded PostgreSQL's image. Default `{}` (CircleCI 2.17's).",
            mig::PG_IMAGE
        ))],
        data_dir: String [default(mig::PG_DATA.to_string()), check(Check::MountPath), doc(
            "The embedded data directory on the Services machine."
        )],
        restore_image: Known<String> [optional, computed,
            check(Check::Text("Invalid image", check_image)), doc(
            "The image whose `pg_restore` and `psql` restore the dumps into the external PostgreSQL and \
             compare them there, in a second temporary container with the export mounted (the embedded \
             image's 9.5 tools cannot log in with SCRAM-SHA-256, the default of PostgreSQL 14 and later). \
             Default: the official image of the target's release, e.g. `postgres:15`, read from the target \
             at plan (or, when it cannot be reached then, before the stop). Refused, at plan when the tag \
             of an official `postgres` image names a release and again before the stop from \
             `pg_restore --version`: tools older than 9.5 (they cannot read the dumps), or older than 10 \
             against a SCRAM target; tools newer than the target are a warning at plan (PostgreSQL \
             documents restores into the same or a newer release)."
        )],
        databases: Vec<String> [default_in_doc(strings(&DEFAULT_DATABASES)), doc(format!(
            "The databases to carry over. Default: the runbook's nine, {}.",
            listed(&DEFAULT_DATABASES)
        ))],
        host: String [required, check(Check::Host), doc(
            "The external PostgreSQL, as the Services machine reaches it (the restore runs there)."
        )],
        port: u16 [default(5432u16), check(Check::Port), doc("Its port.")],
        user: String [default(DEFAULT_USER.to_string()),
            check(Check::Text("Invalid role name", check_identifier)), doc(
            "The role the data is restored as, owner of the target databases."
        )],
        sslmode: String [default_in_doc(DEFAULT_SSLMODE.to_string()), check(Check::OneOf(&SSLMODES)), doc(
            "libpq's sslmode for the restore's connection from the Services machine: `disable`, `allow`, \
             `prefer`, `require` (default: TLS, never a silent fall back to plain text), `verify-ca` or \
             `verify-full` (with `ca_file`). Anything but `verify-full` is a warning: the role's password and \
             the whole of CircleCI's data would go to a server whose identity is not checked."
        )],
        ca_file: Option<String> [optional, check(Check::MountPath), doc(
            "A CA certificate (PEM) **on the Services machine** that signed the external PostgreSQL's \
             certificate, mounted read-only into the container; required by `verify-ca` and `verify-full`."
        )],
        compression: i64 [default_in_doc(0i64), check(Check::Int { min: 0, max: 9 }), doc(
            "The zlib level of the dumps (`pg_dump -Z`), 0 to 9. Default `0`: uncompressed, the shortest \
             downtime where CPU is what limits (compressing costs more CPU than the kept export's SHA-256 \
             does, on the Services machine, while CircleCI is down); the export is then about the size of \
             the tables. 1 to 9 keep a smaller export for more CPU during the downtime."
        )],
        password: Option<Secret> [password_kept(WHOSE)],
        password_wo: Option<Secret> [password_write_only(WHOSE)],
        password_wo_version: Option<f64> [password_version(APPLIES_TO)],
    }
}

crate::model! {
    /// The `mongo` block: the embedded MongoDB, and the external one it goes to.
    pub(super) struct Mongo / MongoAtPlan {
        image: String [default_in_doc(mig::MONGO_IMAGE.to_string()),
            check(Check::Text("Invalid image", check_image)), doc(format!(
            "The embedded MongoDB's image. Default `{}` (CircleCI 2.17's).",
            mig::MONGO_IMAGE
        ))],
        data_dir: String [default(mig::MONGO_DATA.to_string()), check(Check::MountPath), doc(
            "The embedded data directory on the Services machine."
        )],
        restore_image: Known<String> [optional, computed,
            check(Check::Text("Invalid image", check_image)), doc(
            "The image whose `mongorestore` restores the dumps into the external MongoDB, in a second \
             temporary container with the export mounted (the embedded 3.6 tools speak the legacy opcodes \
             MongoDB 5.1 removed). Default: the official image of the target's release line (`mongo:6.0` \
             for 6.x; `mongo:8.0` for 5.1 to 5.3 and anything after 8.x), read at plan or before the stop. \
             Images `mongo:4.4` and later carry the Database Tools 100.x. Refused, at plan from the tag and \
             before the stop from `mongorestore --version`: tools older than 3.6, or the legacy tools \
             (images before 4.4) against MongoDB 5.1 or later."
        )],
        databases: Vec<String> [default_in_doc(strings(&MONGO_DATABASES)), doc(format!(
            "The databases to carry over. Default: the runbook's four, {}. One empty in the embedded \
             MongoDB is left out; `{}` empty is an error (CircleCI's script checks for it).",
            listed(&MONGO_DATABASES),
            mig::EXPECTED_MONGO_DATABASE
        ))],
        hosts: Vec<String> [required, doc(
            "`host:port` of each member of the external MongoDB, as the Services machine reaches them (the \
             restore runs there). More than one needs `replica_set`."
        )],
        replica_set: Option<String> [optional, doc(
            "The replica set's name, when `hosts` are its members."
        )],
        username: String [default(MONGO_USER.to_string()), check(Check::NonEmpty), doc(
            "The user the data is restored as."
        )],
        auth_source: String [default(MONGO_AUTH_SOURCE.to_string()),
            check(Check::Text("Invalid database name", check_auth_source)), doc(
            "The database the user is defined in."
        )],
        tls: bool [default_in_doc(true), doc(
            "Connect with TLS, as the runbook's `ssl=true`. Default `true`. The server's certificate is always \
             verified: against `ca_file`, or the image's CA bundle (MongoDB's tools verify nothing without a \
             CA file, so the provider always gives one)."
        )],
        ca_file: Option<String> [optional, check(Check::MountPath), doc(
            "A CA certificate (PEM) **on the Services machine** that signed the external MongoDB's certificate, \
             mounted read-only into the container."
        )],
        password: Option<Secret> [password_kept(MONGO_WHOSE)],
        password_wo: Option<Secret> [password_write_only(MONGO_WHOSE)],
        password_wo_version: Option<f64> [password_version(APPLIES_TO)],
    }
}

crate::model! {
    /// The `vault_transit_key` block: the embedded Vault's key and where it goes.
    pub(super) struct VaultKey / VaultKeyAtPlan {
        source_address: String [required,
            check(Check::Text("Invalid Vault address", check_address)), doc(
            "The embedded Vault's address, as Terraform reaches it (or the Services machine, with \
             `via_services_host`). Use `http://127.0.0.1:8200` with `via_services_host = true`: the embedded \
             Vault listens on plain HTTP, and plain HTTP to another machine (which would carry the root token \
             and the key's backup in clear) is a warning."
        )],
        source_token_wo: Option<Secret> [required, write_only, doc(
            "A token of the embedded Vault that may update, back up and use the key (its root token), \
             write-only: never stored in the plan or state."
        )],
        source_ca_cert_file: Option<String> [optional, doc(
            "CA certificate (PEM) of the embedded Vault's certificate, when it uses https."
        )],
        via_services_host: Option<bool> [optional, doc(
            "Reach the embedded Vault through the Services machine (an SSH `direct-tcpip` channel): then \
             `source_address` is as the Services machine reaches it, e.g. `http://127.0.0.1:8200`. Default: the \
             provider's `via_services_host`."
        )],
        source_mount: String [default("transit".to_string()),
            check(Check::Text("Invalid mount", super::vault_transit_client::check_name)), doc(
            "The transit mount in the embedded Vault."
        )],
        key: String [default("context-service".to_string()),
            check(Check::Text("Invalid key name", super::vault_transit_client::check_name)), doc(
            "The key's name, kept on the external Vault."
        )],
        target_mount: String [default("transit".to_string()),
            check(Check::Text("Invalid mount", super::vault_transit_client::check_name)), doc(
            "The transit mount in the external Vault (enabled if missing)."
        )],
    }
}

/// The three blocks of a configuration, plan or state, each read by its model's
/// decoder `decode` (the model itself, or its plan view): `Known::Null` when the block
/// is left out, `Known::Unknown` only when the whole block is. Unlike the fields of
/// [`Migration`], a block reads here while some of its values are unknown (a
/// `restore_image` the plan could not read yet).
pub(super) struct Parts<P, M, V> {
    pub postgres: Known<P>,
    pub mongo: Known<M>,
    pub vault: Known<V>,
}

/// The blocks of a planned value or a state, for the apply.
pub(super) type PartsOfState = Parts<Pg, Mongo, VaultKey>;

impl PartsOfState {
    pub(super) fn decode(v: &Value) -> Result<Self, Undecoded> {
        Ok(Parts {
            postgres: nested(v, POSTGRES, Pg::decode)?,
            mongo: nested(v, MONGO, Mongo::decode)?,
            vault: nested(v, VAULT, VaultKey::decode)?,
        })
    }
}

/// The blocks of a configuration or a plan, each value null, unknown or known.
pub(super) type PartsAtPlan = Parts<PgAtPlan, MongoAtPlan, VaultKeyAtPlan>;

impl PartsAtPlan {
    pub(super) fn decode(v: &Value) -> Result<Self, Undecoded> {
        Ok(Parts {
            postgres: nested(v, POSTGRES, PgAtPlan::decode)?,
            mongo: nested(v, MONGO, MongoAtPlan::decode)?,
            vault: nested(v, VAULT, VaultKeyAtPlan::decode)?,
        })
    }

    /// As [`PartsAtPlan::decode`], for the checks at plan: a block that does not decode
    /// (a port of 70000, which its declared check reports) reads as unknown.
    fn lenient(v: &Value) -> Self {
        Parts {
            postgres: nested(v, POSTGRES, PgAtPlan::decode).unwrap_or(Known::Unknown),
            mongo: nested(v, MONGO, MongoAtPlan::decode).unwrap_or(Known::Unknown),
            vault: nested(v, VAULT, VaultKeyAtPlan::decode).unwrap_or(Known::Unknown),
        }
    }

    /// Writes each block that is there back into `v`.
    pub(super) fn encode(&self, v: &mut Value) {
        put(v, POSTGRES, &self.postgres, PgAtPlan::encode);
        put(v, MONGO, &self.mongo, MongoAtPlan::encode);
        put(v, VAULT, &self.vault, VaultKeyAtPlan::encode);
    }
}

/// Block `name` of `v`, read by `decode`.
fn nested<T>(
    v: &Value,
    name: &'static str,
    decode: fn(&Value) -> Result<T, Undecoded>,
) -> Result<Known<T>, Undecoded> {
    let Value::Map(m) = v else {
        return Err(Undecoded::NotAnObject);
    };
    match m.get(name) {
        None => Err(Undecoded::NotInSchema(name)),
        Some(Value::Null) => Ok(Known::Null),
        Some(Value::Unknown) => Ok(Known::Unknown),
        Some(b) => decode(b).map(Known::Value),
    }
}

/// Writes block `b` back into block `name` of `v`, when it is there.
fn put<T>(v: &mut Value, name: &str, b: &Known<T>, encode: fn(&T, &mut Value)) {
    if let Known::Value(x) = b {
        let mut block = v.get(name).clone();
        encode(x, &mut block);
        v.set(name, block);
    }
}

/// The settings a stop needs, of a planned value or a state.
fn stop_settings(m: &Migration) -> StopSettings {
    StopSettings {
        root: m.config_root.clone(),
        embedded_nomad: m.embedded_nomad_endpoint.clone(),
        builds_timeout: duration_or(&m.builds_timeout, super::cutover::BUILDS_TIMEOUT),
    }
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

/// The declared checks, then those across attributes and blocks.
fn validate_config(config: &Value) -> Diagnostics {
    let mut diags = Diagnostics::new();
    model::validate(Migration::decls(), config, &mut diags);
    let parts = PartsAtPlan::lenient(config);
    if let Known::Value(pg) = &parts.postgres {
        databases(
            &pg.databases,
            POSTGRES,
            "the runbook's nine",
            check_identifier,
            &mut diags,
        );
    }
    if let Known::Value(m) = &parts.mongo {
        databases(
            &m.databases,
            MONGO,
            "the runbook's four",
            mig::check_mongo_database,
            &mut diags,
        );
        replica_set(m, &mut diags);
    }
    if let Ok(m) = MigrationAtPlan::decode(config) {
        export_dir(&m.export_dir, &parts, &mut diags);
    }
    if let Known::Value(pg) = &parts.postgres {
        restore_tls(pg, &mut diags);
    }
    if let Known::Value(v) = &parts.vault {
        embedded_vault_in_clear(&v.source_address, &mut diags);
    }
    if parts.postgres.is_null() && parts.mongo.is_null() && parts.vault.is_null() {
        diags.attr_error(
            AttrPath::root(POSTGRES),
            "Nothing to migrate",
            "add a postgres, mongo or vault_transit_key block (or several)",
        );
    }
    diags
}

/// `mongo.hosts`: each `host:port`; several are a replica set's members, which needs
/// its name.
fn replica_set(m: &MongoAtPlan, diags: &mut Diagnostics) {
    let Known::Value(hosts) = &m.hosts else {
        return;
    };
    let list: Vec<Value> = hosts.iter().map(Value::string).collect();
    validate::host_ports(&list, &AttrPath::root(MONGO).attr("hosts"), diags);
    if hosts.len() > 1 && m.replica_set.is_null() {
        diags.attr_error(
            AttrPath::root(MONGO).attr("replica_set"),
            "Replica set name missing",
            "several hosts are the members of a replica set: give its name (mongorestore connects to a set \
             as NAME/host:port,...)",
        );
    }
}

/// The embedded Vault reached over plain HTTP across a network: its root token and the
/// key's plaintext backup would travel in clear. A warning (the embedded Vault of
/// CircleCI 2.17 listens on plain HTTP), with the way that keeps both on one machine.
fn embedded_vault_in_clear(addr: &Known<String>, diags: &mut Diagnostics) {
    let Some(a) = addr
        .clone()
        .known()
        .and_then(|a| crate::circleci::vault::Address::parse(&a).ok())
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
fn restore_tls(pg: &PgAtPlan, diags: &mut Diagnostics) {
    let mode = match &pg.sslmode {
        Known::Unknown => return,
        Known::Null => DEFAULT_SSLMODE,
        Known::Value(m) => m.as_str(),
    };
    if !SSLMODES.contains(&mode) {
        return;
    }
    if mode.starts_with("verify-") && pg.ca_file.is_null() {
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
                    if pg.sslmode.is_null() { " (the default)" } else { "" },
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
fn export_dir(dir: &Known<String>, parts: &PartsAtPlan, diags: &mut Diagnostics) {
    // A path the generic check refuses (relative, "/", ending in "/") has its error.
    let Some(dir) = dir
        .clone()
        .known()
        .filter(|d| d.starts_with('/') && !d.ends_with('/'))
    else {
        return;
    };
    // A block left out (or not known yet) would use the default directory.
    let data = |block: Option<&Known<String>>, default: &str| match block {
        None | Some(Known::Null) => Some(default.to_string()),
        Some(Known::Value(d)) => Some(d.clone()),
        Some(Known::Unknown) => None,
    };
    let dirs = [
        (
            "postgres.data_dir",
            data(parts.postgres.value().map(|p| &p.data_dir), mig::PG_DATA),
        ),
        (
            "mongo.data_dir",
            data(parts.mongo.value().map(|m| &m.data_dir), mig::MONGO_DATA),
        ),
    ];
    let known: Vec<(&str, &str)> = dirs
        .iter()
        .filter_map(|(a, d)| d.as_deref().map(|d| (*a, d)))
        .collect();
    if let Err(why) = mig::check_export_dir(&dir, &known) {
        diags.attr_error(AttrPath::root("export_dir"), "Unsafe export directory", why);
    }
}

/// A block's `databases` (`block` names it): each name valid and listed once, at
/// least one.
fn databases(
    list: &Known<Vec<String>>,
    block: &str,
    default: &str,
    check: fn(&str) -> Result<(), String>,
    diags: &mut Diagnostics,
) {
    let Known::Value(list) = list else {
        return;
    };
    let mut seen = Vec::new();
    for (i, db) in list.iter().enumerate() {
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

/// What the last migration did, in `to`: `from`'s (the prior state's), or unknown (a
/// plan that migrates).
fn carry_outcome(to: &mut MigrationAtPlan, from: Option<&MigrationAtPlan>) {
    macro_rules! carry {
        ($($f:ident),*) => {$(
            to.$f = from.map_or(Known::Unknown, |p| p.$f.clone());
        )*};
    }
    carry!(
        app_stopped_at,
        migrated_at,
        elapsed,
        postgres_elapsed,
        throughput,
        export_sha256,
        export_bytes,
        postgres_tables,
        postgres_rows,
        postgres_bytes,
        mongo_collections,
        mongo_documents,
        skipped
    );
}

/// A block's attribute `f`, or the block's own null or unknown.
fn known_map<'a, T, U>(k: &'a Known<T>, f: impl FnOnce(&'a T) -> &'a U) -> Known<&'a U> {
    match k {
        Known::Value(t) => Known::Value(f(t)),
        Known::Null => Known::Null,
        Known::Unknown => Known::Unknown,
    }
}

#[async_trait]
impl Resource for DataMigration {
    fn type_name(&self) -> &'static str {
        "circleci_data_migration"
    }

    fn schema(&self) -> Schema {
        Schema::new(
            0,
            model::block(Migration::decls(), include_str!("about.md")),
        )
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
        model::set_defaults(Migration::decls(), req.config, planned);
        let decoded = MigrationAtPlan::decode(planned).and_then(|p| {
            let prior = match req.is_create() {
                true => None,
                false => Some(MigrationAtPlan::decode(req.prior)?),
            };
            Ok((p, prior))
        });
        let (mut p, prior) = match decoded {
            Ok(x) => x,
            Err(e) => {
                diags.extend(e.into());
                return vec![];
            }
        };
        p.id = Known::Value(ID.to_string());
        let migrate = match &prior {
            None => true,
            Some(q) => {
                // An imported migration (made by other means) records no triggers: the
                // first plan adopts the configured ones rather than migrating again.
                let imported = q.migrated_at == Known::Value(String::new()) && q.triggers.is_null();
                q.triggers != p.triggers && !imported
            }
        };
        carry_outcome(&mut p, if migrate { None } else { prior.as_ref() });
        p.encode(planned);
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
        self.update_migration(planned, config).await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        // A migration is an event: it holds until a failed cutover puts CircleCI back
        // on the embedded data, which it then keeps writing to.
        if self.fell_back(&Migration::decode(state)?).await {
            return Ok(None);
        }
        Ok(Some(state.clone()))
    }

    async fn delete(&self, prior: &Value) -> Applied {
        self.destroy(prior).await
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
        imported().encode(&mut v);
        Ok(v)
    }
}

/// The state of an imported migration: the defaults, and a `migrated_at` that is
/// empty, which the first plan reads as "adopt the triggers, do not migrate".
fn imported() -> MigrationAtPlan {
    let s = |x: &str| Known::Value(x.to_string());
    MigrationAtPlan {
        id: s(ID),
        triggers: Known::Null,
        stop_app: Known::Value(true),
        allowed_versions: Known::Value(vec![super::services_restart::DEFAULT_VERSIONS.to_string()]),
        builds_timeout: s(super::cutover::BUILDS_TIMEOUT),
        embedded_nomad_endpoint: s(super::cutover::DEFAULT_EMBEDDED_NOMAD),
        stop_timeout: s(STOP_TIMEOUT),
        on_failure: s("restore"),
        command_timeout: s(COMMAND_TIMEOUT),
        parallelism: Known::Value(DEFAULT_PARALLELISM),
        overwrite_existing: Known::Value(false),
        keep_export: Known::Value(true),
        remove_export_on_destroy: Known::Value(false),
        export_dir: s(EXPORT_DIR),
        config_root: s("/"),
        app_stopped_at: Known::Null,
        migrated_at: s(""),
        elapsed: Known::Null,
        postgres_elapsed: Known::Null,
        throughput: Known::Null,
        export_sha256: Known::Null,
        export_bytes: Known::Null,
        postgres_tables: Known::Null,
        postgres_rows: Known::Null,
        postgres_bytes: Known::Null,
        mongo_collections: Known::Null,
        mongo_documents: Known::Null,
        skipped: Known::Null,
        postgres: Known::Null,
        mongo: Known::Null,
        vault_transit_key: Known::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The restart and the next apply find the temporary containers by this prefix.
    #[test]
    fn containers_carry_the_prefix_the_restart_looks_for() {
        let prefix = crate::resources::cutover::MIGRATION_CONTAINER;
        assert!(super::CONTAINER.starts_with(prefix));
        assert!(super::apply_mongo::CONTAINER.starts_with(prefix));
        assert!(super::tools::CONTAINER.starts_with(prefix));
    }

    /// An object with every attribute of `decls` null, then `pairs`.
    fn object(decls: &[model::Decl], pairs: &[(&str, Value)]) -> Value {
        let mut v = Value::Null;
        for d in decls {
            v.set(d.name(), Value::Null);
        }
        for (k, x) in pairs {
            v.set(k, x.clone());
        }
        v
    }

    fn config(pairs: &[(&str, Value)]) -> Value {
        object(Migration::decls(), pairs)
    }

    fn pg(pairs: &[(&str, Value)]) -> Value {
        object(Pg::decls(), pairs)
    }

    fn mongo(pairs: &[(&str, Value)]) -> Value {
        object(Mongo::decls(), pairs)
    }

    fn paths(d: &Diagnostics) -> Vec<String> {
        d.0.iter()
            .filter_map(|x| x.path.as_ref().map(ToString::to_string))
            .collect()
    }

    #[test]
    fn the_schema_is_the_declarations() {
        let b = model::block(Migration::decls(), include_str!("about.md"));
        let names: Vec<_> = b.blocks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["postgres", "mongo", "vault_transit_key"]);
        let pg = &b.blocks[0].block;
        let port = pg.attribute("port").unwrap();
        assert_eq!(port.description, "Its port. Default `5432`.");
        let compression = pg.attribute("compression").unwrap();
        assert!(
            compression.description.starts_with("The zlib level")
                && !compression.description.ends_with("Default `0`."),
            "the description says its default itself"
        );
        let token = b.blocks[2].block.attribute("source_token_wo").unwrap();
        assert!(token.required && token.sensitive && token.write_only);
        let stop = b.attribute("stop_timeout").unwrap();
        assert_eq!(
            stop.description,
            "How long CircleCI may take to stop, e.g. `10m` (default)."
        );
    }

    #[test]
    fn checks_name_the_attribute_in_its_block() {
        let c = config(&[
            (
                "postgres",
                pg(&[
                    ("host", Value::string("db.internal")),
                    ("compression", Value::int(12)),
                    ("port", Value::int(70000)),
                    (
                        "databases",
                        Value::List(vec![Value::string("circle"), Value::string("circle")]),
                    ),
                    ("sslmode", Value::string("verify-full")),
                ]),
            ),
            (
                "mongo",
                mongo(&[(
                    "hosts",
                    Value::List(vec![Value::string("a:27017"), Value::string("b:27017")]),
                )]),
            ),
            ("parallelism", Value::int(9)),
        ]);
        let d = validate_config(&c);
        let at = paths(&d);
        for want in [
            "parallelism",
            "postgres.port",
            "postgres.compression",
            "mongo.replica_set",
        ] {
            assert!(at.iter().any(|a| a == want), "{want} in {at:?}");
        }
        // The port does not decode: the block's checks across attributes wait until it
        // does (its own check reports it).
        assert!(
            !at.iter()
                .any(|a| a.starts_with("postgres.databases") || a == "postgres.ca_file"),
            "{at:?}"
        );
    }

    #[test]
    fn a_block_reads_while_one_of_its_values_is_unknown() {
        let c = config(&[(
            "postgres",
            pg(&[
                ("host", Value::Unknown),
                (
                    "databases",
                    Value::List(vec![Value::string("circle"), Value::string("circle")]),
                ),
            ]),
        )]);
        let d = validate_config(&c);
        assert_eq!(
            paths(&d),
            [
                "postgres.password_wo",
                "postgres.databases[1]",
                "postgres.sslmode"
            ],
            "no password, the duplicate, and the default sslmode's warning"
        );
        assert!(
            validate_config(&config(&[])).has_errors(),
            "nothing to migrate"
        );
    }

    #[test]
    fn defaults_fill_each_block_and_the_apply_reads_them() {
        let c = config(&[
            ("postgres", pg(&[("host", Value::string("db.internal"))])),
            (
                "vault_transit_key",
                object(
                    VaultKey::decls(),
                    &[("source_address", Value::string("http://127.0.0.1:8200"))],
                ),
            ),
        ]);
        let mut planned = c.clone();
        model::set_defaults(Migration::decls(), &c, &mut planned);
        let m = Migration::decode(&planned).unwrap();
        assert_eq!((m.parallelism, m.config_root.as_str()), (2, "/"));
        assert_eq!(m.allowed_versions, ["2.17.x"]);
        let mut parts = PartsAtPlan::decode(&planned).unwrap();
        let Known::Value(p) = &mut parts.postgres else {
            panic!("the block is there")
        };
        assert_eq!(p.port, Known::Value(5432));
        assert_eq!(p.sslmode, Known::Value("require".to_string()));
        assert_eq!(p.databases.clone().known().map(|d| d.len()), Some(9));
        assert!(p.restore_image.is_null(), "no declared default");
        assert!(parts.mongo.is_null());
        // A restore image the plan could not read: the block still reads at apply.
        p.restore_image = Known::Unknown;
        parts.encode(&mut planned);
        let state = PartsOfState::decode(&planned).unwrap();
        let Known::Value(pg) = state.postgres else {
            panic!("the block reads")
        };
        assert_eq!((pg.host.as_str(), pg.port), ("db.internal", 5432));
        assert!(matches!(pg.restore_image, Known::Unknown));
        let Known::Value(v) = state.vault else {
            panic!("the vault block reads")
        };
        assert_eq!(
            (v.source_mount.as_str(), v.key.as_str()),
            ("transit", "context-service")
        );
    }

    #[test]
    fn an_import_records_a_migration_the_first_plan_adopts() {
        let mut v = Value::Null;
        imported().encode(&mut v);
        let m = Migration::decode(&v).unwrap();
        assert_eq!(m.migrated_at, Known::Value(String::new()));
        assert!(m.triggers.is_none() && !m.remove_export_on_destroy);
        assert_eq!(m.export_dir, EXPORT_DIR);
        let mut q = MigrationAtPlan::decode(&v).unwrap();
        carry_outcome(&mut q, None);
        assert!(q.migrated_at.is_unknown() && q.skipped.is_unknown());
    }
}
