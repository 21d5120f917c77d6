//! Who is asking: identities (JWTs, API keys, the admin secret, the unauthenticated role) and
//! the session a request runs with — its role and its `x-hasura-*` variables, as Hasura has
//! them, so identity providers set up for Hasura work unchanged.
//!
//! Transports read credentials (`Credentials`) from where their clients put them and ask
//! [`Auth::authenticate`] for a [`Session`]; what a session may do is `permissions`' concern,
//! not this module's. With no auth configured every request is the admin, as before auth
//! existed (the server says so at start-up and on `/ready`). This module never logs a token
//! or a secret.

mod claims;
mod grants;
mod jwt;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use claims::{ClaimsSource, HASURA_NAMESPACE};
pub use grants::{Grants, RunAccess, Select};
pub use jwt::{Checks, KeySource};

/// The role of the admin secret: everything is allowed.
pub const ADMIN_ROLE: &str = "admin";

/// Why a request has no session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this server needs credentials: send Authorization: Bearer <token>")]
    Missing,
    #[error("invalid credentials: {0}")]
    Invalid(String),
    #[error("the token has expired")]
    Expired,
    #[error("role {0} is not one of the token's x-hasura-allowed-roles")]
    RoleNotAllowed(String),
    #[error("the admin secret is wrong")]
    WrongAdminSecret,
}

impl AuthError {
    /// The GraphQL error code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::RoleNotAllowed(_) => "FORBIDDEN",
            _ => "UNAUTHENTICATED",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::RoleNotAllowed(_) => 403,
            _ => 401,
        }
    }
}

/// What a request presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// A JWT or an API key (`Authorization: Bearer …`).
    pub bearer: Option<String>,
    /// The role asked for (`x-hasura-role`).
    pub role: Option<String>,
    /// `x-hasura-admin-secret`.
    pub admin_secret: Option<String>,
}

impl Credentials {
    /// From HTTP headers.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Credentials {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Credentials {
            bearer: get("authorization").and_then(|v| bearer(&v)),
            role: get("x-hasura-role"),
            admin_secret: get("x-hasura-admin-secret"),
        }
    }

    /// From a WebSocket `connection_init` payload, in every form clients use: `Authorization`
    /// (any case), `headers: {Authorization}`, Apollo's `authToken`, and the same for
    /// `x-hasura-role` and `x-hasura-admin-secret`.
    pub fn from_init_payload(payload: &serde_json::Value) -> Credentials {
        let find = |name: &str| -> Option<String> {
            let lookup = |object: &serde_json::Value| {
                object.as_object().and_then(|map| {
                    map.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .and_then(|(_, v)| v.as_str())
                        .map(str::to_owned)
                })
            };
            lookup(payload).or_else(|| payload.get("headers").and_then(lookup))
        };
        let bearer = find("authorization")
            .and_then(|v| bearer(&v))
            .or_else(|| find("authToken").map(|t| bearer(&t).unwrap_or(t)));
        Credentials {
            bearer,
            role: find("x-hasura-role"),
            admin_secret: find("x-hasura-admin-secret"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bearer.is_none() && self.admin_secret.is_none()
    }
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &str) -> Option<String> {
    let (scheme, token) = value.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_owned())
}

/// Who a request runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub role: String,
    /// The `x-hasura-*` variables (keys lowercased), the role included as `x-hasura-role`.
    pub variables: BTreeMap<String, String>,
    /// When its credential stops being valid (a JWT's `exp`).
    pub expires_at: Option<SystemTime>,
}

impl Session {
    /// The admin: everything is allowed (the admin secret, or no auth at all).
    pub fn admin() -> Session {
        Session::of(ADMIN_ROLE, BTreeMap::new(), None)
    }

    fn of(
        role: &str,
        mut variables: BTreeMap<String, String>,
        expires_at: Option<SystemTime>,
    ) -> Session {
        variables.insert("x-hasura-role".into(), role.to_owned());
        Session {
            role: role.to_owned(),
            variables,
            expires_at,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == ADMIN_ROLE
    }

    /// A session variable (any case).
    pub fn variable(&self, name: &str) -> Option<&str> {
        self.variables
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Who, for what a session creates (a run's `created_by`): the user id, else the role.
    pub fn subject(&self) -> String {
        self.variable("x-hasura-user-id")
            .map_or_else(|| format!("role:{}", self.role), str::to_owned)
    }

    /// How long until the credential expires (zero once it has).
    pub fn remaining(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

pub use crate::config::ApiKey;

/// How requests are authenticated (each part optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    pub jwt: Option<JwtSettings>,
    pub admin_secret: Option<String>,
    /// The role of a request without credentials (none: such a request is refused).
    pub unauthenticated_role: Option<String>,
    /// A bearer token `/metrics` asks for (none: `/metrics` is open, as `/health` is).
    pub metrics_token: Option<String>,
    pub api_keys: Vec<ApiKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    pub key: KeySource,
    pub checks: Checks,
    pub claims: ClaimsSource,
}

impl AuthSettings {
    /// Whether any credential is configured (otherwise every request is the admin).
    pub fn is_configured(&self) -> bool {
        self.jwt.is_some() || self.admin_secret.is_some() || !self.api_keys.is_empty()
    }
}

/// The server's authenticator.
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: AuthSettings,
    verifier: Option<jwt::Verifier>,
    admin_digest: Option<[u8; 32]>,
}

fn sha256(text: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes()).into()
}

/// Equal in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether two secrets are equal, in a time that does not tell how much of a guess was right.
pub fn same_secret(given: &str, expected: &str) -> bool {
    same(&sha256(given), &sha256(expected))
}

impl Auth {
    /// No auth: every request is the admin.
    pub fn off() -> Auth {
        Auth::new(AuthSettings::default()).expect("no settings, no error")
    }

    pub fn new(settings: AuthSettings) -> Result<Auth, String> {
        let verifier = match &settings.jwt {
            Some(jwt) => Some(jwt::Verifier::new(&jwt.key, jwt.checks.clone())?),
            None => None,
        };
        if settings.unauthenticated_role.as_deref() == Some(ADMIN_ROLE) {
            return Err("the unauthenticated role cannot be admin".into());
        }
        let admin_digest = settings.admin_secret.as_deref().map(sha256);
        Ok(Auth {
            inner: Arc::new(Inner {
                settings,
                verifier,
                admin_digest,
            }),
        })
    }

    pub fn is_on(&self) -> bool {
        self.inner.settings.is_configured()
    }

    /// Fetches the JWKS now, if keys come from one (at start-up: a failure is logged and
    /// retried at the first token).
    pub async fn prefetch(&self) {
        if let Some(jwks) = self.inner.verifier.as_ref().and_then(|v| v.jwks()) {
            match jwks.refresh().await {
                Ok(n) => tracing::info!(keys = n, "JWKS fetched"),
                Err(err) => tracing::warn!(error = %err, "cannot fetch the JWKS yet"),
            }
        }
    }

    /// What `/ready` says of auth: `none`, or what is configured (and a JWKS problem).
    pub async fn describe(&self) -> serde_json::Value {
        if !self.is_on() {
            return serde_json::json!("none");
        }
        let settings = &self.inner.settings;
        let mut kinds = Vec::new();
        if let Some(jwt) = &settings.jwt {
            kinds.push(match jwt.key {
                KeySource::Secret(_) => "jwt (shared secret)",
                KeySource::Pem(_) => "jwt (public key)",
                KeySource::Jwks(_) => "jwt (jwks)",
            });
        }
        if !settings.api_keys.is_empty() {
            kinds.push("api keys");
        }
        if settings.admin_secret.is_some() {
            kinds.push("admin secret");
        }
        let mut described = serde_json::json!({ "methods": kinds });
        if let Some(role) = &settings.unauthenticated_role {
            described["unauthenticated_role"] = role.clone().into();
        }
        if let Some(jwks) = self.inner.verifier.as_ref().and_then(|v| v.jwks())
            && let Some(err) = jwks.last_error().await
        {
            described["jwks_error"] = err.into();
        }
        described
    }

    /// The session of a request with these credentials.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Session, AuthError> {
        if !self.is_on() {
            return Ok(Session::admin());
        }
        let inner = &self.inner;
        if let Some(secret) = &credentials.admin_secret {
            return match &inner.admin_digest {
                Some(digest) if same(digest, &sha256(secret)) => Ok(Session::admin()),
                _ => Err(AuthError::WrongAdminSecret),
            };
        }
        let Some(token) = &credentials.bearer else {
            return match &inner.settings.unauthenticated_role {
                Some(role) => Ok(Session::of(role, BTreeMap::new(), None)),
                None => Err(AuthError::Missing),
            };
        };
        // A JWT has three dot-separated parts; anything else is taken for an API key.
        if token.split('.').count() != 3 {
            let digest = sha256(token);
            let key = inner
                .settings
                .api_keys
                .iter()
                .find(|k| same(&k.sha256, &digest))
                .ok_or_else(|| AuthError::Invalid("unknown API key".into()))?;
            if let Some(role) = &credentials.role
                && role != &key.role
            {
                return Err(AuthError::RoleNotAllowed(role.clone()));
            }
            return Ok(Session::of(&key.role, key.variables.clone(), None));
        }
        let verifier = inner
            .verifier
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("this server takes no JWTs".into()))?;
        let payload = verifier.verify(token).await?;
        let jwt = inner.settings.jwt.as_ref().map(|j| &j.claims);
        let claims = claims::extract(&payload, jwt.unwrap_or(&ClaimsSource::default()))?;
        let role = claims::role(&claims, credentials.role.as_deref())?;
        if role == ADMIN_ROLE {
            // The admin's power comes from the admin secret, never from a token's claims.
            return Err(AuthError::RoleNotAllowed(role));
        }
        let expires_at = payload["exp"]
            .as_u64()
            .map(|exp| SystemTime::UNIX_EPOCH + Duration::from_secs(exp));
        Ok(Session::of(&role, claims::variables(&claims), expires_at))
    }

    /// Whether a `/metrics` request may read (its own token when one is configured).
    pub fn metrics_allowed(&self, credentials: &Credentials) -> bool {
        match &self.inner.settings.metrics_token {
            None => true,
            Some(token) => credentials
                .bearer
                .as_deref()
                .is_some_and(|given| same(&sha256(given), &sha256(token))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn credentials_are_read_from_headers_and_every_init_payload_form() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        headers.insert("x-hasura-role", "editor".parse().unwrap());
        let from_headers = Credentials::from_headers(&headers);
        assert_eq!(from_headers.bearer.as_deref(), Some("abc.def.ghi"));
        assert_eq!(from_headers.role.as_deref(), Some("editor"));
        for payload in [
            json!({ "Authorization": "Bearer t" }),
            json!({ "authorization": "bearer t" }),
            json!({ "headers": { "Authorization": "Bearer t" } }),
            json!({ "authToken": "t" }),
            json!({ "authToken": "Bearer t" }),
        ] {
            assert_eq!(
                Credentials::from_init_payload(&payload).bearer.as_deref(),
                Some("t"),
                "{payload}"
            );
        }
        assert!(Credentials::from_init_payload(&json!(null)).is_empty());
        assert!(Credentials::from_init_payload(&json!({"Authorization": "Basic x"})).is_empty());
    }

    #[tokio::test]
    async fn without_settings_everyone_is_the_admin_and_with_them_nobody_by_default() {
        let off = Auth::off();
        assert!(
            off.authenticate(&Credentials::default())
                .await
                .unwrap()
                .is_admin()
        );
        let on = Auth::new(AuthSettings {
            admin_secret: Some("s3cret".into()),
            ..AuthSettings::default()
        })
        .unwrap();
        assert_eq!(
            on.authenticate(&Credentials::default()).await,
            Err(AuthError::Missing)
        );
        let admin = Credentials {
            admin_secret: Some("s3cret".into()),
            ..Credentials::default()
        };
        assert!(on.authenticate(&admin).await.unwrap().is_admin());
        let wrong = Credentials {
            admin_secret: Some("guess".into()),
            ..Credentials::default()
        };
        assert_eq!(
            on.authenticate(&wrong).await,
            Err(AuthError::WrongAdminSecret)
        );
    }

    #[tokio::test]
    async fn api_keys_act_with_their_role_and_variables() {
        let on = Auth::new(AuthSettings {
            api_keys: vec![ApiKey {
                name: "indexer".into(),
                sha256: sha256("vck_live_abc"),
                role: "worker".into(),
                variables: [("x-hasura-user-id".to_owned(), "svc".to_owned())].into(),
            }],
            unauthenticated_role: Some("anonymous".into()),
            ..AuthSettings::default()
        })
        .unwrap();
        let key = Credentials {
            bearer: Some("vck_live_abc".into()),
            ..Credentials::default()
        };
        let session = on.authenticate(&key).await.unwrap();
        assert_eq!(session.role, "worker");
        assert_eq!(session.subject(), "svc");
        let wrong = Credentials {
            bearer: Some("vck_live_abd".into()),
            ..Credentials::default()
        };
        assert!(matches!(
            on.authenticate(&wrong).await,
            Err(AuthError::Invalid(_))
        ));
        let anonymous = on.authenticate(&Credentials::default()).await.unwrap();
        assert_eq!(anonymous.role, "anonymous");
        assert_eq!(anonymous.variable("X-Hasura-Role"), Some("anonymous"));
    }
}
