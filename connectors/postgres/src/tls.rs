//! TLS to PostgreSQL, as libpq spells it: `sslmode`, `sslrootcert`, `sslcert` and `sslkey` in
//! the URL (or key=value string), for query sessions and for the replication stream alike.
//!
//! Invariants:
//! - `verify-full` checks the certificate chain against `sslrootcert` (the Mozilla roots
//!   without it) and that the certificate names the host; `verify-ca` checks the chain only.
//! - `require` (without `sslrootcert`) and `prefer` encrypt without checking who answers, as
//!   libpq does; `require` with `sslrootcert` is `verify-ca`, as in libpq. `prefer` (the
//!   default, as in libpq) falls back to plaintext when the server has no TLS; `disable` never
//!   encrypts.
//! - The handshake's signatures are always checked, whatever the mode.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

use crate::PostgresError;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// TLS if the server offers it, else plaintext (`allow` is taken as `prefer`).
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS part of a connection string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Takes the TLS parameters out of `url`: what is left is for tokio-postgres, which knows
/// neither `verify-ca`/`verify-full` nor certificate files.
pub(crate) fn split(url: &str) -> Result<(String, TlsSettings), PostgresError> {
    let mut pairs = Vec::new();
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if KEYS.contains(&key) {
                pairs.push((key.to_owned(), percent_decode(value)?));
            } else {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            match token.split_once('=') {
                Some((key, value)) if KEYS.contains(&key) => {
                    pairs.push((key.to_owned(), value.trim_matches('\'').to_owned()));
                }
                _ => kept.push(token),
            }
        }
        kept.join(" ")
    };
    let mut settings = TlsSettings::default();
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => {
                settings.mode = match value.as_str() {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(PostgresError::Tls(format!(
                            "sslmode {other:?} is not one of disable, allow, prefer, require, \
                             verify-ca, verify-full"
                        )))
                    }
                }
            }
            "sslrootcert" => settings.root_cert = Some(value.into()),
            "sslcert" => settings.client_cert = Some(value.into()),
            _ => settings.client_key = Some(value.into()),
        }
    }
    if settings.mode == SslMode::Require && settings.root_cert.is_some() {
        settings.mode = SslMode::VerifyCa;
    }
    if settings.client_cert.is_some() != settings.client_key.is_some() {
        return Err(PostgresError::Tls(
            "sslcert and sslkey go together: give both for a client certificate".into(),
        ));
    }
    Ok((rest, settings))
}

fn percent_decode(text: &str) -> Result<String, PostgresError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else {
                return Err(PostgresError::Tls(format!("bad percent-encoding in {text:?}")));
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PostgresError::Tls(format!("{text:?} is not UTF-8")))
}

/// The rustls client for `settings` (with the ring provider the whole relay uses).
pub(crate) fn client_config(settings: &TlsSettings) -> Result<ClientConfig, PostgresError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| PostgresError::Tls(format!("TLS setup failed: {e}")))?;
    let builder = match settings.mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Unverified { provider }))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(settings)?);
            let chain = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| PostgresError::Tls(format!("TLS setup failed: {e}")))?;
            if settings.mode == SslMode::VerifyCa {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly { chain }))
            } else {
                builder.with_webpki_verifier(chain)
            }
        }
    };
    match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| PostgresError::Tls(format!("cannot read sslcert {cert:?}: {e}")))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| PostgresError::Tls(format!("cannot read sslkey {key:?}: {e}")))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                PostgresError::Tls(format!("sslcert and sslkey do not make a client identity: {e}"))
            })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `sslrootcert`'s certificates, or the Mozilla roots.
fn roots(settings: &TlsSettings) -> Result<RootCertStore, PostgresError> {
    let mut store = RootCertStore::empty();
    let Some(path) = &settings.root_cert else {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| PostgresError::Tls(format!("cannot read sslrootcert {path:?}: {e}")))?;
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(PostgresError::Tls(format!("sslrootcert {path:?} holds no CA certificate")));
    }
    Ok(store)
}

/// `require`/`prefer`: any certificate, but a handshake signed by its key.
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly {
    chain: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The replication client's TLS settings for the same connection string.
pub(crate) fn replication(settings: &TlsSettings) -> pgwire_replication::TlsConfig {
    use pgwire_replication::config::SslMode as Wire;
    let mode = match settings.mode {
        SslMode::Disable => Wire::Disable,
        SslMode::Prefer => Wire::Prefer,
        SslMode::Require => Wire::Require,
        SslMode::VerifyCa => Wire::VerifyCa,
        SslMode::VerifyFull => Wire::VerifyFull,
    };
    let mut tls = pgwire_replication::TlsConfig {
        mode,
        ca_pem_path: settings.root_cert.clone(),
        ..pgwire_replication::TlsConfig::default()
    };
    if let (Some(cert), Some(key)) = (&settings.client_cert, &settings.client_key) {
        tls = tls.with_client_cert(cert, key);
    }
    tls
}

/// Whether `host` is this machine (plaintext to it crosses no network).
pub(crate) fn is_local(host: &str) -> bool {
    host == "localhost"
        || host.starts_with('/')
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_urls_and_key_value_strings() {
        let (rest, tls) = split(
            "postgres://relay@db.internal/app?sslmode=verify-full&application_name=x\
             &sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://relay@db.internal/app?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some("/etc/ca.pem".into()));

        let (rest, tls) =
            split("host=db user=relay sslmode=require sslcert=/c.pem sslkey='/k.pem'").unwrap();
        assert_eq!(rest, "host=db user=relay");
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(tls.client_key, Some("/k.pem".into()));

        let (rest, tls) = split("postgres://db/app").unwrap();
        assert_eq!((rest.as_str(), tls.mode), ("postgres://db/app", SslMode::Prefer));
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
        let (_, tls) = split("postgres://db/app?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
    }

    #[test]
    fn bad_tls_parameters_are_explained() {
        let err = split("postgres://db/app?sslmode=verify").unwrap_err().to_string();
        assert!(err.contains("sslmode \"verify\" is not one of"), "{err}");
        let err = split("postgres://db/app?sslcert=/c.pem").unwrap_err().to_string();
        assert!(err.contains("sslcert and sslkey go together"), "{err}");
        let settings = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsSettings::default()
        };
        let err = client_config(&settings).unwrap_err().to_string();
        assert!(err.contains("cannot read sslrootcert \"/nonexistent/ca.pem\""), "{err}");
    }

    #[test]
    fn loopback_hosts_are_local() {
        for host in ["localhost", "127.0.0.1", "::1", "/var/run/postgresql"] {
            assert!(is_local(host), "{host}");
        }
        for host in ["db.internal", "10.0.0.5"] {
            assert!(!is_local(host), "{host}");
        }
    }
}
