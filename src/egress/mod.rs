//! Requests the server makes to addresses its users give it — trigger webhooks and the
//! workers of `http` run kinds — and the guard on where they may go (SSRF).
//!
//! Internal addresses (loopback, private, link-local, the cloud metadata address and every
//! other range outside the public internet, IPv6 transition forms included) are refused unless
//! allowed. The check is made on the address actually connected to: the HTTP client resolves
//! names through [`GuardedResolver`], which drops internal addresses, so a name that answers
//! a public address to a check and loopback a moment later (DNS rebinding) never reaches
//! loopback. Redirects are not followed and proxies are not used, for the same reason. Error
//! texts never carry the URL (it is often the credential): see [`redact_url`].

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

/// Turns a host name into addresses: the system's resolver, or a test's.
pub trait Lookup: Send + Sync + std::fmt::Debug + 'static {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>>;
}

/// The operating system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host, 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Where outbound requests may go, and how names are resolved.
#[derive(Clone)]
pub struct Egress {
    /// Internal addresses are allowed (`--webhook-allow-private`, `--worker-allow-private`).
    pub allow_private: bool,
    pub lookup: Arc<dyn Lookup>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("allow_private", &self.allow_private)
            .finish_non_exhaustive()
    }
}

impl Egress {
    pub fn new(allow_private: bool) -> Egress {
        Egress {
            allow_private,
            lookup: Arc::new(SystemLookup),
        }
    }

    /// The public addresses of `host` (all of them when private ones are allowed); an error
    /// when it has none.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, EgressError> {
        let addresses = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self
                .lookup
                .lookup(host)
                .await
                .map_err(|e| EgressError::Resolve {
                    host: host.to_owned(),
                    reason: e.to_string(),
                })?,
        };
        if self.allow_private {
            return Ok(addresses);
        }
        let public: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|a| !is_internal(*a))
            .collect();
        match (public.is_empty(), addresses.first()) {
            (false, _) => Ok(public),
            (true, Some(&address)) => Err(EgressError::Internal {
                host: host.to_owned(),
                address,
            }),
            (true, None) => Err(EgressError::Resolve {
                host: host.to_owned(),
                reason: "no address".into(),
            }),
        }
    }

    /// An HTTP client that connects only where this guard allows: names resolve through it,
    /// redirects are not followed, proxies are not used. Hosts given as IP addresses skip
    /// name resolution: check them with [`Egress::resolve`] before each request.
    pub fn client(&self, timeout: Option<std::time::Duration>) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver(self.clone())))
            .user_agent(concat!("viewcast/", env!("CARGO_PKG_VERSION")));
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        builder.build().unwrap_or_default()
    }
}

/// Why a request may not go somewhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("host {host} does not resolve: {reason}")]
    Resolve { host: String, reason: String },
    #[error(
        "host {host} reaches {address}, an internal address; only public addresses may be reached unless private ones are allowed"
    )]
    Internal { host: String, address: IpAddr },
}

/// The resolver the HTTP client uses: only the public addresses of a name.
struct GuardedResolver(Egress);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            let addresses = egress
                .resolve(name.as_str())
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let addrs: reqwest::dns::Addrs = Box::new(
                addresses
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, 0))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            Ok(addrs)
        })
    }
}

/// Whether an address is outside the public internet (or reaches it only through a form that
/// could hide an internal one: NAT64, 6to4, IPv4-compatible and IPv4-mapped addresses).
pub fn is_internal(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
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
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn is_internal_v6(v6: Ipv6Addr) -> bool {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_internal_v4(v4);
    }
    let s = v6.segments();
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        || s[..6] == [0; 6] // IPv4-compatible ::a.b.c.d (deprecated)
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 64:ff9b::/96 and 64:ff9b:1::/48
        || s[0] == 0x2002 // 6to4
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link local
        || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments (Teredo, …)
}

/// A URL as a read may show it: scheme, host and port, never the path, query or user info,
/// which often hold the credential (`https://hooks.example.com/services/T0/B0/secret`).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => {
            let host = parsed.host_str().unwrap_or_default();
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            let elided =
                parsed.path() != "/" || parsed.query().is_some() || !parsed.username().is_empty();
            format!(
                "{}://{host}{port}{}",
                parsed.scheme(),
                if elided { "/…" } else { "" }
            )
        }
        Err(_) => "(an invalid URL)".into(),
    }
}

/// This guard's refusal of an internal address, if that is why the request failed.
pub fn refusal(err: &reqwest::Error) -> Option<&EgressError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(inner) = cause {
        if let Some(egress @ EgressError::Internal { .. }) = inner.downcast_ref::<EgressError>() {
            return Some(egress);
        }
        cause = inner.source();
    }
    None
}

/// A request error in words, without the URL reqwest puts in its messages.
pub fn describe_error(err: &reqwest::Error, timeout: std::time::Duration) -> String {
    if err.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    // Our own refusal (an internal address), found among the causes.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(inner) = cause {
        if let Some(egress) = inner.downcast_ref::<EgressError>() {
            return egress.to_string();
        }
        cause = inner.source();
    }
    let kind = if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "the answer could not be read"
    } else {
        "request failed"
    };
    // The innermost cause says why (refused, reset, TLS), and carries no URL.
    let mut root: &(dyn std::error::Error + 'static) = err;
    while let Some(inner) = root.source() {
        root = inner;
    }
    if std::ptr::eq(
        std::ptr::from_ref(root).cast::<u8>(),
        std::ptr::from_ref(err).cast::<u8>(),
    ) {
        kind.to_owned()
    } else {
        format!("{kind}: {root}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::808:808",
            "2002:7f00:1::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    /// Answers each lookup of a name with the next of its answers (the last one repeats).
    #[derive(Debug)]
    struct Scripted(std::sync::Mutex<Vec<Vec<IpAddr>>>);

    impl Lookup for Scripted {
        fn lookup<'a>(
            &'a self,
            _host: &'a str,
        ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
            let mut answers = self.0.lock().unwrap();
            let answer = if answers.len() > 1 {
                answers.remove(0)
            } else {
                answers[0].clone()
            };
            Box::pin(async move { Ok(answer) })
        }
    }

    #[tokio::test]
    async fn only_public_addresses_come_out_of_the_guard() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let egress = Egress {
            allow_private: false,
            lookup: Arc::new(Scripted(std::sync::Mutex::new(vec![
                vec![ip("8.8.8.8"), ip("127.0.0.1")],
                vec![ip("127.0.0.1")],
            ]))),
        };
        assert_eq!(egress.resolve("x.test").await, Ok(vec![ip("8.8.8.8")]));
        assert_eq!(
            egress.resolve("x.test").await,
            Err(EgressError::Internal {
                host: "x.test".into(),
                address: ip("127.0.0.1")
            })
        );
        assert!(egress.resolve("169.254.169.254").await.is_err());
        let open = Egress {
            allow_private: true,
            ..egress
        };
        assert_eq!(open.resolve("x.test").await, Ok(vec![ip("127.0.0.1")]));
    }

    #[test]
    fn reads_show_scheme_host_and_port_only() {
        assert_eq!(
            redact_url("https://hooks.example.com/services/T0/B0/secret?token=x"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            redact_url("http://user:pw@10.0.0.1:8080"),
            "http://10.0.0.1:8080/…"
        );
        assert_eq!(redact_url("https://example.com/"), "https://example.com");
        assert_eq!(redact_url("nonsense"), "(an invalid URL)");
    }
}
