//! The embedded MongoDB of the Services-machine simulator, driven the way the data
//! migration will drive it: over the provider's SSH commands, a temporary `mongo:3.6.6`
//! container on /data/circle/mongo (dev/fixtures/embedded_fixture.sh filled it through the
//! MongoDB stand-in), the stand-ins of `mongo`, `mongodump` and `mongorestore` in it,
//! the restore into the shared stand-in as a user whose password goes on stdin.

use crate::common;

use std::time::Duration;

use common::sim::{Sim, SIMULATOR};
use serde_json::json;
use terraform_provider_circleci::testing::ssh::{Program, RemoteCommand};

use terraform_provider_circleci::testing::migration::{self as mig, MONGO_STATS_SCRIPT as STATS};

fn docker(args: &[&str]) -> RemoteCommand {
    RemoteCommand::new(Program::Docker, args.iter().copied()).unwrap()
}

#[test]
fn dump_restore_and_compare_the_embedded_mongodb() {
    let _turn = SIMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let s = common::servers();
    let root = s.embedded_root("400");
    let _sim = Sim::new(&s, json!({"root": root.path(), "transition": 1}));
    let n = std::process::id();
    let name = "circle-mongo-export";
    let _rm = common::sim::Removed(
        std::path::Path::new(s.get("CIRCLECI_TEST_SIM")).join("docker"),
        name,
    );
    let export = format!("/var/lib/circleci-mongo-export-{n}");
    let user = format!("restore-{n}");
    let password = format!("p@ss '{n}' \"$x");
    let admin = format!(
        "mongodb://{}:{}@127.0.0.1:{}/?authSource=admin",
        s.get("CIRCLECI_TEST_MONGO_USER"),
        s.get("CIRCLECI_TEST_MONGO_PASSWORD"),
        s.get("CIRCLECI_TEST_MONGO36_PORT")
    );
    let target_db = format!("circle_ghe_{n}");
    s.pymongo(
        &admin,
        "admin",
        json!({"createUser": user, "pwd": password, "roles": [{"role": "readWrite", "db": target_db}]}),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = s.services_host();
        let t = Duration::from_secs(60);
        let run = |args: Vec<String>, stdin: Option<Vec<u8>>| {
            let h = &h;
            async move {
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = h.run(&docker(&argv), stdin.as_deref(), t).await.unwrap();
                assert!(out.success(), "docker {argv:?}: {}", out.evidence());
                out.stdout_text()
            }
        };
        let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        run(
            v(&[
                "run",
                "--name",
                name,
                "-d",
                "-v",
                "/data/circle/mongo:/data/db",
                "-v",
                &format!("{export}:/export"),
                "mongo:3.6.6",
            ]),
            None,
        )
        .await;
        let stats = |db: &str| {
            v(&[
                "exec", name, "mongo", "--quiet", "--norc", db, "--eval", STATS,
            ])
        };
        let source = run(stats("circle_ghe"), None).await;
        let lines: Vec<&str> = source.lines().collect();
        assert_eq!(lines.len(), 4, "{source}");
        assert_eq!(lines[0], "capped\taction_logs\t8\t", "{source}");
        assert!(lines[1].starts_with("collection\tbuilds\t40\t"), "{source}");
        assert_eq!(lines[2], "view\trecent_builds\t40\tbuilds", "{source}");
        assert!(lines[3].starts_with("collection\tusers\t12\t"), "{source}");

        run(
            v(&[
                "exec",
                name,
                "mongodump",
                "--db",
                "circle_ghe",
                "--out",
                "/export/mongo",
            ]),
            None,
        )
        .await;
        let dumped = root
            .path()
            .join(export.trim_start_matches('/'))
            .join("mongo/circle_ghe/builds.bson");
        assert!(dumped.exists(), "{dumped:?}");

        let port = s.get("CIRCLECI_TEST_MONGO36_PORT").to_string();
        let restore = v(&[
            "exec",
            "-i",
            name,
            "mongorestore",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--username",
            &user,
            "--authenticationDatabase",
            "admin",
            "--db",
            &target_db,
            "/export/mongo/circle_ghe",
        ]);
        let line = format!("{password}\n").into_bytes();
        run(restore.clone(), Some(line.clone())).await;

        // The same documents on both sides: counts and dbHash per collection.
        // As the migration will compare them: the source through the container's shell,
        // the target through the provider's own client.
        let target = terraform_provider_circleci::testing::mongo::MongoAdmin::new(
            terraform_provider_circleci::testing::Secret::new(admin.clone()),
            None,
            t,
        )
        .collection_stats(&target_db)
        .await
        .unwrap();
        let source_stats = mig::parse_stats(
            &source
                .lines()
                .map(|l| l.split('\t').map(str::to_string).collect())
                .collect::<Vec<Vec<String>>>(),
        )
        .unwrap();
        assert_eq!(
            mig::compare(&target_db, &source_stats, &target),
            Vec::<String>::new()
        );
        assert_eq!(source_stats.len(), target.len());
        let hash = s.pymongo(&admin, &target_db, json!({"dbHash": 1})).unwrap();
        for l in &lines {
            let f: Vec<&str> = l.split('\t').collect();
            let [kind, c, count, md5] = f[..] else {
                panic!("{l}")
            };
            if kind == "collection" {
                assert_eq!(hash["collections"][c], md5, "{c}: {hash}");
            }
            let got = s.pymongo(&admin, &target_db, json!({"count": c})).unwrap();
            assert_eq!(got["n"].to_string(), count, "{c}");
        }
        let idx = s
            .pymongo(&admin, &target_db, json!({"listIndexes": "builds"}))
            .unwrap();
        assert!(idx.to_string().contains("build_num_1"), "{idx}");
        // Restoring again without --drop collides with the documents already there.
        let argv: Vec<&str> = restore.iter().map(String::as_str).collect();
        let again = h.run(&docker(&argv), Some(&line), t).await.unwrap();
        assert!(
            !again.success(),
            "a second restore without --drop succeeded"
        );
        assert!(!again.evidence().contains(&password), "the password leaked");
        // Another script for the shell is refused, not run.
        let argv = [
            "exec",
            name,
            "mongo",
            "--quiet",
            "--norc",
            "circle_ghe",
            "--eval",
            "db.dropDatabase()",
        ];
        let other = h.run(&docker(&argv), None, t).await.unwrap();
        assert_eq!(other.status, Some(64), "{}", other.evidence());
        run(v(&["rm", "-f", name]), None).await;

        // What undoes a failed restore: the collections it wrote dropped, others kept.
        let a = terraform_provider_circleci::testing::mongo::MongoAdmin::new(
            terraform_provider_circleci::testing::Secret::new(admin.clone()),
            None,
            t,
        );
        s.pymongo(
            &admin,
            &target_db,
            json!({"insert": "operator_notes", "documents": [{"n": 1}]}),
        )
        .unwrap();
        a.drop_collections(
            &target_db,
            &[
                "action_logs".into(),
                "builds".into(),
                "recent_builds".into(),
                "users".into(),
                "gone".into(),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            a.collection_names(&target_db).await.unwrap(),
            vec!["operator_notes".to_string()]
        );
    });
    s.pymongo(&admin, &target_db, json!({"dropDatabase": 1}))
        .unwrap();
    s.pymongo(&admin, "admin", json!({"dropUser": user}))
        .unwrap();
}
