//! The CircleCI role's own login, as CircleCI's services will make it.

use std::time::Duration;

use super::{answer_or_cause, code_of, target, PgError, Tls};

/// Logs in as `user` to `db` and runs `SELECT 1`, the way CircleCI's services will.
pub async fn verify_login(
    tls: &Tls,
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    timeout: Duration,
) -> Result<(), PgError> {
    let (client, task) = tls.connect(host, port, user, password, db, timeout).await?;
    let r = match tokio::time::timeout(timeout, client.simple_query("SELECT 1")).await {
        Ok(r) => r,
        Err(_) => {
            task.abort();
            return Err(PgError::Late {
                what: format!("querying database {db:?}"),
                target: target(user, host, port),
                after: timeout,
            });
        }
    };
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    r.map(|_| ()).map_err(|e| {
        let code = code_of(&e);
        let (answer, source) = answer_or_cause(e);
        PgError::Statement {
            what: format!("querying database {db:?}"),
            target: target(user, host, port),
            answer,
            code,
            source,
        }
    })
}
