//! The calling app's own settings (`Authorization: Bearer <app token>`):
//! `GET /api/app`, `PATCH /api/app` (base_url, the opt-in `synced`
//! notification, its retry backoff, its delivery window, its delivery:
//! webhooks, pull, or a broker destination) and
//! `POST /api/app/rotate-key`.

use actors::backoff::Backoff;
use actors::clock::{now_ms, rfc3339_ms};
use actors::crypto;
use actors::ids::AppId;
use actors::store::apps::AppUpdate;
use entity::app;
use secrecy::ExposeSecret;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::{Reply, Response};

use super::error::{ApiError, respond};
use super::filters::{app_auth, first_of, json_body, with_state};
use super::models::{AppProfile, AppView, BackoffView, RotatedKeyBody, UpdateApp};
use super::state::AppState;
use crate::domain::{self, Invalid};

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let body_limit = state.body_limit();
    let show = warp::path!("api" / "app")
        .and(warp::get())
        .and(app_auth(state.clone()))
        .and(with_state(state.clone()))
        .then(show)
        .map(respond);
    let update = warp::path!("api" / "app")
        .and(warp::patch())
        .and(app_auth(state.clone()))
        .and(json_body::<UpdateApp>(body_limit))
        .and(with_state(state.clone()))
        .then(update)
        .map(respond);
    let rotate = warp::path!("api" / "app" / "rotate-key")
        .and(warp::post())
        .and(app_auth(state.clone()))
        .and(with_state(state))
        .then(rotate_key)
        .map(respond);
    first_of([show.boxed(), update.boxed(), rotate.boxed()])
}

fn view(app: &app::Model, state: &AppState) -> Result<AppView, ApiError> {
    let destination = state.store.destination(app)?;
    let backoff = Backoff::of_app(app, state.settings.delivery.backoff.backoff());
    Ok(AppView {
        profile: AppProfile::from(app),
        notify_synced: app.notify_synced,
        notify_submodules: app.notify_submodules,
        resolve_lfs: app.resolve_lfs,
        backoff: BackoffView {
            policy: backoff.policy.as_str().to_owned(),
            base: humantime::format_duration(backoff.base).to_string(),
            max: humantime::format_duration(backoff.cap).to_string(),
        },
        previous_key_expires_at: app
            .previous_key_expires_at
            .filter(|until| *until > now_ms())
            .map(rfc3339_ms),
        destination: destination
            .filter(|_| app.delivery_mode.is_broker())
            .map(|d| d.shown()),
        updated_at: rfc3339_ms(app.updated_at),
    })
}

/// The calling app: where its webhooks go, its opt-ins, its backoff, its
/// delivery window.
#[utoipa::path(get, path = "/api/app", tag = "client",
    security(("app_token" = [])),
    responses(
        (status = 200, description = "The app", body = AppView),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody)))]
pub(crate) async fn show(app: app::Model, state: AppState) -> Result<Response, ApiError> {
    Ok(warp::reply::json(&view(&app, &state)?).into_response())
}

/// Changes the calling app's base_url, opt-ins, LFS resolution, retry
/// backoff, delivery window, delivery mode or broker destination.
/// Every field is validated before anything is written.
#[utoipa::path(patch, path = "/api/app", tag = "client",
    request_body = UpdateApp,
    security(("app_token" = [])),
    responses(
        (status = 200, description = "The updated app", body = AppView),
        (status = 400, description = "Malformed JSON", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 413, description = "Body too large", body = super::error::ErrorBody),
        (status = 422, description = "Invalid or unknown field", body = super::error::ErrorBody)))]
pub(crate) async fn update(
    app: app::Model,
    request: UpdateApp,
    state: AppState,
) -> Result<Response, ApiError> {
    if request.base_url.is_none()
        && request.notify_synced.is_none()
        && request.notify_submodules.is_none()
        && request.resolve_lfs.is_none()
        && request.backoff.is_none()
        && request.window.is_none()
        && request.delivery.is_none()
        && request.destination.is_none()
    {
        return Err(Invalid {
            field: "body",
            message: "names nothing to change (base_url, notify_synced, notify_submodules, \
                 resolve_lfs, backoff, window, delivery or destination)"
                .to_owned(),
        }
        .into());
    }
    let base_url = match request.base_url.as_deref() {
        Some(raw) => Some(domain::base_url(raw, state.url_policy()).await?),
        None => None,
    };
    let backoff = request
        .backoff
        .as_ref()
        .map(|b| domain::backoff(&b.policy, &b.base, &b.max))
        .transpose()?;
    let window = request.window.as_ref().map(domain::window).transpose()?;
    let delivery = request
        .delivery
        .as_ref()
        .map(domain::delivery)
        .transpose()?;
    // A broker delivery comes with its destination, or keeps the one it
    // has; a destination is for a broker delivery only.
    let mode = delivery.unwrap_or(app.delivery_mode);
    let destination = match (&request.destination, mode.is_broker()) {
        (Some(raw), true) => Some(domain::destination(mode, raw, state.url_policy())?),
        (Some(_), false) => return Err(domain::destination_unused().into()),
        (None, true) => {
            let kept = state.store.destination(&app)?;
            if kept.is_none_or(|kept| kept.mode() != mode) {
                return Err(domain::destination_needed(mode).into());
            }
            None
        }
        (None, false) => None,
    };
    let update = AppUpdate {
        base_url,
        notify_synced: request.notify_synced,
        notify_submodules: request.notify_submodules,
        resolve_lfs: request.resolve_lfs,
        backoff,
        window,
        delivery,
        destination,
    };
    let update_destination = update.destination.is_some();
    let updated = state
        .store
        .update_app(&AppId::stored(&app.id), update)
        .await?
        .ok_or_else(|| ApiError::NotFound("App not found".to_owned()))?;
    tracing::info!(app = %app.id, "app settings updated");
    if delivery.is_some_and(entity::DeliveryMode::is_sent) || update_destination {
        // Events a consumer left unread are now the webhooks' (or the
        // broker's) to send.
        state.engine.wake_delivery();
    }
    Ok(warp::reply::json(&view(&updated, &state)?).into_response())
}

/// Issues a new signing key, returned once. The previous key keeps signing
/// alongside (a second `webhook-signature` entry) for
/// `security.key_rotation_grace`, so receivers can switch without losing a
/// webhook; `X-Docora-Signature` uses the new key at once.
#[utoipa::path(post, path = "/api/app/rotate-key", tag = "client",
    security(("app_token" = [])),
    responses(
        (status = 200, description = "The new key, shown once", body = RotatedKeyBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody)))]
pub(crate) async fn rotate_key(app: app::Model, state: AppState) -> Result<Response, ApiError> {
    let grace =
        i64::try_from(state.settings.security.key_rotation_grace.as_millis()).unwrap_or(i64::MAX);
    let rotated = state
        .store
        .rotate_app_key(
            &AppId::stored(&app.id),
            crypto::generate_client_auth_key(),
            grace,
        )
        .await?
        .ok_or_else(|| ApiError::NotFound("App not found".to_owned()))?;
    tracing::info!(app = %app.id, "signing key rotated");
    Ok(warp::reply::json(&RotatedKeyBody {
        client_auth_key: rotated.client_auth_key.expose_secret().to_owned(),
        webhook_secret: rotated.webhook_secret.expose_secret().to_owned(),
        previous_key_expires_at: rfc3339_ms(rotated.previous_key_expires_at),
    })
    .into_response())
}
