//! The three input shapes of the one Lambda binary, told apart by their own fields.
//!
//! The payload is read as JSON once and matched in order: an SQS batch (`Records` from
//! `aws:sqs`), a classic EventBridge rule's `Scheduled Event`, an EventBridge Scheduler target
//! input (`schedule_arn` + `scheduled_time`, as the template sets it), and a direct on-demand call
//! (`action`). Anything else, and any malformed field, is an error that names the field.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::model::ids::{
    fnv1a32, is_availability_zone, is_instance_id, is_run_id, is_scheduled_run_id,
};
use crate::model::requests::{
    CostRequest, ImportRequest, ReadinessRequest, RecoverRequest, ReportRequest, RestoreMode,
    RestoreRequest, RetentionRequest, SnapshotRequest, VerifyRequest, MAX_INSTANCE_IDS, MAX_VERIFY,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Scheduled(ScheduledRun),
    Sqs(SqsEvent),
    OnDemand(Action),
}

/// A scheduled run: the schedule (rule or Scheduler schedule ARN) and its scheduled time, from
/// which the run id is derived so that a duplicated delivery is the same run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRun {
    pub schedule: String,
    pub scheduled_time: DateTime<Utc>,
}

impl ScheduledRun {
    /// `YYYYMMDDTHHMMSSZ-<8 hex of the schedule ARN>`: deterministic, sortable, tag-safe.
    pub fn run_id(&self) -> String {
        format!(
            "{}-{:08x}",
            self.scheduled_time.format("%Y%m%dT%H%M%SZ"),
            fnv1a32(self.schedule.as_bytes())
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Snapshot(SnapshotRequest),
    Retention(RetentionRequest),
    Report(ReportRequest),
    Restore(RestoreRequest),
    Verify(VerifyRequest),
    Import(ImportRequest),
    Readiness(ReadinessRequest),
    Cost(CostRequest),
    Recover(RecoverRequest),
}

/// The input of an EventBridge Scheduler schedule, as the template writes it with the
/// Scheduler's context attributes.
#[derive(Debug, Deserialize)]
struct SchedulerInput {
    schedule_arn: String,
    scheduled_time: DateTime<Utc>,
}

impl Event {
    pub fn parse(payload: Value) -> Result<Event, Error> {
        let Some(object) = payload.as_object() else {
            return Err(Error::Event(format!(
                "expected a JSON object (a scheduled event, an SQS batch or {{\"action\": ...}}), got {}",
                kind_of(&payload)
            )));
        };
        if object.contains_key("Records") {
            let event: SqsEvent = from_value(payload, "SQS event")?;
            if let Some((i, r)) = event
                .records
                .iter()
                .enumerate()
                .find(|(_, r)| r.event_source.as_deref() != Some("aws:sqs"))
            {
                return Err(Error::Event(format!(
                    "Records[{i}].eventSource is {:?}, only aws:sqs records are accepted",
                    r.event_source
                )));
            }
            return Ok(Event::Sqs(event));
        }
        if object.contains_key("detail-type") {
            let event: EventBridgeEvent<Value> = from_value(payload, "EventBridge event")?;
            if event.detail_type != "Scheduled Event" {
                return Err(Error::Event(format!(
                    "detail-type {:?} is not handled: only \"Scheduled Event\" starts a run",
                    event.detail_type
                )));
            }
            let schedule = event
                .resources
                .and_then(|r| r.into_iter().next())
                .ok_or_else(|| {
                    Error::Event(
                        "field `resources`: a scheduled event names its rule in resources[0]"
                            .into(),
                    )
                })?;
            let scheduled_time = event.time.ok_or_else(|| {
                Error::Event("field `time`: a scheduled event carries its scheduled time".into())
            })?;
            return Ok(Event::Scheduled(ScheduledRun {
                schedule,
                scheduled_time,
            }));
        }
        if object.contains_key("schedule_arn") || object.contains_key("scheduled_time") {
            let input: SchedulerInput = from_value(payload, "EventBridge Scheduler input")?;
            return Ok(Event::Scheduled(ScheduledRun {
                schedule: input.schedule_arn,
                scheduled_time: input.scheduled_time,
            }));
        }
        if let Some(action) = object.get("action") {
            return parse_action(action.clone(), payload).map(Event::OnDemand);
        }
        Err(Error::Event(
            "unrecognised payload: expected an EventBridge scheduled event, an SQS event, or an \
             on-demand call with an `action` field (snapshot, retention, report, restore, verify, import, readiness, cost)"
                .into(),
        ))
    }
}

fn parse_action(action: Value, mut payload: Value) -> Result<Action, Error> {
    let Value::String(name) = action else {
        return Err(Error::Event(format!(
            "field `action`: expected a string, got {}",
            kind_of(&action)
        )));
    };
    if let Some(object) = payload.as_object_mut() {
        object.remove("action");
    }
    let action = match name.as_str() {
        "snapshot" => Action::Snapshot(from_value(payload, "snapshot request")?),
        "retention" => Action::Retention(from_value(payload, "retention request")?),
        "report" => Action::Report(from_value(payload, "report request")?),
        "restore" => Action::Restore(from_value(payload, "restore request")?),
        "verify" => Action::Verify(from_value(payload, "verify request")?),
        "import" => Action::Import(from_value(payload, "import request")?),
        "readiness" => Action::Readiness(from_value(payload, "readiness request")?),
        "cost" => Action::Cost(from_value(payload, "cost request")?),
        "recover" => Action::Recover(from_value(payload, "recover request")?),
        other => {
            return Err(Error::Event(format!(
                "field `action`: unknown action {other:?}, expected one of snapshot, retention, report, restore, verify, import, readiness, cost, recover"
            )))
        }
    };
    if let Action::Snapshot(request) = &action {
        validate_snapshot_request(request)?;
    }
    if let Action::Restore(request) = &action {
        validate_restore_request(request)?;
    }
    if let Action::Verify(request) = &action {
        validate_verify_request(request)?;
    }
    if let Action::Readiness(request) = &action {
        validate_instance_ids(request.instance_ids.as_ref())?;
    }
    if let Action::Cost(request) = &action {
        validate_instance_ids(request.instance_ids.as_ref())?;
    }
    if let Action::Retention(request) = &action {
        validate_instance_ids(request.instance_ids.as_ref())?;
        if request.instance_ids.is_some() && request.dry_run != Some(true) {
            return Err(Error::Event(
                "field `instance_ids`: only with \"dry_run\": true (retention applies to the whole fleet; a dry run may show some of it)".into(),
            ));
        }
    }
    Ok(action)
}

fn validate_restore_request(request: &RestoreRequest) -> Result<(), Error> {
    if !is_instance_id(&request.instance_id) {
        return Err(Error::Event(format!(
            "field `instance_id`: {:?} is not an EC2 instance id (i- and 8 or 17 hex digits)",
            request.instance_id
        )));
    }
    if request.run_id != "latest" && !is_run_id(&request.run_id) {
        return Err(Error::Event(format!(
            "field `run_id`: {:?} must be \"latest\" or a run id (1 to 64 letters, digits, '-', '_' or '.')",
            request.run_id
        )));
    }
    if let Some(zone) = &request.availability_zone {
        if !is_availability_zone(zone) {
            return Err(Error::Event(format!(
                "field `availability_zone`: {zone:?} is not an Availability Zone such as eu-west-1a"
            )));
        }
    }
    if request.rollback == Some(true) && request.mode != RestoreMode::Replace {
        return Err(Error::Event(
            "field `rollback`: only a `replace` restore can be rolled back (`volumes` changes no instance)".into(),
        ));
    }
    Ok(())
}

fn validate_verify_request(request: &VerifyRequest) -> Result<(), Error> {
    if let Some(ids) = &request.instance_ids {
        if ids.is_empty() || ids.len() > MAX_VERIFY {
            return Err(Error::Event(format!(
                "field `instance_ids`: 1 to {MAX_VERIFY} instances per verification"
            )));
        }
        if let Some((i, bad)) = ids.iter().enumerate().find(|(_, id)| !is_instance_id(id)) {
            return Err(Error::Event(format!(
                "field `instance_ids[{i}]`: {bad:?} is not an EC2 instance id (i- and 8 or 17 hex digits)"
            )));
        }
    }
    if let Some(n) = request.sample {
        if n == 0 || n as usize > MAX_VERIFY {
            return Err(Error::Event(format!(
                "field `sample`: {n} is not between 1 and {MAX_VERIFY}"
            )));
        }
    }
    Ok(())
}

/// A selection of instances: absent (the whole fleet), or 1 to `MAX_INSTANCE_IDS` ids.
fn validate_instance_ids(ids: Option<&Vec<String>>) -> Result<(), Error> {
    if let Some(ids) = ids {
        if ids.is_empty() {
            return Err(Error::Event(
                "field `instance_ids`: an empty list selects nothing; omit the field for the whole fleet".into(),
            ));
        }
        if ids.len() > MAX_INSTANCE_IDS {
            return Err(Error::Event(format!(
                "field `instance_ids`: {} ids, at most {MAX_INSTANCE_IDS} in one call",
                ids.len()
            )));
        }
        if let Some((i, bad)) = ids.iter().enumerate().find(|(_, id)| !is_instance_id(id)) {
            return Err(Error::Event(format!(
                "field `instance_ids[{i}]`: {bad:?} is not an EC2 instance id (i- and 8 or 17 hex digits)"
            )));
        }
    }
    Ok(())
}

fn validate_snapshot_request(request: &SnapshotRequest) -> Result<(), Error> {
    validate_instance_ids(request.instance_ids.as_ref())?;
    if let Some(run_id) = &request.run_id {
        if !is_run_id(run_id) {
            return Err(Error::Event(format!(
                "field `run_id`: {run_id:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        if is_scheduled_run_id(run_id) {
            return Err(Error::Event(format!(
                "field `run_id`: {run_id:?} has the form of a scheduled run's id (YYYYMMDDTHHMMSSZ-xxxxxxxx); on-demand runs cannot take one, or a schedule would find its run taken"
            )));
        }
    }
    if let Some(token) = &request.client_token {
        if request.run_id.is_some() {
            return Err(Error::Event(
                "field `client_token`: give either `run_id` or `client_token`, not both".into(),
            ));
        }
        if token.is_empty() || token.len() > 60 || !is_run_id(token) {
            return Err(Error::Event(format!(
                "field `client_token`: {token:?} must be 1 to 60 letters, digits, '-', '_' or '.'"
            )));
        }
    }
    Ok(())
}

/// Deserializes with the path of the failing field in the message.
fn from_value<T: DeserializeOwned>(payload: Value, what: &str) -> Result<T, Error> {
    serde_path_to_error::deserialize(payload).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            Error::Event(format!("{what}: {inner}"))
        } else {
            Error::Event(format!("{what}: field `{path}`: {inner}"))
        }
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(payload: Value) -> String {
        Event::parse(payload)
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn classic_scheduled_event() {
        let event = Event::parse(json!({
            "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
            "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012",
            "time": "2026-11-23T00:00:00Z", "region": "eu-west-1",
            "resources": ["arn:aws:events:eu-west-1:123456789012:rule/nightly"], "detail": {}
        }))
        .expect("scheduled");
        let Event::Scheduled(run) = event else {
            panic!("not scheduled: {event:?}")
        };
        assert_eq!(
            run.schedule,
            "arn:aws:events:eu-west-1:123456789012:rule/nightly"
        );
        assert!(
            run.run_id().starts_with("20261123T000000Z-"),
            "{}",
            run.run_id()
        );
    }

    #[test]
    fn scheduler_input_gives_the_same_run_id_for_a_duplicate_delivery() {
        let input = json!({
            "schedule_arn": "arn:aws:scheduler:eu-west-1:123456789012:schedule/default/nightly",
            "scheduled_time": "2026-11-23T00:00:00Z", "execution_id": "d32c5kddcf5bb8c3"
        });
        let Event::Scheduled(a) = Event::parse(input.clone()).expect("a") else {
            panic!("a")
        };
        let mut retry = input;
        retry["execution_id"] = json!("other-attempt");
        let Event::Scheduled(b) = Event::parse(retry).expect("b") else {
            panic!("b")
        };
        assert_eq!(a.run_id(), b.run_id());
        let other = ScheduledRun {
            schedule: "arn:other".into(),
            scheduled_time: a.scheduled_time,
        };
        assert_ne!(
            a.run_id(),
            other.run_id(),
            "two schedules at one time are two runs"
        );
    }

    #[test]
    fn sqs_event() {
        let event = Event::parse(json!({"Records": [{
            "messageId": "m1", "receiptHandle": "r1", "body": "{}", "attributes": {},
            "messageAttributes": {}, "md5OfBody": "x", "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:q", "awsRegion": "eu-west-1"
        }]}))
        .expect("sqs");
        assert!(matches!(event, Event::Sqs(ref e) if e.records.len() == 1));
    }

    #[test]
    fn records_from_another_source_are_refused() {
        let text = err(json!({"Records": [{"eventSource": "aws:s3", "messageId": "m"}]}));
        assert!(text.contains("Records[0].eventSource"), "{text}");
    }

    #[test]
    fn on_demand_snapshot() {
        let event = Event::parse(
            json!({"action": "snapshot", "instance_ids": ["i-0123456789abcdef0"], "dry_run": true}),
        )
        .expect("snapshot");
        assert_eq!(
            event,
            Event::OnDemand(Action::Snapshot(SnapshotRequest {
                instance_ids: Some(vec!["i-0123456789abcdef0".into()]),
                dry_run: Some(true),
                run_id: None,
                client_token: None,
            }))
        );
    }

    #[test]
    fn malformed_on_demand_calls_name_the_field() {
        let cases = [
            (
                json!({"action": "snapshot", "instance_ids": "i-0123456789abcdef0"}),
                "field `instance_ids`",
            ),
            (
                json!({"action": "snapshot", "instance_ids": ["i-0123456789abcdef0", 7]}),
                "field `instance_ids[1]`",
            ),
            (
                json!({"action": "snapshot", "instance_ids": ["vol-0123456789abcdef0"]}),
                "field `instance_ids[0]`",
            ),
            (
                json!({"action": "snapshot", "instance_ids": []}),
                "field `instance_ids`",
            ),
            (
                json!({"action": "snapshot", "dry_run": "yes"}),
                "field `dry_run`",
            ),
            (
                json!({"action": "snapshot", "instance": "i-0123456789abcdef0"}),
                "unknown field `instance`",
            ),
            (
                json!({"action": "snapshot", "run_id": "a:b"}),
                "field `run_id`",
            ),
            (json!({"action": "backup"}), "field `action`"),
            (json!({"action": 3}), "field `action`"),
            (
                json!({"action": "restore", "instance_id": "i-0123456789abcdef0", "run_id": "latest", "mode": "swap"}),
                "field `mode`",
            ),
            (
                json!({"action": "restore", "run_id": "latest", "mode": "volumes"}),
                "instance_id",
            ),
        ];
        for (payload, expected) in cases {
            let text = err(payload.clone());
            assert!(
                text.contains(expected),
                "{payload}: {text:?} does not contain {expected:?}"
            );
        }
    }

    #[test]
    fn too_many_ids_are_refused() {
        let ids: Vec<String> = (0..=MAX_INSTANCE_IDS)
            .map(|i| format!("i-{i:017x}"))
            .collect();
        let text = err(json!({"action": "snapshot", "instance_ids": ids}));
        assert!(text.contains("at most 1000"), "{text}");
    }

    #[test]
    fn other_shapes_are_clear_errors() {
        assert!(err(json!([1, 2])).contains("expected a JSON object"));
        assert!(err(json!({"hello": "world"})).contains("unrecognised payload"));
        assert!(err(json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
            "time": "2026-11-23T00:00:00Z", "resources": [], "detail": {}, "id": "x", "version": "0",
            "account": "1", "region": "r"})).contains("only \"Scheduled Event\""));
        assert!(
            err(json!({"schedule_arn": "arn:x", "scheduled_time": "yesterday"}))
                .contains("field `scheduled_time`")
        );
    }

    #[test]
    fn the_sample_events_shipped_in_events_parse_as_their_shape() {
        let sample =
            |text: &str| Event::parse(serde_json::from_str(text).expect("JSON")).expect("parses");
        assert!(matches!(
            sample(include_str!("../../../../events/scheduled-rule.json")),
            Event::Scheduled(_)
        ));
        assert!(matches!(
            sample(include_str!("../../../../events/scheduler-input.json")),
            Event::Scheduled(_)
        ));
        assert!(matches!(
            sample(include_str!("../../../../events/sqs-tracking.json")),
            Event::Sqs(_)
        ));
        assert!(matches!(
            sample(include_str!("../../../../events/snapshot-dry-run.json")),
            Event::OnDemand(Action::Snapshot(_))
        ));
        assert!(matches!(
            sample(include_str!("../../../../events/snapshot-instances.json")),
            Event::OnDemand(Action::Snapshot(_))
        ));
        let Event::Sqs(sqs) = sample(include_str!("../../../../events/sqs-tracking.json")) else {
            return;
        };
        let body = sqs.records[0].body.clone().unwrap_or_default();
        assert!(
            crate::jobs::Envelope::from_body(&body).is_ok(),
            "the sample tracking message is a valid job"
        );
    }
}
