//! The OpenAPI 3 document, generated from the handlers' annotations and the
//! wire types, served at `/openapi.json`, and its docs page at `/docs`.

use std::sync::Arc;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::Config;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::Uri;
use warp::path::{FullPath, Tail};
use warp::reply::{Reply, Response};

use super::{
    account, admin, client, error, events, hook_list, hooks, instances, models, operations, public,
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
        account::show,
        account::update,
        account::rotate_key,
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
    modifiers(&BearerSchemes),
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

/// `/openapi.json` and the docs page that reads it.
pub fn routes() -> BoxedFilter<(Response,)> {
    let document = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| warp::reply::json(&ApiDoc::openapi()).into_response());
    let docs_config = Arc::new(Config::from("/openapi.json"));
    let page = warp::path("docs")
        .and(warp::get())
        .and(warp::path::full())
        .and(warp::path::tail())
        .map(move |full: FullPath, tail: Tail| docs(&full, &tail, docs_config.clone()));
    document.or(page).unify().boxed()
}

/// Swagger UI, vendored into the binary (no download at build or run time).
fn docs(full: &FullPath, tail: &Tail, config: Arc<Config<'static>>) -> Response {
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
