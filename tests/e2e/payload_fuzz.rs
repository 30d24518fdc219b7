//! The payload parser under generated input: `Event::parse` never panics, every refusal says
//! what is wrong, and a field broken in a valid on-demand payload is named in the error.
//!
//! `tests/e2e/payload_corpus/` is the kept corpus: every payload that once mattered (each event
//! shape, each refusal), with what the parser must answer. The properties start from it and
//! mutate it; proptest keeps any failing case it finds in `proptest-regressions/`.

use std::path::PathBuf;

use consistent_snapshot::Event;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn corpus() -> Vec<(String, Value, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/payload_corpus");
    let mut cases: Vec<(String, Value, Value)> = std::fs::read_dir(&dir)
        .expect("the corpus directory")
        .filter_map(Result::ok)
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            let text = std::fs::read_to_string(entry.path()).expect("corpus file");
            let case: Value = serde_json::from_str(&text).expect("corpus file is JSON");
            (name, case["payload"].clone(), case["expect"].clone())
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

#[test]
fn the_corpus_answers_as_recorded() {
    let cases = corpus();
    assert!(cases.len() >= 30, "the corpus lost files: {}", cases.len());
    for (name, payload, expect) in cases {
        let parsed = Event::parse(payload);
        match (expect.as_str(), parsed) {
            (Some("ok"), Ok(_)) => {}
            (Some("ok"), Err(err)) => panic!("{name}: refused: {err}"),
            (Some(mention), Err(err)) => {
                assert!(err.to_string().contains(mention), "{name}: {err}")
            }
            (_, Ok(event)) => panic!("{name}: accepted as {event:?}"),
            (None, Err(err)) => panic!("{name}: no expectation recorded ({err})"),
        }
    }
}

#[test]
fn every_sample_event_of_the_readme_is_accepted() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir)
        .expect("events/")
        .filter_map(Result::ok)
    {
        let name = entry.file_name().to_string_lossy().to_string();
        let text = std::fs::read_to_string(entry.path()).expect("event file");
        let payload: Value = serde_json::from_str(&text).expect("event file is JSON");
        if let Err(err) = Event::parse(payload) {
            panic!("events/{name}: refused: {err}");
        }
        seen += 1;
    }
    assert!(seen >= 14, "the samples lost files: {seen}");
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,24}".prop_map(Value::String),
        prop_oneof![
            Just("snapshot"),
            Just("retention"),
            Just("report"),
            Just("restore"),
            Just("i-0123456789abcdef0"),
            Just("aws:sqs"),
            Just("Scheduled Event"),
            Just("2026-11-23T00:00:00Z"),
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,12}",
                    Just("action".to_string()),
                    Just("Records".to_string()),
                    Just("instance_ids".to_string()),
                    Just("detail-type".to_string()),
                    Just("schedule_arn".to_string()),
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// The valid on-demand payloads of the corpus; `with_fields`: only those with a field besides
/// `action`.
fn valid_on_demand(with_fields: bool) -> Vec<Value> {
    corpus()
        .into_iter()
        .filter(|(_, payload, expect)| expect == "ok" && payload.get("action").is_some())
        .filter(|(_, payload, _)| !with_fields || payload.as_object().is_some_and(|o| o.len() > 1))
        .map(|(_, payload, _)| payload)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn any_json_is_parsed_or_refused_with_a_reason(payload in any_json()) {
        if let Err(err) = Event::parse(payload) {
            prop_assert!(err.to_string().len() > "invalid event: ".len());
        }
    }

    /// One field of a valid call replaced by any value: accepted, or refused naming it.
    #[test]
    fn a_broken_field_is_named(pick in any::<prop::sample::Index>(), field in any::<prop::sample::Index>(), value in any_json()) {
        let payloads = valid_on_demand(true);
        let mut payload = payloads[pick.index(payloads.len())].clone();
        let keys: Vec<String> = payload
            .as_object()
            .map(|o| o.keys().filter(|k| *k != "action").cloned().collect())
            .unwrap_or_default();
        let key = keys[field.index(keys.len())].clone();
        payload[&key] = value;
        if let Err(err) = Event::parse(payload.clone()) {
            prop_assert!(err.to_string().contains(&key), "{payload}: {err}");
        }
    }

    /// An unknown field in any on-demand call is refused by name.
    #[test]
    fn an_unknown_field_is_refused_by_name(pick in any::<prop::sample::Index>(), key in "[a-z]{3,10}_x", value in any_json()) {
        let payloads = valid_on_demand(false);
        let mut payload = payloads[pick.index(payloads.len())].clone();
        payload[&key] = value;
        let err = Event::parse(payload.clone());
        prop_assert!(err.as_ref().is_err_and(|e| e.to_string().contains(&key)), "{payload}: {err:?}");
    }
}
