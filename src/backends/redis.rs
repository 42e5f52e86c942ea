//! Redis: the runbook only asks that CircleCI can reach it, so we PING it, and read
//! its version (`INFO server`) for the compatibility table.

use std::time::Duration;

use crate::backends::tunnel::Route;

/// Why PING failed; every variant names `host:port`. The client library's error is the
/// source, not part of the message: [`crate::backends::chain`] prints both.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisError {
    #[error("Redis at {target}")]
    Client {
        target: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis at {target} is not reachable")]
    Unreachable {
        target: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis at {target} did not answer PING")]
    Ping {
        target: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis at {target} answered PING with {answer:?} instead of PONG")]
    Unexpected { target: String, answer: String },
    #[error("Redis at {target} did not answer PING within {}", humantime::format_duration(*.after))]
    Timeout { target: String, after: Duration },
    /// The way through the Services machine failed (the message names the hop).
    #[error("Redis at {target} is not reachable")]
    Tunnel {
        target: String,
        #[source]
        source: crate::backends::tunnel::DialError,
    },
}

/// Connects to `host:port` (by `route`) and sends PING; Ok when the server answers
/// PONG, with the version `INFO server` reports (empty when the server does not
/// answer `INFO`, which some managed services rename).
pub(crate) async fn ping(
    route: &Route,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<String, RedisError> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let info = redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp(host.to_string(), port),
        redis: redis::RedisConnectionInfo::default(),
    };
    let client = redis::Client::open(info).map_err(|source| RedisError::Client {
        target: target.clone(),
        source,
    })?;
    let work = async {
        let unreachable = |source| RedisError::Unreachable {
            target: target.clone(),
            source,
        };
        let mut con = if route.is_tunnel() {
            let stream =
                route
                    .dial(host, port, timeout)
                    .await
                    .map_err(|source| RedisError::Tunnel {
                        target: target.clone(),
                        source,
                    })?;
            let (con, driver) = redis::aio::MultiplexedConnection::new(
                &redis::RedisConnectionInfo::default(),
                stream,
            )
            .await
            .map_err(unreachable)?;
            tokio::spawn(driver);
            con
        } else {
            client
                .get_multiplexed_async_connection()
                .await
                .map_err(unreachable)?
        };
        let pong: String = redis::cmd("PING")
            .query_async(&mut con)
            .await
            .map_err(|source| RedisError::Ping {
                target: target.clone(),
                source,
            })?;
        if pong != "PONG" {
            return Err(RedisError::Unexpected {
                target: target.clone(),
                answer: pong,
            });
        }
        let info: Result<String, _> = redis::cmd("INFO").arg("server").query_async(&mut con).await;
        Ok(match info {
            Ok(text) => version_of_info(&text).unwrap_or_default().to_string(),
            Err(e) => {
                log::warn!(
                    "Redis at {target} did not answer INFO server ({e}); its version is not known"
                );
                String::new()
            }
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(RedisError::Timeout {
            target,
            after: timeout,
        }),
    }
}

/// `redis_version` of an `INFO server` answer.
fn version_of_info(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_is_read_from_info() {
        let info = "# Server\r\nredis_version:4.0.14\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(super::version_of_info(info), Some("4.0.14"));
        assert_eq!(super::version_of_info("# Server\r\nos:Linux\r\n"), None);
    }

    /// The client's error is the source: the message names the server and the step,
    /// and the chain prints the cause once.
    #[test]
    fn the_cause_is_the_source_and_is_printed_once() {
        let e = super::RedisError::Ping {
            target: "r.internal:6379".into(),
            source: redis::RedisError::from((redis::ErrorKind::IoError, "broken pipe")),
        };
        assert_eq!(
            e.to_string(),
            "Redis at r.internal:6379 did not answer PING"
        );
        let text = crate::backends::chain(&e);
        assert!(
            text.starts_with("Redis at r.internal:6379 did not answer PING: "),
            "{text}"
        );
        assert_eq!(text.matches("broken pipe").count(), 1, "{text}");
    }
}
