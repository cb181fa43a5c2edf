//! TLS for the metrics APIs: the serving certificate (files the chart mounts from a Secret,
//! re-read when they change), a client certificate asked for but not required (the front
//! proxy presents one, direct clients use bearer tokens) and verified against the request-header
//! CA, and the subject common name of a verified client certificate.
//!
//! A [`Snapshot`] pairs the rustls configuration with the request-header settings it was built
//! from, so a connection's certificate is always judged by the settings that verified it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};

use super::auth::RequestHeaderConfig;

/// Certificate file in the mounted Secret (`kubernetes.io/tls` layout).
pub const CERT_FILE: &str = "tls.crt";
/// Key file in the mounted Secret.
pub const KEY_FILE: &str = "tls.key";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no usable certificate.
    #[error("{path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no usable key.
    #[error("{path} holds no PEM private key: {problem}")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the certificate, key or client CA.
    #[error("failed to build the TLS configuration: {0}")]
    Config(String),
}

/// The serving certificate and key as read from disk.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPairFiles {
    /// PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
}

impl KeyPairFiles {
    /// Reads `tls.crt` and `tls.key` from `directory`.
    pub fn read(directory: &Path) -> Result<KeyPairFiles, TlsError> {
        let read = |name: &str| {
            let path = directory.join(name);
            std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
        };
        Ok(KeyPairFiles {
            cert_pem: read(CERT_FILE)?,
            key_pem: read(KEY_FILE)?,
        })
    }
}

/// One consistent TLS setting: what new connections are accepted with.
pub struct Snapshot {
    /// The rustls configuration.
    pub server: Arc<ServerConfig>,
    /// What verified client certificates mean.
    pub request_header: Arc<RequestHeaderConfig>,
    /// The files the serving certificate came from (to notice a change).
    pub files: KeyPairFiles,
}

/// Builds a snapshot; `directory` only names the files in errors.
pub fn snapshot(
    files: KeyPairFiles,
    request_header: RequestHeaderConfig,
    directory: &Path,
) -> Result<Snapshot, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate {
            path: directory.join(CERT_FILE),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: directory.join(CERT_FILE),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key_pem).map_err(|error| TlsError::NoKey {
        path: directory.join(KEY_FILE),
        problem: error.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let builder = if request_header.client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for certificate in &request_header.client_ca {
            roots
                .add(certificate.clone())
                .map_err(|error| TlsError::Config(format!("request-header CA: {error}")))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            // Direct clients present no certificate and authenticate with a token instead.
            .allow_unauthenticated()
            .build()
            .map_err(|error| TlsError::Config(format!("request-header CA: {error}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Snapshot {
        server: Arc::new(server),
        request_header: Arc::new(request_header),
        files,
    })
}

/// The current snapshot, replaced when the certificate or the request-header settings change;
/// connections keep the snapshot they were accepted with.
pub struct TlsHandle {
    current: RwLock<Arc<Snapshot>>,
}

impl TlsHandle {
    /// Starts with `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        TlsHandle {
            current: RwLock::new(Arc::new(snapshot)),
        }
    }

    /// What a new connection is accepted with.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .expect("the TLS lock is never poisoned")
            .clone()
    }

    /// Replaces the snapshot for connections accepted from now on.
    pub fn replace(&self, snapshot: Snapshot) {
        *self
            .current
            .write()
            .expect("the TLS lock is never poisoned") = Arc::new(snapshot);
    }
}

/// The subject's common name of a DER certificate (the last one, as Go's `pkix.Name` keeps);
/// `None` if there is none or the certificate cannot be walked. Only called on certificates
/// the verifier accepted.
pub fn subject_common_name(certificate: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const VERSION: u8 = 0xa0;
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

    let (tag, certificate, _) = tlv(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = tlv(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    // version? serialNumber signature issuer validity subject
    if tbs.first() == Some(&VERSION) {
        tbs = tlv(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = tlv(tbs)?.2;
    }
    let (tag, mut names, _) = tlv(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut common_name = None;
    while !names.is_empty() {
        let (tag, mut set, rest) = tlv(names)?;
        names = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (tag, attribute, rest) = tlv(set)?;
            set = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = tlv(attribute)?;
            if tag != OID || oid != COMMON_NAME {
                continue;
            }
            let (tag, text, _) = tlv(value)?;
            // UTF8String, PrintableString, IA5String, T61String.
            if matches!(tag, 0x0c | 0x13 | 0x16 | 0x14) {
                common_name = Some(String::from_utf8(text.to_vec()).ok()?);
            }
        }
    }
    common_name
}

/// One DER element: `(tag, contents, rest)`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags do not occur in the fields read
    }
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
        rest = &rest[count..];
        length
    };
    if rest.len() < length {
        return None;
    }
    Some((tag, &rest[..length], &rest[length..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_read_from_the_subject_not_the_issuer() {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "front-proxy-ca");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "front-proxy-client");
        let certificate = params.signed_by(&key, &issuer).expect("signed");
        assert_eq!(
            subject_common_name(certificate.der()).as_deref(),
            Some("front-proxy-client")
        );
        assert_eq!(
            subject_common_name(ca.der()).as_deref(),
            Some("front-proxy-ca")
        );
        assert_eq!(subject_common_name(b"\x30\x03\x02\x01"), None);
        assert_eq!(subject_common_name(&[]), None);
    }

    #[test]
    fn a_directory_without_the_files_says_which_file() {
        let directory = tempfile::tempdir().expect("tempdir");
        let error = KeyPairFiles::read(directory.path()).err().expect("missing");
        assert!(error.to_string().contains("tls.crt"), "{error}");
        std::fs::write(directory.path().join(CERT_FILE), "not a certificate").expect("write");
        std::fs::write(directory.path().join(KEY_FILE), "not a key").expect("write");
        let files = KeyPairFiles::read(directory.path()).expect("read");
        let error = snapshot(files, RequestHeaderConfig::default(), directory.path())
            .err()
            .expect("refused");
        assert!(error.to_string().contains("tls.crt"), "{error}");
    }
}
