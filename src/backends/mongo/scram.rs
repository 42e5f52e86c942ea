//! The client side of SCRAM (RFC 5802 / RFC 7677) as MongoDB uses it: SCRAM-SHA-1 over
//! MongoDB's password digest (hex MD5 of `user:mongo:password`, the only form MongoDB
//! 3.6 knows) and SCRAM-SHA-256 over the SASLprep'd password (4.0 and later). The
//! server's signature is checked: a server that does not know the password cannot
//! pass for one that does.

use aws_lc_rs::{digest, hmac, pbkdf2, rand::SecureRandom};
use base64::Engine;
use md5::Digest;

use super::uri::Mechanism;

/// Servers must not ask for fewer iterations (the SCRAM drivers specification).
const MIN_ITERATIONS: u32 = 4096;

/// The most iterations a server may ask for. MongoDB asks for 10,000 with SCRAM-SHA-1
/// (`scramIterationCount`) and 15,000 with SCRAM-SHA-256 (`scramSHA256IterationCount`)
/// unless its operator changed them; a million is far above any setting seen in
/// practice and costs under a second of PBKDF2 on one core. Without a bound, a
/// server (or whoever answers in its place) could ask for 4,294,967,295 and keep a
/// thread busy for about an hour.
pub(super) const MAX_ITERATIONS: u32 = 1_000_000;

/// The server's iteration count (`i=`), within the bounds.
fn iterations(i: &str) -> Result<std::num::NonZeroU32, String> {
    let n: u64 = i
        .parse()
        .map_err(|_| format!("the server's SCRAM iteration count {i:?} is not a number"))?;
    if n < u64::from(MIN_ITERATIONS) {
        return Err(format!(
            "the server asks for {n} SCRAM iterations; at least {MIN_ITERATIONS} are required"
        ));
    }
    if n > u64::from(MAX_ITERATIONS) {
        return Err(format!(
            "the server asks for {n} SCRAM iterations; this provider refuses more than {MAX_ITERATIONS} \
             (MongoDB's defaults are 10000 for SCRAM-SHA-1 and 15000 for SCRAM-SHA-256)"
        ));
    }
    u32::try_from(n)
        .ok()
        .and_then(std::num::NonZeroU32::new)
        .ok_or_else(|| format!("the server asks for {n} SCRAM iterations"))
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

struct Algo {
    hmac: hmac::Algorithm,
    pbkdf2: pbkdf2::Algorithm,
    digest: &'static digest::Algorithm,
    len: usize,
}

fn algo(m: Mechanism) -> Algo {
    match m {
        Mechanism::ScramSha1 => Algo {
            hmac: hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            pbkdf2: pbkdf2::PBKDF2_HMAC_SHA1,
            digest: &digest::SHA1_FOR_LEGACY_USE_ONLY,
            len: 20,
        },
        Mechanism::ScramSha256 => Algo {
            hmac: hmac::HMAC_SHA256,
            pbkdf2: pbkdf2::PBKDF2_HMAC_SHA256,
            digest: &digest::SHA256,
            len: 32,
        },
    }
}

fn mac(a: &Algo, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(a.hmac, key), data)
        .as_ref()
        .to_vec()
}

/// MongoDB's SCRAM-SHA-1 password: hex MD5 of `user:mongo:password`.
pub(super) fn mongo_sha1_digest(user: &str, password: &str) -> String {
    let d = md5::Md5::digest(format!("{user}:mongo:{password}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// `=` and `,` escaped as SCRAM wants them in `n=`.
fn escape_user(u: &str) -> String {
    u.replace('=', "=3D").replace(',', "=2C")
}

/// One conversation, from the client-first message to the server's signature.
pub(super) struct Conversation {
    mechanism: Mechanism,
    user: String,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl Conversation {
    pub(super) fn new(mechanism: Mechanism, user: &str) -> Result<Self, String> {
        let mut raw = [0u8; 24];
        aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| "no randomness for the SCRAM nonce".to_string())?;
        let nonce = b64().encode(raw);
        Ok(Self::with_nonce(mechanism, user, nonce))
    }

    fn with_nonce(mechanism: Mechanism, user: &str, nonce: String) -> Self {
        let client_first_bare = format!("n={},r={nonce}", escape_user(user));
        Conversation {
            mechanism,
            user: user.to_string(),
            nonce,
            client_first_bare,
            server_signature: None,
        }
    }

    /// The `saslStart` payload.
    pub(super) fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Answers the server-first message with the proof. The key derivation (PBKDF2,
    /// as many iterations as the server asks, up to [`MAX_ITERATIONS`]) runs on a
    /// blocking thread, not on the async runtime's.
    pub(super) async fn client_final(
        &mut self,
        server_first: &[u8],
        password: &str,
    ) -> Result<Vec<u8>, String> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| "the server's SCRAM message is not UTF-8".to_string())?;
        let field = |k: &str| {
            server_first
                .split(',')
                .find_map(|kv| kv.strip_prefix(k))
                .map(str::to_string)
        };
        if let Some(e) = field("e=") {
            return Err(format!("the server refused: {e}"));
        }
        let nonce = field("r=").ok_or("the server's SCRAM message has no nonce")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err("the server's SCRAM nonce does not extend ours".into());
        }
        let salt = field("s=")
            .and_then(|s| b64().decode(s).ok())
            .ok_or("the server's SCRAM message has no valid salt")?;
        let n =
            iterations(&field("i=").ok_or("the server's SCRAM message has no iteration count")?)?;
        let a = algo(self.mechanism);
        let input = match self.mechanism {
            Mechanism::ScramSha1 => mongo_sha1_digest(&self.user, password),
            Mechanism::ScramSha256 => stringprep::saslprep(password)
                .map_err(|_| {
                    "the password cannot be prepared for SCRAM-SHA-256 (SASLprep)".to_string()
                })?
                .into_owned(),
        };
        let (pbkdf2_algo, len) = (a.pbkdf2, a.len);
        let salted = tokio::task::spawn_blocking(move || {
            let mut salted = vec![0u8; len];
            pbkdf2::derive(pbkdf2_algo, n, &salt, input.as_bytes(), &mut salted);
            salted
        })
        .await
        .map_err(|e| format!("the SCRAM key derivation did not finish: {e}"))?;
        let client_key = mac(&a, &salted, b"Client Key");
        let stored_key = digest::digest(a.digest, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = mac(&a, stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = mac(&a, &salted, b"Server Key");
        self.server_signature = Some(mac(&a, &server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", b64().encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server proved it knows the password.
    pub(super) fn verify_server(&self, server_final: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(server_final).unwrap_or_default();
        if let Some(e) = text.strip_prefix("e=") {
            return Err(format!("the server refused: {e}"));
        }
        let got = text
            .split(',')
            .find_map(|kv| kv.strip_prefix("v="))
            .and_then(|v| b64().decode(v).ok())
            .ok_or("the server's final SCRAM message has no signature")?;
        match &self.server_signature {
            Some(want) if *want == got => Ok(()),
            _ => Err("the server's SCRAM signature is wrong: it does not know the password".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example ("user" / "pencil").
    #[tokio::test]
    async fn rfc7677_example() {
        let mut c = Conversation::with_nonce(
            Mechanism::ScramSha256,
            "user",
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let fin = c
            .client_final(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                "pencil",
            )
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(c.verify_server(b"v=AAAA").is_err());
    }

    /// MongoDB's SCRAM-SHA-1 password digest, from its authentication spec's example
    /// (user "user", password "pencil").
    #[test]
    fn mongo_sha1_digest_matches_the_spec() {
        assert_eq!(
            mongo_sha1_digest("user", "pencil"),
            "1c33006ec1ffd90f9cadcbcc0e118200"
        );
    }

    /// The drivers' SCRAM-SHA-1 test vector (user "user", password "pencil").
    #[tokio::test]
    async fn scram_sha1_vector() {
        let mut c = Conversation::with_nonce(
            Mechanism::ScramSha1,
            "user",
            "fyko+d2lbbFgONRv9qkxdawL".into(),
        );
        let fin = c
            .client_final(
                b"r=fyko+d2lbbFgONRv9qkxdawLHo+Vgk7qvUOKUwuWLIWg4l/9SraGMHEE,s=rQ9ZY3MntBeuP3E1TDVC4w==,i=10000",
                "pencil",
            )
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawLHo+Vgk7qvUOKUwuWLIWg4l/9SraGMHEE,p=MC2T8BvbmWRckDw8oWl5IVghwCY="
        );
        c.verify_server(b"v=UMWeI25JD1yNYZRMpZ4VHvhZ9e0=").unwrap();
    }

    #[tokio::test]
    async fn weak_or_foreign_servers_are_refused() {
        let mut c = Conversation::with_nonce(Mechanism::ScramSha256, "u", "abc".into());
        assert!(c
            .client_final(b"r=abcdef,s=AAAA,i=1000", "p")
            .await
            .is_err());
        assert!(c.client_final(b"r=zzz,s=AAAA,i=4096", "p").await.is_err());
        assert!(c.client_final(b"e=unknown-user", "p").await.is_err());
        assert_eq!(escape_user("a=b,c"), "a=3Db=2Cc");
    }

    /// A server asking for 2^32-1 iterations (about an hour of PBKDF2) is refused at
    /// once, before any derivation.
    #[test]
    fn absurd_iteration_counts_are_refused_quickly() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut c = Conversation::with_nonce(Mechanism::ScramSha256, "u", "abc".into());
            let _ = tx.send(rt.block_on(c.client_final(b"r=abcdef,s=AAAA,i=4294967295", "p")));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("still deriving after 5 s: the iteration count was not bounded");
        let e = r.unwrap_err();
        assert!(e.contains("4294967295"), "{e}");
    }

    #[test]
    fn iteration_bounds() {
        assert_eq!(iterations("4096").unwrap().get(), MIN_ITERATIONS);
        assert!(iterations("4095").is_err());
        assert_eq!(iterations("1000000").unwrap().get(), MAX_ITERATIONS);
        let e = iterations("1000001").unwrap_err();
        assert!(e.contains("1000001") && e.contains("1000000"), "{e}");
        assert!(iterations("4294967296").is_err());
        assert!(iterations("99999999999999999999999").is_err());
        assert!(iterations("0").is_err());
        assert!(iterations("-1").is_err());
    }

    /// A fake MongoDB server that answers the handshake, then asks for `iterations`
    /// SCRAM-SHA-256 iterations in its server-first message.
    async fn greedy_server(iterations: u64) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn read(sock: &mut tokio::net::TcpStream) -> ([u8; 16], Vec<u8>) {
            let mut header = [0u8; 16];
            sock.read_exact(&mut header).await.unwrap();
            let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len - 16];
            sock.read_exact(&mut body).await.unwrap();
            (header, body)
        }
        fn message(request: &[u8; 16], op: i32, body: &[u8]) -> Vec<u8> {
            let mut msg = Vec::new();
            msg.extend_from_slice(&((16 + body.len()) as i32).to_le_bytes());
            msg.extend_from_slice(&7i32.to_le_bytes());
            msg.extend_from_slice(&request[4..8]);
            msg.extend_from_slice(&op.to_le_bytes());
            msg.extend_from_slice(body);
            msg
        }
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut sock, _) = l.accept().await.unwrap();
            let (header, _) = read(&mut sock).await;
            let mut reply = vec![0u8; 20];
            reply[16..20].copy_from_slice(&1i32.to_le_bytes());
            bson::doc! {"ok": 1.0, "ismaster": true, "maxWireVersion": 17,
            "saslSupportedMechs": ["SCRAM-SHA-256"]}
            .to_writer(&mut reply)
            .unwrap();
            sock.write_all(&message(&header, 1, &reply)).await.unwrap();
            let (header, body) = read(&mut sock).await;
            let start = bson::Document::from_reader(&body[5..]).unwrap();
            let first = match start.get("payload") {
                Some(bson::Bson::Binary(b)) => String::from_utf8(b.bytes.clone()).unwrap(),
                other => panic!("{other:?}"),
            };
            let nonce = first.rsplit("r=").next().unwrap().to_string();
            let payload = format!("r={nonce}xyz,s=AAAA,i={iterations}").into_bytes();
            let mut reply = vec![0u8; 5];
            bson::doc! {"ok": 1.0, "conversationId": 1, "done": false,
            "payload": bson::Binary {subtype: bson::spec::BinarySubtype::Generic, bytes: payload}}
            .to_writer(&mut reply)
            .unwrap();
            sock.write_all(&message(&header, 2013, &reply))
                .await
                .unwrap();
            // Hold the connection open.
            let _ = read(&mut sock).await;
        });
        port
    }

    /// Through the whole client: the login fails at once, naming the server.
    #[test]
    fn a_server_asking_absurd_iterations_is_named_and_refused_quickly() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(async {
                let port = greedy_server(4_294_967_295).await;
                let uri = format!("mongodb://admin:secret@127.0.0.1:{port}/?authSource=admin");
                let e = super::super::connect(
                    &uri,
                    super::super::Trust::Ca(None),
                    std::time::Duration::from_secs(2),
                    &super::super::Route::Direct,
                )
                .await
                .err()
                .map(|e| crate::backends::chain(&e));
                (port, e)
            });
            let _ = tx.send(r);
        });
        let (port, e) = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("still deriving after 5 s: the iteration count was not bounded");
        let e = e.expect("the login succeeded");
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(e.contains("4294967295"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }
}
