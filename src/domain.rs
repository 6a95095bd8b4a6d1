//! Validated input types: a handler only ever holds values that passed these
//! parsers. Each error names the field and says what is wrong, never echoing a
//! secret.

use std::net::IpAddr;
use std::time::Duration;

use secrecy::SecretString;
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

/// The network rules that URL validation applies (SPEC §7).
#[derive(Debug, Clone, Copy)]
pub struct UrlPolicy {
    pub allow_private_targets: bool,
    pub allow_http_targets: bool,
    pub allow_local_repos: bool,
}

const MAX_URL_LEN: usize = 2048;
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A string field with length bounds, trimmed.
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

/// An app's endpoint base URL: https (http only with
/// `security.allow_http_targets`), no credentials, and a host whose every
/// address is public (unless `security.allow_private_targets`).
/// An app's retry backoff: a policy name of SPEC §5 and two durations
/// (`"500ms"`, `"1h"`), returned as (policy, base ms, cap ms).
pub fn backoff(policy: &str, base: &str, max: &str) -> Result<(String, i64, i64), Invalid> {
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
    Ok((policy.as_str().to_owned(), base, max))
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

/// A validated repository remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl {
    /// The canonical form, the repository's identity: lower-case scheme and
    /// host, no trailing `/` or `.git`, no credentials.
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
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
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
    let mut canonical = url.clone();
    canonical.set_path(path);
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
        assert_eq!(repo.canonical, "https://1.1.1.1/Owner/Repo");
        assert_eq!((repo.owner.as_str(), repo.name.as_str()), ("Owner", "Repo"));
        let nested = repo_url("url", "https://1.1.1.1/group/sub/project", STRICT)
            .await
            .expect("valid");
        assert_eq!(
            (nested.owner.as_str(), nested.name.as_str()),
            ("sub", "project")
        );
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
