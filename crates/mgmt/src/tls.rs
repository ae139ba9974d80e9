//! TLS for the management API, server side and (for cgnatctl and tests) client side.
//!
//! tonic's own PEM handling reports every problem as "error parsing TLS certificate", skips
//! files without any PEM block and only finds a key that does not match its certificate when the
//! server is built. The checks here run the same rustls code up front, so a bad file is refused
//! when it is loaded with an error that says which of the files is wrong and why.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A client gets this long to finish its TLS handshake. Handshakes run concurrently, so a slow
/// one does not hold up others, but one that never finishes would hold its socket forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which of the PEM inputs is wrong. Each message reads on from the file's name
/// ("/etc/cgnat/mgmt.crt holds no certificate ...").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain (the server's, or a client's own).
    #[error("{0}")]
    CertChain(String),
    /// The private key that goes with the chain.
    #[error("{0}")]
    Key(String),
    /// The certificate and key read fine but are no pair (or the key type is unsupported).
    #[error("{0}")]
    KeyMismatch(String),
    /// The CA certificates: the server's `client_ca`, or a client's trust anchors.
    #[error("{0}")]
    Ca(String),
}

/// The server's TLS material, checked by [`TlsConfig::from_pem`]. Debug never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    cert_chain: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field(
                "cert_chain",
                &format_args!("<{} bytes>", self.cert_chain.len()),
            )
            .field("key", &"<secret>")
            .field("client_certificates", &self.requires_client_cert())
            .finish()
    }
}

impl TlsConfig {
    /// The server's certificate chain (leaf first) and private key, both PEM, and optionally the
    /// PEM CA certificates that client certificates must chain to. With `client_ca`, a client
    /// without such a certificate fails the handshake.
    pub fn from_pem(
        cert_chain: Vec<u8>,
        key: Vec<u8>,
        client_ca: Option<Vec<u8>>,
    ) -> Result<TlsConfig, TlsError> {
        check_pair(&cert_chain, &key)?;
        if let Some(ca) = &client_ca {
            let roots = Arc::new(roots(ca)?);
            // What tonic builds from it later, so a CA it would refuse is refused here.
            WebPkiClientVerifier::builder_with_provider(roots, Arc::new(provider()))
                .build()
                .map_err(|e| TlsError::Ca(format!("cannot be used to verify clients: {e}")))?;
        }
        Ok(TlsConfig {
            cert_chain,
            key,
            client_ca,
        })
    }

    /// Whether clients must present a certificate signed by `client_ca`.
    pub fn requires_client_cert(&self) -> bool {
        self.client_ca.is_some()
    }

    pub(crate) fn server_tls_config(&self) -> ServerTlsConfig {
        let mut cfg = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_chain, &self.key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            cfg = cfg.client_ca_root(Certificate::from_pem(ca));
        }
        cfg
    }
}

/// A client's TLS settings with the same checks: `ca` (PEM) are the trust anchors for the
/// server's certificate (none: the caller adds its own, e.g. the system's), `identity` the
/// client's PEM certificate chain and key for a server that wants one.
pub fn client_tls_config(
    ca: Option<&[u8]>,
    identity: Option<(&[u8], &[u8])>,
) -> Result<ClientTlsConfig, TlsError> {
    let mut cfg = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = ca {
        roots(ca)?;
        cfg = cfg.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert_chain, key)) = identity {
        check_pair(cert_chain, key)?;
        cfg = cfg.identity(Identity::from_pem(cert_chain, key));
    }
    Ok(cfg)
}

/// The crypto provider tonic is built with here (`tls-ring`).
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn certificates(pem_text: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&e))?;
    if certs.is_empty() {
        return Err("holds no certificate (no `-----BEGIN CERTIFICATE-----` block)".into());
    }
    Ok(certs)
}

fn roots(pem_text: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates(pem_text)
        .map_err(TlsError::Ca)?
        .into_iter()
        .enumerate()
    {
        roots.add(cert).map_err(|e| {
            TlsError::Ca(format!(
                "holds certificate {} that is not usable as a CA: {e}",
                i + 1
            ))
        })?;
    }
    Ok(roots)
}

/// The chain parses, the key parses, and the key is the one the leaf certificate was issued for.
fn check_pair(cert_chain: &[u8], key: &[u8]) -> Result<(), TlsError> {
    let certs = certificates(cert_chain).map_err(TlsError::CertChain)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::Key(
            "holds no private key (no `-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)"
                .into(),
        ),
        e => TlsError::Key(pem_error(&e)),
    })?;
    CertifiedKey::from_der(certs, key, &provider())
        .map(drop)
        .map_err(|e| {
            TlsError::KeyMismatch(format!(
                "is not the key of the chain's first certificate: {e}"
            ))
        })
}

fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "is not valid PEM: `{}` is missing",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "is not valid PEM: malformed line `{}`",
            String::from_utf8_lossy(line)
        ),
        e => format!("is not valid PEM: {e}"),
    }
}

#[cfg(test)]
pub(crate) mod testpki {
    //! Certificates made at test time: a CA, a server certificate for `localhost` and 127.0.0.1,
    //! a client certificate from the same CA, and a second CA with a client certificate of its
    //! own.

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    /// A certificate chain and its key, PEM.
    pub struct Pair {
        pub cert: String,
        pub key: String,
    }

    pub struct Ca {
        pub cert: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        pub fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap().pem();
            Ca {
                cert,
                issuer: Issuer::new(params, key),
            }
        }

        fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pair {
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, names[0]);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap().pem();
            Pair {
                cert,
                key: key.serialize_pem(),
            }
        }

        pub fn server(&self) -> Pair {
            self.issue(
                &["localhost", "127.0.0.1"],
                ExtendedKeyUsagePurpose::ServerAuth,
            )
        }

        pub fn client(&self, name: &str) -> Pair {
            self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testpki::Ca;
    use super::*;

    #[test]
    fn good_material_is_accepted_and_the_key_is_never_printed() {
        let ca = Ca::new("test CA");
        let server = ca.server();
        let tls = TlsConfig::from_pem(
            server.cert.clone().into(),
            server.key.clone().into(),
            Some(ca.cert.clone().into()),
        )
        .unwrap();
        assert!(tls.requires_client_cert());
        let shown = format!("{tls:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        let no_ca =
            TlsConfig::from_pem(server.cert.clone().into(), server.key.into(), None).unwrap();
        assert!(!no_ca.requires_client_cert());
        let client = ca.client("monitor");
        client_tls_config(
            Some(ca.cert.as_bytes()),
            Some((client.cert.as_bytes(), client.key.as_bytes())),
        )
        .unwrap();
    }

    #[test]
    fn each_bad_input_is_named() {
        let ca = Ca::new("test CA");
        let server = ca.server();
        let other = ca.client("other");
        let from = |cert: &str, key: &str, client_ca: Option<&str>| {
            TlsConfig::from_pem(
                cert.as_bytes().to_vec(),
                key.as_bytes().to_vec(),
                client_ca.map(|c| c.as_bytes().to_vec()),
            )
            .unwrap_err()
        };
        // Certificate and key swapped: no certificate where one belongs.
        let e = from(&server.key, &server.cert, None);
        assert!(
            matches!(&e, TlsError::CertChain(m) if m.contains("no certificate")),
            "{e:?}"
        );
        let e = from(&server.cert, "not a key\n", None);
        assert!(
            matches!(&e, TlsError::Key(m) if m.contains("no private key")),
            "{e:?}"
        );
        let truncated = &server.cert[..server.cert.len() - 30];
        let e = from(truncated, &server.key, None);
        assert!(
            matches!(&e, TlsError::CertChain(m) if m.contains("not valid PEM")),
            "{e:?}"
        );
        // A key of another certificate.
        let e = from(&server.cert, &other.key, None);
        assert!(matches!(e, TlsError::KeyMismatch(_)), "{e:?}");
        let e = from(&server.cert, &server.key, Some("nothing here"));
        assert!(
            matches!(&e, TlsError::Ca(m) if m.contains("no certificate")),
            "{e:?}"
        );
        let e = client_tls_config(Some(b"".as_slice()), None).unwrap_err();
        assert!(matches!(e, TlsError::Ca(_)), "{e:?}");
        let e = client_tls_config(None, Some((other.cert.as_bytes(), server.key.as_bytes())))
            .unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch(_)), "{e:?}");
    }
}
