//! TLS for tokio-postgres with rustls, verifying as libpq's `sslmode` says: nothing
//! (`prefer`, `require`), the certificate chain (`verify-ca`), or the chain and the host name
//! (`verify-full`). Handshake failures are told in words an operator can act on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing (encryption without authentication: `prefer`, `require`).
    None,
    /// The chain up to a trusted CA (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// Makes rustls sessions for tokio-postgres; cheap to clone (one shared `ClientConfig`).
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
    verify: Verify,
    /// Where the trusted CAs come from, for messages.
    roots_from: Arc<str>,
    /// Under `verify-ca`: a DNS name of the last server certificate whose chain was verified.
    verified_name: Arc<std::sync::Mutex<Option<String>>>,
}

impl std::fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MakeRustls")
            .field("verify", &self.verify)
            .field("roots_from", &self.roots_from)
            .finish_non_exhaustive()
    }
}

impl MakeRustls {
    /// `roots` are the trusted CAs (ignored for [`Verify::None`]); `client` a certificate
    /// chain and key to present.
    pub fn new(
        verify: Verify,
        roots: rustls::RootCertStore,
        roots_from: &str,
        client: Option<(
            Vec<CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        )>,
    ) -> Result<MakeRustls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let verified_name = Arc::new(std::sync::Mutex::new(None));
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let builder = match verify {
            Verify::Full => builder.with_root_certificates(roots.clone()),
            Verify::Chain | Verify::None => {
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots.clone(),
                    provider.clone(),
                )
                .build();
                let inner = match (verify, webpki) {
                    (Verify::Chain, Ok(inner)) => Some(inner),
                    (Verify::Chain, Err(e)) => return Err(format!("TLS set-up: {e}")),
                    _ => None,
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Lenient {
                        inner,
                        provider,
                        verified_name: verified_name.clone(),
                    }))
            }
        };
        let config = match client {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!("the client certificate (sslcert, sslkey) is unusable: {e}")
            })?,
            None => builder.with_no_client_auth(),
        };
        Ok(MakeRustls {
            config: Arc::new(config),
            verify,
            roots_from: roots_from.into(),
            verified_name,
        })
    }

    /// Under `verify-ca`, a DNS name the server's certificate is valid for, once a handshake
    /// verified its chain (for a second connection that can only verify chain and name).
    pub fn verified_name(&self) -> Option<String> {
        self.verified_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a host name TLS can verify"),
            )
        })?;
        Ok(RustlsConnect {
            maker: self.clone(),
            host: host.to_owned(),
            name,
        })
    }
}

/// One handshake, to `host`.
pub struct RustlsConnect {
    maker: MakeRustls,
    host: String,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.maker.config.clone());
        Box::pin(async move {
            match connector.connect(self.name, stream).await {
                Ok(stream) => Ok(RustlsStream(Box::new(stream))),
                Err(err) => Err(explain(&err, &self.host, &self.maker)),
            }
        })
    }
}

/// What went wrong in a handshake, in words that say what to change.
fn explain(err: &io::Error, host: &str, maker: &MakeRustls) -> io::Error {
    let rustls_error = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let message = match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not signed by a trusted CA (unknown CA; trusted: {}); set sslrootcert to the CA that signed it",
                maker.roots_from
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate is not valid for the host name {host} (host name mismatch); connect by a name the certificate lists, or use sslmode=verify-ca"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clocks)".to_owned()
            }
            other => format!("the server's certificate was refused: {other:?}"),
        },
        Some(other) => format!("TLS handshake with {host} failed: {other}"),
        None => format!("TLS handshake with {host} failed: {err}"),
    };
    io::Error::new(io::ErrorKind::InvalidData, TlsFailure(message))
}

/// A failed handshake: the operator's to fix (a CA, a host name, a certificate).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsFailure(pub String);

/// Verifies the chain only (`inner`), or nothing (`inner` absent); handshake signatures are
/// always checked.
#[derive(Debug)]
struct Lenient {
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    // A std Mutex: set once per handshake, never held across an await.
    verified_name: Arc<std::sync::Mutex<Option<String>>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        let verified =
            match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => ServerCertVerified::assertion(),
                other => other?,
            };
        // A wildcard name stands for any one label: check one under it.
        let name = webpki::EndEntityCert::try_from(end_entity)
            .ok()
            .and_then(|cert| cert.valid_dns_names().next().map(str::to_owned))
            .map(|name| match name.strip_prefix("*.") {
                Some(domain) => format!("viewcast.{domain}"),
                None => name,
            });
        if name.is_some() {
            *self
                .verified_name
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = name;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS session to the database.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // tls-server-end-point binding is not offered: SCRAM runs without channel binding
        // (`channel_binding=prefer`, tokio-postgres's default, falls back to it).
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
