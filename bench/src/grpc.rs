//! The gRPC mode: `ModelInfer` (unary) or `ModelStreamInfer` (one
//! bidirectional stream per connection, one request in flight on each),
//! with typed or raw contents, over plaintext or TLS. Each connection is
//! its own HTTP/2 connection, as each HTTP connection is its own socket.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use quiver_gateway::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use quiver_gateway::grpc::proto::model_infer_request::InferInputTensor;
use quiver_gateway::grpc::proto::{
    InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelStreamInferResponse,
    ServerReadyRequest,
};
use quiver_gateway::tensor::{Tensor, TensorData, binary};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint as TonicEndpoint};
use tonic::{Code, Streaming};

use crate::endpoint::{Endpoint, Outcome, Stages, Status};
use crate::workload::{self, Format, InputSpec};

type Client = GrpcInferenceServiceClient<Channel>;

/// Where and how to connect: `grpc://host:port` or `grpcs://host:port`
/// (TLS, trusting `ca` if given, else the system's roots are not used:
/// a CA file is required).
#[derive(Clone)]
pub struct GrpcTarget {
    pub uri: String,
    pub tls: Option<ClientTlsConfig>,
}

/// Parses `grpc://` / `grpcs://` URLs; `ca` is a PEM file for TLS.
pub fn target(url: &str, ca: Option<&std::path::Path>) -> Result<GrpcTarget> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("grpcs://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("grpc://") {
        (false, r)
    } else {
        bail!("{url}: a gRPC URL starts with grpc:// or grpcs://");
    };
    let hostport = rest.split('/').next().unwrap_or(rest);
    let tls = if tls {
        let ca = ca.context(
            "grpcs:// needs --ca-cert FILE (the CA that signed the server's certificate)",
        )?;
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
        Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem))
                .domain_name(host.to_string()),
        )
    } else {
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    Ok(GrpcTarget {
        uri: format!("{scheme}://{hostport}"),
        tls,
    })
}

impl GrpcTarget {
    pub async fn connect(&self) -> Result<Client> {
        let mut endpoint = TonicEndpoint::from_shared(self.uri.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.uri))?;
        Ok(GrpcInferenceServiceClient::new(channel).max_decoding_message_size(usize::MAX))
    }

    /// Waits until `ServerReady` says so.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let until = std::time::Instant::now() + timeout;
        loop {
            if let Ok(mut c) = self.connect().await
                && let Ok(r) = c.server_ready(ServerReadyRequest {}).await
                && r.get_ref().ready
            {
                return Ok(());
            }
            if std::time::Instant::now() > until {
                bail!("{} not ready within {timeout:?}", self.uri);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The model's inputs from `ModelMetadata`.
    pub async fn inputs(&self, model: &str) -> Result<Vec<InputSpec>> {
        let meta = self
            .connect()
            .await?
            .model_metadata(ModelMetadataRequest {
                name: model.into(),
                version: String::new(),
            })
            .await
            .with_context(|| format!("metadata of {model}"))?
            .into_inner();
        Ok(meta
            .inputs
            .into_iter()
            .map(|t| InputSpec {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
            })
            .collect())
    }
}

/// The request every call sends: the same tensors as the HTTP workload,
/// as typed contents or as raw contents.
pub fn request(
    model: &str,
    version: Option<&str>,
    inputs: &[InputSpec],
    rows: u64,
    raw: bool,
) -> Result<ModelInferRequest> {
    // The HTTP binary body carries exactly the tensors to send: decode it
    // with the gateway's own parser rather than generate them twice.
    let http = workload::build(model, version, inputs, rows, Format::Binary)?;
    let parsed = quiver_gateway::protocol::parse_infer_request(&http.body, http.header_len)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut request = ModelInferRequest {
        model_name: model.into(),
        model_version: version.unwrap_or_default().into(),
        ..Default::default()
    };
    for t in parsed.inputs {
        let Tensor { name, shape, data } = t;
        let contents = if raw {
            let mut buf = Vec::new();
            binary::encode(&data, &mut buf);
            request.raw_input_contents.push(Bytes::from(buf));
            None
        } else {
            Some(typed(data)?)
        };
        request.inputs.push(InferInputTensor {
            name,
            datatype: String::new(),
            shape,
            parameters: Default::default(),
            contents,
        });
    }
    for (input, spec) in request.inputs.iter_mut().zip(inputs) {
        input.datatype = spec.datatype.clone();
    }
    Ok(request)
}

fn typed(data: TensorData) -> Result<InferTensorContents> {
    let mut c = InferTensorContents::default();
    match data {
        TensorData::Fp32(v) => c.fp32_contents = v,
        TensorData::Fp64(v) => c.fp64_contents = v,
        TensorData::Int32(v) => c.int_contents = v,
        TensorData::Int64(v) => c.int64_contents = v,
        TensorData::Bool(v) => c.bool_contents = v,
        other => bail!(
            "the harness sends {} only as raw contents",
            other.datatype()
        ),
    }
    Ok(c)
}

/// What the driver loads over gRPC.
pub struct GrpcEndpoint {
    pub target: GrpcTarget,
    pub request: ModelInferRequest,
    pub stream: bool,
}

pub enum GrpcConn {
    Unary(Client),
    Stream {
        send: mpsc::Sender<ModelInferRequest>,
        answers: Streaming<ModelStreamInferResponse>,
    },
}

/// The HTTP status a gRPC code stands for, so reports count errors alike.
fn http_equivalent(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::NotFound => 404,
        Code::ResourceExhausted => 429,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        _ => 500,
    }
}

fn stages(md: &tonic::metadata::MetadataMap) -> Stages {
    let get = |k: &str| md.get(k)?.to_str().ok()?.parse().ok();
    Stages {
        queue_us: get("x-quiver-queue-us"),
        compute_us: get("x-quiver-compute-us"),
        total_us: get("x-quiver-total-us"),
        batch_size: get("x-quiver-batch-size"),
        version: get("x-quiver-model-version"),
    }
}

impl Endpoint for GrpcEndpoint {
    type Conn = GrpcConn;

    async fn connect(&self) -> Result<GrpcConn> {
        let mut client = self.target.connect().await?;
        if !self.stream {
            return Ok(GrpcConn::Unary(client));
        }
        let (send, rx) = mpsc::channel(1);
        let answers = client
            .model_stream_infer(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(GrpcConn::Stream { send, answers })
    }

    async fn call(&self, conn: &mut GrpcConn) -> Outcome {
        match conn {
            GrpcConn::Unary(client) => match client.model_infer(self.request.clone()).await {
                Ok(r) => Outcome {
                    status: Status::Answered(200),
                    stages: stages(r.metadata()),
                },
                Err(s) if s.code() == Code::Unavailable || s.code() == Code::Unknown => {
                    Outcome::failed(Status::Io)
                }
                Err(s) => Outcome::failed(Status::Answered(http_equivalent(s.code()))),
            },
            GrpcConn::Stream { send, answers } => {
                if send.send(self.request.clone()).await.is_err() {
                    return Outcome::failed(Status::Io);
                }
                match answers.message().await {
                    Ok(Some(r)) if r.error_message.is_empty() => Outcome {
                        status: Status::Answered(200),
                        stages: Stages::default(),
                    },
                    Ok(Some(_)) => Outcome::failed(Status::Answered(500)),
                    Ok(None) | Err(_) => Outcome::failed(Status::Io),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_and_raw_requests_carry_the_same_values() {
        let inputs = vec![InputSpec::parse("features:FP32:-1x16").unwrap()];
        let typed = request("mlp", None, &inputs, 3, false).unwrap();
        let raw = request("mlp", Some("2"), &inputs, 3, true).unwrap();
        let values = &typed.inputs[0].contents.as_ref().unwrap().fp32_contents;
        assert_eq!(values.len(), 48);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(raw.raw_input_contents[0].as_ref(), bytes.as_slice());
        assert_eq!(raw.inputs[0].shape, vec![3, 16]);
        assert_eq!(raw.inputs[0].datatype, "FP32");
        assert_eq!(raw.model_version, "2");
    }

    #[test]
    fn urls_pick_plaintext_or_tls() {
        assert_eq!(
            target("grpc://127.0.0.1:8001", None).unwrap().uri,
            "http://127.0.0.1:8001"
        );
        assert!(target("grpcs://localhost:8001", None).is_err());
        assert!(target("http://x:1", None).is_err());
    }
}
