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

/// Row count and a content digest of one table (`qualified` as [`TABLES_SQL`] gives
/// it): md5 over the rows' text forms in sorted order, so the physical order of the
/// rows does not matter. The same text on both servers gives the same digest.
pub fn table_stat_sql(qualified: &str) -> String {
    format!(
        "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {qualified} t"
    )
}

/// The tables CircleCI's export script checks a dump for, by database.
pub const EXPECTED_TABLES: [(&str, &str); 5] = [
    ("circle", "circle_migrations"),
    ("conductor_production", "build_jobs"),
    ("contexts_service_production", "contexts"),
    ("cron_service_production", "qrtz_blob_triggers"),
    ("vms", "tasks"),
];

/// One table's count and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStat {
    pub table: String,
    pub rows: i64,
    pub md5: String,
}

/// Differences between the source's and the target's tables, one line each, naming
/// the table and both sides.
pub fn compare(db: &str, source: &[TableStat], target: &[TableStat]) -> Vec<String> {
    let mut out = Vec::new();
    for s in source {
        match target.iter().find(|t| t.table == s.table) {
            None => out.push(format!(
                "{db}.{}: {} rows in the source, missing in the target",
                s.table, s.rows
            )),
            Some(t) if t.rows != s.rows => out.push(format!(
                "{db}.{}: {} rows in the source, {} in the target",
                s.table, s.rows, t.rows
            )),
            Some(t) if t.md5 != s.md5 => out.push(format!(
                "{db}.{}: {} rows on both sides, but their content differs (md5 {} and {})",
                s.table, s.rows, s.md5, t.md5
            )),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(t: &str, rows: i64, md5: &str) -> TableStat {
        TableStat {
            table: t.into(),
            rows,
            md5: md5.into(),
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
    }

    #[test]
    fn stat_sql_quotes_nothing_itself() {
        assert_eq!(
            table_stat_sql("public.\"Odd\"\"Name\""),
            "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM public.\"Odd\"\"Name\" t"
        );
    }
}
