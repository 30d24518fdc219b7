//! The one entry point: an event is parsed (`event`), routed to its use case, and answered as
//! JSON; an SQS batch goes through the deadline-aware batch loop (`batch`).

pub mod batch;
pub mod event;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use tracing::info;

use crate::app::{report_throttling, to_json, App};
use crate::error::Error;
use crate::model::requests::SnapshotRequest;
use crate::run::plan::dispatch::{in_flight_window, ANSWER_ENTRIES};
use crate::run::step::start::{start_run, RunRequest, LEASE_MARGIN_SECONDS};
use event::{Action, Event};

/// The longest a Lambda invocation can run: the deadline assumed when none is given.
pub const MAX_INVOCATION_SECONDS: i64 = 900;

/// The invocation's deadline from the runtime's `Lambda-Runtime-Deadline-Ms` (epoch ms), if it
/// is one an invocation can have: after `now` and within Lambda's longest timeout. A local
/// runtime that sends anything else (cargo-lambda's sends the timeout itself, a date in 1970)
/// gets the longest timeout assumed instead of a deadline that has already passed.
pub fn plausible_deadline(deadline_ms: u64, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    i64::try_from(deadline_ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .filter(|d| *d > now && *d <= now + Duration::seconds(MAX_INVOCATION_SECONDS + 60))
}

/// Handles any of the accepted payloads, assuming Lambda's longest timeout.
pub async fn handle(app: &App, payload: Value) -> Result<Value, Error> {
    let deadline = Utc::now() + Duration::seconds(MAX_INVOCATION_SECONDS);
    handle_until(app, payload, deadline).await
}

/// Handles any of the accepted payloads; answers JSON (an `SqsBatchResponse` for SQS).
/// `deadline` is when the Lambda stops this invocation: a run it claims is held until then
/// (plus a margin), and taken over by the run's watch after.
pub async fn handle_until(
    app: &App,
    payload: Value,
    deadline: DateTime<Utc>,
) -> Result<Value, Error> {
    let answer = route(app, payload, deadline).await;
    report_throttling(app);
    answer
}

async fn route(app: &App, payload: Value, deadline: DateTime<Utc>) -> Result<Value, Error> {
    let lease_until = deadline + Duration::seconds(LEASE_MARGIN_SECONDS);
    let event = Event::parse(payload)?;
    if let Some(keeping) = &app.config.vault_keeping {
        return route_vault(app, keeping, event).await;
    }
    match event {
        Event::Scheduled(run) => {
            info!(schedule = %run.schedule, scheduled_time = %run.scheduled_time, "scheduled run");
            let start = start_run(
                app,
                &RunRequest {
                    run_id: run.run_id(),
                    instance_ids: None,
                    dry_run: app.config.dry_run,
                    started_at: run.scheduled_time,
                    lease_until,
                },
            )
            .await?;
            Ok(to_json(&start.bounded(ANSWER_ENTRIES)))
        }
        Event::Sqs(event) => Ok(to_json(&batch::process_batch(app, event, deadline).await)),
        Event::OnDemand(Action::Snapshot(request)) => {
            on_demand_snapshot(app, request, lease_until).await
        }
        Event::OnDemand(Action::Retention(request)) => {
            let dry_run = request.dry_run.unwrap_or(app.config.dry_run);
            let only = request.instance_ids.as_deref();
            crate::retention::step::on_demand(app, (dry_run, only), deadline).await
        }
        Event::OnDemand(Action::Report(request)) => match request.run_id {
            Some(run_id) => {
                crate::report::step::run_record(app, &run_id, request.page.unwrap_or(0)).await
            }
            None => crate::report::step::on_demand(app).await,
        },
        Event::OnDemand(Action::Restore(request)) => {
            crate::restore::step::restore::on_demand(app, request, deadline).await
        }
        Event::OnDemand(Action::Verify(request)) => {
            crate::restore::step::verify::on_demand(app, request).await
        }
        Event::OnDemand(Action::Import(request)) => {
            crate::run::step::import::on_demand(app, request).await
        }
        Event::OnDemand(Action::Readiness(request)) => {
            crate::report::step::readiness(app, request, deadline).await
        }
        Event::OnDemand(Action::Cost(request)) => {
            crate::report::cost::on_demand(app, request.instance_ids.as_deref(), deadline).await
        }
        Event::OnDemand(Action::Recover(_)) => Err(Error::Event(
            "field `action`: recover is a vault deployment's (MODE=vault): invoke the vault account's function".to_string(),
        )),
    }
}

/// A vault deployment answers its schedule (intake, retention, report), `retention`, `report`
/// and `recover`; nothing else, so that nothing of a fleet's runs can happen in the vault
/// account.
async fn route_vault(
    app: &App,
    keeping: &crate::config::VaultKeeping,
    event: Event,
) -> Result<Value, Error> {
    use crate::vault::keeping;
    match event {
        Event::Scheduled(_) => keeping::scheduled(app, keeping).await,
        Event::OnDemand(Action::Retention(request)) => {
            keeping::retention(app, keeping, request.dry_run.unwrap_or(app.config.dry_run)).await
        }
        Event::OnDemand(Action::Recover(request)) => keeping::recover(app, keeping, request).await,
        Event::OnDemand(Action::Report(request)) if request.run_id.is_none() => {
            keeping::report(app).await
        }
        _ => Err(Error::Event(
            "this deployment keeps a vault (MODE=vault): it answers its schedule, {\"action\":\"retention\"}, {\"action\":\"report\"} and {\"action\":\"recover\"} only".to_string(),
        )),
    }
}

/// `{"action":"snapshot",…}`: a run now, of the whole fleet or of the instances named.
async fn on_demand_snapshot(
    app: &App,
    request: SnapshotRequest,
    lease_until: DateTime<Utc>,
) -> Result<Value, Error> {
    let now = Utc::now();
    let run_id = match (&request.run_id, &request.client_token) {
        (Some(run_id), _) => run_id.clone(),
        (None, Some(token)) => format!("od-{token}"),
        (None, None) => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("{}-od-{}", now.format("%Y%m%dT%H%M%SZ"), &id[..8])
        }
    };
    // A run id is resumed only while its commands are in SSM's history: an older one would
    // merge new snapshots into an old run.
    if let Some(earlier) = app.aws.catalog.run(&run_id).await? {
        let window = in_flight_window(&app.config);
        if earlier.started_at + window < now {
            return Err(Error::Event(format!(
                "field `run_id`: run {run_id} was started at {}, longer ago than the command history this function reads ({} h): choose another id",
                earlier.started_at.to_rfc3339(),
                window.num_hours()
            )));
        }
    }
    let start = start_run(
        app,
        &RunRequest {
            run_id,
            instance_ids: request.instance_ids,
            dry_run: request.dry_run.unwrap_or(app.config.dry_run),
            started_at: now,
            lease_until,
        },
    )
    .await?;
    Ok(to_json(&start.bounded(ANSWER_ENTRIES)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_deadline_an_invocation_can_have_is_taken() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let ms = |t: DateTime<Utc>| t.timestamp_millis() as u64;
        let in_two_minutes = now + Duration::seconds(120);
        assert_eq!(
            plausible_deadline(ms(in_two_minutes), now),
            Some(in_two_minutes)
        );
        // A timeout sent as if it were the deadline, a deadline passed, one beyond 15 minutes.
        for bogus in [
            600_000,
            ms(now - Duration::seconds(1)),
            ms(now + Duration::hours(2)),
            u64::MAX,
        ] {
            assert_eq!(plausible_deadline(bogus, now), None, "{bogus}");
        }
    }
}
