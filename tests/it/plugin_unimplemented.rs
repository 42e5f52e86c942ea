//! Newer Terraform calls RPCs this provider does not implement (1.12 asks for resource
//! identity schemas, 1.13 and later for list resources, state stores, actions...). The
//! answer must be gRPC status Unimplemented, which Terraform reads as "not supported"
//! (no identity, no list resources): never a crash, a hang or another status.
//!
//! The RPCs checked are those of proto/reference/ (the newest protocol 6 this project
//! has compared itself with) that proto/tfplugin6.proto does not have; both files are
//! parsed here, so that the list follows the protocol files instead of going stale.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::common::repo_root;
use super::plugin_handshake::start;

const REFERENCE: &str = "proto/reference/tfplugin6.11-service.proto";
const OURS: &str = "proto/tfplugin6.proto";

/// How a method streams.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Streaming {
    client: bool,
    server: bool,
}

/// The `rpc` lines of `service Provider { ... }` in a proto file: name → streaming.
fn provider_rpcs(path: &str) -> BTreeMap<String, Streaming> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    let start = text
        .find("service Provider {")
        .unwrap_or_else(|| panic!("{path} has no `service Provider`"));
    let body = &text[start..];
    let body = &body[..body.find("\n}").expect("the service block closes")];
    let mut out = BTreeMap::new();
    for line in body.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("rpc ") else {
            continue;
        };
        let (name, sig) = rest.split_once('(').unwrap();
        let (request, response) = sig.split_once("returns").unwrap();
        let s = Streaming {
            client: request.trim_start().starts_with("stream "),
            server: response
                .trim_start()
                .trim_start_matches('(')
                .starts_with("stream "),
        };
        assert!(
            out.insert(name.trim().to_string(), s).is_none(),
            "{path}: {name} twice"
        );
    }
    out
}

/// One gRPC call with a single empty message (a valid encoding of every request type):
/// the status and message from the response's headers or trailers.
async fn call(h2: &h2::client::SendRequest<Bytes>, addr: &str, method: &str) -> (String, String) {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/tfplugin6.Provider/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut h2 = h2.clone().ready().await.unwrap();
    let (response, mut send) = h2.send_request(req, false).unwrap();
    // Compressed flag 0, length 0: one empty message, then the end of the request stream
    // (for a client-streaming method, a stream of one message).
    send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within 10 s"))
        .unwrap();
    assert_eq!(response.status(), 200, "{method}");
    let (parts, mut body) = response.into_parts();
    let mut fields = parts.headers;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    if let Some(trailers) = body.trailers().await.unwrap() {
        fields.extend(trailers);
    }
    let get = |k: &str| {
        fields
            .get(k)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (get("grpc-status"), get("grpc-message"))
}

#[tokio::test]
async fn rpcs_of_the_newest_protocol_we_lack_are_unimplemented() {
    let reference = provider_rpcs(REFERENCE);
    let ours = provider_rpcs(OURS);
    // Every RPC we implement is in the reference, with the same streaming: otherwise the
    // reference is older than our proto and must be refreshed.
    for (name, s) in &ours {
        assert_eq!(
            reference.get(name),
            Some(s),
            "{OURS} has {name}, {REFERENCE} does not (or streams differently): refresh the reference"
        );
    }
    let missing: Vec<(&String, &Streaming)> = reference
        .iter()
        .filter(|(name, _)| !ours.contains_key(*name))
        .collect();
    assert!(
        missing
            .iter()
            .any(|(n, _)| *n == "GetResourceIdentitySchemas"),
        "{missing:?}"
    );
    assert!(
        missing.iter().any(|(_, s)| s.client) && missing.iter().any(|(_, s)| s.server),
        "both kinds of streaming are among the calls: {missing:?}"
    );

    let mut p = start(None);
    let tcp = tokio::net::TcpStream::connect(&p.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(connection);

    // A method we implement answers OK on the same connection: the call itself is sound.
    let (status, message) = call(&h2, &p.addr, "GetMetadata").await;
    assert_eq!(status, "0", "GetMetadata: {message}");

    let mut wrong = vec![];
    for (name, s) in &missing {
        let (status, message) = call(&h2, &p.addr, name).await;
        if status != "12" {
            wrong.push(format!("{name} {s:?}: grpc-status {status:?} {message:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "not Unimplemented (12):\n{}",
        wrong.join("\n")
    );

    // And the provider is still serving after all of them.
    let (status, _) = call(&h2, &p.addr, "GetMetadata").await;
    assert_eq!(status, "0");
    assert!(p.child.try_wait().unwrap().is_none(), "the provider exited");
    conn.abort();
}
