//! The server versions CircleCI Server 2.17 runs (the runbook's list), and the check
//! each external server's version passes before a file points CircleCI at it.
//!
//! The rule is the one PostgreSQL and MongoDB already follow: a server older than the
//! release line CircleCI runs is refused; the same line or newer is accepted (the
//! newer lines this project tests against are in the compatibility table). A version
//! that does not parse is accepted and shown as it is: the check must not stop an
//! install over a vendor's spelling.

/// One external server of the runbook's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Supported {
    /// The server's name, for messages: "Redis".
    pub server: &'static str,
    /// The version CircleCI Server 2.17 runs, as the runbook names it.
    pub runs: &'static str,
    /// The oldest release line accepted, (major, minor).
    pub oldest: (u64, u64),
}

pub(crate) const REDIS: Supported = Supported {
    server: "Redis",
    runs: "4.0.14",
    oldest: (4, 0),
};

pub(crate) const RABBITMQ: Supported = Supported {
    server: "RabbitMQ",
    runs: "3.6",
    oldest: (3, 6),
};

pub(crate) const VAULT: Supported = Supported {
    server: "Vault",
    runs: "1.1.2",
    oldest: (1, 1),
};

pub(crate) const NOMAD: Supported = Supported {
    server: "Nomad",
    runs: "0.5.6",
    oldest: (0, 5),
};

/// The (major, minor) of a version string: "7.0.15", "v1.1.2", "3.6.16", "0.8.7-rc1",
/// "1.4.2+ent", "2.1". `None` when it does not start with two numbers.
pub(crate) fn major_minor(version: &str) -> Option<(u64, u64)> {
    let v = version.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let mut parts = v.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

impl Supported {
    /// Ok when `found` may be used: its line is `oldest` or later, or it does not
    /// parse. The error says which server, where, and what CircleCI runs.
    pub(crate) fn check(&self, found: &str, at: &str) -> Result<(), String> {
        match major_minor(found) {
            Some(line) if line < self.oldest => Err(format!(
                "{} at {at} runs {found}, older than {}.{}, the oldest this provider accepts: \
                 CircleCI Server 2.17 runs {} {} (see the compatibility table)",
                self.server, self.oldest.0, self.oldest.1, self.server, self.runs
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_to_their_line() {
        assert_eq!(major_minor("7.0.15"), Some((7, 0)));
        assert_eq!(major_minor("v1.1.2"), Some((1, 1)));
        assert_eq!(major_minor("0.8.7-rc1"), Some((0, 8)));
        assert_eq!(major_minor("1.4.2+ent"), Some((1, 4)));
        assert_eq!(major_minor("3.10"), Some((3, 10)));
        assert_eq!(major_minor("4.0-beta"), Some((4, 0)));
        assert_eq!(major_minor(" 2.1.0\n"), Some((2, 1)));
        assert_eq!(major_minor("7"), None);
        assert_eq!(major_minor("unknown"), None);
        assert_eq!(major_minor(""), None);
    }

    #[test]
    fn older_lines_are_refused_and_newer_accepted() {
        assert!(REDIS.check("4.0.14", "r:6379").is_ok());
        assert!(REDIS.check("7.0.15", "r:6379").is_ok());
        let e = REDIS.check("3.2.12", "r:6379").unwrap_err();
        assert!(
            e.contains("Redis at r:6379 runs 3.2.12, older than 4.0"),
            "{e}"
        );
        assert!(e.contains("CircleCI Server 2.17 runs Redis 4.0.14"), "{e}");
        assert!(RABBITMQ.check("3.5.7", "mq").is_err());
        // 3.10 is newer than 3.6, not older: compared as numbers, not text.
        assert!(RABBITMQ.check("3.10.8", "mq").is_ok());
        assert!(VAULT.check("1.0.3", "v").is_err());
        assert!(VAULT.check("2.1.0", "v").is_ok());
        assert!(NOMAD.check("0.4.1", "n").is_err());
        assert!(NOMAD.check("0.5.6", "n").is_ok());
        assert!(NOMAD.check("1.6.2", "n").is_ok());
        // Not a version: shown, not refused.
        assert!(REDIS.check("valkey-8", "r").is_ok());
    }
}
