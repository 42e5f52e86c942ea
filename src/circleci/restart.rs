//! Restarting CircleCI and the runbook's checks afterwards, as data: Replicated's
//! `replicatedctl` answers, which container to look at for each externalized service,
//! and which lines prove what. The resource runs them; nothing here does I/O.

use serde::Deserialize;

use super::{envfile, mongo, postgres, rabbitmq, redis};

/// One entry of `replicatedctl app status` (a JSON array of one object).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct AppStatus {
    #[serde(rename = "State")]
    pub state: String,
    #[serde(rename = "DesiredState")]
    pub desired: String,
    #[serde(rename = "IsTransitioning", default)]
    pub transitioning: bool,
    #[serde(rename = "Error", default)]
    pub error: String,
    /// When the app last changed state (Replicated's clock): a start or a stop by
    /// anyone changes it.
    #[serde(rename = "LastModifiedAt", default)]
    pub modified: String,
}

impl AppStatus {
    /// Done moving, and in `state`.
    pub(crate) fn settled_in(&self, state: &str) -> bool {
        !self.transitioning && self.state == state
    }
}

#[derive(Deserialize)]
struct AppInfo {
    #[serde(rename = "VersionLabel")]
    version: String,
}

fn first<T: for<'de> Deserialize<'de>>(json: &str, what: &str) -> Result<T, String> {
    let mut all: Vec<T> = serde_json::from_str(json.trim())
        .map_err(|e| format!("{what} did not print the JSON Replicated prints: {e}"))?;
    if all.is_empty() {
        return Err(format!("{what} listed no app"));
    }
    Ok(all.swap_remove(0))
}

/// `replicatedctl app status -o json`.
pub(crate) fn parse_status(json: &str) -> Result<AppStatus, String> {
    first(json, "replicatedctl app status")
}

/// The app's version from `replicatedctl app inspect -o json` (its `VersionLabel`).
pub(crate) fn parse_version(json: &str) -> Result<String, String> {
    first::<AppInfo>(json, "replicatedctl app inspect").map(|a| a.version)
}

/// A version pattern: dot-separated parts, each a number or `x` / `*` (any).
pub(crate) fn check_pattern(p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && p.split('.').all(|part| {
            part == "x"
                || part == "*"
                || (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{p:?} is not a version pattern (parts are numbers, or x for any: e.g. 2.17.x)"
        ))
    }
}

/// True when `version` (e.g. `2.17.3`, or `2.17.3-beta`) matches one of `patterns`: a
/// pattern's parts match the version's first parts.
pub(crate) fn version_allowed(version: &str, patterns: &[String]) -> bool {
    let core = version.split(['-', '+', ' ']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    patterns.iter().any(|p| {
        let want: Vec<&str> = p.split('.').collect();
        want.len() <= parts.len()
            && want
                .iter()
                .zip(&parts)
                .all(|(w, v)| *w == "x" || *w == "*" || w == v)
    })
}

/// The runbook's config files, relative to the Services machine's root.
pub mod files {
    /// PostgreSQL's settings.
    pub const POSTGRES: &str = "etc/circleconfig/shared/postgresql";
    /// MongoDB's settings.
    pub const MONGO: &str = "etc/circle-installation-customizations";
    /// Vault's settings (the context service).
    pub const VAULT: &str = "etc/circleconfig/context-service/customizations";
    /// Redis's settings.
    pub const REDIS: &str = "etc/circleconfig/shared/redis";
    /// Slanger's Redis settings.
    pub const SLANGER: &str = "etc/circleconfig/slanger/customizations";
    /// RabbitMQ's settings.
    pub const RABBITMQ: &str = "etc/circleconfig/shared/rabbitmq";
    /// Nomad's settings.
    pub const NOMAD: &str = "etc/circleconfig/shared/nomad";
    /// Every file above.
    pub const ALL: [&str; 7] = [POSTGRES, MONGO, VAULT, REDIS, SLANGER, RABBITMQ, NOMAD];
}

/// What the files on the Services machine externalize (read there, not from Terraform).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct External {
    pub postgres_host: Option<String>,
    pub mongo_hosts: Option<Vec<String>>,
    pub vault: bool,
    pub redis: Option<(String, u16)>,
    pub slanger_redis: Option<(String, u16)>,
    pub rabbitmq_host: Option<String>,
    pub nomad_endpoint: Option<String>,
}

impl External {
    /// From each file's text (`None`: no such file). A file that does not parse is an
    /// error naming it.
    pub(crate) fn read(text_of: impl Fn(&str) -> Option<String>) -> Result<External, String> {
        let mut e = External::default();
        let bad = |f: &str, err: String| format!("/{f}: {err}");
        if let Some(t) = text_of(files::POSTGRES) {
            e.postgres_host = Some(
                postgres::parse(&t)
                    .map_err(|x| bad(files::POSTGRES, x))?
                    .host,
            );
        }
        if let Some(t) = text_of(files::MONGO) {
            let a = envfile::parse(&t).map_err(|x| bad(files::MONGO, x.to_string()))?;
            if let Some(uri) = envfile::lookup(&a, "CIRCLE_SECRETS_MONGODB_MAIN_URI") {
                let parsed = mongo::parse_uri(uri).map_err(|x| bad(files::MONGO, x))?;
                e.mongo_hosts = Some(parsed.hosts);
            }
        }
        if let Some(t) = text_of(files::VAULT) {
            let a = envfile::parse(&t).map_err(|x| bad(files::VAULT, x.to_string()))?;
            e.vault = envfile::lookup(&a, "VAULT__TOKEN").is_some();
        }
        if let Some(t) = text_of(files::REDIS) {
            let r = redis::parse(&t).map_err(|x| bad(files::REDIS, x))?;
            e.redis = Some((r.host, r.port));
        }
        if let Some(t) = text_of(files::SLANGER) {
            let r = redis::parse(&t).map_err(|x| bad(files::SLANGER, x))?;
            e.slanger_redis = Some((r.host, r.port));
        }
        if let Some(t) = text_of(files::RABBITMQ) {
            e.rabbitmq_host = Some(rabbitmq::parse(&t).map_err(|x| bad(files::RABBITMQ, x))?.0);
        }
        if let Some(t) = text_of(files::NOMAD) {
            e.nomad_endpoint = Some(super::nomad::parse(&t).map_err(|x| bad(files::NOMAD, x))?);
        }
        Ok(e)
    }
}

/// What a check reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// `docker logs NAME`.
    Logs(&'static str),
    /// `docker exec NAME bash -c 'source /.circlerc; printf "%s\n" "$A" ...'`: one line
    /// per variable.
    Env(&'static str, Vec<&'static str>),
}

impl Probe {
    #[cfg(test)]
    pub(crate) fn container(&self) -> &'static str {
        match self {
            Probe::Logs(c) | Probe::Env(c, _) => c,
        }
    }

    /// The `docker` arguments.
    /// `docker inspect` for when a log probe's container last stopped (Docker's
    /// `FinishedAt`, from the Services machine's clock): every line logged after it is
    /// this start's. Not `StartedAt`: Docker sets that only once the process runs, and
    /// the first lines of this start may be stamped before it. None for other probes.
    pub(crate) fn since_args(&self) -> Option<Vec<String>> {
        match self {
            Probe::Logs(c) => Some(vec![
                "inspect".into(),
                "--format".into(),
                "{{.State.FinishedAt}}".into(),
                c.to_string(),
            ]),
            Probe::Env(..) => None,
        }
    }

    /// The command; a log probe reads both streams, each line with its time, from
    /// `since` (the container's last `FinishedAt`) on, or all of it.
    pub(crate) fn docker_args(&self, since: Option<&str>) -> Vec<String> {
        match self {
            Probe::Logs(c) => {
                let mut a = vec!["logs".to_string(), "--timestamps".into()];
                if let Some(t) = since {
                    a.extend(["--since".into(), t.to_string()]);
                }
                a.push(c.to_string());
                a
            }
            Probe::Env(c, vars) => {
                let list: Vec<String> = vars.iter().map(|v| format!("\"${v}\"")).collect();
                vec![
                    "exec".into(),
                    c.to_string(),
                    "bash".into(),
                    "-c".into(),
                    format!("source /.circlerc; printf '%s\\n' {}", list.join(" ")),
                ]
            }
        }
    }
}

/// What the probe's output must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Some line contains it.
    Contains(String),
    /// No line contains it.
    Absent(String),
    /// The last line containing the first contains the second too.
    LastWith(String, String),
    /// The output's lines are exactly these.
    Lines(Vec<String>),
    /// The MongoDB Java driver opened a connection to a member of the set: a seed host
    /// (these, with their ports), or a server it discovered from the members' own
    /// list ("Adding discovered server H to client view of cluster", "Discovered
    /// replica set primary H"), under the names the set itself uses.
    MongoMember(Vec<String>),
}

/// One of the runbook's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub service: &'static str,
    /// What it proves, for the list of checks passed and for errors.
    pub what: String,
    pub probe: Probe,
    pub rules: Vec<Rule>,
    /// Lines with this (case-insensitive) are the evidence when the check fails.
    pub evidence: &'static str,
}

/// The runbook's checks for what `e` externalizes.
pub(crate) fn checks(e: &External) -> Vec<Check> {
    let mut out = Vec::new();
    let c = |service, what: String, probe, rules, evidence| Check {
        service,
        what,
        probe,
        rules,
        evidence,
    };
    if let Some(h) = &e.postgres_host {
        out.push(c(
            "postgresql",
            format!("frontend's last POSTGRES_HOST line names {h}, and no org.postgresql.util.PSQLException"),
            Probe::Logs("frontend"),
            vec![
                Rule::LastWith("POSTGRES_HOST".into(), h.clone()),
                Rule::Absent("org.postgresql.util.PSQLException".into()),
            ],
            "PSQLException",
        ));
    }
    if let Some(hosts) = &e.mongo_hosts {
        let with_port = |h: &String| {
            let has_port = if h.starts_with('[') {
                h.contains("]:")
            } else {
                h.contains(':')
            };
            if has_port {
                h.clone()
            } else {
                format!("{h}:27017")
            }
        };
        out.push(c(
            "mongodb",
            format!(
                "frontend opened a connection to a member of the set (seed list {}, or a member it names)",
                hosts.join(", ")
            ),
            Probe::Logs("frontend"),
            vec![Rule::MongoMember(hosts.iter().map(with_port).collect())],
            "mongo",
        ));
    }
    if e.vault {
        out.push(c(
            "vault",
            "context-service: Successfully retrieved current auth token".into(),
            Probe::Logs("context-service"),
            vec![Rule::Contains(
                "circleci.backplane.secrets.backend.vault Successfully retrieved current auth token".into(),
            )],
            "vault",
        ));
    }
    if let Some((h, p)) = &e.redis {
        out.push(c(
            "redis",
            format!("domain-service: Reconnected to {h}:{p}"),
            Probe::Logs("domain-service"),
            vec![Rule::Contains(format!("Reconnected to {h}:{p}"))],
            "redis",
        ));
        out.push(c(
            "redis",
            format!(
                "picard-output-processor: OUTPUT_PROCESSOR_SIGNALS_REDIS is redis://{h}:{p}/10"
            ),
            Probe::Env(
                "picard-output-processor",
                vec!["OUTPUT_PROCESSOR_SIGNALS_REDIS"],
            ),
            vec![Rule::Lines(vec![format!("redis://{h}:{p}/10")])],
            "redis",
        ));
    }
    // Slanger uses its own Redis when it has one, else the shared one.
    if let Some((h, p)) = e.slanger_redis.as_ref().or(e.redis.as_ref()) {
        out.push(c(
            if e.slanger_redis.is_some() {
                "slanger"
            } else {
                "redis"
            },
            format!("slanger: REDIS_PORT_6379_TCP_ADDR/PORT are {h} and {p}"),
            Probe::Env(
                "slanger",
                vec!["REDIS_PORT_6379_TCP_ADDR", "REDIS_PORT_6379_TCP_PORT"],
            ),
            vec![Rule::Lines(vec![h.clone(), p.to_string()])],
            "redis",
        ));
    }
    if let Some(h) = &e.rabbitmq_host {
        let on = |what: &str| Rule::Contains(format!("{what} on host {h}"));
        out.push(c(
            "rabbitmq",
            format!("workflows-conductor configured its queues on host {h}"),
            Probe::Logs("workflows-conductor"),
            vec![
                on("Configuring workflow-messages queue"),
                on("Configuring workflow-notifications queue"),
            ],
            "rabbit",
        ));
        out.push(c(
            "rabbitmq",
            format!("frontend configured its queue and exchange on host {h}"),
            Probe::Logs("frontend"),
            vec![
                on("Configuring usage-queue-events queue"),
                on("Configuring exchange picard-build-signals"),
            ],
            "rabbit",
        ));
    }
    out
}

/// What one of the runbook's checks looks at, as it is whatever CircleCI runs on
/// (embedded or external): recorded before a cutover's first stop, and required again
/// after a fallback, so that "back as it was" is a comparison, not an assumption.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    /// The key in the record, e.g. `postgresql: frontend's last POSTGRES_HOST`.
    pub label: &'static str,
    pub probe: Probe,
    pub read: fn(&str) -> String,
}

/// What no line shows.
const NOTHING: &str = "(nothing)";

fn or_nothing(v: Vec<String>) -> String {
    if v.is_empty() {
        NOTHING.to_string()
    } else {
        v.join(", ")
    }
}

/// The value after `key=` in the last line that has it.
fn last_value(output: &str, key: &str) -> String {
    let pat = format!("{key}=");
    output
        .lines()
        .rev()
        .find_map(|l| l.split_once(&pat).map(|(_, r)| r))
        .and_then(|r| r.split_whitespace().next())
        .map_or_else(|| NOTHING.to_string(), str::to_string)
}

/// The distinct words after `marker` in any line, sorted.
fn after_all(output: &str, marker: &str) -> String {
    let mut v: Vec<String> = output
        .lines()
        .filter_map(|l| l.split_once(marker).map(|(_, r)| r))
        .filter_map(|r| r.split_whitespace().next())
        .map(|w| w.trim_end_matches([';', ',']).to_string())
        .collect();
    v.sort();
    v.dedup();
    or_nothing(v)
}

/// The runbook's checks' observations, whatever the files externalize.
pub(crate) fn observations() -> Vec<Observation> {
    vec![
        Observation {
            label: "postgresql: frontend's last POSTGRES_HOST",
            probe: Probe::Logs("frontend"),
            read: |o| last_value(o, "POSTGRES_HOST"),
        },
        Observation {
            label: "mongodb: hosts frontend opened connections to",
            probe: Probe::Logs("frontend"),
            read: |o| {
                let mut v: Vec<String> = o
                    .lines()
                    .filter_map(|l| l.split_once("Opened connection").map(|(_, r)| r))
                    .filter_map(|r| {
                        r.rsplit_once(" to ")
                            .map(|(_, h)| h.trim().to_ascii_lowercase())
                    })
                    .collect();
                v.sort();
                v.dedup();
                or_nothing(v)
            },
        },
        Observation {
            label: "vault: context-service retrieved its auth token",
            probe: Probe::Logs("context-service"),
            read: |o| {
                if o.contains("Successfully retrieved current auth token") {
                    "yes".to_string()
                } else {
                    "no".to_string()
                }
            },
        },
        Observation {
            label: "redis: the host domain-service reconnected to",
            probe: Probe::Logs("domain-service"),
            read: |o| after_all(o, "Reconnected to "),
        },
        Observation {
            label: "redis: picard-output-processor's OUTPUT_PROCESSOR_SIGNALS_REDIS",
            probe: Probe::Env(
                "picard-output-processor",
                vec!["OUTPUT_PROCESSOR_SIGNALS_REDIS"],
            ),
            // The address only: a URL's user and password never reach the record.
            read: |o| {
                or_nothing(
                    o.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(|l| match l.split_once("://") {
                            Some((scheme, rest)) => format!(
                                "{scheme}://{}",
                                rest.rsplit_once('@').map_or(rest, |(_, a)| a)
                            ),
                            None => l.to_string(),
                        })
                        .collect(),
                )
            },
        },
        Observation {
            label: "slanger: REDIS_PORT_6379_TCP_ADDR and _PORT",
            probe: Probe::Env(
                "slanger",
                vec!["REDIS_PORT_6379_TCP_ADDR", "REDIS_PORT_6379_TCP_PORT"],
            ),
            read: |o| {
                or_nothing(
                    o.lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect(),
                )
            },
        },
        Observation {
            label: "rabbitmq: the hosts workflows-conductor configured its queues on",
            probe: Probe::Logs("workflows-conductor"),
            read: |o| after_all(o, " queue on host "),
        },
        Observation {
            label: "rabbitmq: the hosts frontend configured its queue and exchange on",
            probe: Probe::Logs("frontend"),
            read: |o| {
                let lines: String = o
                    .lines()
                    .filter(|l| l.contains("Configuring "))
                    .map(|l| format!("{l}\n"))
                    .collect();
                after_all(&lines, " on host ")
            },
        },
    ]
}

/// The observations that differ: `label: before B, now N`. What showed nothing before
/// (a log rotated since the start, a line that depends on timing) asks for nothing.
pub(crate) fn differing(
    before: &std::collections::BTreeMap<String, String>,
    now: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    before
        .iter()
        .filter(|(_, b)| b.as_str() != NOTHING)
        .filter_map(|(k, b)| {
            let n = now.get(k).map_or(NOTHING, String::as_str);
            (n != b).then(|| format!("{k}: before the cutover {b}, now {n}"))
        })
        .collect()
}

/// Whether `output` passes `check`; the evidence lines when not.
pub(crate) fn evaluate(check: &Check, output: &str) -> Result<(), Vec<String>> {
    let lines: Vec<&str> = output.lines().collect();
    let pass = check.rules.iter().all(|r| match r {
        Rule::Contains(n) => lines.iter().any(|l| l.contains(n.as_str())),
        Rule::Absent(n) => !lines.iter().any(|l| l.contains(n.as_str())),
        Rule::LastWith(key, n) => lines
            .iter()
            .rev()
            .find(|l| l.contains(key.as_str()))
            .is_some_and(|l| l.contains(n.as_str())),
        Rule::MongoMember(seeds) => {
            // As the Java driver's ServerAddress prints a host: lower-case, IPv6
            // without brackets.
            let norm = |h: &str| {
                h.trim()
                    .trim_start_matches('[')
                    .replacen("]:", ":", 1)
                    .to_ascii_lowercase()
            };
            let mut members: Vec<String> = seeds.iter().map(|h| norm(h)).collect();
            for l in &lines {
                for marker in [
                    "Adding discovered server ",
                    "Discovered replica set primary ",
                ] {
                    if let Some(rest) = l.split_once(marker).map(|(_, r)| r) {
                        if let Some(h) = rest.split_whitespace().next() {
                            members.push(norm(h));
                        }
                    }
                }
            }
            lines.iter().any(|l| {
                l.split_once("Opened connection")
                    .and_then(|(_, r)| r.rsplit_once(" to "))
                    .is_some_and(|(_, h)| members.contains(&norm(h)))
            })
        }
        Rule::Lines(want) => {
            let got: Vec<&str> = lines.iter().map(|l| l.trim_end()).collect();
            got == want.iter().map(String::as_str).collect::<Vec<_>>()
        }
    });
    if pass {
        return Ok(());
    }
    let hint = check.evidence.to_ascii_lowercase();
    let mut ev: Vec<String> = lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().contains(&hint))
        .map(|l| l.to_string())
        .collect();
    if ev.is_empty() {
        ev = lines.iter().map(|l| l.to_string()).collect();
    }
    let from = ev.len().saturating_sub(5);
    Err(ev.split_off(from))
}

/// A line of `docker logs --timestamps`: its time as (seconds part, nanoseconds), for
/// ordering, and the line without it. Docker writes RFC 3339 with up to nine fraction
/// digits, trailing zeros dropped, so the text alone does not sort.
fn stamped(line: &str) -> Option<((&str, u32), &str)> {
    let (t, rest) = line.split_once(' ')?;
    let t = t.strip_suffix('Z')?;
    let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
    if secs.len() != 19 || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = format!("{frac:0<9}").parse().ok()?;
    Some(((secs, nanos), rest))
}

/// Both streams of `docker logs --timestamps` as one text, in the order the container
/// wrote them, timestamps removed: the runbook reads them as `docker logs … 2>&1`. A
/// line without a timestamp keeps its place after the one before it.
pub(crate) fn merge_streams(stdout: &str, stderr: &str) -> String {
    let keyed = |text: &str| -> Vec<((String, u32), String)> {
        let mut last = (String::new(), 0);
        text.lines()
            .map(|l| match stamped(l) {
                Some(((s, n), rest)) => {
                    last = (s.to_string(), n);
                    (last.clone(), rest.to_string())
                }
                None => (last.clone(), l.to_string()),
            })
            .collect()
    };
    let (a, b) = (keyed(stdout), keyed(stderr));
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        let take_a = j >= b.len() || (i < a.len() && a[i].0 <= b[j].0);
        let line = if take_a {
            i += 1;
            &a[i - 1].1
        } else {
            j += 1;
            &b[j - 1].1
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `docker inspect`'s `FinishedAt`, checked to be a timestamp before it goes back on a
/// command line; None for Docker's zero time (a container that never stopped: every
/// line it logged is this start's).
pub(crate) fn parse_finished_at(text: &str) -> Result<Option<String>, String> {
    let t = text.trim();
    let ok = !t.is_empty()
        && t.len() <= 40
        && t.bytes()
            .all(|b| b.is_ascii_digit() || b"-:.TZ+".contains(&b));
    if !ok {
        return Err(format!(
            "docker inspect gave {t:?} for FinishedAt, not a time"
        ));
    }
    Ok((!t.starts_with("0001-")).then(|| t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_read_embedded_and_external_alike() {
        let read = |label: &str, out: &str| {
            let o = observations()
                .into_iter()
                .find(|o| o.label.starts_with(label))
                .unwrap();
            (o.read)(out)
        };
        let frontend = "x INFO circle.db.config POSTGRES_HOST=postgres POSTGRES_PORT=5432\n\
            x INFO circle.db.config POSTGRES_HOST=db.internal POSTGRES_PORT=5432\n\
            x INFO org.mongodb.driver.connection Opened connection [connectionId{localValue:2}] to Mongo-2:27017\n\
            x INFO org.mongodb.driver.connection Opened connection [connectionId{localValue:1}] to mongo-1:27017\n\
            x INFO Configuring exchange picard-build-signals on host rabbitmq\n";
        assert_eq!(read("postgresql", frontend), "db.internal");
        assert_eq!(read("mongodb", frontend), "mongo-1:27017, mongo-2:27017");
        assert_eq!(read("rabbitmq: the hosts frontend", frontend), "rabbitmq");
        assert_eq!(read("postgresql", ""), NOTHING);
        assert_eq!(
            read("vault", "Successfully retrieved current auth token;"),
            "yes"
        );
        assert_eq!(
            read(
                "redis: the host",
                "a Reconnected to redis:6379\nb Reconnected to redis:6379"
            ),
            "redis:6379"
        );
        assert_eq!(read("slanger", "redis\n6379\n"), "redis, 6379");
        let b: std::collections::BTreeMap<String, String> =
            [("postgresql: x".to_string(), "postgres".to_string())].into();
        let n: std::collections::BTreeMap<String, String> =
            [("postgresql: x".to_string(), "db.internal".to_string())].into();
        assert_eq!(
            differing(&b, &n),
            vec!["postgresql: x: before the cutover postgres, now db.internal"]
        );
        assert!(differing(&b, &b).is_empty());
        // Nothing seen before asks for nothing.
        let none: std::collections::BTreeMap<String, String> =
            [("postgresql: x".to_string(), NOTHING.to_string())].into();
        assert!(differing(&none, &n).is_empty());
        // A Redis URL's password is never kept.
        assert_eq!(
            read("redis: picard", "redis://u:s3cret@redis.internal:6379/10\n"),
            "redis://redis.internal:6379/10"
        );
        // Only the lines that configure a queue or an exchange name RabbitMQ's host.
        assert_eq!(
            read(
                "rabbitmq: the hosts frontend",
                "x INFO ran a job on host builder-7\nx INFO Configuring exchange picard-build-signals on host mq\n"
            ),
            "mq"
        );
    }

    #[test]
    fn replicated_json_is_read() {
        let s = parse_status(
            r#"[{"AppID":"a","Sequence":3,"State":"stopping","DesiredState":"stopped","Error":"","IsCancellable":true,"IsTransitioning":true,"LastModifiedAt":"t"}]"#,
        )
        .unwrap();
        assert_eq!(s.state, "stopping");
        assert!(!s.settled_in("stopped"));
        assert!(parse_status("[]").is_err());
        assert!(parse_status("Error: cannot connect to Replicated").is_err());
        assert_eq!(
            parse_version(r#"[{"ID":"a","Sequence":3,"VersionLabel":"2.17.3"}]"#).unwrap(),
            "2.17.3"
        );
    }

    #[test]
    fn version_patterns() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(version_allowed("2.17.3", &p(&["2.17.x"])));
        assert!(version_allowed("2.17.3-beta", &p(&["2.17.*"])));
        assert!(!version_allowed("2.18.0", &p(&["2.17.x"])));
        assert!(!version_allowed("2.1", &p(&["2.17.x"])));
        assert!(version_allowed("2.19.1", &p(&["2.17.x", "2.19.x"])));
        assert!(check_pattern("2.17.x").is_ok());
        assert!(check_pattern("2.17.").is_err());
        assert!(check_pattern("v2").is_err());
    }

    #[test]
    fn external_services_come_from_the_files() {
        let text = |f: &str| {
            match f {
            files::POSTGRES => Some("export POSTGRES_HOST=\"db\"\nexport POSTGRES_PORT=\"5432\"\nexport POSTGRES_USER=\"circle\"\nexport POSTGRES_PASSWORD=\"x\"\n".to_string()),
            files::REDIS => Some("export REDIS_HOST=\"r\"\nexport REDIS_PORT=6380\n".to_string()),
            _ => None,
        }
        };
        let e = External::read(text).unwrap();
        assert_eq!(e.postgres_host.as_deref(), Some("db"));
        assert_eq!(e.redis, Some(("r".into(), 6380)));
        let all = checks(&e);
        let services: Vec<&str> = all.iter().map(|c| c.service).collect();
        assert_eq!(services, vec!["postgresql", "redis", "redis", "redis"]);
        let bad = External::read(|f| (f == files::REDIS).then(|| "REDIS_PORT=1\n".into()));
        assert!(bad.unwrap_err().contains("/etc/circleconfig/shared/redis"));
    }

    #[test]
    fn postgres_check_reads_the_last_host_line_and_refuses_exceptions() {
        let e = External {
            postgres_host: Some("db".into()),
            ..Default::default()
        };
        let c = &checks(&e)[0];
        assert!(evaluate(c, "x POSTGRES_HOST=old\ny POSTGRES_HOST=db\n").is_ok());
        assert!(evaluate(c, "y POSTGRES_HOST=db\nx POSTGRES_HOST=old\n").is_err());
        let ev = evaluate(
            c,
            "POSTGRES_HOST=db\nERROR org.postgresql.util.PSQLException: FATAL: password authentication failed\n",
        )
        .unwrap_err();
        assert_eq!(ev.len(), 1);
        assert!(ev[0].contains("password authentication failed"));
    }

    #[test]
    fn mongo_check_wants_a_connection_to_a_member_under_the_sets_names() {
        let e = External {
            mongo_hosts: Some(vec!["m1".into(), "m2:27018".into()]),
            ..Default::default()
        };
        let c = &checks(&e)[0];
        let line = |h: &str| {
            format!("INFO org.mongodb.driver.connection Opened connection [connectionId{{localValue:1}}] to {h}\n")
        };
        assert!(evaluate(c, &line("m1:27017")).is_ok());
        assert!(evaluate(c, &line("m2:27018")).is_ok());
        // The set knows its members by other names: those the driver discovered count.
        let discovered = "INFO org.mongodb.driver.cluster Adding discovered server mongo-a.rs.internal:27017 to \
                          client view of cluster\n";
        assert!(evaluate(c, &line("mongo-a.rs.internal:27017")).is_err());
        assert!(evaluate(
            c,
            &(discovered.to_string() + &line("mongo-a.rs.internal:27017"))
        )
        .is_ok());
        let primary =
            "INFO org.mongodb.driver.cluster Discovered replica set primary p.internal:27017\n";
        assert!(evaluate(c, &(primary.to_string() + &line("p.internal:27017"))).is_ok());
        // The driver prints host names in lower case, IPv6 without brackets.
        let e6 = External {
            mongo_hosts: Some(vec!["Mongo-1.Internal:27017".into(), "[::1]:27018".into()]),
            ..Default::default()
        };
        let c6 = &checks(&e6)[0];
        assert!(evaluate(c6, &line("mongo-1.internal:27017")).is_ok());
        assert!(evaluate(c6, &line("::1:27018")).is_ok());
        // A connection to anything else (the embedded MongoDB) is no proof.
        assert!(evaluate(c, &line("mongo:27017")).is_err());
        assert!(evaluate(c, "").is_err());
    }

    #[test]
    fn log_probes_read_both_streams_since_the_start() {
        let p = Probe::Logs("frontend");
        assert_eq!(
            p.docker_args(Some("2026-12-03T10:00:00.5Z")),
            vec![
                "logs",
                "--timestamps",
                "--since",
                "2026-12-03T10:00:00.5Z",
                "frontend"
            ]
        );
        assert_eq!(
            p.since_args().unwrap(),
            vec!["inspect", "--format", "{{.State.FinishedAt}}", "frontend"]
        );
        // Interleaved by time, fraction digits compared as numbers.
        let out = "2026-12-03T10:00:00.5Z a\n2026-12-03T10:00:01Z c\n";
        let err = "2026-12-03T10:00:00.123456789Z first\n2026-12-03T10:00:00.6Z b\n  at x\n";
        assert_eq!(merge_streams(out, err), "first\na\nb\n  at x\nc\n");
        assert_eq!(
            parse_finished_at("2026-12-03T10:00:00.123456789Z\n").unwrap(),
            Some("2026-12-03T10:00:00.123456789Z".to_string())
        );
        assert_eq!(parse_finished_at("0001-01-01T00:00:00Z").unwrap(), None);
        assert!(parse_finished_at("Error: no such object").is_err());
    }

    /// The runbook's own check reads `docker logs … 2>&1`: an exception on stderr fails
    /// the PostgreSQL check once both streams are read.
    #[test]
    fn an_exception_on_stderr_fails_the_postgres_check() {
        let e = External {
            postgres_host: Some("db".into()),
            ..Default::default()
        };
        let c = &checks(&e)[0];
        let out = "2026-12-03T10:00:00Z INFO POSTGRES_HOST=db\n";
        let err = "2026-12-03T10:00:01Z ERROR org.postgresql.util.PSQLException: FATAL: password authentication failed\n";
        assert!(evaluate(c, &merge_streams(out, "")).is_ok());
        let ev = evaluate(c, &merge_streams(out, err)).unwrap_err();
        assert!(ev[0].contains("PSQLException"), "{ev:?}");
    }

    #[test]
    fn env_probe_is_quoted_for_bash_and_compared_line_by_line() {
        let p = Probe::Env("slanger", vec!["A", "B"]);
        assert_eq!(
            p.docker_args(None),
            vec![
                "exec",
                "slanger",
                "bash",
                "-c",
                "source /.circlerc; printf '%s\\n' \"$A\" \"$B\""
            ]
        );
        let e = External {
            redis: Some(("r".into(), 6379)),
            ..Default::default()
        };
        let slanger = checks(&e)
            .into_iter()
            .find(|c| c.probe.container() == "slanger")
            .unwrap();
        assert!(evaluate(&slanger, "r\n6379\n").is_ok());
        assert!(evaluate(&slanger, "redis\n6379\n").is_err());
    }
}
