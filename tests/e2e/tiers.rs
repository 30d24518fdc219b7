//! Retention tiers, end to end: a server with 400 days of nightly sets (a few nights, and
//! one whole week, crash-consistent) in the home region and copies of the consistent ones in a
//! copy region, under `RETAIN_DAILY=7, RETAIN_WEEKLY=4, RETAIN_MONTHLY=12, RETAIN_YEARLY=1` in
//! the schedule's time zone (New York). A night, then a month later another: after each, the
//! sets left in both regions are exactly those the tiers select (computed here from the dates,
//! apart from the function's own code), each labelled with its tiers in the catalog and on its
//! snapshots; with `ARCHIVE_AFTER_DAYS=30`, exactly the sets only the monthly or yearly tier
//! keeps, a month old and not to be deleted within 90 days, are in the archive tier; a dry run
//! then plans nothing and says when a monthly set is expected to go; and a restore of an
//! archived month-end set waits through its restore from the archive tier, then makes the
//! volumes.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, Utc};
use chrono_tz::Tz;
use harness::{own_snapshots, snapshot_tag, Emulator, ServerSpec, World};

const HOME: &str = "us-east-1";
const COPY: &str = "eu-west-1";
const ZONE: &str = "America/New_York";
const DAYS: u64 = 400;

/// An instance's sets in a region as the tiers see them: run id -> (start, consistent).
type History = BTreeMap<String, (DateTime<Utc>, bool)>;

/// One set as EC2 lists it in a region.
#[derive(Debug, Clone)]
struct Listed {
    start: DateTime<Utc>,
    consistent: bool,
    snapshots: Vec<String>,
    /// The `ConsistentSnapshot:Tiers` tag of each of its snapshots.
    tags: BTreeSet<Option<String>>,
    /// Whether each of its snapshots is in the archive tier.
    archived: BTreeSet<bool>,
}

/// `instance -> run -> set`, this deployment's, in `region`.
async fn listed(emulator: &Emulator, region: &str) -> BTreeMap<String, BTreeMap<String, Listed>> {
    let mut found: BTreeMap<String, BTreeMap<String, Listed>> = BTreeMap::new();
    for s in own_snapshots(emulator, region)
        .await
        .expect("DescribeSnapshots")
    {
        let tag = |k: &str| snapshot_tag(&s, k).map(str::to_string);
        if tag("ConsistentSnapshot:ManagedBy").as_deref() != Some("vss-test") {
            continue;
        }
        let (Some(instance), Some(run), Some(id), Some(start)) = (
            tag("ConsistentSnapshot:InstanceId"),
            tag("ConsistentSnapshot:RunId"),
            s.snapshot_id(),
            s.start_time()
                .and_then(|t| DateTime::from_timestamp(t.secs(), 0)),
        ) else {
            continue;
        };
        let set = found
            .entry(instance)
            .or_default()
            .entry(run)
            .or_insert(Listed {
                start,
                consistent: true,
                snapshots: vec![],
                tags: BTreeSet::new(),
                archived: BTreeSet::new(),
            });
        set.start = set.start.min(start);
        set.consistent &= tag("AppConsistent").as_deref() == Some("True");
        set.snapshots.push(id.to_string());
        set.tags.insert(tag("ConsistentSnapshot:Tiers"));
        set.archived
            .insert(s.storage_tier() == Some(&aws_sdk_ec2::types::StorageTier::Archive));
    }
    found
}

/// What the tiers keep of everything an instance ever had in a region (`run -> (start,
/// consistent)`), with the tiers of each kept set: the newest 7 consistent sets (daily); the
/// first consistent set, or else the first crash-consistent one, of each of the newest 4
/// weeks, 12 months and 1 year that have a set, as the calendar of `zone` labels them; and a
/// crash-consistent set newer than every consistent one (no tier).
fn expected(
    history: &BTreeMap<String, (DateTime<Utc>, bool)>,
    zone: Tz,
) -> BTreeMap<String, String> {
    let mut tiers: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut consistent: Vec<(&String, DateTime<Utc>)> = history
        .iter()
        .filter(|(_, (_, c))| *c)
        .map(|(run, (at, _))| (run, *at))
        .collect();
    consistent.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
    for (run, _) in consistent.iter().take(7) {
        tiers.entry(run.to_string()).or_default().push("daily");
    }
    let newest = consistent.first().map(|(_, at)| *at);
    for (run, (at, c)) in history {
        if !c && newest.is_none_or(|n| n < *at) {
            tiers.entry(run.clone()).or_default();
        }
    }
    for (name, format, count) in [
        ("weekly", "%G-W%V", 4),
        ("monthly", "%Y-%m", 12),
        ("yearly", "%Y", 1),
    ] {
        let mut periods: BTreeMap<String, Vec<&String>> = BTreeMap::new();
        for (run, (at, _)) in history {
            let label = at.with_timezone(&zone).format(format).to_string();
            periods.entry(label).or_default().push(run);
        }
        for runs in periods.values().rev().take(count) {
            let first = |want: bool| {
                runs.iter()
                    .filter(|run| history[**run].1 == want)
                    .min_by_key(|run| history[**run].0)
                    .map(|run| run.to_string())
            };
            if let Some(run) = first(true).or_else(|| first(false)) {
                tiers.entry(run).or_default().push(name);
            }
        }
    }
    tiers
        .into_iter()
        .map(|(run, t)| (run, t.join(",")))
        .collect()
}

/// The sets that must be in the archive tier after a night whose own set is the newest: those
/// only the monthly (12) or yearly (1) tier keeps, at least 30 days old, and not to leave
/// their tiers within 90 days: the n-th newest month's set leaves when 13 - n newer months have
/// a set, the year's when the next year has one (each at that period's first local midnight).
fn due_for_archive(history: &History, zone: Tz, now: DateTime<Utc>) -> BTreeSet<String> {
    let tiers = expected(history, zone);
    let mut months: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for (run, (at, _)) in history {
        months
            .entry(at.with_timezone(&zone).format("%Y-%m").to_string())
            .or_default()
            .push(run);
    }
    let this_month = now
        .with_timezone(&zone)
        .date_naive()
        .with_day(1)
        .expect("day 1");
    let local_start = |day: chrono::NaiveDate| {
        chrono::TimeZone::from_local_datetime(&zone, &day.and_hms_opt(0, 0, 0).expect("midnight"))
            .earliest()
            .expect("midnight")
            .with_timezone(&Utc)
    };
    let mut leaves: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    for (n, runs) in months.values().rev().take(12).enumerate() {
        let rep = runs
            .iter()
            .filter(|run| tiers.get(**run).is_some_and(|t| t.contains("monthly")))
            .min_by_key(|run| history[**run].0);
        if let Some(run) = rep {
            let month = this_month
                .checked_add_months(chrono::Months::new(12 - n as u32))
                .expect("month");
            leaves.insert(run.as_str(), local_start(month));
        }
    }
    let next_year = chrono::NaiveDate::from_ymd_opt(this_month.year() + 1, 1, 1).expect("year");
    tiers
        .iter()
        .filter(|(_, t)| !t.is_empty() && t.split(',').all(|t| t == "monthly" || t == "yearly"))
        .filter(|(run, _)| now - history[*run].0 >= Duration::days(30))
        .filter(|(run, t)| {
            let month_end = leaves.get(run.as_str()).copied();
            let year_end = t.contains("yearly").then(|| local_start(next_year));
            month_end
                .into_iter()
                .chain(year_end)
                .max()
                .is_some_and(|end| end - now >= Duration::days(90))
        })
        .map(|(run, _)| run.clone())
        .collect()
}

/// Checks one region after a night: exactly the expected sets, each snapshot tagged with its
/// tiers, and the catalog's records holding the same.
fn check_region(
    region: &str,
    instance: &str,
    now: &BTreeMap<String, Listed>,
    history: &History,
    catalog: &BTreeMap<(String, String), String>,
) {
    let want = expected(history, ZONE.parse().expect("zone"));
    let kept: BTreeSet<&String> = now.keys().collect();
    assert_eq!(
        kept,
        want.keys().collect::<BTreeSet<_>>(),
        "{instance} in {region}: the sets left are not the tiers' selection"
    );
    for (run, set) in now {
        let label = want[run].clone();
        let tag = (!label.is_empty()).then(|| label.clone());
        assert_eq!(
            set.tags,
            BTreeSet::from([tag.clone()]),
            "{instance}'s set {run} in {region}: its snapshots' tiers tag"
        );
        let keys: Vec<(String, String)> = if region == HOME {
            vec![(format!("set#{instance}"), format!("run#{run}"))]
        } else {
            set.snapshots
                .iter()
                .map(|id| {
                    (
                        format!("set#{instance}"),
                        format!("copy#{region}#{run}#{id}"),
                    )
                })
                .collect()
        };
        for key in keys {
            assert_eq!(
                catalog.get(&key).filter(|t| !t.is_empty()),
                tag.as_ref(),
                "{instance}'s set {run} in {region}: the catalog's tiers ({key:?})"
            );
        }
    }
}

#[tokio::test]
async fn four_hundred_days_keep_exactly_the_daily_weekly_monthly_and_yearly_sets() {
    // One server (two volumes), which keeps the test's load on the machine's two cores low.
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    let ids = world
        .seed(&[ServerSpec::windows("sql01", 1)])
        .await
        .expect("seed");
    // The nights VSS left crash-consistent (0 = yesterday's): two lone nights inside the
    // daily window and a month's first night, and every night of the week two weeks back in
    // New York's calendar, which that week's crash-consistent first night then stands for.
    let zone: Tz = ZONE.parse().expect("zone");
    let now = Utc::now();
    // Each night at 02:30 UTC, which is the evening before in New York: a UTC calendar would
    // put a month's first set in the wrong month.
    let since = (now
        - now
            .date_naive()
            .and_hms_opt(2, 30, 0)
            .expect("time")
            .and_utc())
    .num_seconds()
    .rem_euclid(86_400) as f64;
    let newest_hours = 24.0 + since / 3600.0;
    let taken = |k: u64| {
        (now - Duration::seconds((newest_hours * 3600.0) as i64 + 86_400 * k as i64))
            .with_timezone(&zone)
    };
    let two_weeks_back = taken(14).format("%G-W%V").to_string();
    let mut crash: Vec<u64> = vec![2, 5];
    for k in 0..DAYS {
        if taken(k).format("%G-W%V").to_string() == two_weeks_back
            || (k > 60 && taken(k).format("%m-%d").to_string() == "03-01")
        {
            crash.push(k);
        }
    }
    emulator
        .seed_history(&harness::History {
            newest_hours,
            copy_region: Some(COPY.into()),
            crash_consistent: crash,
            ..harness::History::nightly(HOME, &ids, DAYS)
        })
        .await
        .expect("history");
    let app = world
        .app(&[
            ("COPY_REGIONS", COPY),
            ("RETAIN_DAILY", "7"),
            ("RETAIN_WEEKLY", "4"),
            ("RETAIN_MONTHLY", "12"),
            ("RETAIN_YEARLY", "1"),
            ("SCHEDULE_TIMEZONE", ZONE),
            ("ARCHIVE_AFTER_DAYS", "30"),
        ])
        .expect("app");
    // Archiving is at once here; a restore from the archive tier takes 3 s (AWS: hours).
    emulator
        .simulate_ebs(&harness::Ebs {
            archive_seconds: Some(0.0),
            restore_seconds: Some(3.0),
            ..harness::Ebs::default()
        })
        .expect("EBS");

    // Everything each instance ever had in each region: (region, instance) -> run -> set.
    let mut history: BTreeMap<(String, String), History> = BTreeMap::new();
    for region in [HOME, COPY] {
        for (instance, sets) in listed(emulator, region).await {
            let seen = history.entry((region.to_string(), instance)).or_default();
            for (run, set) in sets {
                seen.insert(run, (set.start, set.consistent));
            }
        }
    }
    assert_eq!(
        history.len(),
        2,
        "one server in two regions: {:?}",
        history.keys()
    );
    let home_sets = history[&(HOME.to_string(), ids[0].clone())].len() as u64;
    assert_eq!(home_sets, DAYS);

    for night in 0..2 {
        if night == 1 {
            // A month passes: every snapshot is 30 days older (in EC2 and in the catalog).
            // What exists is now what the tiers select from: a set moved across a week's or a
            // month's boundary by the shift cannot be compared with the history before it.
            history.clear();
            for region in [HOME, COPY] {
                let sets = listed(emulator, region).await;
                let all: Vec<String> = sets
                    .values()
                    .flat_map(|sets| sets.values().flat_map(|s| s.snapshots.clone()))
                    .collect();
                emulator
                    .age_snapshots(region, &all, 30 * 24)
                    .await
                    .expect("age");
                for (instance, sets) in sets {
                    let seen = history.entry((region.to_string(), instance)).or_default();
                    for (run, set) in sets {
                        seen.insert(run, (set.start - Duration::days(30), set.consistent));
                    }
                }
            }
        }
        let time = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let run_id = world.nightly(&app, &time).await.expect("night");
        let report = world.logs.run_report(&run_id).expect("summary");
        assert!(report.all_consistent(), "night {night}: {report:?}");
        let catalog = emulator.catalog_tiers().await.expect("catalog");
        for region in [HOME, COPY] {
            let now = listed(emulator, region).await;
            for instance in &ids {
                let sets = now.get(instance).cloned().unwrap_or_default();
                let tonight = sets
                    .get(&run_id)
                    .unwrap_or_else(|| panic!("tonight's set of {instance} in {region}"));
                let seen = history
                    .get_mut(&(region.to_string(), instance.clone()))
                    .expect("history");
                seen.insert(run_id.clone(), (tonight.start, tonight.consistent));
                check_region(region, instance, &sets, seen, &catalog);
                // The archive tier: every set due is archived whole; on the first night,
                // nothing else is (after the month's shift, a set archived before stays so).
                let due = due_for_archive(seen, zone, Utc::now());
                assert!(
                    !due.is_empty(),
                    "{instance} in {region}: nothing due for the archive"
                );
                for (run, set) in &sets {
                    let archived = set.archived == BTreeSet::from([true]);
                    if due.contains(run) {
                        assert!(
                            archived,
                            "{instance}'s set {run} in {region} is due for the archive: {:?}",
                            set.archived
                        );
                    } else if night == 0 {
                        assert_eq!(
                            set.archived,
                            BTreeSet::from([false]),
                            "{instance}'s set {run} in {region} is not due for the archive"
                        );
                    }
                }
            }
        }
    }

    // A dry run right after plans nothing more, and forecasts a monthly set's end: when
    // twelve newer months have a set.
    let dry = world
        .invoke(
            &app,
            serde_json::json!({"action": "retention", "dry_run": true, "instance_ids": [ids[0]]}),
        )
        .await
        .expect("dry run");
    let home_plan = dry["plans"]
        .as_array()
        .and_then(|plans| plans.iter().find(|p| p["region"] == HOME))
        .unwrap_or_else(|| panic!("no home plan: {dry:#}"));
    let sets = home_plan["instances"][&ids[0]].as_array().expect("sets");
    assert!(
        sets.iter().all(|s| s["action"] == "keep"),
        "planned again right after: nothing to delete: {sets:#?}"
    );
    // Every set the monthly tier keeps, newest first: the n-th is expected to go when 13 - n
    // newer months have a set, tonight's month being the newest (at that month's first
    // midnight in New York).
    let mut monthly: Vec<&serde_json::Value> = sets
        .iter()
        .filter(|s| {
            s["tiers"]
                .as_array()
                .is_some_and(|t| t.contains(&serde_json::json!("monthly")))
        })
        .collect();
    monthly.sort_by_key(|s| {
        std::cmp::Reverse(s["started_at"].as_str().unwrap_or_default().to_string())
    });
    assert_eq!(monthly.len(), 12, "{sets:#?}");
    let (rank, oldest) = monthly
        .iter()
        .enumerate()
        .rev()
        .find(|(_, s)| s["tiers"] == serde_json::json!(["monthly"]))
        .expect("a set only the monthly tier keeps");
    let ends = oldest["deleted_after"].as_str().expect("deleted_after");
    assert_eq!(oldest["next_change"], oldest["deleted_after"], "{oldest:#}");
    let this_month = Utc::now()
        .with_timezone(&zone)
        .date_naive()
        .with_day(1)
        .expect("day 1");
    let first = this_month
        .checked_add_months(chrono::Months::new(12 - rank as u32))
        .expect("date");
    let expected_end = chrono::TimeZone::from_local_datetime(
        &zone,
        &first.and_hms_opt(0, 0, 0).expect("midnight"),
    )
    .earliest()
    .expect("local midnight")
    .with_timezone(&Utc);
    assert_eq!(
        DateTime::parse_from_rfc3339(ends)
            .map(|t| t.with_timezone(&Utc))
            .ok(),
        Some(expected_end),
        "{oldest:#}"
    );
    assert!(
        oldest["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("(monthly)"),
        "{oldest:#}"
    );
    assert!(
        sets.iter().any(|s| s["storage"] == "archive"),
        "the dry run shows the archived sets: {sets:#?}"
    );

    // A restore of an archived month-end set: restored from the archive tier first (the
    // answer says so and when to expect it), then its volumes are made.
    let home = listed(emulator, HOME).await;
    let (run, set) = home[&ids[0]]
        .iter()
        .filter(|(_, s)| s.archived == BTreeSet::from([true]))
        .min_by_key(|(_, s)| s.start)
        .expect("an archived set");
    let request = serde_json::json!({"action": "restore", "instance_id": ids[0], "run_id": run, "mode": "volumes"});
    let answer = world.invoke(&app, request.clone()).await.expect("restore");
    assert_eq!(answer["status"], "in_progress", "{answer:#}");
    let waiting = answer["waiting_for"].as_str().unwrap_or_default();
    assert!(
        waiting.contains("restored from the archive tier") && waiting.contains("expected by"),
        "{answer:#}"
    );
    assert!(
        answer["volumes"].as_array().is_none_or(|v| v.is_empty()),
        "no volume before the restore from the archive: {answer:#}"
    );
    world
        .drain_within(&app, std::time::Duration::from_secs(60))
        .await
        .expect("drain");
    let done = world.invoke(&app, request).await.expect("restore again");
    assert_eq!(done["status"], "done", "{done:#}");
    let made: BTreeSet<String> = done["volumes"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|v| v["snapshot_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        made,
        set.snapshots.iter().cloned().collect::<BTreeSet<_>>(),
        "{done:#}"
    );
    // Restored for a while only: AWS archives them again when the days end.
    let tiers = emulator
        .ec2()
        .describe_snapshot_tier_status()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("snapshot-id")
                .set_values(Some(set.snapshots.clone()))
                .build(),
        )
        .send()
        .await
        .expect("DescribeSnapshotTierStatus");
    assert_eq!(tiers.snapshot_tier_statuses().len(), set.snapshots.len());
    for status in tiers.snapshot_tier_statuses() {
        assert_eq!(
            status.last_tiering_operation_status().map(|s| s.as_str()),
            Some("temporary-restore-completed"),
            "{status:?}"
        );
    }
}
