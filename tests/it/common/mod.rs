//! Shared by the integration and end-to-end tests: the endpoints of the real servers
//! that dev/services/up.sh started, and a harness that drives the real terraform CLI.
//!
//! A test whose server is missing fails with a message saying how to start it; it never
//! skips.

#![allow(dead_code)]

pub(crate) mod cutover;
pub(crate) mod sim;
pub(crate) mod sshd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The endpoints in dev/.state/env.
pub(crate) struct Servers {
    vars: HashMap<String, String>,
}

impl Servers {
    pub(crate) fn get(&self, k: &str) -> &str {
        self.vars
            .get(k)
            .unwrap_or_else(|| panic!("{k} is missing from dev/.state/env; run `make services-up`"))
    }

    pub(crate) fn ssh_port(&self) -> u16 {
        self.get("CIRCLECI_TEST_SSH_PORT").parse().unwrap()
    }

    pub(crate) fn redis_port(&self) -> u16 {
        self.get("CIRCLECI_TEST_REDIS_PORT").parse().unwrap()
    }

    pub(crate) fn pg_port(&self) -> u16 {
        self.get("CIRCLECI_TEST_PG_PORT").parse().unwrap()
    }

    /// The provider's postgres block: admin over TLS, verify-full against the dev CA.
    pub(crate) fn pg_block(&self) -> String {
        format!(
            r#"
  postgres {{
    host        = "127.0.0.1"
    port        = {}
    username    = "postgres"
    password    = {:?}
    sslmode     = "verify-full"
    sslrootcert = {:?}
  }}"#,
            self.pg_port(),
            self.get("CIRCLECI_TEST_PG_PASSWORD"),
            self.get("CIRCLECI_TEST_PG_CA")
        )
    }

    /// Runs SQL as the admin with psql; returns the unaligned, tuples-only output.
    pub(crate) fn psql(&self, db: &str, sql: &str) -> String {
        self.psql_at(self.pg_port(), db, sql)
    }

    /// psql against the cluster on `port`.
    pub(crate) fn psql_at(&self, port: u16, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .env("PGPASSWORD", self.get("CIRCLECI_TEST_PG_PASSWORD"))
            .output()
            .expect("psql (postgresql-client) must be installed");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// True when `user` can log in to `db` with `password`.
    pub(crate) fn can_login(&self, user: &str, password: &str, db: &str) -> bool {
        self.can_login_at(self.pg_port(), user, password, db)
    }

    /// can_login against the cluster on `port`.
    pub(crate) fn can_login_at(&self, port: u16, user: &str, password: &str, db: &str) -> bool {
        Command::new("psql")
            .args(["-X", "-tA", "-h", "127.0.0.1", "-c", "select 1"])
            .arg("-p")
            .arg(port.to_string())
            .arg("-U")
            .arg(user)
            .arg("-d")
            .arg(db)
            .env("PGPASSWORD", password)
            .output()
            .unwrap()
            .status
            .success()
    }

    /// One MongoDB command through PyMongo (dev/fixtures/mongo_client.py): Ok(reply), or
    /// Err((exit code, output)) — 3 when the server said no, 4 when no login.
    pub(crate) fn pymongo(
        &self,
        uri: &str,
        db: &str,
        cmd: serde_json::Value,
    ) -> Result<serde_json::Value, (i32, String)> {
        let out = Command::new(self.get("CIRCLECI_TEST_PYTHON"))
            .arg(self.get("CIRCLECI_TEST_MONGO_CLIENT"))
            .args([uri, db, &cmd.to_string()])
            .output()
            .expect("the venv's python runs dev/fixtures/mongo_client.py");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match out.status.code() {
            Some(0) => Ok(serde_json::from_str(&text).unwrap()),
            c => Err((
                c.unwrap_or(-1),
                format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
            )),
        }
    }

    /// The provider's mongodb block for the MongoDB stand-in.
    pub(crate) fn mongo_block(&self) -> String {
        format!(
            "\n  mongodb {{\n    uri = {:?}\n  }}",
            self.mongo_admin_uri()
        )
    }

    pub(crate) fn mongo_admin_uri(&self) -> String {
        format!(
            "mongodb://{}:{}@127.0.0.1:{}/?authSource=admin",
            self.get("CIRCLECI_TEST_MONGO_USER"),
            self.get("CIRCLECI_TEST_MONGO_PASSWORD"),
            self.get("CIRCLECI_TEST_MONGO_PORT")
        )
    }

    /// The provider block for these servers; `extra` goes inside services_host.
    pub(crate) fn provider_block(&self, extra: &str) -> String {
        self.provider_block_with(
            extra,
            &format!(
                "{}{}{}",
                self.pg_block(),
                self.vault_block(),
                self.mongo_block()
            ),
        )
    }

    /// As provider_block, with `pg` in place of the postgres block.
    pub(crate) fn provider_block_with(&self, extra: &str, pg: &str) -> String {
        self.provider_block_on(self.ssh_port(), extra, pg)
    }

    /// The provider with the Services machine's sshd on `port`, `extra` in its
    /// services_host block (default: the dev known_hosts file) and `blocks` after it.
    pub(crate) fn provider_block_on(&self, port: u16, extra: &str, blocks: &str) -> String {
        let extra = if extra.is_empty() {
            format!(
                "known_hosts_file = {:?}",
                self.get("CIRCLECI_TEST_SSH_KNOWN_HOSTS")
            )
        } else {
            extra.to_string()
        };
        format!(
            r#"
terraform {{
  required_providers {{
    circleci = {{ source = "circleci/circleci" }}
  }}
}}

provider "circleci" {{
  services_host {{
    host             = "127.0.0.1"
    port             = {port}
    user             = "root"
    private_key_file = {key:?}
    timeout          = "10s"
    {extra}
  }}
{blocks}
}}
"#,
            key = self.get("CIRCLECI_TEST_SSH_KEY_FILE"),
        )
    }
}

/// `content` between the provider's markers for resource type `id`: how every file
/// the provider writes holds its settings.
pub(crate) fn block(id: &str, content: &str) -> String {
    format!(
        "# BEGIN terraform-provider-circleci {id} (managed by Terraform; edit outside this block)\n\
         {content}# END terraform-provider-circleci {id}\n"
    )
}

/// The fixture's `circle_migrations` as the migration's checksum reads it when
/// timestamps are hashed by value, written out by hand (`timestamp_hash` of the UTC
/// microseconds, in any session's time zone): `count<SEP>checksum`.
pub(crate) fn circle_migrations_by_value(sep: &str) -> String {
    format!(
        "SELECT count(*) || '{sep}' || sum(hashint8(\
         coalesce(timestamp_hash(applied_at AT TIME ZONE 'UTC'), 1)::int8 * 3 + \
         coalesce(timestamp_hash(checked_at), 2)::int8 * 5 + \
         coalesce(hashtext(id), 3)::int8 * 7)) FROM circle_migrations"
    )
}

pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads dev/.state/env and checks the servers answer; panics with instructions if not.
pub(crate) fn servers() -> Servers {
    let path = repo_root().join("dev/.state/env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} not found: the real servers are not running. Run `make services-up` (or `make test`, which starts them)",
            path.display()
        )
    });
    let mut vars = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.contains('=') {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap();
        vars.insert(k.to_string(), v.trim_matches('"').to_string());
    }
    let s = Servers { vars };
    for (name, port) in [
        ("sshd", s.ssh_port()),
        ("redis", s.redis_port()),
        ("postgresql", s.pg_port()),
    ] {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            panic!("{name} is not listening on 127.0.0.1:{port}; run `make services-up`");
        }
    }
    s
}

/// One Terraform working directory using the provider binary built for this test run
/// through dev_overrides (no registry, no init).
pub(crate) struct Tf {
    pub dir: tempfile::TempDir,
    cli_config: PathBuf,
}

impl Tf {
    pub(crate) fn new(main_tf: &str) -> Tf {
        let dir = tempfile::Builder::new()
            .prefix("tf-e2e-")
            .tempdir()
            .unwrap();
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_terraform-provider-circleci"));
        let cli_config = dir.path().join("cli.tfrc");
        std::fs::write(
            &cli_config,
            format!(
                "provider_installation {{\n  dev_overrides {{\n    \"registry.terraform.io/circleci/circleci\" = {:?}\n  }}\n  direct {{}}\n}}\n",
                bin.parent().unwrap()
            ),
        )
        .unwrap();
        let tf = Tf { dir, cli_config };
        tf.write_main(main_tf);
        tf
    }

    pub(crate) fn write_main(&self, main_tf: &str) {
        std::fs::write(self.dir.path().join("main.tf"), main_tf).unwrap();
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("terraform");
        c.args(args)
            .current_dir(self.dir.path())
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env_remove("TF_LOG")
            .env_remove("TF_LOG_PROVIDER")
            // AWS as moto wants it, and nothing from the machine's own AWS set-up.
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            )
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let out = self
            .cmd(args)
            .output()
            .expect("terraform is not installed (it must be on PATH)");
        eprintln!(
            "$ terraform {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs and asserts success.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "terraform {} failed", args.join(" "));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn apply(&self) -> String {
        self.ok(&["apply", "-auto-approve", "-no-color", "-input=false"])
    }

    /// Exit code of `plan -detailed-exitcode`: 0 no changes, 2 changes, 1 error.
    pub(crate) fn plan_code(&self) -> i32 {
        self.run(&["plan", "-detailed-exitcode", "-no-color", "-input=false"])
            .status
            .code()
            .unwrap_or(-1)
    }

    /// Runs a command expected to fail; returns its combined output.
    pub(crate) fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "terraform {} succeeded but should have failed",
            args.join(" ")
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The state as JSON (`terraform show -json`).
    pub(crate) fn state_json(&self) -> serde_json::Value {
        let s = self.ok(&["show", "-json", "-no-color"]);
        serde_json::from_str(&s).unwrap()
    }
}

/// A temporary directory others may search (0755): the simulator's root, where the
/// postgres user and the SSH user must reach files.
pub(crate) fn searchable_tempdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    d
}

/// Runs a bash snippet and returns stdout.
pub(crate) fn bash(script: &str) -> Vec<u8> {
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "bash failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `s` with every run of whitespace one space: terraform folds long lines of output.
pub(crate) fn flat(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs `terraform apply` in `tf` in its own process group with the provider's fault
/// points in `dir` (arm them first), so that a test can interrupt it as Ctrl-C does.
pub(crate) fn spawn_apply_with_faults(tf: &Tf, dir: &Path) -> std::process::Child {
    spawn_apply_with_faults_env(tf, dir, &[])
}

/// [`spawn_apply_with_faults`] with more environment for Terraform and the provider
/// (its debug log, say).
pub(crate) fn spawn_apply_with_faults_env(
    tf: &Tf,
    dir: &Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut c = tf.cmd(&["apply", "-auto-approve", "-no-color", "-input=false"]);
    c.envs(env.iter().copied());
    c.env("CIRCLECI_PROVIDER_FAULT_DIR", dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    c.spawn().unwrap()
}

/// Waits (at most `secs`) until an apply holds at fault point `point` in `dir`.
pub(crate) fn wait_reached(dir: &Path, point: &str, secs: u64) {
    let reached = dir.join(format!("{point}.reached"));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !reached.exists() {
        assert!(
            std::time::Instant::now() < until,
            "the apply never reached {point}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Ctrl-C to the apply's process group, then `point` released: whether the apply
/// succeeded, and its output, flattened.
pub(crate) fn interrupt(child: std::process::Child, dir: &Path, point: &str) -> (bool, String) {
    let _ = Command::new("kill")
        .args(["-INT", "--", &format!("-{}", child.id())])
        .status();
    std::fs::write(dir.join(format!("{point}.go")), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = flat(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ));
    (out.status.success(), text)
}

/// A port on 127.0.0.1 where nothing listens.
pub(crate) fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub(crate) fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `s` as an HCL string literal: quotes, backslashes and template sequences escaped.
pub(crate) fn hcl_str(s: &str) -> String {
    let mut out = String::from("\"");
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Servers {
    /// The provider's vault block for the dev OpenBao (TLS, dev CA).
    pub(crate) fn vault_block(&self) -> String {
        format!(
            "\n  vault {{\n    address      = {:?}\n    token        = {:?}\n    ca_cert_file = {:?}\n  }}",
            self.get("CIRCLECI_TEST_VAULT_ADDR"),
            self.get("CIRCLECI_TEST_VAULT_TOKEN"),
            self.get("CIRCLECI_TEST_VAULT_CA")
        )
    }

    /// Runs the real `bao` CLI against the dev server with `token`.
    pub(crate) fn bao(&self, token: &str, args: &[&str]) -> Output {
        Command::new(self.get("CIRCLECI_TEST_BAO"))
            .args(args)
            .env("BAO_ADDR", self.get("CIRCLECI_TEST_VAULT_ADDR"))
            .env("BAO_CACERT", self.get("CIRCLECI_TEST_VAULT_CA"))
            .env("BAO_TOKEN", token)
            .env_remove("VAULT_ADDR")
            .output()
            .expect("the bao CLI from dev/services/up.sh")
    }

    /// `bao` as root; panics on failure; returns stdout.
    pub(crate) fn bao_ok(&self, args: &[&str]) -> String {
        let out = self.bao(self.get("CIRCLECI_TEST_VAULT_TOKEN"), args);
        assert!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Servers {
    /// dev/fixtures/aws_fixture.py against moto (boto3: shares no code with the provider);
    /// its JSON answer. Panics when it fails.
    pub(crate) fn aws_fixture(&self, args: &[&str]) -> serde_json::Value {
        self.aws_fixture_at(self.get("CIRCLECI_TEST_AWS_ENDPOINT"), args)
    }

    /// The same against the moto at `endpoint` (a test's own).
    pub(crate) fn aws_fixture_at(&self, endpoint: &str, args: &[&str]) -> serde_json::Value {
        let out = Command::new(self.get("CIRCLECI_TEST_AWS_PYTHON"))
            .arg(self.get("CIRCLECI_TEST_AWS_FIXTURE"))
            .args(args)
            .env("CIRCLECI_TEST_AWS_ENDPOINT", endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .output()
            .expect("dev/fixtures/aws_fixture.py (run `make services-up`)");
        assert!(
            out.status.success(),
            "aws-fixture {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub(crate) fn mq_port(&self) -> u16 {
        self.get("CIRCLECI_TEST_MQ_PORT").parse().unwrap()
    }
}

/// A private Nomad stand-in (dev/standins/nomad_standin.py) for one test, stopped by PID on drop.
pub(crate) struct NomadStandin {
    child: std::process::Child,
    pub port: u16,
}

impl NomadStandin {
    /// `args` as for the script, e.g. `["--no-leader"]`; TLS with the dev certificate.
    pub(crate) fn start(s: &Servers, args: &[&str]) -> NomadStandin {
        Self::start_on(s, closed_port(), args)
    }

    /// The same on a given port (one a stopped stand-in used, say).
    pub(crate) fn start_on(s: &Servers, port: u16, args: &[&str]) -> NomadStandin {
        let child = Command::new("python3")
            .arg(s.get("CIRCLECI_TEST_NOMAD_STANDIN"))
            .arg("--port")
            .arg(port.to_string())
            .args([
                "--tls-cert",
                s.get("CIRCLECI_TEST_TLS_CERT"),
                "--tls-key",
                s.get("CIRCLECI_TEST_TLS_KEY"),
            ])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 must be installed");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        NomadStandin { child, port }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for NomadStandin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) use terraform_provider_circleci::testing::mongo::DEFAULT_DATABASES as MONGO_RUNBOOK_DATABASES;
/// The runbook's nine database names (the provider's own list).
pub(crate) use terraform_provider_circleci::testing::postgres::DEFAULT_DATABASES as RUNBOOK_DATABASES;

impl Servers {
    /// The targets of a data migration as a fresh external service has them: none of
    /// the runbook's databases in the test PostgreSQL (an earlier run, or one that
    /// failed, may have left them holding data), no context-service key in the dev
    /// OpenBao's transit mount.
    pub(crate) fn fresh_runbook_targets(&self) {
        for db in RUNBOOK_DATABASES {
            self.psql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            );
        }
        let token = self.get("CIRCLECI_TEST_VAULT_TOKEN");
        let _ = self.bao(
            token,
            &[
                "write",
                "transit/keys/context-service/config",
                "deletion_allowed=true",
            ],
        );
        let _ = self.bao(token, &["delete", "transit/keys/context-service"]);
        for db in MONGO_RUNBOOK_DATABASES {
            self.pymongo(
                &self.mongo_admin_uri(),
                db,
                serde_json::json!({"dropDatabase": 1}),
            )
            .unwrap();
        }
    }

    /// A simulator root holding the embedded PostgreSQL (dev/fixtures/embedded_fixture.sh) with
    /// `rows` rows in each big table and context secrets encrypted by the embedded
    /// OpenBao's context-service key, and the embedded MongoDB's documents.
    pub(crate) fn embedded_root(&self, rows: &str) -> tempfile::TempDir {
        let root = searchable_tempdir();
        let out = Command::new(repo_root().join("dev/fixtures/embedded_fixture.sh"))
            .arg(root.path())
            .arg(rows)
            .env(
                "EMBEDDED_VAULT_ADDR",
                self.get("CIRCLECI_TEST_EMBEDDED_VAULT_ADDR"),
            )
            .env(
                "EMBEDDED_VAULT_TOKEN",
                self.get("CIRCLECI_TEST_EMBEDDED_VAULT_TOKEN"),
            )
            .env("BAO", self.get("CIRCLECI_TEST_BAO"))
            .env("MONGO_STANDIN", self.get("CIRCLECI_TEST_MONGO_STANDIN"))
            .env("PYTHON", self.get("CIRCLECI_TEST_PYTHON"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        root
    }

    /// The fixture's context secrets, read from the external `contexts_service_production`
    /// and decrypted through the dev OpenBao's `mount`: (name, plaintext) each.
    pub(crate) fn decrypted_context_secrets(&self, mount: &str) -> Vec<(String, String)> {
        use base64::Engine;
        let rows = self.psql(
            "contexts_service_production",
            "SELECT name || ' ' || ciphertext FROM env_vars ORDER BY name",
        );
        rows.lines()
            .map(|l| {
                let (name, ct) = l.split_once(' ').unwrap();
                let b64 = self.bao_ok(&[
                    "write",
                    "-field=plaintext",
                    &format!("{mount}/decrypt/context-service"),
                    &format!("ciphertext={ct}"),
                ]);
                let plain = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .unwrap();
                (name.to_string(), String::from_utf8(plain).unwrap())
            })
            .collect()
    }
}

impl Servers {
    /// The test sshd as the provider's Services machine: root, sudo, the pinned host key.
    pub(crate) fn services_host(&self) -> terraform_provider_circleci::testing::ssh::ServicesHost {
        use terraform_provider_circleci::testing::ssh::{
            parse_host_key, HostKeyPolicy, ServicesHost, SshAuth, SshConfig,
        };
        ServicesHost::new(SshConfig {
            host: "127.0.0.1".into(),
            port: self.ssh_port(),
            user: "root".into(),
            auth: SshAuth::KeyFile(self.get("CIRCLECI_TEST_SSH_KEY_FILE").into()),
            host_key: HostKeyPolicy::Pinned(vec![parse_host_key(
                self.get("CIRCLECI_TEST_SSH_HOST_KEY"),
            )
            .unwrap()]),
            sudo: true,
            timeout: std::time::Duration::from_secs(10),
        })
    }
}
