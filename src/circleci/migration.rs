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

/// Session settings that make a row's text form the same on both servers, whatever
/// their defaults or versions: UTC ISO timestamps, hex bytea, and floats printed as
/// 9.5 prints them (`extra_float_digits = 0` means the same before and after 12).
pub const STAT_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'; SET extra_float_digits = 0;";

/// Row count and content checksum of every table in `qualified` (as [`TABLES_SQL`]
/// gives them), in one statement: per table, its name, its row count and the sum of
/// the first 60 bits of each row's md5. A sum does not depend on the rows' physical
/// order and needs no memory for the table, so it serves tables of any size; the same
/// rows give the same sum on both servers.
pub fn stats_sql(qualified: &[String]) -> Option<String> {
    if qualified.is_empty() {
        return None;
    }
    let parts: Vec<String> = qualified
        .iter()
        .map(|t| {
            format!(
                "SELECT {}, count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0) FROM {t} t",
                quote_literal(t)
            )
        })
        .collect();
    Some(format!("{STAT_SETTINGS} {}", parts.join(" UNION ALL ")))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

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
            Some(t) if t.checksum != s.checksum => out.push(format!(
                "{db}.{}: {} rows on both sides, but their content differs (checksums {} and {})",
                s.table, s.rows, s.checksum, t.checksum
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
    }

    #[test]
    fn stats_sql_quotes_the_label_and_keeps_the_name() {
        let sql = stats_sql(&["public.\"it's\"".to_string(), "public.b".to_string()]).unwrap();
        assert!(sql.starts_with(STAT_SETTINGS));
        assert!(sql.contains("SELECT 'public.\"it''s\"', count(*)"), "{sql}");
        assert!(
            sql.contains("FROM public.\"it's\" t UNION ALL SELECT 'public.b'"),
            "{sql}"
        );
        assert_eq!(stats_sql(&[]), None);
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
}
