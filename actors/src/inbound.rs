//! Inbound push webhooks from git hosts (SPEC §6), the pure part: checking a
//! hook's signature or token, reading what a stored hook asks for, and telling
//! whether a URL from a payload names a watched repository.
//!
//! A hook is only ever a trigger: it says "this repository's branch moved",
//! and the repository's watcher then fetches and diffs as on a poll. Nothing
//! in a payload (commit lists, file lists) is trusted as the change list.

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

/// The git hosts whose push webhooks Herald understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    GitHub,
    GitLab,
    Gitea,
}

impl Provider {
    /// The name in the URL (`/hooks/{name}`), in the database and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Gitea => "gitea",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "github" => Some(Provider::GitHub),
            "gitlab" => Some(Provider::GitLab),
            "gitea" => Some(Provider::Gitea),
            _ => None,
        }
    }

    /// The header carrying the event's type.
    pub fn event_header(self) -> &'static str {
        match self {
            Provider::GitHub => "x-github-event",
            Provider::GitLab => "x-gitlab-event",
            Provider::Gitea => "x-gitea-event",
        }
    }

    /// The header carrying the delivery's unique id (the same on redeliveries).
    pub fn delivery_header(self) -> &'static str {
        match self {
            Provider::GitHub => "x-github-delivery",
            Provider::GitLab => "x-gitlab-event-uuid",
            Provider::Gitea => "x-gitea-delivery",
        }
    }

    /// The header carrying the signature (GitHub, Gitea) or the token (GitLab).
    pub fn signature_header(self) -> &'static str {
        match self {
            Provider::GitHub => "x-hub-signature-256",
            Provider::GitLab => "x-gitlab-token",
            Provider::Gitea => "x-gitea-signature",
        }
    }

    /// What to do with an event of this type, known from its header alone.
    pub fn classify(self, event_type: &str) -> EventClass {
        let event = event_type.trim();
        match self {
            Provider::GitHub if event.eq_ignore_ascii_case("ping") => EventClass::Ping,
            Provider::GitHub | Provider::Gitea if event.eq_ignore_ascii_case("push") => {
                EventClass::Push
            }
            // System hooks carry pushes too; `object_kind` tells them apart later.
            Provider::GitLab
                if ["Push Hook", "Tag Push Hook", "System Hook"]
                    .iter()
                    .any(|e| event.eq_ignore_ascii_case(e)) =>
            {
                EventClass::Push
            }
            _ => EventClass::Other,
        }
    }
}

/// How the HTTP layer treats an event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClass {
    /// A push (branch or tag): stored, then processed.
    Push,
    /// The host checking the hook works: answered, not stored.
    Ping,
    /// Anything else (issues, pull requests…): answered, not stored.
    Other,
}

type HmacSha256 = Hmac<Sha256>;

/// Checks a hook's signature or token against the configured secret, over
/// the raw body, in constant time. `signature` is the provider's header.
///
/// - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
/// - Gitea: `X-Gitea-Signature: <hex HMAC-SHA256(secret, body)>`.
/// - GitLab: `X-Gitlab-Token: <the secret token itself>`.
pub fn verify(
    provider: Provider,
    secret: &SecretString,
    signature: Option<&str>,
    body: &[u8],
) -> bool {
    let Some(signature) = signature.map(str::trim).filter(|s| !s.is_empty()) else {
        return false;
    };
    match provider {
        Provider::GitLab => crate::crypto::tokens_match(signature, secret),
        Provider::GitHub => signature
            .strip_prefix("sha256=")
            .is_some_and(|hex_mac| hmac_matches(secret, hex_mac, body)),
        // Gitea sends the bare hex digest; accept GitHub's prefix as well.
        Provider::Gitea => hmac_matches(
            secret,
            signature.strip_prefix("sha256=").unwrap_or(signature),
            body,
        ),
    }
}

fn hmac_matches(secret: &SecretString, hex_mac: &str, body: &[u8]) -> bool {
    let Ok(expected) = hex::decode(hex_mac) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected).is_ok()
}

/// The HMAC a provider would send for `body` (hex), for tests and benchmarks.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// What a stored hook asks for, read from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A branch of a repository moved (or was created or deleted).
    Push(Push),
    /// Nothing to do; the reason is recorded with the hook.
    Ignore(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Every URL the payload gives for the repository (clone, ssh, web).
    pub urls: Vec<String>,
    pub branch: String,
    /// The branch was deleted (its new head is all zeros).
    pub deleted: bool,
    /// The repository's default branch, when the payload names it.
    pub default_branch: Option<String>,
}

/// Why a stored hook could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPayload(String);

#[derive(Deserialize)]
struct GitHubPush {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    repository: GitHubRepository,
}

/// GitHub's and Gitea's `repository` object (Gitea copies GitHub's shape).
#[derive(Deserialize)]
struct GitHubRepository {
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    git_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

#[derive(Deserialize)]
struct GitLabPush {
    #[serde(default)]
    object_kind: Option<String>,
    #[serde(default)]
    event_name: Option<String>,
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    after: Option<String>,
    project: GitLabProject,
}

#[derive(Deserialize)]
struct GitLabProject {
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    git_ssh_url: Option<String>,
    #[serde(default)]
    web_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

fn zero_sha(sha: Option<&str>) -> bool {
    sha.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b == b'0'))
}

/// Reads a stored hook of a push-kind event (see [`Provider::classify`]).
pub fn interpret(provider: Provider, event_type: &str, body: &[u8]) -> Result<Trigger, BadPayload> {
    let bad = |err: serde_json::Error| {
        BadPayload(format!("not a {} push payload: {err}", provider.as_str()))
    };
    let (reference, deleted, urls, default_branch) = match provider {
        Provider::GitHub | Provider::Gitea => {
            if provider.classify(event_type) != EventClass::Push {
                return Ok(Trigger::Ignore(format!(
                    "`{event_type}` is not a push event"
                )));
            }
            let push: GitHubPush = serde_json::from_slice(body).map_err(bad)?;
            let repo = push.repository;
            let deleted = push.deleted || zero_sha(push.after.as_deref());
            let urls = [repo.clone_url, repo.ssh_url, repo.html_url, repo.git_url];
            (push.reference, deleted, urls.to_vec(), repo.default_branch)
        }
        Provider::GitLab => {
            let push: GitLabPush = serde_json::from_slice(body).map_err(bad)?;
            let kind = push
                .object_kind
                .or(push.event_name)
                .unwrap_or_default()
                .to_ascii_lowercase();
            if kind != "push" && kind != "tag_push" {
                return Ok(Trigger::Ignore(format!("`{kind}` is not a push event")));
            }
            let project = push.project;
            let urls = [project.git_http_url, project.git_ssh_url, project.web_url];
            (
                push.reference,
                zero_sha(push.after.as_deref()),
                urls.to_vec(),
                project.default_branch,
            )
        }
    };
    if reference.starts_with("refs/tags/") {
        return Ok(Trigger::Ignore("tag push".to_owned()));
    }
    let Some(branch) = reference
        .strip_prefix("refs/heads/")
        .filter(|b| !b.is_empty())
    else {
        return Ok(Trigger::Ignore(format!("`{reference}` is not a branch")));
    };
    let urls: Vec<String> = urls
        .into_iter()
        .flatten()
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(BadPayload("the payload names no repository URL".to_owned()));
    }
    Ok(Trigger::Push(Push {
        urls,
        branch: branch.to_owned(),
        deleted,
        default_branch: default_branch.filter(|b| !b.is_empty()),
    }))
}

/// A repository location reduced to what identifies it across the URL forms
/// a host uses (https clone URL, ssh URL, `user@host:path`, web URL): host and
/// path compared without case, without `.git` and trailing slashes. Ports are
/// compared only between URLs of the same scheme (an ssh port says nothing
/// about the https one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKey {
    scheme: String,
    host: String,
    port: Option<u16>,
    /// Lower case, with a leading `/`, no trailing `/` or `.git`.
    pub path: String,
}

impl RemoteKey {
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        if raw.contains("://") {
            let url = url::Url::parse(raw).ok()?;
            let scheme = url.scheme().to_ascii_lowercase();
            let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
            let port = url.port_or_known_default().or(match scheme.as_str() {
                "ssh" => Some(22),
                "git" => Some(9418),
                _ => None,
            });
            let path = normalise_path(url.path())?;
            return Some(Self {
                scheme,
                host,
                port,
                path,
            });
        }
        // scp-like ssh: `[user@]host:path`.
        let (authority, path) = raw.split_once(':')?;
        if authority.contains('/') || path.starts_with("//") {
            return None;
        }
        let host = authority.rsplit('@').next()?.to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        Some(Self {
            scheme: "ssh".to_owned(),
            host,
            port: None,
            path: normalise_path(path)?,
        })
    }

    /// Whether both name the same repository.
    pub fn matches(&self, other: &RemoteKey) -> bool {
        self.host == other.host
            && self.path == other.path
            && (self.scheme != other.scheme || self.port == other.port)
    }
}

fn normalise_path(path: &str) -> Option<String> {
    let mut path = path.trim().trim_end_matches('/').to_ascii_lowercase();
    if path.ends_with(".git") {
        path.truncate(path.len() - 4);
    }
    let path = path.trim_end_matches('/');
    let path = format!("/{}", path.trim_start_matches('/'));
    (path.len() > 1).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> RemoteKey {
        RemoteKey::parse(raw).unwrap_or_else(|| panic!("{raw} parses"))
    }

    #[test]
    fn url_forms_of_one_repository_match() {
        let watched = key("https://github.com/Octo/Hello");
        for form in [
            "https://github.com/octo/hello.git",
            "https://GitHub.com/Octo/Hello/",
            "git@github.com:Octo/Hello.git",
            "ssh://git@github.com/octo/hello.git",
            "ssh://git@github.com:2222/octo/hello.git",
            "git://github.com/octo/hello.git",
            "https://github.com:443/octo/hello",
        ] {
            assert!(key(form).matches(&watched), "{form}");
        }
        for other in [
            "https://github.com/octo/hello-world",
            "https://gitlab.com/octo/hello",
            "https://github.com/other/hello",
            "https://github.com:8443/octo/hello",
        ] {
            assert!(!key(other).matches(&watched), "{other}");
        }
        let nested = key("https://gitlab.example.com/group/sub/project");
        assert!(key("git@gitlab.example.com:group/sub/project.git").matches(&nested));
        assert!(!key("git@gitlab.example.com:sub/project.git").matches(&nested));
        assert_eq!(RemoteKey::parse("not a url"), None);
        assert_eq!(RemoteKey::parse("https://github.com/"), None);
    }

    #[test]
    fn signatures_are_checked_over_the_raw_body() {
        let secret = SecretString::from("s3cret");
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mac = sign("s3cret", body);
        let github = format!("sha256={mac}");
        assert!(verify(Provider::GitHub, &secret, Some(&github), body));
        assert!(!verify(Provider::GitHub, &secret, Some(&mac), body));
        assert!(!verify(Provider::GitHub, &secret, Some(&github), b"{}"));
        assert!(!verify(Provider::GitHub, &secret, None, body));
        assert!(!verify(Provider::GitHub, &secret, Some("sha256=zz"), body));
        assert!(verify(Provider::Gitea, &secret, Some(&mac), body));
        assert!(!verify(
            Provider::Gitea,
            &SecretString::from("other"),
            Some(&mac),
            body
        ));
        assert!(verify(Provider::GitLab, &secret, Some("s3cret"), body));
        assert!(verify(Provider::GitLab, &secret, Some(" s3cret "), b"x"));
        assert!(!verify(Provider::GitLab, &secret, Some("wrong"), body));
        assert!(!verify(Provider::GitLab, &secret, Some(""), body));
    }

    #[test]
    fn pushes_tags_and_deletions_are_told_apart() {
        let github = |reference: &str, after: &str, deleted: bool| {
            serde_json::json!({
                "ref": reference, "after": after, "deleted": deleted,
                "repository": {"clone_url": "https://github.com/o/r.git", "default_branch": "main"}
            })
            .to_string()
        };
        let push = interpret(
            Provider::GitHub,
            "push",
            github("refs/heads/main", "ab12", false).as_bytes(),
        )
        .expect("a push");
        assert_eq!(
            push,
            Trigger::Push(Push {
                urls: vec!["https://github.com/o/r.git".into()],
                branch: "main".into(),
                deleted: false,
                default_branch: Some("main".into()),
            })
        );
        let deleted = interpret(
            Provider::GitHub,
            "push",
            github("refs/heads/gone", &"0".repeat(40), true).as_bytes(),
        )
        .expect("a deletion");
        assert!(matches!(deleted, Trigger::Push(Push { deleted: true, .. })));
        assert_eq!(
            interpret(
                Provider::GitHub,
                "push",
                github("refs/tags/v1", "ab12", false).as_bytes()
            ),
            Ok(Trigger::Ignore("tag push".into()))
        );
        let gitlab_tag = serde_json::json!({
            "object_kind": "tag_push", "ref": "refs/tags/v1", "after": "ab12",
            "project": {"git_http_url": "https://gitlab.com/o/r.git"}
        });
        assert_eq!(
            interpret(
                Provider::GitLab,
                "Tag Push Hook",
                gitlab_tag.to_string().as_bytes()
            ),
            Ok(Trigger::Ignore("tag push".into()))
        );
        let gitlab_deleted = serde_json::json!({
            "object_kind": "push", "ref": "refs/heads/main", "after": "0".repeat(40),
            "project": {"git_http_url": "https://gitlab.com/o/r.git", "web_url": "https://gitlab.com/o/r"}
        });
        assert!(matches!(
            interpret(
                Provider::GitLab,
                "Push Hook",
                gitlab_deleted.to_string().as_bytes()
            ),
            Ok(Trigger::Push(Push { deleted: true, .. }))
        ));
        assert!(interpret(Provider::Gitea, "push", b"[1,2]").is_err());
        assert!(
            interpret(
                Provider::Gitea,
                "push",
                br#"{"ref":"refs/heads/x","repository":{}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn event_types_are_classified_from_the_header() {
        assert_eq!(Provider::GitHub.classify("ping"), EventClass::Ping);
        assert_eq!(Provider::GitHub.classify("push"), EventClass::Push);
        assert_eq!(Provider::GitHub.classify("issues"), EventClass::Other);
        assert_eq!(Provider::Gitea.classify("push"), EventClass::Push);
        assert_eq!(Provider::GitLab.classify("Push Hook"), EventClass::Push);
        assert_eq!(Provider::GitLab.classify("Tag Push Hook"), EventClass::Push);
        assert_eq!(
            Provider::GitLab.classify("Merge Request Hook"),
            EventClass::Other
        );
    }
}
