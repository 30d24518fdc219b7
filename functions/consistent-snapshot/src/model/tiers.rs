//! Retention tiers: which of an instance's sets stand for its newest days, weeks, months and
//! years, in the schedule's time zone.
//!
//! The daily tier is the newest `daily` backups. A week, a month or a year is stood for by the
//! first backup (application or file-system consistent) taken in it; a period with none is
//! stood for by its first crash-consistent set, marked as a stand-in (it is the best there is of
//! that period). A tier keeps the sets that stand for its newest `count` periods that have one,
//! so a server that missed a week still keeps `count` weekly sets. Sets still in progress stand
//! for nothing yet (they are kept by another rule). Everything here is a pure function of dates;
//! the clock is an argument.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Daily, Tier::Weekly, Tier::Monthly, Tier::Yearly];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Daily => "daily",
            Tier::Weekly => "weekly",
            Tier::Monthly => "monthly",
            Tier::Yearly => "yearly",
        }
    }

    /// The tiers named in a `ConsistentSnapshot:Tiers`-style list (`daily,monthly`); unknown
    /// names are ignored.
    pub fn parse_list(text: &str) -> Vec<Tier> {
        let mut tiers: Vec<Tier> = text
            .split(',')
            .filter_map(|name| Tier::ALL.into_iter().find(|t| t.name() == name.trim()))
            .collect();
        tiers.sort();
        tiers.dedup();
        tiers
    }

    /// The tiers as bits (for the catalog's compact index).
    pub fn bits(tiers: &[Tier]) -> u8 {
        tiers.iter().fold(0, |bits, t| bits | (1 << *t as u8))
    }

    /// The tiers of `bits`, in order.
    pub fn from_bits(bits: u8) -> Vec<Tier> {
        Tier::ALL
            .into_iter()
            .filter(|t| bits & (1 << *t as u8) != 0)
            .collect()
    }

    /// The tiers as one label: `daily,weekly`; `none` for none.
    pub fn list(tiers: &[Tier]) -> String {
        if tiers.is_empty() {
            return "none".to_string();
        }
        tiers.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
    }
}

/// A set of tiers in one byte (a plan holds one per set: a hundred thousand sets and more),
/// shown as the list of their names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Tiers(u8);

impl Tiers {
    pub fn of(tiers: impl IntoIterator<Item = Tier>) -> Self {
        Tiers(tiers.into_iter().fold(0, |bits, t| bits | (1 << t as u8)))
    }

    pub fn from_bits(bits: u8) -> Self {
        Tiers(bits & 0b1111)
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, tier: Tier) -> bool {
        self.0 & (1 << tier as u8) != 0
    }

    /// The tiers, in order.
    pub fn list(self) -> Vec<Tier> {
        Tier::from_bits(self.0)
    }
}

impl Serialize for Tiers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.list())
    }
}

/// How much of an instance's history one region keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retain {
    /// The newest this many backups (`RETAIN_DAILY`, formerly `RETAIN_COUNT`).
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Also every set younger than this many days.
    pub days: Option<u32>,
}

impl Retain {
    pub fn daily(daily: u32) -> Self {
        Retain {
            daily,
            weekly: 0,
            monthly: 0,
            yearly: 0,
            days: None,
        }
    }

    pub fn count(&self, tier: Tier) -> u32 {
        match tier {
            Tier::Daily => self.daily,
            Tier::Weekly => self.weekly,
            Tier::Monthly => self.monthly,
            Tier::Yearly => self.yearly,
        }
    }

    pub fn set_count(&mut self, tier: Tier, count: u32) {
        match tier {
            Tier::Daily => self.daily = count,
            Tier::Weekly => self.weekly = count,
            Tier::Monthly => self.monthly = count,
            Tier::Yearly => self.yearly = count,
        }
    }

    /// Whether a weekly, monthly or yearly tier keeps anything.
    pub fn calendar(&self) -> bool {
        self.weekly > 0 || self.monthly > 0 || self.yearly > 0
    }
}

/// The tiers that now keep one set in one region: its home record (`copy_region` none) or
/// the copy records of its snapshots in `copy_region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierChange {
    pub instance_id: String,
    pub run_id: String,
    pub copy_region: Option<String>,
    pub snapshot_ids: Vec<String>,
    pub tiers: Vec<Tier>,
}

/// A week (from Monday), a month or a year of the schedule's time zone, by its first day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub tier: Tier,
    pub first_day: NaiveDate,
}

impl Period {
    /// The period of `tier` that `at` falls in, in `zone`; `None` for the daily tier.
    pub fn of(tier: Tier, at: DateTime<Utc>, zone: Tz) -> Option<Period> {
        let day = at.with_timezone(&zone).date_naive();
        let first_day = match tier {
            Tier::Daily => return None,
            Tier::Weekly => day - Duration::days(i64::from(day.weekday().num_days_from_monday())),
            Tier::Monthly => day.with_day(1)?,
            Tier::Yearly => NaiveDate::from_ymd_opt(day.year(), 1, 1)?,
        };
        Some(Period { tier, first_day })
    }

    /// The period `n` after this one.
    pub fn after(self, n: u32) -> Option<Period> {
        let first_day = match self.tier {
            Tier::Daily => return None,
            Tier::Weekly => self
                .first_day
                .checked_add_signed(Duration::weeks(i64::from(n)))?,
            Tier::Monthly => self.first_day.checked_add_months(Months::new(n))?,
            Tier::Yearly => self
                .first_day
                .checked_add_months(Months::new(n.checked_mul(12)?))?,
        };
        Some(Period {
            tier: self.tier,
            first_day,
        })
    }

    /// When the period ends: the next one's first instant in `zone`.
    pub fn end(self, zone: Tz) -> Option<DateTime<Utc>> {
        self.after(1)?.start(zone)
    }

    /// When the period begins: its first day's first instant in `zone` (the first instant
    /// after midnight where a DST change skips it).
    pub fn start(self, zone: Tz) -> Option<DateTime<Utc>> {
        let midnight = self.first_day.and_hms_opt(0, 0, 0)?;
        (0..3)
            .find_map(|h| {
                zone.from_local_datetime(&(midnight + Duration::hours(h)))
                    .earliest()
            })
            .map(|t| t.with_timezone(&Utc))
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tier {
            Tier::Daily => write!(f, "{}", self.first_day),
            Tier::Weekly => write!(f, "{}", self.first_day.format("%G-W%V")),
            Tier::Monthly => write!(f, "{}", self.first_day.format("%Y-%m")),
            Tier::Yearly => write!(f, "{}", self.first_day.format("%Y")),
        }
    }
}

/// One of an instance's sets, as the tiers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub started_at: DateTime<Utc>,
    pub kind: CandidateKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateKind {
    /// Application or file-system consistent, completed.
    Backup,
    /// Completed, not consistent: stands for a period that has no backup.
    CrashConsistent,
    /// Not completed: stands for nothing yet.
    InProgress,
}

/// Why a tier keeps a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Standing {
    pub tier: Tier,
    /// The period it stands for (`None` for the daily tier).
    #[serde(skip)]
    pub period: Option<Period>,
    /// 1 for the newest backup (daily) or the newest period with a set.
    pub rank: u32,
    /// A crash-consistent set standing for a period without a backup.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stand_in: bool,
}

impl Standing {
    /// `one of the newest 7 (daily)`, `week 2026-W48 (weekly)`, `month 2026-11 (monthly,
    /// crash-consistent: no consistent set that month)`.
    pub fn describe(&self, retain: &Retain) -> String {
        let Some(period) = self.period else {
            return format!("one of the newest {} (daily)", retain.daily);
        };
        let (noun, article) = match self.tier {
            Tier::Weekly => ("week", "that week"),
            Tier::Monthly => ("month", "that month"),
            _ => ("year", "that year"),
        };
        if self.stand_in {
            format!(
                "{noun} {period} ({}, crash-consistent: no consistent set {article})",
                self.tier.name()
            )
        } else {
            format!("{noun} {period} ({})", self.tier.name())
        }
    }
}

/// For each candidate (in the order given), the tiers that keep it. Candidates may come in any
/// order; ties in start time are broken by position (the earlier in the slice stands).
pub fn select(candidates: &[Candidate], retain: &Retain, zone: Tz) -> Vec<Vec<Standing>> {
    let mut result: Vec<Vec<Standing>> = vec![Vec::new(); candidates.len()];
    // Daily: the newest `daily` backups.
    let mut backups: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].kind == CandidateKind::Backup)
        .collect();
    backups.sort_by_key(|&i| (std::cmp::Reverse(candidates[i].started_at), i));
    for (rank, &i) in backups.iter().take(retain.daily as usize).enumerate() {
        result[i].push(Standing {
            tier: Tier::Daily,
            period: None,
            rank: rank as u32 + 1,
            stand_in: false,
        });
    }
    for tier in [Tier::Weekly, Tier::Monthly, Tier::Yearly] {
        let count = retain.count(tier);
        if count == 0 {
            continue;
        }
        for (rank, (period, (i, stand_in))) in representatives(candidates, tier, zone)
            .into_iter()
            .rev()
            .take(count as usize)
            .enumerate()
        {
            result[i].push(Standing {
                tier,
                period: Some(period),
                rank: rank as u32 + 1,
                stand_in,
            });
        }
    }
    result
}

/// Each period of `tier` that has a set, oldest first, with the candidate that stands for it
/// and whether that one is a crash-consistent stand-in.
fn representatives(
    candidates: &[Candidate],
    tier: Tier,
    zone: Tz,
) -> BTreeMap<Period, (usize, bool)> {
    // Per period: the first backup, and the first crash-consistent set.
    let mut firsts: BTreeMap<Period, (Option<usize>, Option<usize>)> = BTreeMap::new();
    let earlier = |a: Option<usize>, b: usize| match a {
        Some(a) if (candidates[a].started_at, a) <= (candidates[b].started_at, b) => Some(a),
        _ => Some(b),
    };
    for (i, c) in candidates.iter().enumerate() {
        let Some(period) = Period::of(tier, c.started_at, zone) else {
            continue;
        };
        let entry = firsts.entry(period).or_default();
        match c.kind {
            CandidateKind::Backup => entry.0 = earlier(entry.0, i),
            CandidateKind::CrashConsistent => entry.1 = earlier(entry.1, i),
            CandidateKind::InProgress => {}
        }
    }
    firsts
        .into_iter()
        .filter_map(|(period, firsts)| match firsts {
            (Some(backup), _) => Some((period, (backup, false))),
            (None, Some(crash)) => Some((period, (crash, true))),
            (None, None) => None,
        })
        .collect()
}

/// When a kept set is expected to leave each of its tiers, if a backup is taken every
/// `cadence` from now on (a calendar tier: when `count` newer periods have one, the earliest
/// being the current period if it has none yet).
pub fn leaves(
    standing: &Standing,
    retain: &Retain,
    newest_backup: Option<DateTime<Utc>>,
    newest_period: Option<Period>,
    cadence: Duration,
    now: DateTime<Utc>,
    zone: Tz,
) -> Option<DateTime<Utc>> {
    let to_go = retain.count(standing.tier).checked_sub(standing.rank)? + 1;
    match standing.period {
        None => {
            let from = newest_backup.unwrap_or(now).max(now - cadence);
            Some(from + cadence * i32::try_from(to_go).ok()?)
        }
        Some(period) => {
            let current = Period::of(period.tier, now, zone)?;
            let first_future = match newest_period {
                Some(newest) if newest >= current => newest.after(1)?,
                _ => current,
            };
            first_future.after(to_go - 1)?.start(zone)
        }
    }
}

/// The usual time between an instance's backups: the median gap between the newest ones
/// (at most 15), within an hour and 31 days; a day when fewer than two are known.
pub fn cadence(mut starts: Vec<DateTime<Utc>>) -> Duration {
    starts.sort_unstable_by(|a, b| b.cmp(a));
    starts.truncate(16);
    let mut gaps: Vec<Duration> = starts.windows(2).map(|w| w[0] - w[1]).collect();
    if gaps.is_empty() {
        return Duration::days(1);
    }
    gaps.sort_unstable();
    gaps[gaps.len() / 2].clamp(Duration::hours(1), Duration::days(31))
}

/// The shortest time between an instance's newest backups (at most 15 gaps), within an hour
/// and a day: the pace at which its sets can be expected to go at the soonest (a lock must not
/// outlast that). At most a day, whatever the gaps seen: a few backups taken after missed
/// nights say nothing of the nights to come.
pub fn fastest(mut starts: Vec<DateTime<Utc>>) -> Duration {
    starts.sort_unstable_by(|a, b| b.cmp(a));
    starts.truncate(16);
    starts
        .windows(2)
        .map(|w| w[0] - w[1])
        .min()
        .unwrap_or(Duration::days(1))
        .clamp(Duration::hours(1), Duration::days(1))
}

/// The IANA time zone named by `name` (`UTC`, `Europe/Paris`).
pub fn zone(name: &str) -> Result<Tz, String> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| format!("{name:?} is not an IANA time zone (such as UTC or Europe/Paris)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn paris() -> Tz {
        zone("Europe/Paris").unwrap_or(Tz::UTC)
    }

    #[test]
    fn periods_follow_the_schedule_s_time_zone_across_a_dst_change() {
        // 23:30 UTC on Sunday 2026-03-29 is already Monday in Paris (CEST, +2).
        let late = at("2026-03-29T23:30:00Z");
        let week = Period::of(Tier::Weekly, late, paris()).map(|p| p.to_string());
        assert_eq!(week.as_deref(), Some("2026-W14"));
        let utc_week = Period::of(Tier::Weekly, late, Tz::UTC).map(|p| p.to_string());
        assert_eq!(utc_week.as_deref(), Some("2026-W13"));
        // 23:30 UTC on 2026-12-31 is 2027 in Paris.
        let new_year = Period::of(Tier::Yearly, at("2026-12-31T23:30:00Z"), paris());
        assert_eq!(new_year.map(|p| p.to_string()).as_deref(), Some("2027"));
        // The week after the change starts at 22:00 UTC (CEST), the one before at 23:00 (CET).
        let w14 = Period::of(Tier::Weekly, late, paris());
        assert_eq!(
            w14.and_then(|p| p.start(paris())),
            Some(at("2026-03-29T22:00:00Z"))
        );
        assert_eq!(
            w14.and_then(|p| p.after(1))
                .and_then(|p| p.after(0))
                .map(|p| p.to_string())
                .as_deref(),
            Some("2026-W15")
        );
        let month = Period::of(Tier::Monthly, at("2026-03-15T12:00:00Z"), paris());
        assert_eq!(
            month.and_then(|p| p.start(paris())),
            Some(at("2026-02-28T23:00:00Z"))
        );
        assert_eq!(
            month.and_then(|p| p.after(10)).map(|p| p.to_string()),
            Some("2027-01".to_string())
        );
    }

    #[test]
    fn a_period_is_stood_for_by_its_first_backup_or_else_its_first_crash_set() {
        let c = |t: &str, kind| Candidate {
            started_at: at(t),
            kind,
        };
        use CandidateKind::*;
        let sets = [
            c("2026-11-02T01:00:00Z", CrashConsistent), // Mon W45: crash
            c("2026-11-03T01:00:00Z", Backup),          // Tue W45: first backup
            c("2026-11-04T01:00:00Z", Backup),
            c("2026-11-10T01:00:00Z", CrashConsistent), // W46: crash only
            c("2026-11-11T01:00:00Z", CrashConsistent),
            c("2026-11-16T01:00:00Z", InProgress), // W47: nothing finished
        ];
        let retain = Retain {
            daily: 1,
            weekly: 5,
            monthly: 1,
            yearly: 0,
            days: None,
        };
        let tiers = select(&sets, &retain, Tz::UTC);
        let names = |i: usize| -> Vec<(Tier, bool)> {
            tiers[i].iter().map(|s| (s.tier, s.stand_in)).collect()
        };
        assert_eq!(names(0), vec![]);
        assert_eq!(
            names(1),
            vec![(Tier::Weekly, false), (Tier::Monthly, false)]
        );
        assert_eq!(names(2), vec![(Tier::Daily, false)]);
        assert_eq!(names(3), vec![(Tier::Weekly, true)]);
        assert_eq!(names(4), vec![]);
        assert_eq!(names(5), vec![]);
        assert_eq!(
            tiers[3][0].describe(&retain),
            "week 2026-W46 (weekly, crash-consistent: no consistent set that week)"
        );
    }

    #[test]
    fn a_kept_set_is_expected_to_leave_its_tier_when_enough_newer_periods_have_a_set() {
        let now = at("2026-11-18T12:00:00Z"); // Wednesday of W47
        let retain = Retain {
            daily: 7,
            weekly: 4,
            monthly: 0,
            yearly: 0,
            days: None,
        };
        let newest = Period::of(Tier::Weekly, now, Tz::UTC);
        let weekly = Standing {
            tier: Tier::Weekly,
            period: newest,
            rank: 4,
            stand_in: false,
        };
        // The oldest of four weekly sets goes when next week has one.
        let left = leaves(
            &weekly,
            &retain,
            None,
            newest,
            Duration::days(1),
            now,
            Tz::UTC,
        );
        assert_eq!(left, Some(at("2026-11-23T00:00:00Z")));
        // The third-newest daily set, with a backup each day: four more nights.
        let daily = Standing {
            tier: Tier::Daily,
            period: None,
            rank: 3,
            stand_in: false,
        };
        let newest_backup = at("2026-11-18T01:00:00Z");
        assert_eq!(
            leaves(
                &daily,
                &retain,
                Some(newest_backup),
                newest,
                Duration::days(1),
                now,
                Tz::UTC
            ),
            Some(newest_backup + Duration::days(5))
        );
        assert_eq!(
            cadence(vec![
                at("2026-11-18T01:00:00Z"),
                at("2026-11-17T01:00:00Z"),
                at("2026-11-16T01:00:00Z"),
                at("2026-11-10T01:00:00Z"),
            ]),
            Duration::days(1)
        );
        assert!(zone("Mars/Olympus").is_err());
    }
}
