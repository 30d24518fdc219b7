//! The tracking queue: jobs sent in batches of ten, each delayed as the job says.

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chrono::{DateTime, Utc};

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

/// As `enqueue`, each batch of 10 made only when it is sent.
pub async fn enqueue_each(
    sqs: &aws_sdk_sqs::Client,
    config: &Config,
    jobs: impl IntoIterator<Item = Envelope>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let (initial, max) = (config.poll_initial_seconds, config.poll_max_seconds);
    let mut refused = Vec::new();
    let mut jobs = jobs.into_iter();
    loop {
        let chunk: Vec<Envelope> = jobs.by_ref().take(10).collect();
        if chunk.is_empty() {
            break;
        }
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
        for failed in out.failed() {
            let job = failed.id().parse::<usize>().ok().and_then(|i| chunk.get(i));
            refused.push(match job.map(|j| &j.job) {
                Some(Job::Instance(j)) => format!("{} ({})", j.instance_id, failed.code()),
                Some(job) => format!("run {} ({})", job.run_id(), failed.code()),
                None => failed.id().to_string(),
            });
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Error::Enqueue(refused.join(", ")))
    }
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
