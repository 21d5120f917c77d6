//! Hasura's JWT claims: where they are in a token, and the session they make.
//!
//! By default the claims are the object at `https://hasura.io/jwt/claims` (a JSON object, or
//! a string holding one), with `x-hasura-allowed-roles`, `x-hasura-default-role`,
//! `x-hasura-user-id` and any other `x-hasura-*` session variable. A namespace path (a JSON
//! path, `$.hasura.claims`) or a claims map (each claim a literal, or `{path, default}`) serve
//! providers that put them elsewhere. Pure: no I/O.

use std::collections::BTreeMap;

use serde_json::Value;

use super::AuthError;

/// Where Hasura puts its claims in a token, and where they are looked for by default.
pub const HASURA_NAMESPACE: &str = "https://hasura.io/jwt/claims";

/// Where the claims are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimsSource {
    /// The object under this top-level key.
    Namespace(String),
    /// The object at this JSON path.
    NamespacePath(String),
    /// Each claim found on its own: a literal, or `{"path": "$.…", "default": …}`.
    Map(serde_json::Map<String, Value>),
}

impl Default for ClaimsSource {
    fn default() -> Self {
        ClaimsSource::Namespace(HASURA_NAMESPACE.into())
    }
}

/// The `x-hasura-*` claims of a token, keys lowercased.
pub type Claims = BTreeMap<String, Value>;

/// Finds the claims in a verified token's payload.
pub fn extract(payload: &Value, source: &ClaimsSource) -> Result<Claims, AuthError> {
    let missing = |what: &str| AuthError::Invalid(format!("the token has no {what}"));
    let object = match source {
        ClaimsSource::Namespace(key) => namespace(payload.get(key), key)?,
        ClaimsSource::NamespacePath(path) => namespace(json_path(payload, path)?, path)?,
        ClaimsSource::Map(map) => {
            let mut claims = serde_json::Map::new();
            for (name, rule) in map {
                let value = match rule {
                    Value::Object(rule) if rule.contains_key("path") => {
                        let path = rule["path"].as_str().ok_or_else(|| {
                            AuthError::Invalid(format!(
                                "the claims map's path for {name} is not a string"
                            ))
                        })?;
                        json_path(payload, path)?
                            .cloned()
                            .or_else(|| rule.get("default").cloned())
                    }
                    literal => Some(literal.clone()),
                };
                if let Some(value) = value {
                    claims.insert(name.clone(), value);
                }
            }
            claims
        }
    };
    let claims: Claims = object
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| k.starts_with("x-hasura-"))
        .collect();
    if claims.is_empty() {
        return Err(missing("x-hasura-* claims where they are configured to be"));
    }
    Ok(claims)
}

/// The claims object at a namespace: an object, or a string holding one (Hasura's
/// `stringified_json`).
fn namespace(value: Option<&Value>, at: &str) -> Result<serde_json::Map<String, Value>, AuthError> {
    match value {
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(Value::String(text)) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(AuthError::Invalid(format!(
                "the token's claims at {at} are a string that is not a JSON object"
            ))),
        },
        _ => Err(AuthError::Invalid(format!(
            "the token has no claims object at {at}"
        ))),
    }
}

/// The value at a JSON path: `$`, then `.name`, `['name']`, `["name"]` or `[0]` steps.
pub fn json_path<'a>(root: &'a Value, path: &str) -> Result<Option<&'a Value>, AuthError> {
    let bad = || AuthError::Invalid(format!("{path:?} is not a JSON path viewcast reads"));
    let mut rest = path.strip_prefix('$').ok_or_else(bad)?;
    let mut at = root;
    while !rest.is_empty() {
        let (step, tail) = if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            (Step::Key(&r[..end]), &r[end..])
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(bad)?;
            let inner = &r[..end];
            let step = match inner.strip_prefix(['\'', '"']) {
                Some(quoted) => Step::Key(quoted.strip_suffix(['\'', '"']).ok_or_else(bad)?),
                None => Step::Index(inner.parse().map_err(|_| bad())?),
            };
            (step, &r[end + 1..])
        } else {
            return Err(bad());
        };
        let next = match step {
            Step::Key(key) => at.get(key),
            Step::Index(i) => at.get(i),
        };
        let Some(next) = next else {
            return Ok(None);
        };
        at = next;
        rest = tail;
    }
    Ok(Some(at))
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The role a request acts as: the one it asks for (`x-hasura-role`), which must be one of
/// the allowed roles, else the default role.
pub fn role(claims: &Claims, requested: Option<&str>) -> Result<String, AuthError> {
    let allowed: Vec<&str> = match claims.get("x-hasura-allowed-roles") {
        Some(Value::Array(roles)) => roles.iter().filter_map(Value::as_str).collect(),
        // Some providers can only put a string: a Postgres array literal or one role.
        Some(Value::String(text)) => text
            .trim_matches(['{', '}'])
            .split(',')
            .map(|r| r.trim().trim_matches('"'))
            .filter(|r| !r.is_empty())
            .collect(),
        _ => {
            return Err(AuthError::Invalid(
                "the token has no x-hasura-allowed-roles".into(),
            ));
        }
    };
    let role = match requested {
        Some(role) => role.to_owned(),
        None => claims
            .get("x-hasura-default-role")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Invalid("the token has no x-hasura-default-role".into()))?
            .to_owned(),
    };
    if !allowed.contains(&role.as_str()) {
        return Err(AuthError::RoleNotAllowed(role));
    }
    Ok(role)
}

/// The session variables of the claims, as Hasura passes them: every `x-hasura-*` claim,
/// with scalars as text (the allowed roles are left out; the chosen role is added).
pub fn variables(claims: &Claims) -> BTreeMap<String, String> {
    claims
        .iter()
        .filter(|(k, _)| {
            k.as_str() != "x-hasura-allowed-roles" && k.as_str() != "x-hasura-default-role"
        })
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn hasura(claims: &Value) -> Value {
        json!({ "sub": "u1", "https://hasura.io/jwt/claims": claims })
    }

    #[test]
    fn the_default_namespace_gives_roles_and_variables() {
        let payload = hasura(&json!({
            "x-hasura-allowed-roles": ["user", "editor"],
            "x-hasura-default-role": "user",
            "X-Hasura-User-Id": "42",
            "x-hasura-org-id": 7,
            "other": "ignored",
        }));
        let claims = extract(&payload, &ClaimsSource::default()).expect("claims");
        assert_eq!(role(&claims, None).unwrap(), "user");
        assert_eq!(role(&claims, Some("editor")).unwrap(), "editor");
        assert!(matches!(
            role(&claims, Some("admin")),
            Err(AuthError::RoleNotAllowed(r)) if r == "admin"
        ));
        let vars = variables(&claims);
        assert_eq!(vars.get("x-hasura-user-id").map(String::as_str), Some("42"));
        assert_eq!(vars.get("x-hasura-org-id").map(String::as_str), Some("7"));
        assert!(!vars.contains_key("other"));
    }

    #[test]
    fn stringified_claims_paths_and_maps_are_read() {
        let stringified = json!({ "https://hasura.io/jwt/claims": "{\"x-hasura-allowed-roles\":[\"user\"],\"x-hasura-default-role\":\"user\"}" });
        let claims = extract(&stringified, &ClaimsSource::default()).expect("stringified");
        assert_eq!(role(&claims, None).unwrap(), "user");

        let nested = json!({ "app": { "hasura": { "x-hasura-allowed-roles": ["a"], "x-hasura-default-role": "a" } } });
        let claims = extract(
            &nested,
            &ClaimsSource::NamespacePath("$.app['hasura']".into()),
        )
        .expect("path");
        assert_eq!(role(&claims, None).unwrap(), "a");

        let provider = json!({ "sub": "auth0|9", "roles": ["viewer", "ops"] });
        let map = json!({
            "x-hasura-allowed-roles": { "path": "$.roles" },
            "x-hasura-default-role": "viewer",
            "x-hasura-user-id": { "path": "$.sub" },
            "x-hasura-team": { "path": "$.team", "default": "none" },
        });
        let Value::Object(map) = map else {
            unreachable!()
        };
        let claims = extract(&provider, &ClaimsSource::Map(map)).expect("map");
        assert_eq!(role(&claims, Some("ops")).unwrap(), "ops");
        let vars = variables(&claims);
        assert_eq!(vars["x-hasura-user-id"], "auth0|9");
        assert_eq!(vars["x-hasura-team"], "none");
    }

    #[test]
    fn tokens_without_claims_or_roles_are_refused() {
        assert!(extract(&json!({ "sub": "x" }), &ClaimsSource::default()).is_err());
        let claims = extract(
            &hasura(&json!({ "x-hasura-user-id": "1" })),
            &ClaimsSource::default(),
        )
        .expect("claims");
        assert!(role(&claims, None).is_err());
        assert!(json_path(&json!({}), "no dollar").is_err());
        assert_eq!(
            json_path(&json!({"a": [1, 2]}), "$.a[1]").unwrap(),
            Some(&json!(2))
        );
    }
}
