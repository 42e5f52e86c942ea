//! MongoDB connection strings (`mongodb://user:pass@h1:27017,h2/db?options`), the part
//! of the standard this provider needs. What it cannot honour it refuses by name; an
//! option that changes nothing for a few admin commands (pool sizes, write concern,
//! `maxIdleTimeMS`, ...) is accepted and ignored, as drivers do.

use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::secret::Secret;

/// How to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mechanism {
    ScramSha1,
    ScramSha256,
}

impl Mechanism {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }
}

/// A parsed connection string. `Debug` never shows the password.
#[derive(Debug, Clone)]
pub(crate) struct ConnString {
    /// `(host, port)` of each seed; IPv6 without brackets.
    pub hosts: Vec<(String, u16)>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `authSource`, else the path's database, else `admin`.
    pub auth_source: String,
    /// `authMechanism`; `None` means negotiate (SCRAM-SHA-256 when offered, else -1).
    pub mechanism: Option<Mechanism>,
    pub replica_set: Option<String>,
    pub tls: bool,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_insecure: bool,
    /// `tlsAllowInvalidHostnames`: the chain is checked, the name is not.
    pub tls_any_name: bool,
    pub connect_timeout: Option<Duration>,
    pub server_selection_timeout: Option<Duration>,
}

impl ConnString {
    /// The options in this connection string that turn certificate checks off, as
    /// written in it.
    pub(crate) fn weakened_checks(&self) -> Vec<&'static str> {
        let mut out = vec![];
        if self.tls_insecure {
            out.push("tlsInsecure / tlsAllowInvalidCertificates (no certificate is checked)");
        }
        if self.tls_any_name && !self.tls_insecure {
            out.push("tlsAllowInvalidHostnames (a certificate for any name is accepted)");
        }
        out
    }

    /// `h1:27017,h2:27017`, for messages (never the credentials).
    pub(crate) fn hosts_text(&self) -> String {
        self.hosts
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn decode(s: &str) -> Result<String, String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "percent-encoding that is not UTF-8".to_string())
}

fn parse_bool(k: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("option {k}: expected true or false")),
    }
}

fn parse_ms(k: &str, v: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("option {k}: expected milliseconds"))
}

fn parse_host(h: &str) -> Result<(String, u16), String> {
    if h.is_empty() {
        return Err("an empty host".into());
    }
    if h.contains('/') || h.ends_with(".sock") {
        return Err("Unix domain sockets are not supported".into());
    }
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or("an unclosed [")?;
        (ip.to_string(), after.strip_prefix(':'))
    } else {
        match h.rsplit_once(':') {
            Some((a, p)) => (a.to_string(), Some(p)),
            None => (h.to_string(), None),
        }
    };
    let port = match port {
        None => 27017,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or("the port is not a number from 1 to 65535")?,
    };
    Ok((decode(&host)?, port))
}

/// One `key=value` option of the connection string.
fn apply_option(c: &mut ConnString, k: &str, v: String) -> Result<(), String> {
    match k.to_ascii_lowercase().as_str() {
        "authsource" => c.auth_source = v,
        "authmechanism" => {
            c.mechanism = Some(match v.as_str() {
                "SCRAM-SHA-1" => Mechanism::ScramSha1,
                "SCRAM-SHA-256" => Mechanism::ScramSha256,
                _ => {
                    return Err(
                        "authMechanism: only SCRAM-SHA-1 and SCRAM-SHA-256 are supported".into(),
                    )
                }
            })
        }
        "replicaset" => c.replica_set = Some(v),
        "tls" | "ssl" => c.tls = parse_bool(k, &v)?,
        "tlscafile" => {
            c.tls = true;
            c.tls_ca_file = Some(PathBuf::from(v));
        }
        "tlsinsecure" | "tlsallowinvalidcertificates" => c.tls_insecure = parse_bool(k, &v)?,
        "tlsallowinvalidhostnames" => c.tls_any_name = parse_bool(k, &v)?,
        "connecttimeoutms" => c.connect_timeout = Some(parse_ms(k, &v)?),
        "serverselectiontimeoutms" => c.server_selection_timeout = Some(parse_ms(k, &v)?),
        "tlscertificatekeyfile" | "authmechanismproperties" | "loadbalanced" | "proxyhost" => {
            return Err(format!("option {k} is not supported"))
        }
        _ => log::debug!("MongoDB connection string option {k} ignored"),
    }
    Ok(())
}

/// Parses a `mongodb://` connection string. Errors never quote the password.
pub(crate) fn parse(s: &str) -> Result<ConnString, String> {
    if s.starts_with("mongodb+srv://") {
        return Err("mongodb+srv:// is not supported (no DNS SRV lookups); list the hosts".into());
    }
    let rest = s
        .strip_prefix("mongodb://")
        .ok_or("a connection string starts with mongodb://")?;
    // The authority ends at the first '/' or '?': both must be percent-encoded in the
    // user information. An '@' after that point means they were not (or an option
    // holds an '@'): refuse without quoting anything, as the text may hold a password.
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    if rest[end..].contains('@') {
        return Err(
            "the text after the first / or ? holds an @: percent-encode / ? # @ in the \
                    user name and password (%2F %3F %23 %40); the connection string is not \
                    quoted here as it may hold a password"
                .into(),
        );
    }
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pw) = match u.split_once(':') {
                Some((a, b)) => (a, Some(b)),
                None => (u, None),
            };
            if user.is_empty() {
                return Err("the user name before @ is empty".into());
            }
            (
                Some(decode(user)?),
                pw.map(decode).transpose()?.map(Secret::new),
            )
        }
    };
    // Host text is never quoted in an error: a password written without its @, or
    // with an unencoded @, reads as a host.
    let hosts = hosts
        .split(',')
        .enumerate()
        .map(|(i, h)| parse_host(h).map_err(|e| format!("host {} of the seed list: {e}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let tail = tail.strip_prefix('/').unwrap_or(tail);
    let (db, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut c = ConnString {
        hosts,
        username,
        password,
        auth_source: if db.is_empty() {
            "admin".into()
        } else {
            decode(db)?
        },
        mechanism: None,
        replica_set: None,
        tls: false,
        tls_ca_file: None,
        tls_insecure: false,
        tls_any_name: false,
        connect_timeout: None,
        server_selection_timeout: None,
    };
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or(
            "an option has no =VALUE (options are not quoted here: a password with an \
                    unencoded ? would read as options)",
        )?;
        apply_option(&mut c, &decode(k)?, decode(v)?)?;
    }
    if c.password.is_some() && c.username.is_none() {
        return Err("a password without a user name".into());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri() {
        let c = parse(
            "mongodb://ci%40corp:p%40ss%2Fw%3Ard@m1.internal:27018,[::1],m3/circle_ghe?replicaSet=rs0&ssl=true&authSource=admin&maxIdleTimeMS=600000",
        )
        .unwrap();
        assert_eq!(
            c.hosts,
            vec![
                ("m1.internal".to_string(), 27018),
                ("::1".to_string(), 27017),
                ("m3".to_string(), 27017)
            ]
        );
        assert_eq!(c.username.as_deref(), Some("ci@corp"));
        assert_eq!(c.password.as_ref().map(|p| p.expose()), Some("p@ss/w:rd"));
        assert_eq!(c.auth_source, "admin");
        assert_eq!(c.replica_set.as_deref(), Some("rs0"));
        assert!(c.tls);
        assert_eq!(c.hosts_text(), "m1.internal:27018,[::1]:27017,m3:27017");
        assert!(!format!("{c:?}").contains("p@ss"));
    }

    #[test]
    fn defaults_and_refusals() {
        let c = parse("mongodb://h").unwrap();
        assert_eq!(c.hosts, vec![("h".to_string(), 27017)]);
        assert_eq!(c.auth_source, "admin");
        assert!(c.username.is_none() && !c.tls);
        assert_eq!(parse("mongodb://u:p@h/app").unwrap().auth_source, "app");
        assert_eq!(
            parse("mongodb://u:p@h/?authMechanism=SCRAM-SHA-1")
                .unwrap()
                .mechanism,
            Some(Mechanism::ScramSha1)
        );
        for bad in [
            "mongodb+srv://u:p@cluster.example",
            "http://h",
            "mongodb://u:p@h:0",
            "mongodb://u:p@h:99999",
            "mongodb://u:p@h/?authMechanism=MONGODB-X509",
            "mongodb://u:p@h/?ssl=yes",
            "mongodb://:p@h",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains(":p@"), "{bad}: {e}");
        }
    }

    #[test]
    fn options_that_turn_checks_off_are_named() {
        let w = |u: &str| parse(u).unwrap().weakened_checks();
        assert!(w("mongodb://u:p@h/?tls=true").is_empty());
        assert_eq!(w("mongodb://u:p@h/?tls=true&tlsInsecure=true").len(), 1);
        assert_eq!(
            w("mongodb://u:p@h/?ssl=true&tlsAllowInvalidCertificates=true").len(),
            1
        );
        let any = w("mongodb://u:p@h/?tls=true&tlsAllowInvalidHostnames=true");
        assert!(any[0].starts_with("tlsAllowInvalidHostnames"), "{any:?}");
        assert!(
            parse("mongodb://u:p@h/?tlsAllowInvalidHostnames=true")
                .unwrap()
                .tls_any_name
        );
    }

    proptest::proptest! {
        /// Whatever characters a password holds, encoded or not, no part of it is in
        /// an error.
        #[test]
        fn no_part_of_a_password_is_in_an_error(
            pw in "[A-Za-z0-9/?#@:%&=,.\\[\\]!$ -]{6,24}",
            tail in proptest::sample::select(vec!["", "/", "/db", "/?tls=true", "/?ssl=maybe", "/?x"]),
            host in proptest::sample::select(vec!["h:27017", "h:0", "", "h:x", "[::1", "a,b:99999"]),
        ) {
            // With the @, and forgotten (the password then reads as a host).
            for uri in [
                format!("mongodb://user:{pw}@{host}{tail}"),
                format!("mongodb://user:{pw}{tail}"),
            ] {
                if let Err(e) = parse(&uri) {
                    for w in pw.as_bytes().windows(6) {
                        let w = String::from_utf8_lossy(w);
                        proptest::prop_assert!(!e.contains(&*w), "{uri:?} -> {e:?} holds {w:?}");
                    }
                }
            }
        }
    }
}
