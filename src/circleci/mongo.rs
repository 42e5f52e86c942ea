//! "Setting up External MongoDB": the five connection strings CircleCI reads from
//! /etc/circle-installation-customizations, kept in a managed block of that file.

use std::collections::BTreeMap;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::envfile::{self, Style};

pub(crate) const DEFAULT_PATH: &str = "/etc/circle-installation-customizations";
pub(crate) const DEFAULT_USER: &str = "circle";
pub(crate) const DEFAULT_AUTH_SOURCE: &str = "admin";

/// The databases CircleCI uses (runbook: the service user needs readWrite on them).
pub const DEFAULT_DATABASES: [&str; 4] = [
    "circle_ghe",
    "build_state_dev_ghe",
    "containers_dev_ghe",
    "remote_containers_dev_ghe",
];

/// The five variables and the database each points at (by index into the databases
/// list, which defaults to DEFAULT_DATABASES).
pub(crate) const VARIABLES: [(&str, usize); 5] = [
    ("CIRCLE_SECRETS_MONGODB_MAIN_URI", 0),
    ("CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI", 0),
    ("CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI", 1),
    ("CIRCLE_SECRETS_MONGODB_CONTAINERS_URI", 2),
    ("CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI", 3),
];

/// RFC 3986 userinfo: everything but the unreserved characters is percent-encoded, so
/// a password with `@ : / ? # %` survives.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What goes into every URI.
#[derive(Clone)]
pub(crate) struct UriParts<'a> {
    pub hosts: &'a [String],
    pub username: &'a str,
    pub password: &'a str,
    pub auth_source: &'a str,
    pub replica_set: Option<&'a str>,
    pub tls: bool,
    pub options: &'a BTreeMap<String, String>,
}

/// `mongodb://user:pass@h1,h2/DB?ssl=true&authSource=admin&replicaSet=rs0&k=v`, in the
/// runbook's order.
pub(crate) fn uri(p: &UriParts<'_>, database: &str) -> String {
    let mut q = vec![];
    if p.tls {
        q.push("ssl=true".to_string());
    }
    q.push(format!(
        "authSource={}",
        utf8_percent_encode(p.auth_source, USERINFO)
    ));
    if let Some(rs) = p.replica_set {
        q.push(format!("replicaSet={}", utf8_percent_encode(rs, USERINFO)));
    }
    for (k, v) in p.options {
        q.push(format!(
            "{}={}",
            utf8_percent_encode(k, USERINFO),
            utf8_percent_encode(v, USERINFO)
        ));
    }
    format!(
        "mongodb://{}:{}@{}/{}?{}",
        utf8_percent_encode(p.username, USERINFO),
        utf8_percent_encode(p.password, USERINFO),
        p.hosts.join(","),
        utf8_percent_encode(database, USERINFO),
        q.join("&")
    )
}

/// The managed block's content: the five exports.
pub(crate) fn render_block(
    p: &UriParts<'_>,
    databases: &[String],
) -> Result<String, envfile::EnvFileError> {
    if databases.len() != DEFAULT_DATABASES.len() {
        return Err(envfile::EnvFileError(format!(
            "four databases are needed (main, build state, containers, remote containers); got {}",
            databases.len()
        )));
    }
    let uris: Vec<(&str, String)> = VARIABLES
        .iter()
        .map(|(k, i)| (*k, uri(p, &databases[*i])))
        .collect();
    let pairs: Vec<(&str, &str)> = uris.iter().map(|(k, v)| (*k, v.as_str())).collect();
    envfile::render(&pairs, Style::Export)
}

/// A URI read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedUri {
    pub hosts: Vec<String>,
    pub username: String,
    pub database: String,
    pub query: BTreeMap<String, String>,
}

pub(crate) fn parse_uri(s: &str) -> Result<ParsedUri, String> {
    let rest = s.strip_prefix("mongodb://").ok_or("not a mongodb:// URI")?;
    let slash = rest.find('/').ok_or("no database in the URI")?;
    let (authority, path) = rest.split_at(slash);
    let (userinfo, hosts) = authority
        .rsplit_once('@')
        .ok_or("no credentials in the URI")?;
    let user = userinfo.split(':').next().unwrap_or_default();
    let decode = |x: &str| percent_decode_str(x).decode_utf8_lossy().into_owned();
    let (db, query) = path[1..].split_once('?').unwrap_or((&path[1..], ""));
    Ok(ParsedUri {
        hosts: hosts.split(',').map(str::to_string).collect(),
        username: decode(user),
        database: decode(db),
        query: query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (decode(k), decode(v))))
            .collect(),
    })
}

/// Reads the block's five URIs back (for import).
pub(crate) fn parse_block(block: &str) -> Result<Vec<(String, ParsedUri)>, String> {
    let a = envfile::parse(block).map_err(|e| e.to_string())?;
    VARIABLES
        .iter()
        .map(|(k, _)| {
            let v = envfile::lookup(&a, k).ok_or(format!("{k} is missing from the block"))?;
            Ok((
                k.to_string(),
                parse_uri(v).map_err(|e| format!("{k}: {e}"))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_follow_the_runbook_and_encode_credentials() {
        let hosts = vec!["m1:27017".to_string(), "m2:27017".to_string()];
        let opts = BTreeMap::from([("maxIdleTimeMS".to_string(), "600000".to_string())]);
        let p = UriParts {
            hosts: &hosts,
            username: "circle",
            password: "p@s:s/w?o#r%d",
            auth_source: "admin",
            replica_set: Some("rs0"),
            tls: true,
            options: &opts,
        };
        let u = uri(&p, "circle_ghe");
        assert_eq!(
            u,
            "mongodb://circle:p%40s%3As%2Fw%3Fo%23r%25d@m1:27017,m2:27017/circle_ghe?ssl=true&authSource=admin&replicaSet=rs0&maxIdleTimeMS=600000"
        );
        let back = parse_uri(&u).unwrap();
        assert_eq!(back.hosts, hosts);
        assert_eq!(back.username, "circle");
        assert_eq!(back.query["replicaSet"], "rs0");
        let dbs: Vec<String> = DEFAULT_DATABASES.iter().map(|s| s.to_string()).collect();
        let block = render_block(&p, &dbs).unwrap();
        let parsed = parse_block(&block).unwrap();
        assert_eq!(parsed.len(), 5);
        assert_eq!(parsed[4].1.database, "remote_containers_dev_ghe");
    }

    /// The runbook's "Service Box Setup" text, pasted with real values.
    #[test]
    fn the_runbooks_own_file_reads_back() {
        let text = "# Configure the single endpoint
MONGO_BASE_URI='mongodb://circle:pa$$w@rd@mongo.internal:27017'
# When using replica sets, add query parameter '&replicaSet=name' to each URI
export CIRCLE_SECRETS_MONGODB_MAIN_URI=\"$MONGO_BASE_URI/circle_ghe?ssl=true&authSource=admin&replicaSet=rs0\"
export CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI=\"$MONGO_BASE_URI/circle_ghe?ssl=true&authSource=admin&replicaSet=rs0\"
export CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI=\"$MONGO_BASE_URI/build_state_dev_ghe?ssl=true&authSource=admin&replicaSet=rs0\"
export CIRCLE_SECRETS_MONGODB_CONTAINERS_URI=\"$MONGO_BASE_URI/containers_dev_ghe?ssl=true&authSource=admin&replicaSet=rs0\"
export CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI=\"$MONGO_BASE_URI/remote_containers_dev_ghe?ssl=true&authSource=admin&replicaSet=rs0\"
";
        let uris = parse_block(text).unwrap();
        assert_eq!(uris[0].1.hosts, vec!["mongo.internal:27017".to_string()]);
        assert_eq!(uris[0].1.username, "circle");
        assert_eq!(uris[0].1.query["replicaSet"], "rs0");
        assert_eq!(uris[0].1.query["ssl"], "true");
        let dbs: Vec<&str> = uris.iter().map(|(_, u)| u.database.as_str()).collect();
        assert_eq!(
            dbs,
            [
                "circle_ghe",
                "circle_ghe",
                "build_state_dev_ghe",
                "containers_dev_ghe",
                "remote_containers_dev_ghe"
            ]
        );
    }

    #[test]
    fn database_names_are_encoded_and_the_list_is_checked() {
        let hosts = vec!["m1:27017".to_string()];
        let opts = BTreeMap::new();
        let p = UriParts {
            hosts: &hosts,
            username: "circle",
            password: "pw",
            auth_source: "admin",
            replica_set: None,
            tls: false,
            options: &opts,
        };
        let u = uri(&p, "odd?name#x%");
        assert!(u.contains("/odd%3Fname%23x%25?"), "{u}");
        assert_eq!(parse_uri(&u).unwrap().database, "odd?name#x%");
        let three: Vec<String> = DEFAULT_DATABASES[..3]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(render_block(&p, &three).is_err());
    }
}
