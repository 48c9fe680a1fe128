//! Encryption with nothing to provision.
//!
//! Every connection of a cluster with a token is TLS 1.3, both ways
//! authenticated. The trust comes from the token itself: the cluster's CA
//! key is derived from it ([`ClusterCa::from_token`]), so every holder of
//! the token (the head, each worker, each driver) can rebuild the same CA,
//! issue itself a certificate, and verify its peers' certificates, and
//! nobody without the token can do either. There is no file to copy and
//! no certificate to renew: the join material is the token, as before.
//!
//! - The head serves a certificate for [`HEAD_NAME`], each worker's object
//!   store one for [`STORE_NAME`], and every client presents one for
//!   [`CLIENT_NAME`]. All are issued from the derived CA at process start.
//! - A server requires a client certificate from the CA: a connection
//!   from someone without the token ends in the handshake, before any
//!   request, so it costs a handshake and nothing more.
//! - A head may serve a certificate of its own instead (`--tls-cert`):
//!   clients then check it against the CA they were given
//!   (`SHOAL_TLS_CA` / `--tls-ca`). An ordinary self-signed certificate
//!   given as its own CA is accepted when it is exactly the one served.
//!
//! Failures are typed ([`TlsProblem`]) and say what is wrong: an untrusted
//! CA, a name mismatch, an expired certificate, or a wrong token.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The name in the head's certificate when the cluster CA issues it.
pub const HEAD_NAME: &str = "shoal-head";
/// The name in every worker object store's certificate.
pub const STORE_NAME: &str = "shoal-store";
/// The name in the certificate a client presents.
pub const CLIENT_NAME: &str = "shoal-client";

/// Why TLS could not be set up or a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsProblem {
    /// The server's certificate is not from the CA this side derives from
    /// its token: the token differs from the server's (or the head serves
    /// a certificate of its own and no CA was given for it).
    #[error(
        "the server's certificate is not from this cluster's CA, which the token derives: the cluster token is wrong \
         (or the head serves its own certificate: then give its CA with --tls-ca or SHOAL_TLS_CA)"
    )]
    WrongToken,
    /// The server refused this side's certificate: it has another token.
    #[error("the server refused this client's certificate: the cluster token is wrong")]
    RefusedByServer,
    /// The server speaks TLS and this side has no token to join it with.
    #[error("missing cluster token: the server encrypts with the cluster's CA, which only the token opens; pass --token/--token-file or set SHOAL_TOKEN")]
    NeedsToken,
    /// The certificate does not chain to the CA that was given.
    #[error("untrusted CA: the head's certificate is not signed by the CA in {ca}")]
    UntrustedCa {
        /// The CA file given.
        ca: String,
    },
    /// The certificate is valid, but not for the name connected to.
    #[error("name mismatch: {detail}")]
    NameMismatch {
        /// Which names were expected and presented.
        detail: String,
    },
    /// The certificate has expired.
    #[error("the server's certificate has expired ({detail})")]
    Expired {
        /// When, against which clock.
        detail: String,
    },
    /// The certificate is not valid yet (a clock is off?).
    #[error("the server's certificate is not valid yet ({detail}): is a clock wrong?")]
    NotYetValid {
        /// When it starts.
        detail: String,
    },
    /// A CA or certificate file cannot be read or parsed.
    #[error("{0}")]
    BadFile(String),
    /// Anything else the handshake reported.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
}

fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// The certificate, then its issuers.
    pub chain: Vec<CertificateDer<'static>>,
    /// The certificate's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl Identity {
    /// Reads a PEM certificate chain and its PEM private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsProblem> {
        use rustls::pki_types::pem::PemObject;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(|e| TlsProblem::BadFile(format!("the certificate is not PEM: {e}")))?;
        if chain.is_empty() {
            return Err(TlsProblem::BadFile("the certificate file holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsProblem::BadFile(format!("the private key is not PEM: {e}")))?;
        Ok(Self { chain, key })
    }
}

/// The cluster's CA, derived from its token.
pub struct ClusterCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert: CertificateDer<'static>,
}

fn ca_params() -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "Shoal");
    dn.push(rcgen::DnType::CommonName, "Shoal cluster CA");
    p.distinguished_name = dn;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(4000, 1, 1);
    p
}

impl ClusterCa {
    /// The CA every holder of `token` derives: an Ed25519 key whose seed is
    /// the token's BLAKE3 key derivation under a fixed context.
    pub fn from_token(token: &str) -> Result<Self, TlsProblem> {
        let seed = blake3::derive_key("shoal 2026 cluster CA key v1", token.trim().as_bytes());
        // PKCS#8 v1 of an Ed25519 key: a fixed prefix, then the seed.
        let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        der.extend_from_slice(&seed);
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), &rcgen::PKCS_ED25519)
            .map_err(|e| TlsProblem::Handshake(format!("deriving the cluster CA: {e}")))?;
        let params = ca_params();
        let cert = params.self_signed(&key).map_err(|e| TlsProblem::Handshake(format!("deriving the cluster CA: {e}")))?;
        Ok(Self { cert: cert.der().clone(), issuer: rcgen::Issuer::new(params, key) })
    }

    /// The CA's certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Issues a certificate for `name`, valid from a day ago (clocks
    /// differ) for ten years, with a fresh key.
    pub fn issue(&self, name: &str) -> Result<Identity, TlsProblem> {
        let err = |e: rcgen::Error| TlsProblem::Handshake(format!("issuing a certificate for {name}: {e}"));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(err)?;
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(err)?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let now = std::time::SystemTime::now();
        p.not_before = (now - std::time::Duration::from_secs(86_400)).into();
        p.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
        let cert = p.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Identity { chain: vec![cert.der().clone(), self.cert.clone()], key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())) })
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        // The certificate was just made by rcgen: it parses.
        let _ = roots.add(self.cert.clone());
        roots
    }
}

/// The CA and this process's client identity for a token, made once.
struct ForToken {
    ca: ClusterCa,
    client: Identity,
}

fn for_token(token: &str) -> Result<Arc<ForToken>, TlsProblem> {
    type Cache = Mutex<Vec<([u8; 32], Arc<ForToken>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = *blake3::hash(token.trim().as_bytes()).as_bytes();
    let cache = CACHE.get_or_init(Default::default);
    if let Some((_, f)) = cache.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(k, _)| *k == key) {
        return Ok(f.clone());
    }
    let ca = ClusterCa::from_token(token)?;
    let client = ca.issue(CLIENT_NAME)?;
    let made = Arc::new(ForToken { ca, client });
    cache.lock().unwrap_or_else(|p| p.into_inner()).push((key, made.clone()));
    Ok(made)
}

/// What a server presents and whom it admits.
pub fn server_config(token: Option<&str>, own: Option<&Identity>, name: &str) -> Result<Arc<rustls::ServerConfig>, TlsProblem> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsProblem::Handshake(e.to_string()))?;
    let cluster = token.map(for_token).transpose()?;
    let builder = match &cluster {
        Some(c) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(c.ca.roots()), provider())
                .build()
                .map_err(|e| TlsProblem::Handshake(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let identity = match (own, &cluster) {
        (Some(id), _) => id.clone(),
        (None, Some(c)) => c.ca.issue(name)?,
        (None, None) => return Err(TlsProblem::BadFile("TLS without a cluster token needs a certificate of its own (--tls-cert)".into())),
    };
    let mut cfg =
        builder.with_single_cert(identity.chain, identity.key).map_err(|e| TlsProblem::BadFile(format!("the certificate and key do not go together: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Where a client connects and how it checks what answers.
#[derive(Clone, Debug)]
pub enum Peer {
    /// The head, at `host`.
    Head {
        /// Host part of the address (checked in a certificate of the head's own).
        host: String,
    },
    /// A worker's object store.
    Store,
}

/// A CA (or a self-signed certificate) given for a head serving its own
/// certificate: `SHOAL_TLS_CA`, else `tls-ca.pem` in the session dir.
pub fn own_ca_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(crate::client::ENV_TLS_CA).filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    Some(shoal_domain::paths::session_home().join("tls-ca.pem")).filter(|p| p.is_file())
}

/// A client configuration for `peer`, with `token`'s cluster identity.
pub fn client_config(token: Option<&str>, peer: &Peer) -> Result<Arc<rustls::ClientConfig>, TlsProblem> {
    let cluster = token.map(for_token).transpose()?;
    let own = match peer {
        Peer::Head { host } => match own_ca_path() {
            Some(path) => Some(OwnCa::load(&path, host)?),
            None => None,
        },
        Peer::Store => None,
    };
    if cluster.is_none() && own.is_none() {
        return Err(TlsProblem::BadFile(format!(
            "TLS without a cluster token needs the head's CA certificate: set {} or pass --tls-ca",
            crate::client::ENV_TLS_CA
        )));
    }
    let expected = match peer {
        Peer::Head { .. } => HEAD_NAME,
        Peer::Store => STORE_NAME,
    };
    let cluster_verifier = match &cluster {
        Some(c) => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(c.ca.roots()), provider())
                .build()
                .map_err(|e| TlsProblem::Handshake(format!("server verifier: {e}")))?,
        ),
        None => None,
    };
    let verifier = Verifier { cluster: cluster_verifier, cluster_name: server_name(expected)?, own };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsProblem::Handshake(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match &cluster {
        Some(c) => builder
            .with_client_auth_cert(c.client.chain.clone(), c.client.key.clone_key())
            .map_err(|e| TlsProblem::Handshake(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

fn server_name(host: &str) -> Result<ServerName<'static>, TlsProblem> {
    ServerName::try_from(host.trim_matches(['[', ']']).to_string()).map_err(|_| TlsProblem::BadFile(format!("{host:?} is not a host name or IP address")))
}

/// The CA given for a head with its own certificate.
#[derive(Debug)]
struct OwnCa {
    verifier: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    /// The given certificates themselves: an ordinary self-signed
    /// certificate is accepted when it is exactly what the head serves.
    pinned: Vec<CertificateDer<'static>>,
    name: ServerName<'static>,
}

impl OwnCa {
    fn load(path: &Path, host: &str) -> Result<Self, TlsProblem> {
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(path).map_err(|e| TlsProblem::BadFile(format!("reading the CA file {}: {e}", path.display())))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsProblem::BadFile(format!("the CA file {} is not PEM: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(TlsProblem::BadFile(format!("the CA file {} holds no certificate", path.display())));
        }
        let mut roots = RootCertStore::empty();
        let (_, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
        let verifier =
            if roots.is_empty() { None } else { rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().ok() };
        let name = std::env::var(crate::client::ENV_TLS_DOMAIN).ok().filter(|d| !d.is_empty()).unwrap_or_else(|| host.to_string());
        Ok(Self { verifier, pinned: certs, name: server_name(&name)? })
    }

    fn verify(&self, ee: &CertificateDer<'_>, inter: &[CertificateDer<'_>], ocsp: &[u8], now: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|p| p.as_ref() == ee.as_ref()) {
            check_validity(ee, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        match &self.verifier {
            Some(v) => v.verify_server_cert(ee, inter, &self.name, ocsp, now),
            None => Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        }
    }
}

/// The validity window of a pinned certificate (webpki checks it for
/// chained ones).
fn check_validity(der: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now_s = now.as_secs() as i64;
    let v = cert.validity();
    if now_s > v.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            time: now,
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(v.not_after.timestamp().max(0) as u64)),
        }));
    }
    if now_s < v.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
            time: now,
            not_before: UnixTime::since_unix_epoch(std::time::Duration::from_secs(v.not_before.timestamp().max(0) as u64)),
        }));
    }
    Ok(())
}

/// Handshake signatures, checked as the provider does (both verifiers).
fn tls12(message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

fn tls13(message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

fn schemes() -> Vec<SignatureScheme> {
    provider().signature_verification_algorithms.supported_schemes()
}

#[derive(Debug)]
struct Verifier {
    cluster: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    cluster_name: ServerName<'static>,
    own: Option<OwnCa>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let from_cluster = self.cluster.as_ref().map(|v| v.verify_server_cert(end_entity, intermediates, &self.cluster_name, ocsp_response, now));
        match (from_cluster, &self.own) {
            (Some(Ok(v)), _) => Ok(v),
            (_, Some(own)) => own.verify(end_entity, intermediates, ocsp_response, now),
            (Some(Err(e)), None) => Err(e),
            (None, None) => Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// What a failed client handshake means, for the user.
pub fn explain(e: &rustls::Error, own_ca: Option<&Path>) -> TlsProblem {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => match own_ca {
                Some(p) => TlsProblem::UntrustedCa { ca: p.display().to_string() },
                None => TlsProblem::WrongToken,
            },
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => TlsProblem::NameMismatch { detail: c.to_string() },
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => TlsProblem::Expired { detail: c.to_string() },
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => TlsProblem::NotYetValid { detail: c.to_string() },
            other => TlsProblem::Handshake(format!("the server's certificate is not acceptable: {other}")),
        },
        rustls::Error::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateRequired | A::DecryptError) => TlsProblem::RefusedByServer,
        other => TlsProblem::Handshake(other.to_string()),
    }
}

/// Whether the server at `host:port` answers a TLS hello with a
/// certificate: how a client without a token tells "this cluster needs a
/// token" from "nothing answers" (plaintext to a TLS server fails with
/// only a transport error). Nothing is trusted or sent past the hello.
pub async fn speaks_tls(host: &str, port: u16, timeout: std::time::Duration) -> bool {
    #[derive(Debug)]
    struct Probe(Arc<std::sync::atomic::AtomicBool>);
    impl ServerCertVerifier for Probe {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            Err(rustls::Error::General("probe only".into()))
        }
        fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
            tls12(m, c, d)
        }
        fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
            tls13(m, c, d)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            schemes()
        }
    }
    let saw = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13]) else {
        return false;
    };
    let cfg = builder.dangerous().with_custom_certificate_verifier(Arc::new(Probe(saw.clone()))).with_no_client_auth();
    let probe = async {
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await.ok()?;
        let name = ServerName::try_from(HEAD_NAME).ok()?;
        let _ = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await;
        Some(())
    };
    let _ = tokio::time::timeout(timeout, probe).await;
    saw.load(std::sync::atomic::Ordering::Relaxed)
}

/// The rustls error inside an I/O error from a handshake, if any.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_token_derives_the_same_ca_and_another_token_another() {
        let a = ClusterCa::from_token("secret-a").unwrap();
        let a2 = ClusterCa::from_token("secret-a\n").unwrap();
        let b = ClusterCa::from_token("secret-b").unwrap();
        let spki = |c: &ClusterCa| x509_parser::parse_x509_certificate(c.certificate().as_ref()).unwrap().1.public_key().raw.to_vec();
        assert_eq!(spki(&a), spki(&a2), "a token read from a file (with its newline) is the same token");
        assert_ne!(spki(&a), spki(&b));
    }

    #[test]
    fn a_certificate_issued_under_one_token_verifies_only_under_that_token() {
        let a = ClusterCa::from_token("secret-a").unwrap();
        let head = a.issue(HEAD_NAME).unwrap();
        let now = UnixTime::now();
        let verify = |token: &str, name: &str| {
            let ca = ClusterCa::from_token(token).unwrap();
            let v = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(ca.roots()), provider()).build().unwrap();
            v.verify_server_cert(&head.chain[0], &head.chain[1..], &server_name(name).unwrap(), &[], now).map(|_| ())
        };
        verify("secret-a", HEAD_NAME).unwrap();
        let wrong = verify("secret-b", HEAD_NAME).unwrap_err();
        assert_eq!(explain(&wrong, None), TlsProblem::WrongToken);
        let misnamed = verify("secret-a", STORE_NAME).unwrap_err();
        assert!(matches!(explain(&misnamed, None), TlsProblem::NameMismatch { .. }), "{misnamed:?}");
    }

    #[test]
    fn configs_build_for_every_role() {
        server_config(Some("t"), None, HEAD_NAME).unwrap();
        server_config(Some("t"), None, STORE_NAME).unwrap();
        client_config(Some("t"), &Peer::Store).unwrap();
        assert!(matches!(server_config(None, None, HEAD_NAME), Err(TlsProblem::BadFile(_))));
    }
}
