//! Connections to the databases viewcast reads and writes — PostgreSQL, Materialize,
//! RisingWave and its own store — all over the PostgreSQL protocol, all through here.
//!
//! A connection string is read as libpq reads it: `sslmode` (`disable`, `allow`, `prefer` —
//! the default —, `require`, `verify-ca`, `verify-full`), `sslrootcert` (a PEM file, or
//! `system` for the operating system's trusted CAs), `sslcert` and `sslkey` (a client
//! certificate), from the URL or else from `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and
//! `PGSSLKEY`. Every connection, plain or replication, uses the same settings with rustls.
//! Nothing here ever puts a password in a message: [`redact`] is what logs and errors show.

mod tls;
mod url;

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use tls::{MakeRustls, RustlsStream, TlsFailure, Verify};
use tokio_postgres::config::SslMode as PgSslMode;
pub use url::redact;

/// A connection as tokio-postgres drives it.
pub type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, RustlsStream<tokio_postgres::Socket>>;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, DbUrlError> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(DbUrlError::Invalid(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted CAs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The operating system's CA bundle (`sslrootcert=system`).
    System(PathBuf),
}

impl RootCert {
    fn path(&self) -> &Path {
        match self {
            RootCert::File(path) | RootCert::System(path) => path,
        }
    }
}

/// Why a connection string cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DbUrlError {
    #[error("invalid connection string ({0})")]
    Invalid(String),
    #[error("{0}")]
    Tls(String),
}

/// A database to connect to: tokio-postgres's settings and the TLS that goes with them.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    mode: SslMode,
    root_cert: Option<RootCert>,
    client_cert: Option<(PathBuf, PathBuf)>,
    tls: MakeRustls,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres's Config prints no password.
        f.debug_struct("Database")
            .field("config", &self.config)
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

/// What the `PGSSL*` environment variables say (the URL's own settings win).
#[derive(Debug, Clone, Default)]
pub struct SslEnv {
    pub mode: Option<String>,
    pub root_cert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    /// The home directory, for libpq's default files (`~/.postgresql/root.crt`, …).
    pub home: Option<PathBuf>,
}

impl SslEnv {
    /// This process's environment.
    pub fn from_process() -> SslEnv {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        SslEnv {
            mode: var("PGSSLMODE"),
            root_cert: var("PGSSLROOTCERT"),
            cert: var("PGSSLCERT"),
            key: var("PGSSLKEY"),
            home: var("HOME").map(PathBuf::from),
        }
    }
}

impl Database {
    /// Reads `url` with this process's `PGSSL*` environment.
    pub fn parse(url: &str) -> Result<Database, DbUrlError> {
        Database::parse_with(url, &SslEnv::from_process())
    }

    /// Reads `url`; TLS settings it does not name come from `env`, as libpq's do.
    pub fn parse_with(url: &str, env: &SslEnv) -> Result<Database, DbUrlError> {
        let (rest, params) = url::split(url).map_err(DbUrlError::Invalid)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| DbUrlError::Invalid(error_text(&e)))?;
        let root_text = params.root_cert.or_else(|| env.root_cert.clone());
        let system = root_text.as_deref() == Some("system");
        let mode = match params.mode.or_else(|| env.mode.clone()) {
            Some(text) => SslMode::parse(&text)?,
            // libpq: sslrootcert=system makes verify-full the default.
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if system && mode != SslMode::VerifyFull {
            return Err(DbUrlError::Invalid(format!(
                "sslmode={} may not be used with sslrootcert=system (use verify-full)",
                mode.as_str()
            )));
        }
        let default_file = |name: &str| {
            env.home
                .as_ref()
                .map(|home| home.join(".postgresql").join(name))
                .filter(|path| path.is_file())
        };
        let root_cert = match root_text {
            Some(text) if text == "system" => Some(RootCert::System(system_bundle()?)),
            Some(text) => Some(RootCert::File(PathBuf::from(text))),
            None => default_file("root.crt").map(RootCert::File),
        };
        let verify = match mode {
            // libpq: with a root certificate, require checks the chain as verify-ca does.
            SslMode::Require if root_cert.is_some() => Verify::Chain,
            SslMode::Disable | SslMode::Allow | SslMode::Prefer | SslMode::Require => Verify::None,
            SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::Full,
        };
        if verify != Verify::None && root_cert.is_none() {
            return Err(DbUrlError::Tls(format!(
                "sslmode={} needs trusted CAs: set sslrootcert to a PEM file of them (or to system for the operating system's), or put them in ~/.postgresql/root.crt",
                mode.as_str()
            )));
        }
        let client_cert = match (
            params.cert.or_else(|| env.cert.clone()).map(PathBuf::from),
            params.key.or_else(|| env.key.clone()).map(PathBuf::from),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(_), None) | (None, Some(_)) => {
                return Err(DbUrlError::Tls(
                    "sslcert and sslkey go together: give both or neither".into(),
                ));
            }
            (None, None) => default_file("postgresql.crt").zip(default_file("postgresql.key")),
        };
        let roots = match (&root_cert, verify) {
            (Some(root), Verify::Chain | Verify::Full) => load_roots(root.path())?,
            _ => rustls::RootCertStore::empty(),
        };
        let client = match &client_cert {
            Some((cert, key)) => Some(load_client(cert, key)?),
            None => None,
        };
        let roots_from = root_cert
            .as_ref()
            .map_or_else(|| "none".to_owned(), |r| r.path().display().to_string());
        let tls = MakeRustls::new(verify, roots, &roots_from, client).map_err(DbUrlError::Tls)?;
        let unix_only = config
            .get_hosts()
            .iter()
            .all(|host| matches!(host, tokio_postgres::config::Host::Unix(_)));
        config.ssl_mode(match mode {
            // libpq ignores sslmode on Unix sockets (the server offers no TLS there).
            _ if unix_only && !config.get_hosts().is_empty() => PgSslMode::Disable,
            SslMode::Disable => PgSslMode::Disable,
            // tokio-postgres has no `allow` (plain first, TLS if the server insists): it tries
            // TLS first, as `prefer` does.
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        Ok(Database {
            config,
            mode,
            root_cert,
            client_cert,
            tls,
        })
    }

    /// tokio-postgres's settings (host, port, user, …), with the TLS mode it must use.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// The TLS connector for tokio-postgres (and deadpool-postgres).
    pub fn tls(&self) -> MakeRustls {
        self.tls.clone()
    }

    /// Opens a connection; drive the returned [`Connection`] (spawn it) for the client to work.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }

    /// The same settings for a replication connection (`pgwire-replication`).
    pub fn replication_tls(&self, host: &str) -> pgwire_replication::TlsConfig {
        use pgwire_replication::SslMode as Rep;
        let mode = match self.mode {
            _ if host.starts_with('/') => Rep::Disable,
            SslMode::Disable => Rep::Disable,
            SslMode::Allow | SslMode::Prefer => Rep::Prefer,
            SslMode::Require if self.root_cert.is_some() => Rep::VerifyCa,
            SslMode::Require => Rep::Require,
            SslMode::VerifyCa => Rep::VerifyCa,
            SslMode::VerifyFull => Rep::VerifyFull,
        };
        let mut tls = pgwire_replication::TlsConfig {
            mode,
            ca_pem_path: self.root_cert.as_ref().map(|r| r.path().to_path_buf()),
            ..pgwire_replication::TlsConfig::default()
        };
        // It refuses verify-full for an IP address unless told the name to check: the address.
        if host.parse::<std::net::IpAddr>().is_ok() {
            tls.sni_hostname = Some(host.to_owned());
        }
        // Its verify-ca still refuses a certificate for another name (it lets only one of
        // rustls's two name errors pass): check the chain and a name the certificate does
        // hold, learnt when this server's own connection verified the chain.
        if mode == Rep::VerifyCa
            && let Some(name) = self.tls.verified_name()
        {
            tls.mode = Rep::VerifyFull;
            tls.sni_hostname = Some(name);
        }
        if let Some((cert, key)) = &self.client_cert {
            tls.client_cert_pem_path = Some(cert.clone());
            tls.client_key_pem_path = Some(key.clone());
        }
        tls
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Url(#[from] DbUrlError),
    #[error("{}", error_text(.0))]
    Connect(#[source] tokio_postgres::Error),
}

impl ConnectError {
    /// Whether an operator must change something (the URL, a certificate, the server's TLS)
    /// before a retry can succeed.
    pub fn is_setup(&self) -> bool {
        match self {
            ConnectError::Url(_) => true,
            ConnectError::Connect(err) => is_tls_failure(err),
        }
    }
}

/// Reads `url` and opens a connection to it.
pub async fn connect(url: &str) -> Result<(tokio_postgres::Client, Connection), ConnectError> {
    let database = Database::parse(url)?;
    database.connect().await.map_err(ConnectError::Connect)
}

/// The operating system's CA bundle: `SSL_CERT_FILE`, or the first of the usual places.
fn system_bundle() -> Result<PathBuf, DbUrlError> {
    if let Some(path) = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from) {
        return Ok(path);
    }
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|path| path.is_file())
    .ok_or_else(|| {
        DbUrlError::Tls(
            "sslrootcert=system: no CA bundle found on this system (set SSL_CERT_FILE, or sslrootcert to a PEM file)".into(),
        )
    })
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, DbUrlError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| DbUrlError::Tls(format!("cannot read sslrootcert {}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(DbUrlError::Tls(format!(
            "sslrootcert {} holds no CA certificate",
            path.display()
        )));
    }
    Ok(roots)
}

fn load_client(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), DbUrlError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| DbUrlError::Tls(format!("cannot read sslcert {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(DbUrlError::Tls(format!(
            "sslcert {} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| DbUrlError::Tls(format!("cannot read sslkey {}: {e}", key.display())))?;
    Ok((chain, key))
}

/// An error with its causes (tokio-postgres's `Display` leaves them out: "error performing
/// TLS handshake" says nothing of why).
pub fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

/// Whether `err` is a TLS failure an operator must fix (an untrusted or mismatched
/// certificate, a server without TLS where it is required), not a passing network fault.
pub fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(inner) = cause {
        // An io::Error hides the error it wraps from `source()`: look inside.
        let wrapped = inner
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if inner.is::<TlsFailure>()
            || wrapped.is_some_and(<dyn std::error::Error + Send + Sync>::is::<TlsFailure>)
            || inner.to_string() == "server does not support TLS"
        {
            return true;
        }
        cause = inner.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SslEnv {
        SslEnv::default()
    }

    #[test]
    fn prefer_is_the_default_and_the_environment_fills_what_the_url_leaves_out() {
        let db = Database::parse_with("postgres://me@db/app", &env()).expect("parses");
        assert_eq!(db.ssl_mode(), SslMode::Prefer);
        assert_eq!(db.config().get_ssl_mode(), PgSslMode::Prefer);
        let from_env = SslEnv {
            mode: Some("require".into()),
            ..env()
        };
        let db = Database::parse_with("postgres://me@db/app", &from_env).expect("parses");
        assert_eq!(db.ssl_mode(), SslMode::Require);
        assert_eq!(db.config().get_ssl_mode(), PgSslMode::Require);
        let db = Database::parse_with("postgres://me@db/app?sslmode=disable", &from_env)
            .expect("parses");
        assert_eq!(db.config().get_ssl_mode(), PgSslMode::Disable);
    }

    #[test]
    fn verification_needs_trusted_cas_and_system_needs_verify_full() {
        let err = Database::parse_with("postgres://db/app?sslmode=verify-full", &env())
            .expect_err("no CA");
        assert!(err.to_string().contains("sslrootcert"), "{err}");
        let err = Database::parse_with(
            "postgres://db/app?sslmode=require&sslrootcert=system",
            &env(),
        )
        .expect_err("weak mode");
        assert!(err.to_string().contains("verify-full"), "{err}");
        let err = Database::parse_with("postgres://db/app?sslmode=strict", &env())
            .expect_err("unknown mode");
        assert!(err.to_string().contains("sslmode=strict"), "{err}");
        let err = Database::parse_with(
            "postgres://db/app?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
            &env(),
        )
        .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let err = Database::parse_with("postgres://db/app?sslcert=/c.pem", &env())
            .expect_err("cert without key");
        assert!(err.to_string().contains("sslkey"), "{err}");
    }

    #[test]
    fn the_password_is_in_no_error() {
        for url in [
            "postgres://me:hunter2@db/app?sslmode=verify-full",
            "postgres://me:hunter2@db/app?sslmode=bogus",
            "postgres://me:hunter2@db:notaport/app",
            "host=db password=hunter2 sslmode=verify-ca",
        ] {
            let err = Database::parse_with(url, &env()).expect_err("refused");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }
}
