//! The OpenAPI 3 document, generated from the handlers' annotations and the
//! wire types, served at `/openapi.json`, and its docs page at `/docs`.

use std::sync::Arc;

use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::Config;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::Uri;
use warp::path::{FullPath, Tail};
use warp::reply::{Reply, Response};

use super::{
    account, admin, client, error, events, hook_list, hooks, instances, models, operations, public,
    replay, stream,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Watches git repositories and delivers every file change to subscribed apps as signed webhooks. A superset of Docora's API."
    ),
    paths(
        public::health,
        public::ready,
        public::version,
        public::metrics,
        admin::onboard,
        admin::list_apps,
        admin::app_detail,
        admin::delete_app,
        admin::enable_app,
        client::register,
        client::list,
        client::detail,
        client::unwatch,
        client::update_token,
        client::scan,
        replay::start,
        replay::progress,
        account::show,
        account::update,
        account::rotate_key,
        stream::stream,
        stream::changes,
        stream::ack,
        events::list,
        events::detail,
        events::retry,
        events::skip,
        events::resync,
        operations::overview,
        operations::queue,
        operations::failed_notifications,
        operations::retry,
        operations::retry_app,
        operations::retry_all,
        operations::retry_progress,
        operations::retry_cancel,
        operations::resync,
        operations::breaker_reset,
        hook_list::list_hooks,
        instances::list_instances,
        hooks::github,
        hooks::gitlab,
        hooks::gitea,
        hooks::bitbucket,
    ),
    components(schemas(error::ErrorBody, models::RepositoryView, hooks::HookReply)),
    modifiers(&BearerSchemes, &SharedResponses, &Links),
    tags(
        (name = "public", description = "Health and metadata"),
        (name = "admin", description = "Operators: onboarding and app management (admin token)"),
        (name = "operations", description = "Operators: queue, failures, retries, resyncs, breakers (admin token)"),
        (name = "client", description = "Apps: repositories they watch (app token)"),
        (name = "hooks", description = "Inbound push webhooks from GitHub, GitLab, Gitea (Forgejo) and Bitbucket Cloud (verified by signature or token)")
    )
)]
pub struct ApiDoc;

struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["admin_token", "app_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// The answers that come from filters every route shares rather than from
/// a handler, documented once here so no operation misses them: the rate
/// limits (every route counts against its client address's budget), the
/// bearer check of every route that has a security requirement (and the
/// database it asks, which may be too busy), and the bounded JSON body of
/// every route that reads one.
struct SharedResponses;

impl SharedResponses {
    const SHARED: [(&'static str, &'static str, AppliesTo); 7] = [
        (
            "429",
            "Rate limited (`Retry-After` says when to try again)",
            AppliesTo::Every,
        ),
        ("401", "Missing or invalid token", AppliesTo::Secured),
        (
            "503",
            "The database was too busy to answer in time (`database_busy`): nothing was done; retry after `Retry-After` seconds",
            AppliesTo::Secured,
        ),
        ("400", "Malformed JSON", AppliesTo::WithBody),
        (
            "408",
            "The body did not arrive in time",
            AppliesTo::WithBody,
        ),
        ("413", "Body too large", AppliesTo::WithBody),
        (
            "422",
            "A body of the wrong shape, or an invalid field",
            AppliesTo::JsonBody,
        ),
    ];
}

#[derive(Clone, Copy)]
enum AppliesTo {
    Every,
    Secured,
    WithBody,
    /// A JSON body read on behalf of a caller (not an inbound hook, whose
    /// payload is only a trigger).
    JsonBody,
}

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                let secured = operation
                    .security
                    .as_ref()
                    .is_some_and(|requirements| !requirements.is_empty());
                let with_body = operation.request_body.is_some();
                for (status, description, filter) in Self::SHARED {
                    let applies = match filter {
                        AppliesTo::Every => true,
                        AppliesTo::Secured => secured,
                        AppliesTo::WithBody => with_body,
                        AppliesTo::JsonBody => with_body && secured,
                    };
                    if applies {
                        operation
                            .responses
                            .responses
                            .entry(status.to_owned())
                            .or_insert_with(|| error_response(description));
                    }
                }
            }
        }
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// OpenAPI links: where an id that one answer returns can be used next
/// (for clients, and for stateful contract tests that follow them).
struct Links;

impl Links {
    /// (path, method, status, link name, target operation id, target
    /// parameter, runtime expression giving its value).
    const LINKS: [(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    ); 17] = [
        (
            "/api/repositories/{id}/replay",
            "post",
            "202",
            "progress",
            "replay_progress",
            "replay_id",
            "$response.body#/id",
        ),
        (
            "/api/repositories",
            "post",
            "201",
            "detail",
            "repository_detail",
            "id",
            "$response.body#/repository_id",
        ),
        (
            "/api/repositories",
            "post",
            "201",
            "scan",
            "scan",
            "id",
            "$response.body#/repository_id",
        ),
        (
            "/api/repositories",
            "post",
            "201",
            "resync",
            "resync_repository",
            "id",
            "$response.body#/repository_id",
        ),
        (
            "/api/repositories",
            "post",
            "201",
            "update_token",
            "update_token",
            "id",
            "$response.body#/repository_id",
        ),
        (
            "/api/repositories",
            "post",
            "201",
            "unwatch",
            "unwatch",
            "id",
            "$response.body#/repository_id",
        ),
        (
            "/api/repositories",
            "post",
            "201",
            "breaker_reset",
            "breaker_reset",
            "id",
            "$response.body#/repository_id",
        ),
        (
            "/api/repositories",
            "get",
            "200",
            "detail",
            "repository_detail",
            "id",
            "$response.body#/data/0/repository_id",
        ),
        (
            "/api/events",
            "get",
            "200",
            "detail",
            "event_detail",
            "id",
            "$response.body#/data/0/event_id",
        ),
        (
            "/api/events",
            "get",
            "200",
            "retry",
            "retry_event",
            "id",
            "$response.body#/data/0/event_id",
        ),
        (
            "/api/events",
            "get",
            "200",
            "skip",
            "skip",
            "id",
            "$response.body#/data/0/event_id",
        ),
        (
            "/admin/api/apps/onboard",
            "post",
            "201",
            "detail",
            "app_detail",
            "id",
            "$response.body#/data/app_id",
        ),
        (
            "/admin/api/apps/onboard",
            "post",
            "201",
            "enable",
            "enable_app",
            "id",
            "$response.body#/data/app_id",
        ),
        (
            "/admin/api/apps/onboard",
            "post",
            "201",
            "delete",
            "delete_app",
            "id",
            "$response.body#/data/app_id",
        ),
        (
            "/admin/api/apps/onboard",
            "post",
            "201",
            "retry",
            "retry_app",
            "app_id",
            "$response.body#/data/app_id",
        ),
        (
            "/admin/api/retry/all",
            "post",
            "202",
            "progress",
            "retry_progress",
            "operation_id",
            "$response.body#/data/operation_id",
        ),
        (
            "/admin/api/retry/all",
            "post",
            "202",
            "cancel",
            "retry_cancel",
            "operation_id",
            "$response.body#/data/operation_id",
        ),
    ];
}

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, method, status, name, target, parameter, value) in Self::LINKS {
            let item = openapi
                .paths
                .paths
                .get_mut(path)
                .unwrap_or_else(|| panic!("{path} is documented"));
            let operation = match method {
                "get" => item.get.as_mut(),
                "post" => item.post.as_mut(),
                _ => None,
            }
            .unwrap_or_else(|| panic!("{method} {path} is documented"));
            let Some(RefOr::T(response)) = operation.responses.responses.get_mut(status) else {
                panic!("{method} {path} documents {status}");
            };
            response.links.insert(
                name.to_owned(),
                RefOr::T(
                    LinkBuilder::new()
                        .operation_id(target)
                        .parameter(parameter, value)
                        .build(),
                ),
            );
        }
    }
}

/// `/openapi.json` and the docs page that reads it.
pub fn routes() -> BoxedFilter<(Response,)> {
    let document = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| warp::reply::json(&ApiDoc::openapi()).into_response());
    // No validator badge: it would load an image from swagger.io, which the
    // page's policy refuses (and which would tell it the page was opened).
    let docs_config = Arc::new(Config::from("/openapi.json").validator_url("none"));
    let page = warp::path("docs")
        .and(warp::get())
        .and(warp::path::full())
        .and(warp::path::tail())
        .map(move |full: FullPath, tail: Tail| docs(&full, &tail, docs_config.clone()));
    document.or(page).unify().boxed()
}

/// The docs page's policy: Swagger UI's own scripts and styles only (it sets
/// inline style attributes, and its icons are `data:` images), no framing.
const DOCS_CSP: &str = "default-src 'self'; img-src 'self' data:; \
    style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// Swagger UI with its content security policy, never in a frame.
fn docs(full: &FullPath, tail: &Tail, config: Arc<Config<'static>>) -> Response {
    let mut response = docs_file(full, tail, config);
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        warp::http::HeaderValue::from_static(DOCS_CSP),
    );
    headers.insert(
        "x-frame-options",
        warp::http::HeaderValue::from_static("DENY"),
    );
    response
}

/// Swagger UI, vendored into the binary (no download at build or run time).
fn docs_file(full: &FullPath, tail: &Tail, config: Arc<Config<'static>>) -> Response {
    if full.as_str() == "/docs" {
        return warp::redirect::see_other(Uri::from_static("/docs/")).into_response();
    }
    match utoipa_swagger_ui::serve(tail.as_str(), config) {
        Ok(Some(file)) => {
            warp::reply::with_header(file.bytes.to_vec(), "content-type", file.content_type)
                .into_response()
        }
        Ok(None) => super::error::ApiError::NotFound("Not found".to_owned()).into_response(),
        Err(err) => {
            super::error::ApiError::internal(anyhow::anyhow!("swagger ui: {err}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn document() -> serde_json::Value {
        serde_json::to_value(ApiDoc::openapi()).expect("the document serialises")
    }

    fn operations(doc: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
        doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|item| item.as_object().expect("a path item").values())
    }

    #[test]
    fn operation_ids_are_unique_and_links_reach_them() {
        let doc = document();
        let mut ids = HashSet::new();
        for operation in operations(&doc) {
            let id = operation["operationId"].as_str().expect("an operation id");
            assert!(ids.insert(id.to_owned()), "operation id {id} is used twice");
        }
        let mut links = 0;
        for operation in operations(&doc) {
            for response in operation["responses"]
                .as_object()
                .expect("responses")
                .values()
            {
                for link in response["links"]
                    .as_object()
                    .into_iter()
                    .flat_map(|l| l.values())
                {
                    let target = link["operationId"].as_str().expect("a target");
                    assert!(
                        ids.contains(target),
                        "a link targets {target}, which is not documented"
                    );
                    links += 1;
                }
            }
        }
        assert_eq!(links, Links::LINKS.len());
    }

    #[test]
    fn shared_answers_are_documented_on_every_route() {
        let doc = document();
        for operation in operations(&doc) {
            let id = operation["operationId"].as_str().expect("an operation id");
            let responses = &operation["responses"];
            assert!(responses["429"].is_object(), "{id} documents 429");
            if operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
            {
                assert!(responses["401"].is_object(), "{id} documents 401");
                assert!(responses["503"].is_object(), "{id} documents 503");
            }
            if operation["requestBody"].is_object() {
                for status in ["400", "408", "413"] {
                    assert!(responses[status].is_object(), "{id} documents {status}");
                }
            }
        }
    }

    /// A replay past one of the app's quotas is a 429 whose description
    /// names each quota's code and which carries `Retry-After`.
    #[test]
    fn the_replay_quotas_are_documented_on_the_replay_route() {
        let doc = document();
        let replay = operations(&doc)
            .find(|op| op["operationId"] == "replay")
            .expect("the replay route");
        let too_many = &replay["responses"]["429"];
        let description = too_many["description"].as_str().unwrap_or_default();
        for code in [
            "replay_in_progress",
            "too_many_waiting_events",
            "replay_budget_spent",
        ] {
            assert!(description.contains(code), "{description}");
        }
        assert!(too_many["headers"]["retry-after"].is_object(), "{too_many}");
    }

    #[test]
    fn the_delivery_window_is_documented_where_apps_send_and_see_it() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for sent in ["UpdateApp", "OnboardRequest"] {
            let window = &schemas[sent]["properties"]["window"];
            assert_eq!(window["type"], "integer", "{sent}: {window}");
            assert_eq!(window["minimum"], 1, "{sent}: {window}");
            assert_eq!(window["maximum"], 64, "{sent}: {window}");
            let required = schemas[sent]["required"].as_array();
            assert!(
                !required.is_some_and(|r| r.contains(&serde_json::json!("window"))),
                "{sent}: window is optional"
            );
        }
        let shown = &schemas["AppProfile"];
        assert_eq!(shown["properties"]["window"]["type"], "integer", "{shown}");
        assert!(
            shown["required"]
                .as_array()
                .is_some_and(|r| r.contains(&serde_json::json!("window"))),
            "{shown}"
        );
    }
}
