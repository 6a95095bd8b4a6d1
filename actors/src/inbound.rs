//! Inbound push webhooks from git hosts (docs/api.md, Push webhooks from
//! git hosts), the pure part: checking a hook's signature or token,
//! unwrapping a form-encoded payload, reading what a stored hook asks for,
//! and telling whether a URL from a payload names a watched repository.
//!
//! A hook is only ever a trigger: it says "this repository's branch moved",
//! and the repository's watcher then fetches and diffs as on a poll. Nothing
//! in a payload (commit lists, file lists) is trusted as the change list.
//!
//! This module holds what every host shares; each host's payload shapes are
//! read in its own module (`github`, `gitlab`, `gitea`, `bitbucket`).

mod bitbucket;
mod gitea;
mod github;
mod gitlab;

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

/// The git hosts whose push webhooks Herald understands: the type stored in
/// `inbound_hooks.provider`; what each one sends is [`ProviderRules`].
pub use entity::Provider;

/// How each git host sends its hooks: the headers it uses, which events it
/// sends as pushes, what it signs.
pub trait ProviderRules: Copy {
    /// The headers carrying the event's type, the first one present wins.
    fn event_headers(self) -> &'static [&'static str];
    /// The headers carrying the delivery's unique id (the same on redeliveries).
    fn delivery_headers(self) -> &'static [&'static str];
    /// The headers carrying the signature (GitHub, Gitea, Bitbucket) or the
    /// token (GitLab).
    fn signature_headers(self) -> &'static [&'static str];
    /// What to do with an event of this type, known from its header alone.
    fn classify(self, event_type: &str) -> EventClass;
    /// Whether the provider signs the JSON payload (Gitea and Forgejo, also
    /// when they send it as a form) rather than the raw body (GitHub,
    /// Bitbucket). GitLab sends a token and signs nothing.
    fn signs_payload(self) -> bool;
}

impl ProviderRules for Provider {
    fn event_headers(self) -> &'static [&'static str] {
        match self {
            Provider::GitHub => &["x-github-event"],
            Provider::GitLab => &["x-gitlab-event"],
            Provider::Gitea => &["x-gitea-event", "x-forgejo-event"],
            Provider::Bitbucket => &["x-event-key"],
        }
    }

    fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            Provider::GitHub => &["x-github-delivery"],
            Provider::GitLab => &["x-gitlab-event-uuid"],
            Provider::Gitea => &["x-gitea-delivery", "x-forgejo-delivery"],
            Provider::Bitbucket => &["x-request-uuid"],
        }
    }

    fn signature_headers(self) -> &'static [&'static str] {
        match self {
            Provider::GitHub => &["x-hub-signature-256"],
            Provider::GitLab => &["x-gitlab-token"],
            Provider::Gitea => &["x-gitea-signature", "x-forgejo-signature"],
            Provider::Bitbucket => &["x-hub-signature"],
        }
    }

    fn classify(self, event_type: &str) -> EventClass {
        let event = event_type.trim();
        let is = |name: &str| event.eq_ignore_ascii_case(name);
        match self {
            Provider::GitHub if is("ping") => EventClass::Ping,
            Provider::GitHub if is("push") => EventClass::Push,
            // A deleted branch is a `delete` event on Gitea, never a push.
            Provider::Gitea if is("push") || is("delete") => EventClass::Push,
            // System hooks carry pushes too (`push`, `tag_push`,
            // `repository_update`); the payload tells them apart later.
            Provider::GitLab if is("Push Hook") || is("Tag Push Hook") || is("System Hook") => {
                EventClass::Push
            }
            Provider::Bitbucket if is("repo:push") => EventClass::Push,
            _ => EventClass::Other,
        }
    }

    fn signs_payload(self) -> bool {
        matches!(self, Provider::Gitea)
    }
}

/// How the HTTP layer treats an event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClass {
    /// A push (branch or tag) or a branch deletion: stored, then processed.
    Push,
    /// The host checking the hook works: answered, not stored.
    Ping,
    /// Anything else (issues, pull requests…): answered, not stored.
    Other,
}

/// The JSON payload of a hook body: the body itself, or, when the host sent
/// the form content type (`application/x-www-form-urlencoded`, as GitHub
/// and Gitea offer), its `payload` field decoded. `None` when a form has no
/// `payload` field.
pub fn json_payload(form: bool, body: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if !form {
        return Some(std::borrow::Cow::Borrowed(body));
    }
    #[derive(Deserialize)]
    struct Form {
        payload: String,
    }
    serde_urlencoded::from_bytes::<Form>(body)
        .ok()
        .map(|form| std::borrow::Cow::Owned(form.payload.into_bytes()))
}

type HmacSha256 = Hmac<Sha256>;

/// Checks a hook's signature or token against the configured secret, over
/// the signed bytes ([`ProviderRules::signs_payload`]), in constant time.
/// `signature` is the provider's header.
///
/// - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
/// - Bitbucket Cloud: `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
/// - Gitea: `X-Gitea-Signature: <hex HMAC-SHA256(secret, JSON payload)>`.
/// - GitLab: `X-Gitlab-Token: <the secret token itself>`.
pub fn verify(
    provider: Provider,
    secret: &SecretString,
    signature: Option<&str>,
    signed: &[u8],
) -> bool {
    let Some(signature) = signature.map(str::trim).filter(|s| !s.is_empty()) else {
        return false;
    };
    match provider {
        Provider::GitLab => crate::crypto::tokens_match(signature, secret),
        Provider::GitHub | Provider::Bitbucket => signature
            .strip_prefix("sha256=")
            .is_some_and(|hex_mac| hmac_matches(secret, hex_mac, signed)),
        // Gitea sends the bare hex digest; accept GitHub's prefix as well.
        Provider::Gitea => hmac_matches(
            secret,
            signature.strip_prefix("sha256=").unwrap_or(signature),
            signed,
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
    /// Branches of a repository moved (or were created or deleted).
    Push(Push),
    /// Nothing to do; the reason is recorded with the hook.
    Ignore(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Every URL the payload gives for the repository (clone, ssh, web).
    pub urls: Vec<String>,
    /// The branches that moved: one for most pushes, several for GitLab's
    /// `repository_update` and Bitbucket's pushes.
    pub branches: Vec<BranchMove>,
    /// The repository's default branch, when the payload names it.
    pub default_branch: Option<String>,
}

/// One branch that moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchMove {
    pub branch: String,
    /// The branch was deleted (its new head is all zeros, or the host said so).
    pub deleted: bool,
}

/// Why a stored hook could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPayload(String);

/// One ref a payload says moved, before tags and other refs are set aside.
enum RefMove {
    Branch(BranchMove),
    Tag,
    Other(String),
}

impl RefMove {
    /// From a full ref name (`refs/heads/main`, `refs/tags/v1`).
    fn from_ref(reference: &str, deleted: bool) -> Self {
        if reference.starts_with("refs/tags/") {
            return RefMove::Tag;
        }
        match reference.strip_prefix("refs/heads/") {
            Some(branch) if !branch.is_empty() => RefMove::Branch(BranchMove {
                branch: branch.to_owned(),
                deleted,
            }),
            _ => RefMove::Other(reference.to_owned()),
        }
    }
}

fn zero_sha(sha: Option<&str>) -> bool {
    sha.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b == b'0'))
}

/// What one payload says: the repository's URLs, its default branch and the
/// refs that moved.
struct Read {
    urls: Vec<Option<String>>,
    default_branch: Option<String>,
    refs: Vec<RefMove>,
}

/// Why a payload asks for nothing.
enum NoPush {
    Bad(BadPayload),
    Ignore(String),
}

/// Reads a stored hook of a push-kind event (see [`Provider::classify`]).
pub fn interpret(provider: Provider, event_type: &str, body: &[u8]) -> Result<Trigger, BadPayload> {
    let read = match read(provider, event_type, body) {
        Ok(read) => read,
        Err(NoPush::Ignore(reason)) => return Ok(Trigger::Ignore(reason)),
        Err(NoPush::Bad(err)) => return Err(err),
    };
    let urls: Vec<String> = read
        .urls
        .into_iter()
        .flatten()
        .filter(|u| !u.trim().is_empty())
        .collect();
    if urls.is_empty() {
        return Err(BadPayload("the payload names no repository URL".to_owned()));
    }
    let mut branches = Vec::new();
    let mut other = None;
    let mut tags = false;
    for moved in read.refs {
        match moved {
            RefMove::Branch(branch) => branches.push(branch),
            RefMove::Tag => tags = true,
            RefMove::Other(reference) => other = other.or(Some(reference)),
        }
    }
    if branches.is_empty() {
        return Ok(Trigger::Ignore(match other {
            _ if tags => "tag push".to_owned(),
            Some(reference) => format!("`{reference}` is not a branch"),
            None => "no ref moved".to_owned(),
        }));
    }
    Ok(Trigger::Push(Push {
        urls,
        branches,
        default_branch: read.default_branch.filter(|b| !b.is_empty()),
    }))
}

fn read(provider: Provider, event_type: &str, body: &[u8]) -> Result<Read, NoPush> {
    if provider.classify(event_type) != EventClass::Push {
        return Err(NoPush::Ignore(format!(
            "`{event_type}` is not a push event"
        )));
    }
    let bad = |err: serde_json::Error| {
        NoPush::Bad(BadPayload(format!(
            "not a {} push payload: {err}",
            provider.as_str()
        )))
    };
    match provider {
        Provider::Gitea if event_type.trim().eq_ignore_ascii_case("delete") => {
            gitea::read_delete(serde_json::from_slice(body).map_err(bad)?)
        }
        Provider::GitHub | Provider::Gitea => Ok(github::read_push(
            serde_json::from_slice(body).map_err(bad)?,
        )),
        Provider::GitLab => gitlab::read(serde_json::from_slice(body).map_err(bad)?),
        Provider::Bitbucket => Ok(bitbucket::read(serde_json::from_slice(body).map_err(bad)?)),
    }
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

    /// The branches a trigger moves, and whether each was deleted.
    pub(super) fn moved(trigger: &Trigger) -> Vec<(String, bool)> {
        match trigger {
            Trigger::Push(push) => push
                .branches
                .iter()
                .map(|b| (b.branch.clone(), b.deleted))
                .collect(),
            Trigger::Ignore(reason) => panic!("ignored: {reason}"),
        }
    }

    #[test]
    fn event_types_are_classified_from_the_header() {
        assert_eq!(Provider::GitHub.classify("ping"), EventClass::Ping);
        assert_eq!(Provider::GitHub.classify("push"), EventClass::Push);
        assert_eq!(Provider::GitHub.classify("issues"), EventClass::Other);
        assert_eq!(Provider::Gitea.classify("push"), EventClass::Push);
        assert_eq!(Provider::GitLab.classify("Push Hook"), EventClass::Push);
        assert_eq!(Provider::GitLab.classify("Tag Push Hook"), EventClass::Push);
        assert_eq!(Provider::GitLab.classify("System Hook"), EventClass::Push);
        assert_eq!(Provider::Gitea.classify("delete"), EventClass::Push);
        assert_eq!(Provider::Gitea.classify("create"), EventClass::Other);
        assert_eq!(Provider::Bitbucket.classify("repo:push"), EventClass::Push);
        assert_eq!(
            Provider::Bitbucket.classify("pullrequest:created"),
            EventClass::Other
        );
        assert_eq!(
            Provider::GitLab.classify("Merge Request Hook"),
            EventClass::Other
        );
    }

    #[test]
    fn form_payloads_are_unwrapped_and_gitea_signs_the_json() {
        let json = br#"{"ref":"refs/heads/main","note":"a+b & c=d"}"#;
        let form: String = form_urlencoded_body(json);
        let payload = json_payload(true, form.as_bytes()).expect("a payload field");
        assert_eq!(payload.as_ref(), json);
        assert_eq!(json_payload(false, json).expect("JSON").as_ref(), json);
        assert!(json_payload(true, b"other=1").is_none());

        let secret = SecretString::from("s3cret");
        assert!(Provider::Gitea.signs_payload());
        assert!(!Provider::GitHub.signs_payload() && !Provider::Bitbucket.signs_payload());
        assert!(verify(
            Provider::Gitea,
            &secret,
            Some(&sign("s3cret", json)),
            &payload
        ));
        let bitbucket = format!("sha256={}", sign("s3cret", json));
        assert!(verify(Provider::Bitbucket, &secret, Some(&bitbucket), json));
        assert!(!verify(
            Provider::Bitbucket,
            &secret,
            Some(&sign("s3cret", json)),
            json
        ));
    }

    fn form_urlencoded_body(json: &[u8]) -> String {
        serde_urlencoded::to_string([("payload", std::str::from_utf8(json).expect("UTF-8"))])
            .expect("encodes")
    }
}
