//! Redaction of credentials in settings before they are shown anywhere.
//!
//! Invariant: what `tally config show` prints, and what a settings error message
//! quotes, never contains a password of a Redis node URL or the value of a
//! librdkafka property that carries a credential; everything else is shown as
//! configured, so an operator still sees which node, user and mechanism are used.

use super::Settings;

/// What a hidden value is replaced with.
pub const REDACTED: &str = "***";

/// Parts of librdkafka property names whose values are credentials
/// (`sasl.password`, `ssl.key.password`, `ssl.key.pem`, `sasl.oauthbearer.client.secret`,
/// `sasl.jaas.config`, tokens, ...).
const SECRET_PROPERTY_PARTS: [&str; 6] =
    ["password", "secret", "token", "jaas", "key.pem", "private"];

/// Whether a librdkafka property's value is a credential.
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PROPERTY_PARTS.iter().any(|part| name.contains(part))
}

/// A URL with the password of its user info replaced (`rediss://app:***@host:6380`);
/// a URL without one is returned as is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user info ends at the last `@` before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = (&rest[..at], &rest[at..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:{REDACTED}{host}"),
        // A lone value is a password for Redis (`redis://secret@host`).
        None if !userinfo.is_empty() => format!("{scheme}://{REDACTED}{host}"),
        None => url.to_owned(),
    }
}

impl Settings {
    /// These settings with every credential replaced by [`REDACTED`].
    pub fn redacted(&self) -> Settings {
        let mut shown = self.clone();
        for node in &mut shown.redis.nodes {
            *node = redact_url(node);
        }
        for (name, value) in &mut shown.kafka.extra {
            if is_secret_property(name) {
                *value = REDACTED.to_owned();
            }
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_hidden_and_the_rest_kept() {
        for (url, shown) in [
            ("redis://127.0.0.1:7000", "redis://127.0.0.1:7000"),
            ("redis://app:s3cr:et@h:7000", "redis://app:***@h:7000"),
            ("rediss://:pw@h:6380/0", "rediss://:***@h:6380/0"),
            ("redis://pw@h:7000", "redis://***@h:7000"),
            ("redis://app:p@ss@h:7000", "redis://app:***@h:7000"),
            ("redis://h:7000/a@b", "redis://h:7000/a@b"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn credential_properties_are_hidden_in_shown_settings() {
        let body = r#"
[redis]
nodes = ["redis://tally:hunter2@127.0.0.1:7000"]
[kafka]
brokers = "127.0.0.1:9092"
[kafka.extra]
"sasl.password" = "hunter2"
"ssl.key.password" = "hunter2"
"sasl.oauthbearer.client.secret" = "hunter2"
"sasl.jaas.config" = 'x password="hunter2"'
"sasl.username" = "tally"
"security.protocol" = "SASL_SSL"
"#;
        let mut file = match tempfile::Builder::new().suffix(".toml").tempfile() {
            Ok(f) => f,
            Err(e) => panic!("temp file: {e}"),
        };
        if let Err(e) = std::io::Write::write_all(&mut file, body.as_bytes()) {
            panic!("write: {e}");
        }
        let env = config::Environment::with_prefix("TALLY_REDACT_TEST_UNSET");
        let settings = match Settings::load_from(Some(file.path()), env) {
            Ok(s) => s,
            Err(e) => panic!("settings: {e}"),
        };
        let shown = serde_json::to_string(&settings.redacted()).unwrap_or_default();
        assert!(!shown.is_empty());
        assert!(!shown.contains("hunter2"), "{shown}");
        for kept in ["tally:***@127.0.0.1:7000", "SASL_SSL", "sasl.username"] {
            assert!(shown.contains(kept), "{kept} missing: {shown}");
        }
        // The settings themselves keep the credentials: only the view is redacted.
        assert_eq!(
            settings
                .kafka
                .extra
                .get("sasl.password")
                .map(String::as_str),
            Some("hunter2")
        );
    }
}
