//! Who may speak for a client id on ingest: client tokens (`producer.auth.mode =
//! "token"`) and the ids a client certificate names (`"mtls"`).
//!
//! A client's token is the HMAC-SHA256 of its id under a server secret, written as
//! 64 lowercase hex digits, so an operator mints tokens offline (`tally admin
//! token --id ID`) and the producer keeps no list of them. Two secrets may be
//! configured at once (`secret_file` and `previous_secret_file`): a token of
//! either is accepted, so a secret is rotated by adding the new one, handing out
//! new tokens, then dropping the old.
//!
//! A client certificate names the ids it may use in its SAN dNSNames (the subject
//! CN is not looked at): a name equal to the id, or a name ending in `*` that
//! stands for every id starting with what comes before it (`sensor-*` covers
//! `sensor-17`; a lone `*` covers nothing).
//!
//! Invariant: [`TokenSecrets::admits`] is true only for a token minted for exactly
//! that id under a configured secret; the comparison takes the same time wherever
//! the tokens differ. [`certificate_admits`] is true only for an id one of the
//! certificate's names covers. Secrets are never printed (their `Debug` is
//! redacted).

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::keys::ClientId;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// What the HMAC covers besides the id, so a token is good for nothing else.
const DOMAIN: &[u8] = b"tally client token v1:";

/// Why the secrets cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A secret file could not be read.
    #[error("{setting} {path}: {source}")]
    Read {
        /// The setting that names it.
        setting: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Token mode without a secret (validation reports it first).
    #[error("producer.auth.secret_file is required when producer.auth.mode = \"token\"")]
    NoSecret,
    /// A secret is too short.
    #[error("{setting} {path}: a secret must hold at least {MIN_SECRET_BYTES} bytes (e.g. `head -c 48 /dev/urandom | base64 > FILE`)")]
    TooShort {
        /// The setting that names it.
        setting: &'static str,
        /// The file.
        path: String,
    },
}

/// A secret read from a file (surrounding whitespace dropped).
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Reads the secret named by `setting` from `path`.
    pub fn read(setting: &'static str, path: &Path) -> Result<Self, AuthError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| AuthError::Read {
            setting,
            path: shown.clone(),
            source,
        })?;
        Self::new(bytes.trim_ascii().to_vec()).ok_or(AuthError::TooShort {
            setting,
            path: shown,
        })
    }

    /// A secret, if it is long enough.
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() >= MIN_SECRET_BYTES).then_some(Self(bytes))
    }

    /// The token of `id` under this secret.
    pub fn mint(&self, id: &ClientId) -> String {
        let mut out = String::with_capacity(64);
        for byte in self.tag(id) {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    fn tag(&self, id: &ClientId) -> [u8; 32] {
        // HMAC accepts keys of any length.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes a key of any length"),
        };
        mac.update(DOMAIN);
        mac.update(id.as_str().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The secrets of `producer.auth`, or `None` when its mode is not `token`.
pub fn from_settings(
    auth: &crate::settings::AuthSettings,
) -> Result<Option<TokenSecrets>, AuthError> {
    use crate::settings::AuthMode;
    match (auth.mode, &auth.secret_file) {
        (AuthMode::None | AuthMode::Mtls, _) => Ok(None),
        (AuthMode::Token, None) => Err(AuthError::NoSecret),
        (AuthMode::Token, Some(current)) => {
            let current = Secret::read("producer.auth.secret_file", current)?;
            let previous = auth
                .previous_secret_file
                .as_deref()
                .map(|p| Secret::read("producer.auth.previous_secret_file", p))
                .transpose()?;
            Ok(Some(TokenSecrets::new(current, previous)))
        }
    }
}

/// The secrets a producer checks tokens against.
#[derive(Debug, Clone)]
pub struct TokenSecrets {
    current: Secret,
    previous: Option<Secret>,
}

impl TokenSecrets {
    /// The current secret and, during a rotation, the previous one.
    pub fn new(current: Secret, previous: Option<Secret>) -> Self {
        Self { current, previous }
    }

    /// Whether `token` was minted for `id` under one of the secrets.
    pub fn admits(&self, id: &ClientId, token: &str) -> bool {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .fold(false, |ok, secret| ok | same(&secret.mint(id), token))
    }
}

/// Whether a client certificate whose SAN dNSNames are `names` may use `id`: one
/// name equals it, or one name is `<prefix>*` with a non-empty prefix `id` starts
/// with. Ids are compared exactly (case matters, as in ids).
pub fn certificate_admits<S: AsRef<str>>(names: &[S], id: &ClientId) -> bool {
    let id = id.as_str();
    names.iter().any(|name| {
        let name = name.as_ref();
        match name.strip_suffix('*') {
            Some(prefix) => !prefix.is_empty() && id.starts_with(prefix),
            None => name == id,
        }
    })
}

/// Equality in time independent of where `a` and `b` differ.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(fill: u8) -> Secret {
        match Secret::new(vec![fill; MIN_SECRET_BYTES]) {
            Some(s) => s,
            None => panic!("long enough"),
        }
    }

    fn id(text: &str) -> ClientId {
        match ClientId::parse(text) {
            Ok(id) => id,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn a_token_admits_its_id_only_under_its_secret() {
        let (a, b) = (secret(1), secret(2));
        let token = a.mint(&id("sensor-7"));
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|c| c.is_ascii_hexdigit()));
        let only_a = TokenSecrets::new(a.clone(), None);
        assert!(only_a.admits(&id("sensor-7"), &token));
        assert!(!only_a.admits(&id("sensor-8"), &token), "another id");
        assert!(!only_a.admits(&id("sensor-7"), &token[..63]), "truncated");
        assert!(!only_a.admits(&id("sensor-7"), ""), "empty");
        assert!(
            !TokenSecrets::new(b, None).admits(&id("sensor-7"), &token),
            "another secret"
        );
    }

    #[test]
    fn during_a_rotation_tokens_of_both_secrets_are_admitted() {
        let (old, new) = (secret(1), secret(2));
        let rotating = TokenSecrets::new(new.clone(), Some(old.clone()));
        assert!(rotating.admits(&id("c"), &old.mint(&id("c"))));
        assert!(rotating.admits(&id("c"), &new.mint(&id("c"))));
        let rotated = TokenSecrets::new(new, None);
        assert!(!rotated.admits(&id("c"), &old.mint(&id("c"))));
    }

    #[test]
    fn a_certificate_admits_the_ids_it_names_and_prefixes_it_covers() {
        let names = ["a", "sensor-*"];
        assert!(certificate_admits(&names, &id("a")));
        assert!(certificate_admits(&names, &id("sensor-17")));
        assert!(
            certificate_admits(&names, &id("sensor-")),
            "the prefix itself"
        );
        assert!(
            !certificate_admits(&names, &id("ab")),
            "a name is not a prefix"
        );
        assert!(!certificate_admits(&names, &id("A")), "case matters");
        assert!(
            !certificate_admits(&names, &id("sensor")),
            "shorter than the prefix"
        );
        assert!(!certificate_admits(&names, &id("xsensor-1")));
        assert!(
            !certificate_admits(&["*"], &id("anything")),
            "a lone * covers nothing"
        );
        assert!(
            !certificate_admits::<&str>(&[], &id("a")),
            "no names, no ids"
        );
        assert!(
            !certificate_admits(&["sensor*-1"], &id("sensor-x-1")),
            "only a trailing * is a wildcard"
        );
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert!(Secret::new(vec![7; MIN_SECRET_BYTES - 1]).is_none());
        assert_eq!(format!("{:?}", secret(9)), "Secret(***)");
    }
}
