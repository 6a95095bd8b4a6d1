//! The SSRF rule, in one place: which schemes and addresses Herald may
//! connect to on an app's or a repository's behalf ([`AddressRule`], whose
//! refusals are one type, [`Refused`]). Only globally routable unicast
//! addresses count as public ([`is_global`]). Webhooks (their own
//! connector), LFS and `herald listen` (reqwest, through
//! [`AdmittedResolver`]) and git (its sockets and its proxy) all resolve
//! and filter through [`AddressRule::resolve`] when each connection is
//! made.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::LazyLock;

use ipnet::IpNet;

/// Special-purpose ranges (IANA IPv4 and IPv6 special-purpose registries) that
/// are not reachable on the public internet or that reach the host itself.
static NON_GLOBAL: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        // IPv4-compatible (`::a.b.c.d`, deprecated by RFC 4291) and
        // IPv4-translated (`::ffff:0:a.b.c.d`, RFC 2765) addresses: never
        // routed publicly, and some stacks hand them to the IPv4 address
        // inside (`::127.0.0.1` reaching the host itself). Refused whole,
        // whatever IPv4 address they carry.
        "::/96",
        "::ffff:0:0:0/96",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "fc00::/7",
        "fe80::/10",
        // Site-local, deprecated by RFC 3879 but still a private range.
        "fec0::/10",
        "ff00::/8",
    ]
    .iter()
    .map(|net| net.parse().expect("the table holds valid networks"))
    .collect()
});

/// Whether `ip` is a public, globally routable unicast address. IPv4-mapped
/// IPv6 addresses (`::ffff:a.b.c.d`) are judged by the IPv4 address they
/// carry; IPv4-compatible and IPv4-translated ones are never public.
pub fn is_global(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    !NON_GLOBAL.iter().any(|net| net.contains(&ip))
}

/// The address rule every outbound connection Herald makes on an app's or
/// a repository's behalf follows (webhooks, LFS, git, `herald listen`):
/// `https` always, plain-text `http` (and git's `git`) only with
/// `security.allow_http_targets`; public addresses only, unless
/// `security.allow_private_targets`. A name is judged by the addresses it
/// resolves to when the connection is made ([`AddressRule::resolve`]), so
/// it cannot be swapped between a check and its use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRule {
    pub allow_private: bool,
    pub allow_http: bool,
}

/// Why the address rule refused a URL or a host. The words name no URL (a
/// URL may carry a credential or a signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "plain-text http:// is disabled by this server's configuration (security.allow_http_targets)"
    )]
    PlainText,
    #[error("the URL is not https://")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error("the host is not at a public address")]
    NonPublic,
    #[error("the host could not be resolved")]
    Unresolved,
}

impl AddressRule {
    /// Whether the rule admits a connection to `ip`.
    pub fn admits(self, ip: IpAddr) -> bool {
        self.allow_private || is_global(ip)
    }

    /// The scheme rule: `https`; `http` and `git` only when plain text is
    /// allowed; nothing else.
    pub fn scheme(self, scheme: &str) -> Result<(), Refused> {
        match scheme {
            "https" => Ok(()),
            "http" | "git" if self.allow_http => Ok(()),
            "http" | "git" => Err(Refused::PlainText),
            _ => Err(Refused::Scheme),
        }
    }

    /// Whether `url` may be asked, as far as it can be judged before
    /// connecting: its scheme and its host ([`AddressRule::host`]).
    pub fn url(self, url: &url::Url) -> Result<(), Refused> {
        self.scheme(url.scheme())?;
        self.host(url)
    }

    /// `url`'s host: an IP literal (which no resolver sees) is judged as it
    /// is; a name is admitted here and judged when it is resolved.
    pub fn host(self, url: &url::Url) -> Result<(), Refused> {
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(Refused::NoHost),
        };
        if self.admits(literal) {
            Ok(())
        } else {
            Err(Refused::NonPublic)
        }
    }

    /// Resolves `host` now and keeps the addresses the rule admits: the
    /// one resolution of every asynchronous client.
    pub async fn resolve(self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let found = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Refused::Unresolved)?;
        self.keep(found)
    }

    /// [`AddressRule::resolve`] for blocking code (git's sockets and proxy).
    pub fn resolve_blocking(self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let found = (host, port)
            .to_socket_addrs()
            .map_err(|_| Refused::Unresolved)?;
        self.keep(found)
    }

    fn keep(self, found: impl Iterator<Item = SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        let mut any = false;
        let admitted: Vec<SocketAddr> = found
            .inspect(|_| any = true)
            .filter(|address| self.admits(address.ip()))
            .collect();
        match (any, admitted.is_empty()) {
            (false, _) => Err(Refused::Unresolved),
            (true, true) => Err(Refused::NonPublic),
            (true, false) => Ok(admitted),
        }
    }
}

/// DNS for a reqwest client under the rule ([`AddressRule::resolve`]); a
/// refusal is the error's source, as a [`Refused`]. IP literals never reach
/// a resolver: check them with [`AddressRule::host`].
#[derive(Debug, Clone, Copy)]
pub struct AdmittedResolver(pub AddressRule);

impl reqwest::dns::Resolve for AdmittedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let rule = self.0;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            match rule.resolve(&host, 0).await {
                Ok(addresses) => Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs),
                Err(refused) => Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

/// Whether `err` or one of its sources is the rule's refusal `refused`.
pub fn caused_by(err: &(dyn std::error::Error + 'static), refused: Refused) -> bool {
    std::iter::successors(Some(err), |cause| cause.source())
        .any(|cause| cause.downcast_ref::<Refused>() == Some(&refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(s: &str) -> bool {
        is_global(s.parse().expect("test addresses are valid"))
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_not_global() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "255.255.255.255",
            "::",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:0:7f00:1",
            "::ffff:0:808:808",
            "fec0::1",
            "feff:ffff::1",
        ] {
            assert!(!global(ip), "{ip} must not count as global");
        }
    }

    #[test]
    fn public_addresses_are_global() {
        for ip in [
            "1.1.1.1",
            "140.82.112.3",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2a00:1450:4007:80e::200e",
            "2001:4860:4860::8888",
        ] {
            assert!(global(ip), "{ip} is public");
        }
    }

    /// Every way a URL may spell an IPv4 address (WHATWG's host parser
    /// takes them all) is judged as the address it spells.
    fn spellings(ip: std::net::Ipv4Addr) -> Vec<String> {
        let n = u32::from(ip);
        let [a, b, c, d] = ip.octets();
        vec![
            format!("{ip}"),
            format!("{ip}."),
            format!("{n}"),
            format!("0x{n:x}"),
            format!("0{:o}.0{:o}.0{:o}.0{:o}", a, b, c, d),
            format!("0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}"),
            format!("{a}.{}", n & 0x00ff_ffff),
            format!("{a}.{b}.{}", n & 0xffff),
            format!("[::ffff:{ip}]"),
            format!("[::ffff:{:x}:{:x}]", n >> 16, n & 0xffff),
            format!("[0:0:0:0:0:ffff:{ip}]"),
        ]
    }

    proptest::proptest! {
        #[test]
        fn every_spelling_of_an_address_gets_the_verdict_of_the_address(
            bits in proptest::prelude::any::<u32>(),
            private in proptest::prelude::any::<bool>(),
        ) {
            let ip = std::net::Ipv4Addr::from(bits);
            let strict = AddressRule { allow_private: false, allow_http: false };
            let open = AddressRule { allow_private: true, allow_http: false };
            // Sample the private ranges as often as the rest.
            let ip = if private { std::net::Ipv4Addr::new(127, ip.octets()[1], 0, 1) } else { ip };
            for spelling in spellings(ip) {
                let url = url::Url::parse(&format!("https://{spelling}/x")).expect("a URL");
                let verdict = strict.url(&url);
                proptest::prop_assert_eq!(
                    verdict.is_ok(),
                    is_global(IpAddr::V4(ip)),
                    "{} spelled {}: {:?}", ip, spelling, verdict
                );
                proptest::prop_assert!(open.url(&url).is_ok(), "{}", spelling);
            }
        }
    }

    #[test]
    fn schemes_follow_one_rule() {
        let strict = AddressRule {
            allow_private: false,
            allow_http: false,
        };
        let http = AddressRule {
            allow_private: false,
            allow_http: true,
        };
        assert_eq!(strict.scheme("https"), Ok(()));
        for plain in ["http", "git"] {
            assert_eq!(strict.scheme(plain), Err(Refused::PlainText));
            assert_eq!(http.scheme(plain), Ok(()));
        }
        for other in ["ftp", "file", "ssh", "javascript", ""] {
            assert_eq!(http.scheme(other), Err(Refused::Scheme), "{other}");
        }
    }

    #[tokio::test]
    async fn resolution_keeps_what_the_rule_admits() {
        let strict = AddressRule {
            allow_private: false,
            allow_http: false,
        };
        let open = AddressRule {
            allow_private: true,
            allow_http: false,
        };
        assert_eq!(
            strict.resolve("localhost", 80).await,
            Err(Refused::NonPublic)
        );
        assert!(
            open.resolve("localhost", 80)
                .await
                .is_ok_and(|found| !found.is_empty())
        );
        assert_eq!(
            strict.resolve_blocking("localhost", 80),
            Err(Refused::NonPublic)
        );
        assert_eq!(
            open.resolve("no-such-host.invalid", 80).await,
            Err(Refused::Unresolved)
        );
    }
}
