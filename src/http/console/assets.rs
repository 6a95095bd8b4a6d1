//! The console's only static files, compiled into the binary: one
//! stylesheet and the vendored htmx (see `vendor/htmx/README.md`).

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::reply::Response;

const STYLESHEET: &[u8] = include_bytes!("console.css");
const HTMX: &[u8] = include_bytes!("vendor/htmx/htmx.min.js");

pub fn routes() -> BoxedFilter<(Response,)> {
    let css = warp::path!("admin" / "assets" / "console.css")
        .and(warp::get())
        .map(|| asset(STYLESHEET, "text/css; charset=utf-8"));
    let htmx = warp::path!("admin" / "assets" / "htmx.min.js")
        .and(warp::get())
        .map(|| asset(HTMX, "text/javascript; charset=utf-8"));
    css.or(htmx).unify().boxed()
}

fn asset(bytes: &'static [u8], content_type: &'static str) -> Response {
    let mut response = Response::new(bytes.into());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}
