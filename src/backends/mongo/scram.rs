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
pub fn mongo_sha1_digest(user: &str, password: &str) -> String {
    let d = md5::Md5::digest(format!("{user}:mongo:{password}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// `=` and `,` escaped as SCRAM wants them in `n=`.
fn escape_user(u: &str) -> String {
    u.replace('=', "=3D").replace(',', "=2C")
}

/// One conversation, from the client-first message to the server's signature.
pub struct Conversation {
    mechanism: Mechanism,
    user: String,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl Conversation {
    pub fn new(mechanism: Mechanism, user: &str) -> Result<Self, String> {
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
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Answers the server-first message with the proof.
    pub fn client_final(&mut self, server_first: &[u8], password: &str) -> Result<Vec<u8>, String> {
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
        let iterations: u32 = field("i=")
            .and_then(|i| i.parse().ok())
            .ok_or("the server's SCRAM message has no iteration count")?;
        if iterations < MIN_ITERATIONS {
            return Err(format!(
                "the server asks for {iterations} SCRAM iterations; at least {MIN_ITERATIONS} are required"
            ));
        }
        let a = algo(self.mechanism);
        let input = match self.mechanism {
            Mechanism::ScramSha1 => mongo_sha1_digest(&self.user, password),
            Mechanism::ScramSha256 => stringprep::saslprep(password)
                .map_err(|_| {
                    "the password cannot be prepared for SCRAM-SHA-256 (SASLprep)".to_string()
                })?
                .into_owned(),
        };
        let mut salted = vec![0u8; a.len];
        let n = std::num::NonZeroU32::new(iterations).ok_or("zero SCRAM iterations")?;
        pbkdf2::derive(a.pbkdf2, n, &salt, input.as_bytes(), &mut salted);
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
    pub fn verify_server(&self, server_final: &[u8]) -> Result<(), String> {
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
    #[test]
    fn rfc7677_example() {
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
    #[test]
    fn scram_sha1_vector() {
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
            .unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawLHo+Vgk7qvUOKUwuWLIWg4l/9SraGMHEE,p=MC2T8BvbmWRckDw8oWl5IVghwCY="
        );
        c.verify_server(b"v=UMWeI25JD1yNYZRMpZ4VHvhZ9e0=").unwrap();
    }

    #[test]
    fn weak_or_foreign_servers_are_refused() {
        let mut c = Conversation::with_nonce(Mechanism::ScramSha256, "u", "abc".into());
        assert!(c.client_final(b"r=abcdef,s=AAAA,i=1000", "p").is_err());
        assert!(c.client_final(b"r=zzz,s=AAAA,i=4096", "p").is_err());
        assert!(c.client_final(b"e=unknown-user", "p").is_err());
        assert_eq!(escape_user("a=b,c"), "a=3Db=2Cc");
    }
}
