//! Reading a connection string as libpq does, for the settings tokio-postgres does not know:
//! `sslmode` beyond `require` (`verify-ca`, `verify-full`, `allow`), `sslrootcert`, `sslcert`
//! and `sslkey`. They are taken out of the string (a URL's query, or a `key=value` list) and
//! the rest is left for tokio-postgres to parse. Pure: no I/O, no environment.

/// The TLS settings a connection string names (each `None` when it does not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslParams {
    pub mode: Option<String>,
    pub root_cert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// Settings libpq has that viewcast does not implement: refused rather than ignored.
const UNSUPPORTED: [&str; 4] = ["sslcrl", "sslcrldir", "sslpassword", "sslcertmode"];

/// Splits `text` into the TLS settings and the rest (with `sslmode` left out: the caller sets
/// the mode tokio-postgres should use).
pub fn split(text: &str) -> Result<(String, SslParams), String> {
    if let Some(scheme_end) = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|prefix| text.starts_with(prefix).then_some(prefix.len()))
    {
        split_url(text, scheme_end)
    } else {
        split_key_values(text)
    }
}

fn take(params: &mut SslParams, key: &str, value: String) -> Result<bool, String> {
    let slot = match key {
        "sslmode" => &mut params.mode,
        "sslrootcert" => &mut params.root_cert,
        "sslcert" => &mut params.cert,
        "sslkey" => &mut params.key,
        _ if UNSUPPORTED.contains(&key) => {
            return Err(format!(
                "the connection setting {key} is not supported by viewcast"
            ));
        }
        _ => return Ok(false),
    };
    *slot = Some(value);
    Ok(true)
}

fn split_url(url: &str, scheme_end: usize) -> Result<(String, SslParams), String> {
    let mut params = SslParams::default();
    let Some(query_start) = url[scheme_end..].find('?').map(|i| i + scheme_end) else {
        return Ok((url.to_owned(), params));
    };
    let mut kept = Vec::new();
    for pair in url[query_start + 1..].split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)?;
        if !take(&mut params, &key, percent_decode(value)?)? {
            kept.push(pair);
        }
    }
    let mut rest = url[..query_start].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, params))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a % in the URL is not followed by two hex digits".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL decodes to invalid UTF-8".to_owned())
}

/// `key = value` pairs separated by spaces; a value may be single-quoted, with `\'` and `\\`.
/// Each pair with where it stands in `text`.
fn key_values(text: &str) -> Result<Vec<(String, String, std::ops::Range<usize>)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return Ok(pairs);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(format!("expected = after {key:?} in the connection string"));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated quoted value".into()),
                    },
                    Some((_, '\'')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated quoted value".into()),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                value.push(c);
            }
        }
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        pairs.push((key, value, start..end));
    }
}

fn split_key_values(text: &str) -> Result<(String, SslParams), String> {
    let mut params = SslParams::default();
    let mut rest = Vec::new();
    for (key, value, span) in key_values(text)? {
        if !take(&mut params, &key, value)? {
            rest.push(text[span].trim_end());
        }
    }
    Ok((rest.join(" "), params))
}

/// `text` with the password (a URL's userinfo, or a `password` setting) replaced by `***`,
/// for messages and logs.
pub fn redact(text: &str) -> String {
    if let Some(prefix) = ["postgres://", "postgresql://"]
        .iter()
        .find(|prefix| text.starts_with(**prefix))
    {
        let after = &text[prefix.len()..];
        let (authority, tail) = after.split_at(after.find(['/', '?']).unwrap_or(after.len()));
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        return format!("{prefix}{authority}{}", redact_query(tail));
    }
    match key_values(text) {
        Ok(pairs) => pairs
            .iter()
            .map(|(key, _, span)| {
                if key == "password" {
                    "password=***"
                } else {
                    text[span.clone()].trim_end()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => "(a connection string that does not parse)".into(),
    }
}

/// A URL's path and query with a `password=` parameter hidden.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_loses_its_tls_settings_and_keeps_the_rest() {
        let (rest, params) = split(
            "postgres://u:p@db:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem",
        )
        .expect("parses");
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(
            params,
            SslParams {
                mode: Some("verify-full".into()),
                root_cert: Some("/etc/ca.pem".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
            }
        );
        let (rest, params) = split("postgresql://db/app?sslmode=require").expect("parses");
        assert_eq!(rest, "postgresql://db/app");
        assert_eq!(params.mode.as_deref(), Some("require"));
        let (rest, params) = split("postgres://db/app").expect("parses");
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(params, SslParams::default());
    }

    #[test]
    fn key_value_strings_lose_their_tls_settings_quoted_or_not() {
        let (rest, params) = split(
            "host=db sslmode = verify-ca  user=me sslrootcert='/my dir/ca\\'s.pem' dbname=app",
        )
        .expect("parses");
        assert_eq!(rest, "host=db user=me dbname=app");
        assert_eq!(params.mode.as_deref(), Some("verify-ca"));
        assert_eq!(params.root_cert.as_deref(), Some("/my dir/ca's.pem"));
        assert!(split("host=db sslmode").is_err());
        assert!(split("sslrootcert='open").is_err());
    }

    #[test]
    fn settings_viewcast_does_not_implement_are_refused() {
        let err = split("postgres://db/app?sslcrl=/crl.pem").expect_err("refused");
        assert!(err.contains("sslcrl"), "{err}");
        assert!(split("host=db sslpassword=x").is_err());
    }

    #[test]
    fn passwords_are_redacted_in_urls_and_key_value_strings() {
        assert_eq!(
            redact("postgres://me:s3cret@db:5432/app?sslmode=require"),
            "postgres://me:***@db:5432/app?sslmode=require"
        );
        assert_eq!(
            redact("postgres://me@db/app?password=s3cret&x=1"),
            "postgres://me@db/app?password=***&x=1"
        );
        assert_eq!(redact("postgres://db/app"), "postgres://db/app");
        assert_eq!(
            redact("host=db password=s3cret user=me"),
            "host=db password=*** user=me"
        );
        assert_eq!(
            redact("host=db password = 'a b\\'c' user=me"),
            "host=db password=*** user=me"
        );
        assert!(!redact("password='open").contains("open"));
    }
}
