//! Which client tools can restore CircleCI 2.17's dumps into a given target: the
//! restore's image by default (the target's own release), the release an image or a
//! tool says it is, and the combinations the tools cannot handle, from the vendors'
//! documentation:
//!
//! - PostgreSQL: `pg_restore` reads custom-format archives of its own and older
//!   releases only; libpq learned SCRAM-SHA-256 in release 10 (older clients answer
//!   "authentication method 10 not supported"); and PostgreSQL documents restores
//!   into the same or a newer release (tools newer than the target are a caution).
//! - MongoDB: the tools of 3.6 to 4.2 (inside those images) speak the legacy opcodes,
//!   which MongoDB 5.1 (wire version 14) removed; from 4.4 the images carry the
//!   Database Tools 100.x, which talk to current servers and read 3.6 dumps.

/// A PostgreSQL release as its tools and servers are compatible: `(9, 5)`, `(9, 6)`,
/// then `(10, 0)`, `(15, 0)`: the minor of 10 and later is a bug-fix release.
pub(crate) type PgRelease = (u32, u32);

/// The embedded PostgreSQL's release (CircleCI Server 2.17 runs 9.5.8).
pub(crate) const PG_SOURCE: PgRelease = (9, 5);
/// The embedded MongoDB's release (3.6.6).
pub(crate) const MONGO_SOURCE: (u32, u32) = (3, 6);
/// The first MongoDB wire version without the legacy opcodes (MongoDB 5.1).
pub(crate) const WIRE_WITHOUT_LEGACY_OPCODES: i32 = 14;
/// The first MongoDB image release whose tools are the Database Tools 100.x.
const MONGO_TOOLS_100: (u32, u32) = (4, 4);

/// `server_version_num` (e.g. 90508, 150004) as a release.
pub(crate) fn pg_release(version_num: i32) -> PgRelease {
    let n = u32::try_from(version_num).unwrap_or(0);
    if n >= 100_000 {
        (n / 10_000, 0)
    } else {
        (n / 10_000, n / 100 % 100)
    }
}

/// A release as PostgreSQL names it: "9.5", "15".
pub(crate) fn pg_name(r: PgRelease) -> String {
    if r.0 >= 10 {
        r.0.to_string()
    } else {
        format!("{}.{}", r.0, r.1)
    }
}

/// The restore's image for a PostgreSQL target of `version_num`: the official image
/// of the target's own release.
pub(crate) fn default_pg_image(version_num: i32) -> String {
    format!("postgres:{}", pg_name(pg_release(version_num)))
}

/// The restore's image for a MongoDB target of wire version `wire`: the official
/// image of the target's release (its tools), or of 8.0 for a release without an
/// image of its own (5.1 to 5.3, the rapid releases; anything newer than 8.0).
pub(crate) fn default_mongo_image(wire: i32) -> String {
    let release = match wire {
        ..=6 => "3.6",
        7 => "4.0",
        8 => "4.2",
        9..=12 => "4.4",
        13 => "5.0",
        17..=20 => "6.0",
        21..=24 => "7.0",
        _ => "8.0",
    };
    format!("mongo:{release}")
}

/// The leading `MAJOR[.MINOR]` of the tag of an official `repo` image (`postgres:9.6`,
/// `registry.internal:5000/postgres:16.4-alpine`, `mongo:7.0.14`); none for `latest`,
/// a digest, no tag, or another repository (`myorg/pg-tools:2024.06` says nothing of
/// the tools inside: the check before the stop asks them).
fn tag_numbers(image: &str, repo: &str) -> Option<(u32, Option<u32>)> {
    let (name, tag) = image.rsplit_once(':')?;
    if tag.contains('/') || image.contains('@') || name.rsplit('/').next() != Some(repo) {
        return None;
    }
    let mut parts = tag.split(['.', '-', '_']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok());
    Some((major, minor))
}

/// The PostgreSQL release an image's tag names, when it names one (`postgres:9` does
/// not: 9 was several releases).
pub(crate) fn pg_image_release(image: &str) -> Option<PgRelease> {
    match tag_numbers(image, "postgres")? {
        (m, _) if m >= 10 => Some((m, 0)),
        (m, Some(n)) => Some((m, n)),
        _ => None,
    }
}

/// The MongoDB release an image's tag names (`mongo:4` does not: it was 4.4, whose
/// tools are not 4.0's).
pub(crate) fn mongo_image_release(image: &str) -> Option<(u32, u32)> {
    let (m, n) = tag_numbers(image, "mongo")?;
    Some((m, n?))
}

/// The release `pg_restore --version` (or `psql --version`) prints:
/// "pg_restore (PostgreSQL) 9.5.8", "psql (PostgreSQL) 16.4 (Debian 16.4-1)".
pub(crate) fn parse_pg_tools(out: &str) -> Option<PgRelease> {
    let v = out
        .split("(PostgreSQL)")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let mut n = v.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
    });
    let major = n.next()?.ok()?;
    if major >= 10 {
        return Some((major, 0));
    }
    Some((major, n.next()?.ok()?))
}

/// What `mongorestore --version` says it is: the legacy tools of a server release
/// ("mongorestore version: r3.6.6") or the Database Tools ("mongorestore version:
/// 100.9.4").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MongoTools {
    /// The tools of server release (major, minor).
    Legacy(u32, u32),
    /// The Database Tools 100.x.
    Tools100,
}

impl std::fmt::Display for MongoTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MongoTools::Legacy(a, b) => write!(f, "the MongoDB {a}.{b} tools"),
            MongoTools::Tools100 => f.write_str("the MongoDB Database Tools 100.x"),
        }
    }
}

/// The tools inside an official `mongo:X.Y` image.
pub(crate) fn mongo_image_tools(release: (u32, u32)) -> MongoTools {
    if release >= MONGO_TOOLS_100 {
        MongoTools::Tools100
    } else {
        MongoTools::Legacy(release.0, release.1)
    }
}

pub(crate) fn parse_mongo_tools(out: &str) -> Option<MongoTools> {
    let line = out.lines().find(|l| l.contains("version:"))?;
    let v = line
        .split("version:")
        .nth(1)?
        .trim()
        .trim_start_matches('r');
    let mut n = v.split('.').map(|p| p.parse::<u32>());
    let major = n.next()?.ok()?;
    if major >= 100 {
        return Some(MongoTools::Tools100);
    }
    Some(MongoTools::Legacy(major, n.next()?.ok()?))
}

/// What the PostgreSQL target is, as far as the restore's tools care.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PgTarget {
    pub release: PgRelease,
    /// Whether its passwords are SCRAM-SHA-256 verifiers (`password_encryption`).
    pub scram: bool,
}

/// A caution for tools newer than the target: pg_restore writes its own session
/// settings and commands, and PostgreSQL documents restores into the same or a newer
/// release; it does not promise an older one. Not a refusal: no such failure is known
/// for a 9.5 dump.
pub(crate) fn pg_caution(tools: PgRelease, target: PgTarget) -> Option<String> {
    (tools > target.release).then(|| {
        format!(
            "pg_restore {} is newer than the target's PostgreSQL {}; PostgreSQL documents restores with \
             the target's own release or an older one's dump, so the default is the target's release",
            pg_name(tools),
            pg_name(target.release)
        )
    })
}

/// Why tools of `tools` cannot restore 9.5 dumps into `target`; none when they can.
pub(crate) fn pg_refusal(tools: PgRelease, target: PgTarget) -> Option<String> {
    let (t, s, g) = (pg_name(tools), pg_name(PG_SOURCE), pg_name(target.release));
    if tools < PG_SOURCE {
        return Some(format!(
            "pg_restore {t} cannot read the dumps of the embedded PostgreSQL {s} (an archive newer than it knows)"
        ));
    }
    if target.scram && tools < (10, 0) {
        return Some(format!(
            "libpq {t} cannot authenticate with SCRAM-SHA-256, which PostgreSQL {g} uses for the restore's \
             password (password_encryption = scram-sha-256); clients learned it in PostgreSQL 10"
        ));
    }
    None
}

/// Why `tools` cannot restore 3.6 dumps into a MongoDB of wire version `wire`.
pub(crate) fn mongo_refusal(tools: MongoTools, wire: i32, target: &str) -> Option<String> {
    match tools {
        MongoTools::Legacy(a, b) if (a, b) < MONGO_SOURCE => Some(format!(
            "{tools} cannot read the dumps of the embedded MongoDB 3.6"
        )),
        MongoTools::Legacy(..) if wire >= WIRE_WITHOUT_LEGACY_OPCODES => Some(format!(
            "{tools} speak the legacy opcodes, which MongoDB 5.1 and later (here {target}) removed; the \
             Database Tools 100.x (images mongo:4.4 and later) talk to it"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_and_default_images() {
        assert_eq!(pg_release(90508), (9, 5));
        assert_eq!(pg_release(90624), (9, 6));
        assert_eq!(pg_release(150004), (15, 0));
        assert_eq!(default_pg_image(90508), "postgres:9.5");
        assert_eq!(default_pg_image(170002), "postgres:17");
        assert_eq!(default_mongo_image(6), "mongo:3.6");
        assert_eq!(default_mongo_image(13), "mongo:5.0");
        assert_eq!(default_mongo_image(15), "mongo:8.0");
        assert_eq!(default_mongo_image(17), "mongo:6.0");
        assert_eq!(default_mongo_image(25), "mongo:8.0");
    }

    #[test]
    fn image_tags_name_a_release_or_nothing() {
        assert_eq!(pg_image_release("postgres:9.6"), Some((9, 6)));
        assert_eq!(pg_image_release("postgres:9.6.24-alpine"), Some((9, 6)));
        assert_eq!(
            pg_image_release("registry.internal:5000/postgres:16.4"),
            Some((16, 0))
        );
        for none in [
            "postgres",
            "postgres:9",
            "postgres:latest",
            "registry.internal:5000/postgres",
            "postgres@sha256:0123",
        ] {
            assert_eq!(pg_image_release(none), None, "{none}");
        }
        assert_eq!(mongo_image_release("mongo:7"), None);
        assert_eq!(mongo_image_release("mongo:7.0"), Some((7, 0)));
        assert_eq!(pg_image_release("myorg/pg-tools:2024.06"), None);
        assert_eq!(mongo_image_release("corp/mongo-tools:1.2"), None);
        assert_eq!(mongo_image_release("mongo:3.6.6"), Some((3, 6)));
        assert_eq!(mongo_image_tools((4, 2)), MongoTools::Legacy(4, 2));
        assert_eq!(mongo_image_tools((4, 4)), MongoTools::Tools100);
    }

    #[test]
    fn tool_versions_as_the_tools_print_them() {
        assert_eq!(
            parse_pg_tools("pg_restore (PostgreSQL) 9.5.8\n"),
            Some((9, 5))
        );
        assert_eq!(
            parse_pg_tools("psql (PostgreSQL) 16.4 (Debian 16.4-1.pgdg120+1)"),
            Some((16, 0))
        );
        assert_eq!(
            parse_pg_tools("pg_restore (PostgreSQL) 10beta2"),
            Some((10, 0))
        );
        assert_eq!(parse_pg_tools("bash: pg_restore: not found"), None);
        assert_eq!(
            parse_mongo_tools("mongorestore version: r3.6.6\ngit version: 6405d6"),
            Some(MongoTools::Legacy(3, 6))
        );
        assert_eq!(
            parse_mongo_tools("mongorestore version: 100.9.4\ngit version: x"),
            Some(MongoTools::Tools100)
        );
        assert_eq!(parse_mongo_tools("command not found"), None);
    }

    #[test]
    fn combinations_the_tools_cannot_handle_are_named() {
        let t15 = PgTarget {
            release: (15, 0),
            scram: true,
        };
        assert!(pg_refusal((15, 0), t15).is_none());
        assert!(pg_refusal((9, 6), t15).is_some_and(|w| w.contains("SCRAM")));
        assert!(pg_refusal(
            (9, 6),
            PgTarget {
                scram: false,
                ..t15
            }
        )
        .is_none());
        assert!(pg_refusal(
            (9, 4),
            PgTarget {
                scram: false,
                ..t15
            }
        )
        .is_some_and(|w| w.contains("9.5")));
        assert!(pg_refusal((17, 0), t15).is_none());
        assert!(pg_caution((17, 0), t15).is_some_and(|w| w.contains("newer")));
        assert!(pg_caution((15, 0), t15).is_none());
        assert!(mongo_refusal(MongoTools::Legacy(3, 6), 13, "m:1").is_none());
        assert!(mongo_refusal(MongoTools::Legacy(3, 6), 17, "m:1")
            .is_some_and(|w| w.contains("legacy opcodes") && w.contains("m:1")));
        assert!(mongo_refusal(MongoTools::Legacy(3, 4), 6, "m:1").is_some());
        assert!(mongo_refusal(MongoTools::Tools100, 25, "m:1").is_none());
    }
}
