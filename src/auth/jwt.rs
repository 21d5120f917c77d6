//! JSON Web Tokens: the key that verifies them — a shared secret, a PEM public key, or the
//! keys of a JWKS URL, cached as its response says and fetched again (at most once every few
//! seconds) when a token names a key the cache does not hold, so keys rotate without a
//! restart. The algorithms a key accepts come from the key, never from the token: a token
//! whose `alg` the key does not have (`none`, or HS256 signed with an RSA public key) is refused.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;
use tokio::sync::Mutex;

use super::AuthError;

/// Where the verifying key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A shared secret (HS256, HS384, HS512).
    Secret(String),
    /// A PEM public key (RSA: `RS*`/`PS*`; EC: `ES256`/`ES384`; Ed25519: `EdDSA`).
    Pem(String),
    /// A JWKS URL.
    Jwks(String),
}

/// What a token must say besides its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    /// `iss` must be this, when set.
    pub issuer: Option<String>,
    /// `aud` must hold one of these, when any is set.
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// A key and the algorithms it verifies.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Verifies tokens against the configured key.
pub struct Verifier {
    source: Source,
    checks: Checks,
}

enum Source {
    Fixed(Key),
    Jwks(Jwks),
}

impl Verifier {
    pub fn new(key: &KeySource, checks: Checks) -> Result<Verifier, String> {
        let source = match key {
            KeySource::Secret(secret) => {
                if secret.len() < 32 {
                    return Err(
                        "the JWT secret must be at least 32 bytes (HS256 wants a key as long as its hash)"
                            .into(),
                    );
                }
                Source::Fixed(Key {
                    key: DecodingKey::from_secret(secret.as_bytes()),
                    algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                })
            }
            KeySource::Pem(pem) => Source::Fixed(pem_key(pem)?),
            KeySource::Jwks(url) => Source::Jwks(Jwks::new(url.clone())),
        };
        Ok(Verifier { source, checks })
    }

    /// The JWKS URL, when keys come from one.
    pub fn jwks(&self) -> Option<&Jwks> {
        match &self.source {
            Source::Jwks(jwks) => Some(jwks),
            Source::Fixed(_) => None,
        }
    }

    /// The token's claims, once its signature, `exp`, `nbf`, `iss` and `aud` hold.
    pub async fn verify(&self, token: &str) -> Result<Value, AuthError> {
        let header = decode_header(token).map_err(|e| invalid(&e))?;
        let key = match &self.source {
            Source::Fixed(key) => key.clone(),
            Source::Jwks(jwks) => jwks.key(header.kid.as_deref()).await?,
        };
        if !key.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "the token is signed with {:?}, which the configured key does not verify",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms.clone_from(&key.algorithms);
        validation.leeway = self.checks.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &self.checks.issuer {
            validation.set_issuer(&[issuer]);
        }
        if self.checks.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.checks.audience);
        }
        decode::<Value>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| invalid(&e))
    }
}

/// A token that does not verify, in words (never the token itself).
fn invalid(err: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    AuthError::Invalid(match err.kind() {
        ErrorKind::ExpiredSignature => return AuthError::Expired,
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not the configured one".into(),
        ErrorKind::InvalidAudience => "the token's audience (aud) is not the configured one".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not the configured key's".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => {
            "the token is not a well-formed JWT (or its algorithm is not one viewcast verifies)"
                .into()
        }
        other => format!("the token does not verify ({other:?})"),
    })
}

/// The algorithms a key of each family verifies (the token's `alg` must be one of its key's).
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

fn pem_key(pem: &str) -> Result<Key, String> {
    let bytes = pem.as_bytes();
    let found = [
        (DecodingKey::from_rsa_pem(bytes), RSA),
        (DecodingKey::from_ec_pem(bytes), EC),
        (DecodingKey::from_ed_pem(bytes), ED),
    ];
    for (key, algorithms) in found {
        if let Ok(key) = key {
            return Ok(Key {
                key,
                algorithms: algorithms.to_vec(),
            });
        }
    }
    Err("the JWT public key is not a PEM RSA, EC or Ed25519 public key".into())
}

/// The key of one JWK, with the algorithm it names (or its family's); `None` for a key that
/// cannot verify signatures (symmetric keys are not taken from a JWKS).
fn jwk_key(jwk: &Jwk) -> Option<Key> {
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA.to_vec(),
        AlgorithmParameters::EllipticCurve(_) => EC.to_vec(),
        AlgorithmParameters::OctetKeyPair(_) => ED.to_vec(),
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family,
        Some(named) => {
            let algorithm = match named {
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::RS384 => Algorithm::RS384,
                KeyAlgorithm::RS512 => Algorithm::RS512,
                KeyAlgorithm::PS256 => Algorithm::PS256,
                KeyAlgorithm::PS384 => Algorithm::PS384,
                KeyAlgorithm::PS512 => Algorithm::PS512,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                KeyAlgorithm::ES384 => Algorithm::ES384,
                KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                _ => return None,
            };
            if !family.contains(&algorithm) {
                return None;
            }
            vec![algorithm]
        }
    };
    Some(Key { key, algorithms })
}

/// How long keys are kept when the response says nothing.
const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// The least time between two fetches (an unknown `kid` does not make every request fetch).
const MIN_REFETCH: Duration = Duration::from_secs(5);

/// The keys of a JWKS URL.
pub struct Jwks {
    url: String,
    http: reqwest::Client,
    // A tokio Mutex: a fetch happens while it is held, so concurrent requests wait for one
    // fetch instead of each making their own.
    state: Mutex<JwksState>,
}

#[derive(Default)]
struct JwksState {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid` (tried for tokens without one).
    unnamed: Vec<Key>,
    valid_until: Option<Instant>,
    last_fetch: Option<Instant>,
    last_error: Option<String>,
}

impl Jwks {
    fn new(url: String) -> Jwks {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Jwks {
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .user_agent(concat!("viewcast/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            state: Mutex::default(),
        }
    }

    /// Fetches the keys now (at start-up; failures are reported, not fatal).
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut state = self.state.lock().await;
        self.fetch(&mut state).await
    }

    /// Why the keys could not be fetched last time, if they could not.
    pub async fn last_error(&self) -> Option<String> {
        self.state.lock().await.last_error.clone()
    }

    async fn key(&self, kid: Option<&str>) -> Result<Key, AuthError> {
        let mut state = self.state.lock().await;
        let expired = state
            .valid_until
            .is_none_or(|until| Instant::now() >= until);
        let known = |state: &JwksState| match kid {
            Some(kid) => state.by_kid.get(kid).cloned(),
            None => state.unnamed.first().cloned(),
        };
        if !expired && let Some(key) = known(&state) {
            return Ok(key);
        }
        let may_fetch = state
            .last_fetch
            .is_none_or(|at| at.elapsed() >= MIN_REFETCH);
        // Expired or not, a fetch waits its turn: a flood of unknown `kid`s fetches once.
        if may_fetch && let Err(err) = self.fetch(&mut state).await {
            tracing::warn!(url = %self.url, error = %err, "cannot fetch the JWKS");
        }
        known(&state).ok_or_else(|| {
            AuthError::Invalid(match kid {
                Some(kid) => format!("the token's key {kid:?} is not in the JWKS"),
                None => "the token names no key (kid) and the JWKS has none without one".into(),
            })
        })
    }

    async fn fetch(&self, state: &mut JwksState) -> Result<usize, String> {
        state.last_fetch = Some(Instant::now());
        let result = async {
            let response = self
                .http
                .get(&self.url)
                .send()
                .await
                .map_err(|e| format!("cannot fetch the JWKS: {}", e.without_url()))?;
            if !response.status().is_success() {
                return Err(format!("the JWKS URL answered {}", response.status()));
            }
            let ttl = cache_ttl(response.headers());
            let body = response
                .bytes()
                .await
                .map_err(|e| format!("cannot read the JWKS: {}", e.without_url()))?;
            let set: JwkSet = serde_json::from_slice(&body)
                .map_err(|e| format!("the JWKS is not a JWK set: {e}"))?;
            Ok((set, ttl))
        }
        .await;
        match result {
            Ok((set, ttl)) => {
                state.by_kid.clear();
                state.unnamed.clear();
                for jwk in &set.keys {
                    let Some(key) = jwk_key(jwk) else { continue };
                    match &jwk.common.key_id {
                        Some(kid) => {
                            state.by_kid.insert(kid.clone(), key);
                        }
                        None => state.unnamed.push(key),
                    }
                }
                state.valid_until = Some(Instant::now() + ttl);
                state.last_error = None;
                Ok(state.by_kid.len() + state.unnamed.len())
            }
            Err(err) => {
                state.last_error = Some(err.clone());
                Err(err)
            }
        }
    }
}

/// How long a JWKS response may be kept: `Cache-Control: max-age`, else `Expires`, else a
/// default; `no-store`/`no-cache` keep it for the refetch interval only.
fn cache_ttl(headers: &reqwest::header::HeaderMap) -> Duration {
    let cache_control = headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for directive in cache_control.split(',').map(str::trim) {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return MIN_REFETCH;
        }
        if let Some(seconds) = directive
            .strip_prefix("max-age=")
            .and_then(|s| s.parse::<u64>().ok())
        {
            return Duration::from_secs(seconds);
        }
    }
    headers
        .get(reqwest::header::EXPIRES)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
        .unwrap_or(DEFAULT_TTL)
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("checks", &self.checks)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_lifetimes_follow_the_response() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(cache_ttl(&headers), DEFAULT_TTL);
        headers.insert(
            reqwest::header::CACHE_CONTROL,
            "public, max-age=42".parse().unwrap(),
        );
        assert_eq!(cache_ttl(&headers), Duration::from_secs(42));
        headers.insert(reqwest::header::CACHE_CONTROL, "no-cache".parse().unwrap());
        assert_eq!(cache_ttl(&headers), MIN_REFETCH);
        headers.remove(reqwest::header::CACHE_CONTROL);
        let later = std::time::SystemTime::now() + Duration::from_secs(3600);
        headers.insert(
            reqwest::header::EXPIRES,
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let ttl = cache_ttl(&headers);
        assert!(
            ttl > Duration::from_secs(3500) && ttl <= Duration::from_secs(3600),
            "{ttl:?}"
        );
    }

    const RSA_PRIVATE: &str = include_str!("../../tests/fixtures/auth/rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("../../tests/fixtures/auth/rsa-public.pem");
    const SECRET: &str = "a shared secret of at least thirty-two bytes";

    fn checks() -> Checks {
        Checks {
            issuer: Some("https://issuer.test/".into()),
            audience: vec!["viewcast".into()],
            leeway: Duration::from_secs(5),
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({
            "sub": "u1", "iss": "https://issuer.test/", "aud": "viewcast", "exp": now() + 60,
        })
    }

    fn sign(alg: Algorithm, key: &jsonwebtoken::EncodingKey, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, key).expect("sign")
    }

    fn rsa_signed(claims: &serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("key");
        sign(Algorithm::RS256, &key, claims)
    }

    #[tokio::test]
    async fn ec_and_ed25519_public_keys_verify_their_own_algorithms_only() {
        for (algorithm, alg) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, Algorithm::ES384),
            (&rcgen::PKCS_ED25519, Algorithm::EdDSA),
        ] {
            let pair = rcgen::KeyPair::generate_for(algorithm).expect("key pair");
            let private = pair.serialize_pem();
            let key = if alg == Algorithm::EdDSA {
                jsonwebtoken::EncodingKey::from_ed_pem(private.as_bytes())
            } else {
                jsonwebtoken::EncodingKey::from_ec_pem(private.as_bytes())
            }
            .expect("signing key");
            let verifier =
                Verifier::new(&KeySource::Pem(pair.public_key_pem()), checks()).expect("PEM");
            assert!(
                verifier.verify(&sign(alg, &key, &claims())).await.is_ok(),
                "{alg:?}"
            );
            // Another family's algorithm, or HMAC with the public key as its secret: refused.
            let hs = jsonwebtoken::EncodingKey::from_secret(pair.public_key_pem().as_bytes());
            assert!(
                verifier
                    .verify(&sign(Algorithm::HS256, &hs, &claims()))
                    .await
                    .is_err()
            );
            assert!(verifier.verify(&rsa_signed(&claims())).await.is_err());
        }
    }

    #[tokio::test]
    async fn tokens_verify_only_with_the_keys_algorithms_and_checks() {
        use base64::Engine as _;
        let rsa = Verifier::new(&KeySource::Pem(RSA_PUBLIC.into()), checks()).unwrap();
        assert!(rsa.verify(&rsa_signed(&claims())).await.is_ok());
        // HS256 "signed" with the RSA public key as a secret: the key does not do HMAC.
        let forged = sign(
            Algorithm::HS256,
            &jsonwebtoken::EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
            &claims(),
        );
        assert!(
            matches!(rsa.verify(&forged).await, Err(AuthError::Invalid(m)) if m.contains("HS256"))
        );
        // alg: none, with no signature.
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(&claims())
        );
        assert!(rsa.verify(&none).await.is_err());
        // Another key's signature.
        let hs = Verifier::new(&KeySource::Secret(SECRET.into()), checks()).unwrap();
        let other = jsonwebtoken::EncodingKey::from_secret(b"another secret of thirty-two bytes!!");
        assert!(matches!(
            hs.verify(&sign(Algorithm::HS256, &other, &claims())).await,
            Err(AuthError::Invalid(m)) if m.contains("signature")
        ));
        let good = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        assert!(
            hs.verify(&sign(Algorithm::HS512, &good, &claims()))
                .await
                .is_ok()
        );
        // exp, nbf, iss, aud.
        let mut c = claims();
        c["exp"] = (now() - 60).into();
        assert_eq!(
            hs.verify(&sign(Algorithm::HS256, &good, &c)).await,
            Err(AuthError::Expired)
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(
            matches!(hs.verify(&sign(Algorithm::HS256, &good, &c)).await, Err(AuthError::Invalid(m)) if m.contains("exp"))
        );
        let mut c = claims();
        c["nbf"] = (now() + 600).into();
        assert!(
            matches!(hs.verify(&sign(Algorithm::HS256, &good, &c)).await, Err(AuthError::Invalid(m)) if m.contains("nbf"))
        );
        let mut c = claims();
        c["iss"] = "https://elsewhere.test/".into();
        assert!(
            matches!(hs.verify(&sign(Algorithm::HS256, &good, &c)).await, Err(AuthError::Invalid(m)) if m.contains("iss"))
        );
        let mut c = claims();
        c["aud"] = "someone-else".into();
        assert!(
            matches!(hs.verify(&sign(Algorithm::HS256, &good, &c)).await, Err(AuthError::Invalid(m)) if m.contains("aud"))
        );
        // Within the leeway, an expired token still passes.
        let mut c = claims();
        c["exp"] = (now() - 2).into();
        assert!(hs.verify(&sign(Algorithm::HS256, &good, &c)).await.is_ok());
    }

    #[test]
    fn a_short_secret_is_refused() {
        let checks = Checks {
            issuer: None,
            audience: Vec::new(),
            leeway: Duration::from_secs(5),
        };
        assert!(Verifier::new(&KeySource::Secret("short".into()), checks.clone()).is_err());
        assert!(Verifier::new(&KeySource::Pem("not a key".into()), checks).is_err());
    }
}
