//! The HTTP front: routing of the Open Inference Protocol v2 paths to
//! handlers, and the JSON answers they share. The accept loop is in
//! `crate::server`, which wires the doors together.

mod admin;
pub mod config;
mod feedback;
mod handlers;
mod reply;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use crate::error::ApiError;
use crate::state::Gateway;

pub type Body = Full<Bytes>;

/// Every request enters here.
pub async fn route(gw: Arc<Gateway>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    // The URI's parts are shared, not copied; the path's segments go into
    // a fixed array (no route has more than six), so routing allocates
    // nothing.
    let uri = req.uri().clone();
    let path = uri.path();
    let mut parts = [""; MAX_SEGMENTS + 1];
    let mut count = 0;
    for (slot, segment) in parts.iter_mut().zip(path.trim_matches('/').split('/')) {
        *slot = segment;
        count += 1;
    }
    let segments = &parts[..count];
    let method = req.method().clone();
    let result = match (&method, segments) {
        (&Method::GET, ["v2", "health", "live"]) => {
            Ok(reply::json(200, &serde_json::json!({"live": true})))
        }
        (&Method::GET, ["v2", "health", "ready"]) => Ok(handlers::server_ready(&gw)),
        (&Method::GET, ["v2"]) => Ok(handlers::server_metadata()),
        (&Method::GET, ["metrics"]) => Ok(handlers::metrics(&gw)),
        (&Method::GET, [""]) => Ok(crate::dashboard::redirect()),
        (&Method::GET, ["dashboard", "api", "v1", "state"]) => {
            let allowed = admin::authorize(&gw, &req, crate::auth::Access::Read);
            crate::dashboard::state(&gw, allowed, req.uri().query()).await
        }
        (&Method::GET, ["dashboard", rest @ ..]) => crate::dashboard::asset(rest),
        (_, [""] | ["dashboard", ..]) => Err(ApiError::MethodNotAllowed(method.to_string())),
        (&Method::POST, ["v2", "repository", "index"]) => admin::index(&gw, req).await,
        (
            &Method::POST,
            [
                "v2",
                "repository",
                "models",
                model,
                action @ ("load" | "unload"),
            ],
        ) => admin::load_or_unload(&gw, req, model, *action == "load").await,
        (
            _,
            ["v2", "repository", "index"] | ["v2", "repository", "models", _, "load" | "unload"],
        ) => Err(ApiError::MethodNotAllowed(method.to_string())),
        (&Method::GET, ["v2", "models", model, "routing"]) => admin::get_routing(&gw, &req, model),
        (&Method::PUT, ["v2", "models", model, "routing"]) => {
            admin::put_routing(&gw, req, model).await
        }
        (&Method::POST, ["v2", "models", model, "rollout"]) => {
            admin::post_verdict(&gw, req, model).await
        }
        (&Method::POST, ["v2", "models", model, "feedback"]) => {
            feedback::feedback(&gw, req, model).await
        }
        (_, ["v2", "models", _, "routing" | "rollout" | "feedback"]) => {
            Err(ApiError::MethodNotAllowed(method.to_string()))
        }
        (_, ["v2", "models", model, rest @ ..]) => match split_version(rest) {
            Ok((version, tail)) => match (&method, tail) {
                (&Method::POST, ["infer"]) => {
                    return Ok(handlers::infer(&gw, req, model, version).await);
                }
                (&Method::GET, []) => handlers::model_metadata(&gw, model, version),
                (&Method::GET, ["ready"]) => handlers::model_ready(&gw, model, version),
                (_, [] | ["ready"] | ["infer"]) => {
                    Err(ApiError::MethodNotAllowed(method.to_string()))
                }
                _ => Err(ApiError::NotFound(format!("no route for {path}"))),
            },
            Err(e) => Err(e),
        },
        (_, ["v2", "health", "live" | "ready"] | ["v2"] | ["metrics"]) => {
            Err(ApiError::MethodNotAllowed(method.to_string()))
        }
        _ => Err(ApiError::NotFound(format!("no route for {path}"))),
    };
    Ok(result.unwrap_or_else(|e| {
        crate::metrics::unrouted("http", e.status_and_outcome().1);
        reply::error(&e)
    }))
}

/// The most path segments a route has (`v2/models/m/versions/1/infer`);
/// a longer path keeps one more, so it matches no route.
const MAX_SEGMENTS: usize = 6;

/// `versions/{v}/...` → `(Some(v), ...)`; anything else has no version.
fn split_version<'a, 'b>(rest: &'a [&'b str]) -> Result<(Option<u64>, &'a [&'b str]), ApiError> {
    match rest {
        ["versions", v, tail @ ..] => match v.parse::<u64>() {
            Ok(n) if n > 0 => Ok((Some(n), tail)),
            _ => Err(ApiError::BadRequest(format!(
                "model version '{v}' is not a positive integer"
            ))),
        },
        _ => Ok((None, rest)),
    }
}
