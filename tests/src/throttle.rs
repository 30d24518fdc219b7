//! EC2's request throttling as AWS documents it (AWS-FACTS.md): a token bucket per account,
//! region and kind of action, each with its burst (the bucket's size) and its refill a second.
//! A call takes a token; with none left EC2 answers `RequestLimitExceeded`. The fault proxy
//! plays these buckets in front of the emulator (moto throttles nothing), and the bench sets
//! a run's calls against them: the least time the calls of one bucket can take is
//! (calls − burst) ÷ refill.
//!
//! SSM's, SQS's and DynamoDB's request rates are not published as buckets: their calls are
//! not throttled here.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// One of EC2's request buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket {
    pub name: &'static str,
    /// Tokens the bucket holds when full: calls that may go at once.
    pub burst: u64,
    /// Tokens added a second.
    pub refill: u64,
}

const NON_MUTATING: Bucket = Bucket {
    name: "non-mutating",
    burst: 100,
    refill: 20,
};
const UNFILTERED: Bucket = Bucket {
    name: "unfiltered and unpaginated describes",
    burst: 50,
    refill: 10,
};
const MUTATING: Bucket = Bucket {
    name: "mutating",
    burst: 50,
    refill: 5,
};
const CREATE_SNAPSHOTS: Bucket = Bucket {
    name: "CreateSnapshot(s)",
    burst: 100,
    refill: 5,
};
const DELETE_SNAPSHOT: Bucket = Bucket {
    name: "DeleteSnapshot",
    burst: 100,
    refill: 5,
};
const CREATE_TAGS: Bucket = Bucket {
    name: "CreateTags",
    burst: 100,
    refill: 10,
};

/// The bucket an EC2 call (`ec2:DeleteSnapshot`) draws from; `narrowed` when a non-mutating
/// call names ids, filters or a page size (an unfiltered, unpaginated describe draws from a
/// smaller bucket). None for other services' calls.
pub fn bucket_of(action: &str, narrowed: bool) -> Option<Bucket> {
    let name = action.strip_prefix("ec2:")?;
    Some(match name {
        "CreateTags" => CREATE_TAGS,
        "DeleteSnapshot" => DELETE_SNAPSHOT,
        "CreateSnapshot" | "CreateSnapshots" => CREATE_SNAPSHOTS,
        n if n.starts_with("Describe") || n.starts_with("Get") || n.starts_with("List") => {
            if narrowed {
                NON_MUTATING
            } else {
                UNFILTERED
            }
        }
        _ => MUTATING,
    })
}

/// Whether a query-protocol body narrows its call: ids, filters or a page size.
pub fn is_narrowed(body: &str) -> bool {
    form_urlencoded::parse(body.as_bytes()).any(|(key, _)| {
        key.starts_with("Filter.") || key == "MaxResults" || key == "NextToken" || names_ids(&key)
    })
}

/// Whether a query-protocol key names one of the call's ids (`SnapshotId.1`).
fn names_ids(key: &str) -> bool {
    key.contains("Id.") && key.ends_with(|c: char| c.is_ascii_digit())
}

/// What a query-protocol describe asks by, for telling its calls apart: the names of its
/// filters (`tag:ConsistentSnapshot:RunId`, decoded, sorted, each once), `ids` when it names
/// ids, joined by ` + `; `everything` when neither (a page size or token alone).
pub fn asked_by(body: &str) -> String {
    let mut by: Vec<String> = Vec::new();
    for (key, value) in form_urlencoded::parse(body.as_bytes()) {
        let named = if key.starts_with("Filter.") && key.ends_with(".Name") {
            value.into_owned()
        } else if names_ids(&key) {
            "ids".to_string()
        } else {
            continue;
        };
        if !by.contains(&named) {
            by.push(named);
        }
    }
    by.sort();
    if by.is_empty() {
        "everything".to_string()
    } else {
        by.join(" + ")
    }
}

/// The buckets of every region, full at first. `scale` multiplies every refill (1: AWS's
/// rates).
#[derive(Debug)]
pub struct TokenBuckets {
    scale: f64,
    /// (bucket, region) → (tokens, when they were counted).
    levels: HashMap<(&'static str, String), (f64, Instant)>,
}

impl TokenBuckets {
    pub fn new(scale: f64) -> Self {
        TokenBuckets {
            scale: scale.max(f64::MIN_POSITIVE),
            levels: HashMap::new(),
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Takes a token for a call to `bucket` in `region` at `now`: false when the bucket is
    /// empty (the call is throttled and takes nothing).
    pub fn take(&mut self, bucket: Bucket, region: &str, now: Instant) -> bool {
        let burst = bucket.burst as f64;
        let (tokens, at) = self
            .levels
            .entry((bucket.name, region.to_string()))
            .or_insert((burst, now));
        let refilled =
            now.saturating_duration_since(*at).as_secs_f64() * bucket.refill as f64 * self.scale;
        *tokens = (*tokens + refilled).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Calls by (action, region) gathered by the bucket and region they draw from (calls of other
/// services left out); every describe counted as narrowed, as this project's and the peer's
/// all are.
pub fn per_bucket(calls: &BTreeMap<(String, String), u64>) -> BTreeMap<(Bucket, String), u64> {
    let mut buckets = BTreeMap::new();
    for ((action, region), n) in calls {
        if let Some(bucket) = bucket_of(action, true) {
            *buckets.entry((bucket, region.clone())).or_default() += n;
        }
    }
    buckets
}

/// Where in a run each bucket that cost time (more calls than its burst) was busy: from its
/// first call to its last, in seconds after `started`, with its calls, earliest first. Read
/// beside the floor, it shows which buckets waited on each other (the run's critical path).
pub fn busy_windows(
    through: &BTreeMap<(String, String), (Instant, Instant)>,
    calls: &BTreeMap<(Bucket, String), u64>,
    started: Instant,
) -> Vec<BusyWindow> {
    let mut spans: BTreeMap<(Bucket, String), (Instant, Instant)> = BTreeMap::new();
    for ((action, region), (first, last)) in through {
        let Some(bucket) = bucket_of(action, true) else {
            continue;
        };
        spans
            .entry((bucket, region.clone()))
            .and_modify(|(f, l)| {
                *f = (*f).min(*first);
                *l = (*l).max(*last);
            })
            .or_insert((*first, *last));
    }
    let mut windows: Vec<BusyWindow> = spans
        .into_iter()
        .filter_map(|((bucket, region), (first, last))| {
            let n = calls.get(&(bucket, region.clone())).copied().unwrap_or(0);
            (n > bucket.burst).then(|| BusyWindow {
                bucket,
                region,
                from: first.saturating_duration_since(started).as_secs_f64(),
                to: last.saturating_duration_since(started).as_secs_f64(),
                calls: n,
            })
        })
        .collect();
    windows.sort_by(|a, b| a.from.total_cmp(&b.from));
    windows
}

/// One bucket's busy window in a run (`busy_windows`).
#[derive(Debug, Clone, PartialEq)]
pub struct BusyWindow {
    pub bucket: Bucket,
    pub region: String,
    pub from: f64,
    pub to: f64,
    pub calls: u64,
}

/// The least time `calls` calls of one bucket take at its refill × `scale`, in seconds.
pub fn least_seconds(bucket: Bucket, calls: u64, scale: f64) -> f64 {
    calls.saturating_sub(bucket.burst) as f64 / (bucket.refill as f64 * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_call_draws_from_its_documented_bucket() {
        assert_eq!(bucket_of("ec2:CreateTags", false), Some(CREATE_TAGS));
        assert_eq!(
            bucket_of("ec2:DeleteSnapshot", false),
            Some(DELETE_SNAPSHOT)
        );
        assert_eq!(bucket_of("ec2:CopySnapshot", false), Some(MUTATING));
        assert_eq!(
            bucket_of("ec2:CreateSnapshots", false),
            Some(CREATE_SNAPSHOTS)
        );
        assert_eq!(bucket_of("ec2:DescribeSnapshots", true), Some(NON_MUTATING));
        assert_eq!(bucket_of("ec2:DescribeSnapshots", false), Some(UNFILTERED));
        assert_eq!(bucket_of("ssm:SendCommand", false), None);
        assert!(is_narrowed(
            "Action=DescribeSnapshots&Filter.1.Name=tag%3AX"
        ));
        assert!(is_narrowed("Action=DescribeSnapshots&SnapshotId.1=snap-1"));
        assert!(is_narrowed("Action=DescribeInstances&MaxResults=1000"));
        assert!(!is_narrowed("Action=DescribeSnapshots&OwnerId.Self=self"));
        assert!(!is_narrowed("Action=DescribeImages&Version=2016-11-15"));
    }

    #[test]
    fn a_window_spans_its_buckets_first_to_last_call_and_skips_those_within_their_burst() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let key = |a: &str, r: &str| (a.to_string(), r.to_string());
        let through = BTreeMap::from([
            (key("ec2:CopySnapshot", "eu-west-1"), (at(60), at(180))),
            // Another action of the same bucket widens its window.
            (key("ec2:ModifySnapshotTier", "eu-west-1"), (at(50), at(70))),
            (key("ec2:DeleteSnapshot", "eu-west-1"), (at(185), at(300))),
            (key("ec2:DeleteSnapshot", "us-east-1"), (at(185), at(290))),
            // Within its burst: it cost no time, and is left out.
            (key("ec2:DescribeSnapshots", "us-east-1"), (at(1), at(290))),
            (key("ssm:SendCommand", "us-east-1"), (at(0), at(1))),
        ]);
        let calls = per_bucket(&BTreeMap::from([
            (key("ec2:CopySnapshot", "eu-west-1"), 590),
            (key("ec2:ModifySnapshotTier", "eu-west-1"), 10),
            (key("ec2:DeleteSnapshot", "eu-west-1"), 600),
            (key("ec2:DeleteSnapshot", "us-east-1"), 600),
            (key("ec2:DescribeSnapshots", "us-east-1"), 40),
        ]));
        let windows = busy_windows(&through, &calls, t0);
        let seen: Vec<(&str, &str, f64, f64, u64)> = windows
            .iter()
            .map(|w| (w.bucket.name, w.region.as_str(), w.from, w.to, w.calls))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("mutating", "eu-west-1", 50.0, 180.0, 600),
                ("DeleteSnapshot", "eu-west-1", 185.0, 300.0, 600),
                ("DeleteSnapshot", "us-east-1", 185.0, 290.0, 600),
            ]
        );
    }

    #[test]
    fn a_describe_is_told_apart_by_its_filters_names_and_ids() {
        let run = "Action=DescribeSnapshots&Filter.1.Name=tag%3AConsistentSnapshot%3ARunId\
                   &Filter.1.Value.1=r-1&Filter.2.Name=owner-id&Filter.2.Value.1=self\
                   &MaxResults=1000";
        assert_eq!(asked_by(run), "owner-id + tag:ConsistentSnapshot:RunId");
        let ids = "Action=DescribeSnapshots&SnapshotId.1=snap-1&SnapshotId.2=snap-2";
        assert_eq!(asked_by(ids), "ids");
        assert_eq!(
            asked_by("Action=DescribeImages&MaxResults=1000"),
            "everything"
        );
        // A broken escape is kept as it is, not a panic.
        assert_eq!(
            asked_by("Action=DescribeSnapshots&Filter.1.Name=tag%3&Filter.1.Value.1=x"),
            "tag%3"
        );
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_refill_a_second() {
        let start = Instant::now();
        let mut buckets = TokenBuckets::new(1.0);
        let taken = (0..120)
            .filter(|_| buckets.take(DELETE_SNAPSHOT, "us-east-1", start))
            .count();
        assert_eq!(taken, 100);
        // Another region has its own bucket.
        assert!(buckets.take(DELETE_SNAPSHOT, "eu-west-1", start));
        // One second refills 5.
        let later = start + Duration::from_secs(1);
        let taken = (0..10)
            .filter(|_| buckets.take(DELETE_SNAPSHOT, "us-east-1", later))
            .count();
        assert_eq!(taken, 5);
        // At ten times the rate, one second refills 50, never more than the burst.
        let mut fast = TokenBuckets::new(10.0);
        for _ in 0..100 {
            fast.take(DELETE_SNAPSHOT, "us-east-1", start);
        }
        let taken = (0..60)
            .filter(|_| fast.take(DELETE_SNAPSHOT, "us-east-1", later))
            .count();
        assert_eq!(taken, 50);
        let much_later = start + Duration::from_secs(3600);
        let taken = (0..300)
            .filter(|_| fast.take(DELETE_SNAPSHOT, "us-east-1", much_later))
            .count();
        assert_eq!(taken, 100);
        assert_eq!(least_seconds(DELETE_SNAPSHOT, 3100, 1.0), 600.0);
        // Two actions of one bucket share its burst; another service draws from none.
        let calls: BTreeMap<(String, String), u64> = [
            ("ec2:DescribeSnapshots", "us-east-1", 150),
            ("ec2:DescribeInstances", "us-east-1", 10),
            ("ec2:DescribeSnapshots", "eu-west-1", 5),
            ("ssm:SendCommand", "us-east-1", 20),
        ]
        .into_iter()
        .map(|(a, r, n)| ((a.to_string(), r.to_string()), n))
        .collect();
        let gathered = per_bucket(&calls);
        assert_eq!(gathered.len(), 2);
        assert_eq!(gathered[&(NON_MUTATING, "us-east-1".to_string())], 160);
        assert_eq!(least_seconds(DELETE_SNAPSHOT, 50, 1.0), 0.0);
    }
}
