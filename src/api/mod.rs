//! The API thread: hyper over a Unix socket on a current-thread tokio runtime.
//!
//! It never touches the VM: each request becomes a typed `Request`, goes to
//! the main thread over a channel (waking its epoll through an eventfd), and
//! the typed reply comes back on a oneshot channel.

pub mod invoke;
pub mod routes;

use std::os::unix::net::UnixListener as StdUnixListener;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use vmm_sys_util::eventfd::EventFd;

use crate::config::DeviceConfig;
use crate::controller::{self, InvocationTarget, Request, Response};
use crate::metrics::METRICS;
use crate::seccomp::{Filters, ThreadKind};
use routes::{body_limit, route};

/// How long the API rests after a failed accept.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// A request on its way to the main thread, with where its answer goes.
pub struct ApiCall {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Response, controller::Error>>,
}

/// The API thread's way to the main thread.
#[derive(Clone)]
pub struct ToVmm {
    calls: Sender<ApiCall>,
    wake: Arc<EventFd>,
    functions: Arc<invoke::Pool>,
    /// Where invocations go, once the controller said so: it only changes
    /// through requests this thread forwards, so the main thread is asked
    /// once, not on every invocation.
    target: Arc<std::sync::Mutex<Option<InvocationTarget>>>,
}

impl ToVmm {
    pub fn new(calls: Sender<ApiCall>, wake: Arc<EventFd>) -> Self {
        ToVmm {
            calls,
            wake,
            functions: Arc::default(),
            target: Arc::default(),
        }
    }

    /// Forwards `request`, answering invocation lookups from the cache.
    async fn handle(&self, request: Request) -> Result<Response, String> {
        let cached = || self.target.lock().ok().and_then(|t| t.clone());
        match request {
            Request::GetInvocationTarget => {
                if let Some(target) = cached() {
                    return Ok(Response::Invocation(target));
                }
                let response = self.call(request).await?;
                if let (Response::Invocation(target), Ok(mut slot)) =
                    (&response, self.target.lock())
                {
                    *slot = Some(target.clone());
                }
                Ok(response)
            }
            Request::PutFunction(_)
            | Request::PutDevice(DeviceConfig::Vsock(_))
            | Request::LoadSnapshot(_) => {
                if let Ok(mut slot) = self.target.lock() {
                    *slot = None;
                }
                self.call(request).await
            }
            _ => self.call(request).await,
        }
    }

    async fn call(&self, request: Request) -> Result<Response, String> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(ApiCall { request, reply })
            .map_err(|_| "the VMM is shutting down".to_string())?;
        // The counter only overflows if the main thread is gone; the send above caught that.
        let _ = self.wake.write(1);
        match answer.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("the VMM is shutting down".to_string()),
        }
    }
}

fn fault(status: StatusCode, message: &str) -> hyper::Response<Full<Bytes>> {
    let body = serde_json::json!({ "fault_message": message }).to_string();
    reply(status, Some(body))
}

fn reply(status: StatusCode, body: Option<String>) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body.unwrap_or_default())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A 200 with `value` as its JSON body.
fn json_reply(value: &impl serde::Serialize) -> hyper::Response<Full<Bytes>> {
    match serde_json::to_string(value) {
        Ok(body) => reply(StatusCode::OK, Some(body)),
        Err(e) => fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the response: {e}"),
        ),
    }
}

/// Answers one request; bodies of Firecracker's endpoints may hold up to
/// `max_payload` bytes (`--http-api-max-payload-size`).
async fn serve(
    to_vmm: ToVmm,
    request: hyper::Request<Incoming>,
    max_payload: usize,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let method: Method = request.method().clone();
    let path = request.uri().path().to_string();
    let limit = body_limit(method.as_str(), &path, max_payload);
    let body = match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Ok(fault(
                StatusCode::BAD_REQUEST,
                &format!("the request body is larger than the limit of {limit} bytes"),
            ))
        }
    };
    let request = match route(method.as_str(), &path, &body) {
        Ok(request) => request,
        Err(e) => return Ok(fault(StatusCode::BAD_REQUEST, &e.0)),
    };
    log::debug!("API request: {method} {path}");
    Ok(match to_vmm.handle(request).await {
        Ok(Response::NoContent) => reply(StatusCode::NO_CONTENT, None),
        Ok(Response::InstanceInfo(info)) => json_reply(&info),
        Ok(Response::Version(version)) => json_reply(&version),
        Ok(Response::MachineConfig(machine)) => json_reply(&machine),
        Ok(Response::VmConfig(config)) => json_reply(&config),
        Ok(Response::Mmds(data)) => json_reply(&data),
        Ok(Response::Balloon(balloon)) => json_reply(&balloon),
        Ok(Response::BalloonStats(stats)) => json_reply(&stats),
        Ok(Response::HintingStatus(status)) => json_reply(&status),
        Ok(Response::Metrics(text)) => {
            let mut response = reply(StatusCode::OK, Some(text));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        Ok(Response::Invocation(target)) => {
            let started = std::time::Instant::now();
            let result = invoke::invoke(&to_vmm.functions, &target, &body).await;
            count_invocation(&result, started);
            match result {
                Ok(output) => {
                    let mut response = hyper::Response::new(Full::new(Bytes::from(output)));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/octet-stream"),
                    );
                    response
                }
                Err(e) => {
                    let status = match e {
                        invoke::Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                        invoke::Error::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
                        _ => StatusCode::BAD_GATEWAY,
                    };
                    log::warn!("invocation failed: {e}");
                    fault(status, &e.to_string())
                }
            }
        }
        Err(message) => {
            log::warn!("API request {method} {path} failed: {message}");
            fault(StatusCode::BAD_REQUEST, &message)
        }
    })
}

/// Counts an invocation in the metrics: every one, the failed ones, and
/// how long the answered ones took.
fn count_invocation(result: &Result<Vec<u8>, invoke::Error>, started: std::time::Instant) {
    let ember = &METRICS.ember;
    ember.invocations.inc();
    match result {
        Ok(_) => METRICS.invocation_latency.record(started.elapsed()),
        Err(invoke::Error::Timeout(_)) => ember.invocation_timeouts.inc(),
        Err(_) => ember.invocation_errors.inc(),
    }
}

/// Serves the API on `listener` until the process exits, refusing bodies
/// over `max_payload` bytes (invocations have their own limit).
pub fn spawn(
    listener: StdUnixListener,
    to_vmm: ToVmm,
    seccomp: Filters,
    max_payload: usize,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("ember_api".into())
        .spawn(move || {
            crate::signals::block_asynchronous();
            if let Err(e) = seccomp.enter(ThreadKind::Api) {
                log::error!("the API thread serves nothing: {e}");
                return;
            }
            runtime.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("API socket unusable: {e}");
                        return;
                    }
                };
                loop {
                    let stream = match listener.accept().await {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of descriptors, most likely: the connection
                            // stays in the backlog, and accepting again at once
                            // would fail the same way. Rest, then retry.
                            log::warn!("API accept failed: {e}");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    let to_vmm = to_vmm.clone();
                    tokio::spawn(async move {
                        let service =
                            service_fn(move |req| serve(to_vmm.clone(), req, max_payload));
                        // A client that hangs up right after its request
                        // (a launcher that fires InstanceStart and forgets)
                        // still has it carried out, as with Firecracker's
                        // synchronous server; hyper would drop it on EOF.
                        if let Err(e) = http1::Builder::new()
                            .half_close(true)
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            log::debug!("API connection ended: {e}");
                        }
                    });
                }
            })
        })
}
