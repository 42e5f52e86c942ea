//! Plan-time checks shared by resources. Each reports on the attribute it was given.
//! Resources declare their recurring checks as a table of `(attribute, Check)` pairs and
//! keep only their cross-attribute rules in code.

use std::time::Duration;

use crate::plugin::{AttrPath, Diagnostics, Value};

/// A check on one attribute's configured value. Null and unknown values pass: the
/// value is checked again once it is known.
#[derive(Clone, Copy)]
pub(crate) enum Check {
    /// A hostname or an IP address.
    Host,
    /// A TCP port, 1-65535.
    Port,
    /// An absolute path of a file on the Services machine.
    RemotePath,
    /// As `RemotePath`, and mounted into a container with `docker run -v PATH:...`:
    /// no `:` (docker would read the rest as the mount's target and options).
    MountPath,
    /// A duration such as `30s`, within `[min, max]` seconds (0 = no bound).
    Duration { min_secs: u64, max_secs: u64 },
    /// One of a fixed set of strings.
    OneOf(&'static [&'static str]),
    /// A string that must not be empty.
    NonEmpty,
    /// A string checked by a function that returns the whole detail on failure, under
    /// the given summary.
    Text(&'static str, fn(&str) -> Result<(), String>),
    /// `password` / `password_wo` / `password_wo_version` (put it on `password_wo`).
    PasswordPair,
    /// A whole number within `[min, max]`.
    Int { min: i64, max: i64 },
    /// The attribute's whole value (a list or map whose elements may still be unknown),
    /// checked by a function that reports at the path it is given.
    Value(fn(&Value, &AttrPath, &mut Diagnostics)),
}

/// Runs every check of `table` on `config`.
pub(crate) fn run(config: &Value, table: &[(&str, Check)], diags: &mut Diagnostics) {
    for (name, check) in table {
        check_one(config, name, *check, &AttrPath::root, diags);
    }
}

/// Runs every check of `table` on the attributes of the single nested block `block`
/// (nothing when the block is absent or unknown); errors name `block.attr`.
pub(crate) fn run_in(
    config: &Value,
    block: &str,
    table: &[(&str, Check)],
    diags: &mut Diagnostics,
) {
    let b = config.get(block);
    if b.is_null() || b.is_unknown() {
        return;
    }
    let at = |name: &str| AttrPath::root(block).attr(name);
    for (name, check) in table {
        check_one(b, name, *check, &at, diags);
    }
}

/// Runs every check of `table` on each element of the list block `block`; errors name
/// `block[i].attr`.
pub(crate) fn run_in_each(
    config: &Value,
    block: &str,
    table: &[(&str, Check)],
    diags: &mut Diagnostics,
) {
    let Some(items) = config.get(block).as_list() else {
        return;
    };
    for (i, b) in items.iter().enumerate() {
        if b.is_null() || b.is_unknown() {
            continue;
        }
        let at = |name: &str| AttrPath::root(block).index(i).attr(name);
        for (name, check) in table {
            check_one(b, name, *check, &at, diags);
        }
    }
}

fn check_one(
    config: &Value,
    name: &str,
    check: Check,
    path: &dyn Fn(&str) -> AttrPath,
    diags: &mut Diagnostics,
) {
    let v = config.get(name);
    let at = path(name);
    match check {
        Check::Port => {
            port(v, at, diags);
        }
        Check::PasswordPair => password_pair_at(config, path, diags),
        Check::Value(f) => {
            if !v.is_null() && !v.is_unknown() {
                f(v, &at, diags);
            }
        }
        Check::Int { min, max } => {
            if v.is_null() || v.is_unknown() {
                return;
            }
            let n = crate::plugin::value::coerce_number(v);
            match n.and_then(|n| n.as_i64()) {
                Some(n) if (min..=max).contains(&n) => {}
                _ => {
                    let shown = match n {
                        Some(crate::plugin::value::Number::Int(i)) => i.to_string(),
                        Some(crate::plugin::value::Number::Float(f)) => f.to_string(),
                        None => format!("{v:?}"),
                    };
                    diags.attr_error(
                        at,
                        format!("Invalid {name}"),
                        format!("{shown} is not a whole number from {min} to {max}"),
                    )
                }
            }
        }
        _ => {
            let Some(s) = v.as_str() else { return };
            match check {
                Check::Host => host(s, at, diags),
                Check::RemotePath => remote_path(s, at, diags),
                Check::MountPath => {
                    if s.contains(':') {
                        diags.attr_error(
                            at,
                            "Invalid path",
                            format!("{s:?} must not contain \":\": it is mounted into a container with docker run -v"),
                        );
                    } else {
                        remote_path(s, at, diags)
                    }
                }
                Check::Duration { min_secs, max_secs } => {
                    if let Some(d) = duration(s, at.clone(), diags) {
                        bounds(d, min_secs, max_secs, at, diags);
                    }
                }
                Check::OneOf(allowed) => {
                    if !allowed.contains(&s) {
                        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                        diags.attr_error(
                            at,
                            format!("Invalid {name}"),
                            format!("{s:?} is not one of {}", list.join(", ")),
                        );
                    }
                }
                Check::NonEmpty => {
                    if s.is_empty() {
                        diags.attr_error(at, format!("Invalid {name}"), "must not be empty");
                    }
                }
                Check::Text(summary, f) => {
                    if let Err(detail) = f(s) {
                        diags.attr_error(at, summary, detail);
                    }
                }
                Check::Port | Check::PasswordPair | Check::Int { .. } | Check::Value(_) => {}
            }
        }
    }
}

fn bounds(d: Duration, min_secs: u64, max_secs: u64, at: AttrPath, diags: &mut Diagnostics) {
    let show = |s: u64| humantime::format_duration(Duration::from_secs(s)).to_string();
    if min_secs > 0 && d < Duration::from_secs(min_secs) {
        diags.attr_error(
            at,
            "Invalid duration",
            format!("must be at least {}", show(min_secs)),
        );
    } else if max_secs > 0 && d > Duration::from_secs(max_secs) {
        diags.attr_error(
            at,
            "Invalid duration",
            format!("must be at most {}", show(max_secs)),
        );
    }
}

/// Exactly one of `password` and `password_wo`, neither empty nor holding NUL or a line
/// break, and
/// `password_wo_version` only together with `password_wo`.
fn password_pair_at(config: &Value, path: &dyn Fn(&str) -> AttrPath, diags: &mut Diagnostics) {
    let p = match super::Passwords::of(config) {
        Ok(p) => p,
        Err(e) => return diags.extend(Diagnostics::from(e)),
    };
    let (pw, wo) = (&p.password, &p.password_wo);
    if !pw.is_unknown() && !wo.is_unknown() {
        match (pw.is_null(), wo.is_null()) {
            (false, false) => diags.attr_error(
                path("password_wo"),
                "Conflicting passwords",
                "set password_wo or password, not both",
            ),
            (true, true) => diags.attr_error(
                path("password_wo"),
                "Password missing",
                "set password_wo (write-only, Terraform 1.11 or later) or password (stored in state)",
            ),
            _ => {}
        }
    }
    for (name, v) in [("password", pw), ("password_wo", wo)] {
        if let Some(p) = v.value() {
            if p.expose().is_empty() || p.expose().contains(['\0', '\n', '\r']) {
                diags.attr_error(
                    path(name),
                    "Invalid password",
                    "must be non-empty and contain no NUL character or line break (the Services \
                     machine's tools read a password as one line)",
                );
            }
        }
    }
    if !p.password_wo_version.is_null() && wo.is_null() {
        diags.attr_error(
            path("password_wo_version"),
            "password_wo_version without password_wo",
            "password_wo_version only rotates a password_wo",
        );
    }
}

/// A MongoDB seed list attribute (see [`host_ports`]); an unknown list passes.
pub(crate) fn seed_list(v: &Value, at: &AttrPath, diags: &mut Diagnostics) {
    if let Some(list) = v.as_list() {
        host_ports(list, at, diags);
    }
}

/// A MongoDB seed list at `at`: at least one entry, each `host:port` (IPv6 in
/// brackets; the port may be left out for 27017).
pub(crate) fn host_ports(list: &[Value], at: &AttrPath, diags: &mut Diagnostics) {
    if list.is_empty() {
        diags.attr_error(at.clone(), "No hosts", "list at least one host:port");
    }
    for (n, h) in list.iter().enumerate() {
        let Some(h) = h.as_str() else { continue };
        let (host, port) = h.rsplit_once(':').unwrap_or((h, "27017"));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !is_host(host) || port.parse::<u16>().map_or(true, |p| p == 0) {
            diags.attr_error(
                at.clone().index(n),
                "Invalid host",
                format!("{h:?} is not host:port"),
            );
        }
    }
}

/// A hostname (RFC 1123 labels; `_` tolerated) or an IPv4/IPv6 address.
pub(crate) fn is_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    if h.is_empty() || h.len() > 253 {
        return false;
    }
    h.trim_end_matches('.').split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

pub(crate) fn host(h: &str, path: AttrPath, diags: &mut Diagnostics) {
    if !is_host(h) {
        diags.attr_error(
            path,
            "Invalid host",
            format!("{h:?} is neither a hostname nor an IP address"),
        );
    }
}

/// A TCP port, 1-65535. Unknown or null values pass (None).
pub(crate) fn port(v: &Value, path: AttrPath, diags: &mut Diagnostics) -> Option<u16> {
    if v.is_null() || v.is_unknown() {
        return None;
    }
    match crate::plugin::value::coerce_number(v)
        .and_then(|n| n.as_i64())
        .and_then(|p| u16::try_from(p).ok())
    {
        Some(p) if p >= 1 => Some(p),
        _ => {
            diags.attr_error(
                path,
                "Invalid port",
                format!("{v:?} is not a port number (1-65535)"),
            );
            None
        }
    }
}

/// A duration such as `30s`, `5m` or `1h30m`, at most `max`: every wait has a bound,
/// and no deadline computed from it can overflow.
pub(crate) fn duration_at_most(
    s: &str,
    max: Duration,
    path: AttrPath,
    diags: &mut Diagnostics,
) -> Option<Duration> {
    let d = duration(s, path.clone(), diags)?;
    let before = diags.0.len();
    bounds(d, 0, max.as_secs(), path, diags);
    (diags.0.len() == before).then_some(d)
}

/// A duration such as `30s`, `5m` or `1h30m`.
pub(crate) fn duration(s: &str, path: AttrPath, diags: &mut Diagnostics) -> Option<Duration> {
    match humantime::parse_duration(s) {
        Ok(d) if d > Duration::ZERO => Some(d),
        Ok(_) => {
            diags.attr_error(path, "Invalid duration", "must be longer than zero");
            None
        }
        Err(e) => {
            diags.attr_error(
                path,
                "Invalid duration",
                format!("{s:?}: {e} (examples: 30s, 5m, 1h30m)"),
            );
            None
        }
    }
}

/// An absolute path on the Services machine, without NUL or newline, not a directory.
pub(crate) fn remote_path(p: &str, path: AttrPath, diags: &mut Diagnostics) {
    let why = if !p.starts_with('/') {
        Some("must be an absolute path (start with /)")
    } else if p.ends_with('/') {
        Some("must name a file, not a directory")
    } else if p.contains('\0') || p.contains('\n') {
        Some("must not contain NUL or newline characters")
    } else if p.split('/').any(|c| c == "..") {
        Some("must not contain .. components")
    } else {
        None
    };
    if let Some(why) = why {
        diags.attr_error(path, "Invalid path", format!("{p:?} {why}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "redis.internal",
            "10.0.1.5",
            "::1",
            "a-b.c_d.example.",
            "localhost",
        ] {
            assert!(is_host(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "-a.b",
            "a..b",
            "redis.internal:6379",
            "\"q\"",
            "$(x)",
        ] {
            assert!(!is_host(bad), "{bad}");
        }
    }

    #[test]
    fn ports_and_paths() {
        let mut d = Diagnostics::new();
        assert_eq!(
            port(&Value::int(6379), AttrPath::root("port"), &mut d),
            Some(6379)
        );
        assert_eq!(port(&Value::int(0), AttrPath::root("port"), &mut d), None);
        assert_eq!(
            port(&Value::int(65536), AttrPath::root("port"), &mut d),
            None
        );
        assert_eq!(d.0.len(), 2);
        let mut d = Diagnostics::new();
        remote_path(
            "/etc/circleconfig/shared/redis",
            AttrPath::root("config_path"),
            &mut d,
        );
        assert!(d.is_empty());
        for bad in ["etc/x", "/etc/", "/a/../b", "/a\nb"] {
            remote_path(bad, AttrPath::root("config_path"), &mut d);
        }
        assert_eq!(d.0.len(), 4);
    }

    #[test]
    fn table_checks_name_their_attribute() {
        let table = [
            ("host", Check::Host),
            ("port", Check::Port),
            ("mode", Check::OneOf(&["a", "b"])),
            ("user", Check::NonEmpty),
            (
                "every",
                Check::Duration {
                    min_secs: 10,
                    max_secs: 3600,
                },
            ),
            (
                "name",
                Check::Text("Invalid name", |s| {
                    if s.contains('/') {
                        Err(format!("{s:?} has a slash"))
                    } else {
                        Ok(())
                    }
                }),
            ),
        ];
        let good = Value::object(&[
            ("host", Value::string("db.internal")),
            ("port", Value::int(5432)),
            ("mode", Value::string("b")),
            ("user", Value::string("circle")),
            ("every", Value::string("5m")),
            ("name", Value::string("x")),
        ]);
        let mut d = Diagnostics::new();
        run(&good, &table, &mut d);
        assert!(d.is_empty(), "{d:?}");
        let bad = Value::object(&[
            ("host", Value::string("a b")),
            ("port", Value::int(0)),
            ("mode", Value::string("c")),
            ("user", Value::string("")),
            ("every", Value::string("2h")),
            ("name", Value::string("x/y")),
        ]);
        run(&bad, &table, &mut d);
        let at: Vec<String> = d.0.iter().map(|x| format!("{:?}", x.path)).collect();
        assert_eq!(d.0.len(), 6, "{at:?}");
        for (n, (name, _)) in table.iter().enumerate() {
            assert!(at[n].contains(name), "{n}: {at:?}");
        }
        assert!(d.0[2].detail.contains(r#""c" is not one of "a", "b""#));
        assert!(d.0[4].detail.contains("at most 1h"));
        // Unknown and null values pass.
        let mut d = Diagnostics::new();
        run(&Value::object(&[("host", Value::Unknown)]), &table, &mut d);
        assert!(d.is_empty());
    }
}
