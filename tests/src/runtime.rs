//! A Lambda runtime API on loopback, for running the release binary as Lambda runs it.
//!
//! The binary is started with `AWS_LAMBDA_RUNTIME_API` pointing here. It asks for its next
//! event (`GET /2018-06-01/runtime/invocation/next`, held open until there is one) and posts
//! the answer (`.../invocation/<id>/response` or `.../error`). The first `next` is the moment
//! the function is ready: process start to that moment is its init time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::Result;

const PREFIX: &str = "/2018-06-01/runtime";

/// One event waiting to be fetched by the function.
struct Event {
    request_id: String,
    payload: Value,
    deadline_ms: i64,
}

type Answer = std::result::Result<Value, String>;

struct Shared {
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    answers: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    first_next: Mutex<Option<Instant>>,
    init_error: Mutex<Option<String>>,
}

/// The runtime API; stops serving when dropped.
pub struct LocalRuntime {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    sender: mpsc::UnboundedSender<Event>,
    counter: AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

impl LocalRuntime {
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            events: tokio::sync::Mutex::new(receiver),
            answers: Mutex::new(HashMap::new()),
            first_next: Mutex::new(None),
            init_error: Mutex::new(None),
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { serve(&shared, request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(LocalRuntime {
            addr,
            shared,
            sender,
            counter: AtomicU64::new(0),
            task,
        })
    }

    /// When the function first asked for an event: it was ready.
    pub fn ready_at(&self) -> Option<Instant> {
        self.shared.first_next.lock().ok().and_then(|t| *t)
    }

    /// What the function reported as its init error, if it failed to start.
    pub fn init_error(&self) -> Option<String> {
        self.shared.init_error.lock().ok().and_then(|e| e.clone())
    }

    /// Waits until the function is ready, at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Result<Instant> {
        let started = Instant::now();
        loop {
            if let Some(at) = self.ready_at() {
                return Ok(at);
            }
            if let Some(err) = self.init_error() {
                return Err(format!("the function failed to start: {err}").into());
            }
            if started.elapsed() > limit {
                return Err(format!("the function was not ready within {limit:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Hands `payload` to the function with `timeout` as its deadline and waits for the
    /// answer (an error answer is an `Err` naming what the function said).
    pub async fn invoke(&self, payload: Value, timeout: Duration) -> Result<Value> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let request_id = format!("bench-{n:08}");
        let deadline =
            chrono::Utc::now() + chrono::Duration::milliseconds(timeout.as_millis() as i64);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut answers) = self.shared.answers.lock() {
            answers.insert(request_id.clone(), tx);
        }
        self.sender
            .send(Event {
                request_id: request_id.clone(),
                payload,
                deadline_ms: deadline.timestamp_millis(),
            })
            .map_err(|_| "the runtime API has stopped")?;
        // A little beyond the deadline: the function answers by then or it is stuck.
        match tokio::time::timeout(timeout + Duration::from_secs(5), rx).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(error))) => Err(format!("invocation {request_id} failed: {error}").into()),
            Ok(Err(_)) => Err(format!("invocation {request_id} was never answered").into()),
            Err(_) => Err(format!("invocation {request_id} outlived its {timeout:?}").into()),
        }
    }
}

impl Drop for LocalRuntime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

async fn serve(
    shared: &Shared,
    request: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, hyper::Error> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let body = request.into_body().collect().await?.to_bytes();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Ok(answer(StatusCode::NOT_FOUND, Bytes::new()));
    };
    if method == Method::GET && rest == "/invocation/next" {
        if let Ok(mut first) = shared.first_next.lock() {
            first.get_or_insert_with(Instant::now);
        }
        let event = shared.events.lock().await.recv().await;
        let Some(event) = event else {
            return Ok(answer(StatusCode::GONE, Bytes::new()));
        };
        let mut response = answer(StatusCode::OK, Bytes::from(event.payload.to_string()));
        let headers = response.headers_mut();
        let values = [
            ("lambda-runtime-aws-request-id", event.request_id),
            ("lambda-runtime-deadline-ms", event.deadline_ms.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:consistent-snapshot".to_string(),
            ),
            (
                "lambda-runtime-trace-id",
                "Root=1-00000000-000000000000000000000000;Sampled=0".to_string(),
            ),
        ];
        for (name, value) in values {
            if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        return Ok(response);
    }
    if method == Method::POST && rest == "/init/error" {
        if let Ok(mut error) = shared.init_error.lock() {
            *error = Some(String::from_utf8_lossy(&body).into_owned());
        }
        return Ok(answer(StatusCode::ACCEPTED, Bytes::new()));
    }
    if method == Method::POST {
        if let Some((id, kind)) = rest
            .strip_prefix("/invocation/")
            .and_then(|r| r.split_once('/'))
        {
            let result = match kind {
                "response" => Ok(serde_json::from_slice(&body).unwrap_or(Value::Null)),
                _ => Err(String::from_utf8_lossy(&body).into_owned()),
            };
            let waiting = shared.answers.lock().ok().and_then(|mut a| a.remove(id));
            if let Some(tx) = waiting {
                let _ = tx.send(result);
            }
            return Ok(answer(StatusCode::ACCEPTED, Bytes::new()));
        }
    }
    Ok(answer(StatusCode::NOT_FOUND, Bytes::new()))
}
