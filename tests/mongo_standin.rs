//! The MongoDB stand-in (dev/mongo-standin) against the official driver, unmodified.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

mod common;

use mongodb::bson::{doc, Document};
use mongodb::Client;

fn uri(s: &common::Servers, user: &str, pw: &str, extra: &str) -> String {
    let enc = |x: &str| {
        x.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!(
        "mongodb://{}:{}@127.0.0.1:{}/?authSource=admin{extra}",
        enc(user),
        enc(pw),
        s.get("CIRCLECI_TEST_MONGO_PORT")
    )
}

async fn run(c: &Client, db: &str, cmd: Document) -> Result<Document, mongodb::error::Error> {
    c.database(db).run_command(cmd).await
}

fn code(e: &mongodb::error::Error) -> i32 {
    match *e.kind {
        mongodb::error::ErrorKind::Command(ref c) => c.code,
        _ => -1,
    }
}

#[tokio::test]
async fn driver_authenticates_and_manages_users() {
    let s = common::servers();
    let admin = Client::with_uri_str(uri(
        &s,
        s.get("CIRCLECI_TEST_MONGO_USER"),
        s.get("CIRCLECI_TEST_MONGO_PASSWORD"),
        "&serverSelectionTimeoutMS=5000",
    ))
    .await
    .unwrap();
    run(&admin, "admin", doc! {"ping": 1}).await.unwrap();
    let st = run(&admin, "admin", doc! {"connectionStatus": 1})
        .await
        .unwrap();
    assert_eq!(
        st.get_document("authInfo")
            .unwrap()
            .get_array("authenticatedUsers")
            .unwrap()
            .len(),
        1
    );

    let _ = run(&admin, "admin", doc! {"dropUser": "it-standin"}).await;
    let pw = "p@ss:/?#% \"$`";
    run(&admin, "admin", doc! {"createUser": "it-standin", "pwd": pw, "roles": [{"role": "readWrite", "db": "circle_ghe"}]})
        .await
        .unwrap();
    let dup = run(
        &admin,
        "admin",
        doc! {"createUser": "it-standin", "pwd": "x", "roles": []},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&dup), 51003);
    run(
        &admin,
        "admin",
        doc! {"grantRolesToUser": "it-standin", "roles": [{"role": "readWrite", "db": "vms"}]},
    )
    .await
    .unwrap();
    run(
        &admin,
        "admin",
        doc! {"revokeRolesFromUser": "it-standin", "roles": [{"role": "readWrite", "db": "vms"}]},
    )
    .await
    .unwrap();
    let info = run(
        &admin,
        "admin",
        doc! {"usersInfo": {"user": "it-standin", "db": "admin"}},
    )
    .await
    .unwrap();
    let users = info.get_array("users").unwrap();
    assert_eq!(users.len(), 1);
    let roles = users[0].as_document().unwrap().get_array("roles").unwrap();
    assert_eq!(roles.len(), 1);

    // The new user logs in with a hostile password through a percent-encoded URI.
    let user = Client::with_uri_str(uri(&s, "it-standin", pw, "&serverSelectionTimeoutMS=5000"))
        .await
        .unwrap();
    run(&user, "admin", doc! {"ping": 1}).await.unwrap();
    let me = run(&user, "admin", doc! {"usersInfo": "it-standin"})
        .await
        .unwrap();
    assert_eq!(me.get_array("users").unwrap().len(), 1);
    // It may not manage users, and unknown commands are refused, never "ok".
    let e = run(
        &user,
        "admin",
        doc! {"createUser": "x", "pwd": "y", "roles": []},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), 13);
    let e = run(&user, "admin", doc! {"find": "things"})
        .await
        .unwrap_err();
    assert_eq!(code(&e), 59);

    // A wrong password is refused.
    let bad = Client::with_uri_str(uri(
        &s,
        "it-standin",
        "wrong",
        "&serverSelectionTimeoutMS=3000",
    ))
    .await
    .unwrap();
    let e = run(&bad, "admin", doc! {"ping": 1}).await.unwrap_err();
    assert!(
        e.to_string().contains("Authentication failed") || e.to_string().contains("auth"),
        "{e}"
    );

    let e = run(&admin, "admin", doc! {"dropUser": "nobody"})
        .await
        .unwrap_err();
    assert_eq!(code(&e), 11);
    run(&admin, "admin", doc! {"dropUser": "it-standin"})
        .await
        .unwrap();
}

#[tokio::test]
async fn without_authentication_everything_but_the_handshake_is_refused() {
    let s = common::servers();
    let anon = Client::with_uri_str(format!(
        "mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=5000",
        s.get("CIRCLECI_TEST_MONGO_PORT")
    ))
    .await
    .unwrap();
    let e = run(&anon, "admin", doc! {"listDatabases": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&e), 13);
    let e = run(&anon, "admin", doc! {"usersInfo": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&e), 13);
}
