//! Webhook targets: a URL's syntax and scheme, and the addresses it resolves to — loopback,
//! private, link-local and other internal ranges are refused unless the server allows them,
//! so a trigger cannot be used to reach the server's own network (SSRF).

use std::net::IpAddr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("webhook {url:?} is not a valid URL: {reason}")]
    Syntax { url: String, reason: String },
    #[error("webhook {url:?} must use http or https")]
    Scheme { url: String },
    #[error("webhook host {host} does not resolve: {reason}")]
    Resolve { host: String, reason: String },
    #[error(
        "webhook {url:?} reaches {address}, an internal address; webhooks may only reach public addresses unless the server allows private ones (--webhook-allow-private)"
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

/// Whether an address is outside the public internet.
pub fn is_internal(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
        }
    }
}

/// Checks a webhook URL and the addresses its host resolves to.
pub async fn check_target(url: &str, allow_private: bool) -> Result<Target, TargetError> {
    let target = parse(url)?;
    if allow_private {
        return Ok(target);
    }
    let addresses: Vec<IpAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| TargetError::Resolve {
                host: target.host.clone(),
                reason: e.to_string(),
            })?
            .map(|a| a.ip())
            .collect(),
    };
    if let Some(&address) = addresses.iter().find(|a| is_internal(**a)) {
        return Err(TargetError::Private {
            url: url.to_owned(),
            address,
        });
    }
    Ok(target)
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

    #[test]
    fn internal_ranges_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn private_addresses_are_refused_unless_allowed() {
        let refused = check_target("http://127.0.0.1:9000/hook", false).await;
        assert!(
            matches!(refused, Err(TargetError::Private { .. })),
            "{refused:?}"
        );
        assert!(
            check_target("http://127.0.0.1:9000/hook", true)
                .await
                .is_ok()
        );
        let localhost = check_target("http://localhost:9000/hook", false).await;
        assert!(
            matches!(localhost, Err(TargetError::Private { .. })),
            "{localhost:?}"
        );
    }
}
