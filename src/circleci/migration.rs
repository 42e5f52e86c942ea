//! Carrying CircleCI's data over: what CircleCI's own export script (server-scripts,
//! migrate/2.19-export.sh) starts over the embedded data, and the SQL that verifies a
//! copy table by table. Pure data; the resource runs it.

/// The embedded PostgreSQL's image and data directory on a 2.17 Services machine.
pub const PG_IMAGE: &str = "postgres:9.5.8";
pub const PG_DATA: &str = "/data/circle/postgres/9.5/data";
/// Where the data directory is mounted in the image.
pub const PG_MOUNT: &str = "/var/lib/postgresql/data";

/// The user tables of a database, schema-qualified and quoted, one per row.
pub const TABLES_SQL: &str =
    "SELECT format('%I.%I', schemaname, tablename) FROM pg_catalog.pg_tables \
     WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1";

/// Every user table's name, row count and content checksum, in one statement, after
/// session settings that make a value's text form the same on both servers whatever
/// their defaults or versions (UTC ISO timestamps, hex bytea, floats printed as 9.5
/// prints them: `extra_float_digits = 0` means the same before and after 12).
///
/// The checksum sums, over the rows, a weighted sum of each column's 32-bit hash:
/// `hashtext` for text and varchar, `hashint4`/`hashint8` for integers, `uuid_hash`
/// for uuid, `hashtext` of the text form for everything else; NULL hashes as the
/// column's position, and column k (counting only live columns, so a dropped column in
/// the source does not shift it) weighs 2k+1, so values swapped between columns count.
/// The sum does not depend on the rows' physical order and needs no memory for the
/// table. These hash functions are PostgreSQL's hash_any (lookup3) and its integer
/// form, the same from 8.4 on: hash indexes keep their values on disk across
/// pg_upgrade, so they cannot change between versions (on machines of the same byte
/// order). Hashing columns, not the row's text, costs a quarter of the CPU:
/// converting whole rows to text was most of what verifying cost. `query_to_xml` runs
/// the per-table query from within one statement (9.5 has nothing newer for that).
pub const STATS_SQL: &str = concat!(
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; ",
    "SET bytea_output = 'hex'; SET extra_float_digits = 0; ",
    "SELECT t, (xpath('/row/n/text()', x))[1]::text, (xpath('/row/c/text()', x))[1]::text FROM (",
    "SELECT format('%I.%I', n.nspname, c.relname) AS t, query_to_xml(format(",
    "'SELECT count(*) AS n, coalesce(sum(%s), 0) AS c FROM %I.%I', ",
    "coalesce((SELECT string_agg(format('coalesce(%s, %s)::int8 * %s', CASE a.atttypid ",
    "WHEN 'text'::regtype THEN format('hashtext(%I)', a.attname) ",
    "WHEN 'varchar'::regtype THEN format('hashtext(%I)', a.attname) ",
    "WHEN 'int2'::regtype THEN format('hashint4(%I)', a.attname) ",
    "WHEN 'int4'::regtype THEN format('hashint4(%I)', a.attname) ",
    "WHEN 'int8'::regtype THEN format('hashint8(%I)', a.attname) ",
    "WHEN 'uuid'::regtype THEN format('uuid_hash(%I)', a.attname) ",
    "ELSE format('hashtext(%I::text)', a.attname) END, a.k, 2 * a.k + 1), ' + ' ORDER BY a.k) ",
    "FROM (SELECT attname, atttypid, row_number() OVER (ORDER BY attnum) AS k FROM pg_catalog.pg_attribute ",
    "WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) a), '0'), n.nspname, c.relname), ",
    "false, true, '') AS x FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace ",
    "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ",
    "AND n.nspname !~ '^pg_(toast|temp)') q ORDER BY 1"
);

/// Tables (as `TableStat`s) from the rows [`stats_sql`] returns.
pub fn parse_stats(rows: &[Vec<String>]) -> Result<Vec<TableStat>, String> {
    let mut out = Vec::new();
    for r in rows {
        let [table, count, sum] = r.as_slice() else {
            return Err(format!(
                "unexpected row {r:?} (want table, count, checksum)"
            ));
        };
        out.push(TableStat {
            table: table.clone(),
            rows: count
                .parse()
                .map_err(|_| format!("row count {count:?} of {table} is not a number"))?,
            checksum: sum.clone(),
        });
    }
    out.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(out)
}

/// The total size of a database, for throughput figures.
pub const DATABASE_SIZE_SQL: &str = "SELECT pg_database_size(current_database())";

/// The embedded MongoDB's image and data directory on a 2.17 Services machine, and the
/// databases the runbook names.
pub const MONGO_IMAGE: &str = "mongo:3.6.6";
pub const MONGO_DATA: &str = "/data/circle/mongo";
pub const MONGO_MOUNT: &str = "/data/db";

/// What the data migration sends the container's `mongo` shell for one database: a
/// line per collection, `name<TAB>count<TAB>dbHash md5`, the form
/// [`parse_stats`] reads (and `MongoAdmin::collection_stats` returns for the target).
pub const MONGO_STATS_SCRIPT: &str = "var h = db.runCommand({dbHash: 1}); \
     db.getCollectionNames().forEach(function (c) \
     { print(c + '\\t' + db.getCollection(c).count() + '\\t' + h.collections[c]); });";

/// A MongoDB database the migration may carry: letters, digits, `_` and `-`, not
/// starting with `-`, at most 63 bytes; never `admin`, `local` or `config` (CircleCI's
/// script drops `admin` from the dump; the others are the server's own).
pub fn check_mongo_database(s: &str) -> Result<(), String> {
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
pub const EXPECTED_MONGO_DATABASE: &str = "circle_ghe";

/// The tables CircleCI's export script checks a dump for, by database.
pub const EXPECTED_TABLES: [(&str, &str); 5] = [
    ("circle", "circle_migrations"),
    ("conductor_production", "build_jobs"),
    ("contexts_service_production", "contexts"),
    ("cron_service_production", "qrtz_blob_triggers"),
    ("vms", "tasks"),
];

/// One table's row count and content checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStat {
    pub table: String,
    pub rows: i64,
    pub checksum: String,
}

/// Differences between the source's and the target's tables, one line each, naming
/// the table and both sides.
pub fn compare(db: &str, source: &[TableStat], target: &[TableStat]) -> Vec<String> {
    differences(db, source, target, "rows")
}

/// As [`compare`], for what counts `noun` (`rows`, `documents`).
pub fn differences(
    db: &str,
    source: &[TableStat],
    target: &[TableStat],
    noun: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for s in source {
        match target.iter().find(|t| t.table == s.table) {
            None => out.push(format!(
                "{db}.{}: {} {noun} in the source, missing in the target",
                s.table, s.rows
            )),
            Some(t) if t.rows != s.rows => out.push(format!(
                "{db}.{}: {} {noun} in the source, {} in the target",
                s.table, s.rows, t.rows
            )),
            Some(t) if t.checksum != s.checksum => out.push(format!(
                "{db}.{}: {} {noun} on both sides, but their content differs (checksums {} and {})",
                s.table, s.rows, s.checksum, t.checksum
            )),
            Some(_) => {}
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
pub fn check_export_dir(export_dir: &str, data_dirs: &[(&str, &str)]) -> Result<(), String> {
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
            table: t.into(),
            rows,
            checksum: md5.into(),
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
        let d = differences("circle_ghe", &src, &dst, "documents");
        assert_eq!(
            d[0],
            "circle_ghe.public.b: 2 documents in the source, 1 in the target"
        );
    }

    #[test]
    fn parse_stats_sorts_and_rejects_odd_rows() {
        let rows = vec![
            vec!["public.b".to_string(), "2".to_string(), "7".to_string()],
            vec!["public.a".to_string(), "0".to_string(), "0".to_string()],
        ];
        let s = parse_stats(&rows).unwrap();
        assert_eq!(s[0].table, "public.a");
        assert_eq!(s[1].rows, 2);
        assert!(parse_stats(&[vec!["x".to_string()]]).is_err());
        assert!(parse_stats(&[vec!["t".into(), "n".into(), "0".into()]]).is_err());
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
