//! The SSRF rule: which addresses Herald may connect to on an app's or a
//! repository's behalf. Only globally routable unicast addresses count as public.
//! [`AdmittedResolver`] applies it to a reqwest client when each connection
//! is made (the LFS client, `herald listen --pull`'s connections to Herald),
//! [`admits_host`] to the IP literal a URL may carry, which no resolver sees.

use std::net::{IpAddr, SocketAddr};
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

/// Whether the rule admits `url`'s host as far as it can be judged before
/// connecting: an IP literal is checked as it is; a name is admitted here
/// and judged by [`AdmittedResolver`] when the connection is made. A URL
/// without a host is not admitted.
pub fn admits_host(url: &url::Url, allow_private: bool) -> bool {
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain(_)) => return true,
        None => return false,
    };
    allow_private || is_global(literal)
}

/// Why [`AdmittedResolver`] gave no address: find it in a request error's
/// sources to tell a refused name from one that could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("the host resolves only to non-public addresses")]
pub struct NonPublicAddress;

/// DNS for a reqwest client under the rule: the system's resolver, keeping
/// only the addresses the rule admits (public ones unless `allow_private`).
/// Checked when each connection is made, so a name cannot be swapped between
/// a check and its use; IP literals never reach a resolver (see
/// [`admits_host`]).
#[derive(Debug, Clone, Copy)]
pub struct AdmittedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for AdmittedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| allow_private || is_global(address.ip()))
                .collect();
            if addresses.is_empty() {
                return Err(Box::new(NonPublicAddress) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
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
}
