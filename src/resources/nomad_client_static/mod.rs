//! `circleci_nomad_client_static`: the runbook's "Nomad Clients" step for static
//! installations. On every client machine (over SSH, with the Services machine's
//! credentials and rules) only the servers list of the Nomad agent's configuration file
//! is rewritten, the agent restarted with one fixed command, and, when the Nomad
//! servers' API is given, the node awaited ready again; `batch_size` clients at a time.

mod apply;
mod file;
mod roll;
mod schema;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::validate::{self, Check};
use super::{string_list, strings};
use crate::backends::ssh::{self, HostKeyPolicy, ServicesHost, SshConfig};
use crate::circleci::nomad_user_data as ud;
use crate::plugin::{
    resource::changed, Applied, AttrPath, Diagnostic, Diagnostics, PlanRequest, Resource, Schema,
    Value,
};
use crate::provider::ProviderData;
use roll::{Client, Found};

const CLIENT: &str = "client";
const DEFAULT_CONFIG: &str = "/etc/nomad/config.hcl";
const STATUS: &str = "client_status";
const PREVIOUS: &str = "previous_servers";
const OK: &str = "ok";
/// What makes a client's file or agent differ from the last apply.
const ROLLING: [&str; 5] = [
    CLIENT,
    "config_path",
    "nomad_servers",
    "restart",
    "service_name",
];

pub(crate) struct NomadClientStatic {
    data: Arc<ProviderData>,
}

impl NomadClientStatic {
    pub(crate) fn new(data: Arc<ProviderData>) -> Self {
        NomadClientStatic { data }
    }
}

fn host_port(host: &str, port: u16) -> String {
    crate::backends::tunnel::host_port(host, port)
}

fn port_of(c: &Value) -> u16 {
    c.get("port")
        .as_i64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(22)
}

/// The clients' keys, in order.
fn keys_of(v: &Value) -> Vec<String> {
    v.get(CLIENT)
        .as_list()
        .unwrap_or_default()
        .iter()
        .map(|c| host_port(c.get("host").as_str().unwrap_or_default(), port_of(c)))
        .collect()
}

fn check_service(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a service name: letters, digits, @ . _ - (not first)"
        ))
    }
}

/// The clients as SSH targets, from the provider's `services_host` settings.
fn clients(
    v: &Value,
    base: &SshConfig,
    via: Option<&Arc<ServicesHost>>,
) -> Result<Vec<Client>, Diagnostics> {
    let path = v.get("config_path").as_str().unwrap_or(DEFAULT_CONFIG);
    let mut out = Vec::new();
    for (i, c) in v
        .get(CLIENT)
        .as_list()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let host = c.get("host").as_str().unwrap_or_default().to_string();
        let host_key = match (c.get("host_key").as_str(), &base.host_key) {
            (Some(k), _) => HostKeyPolicy::Pinned(vec![ssh::parse_host_key(k).map_err(|e| {
                Diagnostics::from(
                    Diagnostic::error("Invalid host key", e)
                        .at(AttrPath::root(CLIENT).index(i).attr("host_key")),
                )
            })?]),
            (None, HostKeyPolicy::Pinned(_)) => {
                return Err(Diagnostic::error(
                    "No host key for the client",
                    format!(
                        "the provider's services_host.host_key pins the Services machine's key, not {host}'s: set \
                         this client's host_key (or the provider's known_hosts_file)"
                    ),
                )
                .at(AttrPath::root(CLIENT).index(i).attr("host_key"))
                .into())
            }
            (None, other) => other.clone(),
        };
        let port = port_of(c);
        out.push(Client {
            key: host_port(&host, port),
            ssh: SshConfig {
                host,
                port,
                user: c
                    .get("user")
                    .as_str()
                    .map_or_else(|| base.user.clone(), str::to_string),
                auth: base.auth.clone(),
                host_key,
                sudo: base.sudo,
                timeout: base.timeout,
            },
            config_path: c.get("config_path").as_str().unwrap_or(path).to_string(),
            node_name: c.get("node_name").as_str().map(str::to_string),
            via: via.cloned(),
        });
    }
    Ok(out)
}

fn warnings(w: &[(&'static str, String)]) -> Diagnostics {
    let mut d = Diagnostics::new();
    for (title, x) in w {
        d.push(Diagnostic::warning(*title, x.clone()));
    }
    d
}

fn status_map(v: &Value) -> BTreeMap<String, String> {
    match v.get(STATUS) {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn previous_map(v: &Value) -> BTreeMap<String, Vec<String>> {
    match v.get(PREVIOUS) {
        Value::Map(m) => m.iter().map(|(k, v)| (k.clone(), strings(v))).collect(),
        _ => BTreeMap::new(),
    }
}

fn status_value(m: &BTreeMap<String, String>) -> Value {
    Value::Map(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::string(v)))
            .collect(),
    )
}

fn previous_value(m: &BTreeMap<String, Vec<String>>) -> Value {
    Value::Map(m.iter().map(|(k, v)| (k.clone(), string_list(v))).collect())
}

#[async_trait]
impl Resource for NomadClientStatic {
    fn type_name(&self) -> &'static str {
        "circleci_nomad_client_static"
    }

    fn schema(&self) -> Schema {
        Schema::new(0, schema::block())
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        validate::run(
            config,
            &[
                ("config_path", Check::RemotePath),
                ("restart", Check::OneOf(&["systemctl", "service", "none"])),
                (
                    "service_name",
                    Check::Text("Invalid service name", check_service),
                ),
                (
                    "ready_timeout",
                    Check::Duration {
                        min_secs: 1,
                        max_secs: 86_400,
                    },
                ),
                ("nomad_ca_file", Check::NonEmpty),
                ("config_root", Check::RemotePath),
                (
                    "builds_timeout",
                    Check::Duration {
                        min_secs: 1,
                        max_secs: 7 * 86_400,
                    },
                ),
            ],
            &mut diags,
        );
        crate::resources::cutover::validate(config, &mut diags);
        validate::run_in_each(
            config,
            CLIENT,
            &[
                ("host", Check::Host),
                ("port", Check::Port),
                ("config_path", Check::RemotePath),
                (
                    "host_key",
                    Check::Text("Invalid host key", |k| ssh::parse_host_key(k).map(|_| ())),
                ),
            ],
            &mut diags,
        );
        if let Some(n) = config.get("batch_size").as_i64() {
            if n < 1 {
                diags.attr_error(
                    AttrPath::root("batch_size"),
                    "Invalid batch size",
                    "at least 1",
                );
            }
        }
        if let Some(list) = config.get("nomad_servers").as_list() {
            if list.is_empty() {
                diags.attr_error(
                    AttrPath::root("nomad_servers"),
                    "No Nomad servers",
                    "list at least one",
                );
            }
            for (i, s) in list.iter().enumerate() {
                if let Some(s) = s.as_str() {
                    if let Err(e) = ud::check_server(s) {
                        diags.attr_error(
                            AttrPath::root("nomad_servers").index(i),
                            "Invalid Nomad server",
                            e,
                        );
                    }
                }
            }
        }
        if let Some(e) = config.get("nomad_endpoint").as_str() {
            if !(e.starts_with("https://") || e.starts_with("http://"))
                || url::Url::parse(e).is_err()
            {
                diags.attr_error(
                    AttrPath::root("nomad_endpoint"),
                    "Invalid Nomad endpoint",
                    format!("{e:?} is not an http(s) URL such as https://nomad.internal:4646"),
                );
            }
        }
        let all_known = config.get(CLIENT).as_list().is_some_and(|l| {
            l.iter()
                .all(|c| c.get("host").is_fully_known() && !c.get("port").is_unknown())
        });
        if all_known {
            let keys = keys_of(config);
            for (i, k) in keys.iter().enumerate() {
                if keys[..i].contains(k) {
                    diags.attr_error(
                        AttrPath::root(CLIENT).index(i).attr("host"),
                        "Duplicate client",
                        format!("{k} is listed twice"),
                    );
                }
            }
        }
        diags
    }

    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        _diags: &mut Diagnostics,
    ) -> Vec<AttrPath> {
        super::set_defaults(
            req.config,
            planned,
            [
                ("config_path", Value::string(DEFAULT_CONFIG)),
                ("restart", Value::string("systemctl")),
                ("service_name", Value::string("nomad")),
                ("batch_size", Value::int(1)),
                ("ready_timeout", Value::string("5m")),
                ("restore_on_destroy", Value::Bool(true)),
                ("config_root", Value::string("/")),
            ],
        );
        super::set_defaults(req.config, planned, crate::resources::cutover::defaults());
        if req.is_create() {
            planned.set("id", Value::Unknown);
            planned.set(STATUS, Value::Unknown);
            planned.set(PREVIOUS, Value::Unknown);
            return vec![];
        }
        planned.set("id", req.prior.get("id").clone());
        let rolls = ROLLING.iter().any(|a| changed(req.prior, planned, a))
            || status_map(req.prior).values().any(|s| s != OK)
            || status_map(req.prior).len() != keys_of(req.prior).len();
        if rolls {
            planned.set(STATUS, Value::Unknown);
            planned.set(PREVIOUS, Value::Unknown);
        } else {
            planned.set(STATUS, req.prior.get(STATUS).clone());
            planned.set(PREVIOUS, req.prior.get(PREVIOUS).clone());
        }
        vec![]
    }

    async fn create(&self, planned: &Value, config: &Value) -> Applied {
        let todo = match self.clients_of(planned) {
            Ok(c) => c,
            Err(d) => {
                return Applied {
                    state: None,
                    diags: d,
                }
            }
        };
        let applied = match self.preflight(&todo, planned, config).await {
            Err(d) => Applied {
                state: None,
                diags: d,
            },
            Ok(()) => self.roll_to(&Value::Null, planned, config, todo).await,
        };
        crate::resources::services_restart::ServicesRestart::new(self.data.clone())
            .after_failed_step(planned, applied)
            .await
    }

    async fn update(&self, prior: &Value, planned: &Value, config: &Value) -> Applied {
        let kept = |d: Diagnostics| Applied {
            state: Some(prior.clone()),
            diags: d,
        };
        let (now, before) = match (self.clients_of(planned), self.clients_of(prior)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(d), _) | (_, Err(d)) => return kept(d),
        };
        // Clients that left the list get their own lists back first (when asked).
        let keys: Vec<String> = now.iter().map(|c| c.key.clone()).collect();
        let gone: Vec<Client> = before
            .into_iter()
            .filter(|c| !keys.contains(&c.key))
            .collect();
        let mut left = if gone.is_empty() {
            Diagnostics::new()
        } else if planned.get("restore_on_destroy").as_bool() == Some(false) {
            self.forget(&gone).await
        } else {
            let restored = self.restore(prior, planned, config, &gone).await;
            if restored.diags.has_errors() {
                return restored;
            }
            restored.diags
        };
        let everything = ROLLING
            .iter()
            .filter(|a| **a != CLIENT)
            .any(|a| changed(prior, planned, a));
        let status = status_map(prior);
        let old_clients = prior.get(CLIENT).as_list().unwrap_or_default().to_vec();
        let todo: Vec<Client> = now
            .into_iter()
            .enumerate()
            .filter(|(i, c)| {
                everything
                    || status.get(&c.key).is_none_or(|s| s != OK)
                    || planned.get(CLIENT).as_list().and_then(|l| l.get(*i))
                        != old_clients.iter().find(|o| {
                            host_port(o.get("host").as_str().unwrap_or_default(), port_of(o))
                                == c.key
                        })
            })
            .map(|(_, c)| c)
            .collect();
        let mut rolled = self.roll_to(prior, planned, config, todo).await;
        left.extend(rolled.diags);
        rolled.diags = left;
        crate::resources::services_restart::ServicesRestart::new(self.data.clone())
            .after_failed_step(planned, rolled)
            .await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let cs = self.clients_of(state)?;
        let servers = strings(state.get("nomad_servers"));
        let prior = status_map(state);
        let mut tasks = tokio::task::JoinSet::new();
        for c in cs {
            tasks.spawn(async move {
                (
                    c.key.clone(),
                    c.config_path.clone(),
                    roll::inspect(&c).await,
                )
            });
        }
        let mut status = BTreeMap::new();
        while let Some(j) = tasks.join_next().await {
            let Ok((k, path, found)) = j else { continue };
            let now = roll::status_of(&found, &servers, &path);
            // A client the roll did not finish stays pending while its file looks right.
            let s = match prior.get(&k) {
                Some(p) if p.starts_with("pending") && now == OK => p.clone(),
                _ => now,
            };
            status.insert(k, s);
        }
        let mut v = state.clone();
        v.set(STATUS, status_value(&status));
        Ok(Some(v))
    }

    async fn delete(&self, prior: &Value) -> Applied {
        if prior.get("restore_on_destroy").as_bool() == Some(false) {
            // The lists stay; the kept originals go, where the clients can be reached.
            let diags = match self.clients_of(prior) {
                Ok(cs) => self.forget(&cs).await,
                Err(_) => Diagnostics::new(),
            };
            return Applied { state: None, diags };
        }
        let cs = match self.clients_of(prior) {
            Ok(c) => c,
            Err(d) => return Applied::kept(prior, d),
        };
        let r = self.restore(prior, prior, &Value::Null, &cs).await;
        if r.diags.has_errors() {
            return r;
        }
        Applied {
            state: None,
            diags: r.diags,
        }
    }

    async fn import(&self, id: &str) -> Result<Value, Diagnostics> {
        let bad = |why: String| -> Diagnostics {
            Diagnostic::error(
                "Invalid import ID",
                format!(
                    "{why}. Expected host[:port][=CONFIG_PATH],host[:port][=CONFIG_PATH],… (the client machines)"
                ),
            )
            .into()
        };
        let mut list = Vec::new();
        for part in id.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (part, path) = match part.split_once('=') {
                Some((p, path)) => (p, Value::string(path)),
                None => (part, Value::Null),
            };
            let (host, port) = match part.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                    let p = p
                        .parse::<u16>()
                        .map_err(|_| bad(format!("{part:?}: not a port")))?;
                    (h.trim_matches(['[', ']']).to_string(), p)
                }
                _ => (part.to_string(), 22),
            };
            list.push(Value::object(&[
                ("host", Value::string(host)),
                ("port", Value::int(port.into())),
                ("config_path", path),
            ]));
        }
        if list.is_empty() {
            return Err(bad("no client".into()));
        }
        let mut v = Value::Null;
        v.set(CLIENT, Value::List(list));
        v.set("config_path", Value::string(DEFAULT_CONFIG));
        v.set("restart", Value::string("systemctl"));
        v.set("service_name", Value::string("nomad"));
        v.set("batch_size", Value::int(1));
        v.set("ready_timeout", Value::string("5m"));
        v.set("restore_on_destroy", Value::Bool(true));
        v.set("config_root", Value::string("/"));
        for (k, d) in crate::resources::cutover::defaults() {
            v.set(k, d);
        }
        v.set(PREVIOUS, Value::Map(BTreeMap::new()));
        let cs = self.clients_of(&v)?;
        v.set("id", Value::string(cs[0].key.clone()));
        let found = roll::inspect(&cs[0]).await;
        match found {
            Ok(Found::Servers(items)) => v.set("nomad_servers", string_list(&items)),
            other => {
                return Err(Diagnostic::error(
                    "Cannot import",
                    format!(
                        "{}: {}",
                        cs[0].key,
                        roll::status_of(&other, &[], &cs[0].config_path)
                    ),
                )
                .into())
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::roll::Restart;
    use super::*;

    #[test]
    fn service_names_are_checked() {
        assert!(check_service("nomad").is_ok());
        assert!(check_service("nomad-client@1.service").is_ok());
        for bad in ["", "-x", "a b", "a;b", "$(x)", "a/b"] {
            assert!(check_service(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn restart_commands_are_fixed() {
        assert_eq!(Restart::parse("systemctl"), Some(Restart::Systemctl));
        assert_eq!(Restart::parse("reboot"), None);
    }
}
