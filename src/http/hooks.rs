//! Inbound push webhooks from git hosts (`/hooks/github`, `/hooks/gitlab`,
//! `/hooks/gitea`, `/hooks/bitbucket`): rate limited per address, bounded,
//! verified over the signed bytes before anything reads them, stored
//! (deduplicated by delivery id) and answered 202 at once. A missing or
//! malformed credential is refused from the headers alone, before any of the
//! body is read; a body that is read counts against the in-flight budget
//! ([`super::budget::BodyBudget`]). The hook processor
//! (an actor) does the rest; a hook is only ever a trigger for a scan.

use std::net::IpAddr;

use actors::inbound::{self, EventClass, Provider, ProviderRules};
use actors::store::inbound::{NewHook, Stored};
use bytes::{Buf, Bytes};
use futures::StreamExt;
use futures::stream::BoxStream;
use secrecy::SecretString;
use serde::Serialize;
use tracing::{info, warn};
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::{Reply, Response};

use super::error::{ApiError, respond};
use super::filters::{client_ip, first_of, read_limited};
use super::ratelimit::Budget;
use super::state::AppState;

/// The longest delivery id kept as sent; longer (or missing) ones are
/// replaced by a hash of the body.
const MAX_DELIVERY_ID: usize = 200;

/// The answer to a hook.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookReply {
    /// `accepted` (stored, to be processed), `duplicate` (this delivery id was
    /// stored before), `ignored` (an event that never triggers a scan), `pong`.
    #[schema(example = "accepted")]
    pub status: &'static str,
    /// The stored hook (`accepted`, `duplicate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "hook_01jd0000000000000000000000")]
    pub hook_id: Option<String>,
}

type Body = BoxStream<'static, Result<Bytes, warp::Error>>;

/// What a handler gets of the request.
pub(crate) struct HookRequest {
    ip: IpAddr,
    headers: HeaderMap,
    body: Body,
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let github = route(state.clone(), Provider::GitHub, github);
    let gitlab = route(state.clone(), Provider::GitLab, gitlab);
    let gitea = route(state.clone(), Provider::Gitea, gitea);
    let bitbucket = route(state, Provider::Bitbucket, bitbucket);
    first_of([
        github.boxed(),
        gitlab.boxed(),
        gitea.boxed(),
        bitbucket.boxed(),
    ])
}

fn route<F, Fut>(state: AppState, provider: Provider, handler: F) -> BoxedFilter<(Response,)>
where
    F: Fn(AppState, HookRequest) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    warp::path("hooks")
        .and(warp::path(provider.as_str()))
        .and(warp::path::end())
        .and(warp::post())
        .and(client_ip())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream().map(boxed_body))
        .then(move |ip: IpAddr, headers: HeaderMap, body: Body| {
            handler(state.clone(), HookRequest { ip, headers, body })
        })
        .boxed()
}

fn boxed_body<S, B>(stream: S) -> Body
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    stream
        .map(|chunk| chunk.map(|mut buf| buf.copy_to_bytes(buf.remaining())))
        .boxed()
}

/// A GitHub webhook (`push`, `ping`; other events are answered and ignored),
/// with either content type GitHub offers: `application/json`, or
/// `application/x-www-form-urlencoded` (`payload=<JSON>`; the signature is
/// over the form body as sent).
#[utoipa::path(post, path = "/hooks/github", tag = "hooks",
    params(
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=` and the hex HMAC-SHA256 of the raw body with `inbound.github_secret`"),
        ("X-GitHub-Event" = String, Header, description = "`push` or `ping`; other events are ignored"),
        ("X-GitHub-Delivery" = Option<String>, Header, description = "The delivery id; a redelivery with the same id is a duplicate"),
    ),
    request_body(description = "GitHub's event payload, as JSON or as the form field `payload`", content(
        (Object = "application/json"),
        (Object = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "A ping, answered", body = HookReply),
        (status = 202, description = "Stored, a duplicate, or ignored; the scan follows", body = HookReply),
        (status = 400, description = "No event header, or a form without a `payload` field", body = super::error::ErrorBody),
        (status = 401, description = "Missing or bad signature; nothing stored", body = super::error::ErrorBody),
        (status = 404, description = "`inbound.github_secret` is not configured", body = super::error::ErrorBody),
        (status = 413, description = "Body larger than `inbound.max_body_bytes`", body = super::error::ErrorBody),
        (status = 429, description = "Rate limited", body = super::error::ErrorBody)))]
pub(crate) async fn github(state: AppState, request: HookRequest) -> Response {
    receive(state, Provider::GitHub, request).await
}

/// A GitLab webhook (`Push Hook`, `Tag Push Hook`, `System Hook`).
#[utoipa::path(post, path = "/hooks/gitlab", tag = "hooks",
    params(
        ("X-Gitlab-Token" = String, Header, description = "The webhook's secret token, `inbound.gitlab_token`"),
        ("X-Gitlab-Event" = String, Header, description = "`Push Hook`, `Tag Push Hook` or `System Hook`; other events are ignored"),
        ("X-Gitlab-Event-UUID" = Option<String>, Header, description = "The delivery id; a redelivery with the same id is a duplicate"),
    ),
    request_body(content = Object, description = "GitLab's event payload (a system hook's `repository_update` lists its refs in `changes`)", content_type = "application/json"),
    responses(
        (status = 202, description = "Stored, a duplicate, or ignored; the scan follows", body = HookReply),
        (status = 400, description = "No event header", body = super::error::ErrorBody),
        (status = 401, description = "Missing or bad token; nothing stored", body = super::error::ErrorBody),
        (status = 404, description = "`inbound.gitlab_token` is not configured", body = super::error::ErrorBody),
        (status = 413, description = "Body larger than `inbound.max_body_bytes`", body = super::error::ErrorBody),
        (status = 429, description = "Rate limited", body = super::error::ErrorBody)))]
pub(crate) async fn gitlab(state: AppState, request: HookRequest) -> Response {
    receive(state, Provider::GitLab, request).await
}

/// A Gitea (or Forgejo) webhook (`push`, and `delete` of a branch; other
/// events are answered and ignored), as JSON or form-encoded.
#[utoipa::path(post, path = "/hooks/gitea", tag = "hooks",
    params(
        ("X-Gitea-Signature" = String, Header, description = "The hex HMAC-SHA256 of the JSON payload with `inbound.gitea_secret` (Forgejo: `X-Forgejo-Signature`); with the form content type, of the `payload` field's JSON"),
        ("X-Gitea-Event" = String, Header, description = "`push` or `delete`; other events are ignored (Forgejo: `X-Forgejo-Event`)"),
        ("X-Gitea-Delivery" = Option<String>, Header, description = "The delivery id; a redelivery with the same id is a duplicate (Forgejo: `X-Forgejo-Delivery`)"),
    ),
    request_body(description = "Gitea's event payload, as JSON or as the form field `payload`", content(
        (Object = "application/json"),
        (Object = "application/x-www-form-urlencoded"))),
    responses(
        (status = 202, description = "Stored, a duplicate, or ignored; the scan follows", body = HookReply),
        (status = 400, description = "No event header", body = super::error::ErrorBody),
        (status = 401, description = "Missing or bad signature; nothing stored", body = super::error::ErrorBody),
        (status = 404, description = "`inbound.gitea_secret` is not configured", body = super::error::ErrorBody),
        (status = 413, description = "Body larger than `inbound.max_body_bytes`", body = super::error::ErrorBody),
        (status = 429, description = "Rate limited", body = super::error::ErrorBody)))]
pub(crate) async fn gitea(state: AppState, request: HookRequest) -> Response {
    receive(state, Provider::Gitea, request).await
}

/// A Bitbucket Cloud webhook (`repo:push`; other events are answered and
/// ignored).
#[utoipa::path(post, path = "/hooks/bitbucket", tag = "hooks",
    params(
        ("X-Hub-Signature" = String, Header, description = "`sha256=` and the hex HMAC-SHA256 of the raw body with `inbound.bitbucket_secret`"),
        ("X-Event-Key" = String, Header, description = "`repo:push`; other events are ignored"),
        ("X-Request-UUID" = Option<String>, Header, description = "The delivery id; a redelivery with the same id is a duplicate"),
    ),
    request_body(content = Object, description = "Bitbucket Cloud's event payload", content_type = "application/json"),
    responses(
        (status = 202, description = "Stored, a duplicate, or ignored; the scan follows", body = HookReply),
        (status = 400, description = "No event header", body = super::error::ErrorBody),
        (status = 401, description = "Missing or bad signature; nothing stored", body = super::error::ErrorBody),
        (status = 404, description = "`inbound.bitbucket_secret` is not configured", body = super::error::ErrorBody),
        (status = 413, description = "Body larger than `inbound.max_body_bytes`", body = super::error::ErrorBody),
        (status = 429, description = "Rate limited", body = super::error::ErrorBody)))]
pub(crate) async fn bitbucket(state: AppState, request: HookRequest) -> Response {
    receive(state, Provider::Bitbucket, request).await
}

async fn receive(state: AppState, provider: Provider, request: HookRequest) -> Response {
    let (outcome, result) = handle(&state, provider, request).await;
    if let Some(outcome) = outcome {
        metrics::counter!(
            "herald_inbound_hooks_total",
            "provider" => provider.as_str(),
            "outcome" => outcome,
        )
        .increment(1);
    }
    respond(result)
}

fn secret(state: &AppState, provider: Provider) -> Option<&SecretString> {
    let inbound = &state.settings.inbound;
    match provider {
        Provider::GitHub => inbound.github_secret.as_ref(),
        Provider::GitLab => inbound.gitlab_token.as_ref(),
        Provider::Gitea => inbound.gitea_secret.as_ref(),
        Provider::Bitbucket => inbound.bitbucket_secret.as_ref(),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first of `names` the request carries.
fn first_header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|name| header(headers, name))
}

/// Whether the body is form-encoded (`payload=<JSON>`) rather than JSON.
fn is_form(headers: &HeaderMap) -> bool {
    header(headers, "content-type")
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The length of a hex HMAC-SHA256.
const HEX_MAC_LEN: usize = 64;

/// Checks what the headers alone can tell of a hook's credential: GitLab's
/// token whole (it is the secret, compared in constant time), the others'
/// signature header present and shaped like a hex HMAC-SHA256 (`sha256=` and
/// 64 hex digits; Gitea's bare 64, or with the same prefix). The error says
/// why, for the log: `missing`, `malformed` or `bad`.
fn check_credential_header(
    provider: Provider,
    secret: &SecretString,
    signature: Option<&str>,
) -> Result<(), &'static str> {
    let signature = signature
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or("missing")?;
    let hex_mac = match provider {
        Provider::GitLab => {
            return if inbound::verify(provider, secret, Some(signature), &[]) {
                Ok(())
            } else {
                Err("bad")
            };
        }
        Provider::GitHub | Provider::Bitbucket => signature.strip_prefix("sha256="),
        Provider::Gitea => Some(signature.strip_prefix("sha256=").unwrap_or(signature)),
    };
    if hex_mac
        .is_some_and(|hex| hex.len() == HEX_MAC_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        Ok(())
    } else {
        Err("malformed")
    }
}

/// The 401 of a hook whose credential is missing, malformed or wrong
/// (`why`); logged without the credential.
fn refused(
    provider: Provider,
    ip: IpAddr,
    why: &'static str,
) -> (Option<&'static str>, Result<Response, ApiError>) {
    warn!(
        provider = provider.as_str(),
        %ip,
        signature = why,
        "inbound hook refused"
    );
    (
        Some("unauthorized"),
        Err(ApiError::Unauthorized(
            "missing or invalid webhook signature",
        )),
    )
}

fn reply(status: StatusCode, body: HookReply) -> Response {
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// The outcome for the metric (none for a provider that is not configured,
/// nor for a stored hook, which is counted once processed) and the answer.
async fn handle(
    state: &AppState,
    provider: Provider,
    request: HookRequest,
) -> (Option<&'static str>, Result<Response, ApiError>) {
    const REJECTED: Option<&str> = Some("rejected");
    let HookRequest { ip, headers, body } = request;
    if let Err(limited) = state.limits.check_ip(Budget::Inbound, ip) {
        return (REJECTED, Err(limited));
    }
    let Some(secret) = secret(state, provider) else {
        return (None, Err(ApiError::NotFound("Not found".to_owned())));
    };
    let limit = state.hook_body_limit();
    let declared = header(&headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit.bytes) {
        return (
            REJECTED,
            Err(ApiError::PayloadTooLarge { limit: limit.bytes }),
        );
    }
    // Credentials that cannot be right are refused from the headers alone,
    // before a byte of the body is read: only a plausible signature (or
    // GitLab's right token) makes Herald buffer a body.
    let signature = first_header(&headers, provider.signature_headers());
    if let Err(refusal) = check_credential_header(provider, secret, signature) {
        return refused(provider, ip, refusal);
    }
    let body = match read_limited(body, limit, declared).await {
        Ok(body) => body,
        Err(err) => return (REJECTED, Err(err)),
    };
    // Nothing of the body is read before this line, except the form encoding
    // of a provider that signs the JSON inside the form (Gitea).
    let form = is_form(&headers);
    let signed_payload = provider
        .signs_payload()
        .then(|| inbound::json_payload(form, &body))
        .flatten();
    let signed = if provider.signs_payload() {
        signed_payload.as_deref()
    } else {
        Some(&body[..])
    };
    if !signed.is_some_and(|signed| inbound::verify(provider, secret, signature, signed)) {
        return refused(provider, ip, "bad");
    }
    let Some(event_type) = first_header(&headers, provider.event_headers())
        .map(str::trim)
        .filter(|e| !e.is_empty() && e.len() <= 100)
    else {
        return (
            REJECTED,
            Err(ApiError::BadRequest(format!(
                "the {} header is missing",
                provider.event_headers()[0]
            ))),
        );
    };
    match provider.classify(event_type) {
        EventClass::Push => {}
        EventClass::Ping => {
            info!(provider = provider.as_str(), "inbound hook ping");
            let pong = HookReply {
                status: "pong",
                hook_id: None,
            };
            return (Some("ignored"), Ok(reply(StatusCode::OK, pong)));
        }
        EventClass::Other => {
            let ignored = HookReply {
                status: "ignored",
                hook_id: None,
            };
            return (Some("ignored"), Ok(reply(StatusCode::ACCEPTED, ignored)));
        }
    }
    let Some(payload) = signed_payload.or_else(|| inbound::json_payload(form, &body)) else {
        return (
            REJECTED,
            Err(ApiError::BadRequest(
                "the form has no `payload` field".to_owned(),
            )),
        );
    };
    let delivery_id = first_header(&headers, provider.delivery_headers())
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= MAX_DELIVERY_ID)
        .map_or_else(
            || format!("sha256:{}", actors::crypto::sha256_hex(&body)),
            str::to_owned,
        );
    let stored = state
        .store
        .store_hook(NewHook {
            provider,
            delivery_id: delivery_id.clone(),
            event_type: event_type.to_owned(),
            // Always the JSON, also when it came as a form.
            body: payload.into_owned(),
        })
        .await;
    match stored {
        Ok(Stored::New(id)) => {
            state.engine.process_hooks();
            info!(provider = provider.as_str(), hook = %id, delivery = %delivery_id, "inbound hook stored");
            let accepted = HookReply {
                status: "accepted",
                hook_id: Some(id.into_string()),
            };
            // Counted once processed: `accepted`, or `invalid` when its
            // payload cannot be read (see the hook processor).
            (None, Ok(reply(StatusCode::ACCEPTED, accepted)))
        }
        Ok(Stored::Duplicate(id)) => {
            info!(provider = provider.as_str(), hook = %id, delivery = %delivery_id, "inbound hook is a duplicate");
            let duplicate = HookReply {
                status: "duplicate",
                hook_id: Some(id),
            };
            (
                Some("duplicate"),
                Ok(reply(StatusCode::ACCEPTED, duplicate)),
            )
        }
        Err(err) => (REJECTED, Err(ApiError::from(err))),
    }
}
