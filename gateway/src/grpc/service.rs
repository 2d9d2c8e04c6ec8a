//! `inference.GRPCInferenceService`: each RPC is a thin door onto the
//! same transport-free path as HTTP (routing, admission, batcher,
//! shadows, prediction log, metrics), with errors mapped to gRPC status
//! codes by `ApiError::grpc_code`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::*;
use crate::auth::Access;
use crate::commands::Command;
use crate::error::ApiError;
use crate::inference::{
    self, HEADER_BATCH_SIZE, HEADER_COMPUTE_US, HEADER_MODEL_VERSION, HEADER_QUEUE_US,
    HEADER_REQUEST_ID, HEADER_TOTAL_US,
};
use crate::metrics::GRPC_STREAMS_OPEN;
use crate::model::TensorSpec;
use crate::prediction_log::Source;
use crate::routing::key_hash;
use crate::state::Gateway;
use crate::tensor::DataType;

pub struct Service {
    pub(super) gw: Arc<Gateway>,
    /// Requests one stream may have in flight; past it the stream is not
    /// read until an answer goes out.
    pub(super) stream_max_in_flight: usize,
}

/// Stage timings of one answer, for response metadata.
struct Timings {
    version: u64,
    queue: Duration,
    compute: Duration,
    batch_rows: usize,
    total: Duration,
    id: Option<String>,
}

/// The `grpc-timeout` header: digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn authorize(gw: &Gateway, md: &MetadataMap, access: Access) -> Result<(), Status> {
    let header = md.get("authorization").map(|v| v.as_bytes());
    crate::auth::authorize(&gw.settings.admin, header, access).map_err(Status::from)
}

/// Counts a request that failed before it was routed, and converts it.
fn unrouted(e: ApiError) -> ApiError {
    crate::metrics::unrouted("grpc", e.status_and_outcome().1);
    e
}

/// What a call's metadata says about every request it carries.
#[derive(Clone, Default)]
struct CallMeta {
    header_key: Option<u64>,
    deadline: Option<Duration>,
    /// The W3C `traceparent`, when the caller traces.
    traceparent: Option<Vec<u8>>,
}

impl CallMeta {
    fn of(gw: &Gateway, md: &MetadataMap) -> CallMeta {
        CallMeta {
            header_key: md
                .get(gw.settings.routing.key_header.as_str())
                .map(|v| key_hash(v.as_bytes())),
            deadline: grpc_timeout(md),
            traceparent: md
                .get(crate::telemetry::TRACEPARENT)
                .map(|v| v.as_bytes().to_vec()),
        }
    }
}

/// One inference, unary or from a stream.
async fn infer(
    gw: &Gateway,
    request: ModelInferRequest,
    meta: &CallMeta,
    started: Instant,
) -> Result<(ModelInferResponse, Timings), ApiError> {
    let CallMeta {
        header_key,
        deadline,
        ..
    } = *meta;
    let mut trace = crate::telemetry::begin_with(
        meta.traceparent.as_deref(),
        started,
        crate::telemetry::Door::Grpc,
    );
    let model = request.model_name.clone();
    let version = convert::version(&request.model_version).map_err(unrouted)?;
    let raw = !request.raw_input_contents.is_empty();
    let mut request = convert::infer_request(request).map_err(unrouted)?;
    crate::telemetry::decoded(&mut trace);
    request.timeout = match (request.timeout, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let key = inference::key(header_key, request.id.as_deref());
    let route = inference::route(gw, &model, version, key).map_err(unrouted)?;
    match inference::predict(gw, &route, request, started).await {
        Ok(answer) => {
            let spec = &route.served.spec;
            let outputs: Vec<_> = answer.selected().into_iter().map(|(t, _)| t).collect();
            let response = convert::infer_response(
                &spec.name,
                spec.version,
                answer.id.as_deref(),
                &outputs,
                raw,
            );
            let timings = Timings {
                version: spec.version,
                queue: answer.queue_time,
                compute: answer.compute_time,
                batch_rows: answer.batch_rows,
                total: started.elapsed(),
                id: answer.id.clone(),
            };
            let elapsed = started.elapsed();
            let timing = crate::telemetry::Timing::of(&answer, started + elapsed);
            inference::account(&route, Source::Grpc, "success", elapsed, false);
            inference::log(gw, &route, answer, Source::Grpc, elapsed);
            crate::telemetry::finish(trace, &route, 200, "success", Some(timing));
            Ok((response, timings))
        }
        Err(e) => {
            let (status, outcome) = e.status_and_outcome();
            inference::account(
                &route,
                Source::Grpc,
                outcome,
                started.elapsed(),
                status >= 500,
            );
            Err(e)
        }
    }
}

/// The answer's metadata: the same `x-quiver-*` values as the HTTP
/// headers. Those that change with every call (timings, the request id)
/// go out as never-indexed HPACK literals: indexing them would only churn
/// the connection's header table, an insertion and an eviction per call.
fn with_timings<T>(message: T, t: &Timings) -> Response<T> {
    let mut r = Response::new(message);
    let md = r.metadata_mut();
    let mut set = |k: &'static str, v: u128, changing: bool| {
        let mut value = MetadataValue::from(u64::try_from(v).unwrap_or(u64::MAX));
        value.set_sensitive(changing);
        md.insert(k, value);
    };
    set(HEADER_MODEL_VERSION, u128::from(t.version), false);
    set(HEADER_QUEUE_US, t.queue.as_micros(), true);
    set(HEADER_COMPUTE_US, t.compute.as_micros(), true);
    set(HEADER_BATCH_SIZE, t.batch_rows as u128, false);
    set(HEADER_TOTAL_US, t.total.as_micros(), true);
    if let Some(id) = &t.id
        && let Ok(mut v) = MetadataValue::try_from(id.as_str())
    {
        v.set_sensitive(true);
        md.insert(HEADER_REQUEST_ID, v);
    }
    r
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.as_str().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

fn config_type(dt: DataType) -> super::proto::DataType {
    use super::proto::DataType as T;
    match dt {
        DataType::Bool => T::TypeBool,
        DataType::Uint8 => T::TypeUint8,
        DataType::Uint16 => T::TypeUint16,
        DataType::Uint32 => T::TypeUint32,
        DataType::Uint64 => T::TypeUint64,
        DataType::Int8 => T::TypeInt8,
        DataType::Int16 => T::TypeInt16,
        DataType::Int32 => T::TypeInt32,
        DataType::Int64 => T::TypeInt64,
        DataType::Fp16 => T::TypeFp16,
        DataType::Fp32 => T::TypeFp32,
        DataType::Fp64 => T::TypeFp64,
        DataType::Bytes => T::TypeString,
    }
}

/// Dims as Triton's config gives them: without the batch dimension when
/// the model is batched.
fn dims(shape: &[i64], batched: bool) -> Vec<i64> {
    if batched {
        shape.get(1..).unwrap_or_default().to_vec()
    } else {
        shape.to_vec()
    }
}

fn duration((count, ns): (u64, u64)) -> Option<StatisticDuration> {
    Some(StatisticDuration { count, ns })
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.gw.live.load().is_ready();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let version = convert::version(&r.version)?;
        let ready = self.gw.live.load().resolve(&r.name, version).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "quiver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let version = convert::version(&r.version)?;
        let live = self.gw.live.load();
        let served = live.resolve(&r.name, version)?;
        let versions = match version {
            Some(v) => vec![v.to_string()],
            None => live.ready_version_names(&r.name),
        };
        Ok(Response::new(ModelMetadataResponse {
            name: r.name,
            versions,
            platform: "onnxruntime_onnx".into(),
            inputs: tensor_metadata(&served.spec.inputs),
            outputs: tensor_metadata(&served.spec.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let started = Instant::now();
        let meta = CallMeta::of(&self.gw, request.metadata());
        let (response, timings) = infer(&self.gw, request.into_inner(), &meta, started).await?;
        Ok(with_timings(response, &timings))
    }

    type ModelStreamInferStream = ResponseStream;

    /// Requests on one stream run concurrently (at most
    /// `stream_max_in_flight`) and are answered in the order they came.
    /// When the client goes away, the work still queued is dropped before
    /// it reaches a model.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let meta = Arc::new(CallMeta::of(&self.gw, request.metadata()));
        let mut inbound = request.into_inner();
        let n = self.stream_max_in_flight;
        let (out_tx, out_rx) = mpsc::channel::<Result<ModelStreamInferResponse, Status>>(n);
        // Answers in request order: each request's answer slot, in order.
        let (order_tx, mut order_rx) =
            mpsc::channel::<oneshot::Receiver<ModelStreamInferResponse>>(n);
        let permits = Arc::new(Semaphore::new(n));
        let gw = Arc::clone(&self.gw);
        metrics::gauge!(GRPC_STREAMS_OPEN).increment(1.0);
        // The reader: one task per request, each bounded by a permit and
        // abandoned when the client is gone (its queued job is dropped
        // with it). Spawned tasks end with the stream: they hold no more
        // than their answer slot.
        let closed = out_tx.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    () = closed.closed() => break,
                };
                let request = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = closed.send(Err(super::limit_status(status))).await;
                        break;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                let (slot_tx, slot_rx) = oneshot::channel();
                if order_tx.send(slot_rx).await.is_err() {
                    break;
                }
                let gw = Arc::clone(&gw);
                let meta = Arc::clone(&meta);
                let gone = closed.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let id = request.id.clone();
                    let model = request.model_name.clone();
                    let work = infer(&gw, request, &meta, started);
                    let answer = tokio::select! {
                        r = work => r,
                        () = gone.closed() => return,
                    };
                    let message = match answer {
                        Ok((response, _)) => ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(response),
                        },
                        Err(e) => ModelStreamInferResponse {
                            error_message: e.to_string(),
                            infer_response: Some(ModelInferResponse {
                                model_name: model,
                                id,
                                ..Default::default()
                            }),
                        },
                    };
                    let _ = slot_tx.send(message);
                    drop(permit);
                });
            }
        });
        // The writer: answers in order, until the client goes away.
        tokio::spawn(async move {
            while let Some(slot) = order_rx.recv().await {
                let Ok(message) = slot.await else {
                    continue;
                };
                if out_tx.send(Ok(message)).await.is_err() {
                    break;
                }
            }
            metrics::gauge!(GRPC_STREAMS_OPEN).decrement(1.0);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let version = convert::version(&r.version)?;
        let live = self.gw.live.load();
        let spec = &live.resolve(&r.name, version)?.spec;
        let batched = spec.is_batched();
        let config = ModelConfig {
            name: r.name,
            platform: "onnxruntime_onnx".into(),
            backend: "onnxruntime".into(),
            max_batch_size: i32::try_from(spec.max_batch_size).unwrap_or(i32::MAX),
            input: spec
                .inputs
                .iter()
                .map(|s| ModelInput {
                    name: s.name.clone(),
                    data_type: config_type(s.datatype) as i32,
                    dims: dims(&s.shape, batched),
                })
                .collect(),
            output: spec
                .outputs
                .iter()
                .map(|s| ModelOutput {
                    name: s.name.clone(),
                    data_type: config_type(s.datatype) as i32,
                    dims: dims(&s.shape, batched),
                })
                .collect(),
            dynamic_batching: batched.then(ModelDynamicBatching::default),
            parameters: Default::default(),
        };
        Ok(Response::new(ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let version = convert::version(&r.version)?;
        let live = self.gw.live.load();
        if !r.name.is_empty() && !live.models.contains_key(&r.name) {
            return Err(ApiError::NotFound(format!("unknown model '{}'", r.name)).into());
        }
        let mut model_stats = Vec::new();
        for (name, entry) in &live.models {
            if !r.name.is_empty() && *name != r.name {
                continue;
            }
            for (v, e) in &entry.versions {
                let Some(served) = &e.served else { continue };
                if version.is_some_and(|want| want != *v) {
                    continue;
                }
                let t = &served.metrics.totals;
                let load =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                model_stats.push(ModelStatistics {
                    name: name.clone(),
                    version: v.to_string(),
                    last_inference: load(&t.last_ms),
                    inference_count: load(&t.rows),
                    execution_count: t.compute.get().0,
                    inference_stats: Some(InferStatistics {
                        success: duration(t.success.get()),
                        fail: duration(t.fail.get()),
                        queue: duration(t.queue.get()),
                        compute_input: duration((0, 0)),
                        compute_infer: duration(t.compute.get()),
                        compute_output: duration((0, 0)),
                    }),
                    batch_stats: t
                        .batch_sizes()
                        .into_iter()
                        .map(|(rows, count, ns)| InferBatchStatistics {
                            batch_size: rows as u64,
                            compute_input: duration((0, 0)),
                            compute_infer: duration((count, ns)),
                            compute_output: duration((0, 0)),
                        })
                        .collect(),
                });
            }
        }
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        authorize(&self.gw, request.metadata(), Access::Read)?;
        let ready = request.into_inner().ready;
        let models = self
            .gw
            .live
            .load()
            .index(ready)
            .into_iter()
            .map(|row| repository_index_response::ModelIndex {
                name: row.name,
                version: row.version.unwrap_or_default(),
                state: row.state.into(),
                reason: row.reason.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        authorize(&self.gw, request.metadata(), Access::Write)?;
        let model = request.into_inner().model_name;
        self.gw.command(Command::Load(model)).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        authorize(&self.gw, request.metadata(), Access::Write)?;
        let model = request.into_inner().model_name;
        self.gw.command(Command::Unload(model)).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut md = MetadataMap::new();
        for (v, want) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("1500u", Duration::from_micros(1500)),
            ("2M", Duration::from_secs(120)),
        ] {
            md.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout(&md), Some(want), "{v}");
        }
        md.insert("grpc-timeout", "12x".parse().unwrap());
        assert_eq!(grpc_timeout(&md), None);
    }
}
