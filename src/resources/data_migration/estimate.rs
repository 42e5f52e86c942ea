//! What a plan can know of the migration before anything stops: the embedded data's
//! size on the Services machine (`du`), the free space on the export's volume (`df`),
//! and from those the expected downtime and whether the export fits.

use std::time::Duration;

use super::*;
use crate::backends::ssh::{Program, ServicesHost};

/// The rate the estimate assumes, in bytes of embedded data directory per second: below
/// what `make bench` measured for the whole migration on a 2-core machine (88 MB/s of
/// database size, export and verification included), as a data directory also holds
/// indexes and WAL that are not carried.
pub(super) const ASSUMED_RATE: f64 = 40e6;

/// The embedded data and the export's volume, as far as they could be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Sizes {
    /// `du` of the embedded PostgreSQL's data directory, when carried.
    pub postgres: Option<Result<u64, String>>,
    /// `du` of the embedded MongoDB's data directory, when carried.
    pub mongo: Option<Result<u64, String>>,
    /// The deepest existing directory of `export_dir` and its free bytes.
    pub avail: Result<(String, u64), String>,
    /// `postgres.compression = 0`: a plain dump writes TOAST-compressed values and
    /// `bytea` out in full, and may outgrow the data directory; the space check then
    /// counts PostgreSQL's twice.
    pub pg_uncompressed: bool,
}

fn mb(n: u64) -> String {
    format!("{:.0} MB", n as f64 / 1e6)
}

impl Sizes {
    /// The export's expected size: the data directories'. For PostgreSQL an upper
    /// bound (the dump holds no index, no dead rows, no WAL); for MongoDB it
    /// may fall short (WiredTiger compresses its files, `mongodump`'s BSON does not).
    pub(super) fn expected_export(&self) -> Option<u64> {
        let read = |v: &Option<Result<u64, String>>| match v {
            None => Some(0),
            Some(Ok(n)) => Some(*n),
            Some(Err(_)) => None,
        };
        Some(read(&self.postgres)? + read(&self.mongo)?)
    }

    /// The sentences for the plan's warning.
    pub(super) fn describe(&self) -> String {
        let part = |what: &str, v: &Option<Result<u64, String>>| match v {
            None => None,
            Some(Ok(n)) => Some(format!("{what} {}", mb(*n))),
            Some(Err(e)) => Some(format!("{what} unknown ({e})")),
        };
        let parts: Vec<String> = [
            part("PostgreSQL", &self.postgres),
            part("MongoDB", &self.mongo),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut out = format!("Embedded data to carry: {}.", parts.join(", "));
        if let Some(n) = self.expected_export() {
            let secs = Duration::try_from_secs_f64((n as f64 / ASSUMED_RATE).ceil())
                .unwrap_or(Duration::MAX)
                .as_secs();
            out.push_str(&format!(
                " Expected migration time about {} (at {:.0} MB/s, below the 88 MB/s make bench measured on 2 \
                 cores), plus CircleCI's stop and start.",
                humantime::format_duration(Duration::from_secs(secs.max(1))),
                ASSUMED_RATE / 1e6
            ));
        }
        match &self.avail {
            Ok((dir, free)) => out.push_str(&format!(
                " Free on the export's volume ({dir}): {}.",
                mb(*free)
            )),
            Err(e) => out.push_str(&format!(
                " Free space on the export's volume unknown ({e})."
            )),
        }
        out
    }

    /// The space the export may need: [`Sizes::expected_export`], PostgreSQL's part
    /// twice when its dumps are not compressed.
    pub(super) fn space_needed(&self) -> Option<u64> {
        let extra = match (&self.postgres, self.pg_uncompressed) {
            (Some(Ok(n)), true) => *n,
            _ => 0,
        };
        Some(self.expected_export()? + extra)
    }

    /// The error when the export cannot fit.
    pub(super) fn shortfall(&self, export_dir: &str) -> Option<Diagnostic> {
        let need = self.space_needed()?;
        let (dir, free) = self.avail.as_ref().ok()?;
        let (how, or) = if self.pg_uncompressed && matches!(self.postgres, Some(Ok(_))) {
            (
                "the embedded data directories' size, PostgreSQL's twice: an uncompressed dump writes \
                 compressed values out in full",
                ", or set postgres.compression to 1-9",
            )
        } else {
            ("the embedded data directories' size", "")
        };
        (need > *free).then(|| {
            Diagnostic::error(
                "Not enough space for the export",
                format!(
                    "the export to {export_dir} is expected to need about {} ({how}), and the volume of {dir} \
                     has {} free on the Services machine. Free space there, or set export_dir to a directory \
                     on a larger volume{or}. Nothing was changed.",
                    mb(need),
                    mb(*free)
                ),
            )
            .at(AttrPath::root("export_dir"))
        })
    }
}

/// The first error of `d`, for a sentence.
fn first_error(d: Diagnostics) -> String {
    d.0.first()
        .map_or_else(String::new, |x| format!("{}: {}", x.summary, x.detail))
}

/// The first number of a `du -s -B1` or `df --output=avail` answer.
fn number(text: &str) -> Option<u64> {
    text.split_whitespace().find_map(|w| w.parse().ok())
}

async fn size_of(h: &ServicesHost, path: &str, deadline: Duration) -> Result<u64, String> {
    let (cmd, out) =
        crate::resources::run_command(h, Program::Du, &["-s", "-B1", "--", path], None, deadline)
            .await
            .map_err(first_error)?;
    if !out.success() {
        return Err(format!("`{cmd}`: {}", out.evidence()));
    }
    number(&out.stdout_text()).ok_or_else(|| format!("`{cmd}` printed no size"))
}

/// The free bytes of the volume `dir` will be on: `df` of it, else of the nearest
/// ancestor that exists.
async fn free_at(h: &ServicesHost, dir: &str, deadline: Duration) -> Result<(String, u64), String> {
    let mut at = dir.trim_end_matches('/').to_string();
    loop {
        let path = if at.is_empty() { "/" } else { at.as_str() };
        let (cmd, out) = crate::resources::run_command(
            h,
            Program::Df,
            &["-B1", "--output=avail", "--", path],
            None,
            deadline,
        )
        .await
        .map_err(first_error)?;
        if out.success() {
            return number(&out.stdout_text())
                .map(|n| (path.to_string(), n))
                .ok_or_else(|| format!("`{cmd}` printed no number"));
        }
        if path == "/" {
            return Err(format!("`{cmd}`: {}", out.evidence()));
        }
        at = match at.rsplit_once('/') {
            Some((parent, _)) => parent.to_string(),
            None => String::new(),
        };
    }
}

/// Where the migration reads and writes on the Services machine.
pub(super) struct Layout<'a> {
    /// The directory the machine's paths are under (`config_root`).
    pub root: &'a str,
    pub export_dir: &'a str,
    /// The embedded PostgreSQL's data directory, when carried.
    pub postgres: Option<&'a str>,
    /// The embedded MongoDB's data directory, when carried.
    pub mongo: Option<&'a str>,
    /// `postgres.compression = 0`.
    pub pg_uncompressed: bool,
}

impl<'a> Layout<'a> {
    /// The layout of the migration's settings.
    pub(super) fn of(s: &'a super::settings::Settings) -> Self {
        Layout {
            root: &s.cutover.root,
            export_dir: &s.export_dir,
            postgres: s.postgres.as_ref().map(|p| p.data_dir.as_str()),
            mongo: s.mongo.as_ref().map(|m| m.data_dir.as_str()),
            pg_uncompressed: s.postgres.as_ref().is_none_or(|p| p.compression == 0),
        }
    }
}

impl DataMigration {
    /// The sizes, for the migration laid out as `at`; None when nothing is carried from
    /// a data directory or the Services machine is not configured.
    pub(super) async fn sizes(&self, at: &Layout<'_>) -> Option<Sizes> {
        if at.postgres.is_none() && at.mongo.is_none() {
            return None;
        }
        let h = self.data.services().ok()?;
        let root = at.root.trim_end_matches('/');
        let deadline = self.data.timeout();
        let postgres = match at.postgres {
            Some(d) => Some(size_of(&h, &format!("{root}{d}"), deadline).await),
            None => None,
        };
        let mongo = match at.mongo {
            Some(d) => Some(size_of(&h, &format!("{root}{d}"), deadline).await),
            None => None,
        };
        let export = format!("{root}{}", at.export_dir);
        Some(Sizes {
            postgres,
            mongo,
            avail: free_at(&h, &export, deadline).await,
            pg_uncompressed: at.pg_uncompressed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_must_fit_and_the_estimate_says_how_long() {
        let s = Sizes {
            postgres: Some(Ok(3_000_000_000)),
            mongo: Some(Ok(1_000_000_000)),
            avail: Ok(("/data".into(), 2_000_000_000)),
            pg_uncompressed: false,
        };
        let text = s.describe();
        assert!(
            text.contains("PostgreSQL 3000 MB, MongoDB 1000 MB"),
            "{text}"
        );
        assert!(text.contains("about 1m 40s"), "{text}");
        let e = s
            .shortfall("/data/circle/external-services-export")
            .unwrap();
        assert!(e.detail.contains("about 4000 MB"), "{}", e.detail);
        assert!(e.detail.contains("2000 MB free"), "{}", e.detail);
        // Enough room: no error. An unknown size: no error, and no estimate.
        let roomy = Sizes {
            avail: Ok(("/data".into(), 5_000_000_000)),
            ..s
        };
        assert!(roomy.shortfall("/x").is_none());
        let unknown = Sizes {
            mongo: Some(Err("du: cannot access".into())),
            ..roomy
        };
        assert!(unknown.shortfall("/x").is_none());
        assert!(!unknown.describe().contains("Expected migration time"));
        // Uncompressed dumps: PostgreSQL's part counts twice, and the error says how to
        // need less.
        let plain = Sizes {
            postgres: Some(Ok(3_000_000_000)),
            mongo: Some(Ok(1_000_000_000)),
            avail: Ok(("/data".into(), 5_000_000_000)),
            pg_uncompressed: true,
        };
        let e = plain.shortfall("/x").unwrap();
        assert!(e.detail.contains("about 7000 MB"), "{}", e.detail);
        assert!(
            e.detail.contains("set postgres.compression to 1-9"),
            "{}",
            e.detail
        );
        assert_eq!(number("Avail\n123456\n"), Some(123456));
        assert_eq!(number("4096\t/data/circle/mongo\n"), Some(4096));
    }
}
