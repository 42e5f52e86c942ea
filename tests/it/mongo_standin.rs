//! The MongoDB stand-in (dev/standins/mongo_standin), in both modes, against PyMongo 4.8 —
//! MongoDB's own Python driver, the last release that still supports MongoDB 3.6 —
//! unmodified. What PyMongo accepts, negotiates and refuses shows the stand-in speaks
//! MongoDB's protocol, and that its 3.6 mode looks like 3.6 to a real driver.

use crate::common;

use serde_json::{json, Value};

fn enc(x: &str) -> String {
    x.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn uri(port: &str, user: &str, pw: &str, extra: &str) -> String {
    format!(
        "mongodb://{}:{}@127.0.0.1:{port}/?authSource=admin{extra}",
        enc(user),
        enc(pw)
    )
}

/// Ok(reply), or Err((exit code, output)): 3 = the server said no, 4 = no login.
fn run(s: &common::Servers, uri: &str, cmd: Value) -> Result<Value, (i32, String)> {
    s.pymongo(uri, "admin", cmd)
}

fn code(e: &(i32, String)) -> i64 {
    let v: Value = serde_json::from_str(e.1.lines().next().unwrap_or("{}")).unwrap_or_default();
    v["code"].as_i64().unwrap_or(-1)
}

fn manages_users(port_var: &str, user: &str) {
    let s = common::servers();
    let port = s.get(port_var).to_string();
    let admin = uri(
        &port,
        s.get("CIRCLECI_TEST_MONGO_USER"),
        s.get("CIRCLECI_TEST_MONGO_PASSWORD"),
        "",
    );
    let st = run(&s, &admin, json!({"connectionStatus": 1})).unwrap();
    assert_eq!(st["authInfo"]["authenticatedUsers"][0]["user"], "admin");

    let _ = run(&s, &admin, json!({"dropUser": user}));
    let pw = "p@ss:/?#% \"$`";
    run(&s, &admin, json!({"createUser": user, "pwd": pw, "roles": [{"role": "readWrite", "db": "circle_ghe"}]}))
        .unwrap();
    let dup = run(
        &s,
        &admin,
        json!({"createUser": user, "pwd": "x", "roles": []}),
    )
    .unwrap_err();
    assert_eq!(code(&dup), 51003, "{dup:?}");
    run(
        &s,
        &admin,
        json!({"grantRolesToUser": user, "roles": [{"role": "readWrite", "db": "vms"}]}),
    )
    .unwrap();
    run(
        &s,
        &admin,
        json!({"revokeRolesFromUser": user, "roles": [{"role": "readWrite", "db": "vms"}]}),
    )
    .unwrap();
    let info = run(
        &s,
        &admin,
        json!({"usersInfo": {"user": user, "db": "admin"}}),
    )
    .unwrap();
    assert_eq!(info["users"].as_array().unwrap().len(), 1);
    assert_eq!(info["users"][0]["roles"].as_array().unwrap().len(), 1);

    // The new user logs in with a hostile password through a percent-encoded URI.
    let me = uri(&port, user, pw, "");
    let r = run(&s, &me, json!({"usersInfo": user})).unwrap();
    assert_eq!(r["users"].as_array().unwrap().len(), 1);
    // It may not manage users, and unknown commands are refused, never "ok".
    let e = run(&s, &me, json!({"createUser": "x", "pwd": "y", "roles": []})).unwrap_err();
    assert_eq!(code(&e), 13, "{e:?}");
    let e = run(
        &s,
        &me,
        json!({"aggregate": "things", "pipeline": [], "cursor": {}}),
    )
    .unwrap_err();
    assert_eq!(code(&e), 59, "{e:?}");
    // A wrong password is refused.
    let e = run(&s, &uri(&port, user, "wrong", ""), json!({"ping": 1})).unwrap_err();
    assert_eq!(e.0, 4, "{e:?}");
    assert!(e.1.contains("Authentication failed"), "{e:?}");

    let e = run(&s, &admin, json!({"dropUser": "nobody"})).unwrap_err();
    assert_eq!(code(&e), 11, "{e:?}");
    run(&s, &admin, json!({"dropUser": user})).unwrap();

    // Without authentication everything but the handshake is refused.
    let anon = format!("mongodb://127.0.0.1:{port}/");
    for cmd in [json!({"listDatabases": 1}), json!({"usersInfo": 1})] {
        let e = run(&s, &anon, cmd).unwrap_err();
        assert_eq!(code(&e), 13, "{e:?}");
    }
}

#[test]
fn pymongo_manages_users_on_current_mode() {
    manages_users("CIRCLECI_TEST_MONGO_PORT", "it-standin");
}

#[test]
fn pymongo_manages_users_on_3_6_mode() {
    manages_users("CIRCLECI_TEST_MONGO36_PORT", "it-standin36");
}

/// What tells 3.6 from later versions, as PyMongo sees it.
#[test]
fn mode_3_6_looks_like_mongodb_3_6() {
    let s = common::servers();
    let admin = |port_var: &str, extra: &str| {
        uri(
            s.get(port_var),
            s.get("CIRCLECI_TEST_MONGO_USER"),
            s.get("CIRCLECI_TEST_MONGO_PASSWORD"),
            extra,
        )
    };
    let v36 = admin("CIRCLECI_TEST_MONGO36_PORT", "");
    let cur = admin("CIRCLECI_TEST_MONGO_PORT", "");
    // Wire version 6 and no `hello` (CommandNotFound), against 17 and `hello`.
    let im = run(&s, &v36, json!({"isMaster": 1})).unwrap();
    assert_eq!(im["maxWireVersion"], 6);
    assert!(im.get("isWritablePrimary").is_none());
    let e = run(&s, &v36, json!({"hello": 1})).unwrap_err();
    assert_eq!(code(&e), 59, "{e:?}");
    assert_eq!(
        run(&s, &cur, json!({"hello": 1})).unwrap()["maxWireVersion"],
        17
    );
    assert_eq!(
        run(&s, &v36, json!({"buildInfo": 1})).unwrap()["versionArray"],
        json!([3, 6, 12, 0])
    );
    // SCRAM-SHA-1 only: PyMongo's SCRAM-SHA-256 is refused; the admin has no SHA-256.
    let e = run(
        &s,
        &admin("CIRCLECI_TEST_MONGO36_PORT", "&authMechanism=SCRAM-SHA-256"),
        json!({"ping": 1}),
    )
    .unwrap_err();
    assert!(e.1.contains("SCRAM-SHA-256"), "{e:?}");
    run(
        &s,
        &admin("CIRCLECI_TEST_MONGO36_PORT", "&authMechanism=SCRAM-SHA-1"),
        json!({"ping": 1}),
    )
    .unwrap();
    // Current mode does both.
    for m in ["SCRAM-SHA-1", "SCRAM-SHA-256"] {
        run(
            &s,
            &admin("CIRCLECI_TEST_MONGO_PORT", &format!("&authMechanism={m}")),
            json!({"ping": 1}),
        )
        .unwrap_or_else(|e| panic!("{m}: {e:?}"));
    }
    // `mechanisms` is a field 3.6 does not know: BadValue, not silently ignored.
    let e = run(
        &s,
        &v36,
        json!({"createUser": "mech36", "pwd": "x", "roles": [], "mechanisms": ["SCRAM-SHA-1"]}),
    )
    .unwrap_err();
    assert_eq!(code(&e), 2, "{e:?}");
    assert!(e.1.contains("mechanisms"), "{e:?}");
    let _ = run(&s, &cur, json!({"dropUser": "mech-cur"}));
    run(
        &s,
        &cur,
        json!({"createUser": "mech-cur", "pwd": "x", "roles": [], "mechanisms": ["SCRAM-SHA-256"]}),
    )
    .unwrap();
    let u = run(&s, &cur, json!({"usersInfo": "mech-cur"})).unwrap();
    assert_eq!(u["users"][0]["mechanisms"], json!(["SCRAM-SHA-256"]));
    run(&s, &cur, json!({"dropUser": "mech-cur"})).unwrap();
}

/// PyMongo's own API (insert_many's document sequences, cursors fetched in batches,
/// create_index) against a stand-in in 3.6 mode over a data directory, without a
/// login as CircleCI's embedded MongoDB runs: the documents, indexes and dbHash are
/// the same after the stand-in is killed and started again over that directory, and
/// the files hold the documents as real BSON.
#[test]
fn documents_persist_across_restarts() {
    let s = common::servers();
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import json, sys
import bson, pymongo
uri, phase, dbpath = sys.argv[1:]
c = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
db = c["circle_ghe"]
out = {}
if phase == "write":
    db.builds.insert_many([{"n": i, "log": "x" * (i % 50), "tags": ["a", i]} for i in range(250)])
    db.users.insert_many([{"_id": i, "name": "user-%d" % i} for i in range(7)])
    db.builds.create_index([("n", 1)], name="n_1")
    c["build_state_dev_ghe"].states.insert_one({"_id": "s1", "ok": True})
got = list(db.builds.find({}, batch_size=40))
out["found"] = len(got)
out["distinct_n"] = len({d["n"] for d in got})
out["eq"] = [d["name"] for d in db.users.find({"_id": 3})]
out["count"] = db.command("count", "builds")["n"]
out["collections"] = sorted(db.list_collection_names())
out["indexes"] = sorted(i["name"] for i in db.builds.list_indexes())
h = db.command("dbHash")
out["hash"] = h["collections"]
out["md5"] = h["md5"]
out["dbs"] = sorted(d["name"] for d in c.list_databases())
with open(dbpath + "/circle_ghe/builds.bson", "rb") as f:
    out["file_docs"] = sum(1 for _ in bson.decode_file_iter(f))
try:
    db.builds.find_one({"n": {"$gt": 3}})
    out["gt"] = "accepted"
except pymongo.errors.OperationFailure as e:
    out["gt"] = e.code
print(json.dumps(out))
"#;
    let run = |port: u16, phase: &str| -> serde_json::Value {
        let out = std::process::Command::new(s.get("CIRCLECI_TEST_PYTHON"))
            .args(["-c", script])
            .arg(format!("mongodb://127.0.0.1:{port}/"))
            .arg(phase)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let start = || {
        let port = common::closed_port();
        let child = std::process::Command::new(s.get("CIRCLECI_TEST_MONGO_STANDIN"))
            .args([
                "--port",
                &port.to_string(),
                "--mode",
                "3.6",
                "--noauth",
                "--dbpath",
            ])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        (port, Killed(child))
    };
    let (port, first) = start();
    let before = run(port, "write");
    assert_eq!(before["found"], 250, "{before}");
    assert_eq!(before["distinct_n"], 250);
    assert_eq!(before["eq"], json!(["user-3"]));
    assert_eq!(before["count"], 250);
    assert_eq!(before["collections"], json!(["builds", "users"]));
    assert_eq!(before["indexes"], json!(["_id_", "n_1"]));
    assert_eq!(before["file_docs"], 250);
    assert_eq!(
        before["gt"], 2,
        "an operator filter is refused, not ignored"
    );
    assert!(before["dbs"]
        .as_array()
        .unwrap()
        .contains(&json!("build_state_dev_ghe")));
    drop(first); // SIGKILL: every write was already on disk

    let (port, _second) = start();
    let after = run(port, "read");
    for k in [
        "found",
        "count",
        "collections",
        "indexes",
        "hash",
        "md5",
        "file_docs",
    ] {
        assert_eq!(after[k], before[k], "{k} changed across the restart");
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// On the shared stand-in (with logins): documents need a role on the database, read
/// roles cannot write, and nothing is served before a login.
#[test]
fn documents_need_a_role() {
    let s = common::servers();
    let port = s.get("CIRCLECI_TEST_MONGO_PORT").to_string();
    let admin = uri(
        &port,
        s.get("CIRCLECI_TEST_MONGO_USER"),
        s.get("CIRCLECI_TEST_MONGO_PASSWORD"),
        "",
    );
    let n = std::process::id();
    let (writer, reader) = (format!("docs-w-{n}"), format!("docs-r-{n}"));
    // A database of its own: the runbook's (circle_ghe, …) are dropped by tests that
    // migrate into them.
    let dbn = format!("docs_{n}");
    for (u, role) in [(&writer, "readWrite"), (&reader, "read")] {
        run(
            &s,
            &admin,
            json!({"createUser": u, "pwd": "pw", "roles": [{"role": role, "db": &dbn}]}),
        )
        .unwrap();
    }
    let coll = format!("c{n}");
    let w = uri(&port, &writer, "pw", "");
    let r = uri(&port, &reader, "pw", "");
    let ins = json!({"insert": coll, "documents": [{"_id": 1, "a": "b"}]});
    let db = |u: &str, cmd: Value| s.pymongo(u, &dbn, cmd);
    assert_eq!(db(&w, ins.clone()).unwrap()["n"], 1);
    assert_eq!(
        code(&db(&r, ins.clone()).unwrap_err()),
        13,
        "read cannot insert"
    );
    let found = db(&r, json!({"find": coll, "filter": {}})).unwrap();
    assert_eq!(found["cursor"]["firstBatch"][0]["a"], "b");
    assert_eq!(
        code(
            &s.pymongo(&w, "containers_dev_ghe", json!({"find": coll}))
                .unwrap_err()
        ),
        13,
        "no role on that database"
    );
    let dup = db(&w, ins).unwrap_err();
    assert_eq!(code(&dup), 11000, "{dup:?}");
    db(&w, json!({"drop": coll})).unwrap();
    let anon = s.pymongo(
        &format!("mongodb://127.0.0.1:{port}/"),
        &dbn,
        json!({"find": coll}),
    );
    assert_eq!(code(&anon.unwrap_err()), 13);
    for u in [&writer, &reader] {
        run(&s, &admin, json!({"dropUser": u})).unwrap();
    }
}
