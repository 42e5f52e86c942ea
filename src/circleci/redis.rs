//! "Setting up External Redis" and "Slanger Requirements" in the runbook.

use super::envfile::{self, Style};

/// Which CircleCI component the Redis serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The shared Redis: /etc/circleconfig/shared/redis.
    Shared,
    /// Slanger's own Redis: /etc/circleconfig/slanger/customizations, slanger form.
    Slanger,
}

impl Purpose {
    pub(crate) fn parse(s: &str) -> Option<Purpose> {
        match s {
            "shared" => Some(Purpose::Shared),
            "slanger" => Some(Purpose::Slanger),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Purpose::Shared => "shared",
            Purpose::Slanger => "slanger",
        }
    }

    pub(crate) fn default_path(self) -> &'static str {
        match self {
            Purpose::Shared => "/etc/circleconfig/shared/redis",
            Purpose::Slanger => "/etc/circleconfig/slanger/customizations",
        }
    }

    fn style(self) -> Style {
        match self {
            Purpose::Shared => Style::Export,
            Purpose::Slanger => Style::Slanger,
        }
    }
}

pub(crate) const DEFAULT_PORT: u16 = 6379;

/// The file's content for a Redis at host:port.
pub(crate) fn render(
    host: &str,
    port: u16,
    purpose: Purpose,
) -> Result<String, envfile::EnvFileError> {
    let port = port.to_string();
    envfile::render(
        &[("REDIS_HOST", host), ("REDIS_PORT", &port)],
        purpose.style(),
    )
}

/// What a Redis config file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisFile {
    pub host: String,
    pub port: u16,
    pub purpose: Purpose,
}

/// Reads a Redis config file back (ours or hand-written per the runbook).
pub(crate) fn parse(text: &str) -> Result<RedisFile, String> {
    let a = envfile::parse(text).map_err(|e| e.to_string())?;
    let host = envfile::lookup(&a, "REDIS_HOST").ok_or("REDIS_HOST is not set in the file")?;
    let port = match envfile::lookup(&a, "REDIS_PORT") {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("REDIS_PORT {p:?} is not a port number"))?,
        None => DEFAULT_PORT,
    };
    let purpose = match envfile::detect_style(&a) {
        Style::Slanger => Purpose::Slanger,
        Style::Export => Purpose::Shared,
    };
    Ok(RedisFile {
        host: host.to_string(),
        port,
        purpose,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_both_purposes() {
        for p in [Purpose::Shared, Purpose::Slanger] {
            let text = render("redis.internal", 6380, p).unwrap();
            assert_eq!(
                parse(&text).unwrap(),
                RedisFile {
                    host: "redis.internal".into(),
                    port: 6380,
                    purpose: p
                }
            );
        }
    }

    #[test]
    fn reads_the_runbooks_hand_written_form() {
        let f = parse("export REDIS_HOST=redis.example\nREDIS_HOST=redis.example\nexport REDIS_PORT=6379\nREDIS_PORT=6379\n").unwrap();
        assert_eq!(f.purpose, Purpose::Slanger);
        assert_eq!(
            parse("export REDIS_HOST=\"h\"\nexport REDIS_PORT=7000\n")
                .unwrap()
                .port,
            7000
        );
        assert!(parse("export REDIS_PORT=1\n").is_err());
        assert!(parse("export REDIS_HOST=h\nexport REDIS_PORT=99999\n").is_err());
    }
}
