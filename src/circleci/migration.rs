//! Carrying CircleCI's data over: what CircleCI's own export script (server-scripts,
//! migrate/2.19-export.sh) starts over the embedded data, and the SQL that verifies a
//! copy table by table. Pure data; the resource runs it.

/// The embedded PostgreSQL's image and data directory on a 2.17 Services machine.
pub const PG_IMAGE: &str = "postgres:9.5.8";
/// The embedded PostgreSQL's data directory on the Services machine.
pub const PG_DATA: &str = "/data/circle/postgres/9.5/data";
/// Where the data directory is mounted in the image.
pub(crate) const PG_MOUNT: &str = "/var/lib/postgresql/data";

/// The user tables of a database, schema-qualified and quoted, one per row.
pub(crate) const TABLES_SQL: &str =
    "SELECT format('%I.%I', schemaname, tablename) FROM pg_catalog.pg_tables \
     WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1";

/// Every user table's name, row count and content checksum, each sequence's position
/// and the number of large objects, in one statement (rows of kind, name, figure,
/// checksum, as [`parse_stats`] reads them), after session settings that make a value's
/// text form the same on both servers whatever their defaults or versions (UTC ISO
/// timestamps, hex bytea, floats printed as 9.5 prints them: `extra_float_digits = 0`
/// means the same before and after 12; `jsonb` prints its keys in its own canonical
/// order and spacing, the same since 9.4; `json` keeps its text as written, which the
/// dump carries byte for byte).
///
/// A table's checksum is the sum, over its rows, of a hash of the whole row: each
/// column's 32-bit hash (`hashtext` for text and varchar, `hashint4`/`hashint8` for
/// integers, `uuid_hash` for uuid, `timestamp_hash` of the value for `timestamp` and
/// `timestamptz` when both servers store timestamps as integers (see [`stats_sql()`]),
/// `hashtext` of the text form for everything else; NULL hashes as the column's
/// position), weighted by the column's position k (2k+1) in
/// the order of the columns' names (pg_dump may reorder an inheritance child's columns;
/// a dropped column in the source shifts nothing),
/// summed as a 64-bit integer and hashed again with `hashint8`. Hashing the row binds
/// its values together: a value moved to another row, or to another column, changes
/// the sum. The sum does not depend on the rows' physical order and needs no memory
/// for the table. These functions are PostgreSQL's hash_any (lookup3) and its integer
/// form, the same from 8.4 on (hash indexes keep their values on disk across
/// pg_upgrade, so they cannot change between versions on machines of the same byte
/// order), and nothing here is newer than 9.5 (`hash_record` is 14+). Hashing
/// columns, not the row's text, costs a quarter of the CPU: converting whole rows to
/// text was most of what verifying cost. `query_to_xml` runs the per-table query from
/// within one statement (9.5 has nothing newer for that). A table is read `ONLY`: an
/// inheritance child counts once, as itself. A table or sequence the user cannot read
/// (one someone else made in the target, or in a schema it may not use) shows as -1
/// with the checksum `unreadable`.
/// A sequence's checksum is its `is_called`, and ` descending` when it counts down.
/// Materialized views, views and functions are not compared (pg_restore recreates
/// them from the dump's definitions); large objects are counted, not hashed.
///
/// The macro's arguments are `CASE` branches for types hashed by value.
macro_rules! stats_sql {
    ($($by_value:literal),*) => {
        concat!(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; ",
            "SET bytea_output = 'hex'; SET extra_float_digits = 0; ",
            "SELECT k, t, (xpath('/row/n/text()', x))[1]::text, coalesce((xpath('/row/c/text()', x))[1]::text, '') FROM (",
            "SELECT CASE c.relkind WHEN 'r' THEN 'table' ELSE 'sequence' END AS k, ",
            "format('%I.%I', n.nspname, c.relname) AS t, query_to_xml(CASE ",
            "WHEN NOT (has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')) ",
            "THEN 'SELECT -1 AS n, ''unreadable'' AS c' WHEN c.relkind ",
            "= 'S' THEN format('SELECT last_value AS n, is_called::text || %L AS c FROM %I.%I', ",
            "CASE WHEN (SELECT s.increment::int8 FROM information_schema.sequences s WHERE s.sequence_schema = n.nspname ",
            "AND s.sequence_name = c.relname) < 0 THEN ' descending' ELSE '' END, n.nspname, c.relname) ",
            "ELSE format('SELECT count(*) AS n, coalesce(sum(hashint8(%s)), 0) AS c FROM ONLY %I.%I', ",
            "coalesce((SELECT string_agg(format('coalesce(%s, %s)::int8 * %s', CASE a.atttypid ",
            "WHEN 'text'::regtype THEN format('hashtext(%I)', a.attname) ",
            "WHEN 'varchar'::regtype THEN format('hashtext(%I)', a.attname) ",
            "WHEN 'int2'::regtype THEN format('hashint4(%I)', a.attname) ",
            "WHEN 'int4'::regtype THEN format('hashint4(%I)', a.attname) ",
            "WHEN 'int8'::regtype THEN format('hashint8(%I)', a.attname) ",
            "WHEN 'uuid'::regtype THEN format('uuid_hash(%I)', a.attname) ",
            $($by_value,)*
            "ELSE format('hashtext(%I::text)', a.attname) END, a.k, 2 * a.k + 1), ' + ' ORDER BY a.k) ",
            "FROM (SELECT attname, atttypid, row_number() OVER (ORDER BY attname) AS k FROM pg_catalog.pg_attribute ",
            "WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) a), '0'), n.nspname, c.relname) END, ",
            "false, true, '') AS x FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace ",
            "WHERE c.relkind IN ('r', 'S') AND n.nspname NOT IN ('pg_catalog', 'information_schema') ",
            "AND n.nspname !~ '^pg_(toast|temp)' ",
            "UNION ALL SELECT 'large objects', '', query_to_xml(",
            "'SELECT count(*) AS n FROM pg_catalog.pg_largeobject_metadata', false, true, '')) q ORDER BY 1, 2"
        )
    };
}

/// [`stats_sql()`] where either server stores timestamps as floating point: their
/// text forms hashed, as every type without a hash of its own.
const STATS_SQL: &str = stats_sql!();

/// [`stats_sql()`] where both servers store timestamps as 64-bit microseconds
/// (`integer_datetimes`): `timestamp` and `timestamptz` hashed by value.
const STATS_SQL_INTEGER_DATETIMES: &str = stats_sql!(
    "WHEN 'timestamp'::regtype THEN format('timestamp_hash(%I)', a.attname) ",
    "WHEN 'timestamptz'::regtype THEN format('timestamp_hash(%I::timestamp)', a.attname) "
);

/// The statement that reads every table's count and checksum (`stats_sql!` above), the
/// same on both sides: timestamps hashed by value when both servers store them as
/// integers (`integer_datetimes`, `both_integer`), else by their text form.
///
/// By value, a `timestamptz` is cast to `timestamp` under the statement's UTC: the
/// same 64-bit microseconds, which `timestamp_hash` hashes as `hashint8` does, in 9.5
/// (built with integer timestamps, as every packaged 9.5 is) as in 15. Its text form
/// costs a calendar breakdown and formatting per value: on 1.7 million rows here, 0.4 s
/// of a backend's CPU against 0.15 s by value, on each side. A server that stores
/// timestamps as floating point (a 9.x built with `--disable-integer-datetimes`)
/// hashes them as `float8`, so one such server on either side means text on both.
pub(crate) fn stats_sql(both_integer: bool) -> &'static str {
    if both_integer {
        STATS_SQL_INTEGER_DATETIMES
    } else {
        STATS_SQL
    }
}

/// What one line of the comparison is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A PostgreSQL table: rows and their checksum.
    Table,
    /// A PostgreSQL sequence: `rows` is its `last_value`, `checksum` its `is_called`
    /// (`true`/`false`), followed by ` descending` for one that counts down.
    Sequence,
    /// A PostgreSQL database's large objects: `rows` is how many.
    LargeObjects,
    /// A MongoDB collection: documents and their dbHash md5.
    Collection,
    /// A capped MongoDB collection: documents only (dbHash hashes them in `_id` order on
    /// 3.6 and in storage order on later versions).
    Capped,
    /// A MongoDB view: the documents it shows, and the collection it is on.
    View,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "table" => Kind::Table,
            "sequence" => Kind::Sequence,
            "large objects" => Kind::LargeObjects,
            "collection" => Kind::Collection,
            "capped" => Kind::Capped,
            "view" => Kind::View,
            _ => return None,
        })
    }

    /// What `rows` counts.
    fn noun(self) -> &'static str {
        match self {
            Kind::Table => "rows",
            Kind::LargeObjects => "large objects",
            _ => "documents",
        }
    }
}

/// The lines [`stats_sql()`] (kind, name, figure, checksum) or [`MONGO_STATS_SCRIPT`]
/// return, sorted by name.
pub fn parse_stats(rows: &[Vec<String>]) -> Result<Vec<TableStat>, String> {
    let mut out = Vec::new();
    for r in rows {
        let [kind, table, count, sum] = r.as_slice() else {
            return Err(format!(
                "unexpected row {r:?} (want kind, name, figure, checksum)"
            ));
        };
        let kind =
            Kind::parse(kind).ok_or_else(|| format!("unexpected kind {kind:?} of {table}"))?;
        out.push(TableStat {
            kind,
            table: table.clone(),
            rows: count
                .parse()
                .map_err(|_| format!("figure {count:?} of {table} is not a number"))?,
            checksum: sum.clone(),
        });
    }
    out.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(out)
}

/// The embedded MongoDB's image and data directory on a 2.17 Services machine, and the
/// databases the runbook names.
pub(crate) const MONGO_IMAGE: &str = "mongo:3.6.6";
pub(crate) const MONGO_DATA: &str = "/data/circle/mongo";
pub(crate) const MONGO_MOUNT: &str = "/data/db";

/// What the data migration sends the container's `mongo` shell for one database: a
/// line per collection, `kind<TAB>name<TAB>count<TAB>checksum`, the form
/// [`parse_stats`] reads (and `MongoAdmin::collection_stats` returns for the target).
/// An ordinary collection's checksum is its dbHash md5 (an md5 over its documents' BSON
/// in `_id` order); a capped collection is compared by its count alone (from 4.0 on
/// dbHash hashes capped collections in their storage order, not in `_id` order as 3.6
/// does, so the two sides need not agree), a view by the count of what it shows and
/// the collection it is on (dbHash has no value for a view). A collection dbHash
/// leaves out (`tmp.mr.*`) has the checksum `""` on both sides.
pub const MONGO_STATS_SCRIPT: &str = "var h = db.runCommand({dbHash: 1}); \
     db.getCollectionInfos().forEach(function (i) { \
     var v = i.type === 'view', k = v ? 'view' : (i.options && i.options.capped ? 'capped' : 'collection'); \
     print(k + '\\t' + i.name + '\\t' + db.getCollection(i.name).count() + '\\t' + \
     (v ? i.options.viewOn : (k === 'capped' ? '' : (h.collections[i.name] || '')))); });";

/// A MongoDB database the migration may carry: letters, digits, `_` and `-`, not
/// starting with `-`, at most 63 bytes; never `admin`, `local` or `config` (CircleCI's
/// script drops `admin` from the dump; the others are the server's own).
pub(crate) fn check_mongo_database(s: &str) -> Result<(), String> {
    if matches!(s, "admin" | "local" | "config") {
        return Err("is MongoDB's own database, never carried over".into());
    }
    let ok = !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err("is not a database name of letters, digits, _ and - (at most 63)".into())
    }
}

/// The MongoDB database CircleCI's export script checks a dump for.
pub(crate) const EXPECTED_MONGO_DATABASE: &str = "circle_ghe";

/// The tables CircleCI's export script checks a dump for, by database.
pub(crate) const EXPECTED_TABLES: [(&str, &str); 5] = [
    ("circle", "circle_migrations"),
    ("conductor_production", "build_jobs"),
    ("contexts_service_production", "contexts"),
    ("cron_service_production", "qrtz_blob_triggers"),
    ("vms", "tasks"),
];

/// One table's row count and content checksum (or a sequence's position, the number
/// of large objects, a collection's documents: see [`Kind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStat {
    /// What the row counts: a table, a sequence, large objects or a collection.
    pub kind: Kind,
    /// The table's (or sequence's, collection's) qualified name.
    pub table: String,
    /// Its row count (a sequence's position).
    pub rows: i64,
    /// A digest of its content, in a stable order.
    pub checksum: String,
}

impl TableStat {
    /// Whether the user the figures were read as may not read it.
    fn unreadable(&self) -> bool {
        self.checksum == "unreadable"
    }
}

/// Differences between the source's and the target's tables (collections, sequences,
/// large objects), one line each, naming it and both sides: missing, unreadable or
/// different in the target ([`mismatches`]), or only in the target ([`extras`]).
pub fn compare(db: &str, source: &[TableStat], target: &[TableStat]) -> Vec<String> {
    let mut out = mismatches(db, source, target);
    out.extend(extras(db, source, target));
    out
}

/// What the source holds that the target lacks, cannot show or holds otherwise. A
/// sequence differs only when the target's is behind the source's (a target that
/// handed out more numbers is no danger; one behind would hand out numbers the data
/// already holds).
pub(crate) fn mismatches(db: &str, source: &[TableStat], target: &[TableStat]) -> Vec<String> {
    let mut out = Vec::new();
    for s in source {
        let noun = s.kind.noun();
        let name = match s.kind {
            Kind::LargeObjects => format!("{db}: large objects"),
            Kind::Sequence => format!("{db}.{} (sequence)", s.table),
            Kind::View => format!("{db}.{} (view)", s.table),
            _ => format!("{db}.{}", s.table),
        };
        let Some(t) = target
            .iter()
            .find(|t| t.table == s.table && t.kind == s.kind)
        else {
            out.push(match s.kind {
                Kind::LargeObjects => {
                    format!("{name}: {} in the source, none in the target", s.rows)
                }
                Kind::Sequence => {
                    format!("{name}: at {} in the source, missing in the target", s.rows)
                }
                _ => format!(
                    "{name}: {} {noun} in the source, missing in the target",
                    s.rows
                ),
            });
            continue;
        };
        if t.unreadable() {
            out.push(format!(
                "{name}: not readable by the restore's user in the target"
            ));
            continue;
        }
        match s.kind {
            Kind::Sequence => {
                // The next value each would hand out, by the direction it counts.
                let down = s.checksum.ends_with(" descending");
                let next = |q: &TableStat| match (q.checksum.starts_with("true"), down) {
                    (false, _) => q.rows,
                    (true, false) => q.rows.saturating_add(1),
                    (true, true) => q.rows.saturating_sub(1),
                };
                let behind = if down {
                    next(t) > next(s)
                } else {
                    next(t) < next(s)
                };
                if behind {
                    out.push(format!(
                        "{name}: at {} in the source, behind at {} in the target",
                        s.rows, t.rows
                    ));
                }
            }
            _ if t.rows != s.rows => out.push(format!(
                "{name}: {} {noun} in the source, {} in the target",
                s.rows, t.rows
            )),
            _ if t.checksum != s.checksum => out.push(format!(
                "{name}: {} {noun} on both sides, but their content differs (checksums {} and {})",
                s.rows, s.checksum, t.checksum
            )),
            _ => {}
        }
    }
    out
}

/// Tables, sequences, collections and views only the target has.
pub(crate) fn extras(db: &str, source: &[TableStat], target: &[TableStat]) -> Vec<String> {
    let mut out = Vec::new();
    for t in target {
        if !source
            .iter()
            .any(|s| s.table == t.table && s.kind == t.kind)
            && t.kind != Kind::LargeObjects
        {
            let what = match t.kind {
                _ if t.unreadable() => "not readable by the restore's user".to_string(),
                Kind::Sequence => "sequence".to_string(),
                Kind::View => "view".to_string(),
                k => format!("{} {}", t.rows, k.noun()),
            };
            out.push(format!("{db}.{}: only in the target ({what})", t.table));
        }
    }
    out
}

/// Directories of the system (and CircleCI's data root) that `export_dir` must never
/// be: the migration makes its export directory 0700, owned by root, and with
/// `keep_export = false` removes what it wrote there.
const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/boot",
    "/data",
    "/data/circle",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/lib/docker",
    "/var/lib/replicated",
    "/var/log",
    "/var/run",
    "/var/tmp",
];

/// Trees of the system and of Docker and Replicated (and pseudo file systems): the
/// export may not be anywhere inside them either.
const SYSTEM_TREES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/docker",
    "/var/lib/replicated",
    "/var/run",
];

/// The components of an absolute path, without empty and `.` ones.
fn components(p: &str) -> Vec<&str> {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

/// Why `export_dir` cannot be the migration's own directory, if it cannot: the root, a
/// system directory or inside a system tree, or one of the embedded data directories
/// (`data_dirs`: the attribute and its path), a parent of one or inside one.
pub(crate) fn check_export_dir(export_dir: &str, data_dirs: &[(&str, &str)]) -> Result<(), String> {
    let own = "the migration makes its export directory 0700 (owned by root) and, with keep_export = false, \
               removes what it wrote there: choose a directory of its own on the data volume, such as \
               /data/circle/external-services-export";
    let dir = components(export_dir);
    if dir.is_empty() {
        return Err(format!("{export_dir:?} is the root directory; {own}"));
    }
    let is = |other: &str| components(other) == dir;
    if SYSTEM_DIRS.iter().any(|d| is(d)) {
        return Err(format!("{export_dir:?} is a system directory; {own}"));
    }
    if let Some(tree) = SYSTEM_TREES
        .iter()
        .find(|d| dir.starts_with(&components(d)))
    {
        return Err(format!("{export_dir:?} is inside {tree}; {own}"));
    }
    for (attr, data) in data_dirs {
        let data_c = components(data);
        let why = if data_c == dir {
            "is"
        } else if data_c.starts_with(&dir) {
            "contains"
        } else if dir.starts_with(&data_c) {
            "is inside"
        } else {
            continue;
        };
        return Err(format!(
            "{export_dir:?} {why} {attr} ({data}), the embedded data the migration reads; {own}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(t: &str, rows: i64, md5: &str) -> TableStat {
        TableStat {
            kind: Kind::Table,
            table: t.into(),
            rows,
            checksum: md5.into(),
        }
    }

    fn of(kind: Kind, t: &str, rows: i64, sum: &str) -> TableStat {
        TableStat {
            kind,
            ..stat(t, rows, sum)
        }
    }

    #[test]
    fn differences_name_the_table_and_both_counts() {
        let src = [
            stat("public.a", 3, "x"),
            stat("public.b", 2, "y"),
            stat("public.c", 1, "z"),
        ];
        let dst = [
            stat("public.a", 3, "x"),
            stat("public.b", 1, "y"),
            stat("public.c", 1, "w"),
        ];
        let d = compare("circle", &src, &dst);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0],
            "circle.public.b: 2 rows in the source, 1 in the target"
        );
        assert!(d[1].starts_with("circle.public.c: 1 rows on both sides"));
        assert!(compare("circle", &src, &src).is_empty());
        assert!(compare("circle", &src, &[])[0].contains("missing in the target"));
        let c = |t: &str, n, h: &str| of(Kind::Collection, t, n, h);
        let d = compare("circle_ghe", &[c("b", 2, "y")], &[c("b", 1, "y")]);
        assert_eq!(
            d,
            ["circle_ghe.b: 2 documents in the source, 1 in the target"]
        );
    }

    #[test]
    fn sequences_behind_extra_tables_and_large_objects_are_named() {
        let seq = |n, called: &str| of(Kind::Sequence, "public.t_id_seq", n, called);
        let lo = |n| of(Kind::LargeObjects, "", n, "");
        let src = [stat("public.t", 5, "x"), seq(5, "true"), lo(2)];
        // Behind, by one value or by is_called alone: named.
        for behind in [seq(4, "true"), seq(5, "false"), seq(1, "false")] {
            let d = compare("vms", &src, &[stat("public.t", 5, "x"), behind, lo(2)]);
            assert_eq!(d.len(), 1, "{d:?}");
            assert!(
                d[0].starts_with("vms.public.t_id_seq (sequence): at 5 in the source, behind at"),
                "{d:?}"
            );
        }
        // Counting down: behind means higher.
        let down = |n, called: &str| of(Kind::Sequence, "public.d_seq", n, called);
        let src_down = [down(-5, "true descending")];
        assert!(compare("vms", &src_down, &[down(-9, "true descending")]).is_empty());
        assert_eq!(
            compare("vms", &src_down, &[down(-4, "true descending")]).len(),
            1
        );
        assert_eq!(
            compare("vms", &[seq(i64::MAX, "true")], &[seq(1, "true")]).len(),
            1
        );
        // Unreadable in the target: said so, not as a count of -1.
        let d = compare(
            "vms",
            &src,
            &[
                stat("public.t", -1, "unreadable"),
                seq(-1, "unreadable"),
                lo(2),
            ],
        );
        assert_eq!(
            d,
            [
                "vms.public.t: not readable by the restore's user in the target",
                "vms.public.t_id_seq (sequence): not readable by the restore's user in the target"
            ]
        );
        // Ahead (the target handed out more numbers): no danger, no difference.
        assert!(compare(
            "vms",
            &src,
            &[stat("public.t", 5, "x"), seq(9, "true"), lo(2)]
        )
        .is_empty());
        let d = compare("vms", &src, &[stat("public.t", 5, "x"), lo(2)]);
        assert_eq!(
            d,
            ["vms.public.t_id_seq (sequence): at 5 in the source, missing in the target"]
        );
        // Large objects: counted.
        let d = compare(
            "vms",
            &src,
            &[stat("public.t", 5, "x"), seq(5, "true"), lo(0)],
        );
        assert_eq!(
            d,
            ["vms: large objects: 2 large objects in the source, 0 in the target"]
        );
        // Tables (and sequences) only in the target are named.
        let mut dst = src.to_vec();
        dst.push(stat("public.extra", 3, "q"));
        dst.push(of(Kind::Sequence, "public.extra_id_seq", 3, "true"));
        let d = compare("vms", &src, &dst);
        assert_eq!(
            d,
            [
                "vms.public.extra: only in the target (3 rows)",
                "vms.public.extra_id_seq: only in the target (sequence)"
            ]
        );
    }

    #[test]
    fn views_and_capped_collections_compare_by_what_both_sides_can_tell() {
        let view = |n, on: &str| of(Kind::View, "recent", n, on);
        let capped = |n| of(Kind::Capped, "log", n, "");
        let src = [view(4, "builds"), capped(10)];
        assert!(compare("circle_ghe", &src, &src).is_empty());
        let d = compare("circle_ghe", &src, &[view(4, "jobs"), capped(9)]);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].starts_with("circle_ghe.recent (view): 4 documents on both sides, but"),
            "{d:?}"
        );
        assert_eq!(
            d[1],
            "circle_ghe.log: 10 documents in the source, 9 in the target"
        );
        // A view in the source is not a collection in the target.
        let d = compare(
            "circle_ghe",
            &src,
            &[of(Kind::Collection, "recent", 4, "builds"), capped(10)],
        );
        assert_eq!(d.len(), 2, "{d:?}");
    }

    #[test]
    fn parse_stats_sorts_and_rejects_odd_rows() {
        let row = |v: [&str; 4]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rows = vec![
            row(["table", "public.b", "2", "7"]),
            row(["sequence", "public.a", "0", "false"]),
            row(["large objects", "", "0", ""]),
        ];
        let s = parse_stats(&rows).unwrap();
        assert_eq!(s[0].kind, Kind::LargeObjects);
        assert_eq!(s[1].table, "public.a");
        assert_eq!(s[1].kind, Kind::Sequence);
        assert_eq!(s[2].rows, 2);
        assert!(parse_stats(&[vec!["x".to_string()]]).is_err());
        assert!(parse_stats(&[row(["table", "t", "n", "0"])]).is_err());
        assert!(parse_stats(&[row(["index", "t", "1", "0"])]).is_err());
    }

    #[test]
    fn export_dir_is_refused_where_it_would_harm() {
        let data = [
            ("postgres.data_dir", PG_DATA),
            ("mongo.data_dir", MONGO_DATA),
        ];
        assert!(check_export_dir("/data/circle/external-services-export", &data).is_ok());
        assert!(check_export_dir("/srv/export", &data).is_ok());
        assert!(check_export_dir("/tmp/circleci-export", &data).is_ok());
        let err = |d: &str| check_export_dir(d, &data).unwrap_err();
        assert!(err("/").contains("is the root directory"));
        assert!(err("//").contains("is the root directory"));
        assert!(err("/tmp").contains("\"/tmp\" is a system directory"));
        assert!(err("/tmp/").contains("is a system directory"));
        assert!(err("/etc").contains("is a system directory"));
        assert!(err("/usr/./local").contains("is a system directory"));
        assert!(err("/proc/1").contains("is inside /proc"));
        assert!(err("/etc/ssl").contains("is inside /etc"));
        assert!(err("/usr/local/bin").contains("is inside /usr"));
        assert!(err("/var/lib/docker/volumes/x").contains("is inside /var/lib/docker"));
        assert!(check_export_dir("/var/lib/circleci-export", &data).is_ok());
        assert!(err("/data/circle").contains("is a system directory"));
        let e = err("/data/circle/mongo");
        assert!(
            e.contains("\"/data/circle/mongo\" is mongo.data_dir (/data/circle/mongo)"),
            "{e}"
        );
        let e = err("/data/circle/postgres");
        assert!(e.contains("contains postgres.data_dir"), "{e}");
        let e = err("/data/circle/mongo/export");
        assert!(e.contains("is inside mongo.data_dir"), "{e}");
        // A sibling whose name starts the same is not inside.
        assert!(check_export_dir("/data/circle/mongo-export", &data).is_ok());
        assert!(err("/data/circle/mongo").contains("keep_export = false"));
    }
}
