//! The admin API: Triton's repository API (index, load, unload) and
//! Quiver's routing and rollout endpoints. Mutations are commands to the
//! model manager, which owns that state; reads come from the live set.
//! Mutations need the admin bearer token; reads need it only when
//! `admin.protect_reads` is set.

use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use quiver_contract::routing::RoutingState;
use serde::de::DeserializeOwned;

use super::{Body, reply};
use crate::auth::Access;
use crate::commands::{Command, Verdict};
use crate::error::ApiError;
use crate::state::Gateway;

/// Admin bodies are small JSON documents.
const MAX_ADMIN_BODY: usize = 64 << 10;
/// Checks the request's bearer token for an access of kind `access`.
pub fn authorize<B>(gw: &Gateway, req: &Request<B>, access: Access) -> Result<(), ApiError> {
    let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    crate::auth::authorize(&gw.settings.admin, header, access)
}

/// `POST /v2/repository/index`: every model and version with its state,
/// and why a version is not ready or not batched. An optional body `{"ready": true}` lists only ready versions.
pub async fn index(
    gw: &Gateway,
    req: Request<Incoming>,
) -> Result<hyper::Response<Body>, ApiError> {
    authorize(gw, &req, Access::Read)?;
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct IndexRequest {
        #[serde(default)]
        ready: bool,
    }
    let filter: IndexRequest = read_json_or_default(req).await?;
    let rows = gw.live.load().index(filter.ready);
    Ok(reply::json(200, &rows))
}

/// `POST /v2/repository/models/{m}/load` and `.../unload`.
pub async fn load_or_unload(
    gw: &Gateway,
    req: Request<Incoming>,
    model: &str,
    load: bool,
) -> Result<hyper::Response<Body>, ApiError> {
    authorize(gw, &req, Access::Write)?;
    // Triton clients may send parameters; Quiver loads from the repository
    // only, so a body is read (bounded) and otherwise ignored.
    let _ = read_body(req, MAX_ADMIN_BODY).await?;
    let cmd = if load {
        Command::Load(model.to_string())
    } else {
        Command::Unload(model.to_string())
    };
    send(gw, cmd).await
}

/// `GET /v2/models/{m}/routing`.
pub fn get_routing(
    gw: &Gateway,
    req: &Request<Incoming>,
    model: &str,
) -> Result<hyper::Response<Body>, ApiError> {
    authorize(gw, req, Access::Read)?;
    let live = gw.live.load();
    let entry = live
        .models
        .get(model)
        .ok_or_else(|| ApiError::NotFound(format!("unknown model '{model}'")))?;
    Ok(reply::json(
        200,
        &serde_json::json!({
            "name": model,
            "routing": entry.routing,
            "effective": {
                "stable": entry.table.stable,
                "canary": entry.table.canaries().collect::<Vec<_>>(),
                "shadow": entry.table.shadow,
            },
            "rollout": entry.rollout,
            "problem": entry.problem,
        }),
    ))
}

/// `PUT /v2/models/{m}/routing` with a `routing.json` document.
pub async fn put_routing(
    gw: &Gateway,
    req: Request<Incoming>,
    model: &str,
) -> Result<hyper::Response<Body>, ApiError> {
    authorize(gw, &req, Access::Write)?;
    let bytes = read_body(req, MAX_ADMIN_BODY).await?;
    let state = RoutingState::parse(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    send(gw, Command::SetRouting(model.to_string(), Box::new(state))).await
}

/// `POST /v2/models/{m}/rollout` with `{"action": "start"|"advance"|
/// "promote"|"rollback", "version": N, "by": "...", "reason": "..."}`.
pub async fn post_verdict(
    gw: &Gateway,
    req: Request<Incoming>,
    model: &str,
) -> Result<hyper::Response<Body>, ApiError> {
    authorize(gw, &req, Access::Write)?;
    let verdict: Verdict = read_json(req).await?;
    send(gw, Command::Verdict(model.to_string(), verdict)).await
}

async fn send(gw: &Gateway, cmd: Command) -> Result<hyper::Response<Body>, ApiError> {
    gw.command(cmd).await.map(|body| reply::json(200, &body))
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<bytes::Bytes, ApiError> {
    Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| {
            ApiError::BadRequest(format!(
                "cannot read request body (at most {limit} bytes): {e}"
            ))
        })
}

/// Reads a JSON body of at most `limit` bytes.
pub async fn read_json_limited<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(req, limit).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    read_json_limited(req, MAX_ADMIN_BODY).await
}

async fn read_json_or_default<T: DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let bytes = read_body(req, MAX_ADMIN_BODY).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}
