//! A retry's message: once the pause is over, the servers whose freeze timed out in the parent
//! run are tried again in a run of their own (`run::plan::retry`). The message is a request:
//! the retry's run id must follow from the parent's, and only servers whose set in the parent
//! run the catalog records as crash-consistent for a timed-out freeze are sent the command.

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::app::{refuse, App};
use crate::error::Error;
use crate::jobs::RetryJob;
use crate::run::plan::retry::{next_retry_run_id, vouches_for_retry, MAX_RETRIED};
use crate::run::step::start::{start_run, RunRequest};

pub async fn retry_job(app: &App, job: RetryJob, lease_until: DateTime<Utc>) -> Result<(), Error> {
    let expected = next_retry_run_id(&job.parent_run_id, app.config.vss_retries);
    if expected.as_deref() != Some(job.run_id.as_str()) {
        return Err(refuse(
            app,
            format!(
                "retry job {} of run {}: not the retry that run gets (VSS_RETRIES={})",
                job.run_id, job.parent_run_id, app.config.vss_retries
            ),
        ));
    }
    let parent = app.aws.catalog.copy_view(&job.parent_run_id).await?;
    let (vouched, refused): (Vec<String>, Vec<String>) = job
        .instance_ids
        .iter()
        .take(MAX_RETRIED)
        .cloned()
        .partition(|id| {
            parent
                .sets
                .iter()
                .any(|s| &s.instance_id == id && vouches_for_retry(s))
        });
    for id in &refused {
        warn!(run_id = %job.run_id, parent_run_id = %job.parent_run_id, instance_id = %id, "retry: the parent run's set of this server is not a timed-out freeze; not retried");
    }
    if vouched.is_empty() {
        return Err(refuse(
            app,
            format!(
                "retry job {}: no server of it has a timed-out freeze recorded in run {}",
                job.run_id, job.parent_run_id
            ),
        ));
    }
    info!(run_id = %job.run_id, parent_run_id = %job.parent_run_id, instances = vouched.len(), "retrying the servers whose VSS freeze timed out");
    let start = start_run(
        app,
        &RunRequest {
            run_id: job.run_id,
            instance_ids: Some(vouched),
            dry_run: false,
            started_at: job.start_at,
            lease_until,
        },
    )
    .await?;
    info!(run_id = %start.run_id, status = ?start.status, "retry run started");
    Ok(())
}
