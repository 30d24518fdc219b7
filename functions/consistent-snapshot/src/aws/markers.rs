//! The run markers' store: SSM Parameter Store. `PutParameter` without `Overwrite` is an atomic
//! create, so each marker (`model::markers`) can be created by one caller only.

use aws_sdk_ssm::types::ParameterType;
use chrono::{DateTime, Duration, Utc};
use tracing::{info, warn};

use crate::aws::{aws, each_page, utc};
use crate::error::Error;
use crate::model::markers::{
    parse_markers, path_segment, run_path, to_release, MarkerValue, RunMarkers, COPIED, COPY_LEASE,
    COPY_PASS, DISPATCHED, KEEP_REPORTED_DAYS, LEASE, REPORTED, RETAINED, ROOT,
};

/// The Parameter Store edge of one run's markers.
pub struct RunMarkerStore<'a> {
    pub ssm: &'a aws_sdk_ssm::Client,
    pub path: String,
    pub run_id: &'a str,
    /// This invocation's token, written into every marker it creates.
    pub token: String,
}

impl<'a> RunMarkerStore<'a> {
    pub fn new(ssm: &'a aws_sdk_ssm::Client, managed_by: &str, run_id: &'a str) -> Self {
        RunMarkerStore {
            ssm,
            path: run_path(managed_by, run_id),
            run_id,
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    pub async fn read(&self) -> Result<RunMarkers, Error> {
        let pages = self
            .ssm
            .get_parameters_by_path()
            .path(&self.path)
            .recursive(false)
            .max_results(10)
            .into_paginator()
            .send();
        let mut found: Vec<(String, String)> = Vec::new();
        each_page(pages, "GetParametersByPath", &self.subject(), |page| {
            for p in page.parameters() {
                if let (Some(name), Some(value)) = (p.name(), p.value()) {
                    found.push((name.to_string(), value.to_string()));
                }
            }
        })
        .await?;
        Ok(parse_markers(
            found.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        ))
    }

    /// Tries to create lease `epoch` ending at `until`; answers whether this invocation holds it.
    pub async fn take_lease(&self, epoch: u32, until: DateTime<Utc>) -> Result<bool, Error> {
        self.create(&format!("{LEASE}{epoch}"), Some(until)).await
    }

    /// Tries to create copy lease `epoch` ending at `until`.
    pub async fn take_copy_lease(&self, epoch: u32, until: DateTime<Utc>) -> Result<bool, Error> {
        self.create(&format!("{COPY_LEASE}{epoch}"), Some(until))
            .await
    }

    /// Gives copy lease `epoch` back before it ends, so that the next pass need not wait.
    pub async fn drop_copy_lease(&self, epoch: u32) -> Result<(), Error> {
        let name = format!("{}/{COPY_LEASE}{epoch}", self.path);
        self.ssm
            .delete_parameters()
            .names(name)
            .send()
            .await
            .map_err(|e| aws("DeleteParameters", self.subject(), e))?;
        Ok(())
    }

    /// Claims pass `pass` of the copy step for the message `message_id`: one message per pass
    /// goes on, whichever invocations it is delivered to. A redelivery of the same message
    /// (after its invocation was stopped, or a duplicate) finds its own claim and goes on too.
    pub async fn claim_copy_pass(&self, pass: u32, message_id: &str) -> Result<bool, Error> {
        self.create_as(&format!("{COPY_PASS}{pass}"), None, message_id)
            .await
    }

    /// Marks every copy of the run final; answers whether this invocation was the first to.
    pub async fn mark_copied(&self) -> Result<bool, Error> {
        self.create(COPIED, None).await
    }

    /// Marks the run dispatched; answers whether this invocation was the first to.
    pub async fn mark_dispatched(&self) -> Result<bool, Error> {
        self.create(DISPATCHED, None).await
    }

    /// Marks the run reported; answers whether this invocation was the first to (and so writes
    /// the summary).
    pub async fn mark_reported(&self) -> Result<bool, Error> {
        self.create(REPORTED, None).await
    }

    /// Marks the run's retention done; answers whether this invocation was the first to (and
    /// so writes the retention summary).
    pub async fn mark_retained(&self) -> Result<bool, Error> {
        self.create(RETAINED, None).await
    }

    /// Deletes the run's markers once it is over, all but the ones that say a step is over
    /// (`reported`, `copied`, `retained`): they stay (until `sweep`), so that a late duplicate
    /// of the schedule or of a message, or the copy step's last queued pass, finds its step
    /// over and does not start it again.
    pub async fn release(&self, markers: &RunMarkers) -> Result<(), Error> {
        let names = to_release(markers);
        for chunk in names.chunks(10) {
            self.ssm
                .delete_parameters()
                .set_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| aws("DeleteParameters", self.subject(), e))?;
        }
        Ok(())
    }

    async fn create(&self, leaf: &str, until: Option<DateTime<Utc>>) -> Result<bool, Error> {
        self.create_as(leaf, until, &self.token).await
    }

    /// Creates marker `leaf` with `token`; answers whether the marker is `token`'s (created
    /// now, or earlier by a call whose answer was lost).
    async fn create_as(
        &self,
        leaf: &str,
        until: Option<DateTime<Utc>>,
        token: &str,
    ) -> Result<bool, Error> {
        let name = format!("{}/{leaf}", self.path);
        let value = serde_json::to_string(&MarkerValue {
            token: token.to_string(),
            until,
        })
        .unwrap_or_default();
        let put = self
            .ssm
            .put_parameter()
            .name(&name)
            .value(&value)
            .r#type(ParameterType::String)
            .overwrite(false)
            .description(format!("consistent-snapshot run {} ({leaf})", self.run_id))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_parameter_already_exists()) =>
            {
                // Either another invocation created it, or this one did and the answer was
                // lost before a retry: the token says which.
                let current = self
                    .ssm
                    .get_parameter()
                    .name(&name)
                    .send()
                    .await
                    .map_err(|e| aws("GetParameter", format!("{} ({leaf})", self.subject()), e))?;
                let mine = current
                    .parameter()
                    .and_then(|p| p.value())
                    .and_then(|v| serde_json::from_str::<MarkerValue>(v).ok())
                    .is_some_and(|v| v.token == token);
                Ok(mine)
            }
            Err(err) => Err(aws(
                "PutParameter",
                format!("{} ({leaf})", self.subject()),
                err,
            )),
        }
    }

    /// Drops the finished run's lease and dispatch markers and any marker of the deployment past
    /// its keep time. A failure here leaves parameters behind, not a wrong backup: it is
    /// logged, not retried.
    pub async fn release_finished(&self, managed_by: &str, now: DateTime<Utc>) {
        let released = match self.read().await {
            Ok(markers) => self.release(&markers).await,
            Err(err) => Err(err),
        };
        let cutoff = now - Duration::days(KEEP_REPORTED_DAYS);
        let swept = sweep(self.ssm, managed_by, cutoff).await;
        match (released, swept) {
            (Ok(()), Ok(swept)) => {
                info!(run_id = %self.run_id, swept, "run markers released")
            }
            (Err(err), _) | (_, Err(err)) => {
                warn!(run_id = %self.run_id, error = %err, "run markers not released")
            }
        }
    }

    fn subject(&self) -> String {
        format!("run {} ({})", self.run_id, self.path)
    }
}

/// Deletes this deployment's markers older than `cutoff` (Standard parameters are limited to
/// 10,000 a region); answers how many it deleted.
async fn sweep(
    ssm: &aws_sdk_ssm::Client,
    managed_by: &str,
    cutoff: DateTime<Utc>,
) -> Result<usize, Error> {
    let path = format!("{ROOT}/{}/runs", path_segment(managed_by));
    let pages = ssm
        .get_parameters_by_path()
        .path(&path)
        .recursive(true)
        .max_results(10)
        .into_paginator()
        .send();
    let mut old = Vec::new();
    each_page(pages, "GetParametersByPath", &path, |page| {
        for p in page.parameters() {
            let modified = p.last_modified_date().and_then(utc);
            if let (Some(name), Some(modified)) = (p.name(), modified) {
                if modified < cutoff {
                    old.push(name.to_string());
                }
            }
        }
    })
    .await?;
    for chunk in old.chunks(10) {
        ssm.delete_parameters()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| aws("DeleteParameters", path.clone(), e))?;
    }
    Ok(old.len())
}
