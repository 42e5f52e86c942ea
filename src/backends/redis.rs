//! Redis: the runbook only asks that CircleCI can reach it, so we PING it.

use std::time::Duration;

/// Connects to `host:port` and sends PING; Ok when the server answers PONG.
/// The error names host:port and says what happened.
pub async fn ping(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let info = redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp(host.to_string(), port),
        redis: redis::RedisConnectionInfo::default(),
    };
    let client = redis::Client::open(info).map_err(|e| format!("Redis at {target}: {e}"))?;
    let work = async {
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("Redis at {target} is not reachable: {e}"))?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut con)
            .await
            .map_err(|e| format!("Redis at {target} did not answer PING: {e}"))?;
        if pong != "PONG" {
            return Err(format!(
                "Redis at {target} answered PING with {pong:?} instead of PONG"
            ));
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Redis at {target} did not answer PING within {}",
            humantime::format_duration(timeout)
        )),
    }
}
