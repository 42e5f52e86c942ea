//! Release packaging (dev/release/package.py) proven with the real terraform CLI: the
//! debug binary this test run built is packaged as a release would be, then installed by
//! `terraform init` from a network mirror served over HTTPS on 127.0.0.1 and from a
//! filesystem mirror, with fresh CLI configurations and working directories.
//!
//! Nothing here may reach the internet: the CLI configurations exclude our provider from
//! direct installation, CHECKPOINT_DISABLE is set, and every proxy variable points to a
//! closed port on 127.0.0.1 (Go sends loopback requests, the mirror's, without a proxy,
//! so anything else Terraform tried to fetch would fail).
//!
//! What Terraform records: `terraform init` and `terraform providers lock` write to the
//! lock file the `h1:` hash of the package they installed (which must equal the one
//! package.py published), and add `zh:` hashes only from a registry's signed SHA256SUMS.
//! A mirror's hashes are checked ("verified checksum") but not signed, so the lock file
//! gets no `zh:` from a mirror: the tests assert exactly that.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::common::{flat, repo_root};

const BIN: &str = env!("CARGO_BIN_EXE_terraform-provider-circleci");
const ADDRESS: &str = "registry.terraform.io/circleci/circleci";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The outputs of one run of package.py and the hashes it published.
struct Packaged {
    out: PathBuf,
    zip_name: String,
    h1: String,
    zh: String,
}

impl Packaged {
    fn net_mirror(&self) -> PathBuf {
        self.out.join("net-mirror")
    }
    fn fs_mirror(&self) -> PathBuf {
        self.out.join("fs-mirror")
    }
    fn net_dir(&self) -> PathBuf {
        self.net_mirror().join(ADDRESS)
    }
}

/// Runs package.py on `binary` into target/tmp/release_mirror/NAME.
fn package(binary: &Path, name: &str) -> Packaged {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("release_mirror")
        .join(name);
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new("python3")
        .arg(repo_root().join("dev/release/package.py"))
        .arg("--binary")
        .arg(binary)
        .arg("--out")
        .arg(&out)
        .env_remove("GPG_KEY")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "package.py: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let zip_name = format!("terraform-provider-circleci_{VERSION}_linux_amd64.zip");
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            out.join("net-mirror")
                .join(ADDRESS)
                .join(format!("{VERSION}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let archive = &doc["archives"]["linux_amd64"];
    assert_eq!(archive["url"], zip_name.as_str(), "{doc}");
    let hashes: Vec<String> = archive["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    assert_eq!(hashes.len(), 2, "{doc}");
    assert!(
        hashes[0].starts_with("h1:") && hashes[1].starts_with("zh:"),
        "{doc}"
    );
    Packaged {
        out,
        zip_name,
        h1: hashes[0].clone(),
        zh: hashes[1].clone(),
    }
}

/// The debug provider, packaged once for all tests here.
fn ours() -> &'static Packaged {
    static P: OnceLock<Packaged> = OnceLock::new();
    P.get_or_init(|| package(Path::new(BIN), "ours"))
}

/// A package of other bytes (a two-line script), to stand for a tampered one.
fn other() -> &'static Packaged {
    static P: OnceLock<Packaged> = OnceLock::new();
    P.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("release_mirror");
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("not-the-provider");
        std::fs::write(&bin, "#!/bin/sh\nexit 1\n").unwrap();
        package(&bin, "other")
    })
}

fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A static HTTPS server on 127.0.0.1 for a network-mirror tree, with a throwaway CA.
struct Mirror {
    port: u16,
    ca_file: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Mirror {
    fn serve(root: PathBuf, scratch: &Path) -> Mirror {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "release_mirror test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca_file = scratch.join("mirror-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();

        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        let cfg = Arc::new(cfg);

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(vec![]));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = tcp else { continue };
                let (cfg, root, requests) = (cfg.clone(), root.clone(), requests2.clone());
                std::thread::spawn(move || answer(tcp, cfg, &root, &requests));
            }
        });
        Mirror {
            port,
            ca_file,
            stop,
            thread: Some(thread),
            requests,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }

    fn requested(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One HTTP/1.1 GET over TLS: the file under `root`, or 404. Errors end the connection.
fn answer(
    tcp: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    root: &Path,
    requests: &Mutex<Vec<String>>,
) {
    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
        return;
    };
    let mut reader = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(n) if n > 0 && header != "\r\n" => continue,
            _ => break,
        }
    }
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("/").to_string();
    requests.lock().unwrap().push(format!("{method} {path}"));
    let rel = path.trim_start_matches('/');
    let file = (!rel.split('/').any(|s| s == ".." || s.is_empty()))
        .then(|| root.join(rel))
        .filter(|f| f.is_file());
    let mut tls = reader.into_inner();
    let (status, body) = match file.and_then(|f| std::fs::read(f).ok()) {
        Some(b) => ("200 OK", b),
        None => ("404 Not Found", b"not found\n".to_vec()),
    };
    let kind = if path.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tls.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = tls.write_all(&body);
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

const MAIN_TF: &str = r#"terraform {
  required_providers {
    circleci = {
      source  = "circleci/circleci"
      version = "0.1.0"
    }
  }
}
"#;

/// How long one terraform command may take here (an init against loopback takes a
/// second or two; a hung one fails the test instead of the suite).
const TERRAFORM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs `cmd` with its output in files under `dir`; kills it (by its PID) and fails
/// when it outlasts `deadline`.
fn within(mut cmd: Command, deadline: std::time::Duration, dir: &Path) -> Output {
    let (out_file, err_file) = (dir.join("terraform.stdout"), dir.join("terraform.stderr"));
    cmd.stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap());
    let mut child = cmd.spawn().expect("terraform must be on PATH");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "terraform (pid {}) did not finish within {deadline:?}:\n{}",
                child.id(),
                std::fs::read_to_string(&err_file).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_file).unwrap(),
        stderr: std::fs::read(&err_file).unwrap(),
    }
}

/// A fresh working directory, HOME and CLI configuration (no plugin cache).
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        // Beside the packages (target/tmp): the tests hard-link zips from there, which
        // a /tmp on another file system (tmpfs) would refuse.
        let dir = tempfile::Builder::new()
            .prefix("tf-release-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("config/main.tf"), MAIN_TF).unwrap();
        Work { dir }
    }

    /// The CLI configuration's `provider_installation` (written once the mirror, which
    /// lives in this directory, knows its address).
    fn install_from(&self, provider_installation: &str) {
        std::fs::write(self.dir.path().join("cli.tfrc"), provider_installation).unwrap();
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn terraform(&self, ca_file: Option<&Path>, args: &[&str]) -> Output {
        let proxy = "http://127.0.0.1:9";
        let mut cmd = Command::new("terraform");
        cmd.args(args)
            .current_dir(self.config())
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join("cli.tfrc"))
            .env("HOME", self.dir.path().join("home"))
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env(
                "SSL_CERT_FILE",
                ca_file.unwrap_or(Path::new("/nonexistent")),
            )
            .env_remove("SSL_CERT_DIR")
            .env("HTTPS_PROXY", proxy)
            .env("HTTP_PROXY", proxy)
            .env("https_proxy", proxy)
            .env("http_proxy", proxy)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env_remove("TF_PLUGIN_CACHE_DIR")
            .env_remove("TF_DATA_DIR")
            .env_remove("TF_LOG");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TF_CLI_ARGS") {
                cmd.env_remove(k);
            }
        }
        let out = within(cmd, TERRAFORM_DEADLINE, self.dir.path());
        eprintln!(
            "$ terraform {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn lock_hashes(&self) -> Vec<String> {
        lock_hashes(&self.config().join(".terraform.lock.hcl"))
    }
}

fn text(out: &Output) -> String {
    flat(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The hashes the lock file holds for our provider, in its order.
fn lock_hashes(lock: &Path) -> Vec<String> {
    let lock = std::fs::read_to_string(lock).unwrap();
    let start = lock
        .find(&format!("provider \"{ADDRESS}\""))
        .unwrap_or_else(|| panic!("no {ADDRESS} in the lock file:\n{lock}"));
    let block = &lock[start..];
    let block = &block[..block.find("\n}").unwrap()];
    let hashes = &block[block.find("hashes = [").unwrap()..];
    let hashes = &hashes[..hashes.find(']').unwrap()];
    hashes
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn network_mirror_config(url: &str) -> String {
    format!(
        "provider_installation {{\n  network_mirror {{\n    url     = \"{url}\"\n    include = [\"{ADDRESS}\"]\n  }}\n  direct {{\n    exclude = [\"{ADDRESS}\"]\n  }}\n}}\n"
    )
}

fn filesystem_mirror_config(path: &Path) -> String {
    format!(
        "provider_installation {{\n  filesystem_mirror {{\n    path    = {path:?}\n    include = [\"{ADDRESS}\"]\n  }}\n  direct {{\n    exclude = [\"{ADDRESS}\"]\n  }}\n}}\n"
    )
}

const INIT: &[&str] = &["init", "-no-color", "-input=false"];

#[test]
fn package_writes_the_zip_sums_manifest_and_both_mirror_layouts() {
    let p = ours();
    let zip = std::fs::read(p.out.join(&p.zip_name)).unwrap();
    assert_eq!(p.zh, format!("zh:{}", sha256_hex(&zip)));
    // SHA256SUMS covers the zip and the manifest, in the sha256sum format.
    let sums = std::fs::read_to_string(
        p.out
            .join(format!("terraform-provider-circleci_{VERSION}_SHA256SUMS")),
    )
    .unwrap();
    let manifest_name = format!("terraform-provider-circleci_{VERSION}_manifest.json");
    let manifest = std::fs::read(p.out.join(&manifest_name)).unwrap();
    assert_eq!(
        sums,
        format!(
            "{}  {}\n{}  {manifest_name}\n",
            sha256_hex(&zip),
            p.zip_name,
            sha256_hex(&manifest)
        )
    );
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest,
        serde_json::json!({"version": 1, "metadata": {"protocol_versions": ["6.0"]}})
    );
    assert!(!p
        .out
        .join(format!(
            "terraform-provider-circleci_{VERSION}_SHA256SUMS.sig"
        ))
        .exists());
    // The same zip in both mirrors, and the network mirror's version index.
    assert_eq!(
        std::fs::read(p.fs_mirror().join(ADDRESS).join(&p.zip_name)).unwrap(),
        zip
    );
    assert_eq!(std::fs::read(p.net_dir().join(&p.zip_name)).unwrap(), zip);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.net_dir().join("index.json")).unwrap()).unwrap();
    assert_eq!(index, serde_json::json!({"versions": {VERSION: {}}}));
    // Fixed metadata: the 1980 timestamp and an executable regular file, whatever the
    // clock or the umask (a regression here would still give equal zips a second apart).
    let meta = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; i = zipfile.ZipFile(sys.argv[1]).infolist(); \
             print(len(i), i[0].date_time, oct(i[0].external_attr >> 16))",
        ])
        .arg(p.out.join(&p.zip_name))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&meta.stdout).trim(),
        "1 (1980, 1, 1, 0, 0, 0) 0o100755",
        "{}",
        String::from_utf8_lossy(&meta.stderr)
    );
    // Packaging the same binary again gives the same bytes (so the same zh:).
    let small = other();
    let again = package(&small.out.join("../not-the-provider"), "other-again");
    assert_eq!(again.zh, small.zh);
    assert_eq!(again.h1, small.h1);
}

#[test]
fn network_mirror_install_locks_the_published_h1() {
    let p = ours();
    let work = Work::new();
    let mirror = Mirror::serve(p.net_mirror(), work.dir.path());
    work.install_from(&network_mirror_config(&mirror.url()));

    let out = work.terraform(Some(&mirror.ca_file), INIT);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "Installed circleci/circleci v{VERSION} (verified checksum)"
        )),
        "{said}"
    );
    // Terraform's own h1: of what it installed is the one we published; no zh: (see the
    // module comment: a mirror's hashes are not signed).
    assert_eq!(work.lock_hashes(), vec![p.h1.clone()]);
    // The whole exchange, all of it with our server: the version list, the version's
    // document, then the zip (1.11's go-getter asks for its headers first; others may
    // not, so a HEAD is allowed, not required).
    let base = format!("/{ADDRESS}");
    let asked = mirror.requested();
    let mut gets: Vec<&String> = asked.iter().filter(|r| !r.starts_with("HEAD ")).collect();
    gets.dedup();
    assert_eq!(
        gets,
        [
            &format!("GET {base}/index.json"),
            &format!("GET {base}/{VERSION}.json"),
            &format!("GET {base}/{}", p.zip_name),
        ],
        "{asked:?}"
    );
    assert!(
        asked
            .iter()
            .filter(|r| r.starts_with("HEAD "))
            .all(|r| *r == format!("HEAD {base}/{}", p.zip_name)),
        "{asked:?}"
    );
    // The installed provider runs: validate starts it and reads its schema.
    let out = work.terraform(Some(&mirror.ca_file), &["validate", "-no-color"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn providers_lock_from_the_network_mirror_agrees_with_the_published_hashes() {
    let p = ours();
    let work = Work::new();
    let mirror = Mirror::serve(p.net_mirror(), work.dir.path());
    work.install_from(&network_mirror_config(&mirror.url()));
    let url = format!("-net-mirror={}", mirror.url());
    let out = work.terraform(
        Some(&mirror.ca_file),
        &[
            "providers",
            "lock",
            "-no-color",
            &url,
            "-platform=linux_amd64",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(work.lock_hashes(), vec![p.h1.clone()]);
}

#[test]
fn network_mirror_whose_hashes_disagree_with_the_zip_is_refused() {
    let p = ours();
    let work = Work::new();
    // Our zip, served with the hashes of another package.
    let tree = work.dir.path().join("tampered");
    let dir = tree.join(ADDRESS);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(p.net_dir().join("index.json"), dir.join("index.json")).unwrap();
    std::fs::hard_link(p.net_dir().join(&p.zip_name), dir.join(&p.zip_name)).unwrap();
    let wrong = other();
    assert_ne!(wrong.h1, p.h1);
    let doc = serde_json::json!({"archives": {"linux_amd64": {
        "url": p.zip_name, "hashes": [wrong.h1, wrong.zh]}}});
    std::fs::write(dir.join(format!("{VERSION}.json")), doc.to_string()).unwrap();
    let mirror = Mirror::serve(tree, work.dir.path());
    work.install_from(&network_mirror_config(&mirror.url()));

    let out = work.terraform(Some(&mirror.ca_file), INIT);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    // With two hashes listed (h1: and zh:), Terraform names neither; its message says
    // "the any" as quoted.
    assert!(
        said.contains(&format!(
            "Error while installing circleci/circleci v{VERSION}: provider package doesn't match the any of the expected checksums"
        )),
        "{said}"
    );
    assert!(!work.config().join(".terraform.lock.hcl").exists());
}

#[test]
fn filesystem_mirror_zip_replaced_after_the_lock_was_written_is_refused() {
    let p = ours();
    let work = Work::new();
    let mirror_dir = work.dir.path().join("fs-mirror");
    let zip = mirror_dir.join(ADDRESS).join(&p.zip_name);
    std::fs::create_dir_all(zip.parent().unwrap()).unwrap();
    std::fs::hard_link(p.fs_mirror().join(ADDRESS).join(&p.zip_name), &zip).unwrap();
    work.install_from(&filesystem_mirror_config(&mirror_dir));

    let out = work.terraform(None, INIT);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    // A filesystem mirror carries no hashes: Terraform trusts the first package it sees
    // and locks its h1:, which is the one we published.
    assert!(
        said.contains(&format!(
            "Installed circleci/circleci v{VERSION} (unauthenticated)"
        )),
        "{said}"
    );
    assert_eq!(work.lock_hashes(), vec![p.h1.clone()]);

    // Another package under the same name, and no installed copy to fall back on.
    std::fs::remove_file(&zip).unwrap();
    std::fs::copy(other().out.join(&other().zip_name), &zip).unwrap();
    std::fs::remove_dir_all(work.config().join(".terraform")).unwrap();
    let out = work.terraform(None, INIT);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "the current package for {ADDRESS} {VERSION} doesn't match any of the checksums previously recorded in the dependency lock file"
        )),
        "{said}"
    );
    assert_eq!(
        work.lock_hashes(),
        vec![p.h1.clone()],
        "the lock file is kept"
    );
}

/// A scratch git repository holding release.sh, a Cargo.toml and a CHANGELOG.md.
fn release_repo(version: &str, changelog: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let r = repo.path();
    std::fs::create_dir_all(r.join("dev/release")).unwrap();
    std::fs::copy(
        repo_root().join("dev/release/release.sh"),
        r.join("dev/release/release.sh"),
    )
    .unwrap();
    std::fs::write(
        r.join("Cargo.toml"),
        format!("[package]\nname = \"x\"\nversion = \"{version}\"\n"),
    )
    .unwrap();
    std::fs::write(r.join("CHANGELOG.md"), changelog).unwrap();
    git(r, &["init", "-q"]);
    git(r, &["add", "-A"]);
    git(r, &["commit", "-qm", "scratch"]);
    repo
}

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@localhost",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "git {args:?}");
}

/// `release.sh` with RELEASE_CHECK_ONLY=1: (exit code, stderr).
fn release_check(repo: &Path, snapshot: bool) -> (i32, String) {
    let mut c = Command::new("bash");
    c.arg(repo.join("dev/release/release.sh"))
        .env("RELEASE_CHECK_ONLY", "1")
        .env_remove("SNAPSHOT");
    if snapshot {
        c.env("SNAPSHOT", "1");
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn release_refuses_a_dirty_tree_and_a_version_without_a_dated_changelog_entry() {
    // No entry for the version (9.9.10's does not count for 9.9.1).
    let r = release_repo("9.9.1", "# Changelog\n\n## 9.9.10 (2026-01-01)\n\n- x\n");
    let (code, err) = release_check(r.path(), false);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("CHANGELOG.md has no entry for 9.9.1"), "{err}");

    // An entry that is not dated is not a release, nor is a directory outside git.
    let r = release_repo("9.9.1", "# Changelog\n\n## 9.9.1 (WIP)\n\n- x\n");
    let (code, err) = release_check(r.path(), true);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is \"## 9.9.1 (WIP)\"; date it"), "{err}");
    std::fs::remove_dir_all(r.path().join(".git")).unwrap();
    let (code, err) = release_check(r.path(), false);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused: not a git work tree"), "{err}");

    // "(unreleased)": refused, except for a snapshot.
    let r = release_repo("9.9.1", "# Changelog\n\n## 9.9.1 (unreleased)\n\n- x\n");
    let (code, err) = release_check(r.path(), false);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused: CHANGELOG.md's entry for 9.9.1 is \"## 9.9.1 (unreleased)\""),
        "{err}"
    );
    let (code, err) = release_check(r.path(), true);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("checks passed for 9.9.1"), "{err}");

    // A dated entry on a clean tree passes; a change or an untracked file is refused.
    let r = release_repo("9.9.1", "# Changelog\n\n## 9.9.1 (2026-01-01)\n\n- x\n");
    let (code, err) = release_check(r.path(), false);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("checks passed for 9.9.1"), "{err}");
    std::fs::write(r.path().join("new-file"), "x").unwrap();
    let (code, err) = release_check(r.path(), false);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused: the work tree is dirty"), "{err}");
    assert!(err.contains("?? new-file"), "{err}");
    std::fs::remove_file(r.path().join("new-file")).unwrap();
    std::fs::write(
        r.path().join("CHANGELOG.md"),
        "# Changelog\n\n## 9.9.1 (2026-01-01)\n",
    )
    .unwrap();
    let (code, err) = release_check(r.path(), false);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("M CHANGELOG.md"), "{err}");
}
