//! The tracking queue: jobs sent in batches of ten, each delayed as the job says.

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};

use crate::aws::aws;
use crate::config::Config;
use crate::error::Error;
use crate::jobs::{Envelope, Job};

/// Queues jobs in batches of 10, each with its own delay; any entry SQS refuses is an error
/// naming its instance or run.
pub async fn enqueue(
    sqs: &aws_sdk_sqs::Client,
    config: &Config,
    jobs: &[Envelope],
    now: DateTime<Utc>,
) -> Result<(), Error> {
    enqueue_each(sqs, config, jobs.iter().cloned(), now).await
}

/// SendMessageBatch calls `enqueue_each` keeps in flight: a dispatch of 20,000 servers
/// sends 2,000 of them, which one after another take about 2,000 round trips.
const BATCHES_AT_ONCE: usize = 8;

/// As `enqueue`, each batch of 10 made only when it is sent, `BATCHES_AT_ONCE` sent at a
/// time. A call that fails ends the sending with its error (the jobs are check-then-act: a
/// redelivery that queues them again converges); entries SQS refuses are named together
/// once every batch has been sent.
pub async fn enqueue_each(
    sqs: &aws_sdk_sqs::Client,
    config: &Config,
    jobs: impl IntoIterator<Item = Envelope>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let mut jobs = jobs.into_iter();
    let batches = std::iter::from_fn(move || {
        let chunk: Vec<Envelope> = jobs.by_ref().take(10).collect();
        (!chunk.is_empty()).then_some(chunk)
    });
    let mut sent = stream::iter(batches)
        .map(|chunk| send_batch(sqs, config, chunk, now))
        .buffer_unordered(BATCHES_AT_ONCE);
    let mut refused = Vec::new();
    while let Some(answer) = sent.next().await {
        refused.extend(answer?);
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Error::Enqueue(refused.join(", ")))
    }
}

/// One SendMessageBatch of at most 10 jobs; what SQS refused, named by instance or run.
async fn send_batch(
    sqs: &aws_sdk_sqs::Client,
    config: &Config,
    chunk: Vec<Envelope>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, Error> {
    let (initial, max) = (config.poll_initial_seconds, config.poll_max_seconds);
    let entries: Vec<SendMessageBatchRequestEntry> = chunk
        .iter()
        .enumerate()
        .filter_map(|(i, job)| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(job.to_body())
                .delay_seconds(job.job.delay_seconds(now, initial, max))
                .build()
                .ok()
        })
        .collect();
    let out = sqs
        .send_message_batch()
        .queue_url(&config.queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| aws("SendMessageBatch", &config.queue_url, e))?;
    Ok(out
        .failed()
        .iter()
        .map(|failed| {
            let job = failed.id().parse::<usize>().ok().and_then(|i| chunk.get(i));
            match job.map(|j| &j.job) {
                Some(Job::Instance(j)) => format!("{} ({})", j.instance_id, failed.code()),
                Some(job) => format!("run {} ({})", job.run_id(), failed.code()),
                None => failed.id().to_string(),
            }
        })
        .collect())
}

/// Puts a job back on the queue, delayed as the job says.
pub async fn requeue(
    sqs: &aws_sdk_sqs::Client,
    config: &Config,
    job: Job,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let delay = job.delay_seconds(now, config.poll_initial_seconds, config.poll_max_seconds);
    sqs.send_message()
        .queue_url(&config.queue_url)
        .message_body(Envelope::new(job).to_body())
        .delay_seconds(delay)
        .send()
        .await
        .map_err(|e| aws("SendMessage", &config.queue_url, e))?;
    Ok(())
}

/// Puts a message that was not tried back on the queue as it came, delayed `delay` seconds:
/// it is then acknowledged, so that a hand-back costs none of its receives (the redrive
/// policy counts those for messages that failed).
pub async fn hand_back(
    sqs: &aws_sdk_sqs::Client,
    config: &Config,
    body: &str,
    delay: i32,
) -> Result<(), Error> {
    sqs.send_message()
        .queue_url(&config.queue_url)
        .message_body(body)
        .delay_seconds(delay.clamp(0, 900))
        .send()
        .await
        .map_err(|e| aws("SendMessage", &config.queue_url, e))?;
    Ok(())
}
