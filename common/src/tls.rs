//! TLS material for the producer's ingest listener and for the clients: PEM files
//! turned into rustls configurations (the `ring` provider), and the names a client
//! certificate carries.
//!
//! Invariant: a configuration is built only from files that parsed whole — a
//! certificate file with at least one certificate and nothing malformed, a key file
//! with a private key that matches the certificate — and every problem of every
//! file is reported at once, each with its setting (or option) and path. Nothing
//! here prints key material.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::settings::TlsSettings;

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// One or more files could not be read or parsed; one problem per line.
    #[error("{}", .0.join("; "))]
    Files(Vec<String>),
    /// rustls refused the material (e.g. the key does not match the certificate).
    #[error("{what}: {source}")]
    Rustls {
        /// What was being built.
        what: &'static str,
        /// Why.
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the CA file.
    #[error("{setting}: {detail}")]
    Verifier {
        /// The setting or option naming the CA file.
        setting: &'static str,
        /// Why.
        detail: String,
    },
    /// No CA given and no system trust store found.
    #[error("no CA to trust: give one with --ca FILE (the system trust store is empty or unreadable: {0})")]
    NoRoots(String),
}

/// The crypto provider every configuration here uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file `path` (named by `setting`), or the problems.
pub fn load_certificates(
    setting: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting} {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{setting} {}: no certificate in it (expected PEM `BEGIN CERTIFICATE`)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key in the PEM file `path` (named by `setting`), or the problem.
pub fn load_private_key(setting: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!(
            "{setting} {}: no usable private key (expected PEM PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        )
    })
}

/// The certificates of `path` as a trust store.
fn root_store(setting: &str, path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(setting, path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{setting} {}: not a usable CA: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Collects the results of loading several files so all their problems are told
/// at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn take<T>(&mut self, result: Result<T, String>) -> Option<T> {
        result.map_err(|p| self.0.push(p)).ok()
    }
}

/// The producer's rustls configuration from `[producer.tls]`: its certificate and
/// key, and when `client_ca_file` is set, client certificates required and
/// verified against it.
pub fn server_config(tls: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let mut problems = Problems::default();
    let certs = problems.take(load_certificates("producer.tls.cert_file", &tls.cert_file));
    let key = problems.take(load_private_key("producer.tls.key_file", &tls.key_file));
    let client_roots = match &tls.client_ca_file {
        Some(path) => problems
            .take(root_store("producer.tls.client_ca_file", path))
            .map(Some),
        None => Some(None),
    };
    let (Some(certs), Some(key), Some(client_roots)) = (certs, key, client_roots) else {
        return Err(TlsError::Files(problems.0));
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "producer.tls",
            source,
        })?;
    let builder = match client_roots {
        Some(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Verifier {
                setting: "producer.tls.client_ca_file",
                detail: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rustls {
            what: "producer.tls.cert_file and key_file",
            source,
        })?;
    Ok(Arc::new(config))
}

/// What a client trusts and presents.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsFiles<'a> {
    /// CA certificates (PEM) to trust; `None`: the system trust store.
    pub ca: Option<&'a Path>,
    /// The client's certificate chain (PEM), for `producer.auth.mode = "mtls"`.
    pub cert: Option<&'a Path>,
    /// Its private key (PEM).
    pub key: Option<&'a Path>,
}

/// A client's rustls configuration: trusting `files.ca` (or the system trust
/// store), presenting `files.cert` with `files.key` if given (both or neither).
pub fn client_config(files: &ClientTlsFiles<'_>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut problems = Problems::default();
    let roots = match files.ca {
        Some(path) => problems.take(root_store("--ca", path)),
        None => Some(system_roots()?),
    };
    let identity = match (files.cert, files.key) {
        (Some(cert), Some(key)) => {
            let certs = problems.take(load_certificates("--cert", cert));
            let key = problems.take(load_private_key("--key", key));
            certs.zip(key).map(Some)
        }
        (None, None) => Some(None),
        (Some(_), None) => {
            problems.0.push("--cert needs --key".into());
            None
        }
        (None, Some(_)) => {
            problems.0.push("--key needs --cert".into());
            None
        }
    };
    let (Some(roots), Some(identity)) = (roots, identity) else {
        return Err(TlsError::Files(problems.0));
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "client TLS",
            source,
        })?
        .with_root_certificates(roots);
    let config = match identity {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|source| TlsError::Rustls {
                what: "--cert and --key",
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The system's trust store (what `openssl` trusts), for clients given no `--ca`.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "no certificates found".to_owned(), ToString::to_string);
        return Err(TlsError::NoRoots(why));
    }
    Ok(roots)
}

/// The SAN dNSNames of a certificate (DER): the names [`crate::auth::certificate_admits`]
/// matches client ids against. Empty when it has none or does not parse (a
/// verified certificate parses).
pub fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_names(names: &[&str]) -> CertificateDer<'static> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        match rcgen::generate_simple_self_signed(names) {
            Ok(certified) => certified.cert.der().clone(),
            Err(e) => panic!("rcgen: {e}"),
        }
    }

    #[test]
    fn the_san_dns_names_are_the_certificate_names() {
        let cert = cert_with_names(&["a", "sensor-*"]);
        assert_eq!(certificate_names(&cert), ["a", "sensor-*"]);
        assert!(certificate_names(&CertificateDer::from(vec![1, 2, 3])).is_empty());
    }

    #[test]
    fn every_file_problem_is_reported_at_once() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("temp dir: {e}"),
        };
        let not_pem = dir.path().join("not.pem");
        if let Err(e) = std::fs::write(&not_pem, "hello\n") {
            panic!("write: {e}");
        }
        let settings = TlsSettings {
            cert_file: not_pem.clone(),
            key_file: dir.path().join("missing.key"),
            client_ca_file: Some(not_pem),
        };
        let error = match server_config(&settings) {
            Err(TlsError::Files(problems)) => problems,
            other => panic!("expected file problems, got {other:?}"),
        };
        assert_eq!(error.len(), 3, "{error:?}");
        assert!(error[0].starts_with("producer.tls.cert_file "), "{error:?}");
        assert!(error[1].starts_with("producer.tls.key_file "), "{error:?}");
        assert!(
            error[2].starts_with("producer.tls.client_ca_file "),
            "{error:?}"
        );
    }

    #[test]
    fn a_matching_certificate_and_key_make_a_server_config() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("temp dir: {e}"),
        };
        let certified = match rcgen::generate_simple_self_signed(vec!["localhost".into()]) {
            Ok(c) => c,
            Err(e) => panic!("rcgen: {e}"),
        };
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        for (path, text) in [
            (&cert, certified.cert.pem()),
            (&key, certified.key_pair.serialize_pem()),
        ] {
            if let Err(e) = std::fs::write(path, text) {
                panic!("write: {e}");
            }
        }
        let settings = TlsSettings {
            cert_file: cert.clone(),
            key_file: key,
            client_ca_file: Some(cert.clone()),
        };
        if let Err(e) = server_config(&settings) {
            panic!("server config: {e}");
        }
        let files = ClientTlsFiles {
            ca: Some(&cert),
            cert: Some(&cert),
            key: None,
        };
        match client_config(&files) {
            Err(TlsError::Files(p)) => assert_eq!(p, ["--cert needs --key"]),
            other => panic!("expected a usage problem, got {other:?}"),
        }
    }
}
