//! Webhook targets: a URL's syntax and scheme, and the addresses it resolves to — loopback,
//! private, link-local and other internal ranges are refused unless the server allows them,
//! so a trigger cannot be used to reach the server's own network (SSRF).

use std::net::IpAddr;

use crate::egress::{Egress, EgressError, redact_url};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("webhook {url:?} is not a valid URL: {reason}")]
    Syntax { url: String, reason: String },
    #[error("webhook {url:?} must use http or https")]
    Scheme { url: String },
    #[error("webhook host {host} does not resolve: {reason}")]
    Resolve { host: String, reason: String },
    #[error(
        "webhook {url} reaches {address}, an internal address; webhooks may only reach public addresses unless the server allows private ones (--webhook-allow-private)"
    )]
    Private { url: String, address: IpAddr },
}

/// A parsed webhook URL: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

pub fn parse(url: &str) -> Result<Target, TargetError> {
    let syntax = |reason: &str| TargetError::Syntax {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| syntax(&e.to_string()))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(_) => {
            return Err(TargetError::Scheme {
                url: url.to_owned(),
            });
        }
        None => return Err(syntax("no scheme (write http://… or https://…)")),
    };
    let host = uri.host().ok_or_else(|| syntax("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(syntax("no host"));
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(Target { https, host, port })
}

/// Checks a webhook URL, and that its host resolves to public addresses (unless `egress`
/// allows private ones). Requests are guarded again when they connect (see `egress`).
pub async fn check_target(url: &str, egress: &Egress) -> Result<Target, TargetError> {
    let target = parse(url)?;
    match egress.resolve(&target.host).await {
        Ok(_) => Ok(target),
        Err(EgressError::Internal { address, .. }) => Err(TargetError::Private {
            url: redact_url(url),
            address,
        }),
        Err(EgressError::Resolve { host, reason }) => Err(TargetError::Resolve { host, reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_scheme_a_host_and_http() {
        assert_eq!(
            parse("https://hooks.example.com/x").unwrap(),
            Target {
                https: true,
                host: "hooks.example.com".into(),
                port: 443
            }
        );
        assert_eq!(parse("http://10.0.0.1:8080/").unwrap().port, 8080);
        assert!(matches!(parse("ftp://x/"), Err(TargetError::Scheme { .. })));
        assert!(matches!(
            parse("hooks.example.com/x"),
            Err(TargetError::Syntax { .. })
        ));
        assert!(matches!(
            parse("http:// bad"),
            Err(TargetError::Syntax { .. })
        ));
        assert_eq!(parse("http://[::1]:9/").unwrap().host, "::1");
    }

    #[tokio::test]
    async fn private_addresses_are_refused_unless_allowed() {
        let (closed, open) = (Egress::new(false), Egress::new(true));
        let refused = check_target("http://127.0.0.1:9000/hook", &closed).await;
        assert!(
            matches!(refused, Err(TargetError::Private { .. })),
            "{refused:?}"
        );
        assert!(
            check_target("http://127.0.0.1:9000/hook", &open)
                .await
                .is_ok()
        );
        let localhost = check_target("http://localhost:9000/hook", &closed).await;
        assert!(
            matches!(localhost, Err(TargetError::Private { .. })),
            "{localhost:?}"
        );
    }
}
