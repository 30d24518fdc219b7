//! A fault-injecting HTTP proxy on loopback, between the function under test and the emulator.
//!
//! A seeded share of the calls is answered as AWS answers when it is overloaded or broken:
//! throttling in the service's own error shape (`RequestLimitExceeded` for EC2,
//! `ThrottlingException` for SSM and SQS, `ProvisionedThroughputExceededException` for
//! DynamoDB), HTTP 500, a connection dropped before the call
//! reaches the emulator, or dropped after it did (the call took effect, the answer is lost).
//!
//! Each invocation of the function gets its own `Endpoint`, so that one invocation can be
//! stopped at its n-th AWS call ("the Lambda died between two steps") without touching the
//! others: from that call on, its endpoint drops every connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::throttle::{self, TokenBuckets};
use crate::Result;

/// The faults the proxy injects, in the order of `Fault::ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Throttled,
    ServerError,
    DroppedBefore,
    DroppedAfter,
    /// Refused for want of a permission (`UnauthorizedOperation` for EC2, `AuthorizationError`
    /// for SNS, `AccessDeniedException` for the JSON services): only ever forced, never drawn.
    AccessDenied,
    /// Refused for good with this error code, in the service's error shape (`OptInRequired`
    /// from a region not enabled, `KMSKeyNotAccessibleFault`): only ever forced, never drawn.
    Refused(&'static str),
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::Throttled,
        Fault::ServerError,
        Fault::DroppedBefore,
        Fault::DroppedAfter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Throttled => "throttled",
            Fault::ServerError => "HTTP 500",
            Fault::DroppedBefore => "dropped before",
            Fault::DroppedAfter => "dropped after",
            Fault::AccessDenied => "access denied",
            Fault::Refused(code) => code,
        }
    }
}

/// What went through the proxy.
#[derive(Debug, Clone, Default)]
pub struct ProxyStats {
    /// Calls by AWS action (`ec2:DescribeInstances`, `ssm:SendCommand`, …), faulted or not.
    pub calls: BTreeMap<String, u64>,
    /// The same calls by (action, region), the region read from the call's signature.
    pub regional: BTreeMap<(String, String), u64>,
    /// EC2's describe calls by (action, what they ask by: `throttle::asked_by`), every region.
    pub describes: BTreeMap<(String, String), u64>,
    pub faults: BTreeMap<Fault, u64>,
    /// Faults injected into SendCommand and CopySnapshot, the calls that must never take
    /// effect twice.
    pub send_command_faults: u64,
    pub copy_snapshot_faults: u64,
    /// Faults injected into the catalog's calls (DynamoDB).
    pub catalog_faults: u64,
    /// Calls EC2's token buckets refused (`FaultProxy::throttle`), by (action, region):
    /// counted in `calls` and `regional` too, as attempts.
    pub throttled: BTreeMap<(String, String), u64>,
    /// When the first and the last call of each action went through to the emulator, by
    /// (action, region): where in a run's wall time each of its rate buckets was busy.
    pub through: BTreeMap<(String, String), (Instant, Instant)>,
    /// How long the emulator took to answer each action's calls, summed: where a run's wall
    /// time went, the emulator's share.
    pub upstream: BTreeMap<String, Duration>,
    /// The most calls of each action the proxy held at once (from their arrival to their
    /// answer): how many a caller keeps in flight.
    pub peak_in_flight: BTreeMap<String, u64>,
    /// Calls of each action held now.
    in_flight: BTreeMap<String, u64>,
    /// How long at least one call was with the emulator: its share of a wall time, whether
    /// the calls went one at a time or overlapped (`upstream` sums them).
    pub upstream_busy: Duration,
    /// Calls with the emulator now, and since when it has had one.
    upstream_open: u64,
    upstream_since: Option<Instant>,
}

impl ProxyStats {
    /// How many calls of `action` (`ssm:SendCommand`) went through the proxy, faulted or not.
    pub fn calls_of(&self, action: &str) -> u64 {
        self.calls.get(action).copied().unwrap_or(0)
    }

    /// The most calls of `action` the proxy held at once (0: none went through it).
    pub fn peak_of(&self, action: &str) -> u64 {
        self.peak_in_flight.get(action).copied().unwrap_or(0)
    }

    /// Calls by (action, region) that EC2's buckets let through.
    pub fn admitted(&self) -> BTreeMap<(String, String), u64> {
        self.regional
            .iter()
            .map(|(k, n)| (k.clone(), n - self.throttled.get(k).copied().unwrap_or(0)))
            .collect()
    }
}

/// Where an invocation is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Never,
    /// At its n-th AWS call (1-based): that call and every later one are dropped.
    AtCall(u32),
    /// At the first call after a call of this action (`ssm:SendCommand`) went through: as
    /// `AfterNth` with 1.
    After(String),
    /// At the first call after the n-th call of this action went through (calls of it
    /// already in flight still go through).
    AfterNth(String, u32),
}

struct Shared {
    upstream: SocketAddr,
    /// Faults forced on the next calls of an action (`ec2:CopySnapshot`, or
    /// `ec2:DescribeSnapshots@eu-west-1` for one region only), before any random one.
    forced: Mutex<Vec<Forced>>,
    /// Fault rate in parts per million.
    rate_ppm: AtomicU32,
    /// The faults a drawn call gets, one at random (`Fault::ALL` unless a test narrows it).
    kinds: Mutex<Vec<Fault>>,
    /// Milliseconds every call waits before it goes on: a slow AWS (or a slow Lambda).
    latency_ms: AtomicU32,
    /// Milliseconds the calls of one action wait besides (`ec2:DeleteSnapshot`: a slow EBS).
    action_latency_ms: Mutex<BTreeMap<String, u64>>,
    rng: Mutex<fastrand::Rng>,
    /// EC2's request buckets, when the proxy plays them.
    buckets: Mutex<Option<TokenBuckets>>,
    stats: Mutex<ProxyStats>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A fault forced on calls of one action (whose body holds `contains`, when given): the
/// first `skip` go through, the next `left` fail.
struct Forced {
    action: String,
    contains: Option<String>,
    fault: Fault,
    skip: u32,
    left: u32,
}

/// The proxy: shared fault rate, random source and statistics for all endpoints.
#[derive(Clone)]
pub struct FaultProxy {
    shared: Arc<Shared>,
}

/// One invocation's way to AWS through the proxy.
pub struct Endpoint {
    pub port: u16,
    state: Arc<EndpointState>,
    task: tokio::task::JoinHandle<()>,
}

struct EndpointState {
    calls: AtomicU32,
    stop: Stop,
    /// Calls of `Stop::After`'s or `Stop::AfterNth`'s action that went through.
    passed: AtomicU32,
    /// Enough calls of that action went through: the next call stops the invocation.
    armed: AtomicBool,
    stopped: AtomicBool,
    notify: Notify,
}

impl Endpoint {
    /// Resolves once the invocation is stopped (never, if it is not to be).
    pub async fn stopped(&self) {
        loop {
            let notified = self.state.notify.notified();
            if self.state.stopped.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    pub fn calls(&self) -> u32 {
        self.state.calls.load(Ordering::SeqCst)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy to the emulator at `upstream_port`, faulting `rate` (0–1) of the calls.
    pub fn new(upstream_port: u16, rate: f64, seed: u64) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        FaultProxy {
            shared: Arc::new(Shared {
                upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
                forced: Mutex::new(Vec::new()),
                rate_ppm: AtomicU32::new((rate.clamp(0.0, 1.0) * 1e6) as u32),
                kinds: Mutex::new(Fault::ALL.to_vec()),
                latency_ms: AtomicU32::new(0),
                action_latency_ms: Mutex::new(BTreeMap::new()),
                rng: Mutex::new(fastrand::Rng::with_seed(seed)),
                buckets: Mutex::new(None),
                stats: Mutex::new(ProxyStats::default()),
                client,
            }),
        }
    }

    pub fn set_rate(&self, rate: f64) {
        self.shared
            .rate_ppm
            .store((rate.clamp(0.0, 1.0) * 1e6) as u32, Ordering::SeqCst);
    }

    /// Drawn faults are only these from now on (`[Fault::Throttled]`: AWS throttling a run).
    pub fn set_kinds(&self, kinds: &[Fault]) {
        if let Ok(mut k) = self.shared.kinds.lock() {
            *k = kinds.to_vec();
        }
    }

    /// EC2's request buckets from now on, full, refilled at `scale` × AWS's documented rates:
    /// a call finding its bucket empty is answered `RequestLimitExceeded`.
    pub fn throttle(&self, scale: f64) {
        if let Ok(mut buckets) = self.shared.buckets.lock() {
            *buckets = Some(TokenBuckets::new(scale));
        }
    }

    /// Every call from now on waits `latency` before it goes on.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
        self.shared.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Every call of `action` from now on waits `latency` before it goes on.
    pub fn set_latency_of(&self, action: &str, latency: Duration) {
        if let Ok(mut by_action) = self.shared.action_latency_ms.lock() {
            let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
            by_action.insert(action.to_string(), ms);
        }
    }

    /// Answers the next `times` calls of `action` (`ssm:SendCommand`) with `fault`.
    pub fn force(&self, action: &str, fault: Fault, times: u32) {
        self.force_after(action, 0, fault, times);
    }

    /// Lets the next `skip` calls of `action` through, then answers `times` with `fault`
    /// (a step that fails half-way).
    pub fn force_after(&self, action: &str, skip: u32, fault: Fault, times: u32) {
        self.push(Forced {
            action: action.to_string(),
            contains: None,
            fault,
            skip,
            left: times,
        });
    }

    /// Answers the next `times` calls of `action` whose body holds `contains` (one server's
    /// SendCommand: its instance id) with `fault`.
    pub fn force_matching(&self, action: &str, contains: &str, fault: Fault, times: u32) {
        self.push(Forced {
            action: action.to_string(),
            contains: Some(contains.to_string()),
            fault,
            skip: 0,
            left: times,
        });
    }

    /// Lifts every forced fault (the permission is given back).
    pub fn clear(&self) {
        if let Ok(mut all) = self.shared.forced.lock() {
            all.clear();
        }
    }

    fn push(&self, forced: Forced) {
        if let Ok(mut all) = self.shared.forced.lock() {
            all.push(forced);
        }
    }

    pub fn stats(&self) -> ProxyStats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// A fresh endpoint on loopback for one invocation, stopped as `stop` says.
    pub async fn endpoint(&self, stop: Stop) -> Result<Endpoint> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(EndpointState {
            calls: AtomicU32::new(0),
            stop,
            passed: AtomicU32::new(0),
            armed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            notify: Notify::new(),
        });
        let shared = self.shared.clone();
        let endpoint_state = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                let state = endpoint_state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        let state = state.clone();
                        async move { handle(&shared, &state, request).await }
                    });
                    // An error here is a connection the proxy dropped on purpose.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Endpoint { port, state, task })
    }
}

/// Dropping the connection: the service answers an error and hyper closes the socket.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

/// A call the proxy holds, from its arrival to its answer (or its fault, or its drop).
struct InFlight<'a> {
    shared: &'a Shared,
    action: String,
}

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared, action: &str) -> Self {
        if let Ok(mut stats) = shared.stats.lock() {
            let now = stats.in_flight.entry(action.to_string()).or_default();
            *now += 1;
            let now = *now;
            let peak = stats.peak_in_flight.entry(action.to_string()).or_default();
            *peak = (*peak).max(now);
        }
        InFlight {
            shared,
            action: action.to_string(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut stats) = self.shared.stats.lock() {
            if let Some(now) = stats.in_flight.get_mut(&self.action) {
                *now = now.saturating_sub(1);
            }
        }
    }
}

/// A call with the emulator, from its forwarding to its answer: the emulator's busy time.
struct Upstream<'a> {
    shared: &'a Shared,
}

impl<'a> Upstream<'a> {
    fn new(shared: &'a Shared) -> Self {
        if let Ok(mut stats) = shared.stats.lock() {
            if stats.upstream_open == 0 {
                stats.upstream_since = Some(Instant::now());
            }
            stats.upstream_open += 1;
        }
        Upstream { shared }
    }
}

impl Drop for Upstream<'_> {
    fn drop(&mut self) {
        if let Ok(mut stats) = self.shared.stats.lock() {
            stats.upstream_open = stats.upstream_open.saturating_sub(1);
            if stats.upstream_open == 0 {
                if let Some(since) = stats.upstream_since.take() {
                    stats.upstream_busy += since.elapsed();
                }
            }
        }
    }
}

async fn handle(
    shared: &Shared,
    state: &EndpointState,
    request: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Dropped> {
    let call = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if state.stopped.load(Ordering::SeqCst) {
        return Err(Dropped);
    }
    if state.stop == Stop::AtCall(call) || state.armed.load(Ordering::SeqCst) {
        state.stopped.store(true, Ordering::SeqCst);
        state.notify.notify_waiters();
        return Err(Dropped);
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let protocol = Protocol::of(&parts.headers, &body);
    let _held = InFlight::new(shared, &protocol.action);
    let latency = shared.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(latency))).await;
    }
    let slow = shared
        .action_latency_ms
        .lock()
        .ok()
        .and_then(|by_action| by_action.get(&protocol.action).copied());
    if let Some(ms) = slow {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let forced = shared.forced.lock().ok().and_then(|mut forced| {
        let entry = forced.iter_mut().find(|f| {
            f.left > 0
                && (f.action == protocol.action
                    || f.action == format!("{}@{}", protocol.action, protocol.region))
                && f.contains
                    .as_ref()
                    .is_none_or(|c| body.windows(c.len().max(1)).any(|w| w == c.as_bytes()))
        })?;
        if entry.skip > 0 {
            entry.skip -= 1;
            return None;
        }
        entry.left -= 1;
        Some(entry.fault)
    });
    let fault = match forced {
        Some(fault) => Some(fault),
        None => {
            let rate = shared.rate_ppm.load(Ordering::SeqCst);
            let kinds = shared.kinds.lock().map(|k| k.clone()).unwrap_or_default();
            let mut rng = shared.rng.lock().map_err(|_| Dropped)?;
            (rng.u32(0..1_000_000) < rate && !kinds.is_empty())
                .then(|| kinds[rng.usize(0..kinds.len())])
        }
    };
    let text = String::from_utf8_lossy(&body);
    // EC2's buckets, for a call no fault has already answered.
    let throttled = fault.is_none()
        && shared
            .buckets
            .lock()
            .ok()
            .and_then(|mut buckets| {
                let buckets = buckets.as_mut()?;
                let narrowed = throttle::is_narrowed(&text);
                let bucket = throttle::bucket_of(&protocol.action, narrowed)?;
                Some(!buckets.take(bucket, &protocol.region, Instant::now()))
            })
            .unwrap_or(false);
    // EC2's describes, told apart by what they ask (one action serves several steps).
    let asked = protocol
        .action
        .starts_with("ec2:Describe")
        .then(|| throttle::asked_by(&text));
    if let Ok(mut stats) = shared.stats.lock() {
        *stats.calls.entry(protocol.action.clone()).or_default() += 1;
        if let Some(asked) = asked {
            *stats
                .describes
                .entry((protocol.action.clone(), asked))
                .or_default() += 1;
        }
        *stats
            .regional
            .entry((protocol.action.clone(), protocol.region.clone()))
            .or_default() += 1;
        if throttled {
            *stats
                .throttled
                .entry((protocol.action.clone(), protocol.region.clone()))
                .or_default() += 1;
        } else if fault.is_none() {
            let now = Instant::now();
            stats
                .through
                .entry((protocol.action.clone(), protocol.region.clone()))
                .and_modify(|(_, last)| *last = now)
                .or_insert((now, now));
        }
        if let Some(fault) = fault {
            *stats.faults.entry(fault).or_default() += 1;
            match protocol.action.as_str() {
                "ssm:SendCommand" => stats.send_command_faults += 1,
                "ec2:CopySnapshot" => stats.copy_snapshot_faults += 1,
                a if a.starts_with("dynamodb:") => stats.catalog_faults += 1,
                _ => {}
            }
        }
    }
    if throttled {
        return Ok(protocol.error(true));
    }
    match fault {
        Some(Fault::Throttled) => return Ok(protocol.error(true)),
        Some(Fault::ServerError) => return Ok(protocol.error(false)),
        Some(Fault::DroppedBefore) => return Err(Dropped),
        Some(Fault::AccessDenied) => return Ok(protocol.refused(protocol.denied_code())),
        Some(Fault::Refused(code)) => return Ok(protocol.refused(code)),
        _ => {}
    }
    let uri = format!(
        "http://{}{}",
        shared.upstream,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut forward = Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        forward = forward.header(name, value);
    }
    let forward = forward.body(Full::new(body)).map_err(|_| Dropped)?;
    let sent = Instant::now();
    let upstream = Upstream::new(shared);
    let answer = shared.client.request(forward).await.map_err(|_| Dropped)?;
    let (parts, body) = answer.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    drop(upstream);
    if let Ok(mut stats) = shared.stats.lock() {
        *stats.upstream.entry(protocol.action.clone()).or_default() += sent.elapsed();
    }
    let after = match &state.stop {
        Stop::After(action) => Some((action, 1)),
        Stop::AfterNth(action, n) => Some((action, *n)),
        Stop::Never | Stop::AtCall(_) => None,
    };
    if after.is_some_and(|(action, n)| {
        *action == protocol.action && state.passed.fetch_add(1, Ordering::SeqCst) + 1 >= n
    }) {
        state.armed.store(true, Ordering::SeqCst);
    }
    if fault == Some(Fault::DroppedAfter) {
        return Err(Dropped);
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// How a call is framed, which decides the shape of the error AWS would answer.
struct Protocol {
    /// `ec2:Action`, `ssm:Action`, `sqs:Action`, `sns:Action`, `dynamodb:Action`.
    action: String,
    /// The region the call was signed for.
    region: String,
    json: bool,
    service: &'static str,
}

impl Protocol {
    fn of(headers: &hyper::HeaderMap, body: &Bytes) -> Self {
        // SigV4: `Credential=<key>/<date>/<region>/<service>/aws4_request`.
        let scope: Vec<&str> = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|auth| auth.split("Credential=").nth(1))
            .map(|c| {
                c.split([',', ' '])
                    .next()
                    .unwrap_or("")
                    .split('/')
                    .collect()
            })
            .unwrap_or_default();
        let region = scope.get(2).copied().unwrap_or("unknown").to_string();
        if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
            let (prefix, action) = target.split_once('.').unwrap_or(("", target));
            let service = if prefix.contains("SQS") {
                "sqs"
            } else if prefix.starts_with("DynamoDB") {
                "dynamodb"
            } else {
                "ssm"
            };
            return Protocol {
                action: format!("{service}:{action}"),
                region,
                json: true,
                service,
            };
        }
        let text = String::from_utf8_lossy(body);
        let action = text
            .split('&')
            .find_map(|kv| kv.strip_prefix("Action="))
            .unwrap_or("Unknown");
        // EC2 and SNS both speak the query protocol.
        let service = if scope.get(3) == Some(&"sns") {
            "sns"
        } else {
            "ec2"
        };
        Protocol {
            action: format!("{service}:{action}"),
            region,
            json: false,
            service,
        }
    }

    /// The code with which this service refuses a caller without the permission.
    fn denied_code(&self) -> &'static str {
        match (self.json, self.service) {
            (true, _) => "AccessDeniedException",
            (false, "sns") => "AuthorizationError",
            (false, _) => "UnauthorizedOperation",
        }
    }

    /// AWS's answer refusing the call for good with `code`.
    fn refused(&self, code: &str) -> Response<Full<Bytes>> {
        let message = "Refused by the fault proxy.";
        let (status, content_type, payload) = if self.json {
            let kind = if matches!(self.service, "sqs" | "dynamodb") {
                "application/x-amz-json-1.0"
            } else {
                "application/x-amz-json-1.1"
            };
            (
                400,
                kind,
                format!(r#"{{"__type":"{code}","message":"{message}"}}"#),
            )
        } else if self.service == "sns" {
            (
                403,
                "text/xml",
                format!(
                    r#"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"#
                ),
            )
        } else {
            (
                403,
                "text/xml",
                format!(
                    r#"<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"#
                ),
            )
        };
        let mut response = Response::new(Full::new(Bytes::from(payload)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert("content-type", value);
        }
        if self.json && self.service == "sqs" {
            if let Ok(value) = format!("{code};Sender").parse() {
                response.headers_mut().insert("x-amzn-query-error", value);
            }
        }
        response
    }

    fn error(&self, throttled: bool) -> Response<Full<Bytes>> {
        let (status, code, content_type, body) = match (self.json, throttled) {
            (false, true) => (
                503,
                "RequestLimitExceeded",
                "text/xml",
                "Request limit exceeded.",
            ),
            (false, false) => (
                500,
                "InternalError",
                "text/xml",
                "An internal error has occurred.",
            ),
            (true, true) => (400, "ThrottlingException", "", "Rate exceeded"),
            (true, false) => (500, "InternalServerError", "", "Internal server error"),
        };
        let code = match (self.service, throttled) {
            ("sns", true) => "Throttling",
            ("dynamodb", true) => "ProvisionedThroughputExceededException",
            _ => code,
        };
        let payload = if self.json {
            format!(r#"{{"__type":"{code}","message":"{body}"}}"#)
        } else if self.service == "sns" {
            format!(
                r#"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{body}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"#
            )
        } else {
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code><Message>{body}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"#
            )
        };
        let content_type = match (self.json, self.service) {
            (false, _) => content_type,
            (true, "sqs" | "dynamodb") => "application/x-amz-json-1.0",
            (true, _) => "application/x-amz-json-1.1",
        };
        let mut response = Response::new(Full::new(Bytes::from(payload)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert("content-type", value);
        }
        if self.json && self.service == "sqs" {
            // SQS's JSON protocol carries the query-protocol code here as well.
            if let Ok(value) = format!("{code};Sender").parse() {
                response.headers_mut().insert("x-amzn-query-error", value);
            }
        }
        response
    }
}
