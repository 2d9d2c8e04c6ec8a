//! The dashboard: a page served at `/dashboard` (HTML, CSS and JS
//! embedded in the binary, charts drawn as SVG by the page itself) and the
//! JSON document it polls, `/dashboard/api/v1/state`, which scripts may
//! read too. Reads follow `admin.protect_reads` like the other read
//! endpoints.
//!
//! - [`counters`]: the atomics the inference path bumps (a few relaxed
//!   adds per request and per batch; nothing else happens there);
//! - [`ring`]: a sample a second of every version for 15 minutes, taken
//!   by a sampler task off the inference path;
//! - [`guardrail`]: the rollout guardrail's last comparison;
//! - [`catalog`]: manifests and run records from the registry, and
//!   ([`trainer`]) online quality and drift from the trainer's metrics,
//!   read only while someone looks;
//! - [`view`]: the JSON document.

mod catalog;
mod counters;
pub mod guardrail;
mod ring;
mod trainer;
mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION};
use quiver_registry::Registry;

pub use counters::{Counters, Totals};
pub use ring::{CAPACITY, Sample};
pub use trainer::{DashboardConfig, DashboardSettings};

use crate::error::ApiError;
use crate::http::Body;
use crate::state::Gateway;
use catalog::Catalog;
use ring::Rings;

/// How often every version is sampled for the charts.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// The dashboard's state, one per gateway.
pub struct Dashboard {
    registry: Registry,
    trainer_metrics: Option<crate::plain_http::Url>,
    rings: Mutex<Rings>,
    catalog: Mutex<Arc<Catalog>>,
    /// One registry read at a time, however many pages poll.
    refreshing: tokio::sync::Mutex<()>,
}

impl Dashboard {
    pub fn new(registry: Registry, settings: &DashboardSettings) -> Dashboard {
        Dashboard {
            registry,
            trainer_metrics: settings.trainer_metrics.clone(),
            rings: Mutex::default(),
            catalog: Mutex::default(),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Starts the sampler: once a second it reads every served version's
/// counters and queue depth into the rings. It holds the gateway only
/// while it samples and ends once the gateway is gone, so it is not
/// tracked by shutdown.
pub fn start(gw: &Arc<Gateway>) {
    let weak: Weak<Gateway> = Arc::downgrade(gw);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(gw) = weak.upgrade() else { return };
            let live = gw.live.load();
            gw.dashboard
                .rings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sample(&live, Instant::now(), quiver_contract::records::now_ms());
        }
    });
}

/// `GET /`: the dashboard is the front page.
pub fn redirect() -> Response<Body> {
    let mut resp = respond(302, "text/plain; charset=utf-8", "see /dashboard");
    resp.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/dashboard"));
    resp
}

/// `GET /dashboard`, `/dashboard/app.css`, `/dashboard/app.js`: the page,
/// which holds no data (the data come from the API, which checks access).
pub fn asset(rest: &[&str]) -> Result<Response<Body>, ApiError> {
    let (content_type, body) = match rest {
        [] | [""] => ("text/html; charset=utf-8", INDEX_HTML),
        ["app.css"] => ("text/css; charset=utf-8", APP_CSS),
        ["app.js"] => ("text/javascript; charset=utf-8", APP_JS),
        _ => {
            return Err(ApiError::NotFound(format!(
                "no dashboard page /dashboard/{}",
                rest.join("/")
            )));
        }
    };
    let mut resp = respond(200, content_type, body);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// `GET /dashboard/api/v1/state[?window_s=N][&since_ms=T]`: the whole
/// view as JSON, with the last `N` seconds (default and most: 900) of
/// chart samples, and of those only the ones after `T` (Unix ms): a poller
/// that keeps what it has asks only for what is new.
/// `allowed` is the read-access check's verdict.
pub async fn state(
    gw: &Gateway,
    allowed: Result<(), ApiError>,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    allowed?;
    let window_s = window_seconds(query)?;
    let since_ms = since(query)?;
    let dash = &gw.dashboard;
    let live = gw.live.load_full();
    if !dash.catalog().is_fresh(Instant::now()) {
        let _one = dash.refreshing.lock().await;
        let old = dash.catalog();
        if !old.is_fresh(Instant::now()) {
            let wanted: BTreeMap<String, Vec<u64>> = live
                .models
                .iter()
                .map(|(name, e)| (name.clone(), e.versions.keys().copied().collect()))
                .collect();
            let registry = dash.registry.clone();
            let trainer = dash.trainer_metrics.clone();
            let new = tokio::task::spawn_blocking(move || {
                old.refresh(&registry, &wanted, trainer.as_ref())
            })
            .await
            .map_err(|e| ApiError::Internal(format!("registry read failed: {e}")))?;
            *dash.catalog.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        }
    }
    let catalog = dash.catalog();
    let doc = {
        let rings = dash.rings.lock().unwrap_or_else(|p| p.into_inner());
        view::state(
            &live,
            &rings,
            &catalog,
            quiver_contract::records::now_ms(),
            window_s * 1000,
            since_ms,
        )
    };
    let body = serde_json::to_vec(&doc)
        .map_err(|e| ApiError::Internal(format!("cannot encode the dashboard state: {e}")))?;
    let mut resp = respond(200, "application/json", body);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

fn window_seconds(query: Option<&str>) -> Result<u64, ApiError> {
    let most = CAPACITY as u64 * SAMPLE_INTERVAL.as_secs();
    let Some(value) = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("window_s="))
    else {
        return Ok(most);
    };
    match value.parse::<u64>() {
        Ok(n) if (1..=most).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "window_s must be a whole number of seconds from 1 to {most}, not '{value}'"
        ))),
    }
}

fn since(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(value) = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("since_ms="))
    else {
        return Ok(None);
    };
    value.parse::<u64>().map(Some).map_err(|_| {
        ApiError::BadRequest(format!("since_ms must be a Unix time in ms, not '{value}'"))
    })
}

fn respond(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::{since, window_seconds};

    #[test]
    fn window_parameter() {
        assert_eq!(window_seconds(None).unwrap(), 900);
        assert_eq!(window_seconds(Some("window_s=60")).unwrap(), 60);
        assert_eq!(window_seconds(Some("x=1&window_s=5")).unwrap(), 5);
        assert!(window_seconds(Some("window_s=0")).is_err());
        assert!(window_seconds(Some("window_s=901")).is_err());
        assert!(window_seconds(Some("window_s=abc")).is_err());
        assert_eq!(since(Some("window_s=5&since_ms=17")).unwrap(), Some(17));
        assert_eq!(since(None).unwrap(), None);
        assert!(since(Some("since_ms=-1")).is_err());
    }
}
