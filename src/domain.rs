//! Validated input types: a handler only ever holds values that passed these
//! parsers. Each error names the field and says what is wrong, never echoing a
//! secret.

use std::net::IpAddr;
use std::time::Duration;

use actors::store::apps::DeliveryWindow;
use secrecy::SecretString;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use url::{Host, Url};

/// Why a value was refused: the field and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// The network rules that URL validation applies (docs/security.md: SSRF
/// and Repository URLs).
#[derive(Debug, Clone, Copy)]
pub struct UrlPolicy {
    pub allow_private_targets: bool,
    pub allow_http_targets: bool,
    pub allow_local_repos: bool,
}

const MAX_URL_LEN: usize = 2048;
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `c` is an invisible format character (Unicode category `Cf`):
/// zero-width spaces and joiners (U+200B–U+200D), bidi marks, embeddings,
/// overrides and isolates (U+200E–U+200F, U+202A–U+202E, U+2066–U+2069), the
/// byte order mark (U+FEFF) and the like. In a name an operator reads, they
/// hide or reorder what is shown: `acme\u{202e}gpj.exe` reads as `acmeexe.jpg`.
fn is_format_char(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// A human-readable string field with length bounds, trimmed: no control
/// characters, no invisible format characters.
fn bounded(field: &'static str, raw: &str, min: usize, max: usize) -> Result<String, Invalid> {
    let value = raw.trim();
    let len = value.chars().count();
    if len < min {
        return Err(invalid(field, format!("must be at least {min} characters")));
    }
    if len > max {
        return Err(invalid(field, format!("must be at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    if value.chars().any(is_format_char) {
        return Err(invalid(
            field,
            "must not contain invisible formatting characters (zero-width or bidi controls)",
        ));
    }
    Ok(value.to_owned())
}

pub fn app_name(raw: &str) -> Result<String, Invalid> {
    bounded("app_name", raw, 3, 100)
}

pub fn description(raw: &str) -> Result<String, Invalid> {
    bounded("description", raw, 0, 500)
}

/// An email address: one `@`, something on both sides, a dot in the domain.
pub fn email(raw: &str) -> Result<String, Invalid> {
    let value = bounded("email", raw, 3, 255)?;
    let valid = value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
    }) && !value.contains(char::is_whitespace);
    if valid {
        Ok(value)
    } else {
        Err(invalid("email", "must be a valid email address"))
    }
}

/// The app's signing key: 16 to 500 characters (Docora's rule).
pub fn client_auth_key(raw: &str) -> Result<SecretString, Invalid> {
    let len = raw.chars().count();
    if !(16..=500).contains(&len) {
        return Err(invalid("client_auth_key", "must be 16 to 500 characters"));
    }
    if raw.chars().any(char::is_control) {
        return Err(invalid(
            "client_auth_key",
            "must not contain control characters",
        ));
    }
    Ok(SecretString::from(raw.to_owned()))
}

/// A git credential (a personal access token or an app token of any host).
pub fn git_token(raw: &str) -> Result<SecretString, Invalid> {
    let value = raw.trim();
    if value.is_empty() || value.len() > 1024 {
        return Err(invalid("github_token", "must be 1 to 1024 characters"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("github_token", "must not contain whitespace"));
    }
    Ok(SecretString::from(value.to_owned()))
}

/// A website, shown to operators only: any http(s) URL.
pub fn website(raw: &str) -> Result<String, Invalid> {
    let value = bounded("website", raw, 1, MAX_URL_LEN)?;
    match Url::parse(&value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(value),
        _ => Err(invalid("website", "must be an http(s) URL")),
    }
}

/// A branch name that git accepts (the rules of `git check-ref-format`).
pub fn branch(raw: &str) -> Result<String, Invalid> {
    let value = bounded("branch", raw, 1, 255)?;
    let bad = value.starts_with('-')
        || value.starts_with('/')
        || value.ends_with('/')
        || value.ends_with('.')
        || value.ends_with(".lock")
        || value.contains("..")
        || value.contains("//")
        || value.contains("@{")
        || value == "@"
        || value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
        || value.split('/').any(|part| part.starts_with('.'));
    if bad {
        Err(invalid("branch", "is not a valid git branch name"))
    } else {
        Ok(value)
    }
}

/// Path globs for include / exclude: at most 100, each a valid glob.
pub fn globs(field: &'static str, raw: &[String]) -> Result<Vec<String>, Invalid> {
    if raw.len() > 100 {
        return Err(invalid(field, "must hold at most 100 patterns"));
    }
    raw.iter()
        .map(|pattern| {
            let pattern = bounded(field, pattern, 1, 512)?;
            globset::Glob::new(&pattern).map_err(|err| {
                invalid(
                    field,
                    format!("`{pattern}` is not a valid glob: {}", err.kind()),
                )
            })?;
            Ok(pattern)
        })
        .collect()
}

/// An app's retry backoff: a policy name (docs/webhooks.md, Retries and
/// backoff) and two durations (`"500ms"`, `"1h"`), returned as (policy, base
/// ms, cap ms).
pub fn backoff(
    policy: &str,
    base: &str,
    max: &str,
) -> Result<(actors::backoff::Policy, i64, i64), Invalid> {
    const POLICIES: &str = "fixed, linear, exponential, exp_full_jitter or exp_equal_jitter";
    let policy = actors::backoff::Policy::parse(policy.trim())
        .ok_or_else(|| invalid("backoff.policy", format!("must be one of {POLICIES}")))?;
    let millis = |field: &'static str, raw: &str| {
        humantime::parse_duration(raw.trim())
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .ok_or_else(|| {
                invalid(
                    field,
                    "must be a duration such as \"500ms\", \"30s\" or \"1h\"",
                )
            })
    };
    let (base, max) = (millis("backoff.base", base)?, millis("backoff.max", max)?);
    if !(100..=3_600_000).contains(&base) {
        return Err(invalid("backoff.base", "must be between 100ms and 1h"));
    }
    if max < base || max > 7 * 86_400_000 {
        return Err(invalid(
            "backoff.max",
            "must be at least backoff.base and at most 7d",
        ));
    }
    Ok((policy, base, max))
}

/// An app's delivery window: how many webhooks of one subscription may be
/// in flight at once, a JSON whole number from 1 to 64 (`null`, a string or
/// a fraction is refused like any other value out of range).
pub fn window(raw: &serde_json::Value) -> Result<DeliveryWindow, Invalid> {
    raw.as_i64().and_then(DeliveryWindow::new).ok_or_else(|| {
        invalid(
            "window",
            format!("must be a whole number from 1 to {}", DeliveryWindow::MAX),
        )
    })
}

/// How an app receives its events: `push`, `pull`, or a broker (`nats`,
/// `amqp`, `redis`).
pub fn delivery(raw: &serde_json::Value) -> Result<entity::DeliveryMode, Invalid> {
    raw.as_str()
        .and_then(entity::DeliveryMode::parse)
        .ok_or_else(|| {
            invalid(
                "delivery",
                "must be \"push\", \"pull\", \"nats\", \"amqp\" or \"redis\"",
            )
        })
}

/// A broker app's destination for `mode`: its URL and templates checked,
/// an address in its URL judged by the address rule (a name is judged
/// when the connection is made).
pub fn destination(
    mode: entity::DeliveryMode,
    raw: &serde_json::Value,
    policy: UrlPolicy,
) -> Result<actors::broker::Destination, Invalid> {
    let destination =
        actors::broker::Destination::parse(mode, raw).map_err(|why| invalid("destination", why))?;
    destination
        .check_host(actors::net::AddressRule {
            allow_private: policy.allow_private_targets,
            allow_http: true,
        })
        .map_err(|why| invalid("destination", why))?;
    Ok(destination)
}

/// A destination given to an app that does not deliver to a broker.
pub fn destination_unused() -> Invalid {
    invalid(
        "destination",
        "is only for delivery \"nats\", \"amqp\" or \"redis\"",
    )
}

/// A broker delivery without its destination.
pub fn destination_needed(mode: entity::DeliveryMode) -> Invalid {
    invalid("destination", format!("is needed for delivery \"{mode}\""))
}

pub async fn base_url(raw: &str, policy: UrlPolicy) -> Result<String, Invalid> {
    const FIELD: &str = "base_url";
    let value = bounded(FIELD, raw, 1, MAX_URL_LEN)?;
    let url = Url::parse(&value).map_err(|_| invalid(FIELD, "must be a valid URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http_targets => {}
        _ => return Err(invalid(FIELD, "must use https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(FIELD, "must not contain credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(FIELD, "must not have a query or a fragment"));
    }
    check_public_host(FIELD, &url, policy).await?;
    Ok(value)
}

/// Hosts known to serve `…/owner/name` and `…/owner/name.git` as one
/// repository: there the canonical form drops `.git`. Any other server may
/// serve two repositories under the two names (a plain `git daemon` or
/// `git http-backend` does), so elsewhere they stay two repositories.
pub const SUFFIX_BLIND_HOSTS: [&str; 5] = [
    "github.com",
    "gitlab.com",
    "gitea.com",
    "codeberg.org",
    "bitbucket.org",
];

/// A validated repository remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl {
    /// The canonical form, the repository's identity: lower-case scheme and
    /// host, no trailing `/`, no credentials, and no `.git` on the hosts
    /// that ignore it ([`SUFFIX_BLIND_HOSTS`]).
    pub canonical: String,
    /// The URL as given (without a trailing `/`): what git fetches, since not
    /// every server answers without the `.git` suffix.
    pub fetch: String,
    pub owner: String,
    pub name: String,
}

/// A repository URL: https (http and git:// only with
/// `security.allow_http_targets`; `file://` and absolute paths only with
/// `git.allow_local_repos`), no credentials, a public host unless
/// `security.allow_private_targets`, and an `owner/name` path.
pub async fn repo_url(
    field: &'static str,
    raw: &str,
    policy: UrlPolicy,
) -> Result<RepoUrl, Invalid> {
    let value = bounded(field, raw, 1, MAX_URL_LEN)?;
    let local_path = value.starts_with('/');
    let url = if local_path {
        Url::from_file_path(&value).map_err(|_| invalid(field, "is not a valid path"))?
    } else {
        Url::parse(&value).map_err(|_| invalid(field, "must be a valid URL"))?
    };
    match url.scheme() {
        "https" => {}
        "http" | "git" if policy.allow_http_targets => {}
        "file" if policy.allow_local_repos => {}
        "file" => {
            return Err(invalid(
                field,
                "local repositories are disabled (git.allow_local_repos)",
            ));
        }
        _ => return Err(invalid(field, "must be an https URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            field,
            "must not contain credentials; send the token as github_token",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(field, "must not have a query or a fragment"));
    }
    if url.scheme() != "file" {
        check_public_host(field, &url, policy).await?;
    }
    let given = url.path().trim_end_matches('/');
    // Trimmed again: `…/owner/.git` names `owner`, canonically without a `/`.
    let path = given
        .strip_suffix(".git")
        .unwrap_or(given)
        .trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The URL parser resolved the dot segments it saw; `..git` becomes one
    // only once `.git` is stripped, and would name no repository.
    if segments.iter().any(|s| matches!(*s, "." | "..")) {
        return Err(invalid(field, "must name a repository (…/owner/name)"));
    }
    let Some((name, owner_segments)) = segments.split_last() else {
        return Err(invalid(field, "must name a repository (…/owner/name)"));
    };
    // `owner` is the last path segment before the name (GitHub's owner, GitLab's
    // innermost group); a repository at the top of its server is owned by the host.
    let owner = owner_segments
        .last()
        .map(|s| (*s).to_owned())
        .or_else(|| url.host_str().map(str::to_owned))
        .unwrap_or_default();
    let suffix_blind = url
        .host_str()
        .is_some_and(|host| SUFFIX_BLIND_HOSTS.contains(&host));
    let mut canonical = url.clone();
    canonical.set_path(if suffix_blind { path } else { given });
    let mut fetch = url.clone();
    fetch.set_path(url.path().trim_end_matches('/'));
    Ok(RepoUrl {
        canonical: canonical.to_string(),
        fetch: fetch.to_string(),
        owner,
        name: (*name).to_owned(),
    })
}

/// Refuses hosts that are, or resolve to, non-public addresses.
async fn check_public_host(
    field: &'static str,
    url: &Url,
    policy: UrlPolicy,
) -> Result<(), Invalid> {
    if policy.allow_private_targets {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<IpAddr> = match url.host() {
        None => return Err(invalid(field, "must have a host")),
        Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(Host::Domain(domain)) => {
            let lookup = tokio::time::timeout(
                RESOLVE_TIMEOUT,
                tokio::net::lookup_host((domain.to_owned(), port)),
            )
            .await;
            match lookup {
                Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                _ => {
                    return Err(invalid(
                        field,
                        format!("host `{domain}` could not be resolved"),
                    ));
                }
            }
        }
    };
    if addresses.is_empty() {
        return Err(invalid(field, "host has no addresses"));
    }
    if addresses.iter().any(|ip| !actors::net::is_global(*ip)) {
        return Err(invalid(
            field,
            "host resolves to a private, loopback or link-local address",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: UrlPolicy = UrlPolicy {
        allow_private_targets: false,
        allow_http_targets: false,
        allow_local_repos: false,
    };

    #[test]
    fn a_window_is_a_whole_number_from_1_to_64() {
        for n in [1, 8, 64] {
            assert_eq!(
                window(&serde_json::json!(n)).map(DeliveryWindow::get),
                Ok(n)
            );
        }
        for bad in [
            serde_json::json!(0),
            serde_json::json!(65),
            serde_json::json!(-1),
            serde_json::json!(8.5),
            serde_json::json!(8.0),
            serde_json::json!("8"),
            serde_json::json!(null),
            serde_json::json!(true),
            serde_json::json!([8]),
        ] {
            let refused = window(&bad).expect_err("refused");
            assert_eq!(refused.field, "window", "{bad}");
            assert!(refused.message.contains("1 to 64"), "{bad}");
        }
    }

    #[tokio::test]
    async fn base_urls_must_be_public_https() {
        assert!(base_url("https://1.1.1.1/hooks", STRICT).await.is_ok());
        for bad in [
            "http://1.1.1.1/hooks",
            "https://127.0.0.1/hooks",
            "https://169.254.169.254/latest",
            "https://[::1]/",
            "https://user:pw@1.1.1.1/",
            "ftp://1.1.1.1/",
            "not a url",
        ] {
            assert!(
                base_url(bad, STRICT).await.is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[tokio::test]
    async fn repo_urls_are_canonicalised() {
        let repo = repo_url("url", "https://1.1.1.1/Owner/Repo.git/", STRICT)
            .await
            .expect("valid");
        assert_eq!(repo.canonical, "https://1.1.1.1/Owner/Repo.git");
        assert_eq!((repo.owner.as_str(), repo.name.as_str()), ("Owner", "Repo"));
        let nested = repo_url("url", "https://1.1.1.1/group/sub/project", STRICT)
            .await
            .expect("valid");
        assert_eq!(
            (nested.owner.as_str(), nested.name.as_str()),
            ("sub", "project")
        );
        // Found by `repository_urls_canonicalise_to_a_fixed_point`.
        let bare_git = repo_url("url", "https://1.1.1.1/owner/.git", STRICT)
            .await
            .expect("valid");
        assert_eq!(bare_git.canonical, "https://1.1.1.1/owner/.git");
        assert_eq!(bare_git.name, "owner");
        assert!(
            repo_url("url", "https://1.1.1.1/owner/..git", STRICT)
                .await
                .is_err()
        );
    }

    /// `name` and `name.git` are one repository only where the host is known
    /// to treat them as one; elsewhere they may be two.
    #[tokio::test]
    async fn the_git_suffix_is_dropped_only_on_hosts_that_ignore_it() {
        const OPEN: UrlPolicy = UrlPolicy {
            allow_private_targets: true,
            ..STRICT
        };
        for host in SUFFIX_BLIND_HOSTS {
            let plain = repo_url("url", &format!("https://{host}/o/r"), OPEN).await;
            let suffixed = repo_url(
                "url",
                &format!("https://{}/o/r.git/", host.to_uppercase()),
                OPEN,
            )
            .await;
            let (plain, suffixed) = (plain.expect("valid"), suffixed.expect("valid"));
            assert_eq!(plain.canonical, format!("https://{host}/o/r"));
            assert_eq!(suffixed.canonical, plain.canonical, "{host}");
            assert_eq!(suffixed.fetch, format!("https://{host}/o/r.git"));
        }
        for host in ["git.example.com", "github.com.example.org", "1.1.1.1"] {
            let plain = repo_url("url", &format!("https://{host}/o/r"), OPEN).await;
            let suffixed = repo_url("url", &format!("https://{host}/o/r.git/"), OPEN).await;
            let (plain, suffixed) = (plain.expect("valid"), suffixed.expect("valid"));
            assert_eq!(plain.canonical, format!("https://{host}/o/r"));
            assert_eq!(suffixed.canonical, format!("https://{host}/o/r.git"));
            assert_eq!(
                (suffixed.owner.as_str(), suffixed.name.as_str()),
                ("o", "r")
            );
        }
        let local = UrlPolicy {
            allow_local_repos: true,
            ..STRICT
        };
        let bare = repo_url("url", "/srv/git/r.git", local)
            .await
            .expect("valid");
        assert_eq!(bare.canonical, "file:///srv/git/r.git");
    }

    #[tokio::test]
    async fn local_repositories_need_the_switch() {
        assert!(repo_url("url", "file:///srv/git/r", STRICT).await.is_err());
        assert!(repo_url("url", "/srv/git/r", STRICT).await.is_err());
        let local = UrlPolicy {
            allow_local_repos: true,
            ..STRICT
        };
        assert!(repo_url("url", "file:///srv/git/r", local).await.is_ok());
    }

    #[test]
    fn invisible_format_characters_are_refused_in_names() {
        for c in [
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{202a}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{feff}',
            '\u{00ad}',
            '\u{061c}',
            '\u{e0001}',
        ] {
            let err = app_name(&format!("ac{c}me")).expect_err("refused");
            assert_eq!(err.field, "app_name", "U+{:04X}", u32::from(c));
            assert!(err.message.contains("invisible"), "{err}");
        }
        assert_eq!(
            app_name("Ünïcödé – café 🚀").as_deref(),
            Ok("Ünïcödé – café 🚀")
        );
    }

    #[test]
    fn branch_names_follow_git_rules() {
        assert!(branch("main").is_ok());
        assert!(branch("feature/x-1").is_ok());
        for bad in ["-x", "a..b", "a b", "x.lock", "a/.b", "a~1", ""] {
            assert!(branch(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn emails_and_keys_are_checked() {
        assert!(email("dev@example.com").is_ok());
        assert!(email("not-an-email").is_err());
        assert!(client_auth_key("short").is_err());
        assert!(client_auth_key(&"k".repeat(16)).is_ok());
        assert!(client_auth_key(&"k".repeat(501)).is_err());
    }

    #[test]
    fn globs_are_validated() {
        assert!(globs("include", &["docs/**/*.md".to_owned()]).is_ok());
        assert!(globs("include", &["a[".to_owned()]).is_err());
    }
}

/// Property tests of the URL rules: the SSRF check judges an address, not
/// its spelling, and whatever string arrives, validation answers (never a
/// panic) and what it accepts keeps the rules.
#[cfg(test)]
mod properties {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    const STRICT: UrlPolicy = UrlPolicy {
        allow_private_targets: false,
        allow_http_targets: false,
        allow_local_repos: false,
    };

    /// No address rule: nothing is resolved, so any host may be generated.
    const OPEN: UrlPolicy = UrlPolicy {
        allow_private_targets: true,
        allow_http_targets: false,
        allow_local_repos: false,
    };

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    /// IPv4 addresses, half of them drawn from the special-purpose ranges.
    fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            any::<u32>().prop_map(Ipv4Addr::from),
            (
                prop::sample::select(vec![0u8, 10, 100, 127, 169, 172, 192, 198, 203, 224, 255]),
                any::<[u8; 3]>()
            )
                .prop_map(|(first, [b, c, d])| Ipv4Addr::new(first, b, c, d)),
        ]
    }

    /// IPv6 addresses, most of them in ranges the rule names.
    fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
        prop_oneof![
            any::<u128>().prop_map(Ipv6Addr::from),
            (
                prop::sample::select(vec![
                    0u16, 0x0064, 0x0100, 0x2001, 0x2002, 0xfc00, 0xfd12, 0xfe80, 0xfec0, 0xff02,
                    0x2606,
                ]),
                any::<[u16; 7]>()
            )
                .prop_map(|(first, rest)| {
                    Ipv6Addr::new(
                        first, rest[0], rest[1], rest[2], rest[3], rest[4], rest[5], rest[6],
                    )
                }),
            ipv4().prop_map(|v4| v4.to_ipv6_mapped()),
            ipv4().prop_map(|v4| v4.to_ipv6_compatible()),
        ]
    }

    /// Ways of writing one IPv4 address in a URL that WHATWG parsers read
    /// as that address: dotted, one decimal number, hexadecimal, octal
    /// parts, and the IPv4-mapped IPv6 form.
    fn spellings(ip: Ipv4Addr) -> Vec<String> {
        let [a, b, c, d] = ip.octets();
        vec![
            ip.to_string(),
            u32::from(ip).to_string(),
            format!("0x{:x}", u32::from(ip)),
            format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
            format!("0x{a:x}.{b}.{}", u16::from_be_bytes([c, d])),
            format!("[::ffff:{ip}]"),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// An app endpoint on an IP literal is accepted exactly when the
        /// address is public, however the address is written.
        #[test]
        fn base_urls_are_judged_by_their_address(v4 in ipv4(), v6 in ipv6(), path in "(/[a-z0-9]{0,8}){0,3}") {
            block_on(async {
                let public = actors::net::is_global(IpAddr::V4(v4));
                for host in spellings(v4) {
                    let url = format!("https://{host}{path}");
                    let verdict = base_url(&url, STRICT).await;
                    prop_assert_eq!(verdict.is_ok(), public, "{} ({}): {:?}", url, v4, verdict);
                }
                let url = format!("https://[{v6}]{path}");
                let verdict = base_url(&url, STRICT).await;
                prop_assert_eq!(
                    verdict.is_ok(), actors::net::is_global(IpAddr::V6(v6)),
                    "{}: {:?}", url, verdict
                );
                Ok(())
            })?;
        }

        /// Whatever string arrives as a base URL, validation answers; what it
        /// accepts is an https URL with a host, no credentials, no query or
        /// fragment, given back as it came (trimmed).
        #[test]
        fn accepted_base_urls_keep_the_rules(
            raw in prop_oneof![
                "\\PC{0,40}",
                "(https?|ftp|file|HTTPS)://([a-z0-9.@:%\\[\\]-]{0,20})(/[ -~]{0,12})?",
            ]
        ) {
            block_on(async {
                if let Ok(accepted) = base_url(&raw, OPEN).await {
                    let url = Url::parse(&accepted).expect("accepted URLs parse");
                    prop_assert_eq!(url.scheme(), "https");
                    prop_assert!(url.host().is_some());
                    prop_assert!(url.username().is_empty() && url.password().is_none());
                    prop_assert!(url.query().is_none() && url.fragment().is_none());
                    prop_assert_eq!(accepted.as_str(), raw.trim());
                }
                Ok(())
            })?;
        }

        /// A repository URL's canonical form is stable: validating it again
        /// gives the same identity, owner and name, and it carries no
        /// credentials or trailing slash; `.git` only on hosts other than
        /// [`SUFFIX_BLIND_HOSTS`], where the URLs with and without it stay
        /// two repositories.
        #[test]
        fn repository_urls_canonicalise_to_a_fixed_point(
            host in prop_oneof![
                "[a-zA-Z][a-zA-Z0-9-]{0,10}(\\.[a-zA-Z]{2,4})?",
                prop::sample::select(SUFFIX_BLIND_HOSTS.to_vec()).prop_map(str::to_owned),
                prop::sample::select(SUFFIX_BLIND_HOSTS.to_vec()).prop_map(str::to_uppercase),
            ],
            segments in prop::collection::vec("[A-Za-z0-9_.~-]{1,10}", 1..4),
            git_suffix in any::<bool>(),
            slash in any::<bool>(),
            junk in "\\PC{0,40}",
        ) {
            block_on(async {
                let raw = format!(
                    "https://{host}/{}{}{}",
                    segments.join("/"),
                    if git_suffix { ".git" } else { "" },
                    if slash { "/" } else { "" },
                );
                let Ok(first) = repo_url("github_url", &raw, OPEN).await else {
                    return Ok(());
                };
                let again = repo_url("github_url", &first.canonical, OPEN).await
                    .map_err(|err| TestCaseError::fail(format!("{raw} -> {}: {err}", first.canonical)))?;
                prop_assert_eq!(&again.canonical, &first.canonical, "{}", raw);
                prop_assert_eq!(&again.owner, &first.owner);
                prop_assert_eq!(&again.name, &first.name);
                prop_assert!(!first.canonical.ends_with('/'), "{} -> {}", raw, first.canonical);
                prop_assert!(!first.name.is_empty());
                let suffix_blind = SUFFIX_BLIND_HOSTS.contains(&host.to_ascii_lowercase().as_str());
                let plain = raw.trim_end_matches('/').strip_suffix(".git").map(str::to_owned);
                if suffix_blind {
                    prop_assert!(!first.canonical.ends_with(".git"), "{} -> {}", raw, first.canonical);
                }
                // The same URL without `.git`: one repository with it exactly
                // on the hosts that ignore the suffix.
                if let Some(plain) = plain
                    && let Ok(other) = repo_url("github_url", &plain, OPEN).await
                {
                    prop_assert_eq!(
                        other.canonical == first.canonical, suffix_blind,
                        "{} and {}: {} and {}", raw, plain, first.canonical, other.canonical
                    );
                }
                let _ = repo_url("github_url", &junk, OPEN).await;
                let _ = repo_url("github_url", &junk, STRICT).await;
                Ok(())
            })?;
        }
    }
}
