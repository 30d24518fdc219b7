//! The event sources, played locally: an invocation with Lambda's deadline, the SQS event
//! source mapping (receive, invoke with a real `SqsEvent`, delete what succeeded), and the
//! EventBridge schedule's event.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use consistent_snapshot::App;
use serde_json::{json, Value};

use crate::emulator::{Emulator, REGION};
use crate::Result;

/// The function's timeout in the tests: `invoke` stops an invocation there, as Lambda does, and
/// a run it claimed is held until then (plus the function's margin).
pub const FUNCTION_TIMEOUT: Duration = Duration::from_secs(6);

/// Invokes the function as Lambda would: with its deadline, stopped when the deadline passes.
pub async fn invoke(app: &App, payload: Value) -> Result<Value> {
    invoke_within(app, payload, FUNCTION_TIMEOUT).await
}

/// `invoke` of a function configured with this timeout (a test of a large fleet: the emulator
/// is slower than EC2).
pub async fn invoke_within(app: &App, payload: Value, timeout: Duration) -> Result<Value> {
    let deadline = deadline_in(timeout);
    match tokio::time::timeout(
        timeout,
        // On the heap: the handler's future is large, and a test awaits many of them.
        Box::pin(consistent_snapshot::handle_until(app, payload, deadline)),
    )
    .await
    {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(format!("the invocation timed out after {timeout:?}").into()),
    }
}

pub fn deadline_in(timeout: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::milliseconds(timeout.as_millis() as i64)
}

/// What the local event source did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    pub invocations: usize,
    pub messages: usize,
    pub failures: usize,
}

/// Does what the Lambda event source mapping does: receives up to `batch_size` messages,
/// invokes the function with a real `SqsEvent`, deletes what succeeded and leaves the failures
/// to come back after their visibility timeout. Returns once the queue is empty.
pub async fn drain(
    emulator: &Emulator,
    app: &App,
    queue_url: &str,
    batch_size: i32,
    limit: Duration,
) -> Result<Drained> {
    drain_with(emulator, queue_url, batch_size, limit, |event| {
        invoke(app, event)
    })
    .await
}

/// `drain`, handing each batch's `SqsEvent` to `invoke` (the function in this process, or the
/// release binary behind a `runtime::LocalRuntime`).
pub async fn drain_with<F, Fut>(
    emulator: &Emulator,
    queue_url: &str,
    batch_size: i32,
    limit: Duration,
    mut invoke: F,
) -> Result<Drained>
where
    F: FnMut(Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    let sqs = emulator.sqs();
    let started = Instant::now();
    let mut drained = Drained::default();
    loop {
        if started.elapsed() > limit {
            return Err(format!("queue not drained within {limit:?}: {drained:?}").into());
        }
        if !deliver_once(&sqs, queue_url, batch_size, &mut drained, &mut invoke).await?
            && queue_is_empty(&sqs, queue_url).await?
        {
            return Ok(drained);
        }
    }
}

/// The event source mapping for `limit` at most, or until `done` says so (asked after each
/// batch, and each second the queue has nothing to deliver): answers what it delivered and
/// whether `done` said so. Unlike `drain`, it does not wait for delayed messages.
pub async fn deliver_until(
    emulator: &Emulator,
    app: &App,
    queue_url: &str,
    limit: Duration,
    done: impl Fn() -> bool,
) -> Result<(Drained, bool)> {
    let sqs = emulator.sqs();
    let started = Instant::now();
    let mut drained = Drained::default();
    let mut invoke_app = |event| invoke(app, event);
    while started.elapsed() < limit {
        if done() {
            return Ok((drained, true));
        }
        deliver_once(&sqs, queue_url, 10, &mut drained, &mut invoke_app).await?;
    }
    Ok((drained, done()))
}

/// One receive (waiting a second at most) and, if it got messages, one invocation with them;
/// what succeeded is deleted. Answers whether there were messages.
async fn deliver_once<F, Fut>(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    batch_size: i32,
    drained: &mut Drained,
    invoke: &mut F,
) -> Result<bool>
where
    F: FnMut(Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    let messages = receive(sqs, queue_url, batch_size, 1).await?;
    if messages.is_empty() {
        return Ok(false);
    }
    let records = sqs_records(&messages, &queue_arn(queue_url));
    let response = invoke(json!({ "Records": records })).await?;
    let failed = batch_failures(&response);
    drained.invocations += 1;
    drained.messages += messages.len();
    drained.failures += failed.len();
    for m in &messages {
        if failed.iter().any(|f| Some(f.as_str()) == m.message_id()) {
            continue;
        }
        if let Some(handle) = m.receipt_handle() {
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(handle)
                .send()
                .await?;
        }
    }
    Ok(true)
}

/// A nightly run end to end: the scheduled event for `time`, then the queue to the end;
/// answers the run id.
pub async fn nightly_run(
    emulator: &Emulator,
    app: &App,
    queue_url: &str,
    time: &str,
) -> Result<String> {
    let start = invoke(app, scheduled_event("nightly", time)).await?;
    let run_id = start["run_id"]
        .as_str()
        .ok_or_else(|| format!("no run id in {start}"))?
        .to_string();
    drain(emulator, app, queue_url, 10, Duration::from_secs(120)).await?;
    Ok(run_id)
}

/// Receives up to `batch_size` messages with every system attribute, as the event source
/// mapping does.
pub async fn receive(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    batch_size: i32,
    wait_seconds: i32,
) -> Result<Vec<aws_sdk_sqs::types::Message>> {
    let received = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(batch_size)
        .wait_time_seconds(wait_seconds)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await?;
    Ok(received.messages().to_vec())
}

/// The records of an `SqsEvent` as the Lambda event source mapping builds them.
pub fn sqs_records(messages: &[aws_sdk_sqs::types::Message], arn: &str) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, Value> = m
                .attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_string(), Value::String(v.clone())))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": REGION,
            })
        })
        .collect()
}

/// The message ids an `SqsBatchResponse` reports as failed.
pub fn batch_failures(response: &Value) -> Vec<String> {
    response["batchItemFailures"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The queue's ARN in the emulator's account.
pub fn queue_arn(queue_url: &str) -> String {
    format!(
        "arn:aws:sqs:{REGION}:123456789012:{}",
        queue_url.rsplit('/').next().unwrap_or("queue")
    )
}

pub async fn queue_is_empty(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<bool> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await?;
    let attributes = out.attributes().cloned().unwrap_or_default();
    Ok(attributes.values().all(|v| v == "0"))
}

/// How many messages wait in the queue called `name` (visible, in flight or delayed).
pub async fn queue_depth(emulator: &Emulator, name: &str) -> Result<usize> {
    let sqs = emulator.sqs();
    let url = sqs.get_queue_url().queue_name(name).send().await?;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url.queue_url().unwrap_or_default())
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await?;
    Ok(out
        .attributes()
        .map(|a| a.values().filter_map(|v| v.parse::<usize>().ok()).sum())
        .unwrap_or(0))
}

/// The bodies of the messages in queue `name` (at most 100), read without deleting them:
/// what a test shows when a dead-letter queue is not empty.
pub async fn peek_bodies(emulator: &Emulator, name: &str) -> Result<Vec<String>> {
    let sqs = emulator.sqs();
    let url = sqs.get_queue_url().queue_name(name).send().await?;
    let url = url.queue_url().unwrap_or_default();
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let messages = receive(&sqs, url, 10, 0).await?;
        if messages.is_empty() {
            break;
        }
        bodies.extend(messages.iter().filter_map(|m| m.body().map(str::to_string)));
    }
    Ok(bodies)
}

/// A scheduled event as an EventBridge rule delivers it.
pub fn scheduled_event(rule: &str, time: &str) -> Value {
    json!({
        "version": "0",
        "id": "89d1a02d-5ec7-412e-82f5-13505f849b41",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time,
        "region": REGION,
        "resources": [format!("arn:aws:events:{REGION}:123456789012:rule/{rule}")],
        "detail": {}
    })
}
