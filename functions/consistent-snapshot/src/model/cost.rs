//! What each kept snapshot costs, from block counts of the EBS direct APIs, as AWS's archiving
//! guide computes it: along one volume's lineage (its snapshots in one region, oldest first),
//! a snapshot is billed for the blocks it changed since the one before it (the oldest for every
//! block written), and deleting or archiving it frees only the blocks no neighbour shares:
//! those it changed that the next one changed again. With `Δ(a, b)` the blocks that differ
//! between two snapshots (written anew each time, so a block that differs between `prev` and
//! `next` differs between `prev` and `this` or between `this` and `next`):
//!
//! - incremental(this) = Δ(prev, this), or every block for the oldest;
//! - unique(this) = Δ(prev, this) + Δ(this, next) − Δ(prev, next), or incremental for the newest.
//!
//! An archived snapshot is a full copy, billed at the archive price for every block; the direct
//! APIs cannot read it, so its size is the one a cost run counted before it was archived (the
//! counts are kept), else the full size of the nearest snapshot of its lineage that can be
//! read, marked estimated.
//! Everything here is pure: the counts come in, the bytes and prices go out.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One snapshot of a lineage, as the cost estimate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageSnapshot {
    pub snapshot_id: String,
    pub run_id: String,
    pub start_time: DateTime<Utc>,
    pub archived: bool,
}

/// The pair of snapshots a count is of: `first` none for every block of `second`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pair {
    pub first: Option<String>,
    pub second: String,
}

impl Pair {
    pub fn full(snapshot: &str) -> Self {
        Pair {
            first: None,
            second: snapshot.to_string(),
        }
    }

    pub fn between(first: &str, second: &str) -> Self {
        Pair {
            first: Some(first.to_string()),
            second: second.to_string(),
        }
    }
}

/// One count, as the catalog keeps it: a later cost run counts only what is new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostCount {
    pub pair: Pair,
    pub blocks: u64,
    pub block_size: u64,
}

/// What one instance's kept sets cost, as the last cost run found it; the fleet report shows
/// it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceCost {
    pub instance_id: String,
    pub computed_at: DateTime<Utc>,
    /// Billed in the standard tier, every region.
    pub standard_bytes: u64,
    /// Billed in the archive tier (full sizes), every region.
    pub archive_bytes: u64,
    pub monthly_cost: f64,
    /// Every kept snapshot was counted (else the next cost run goes on).
    pub complete: bool,
}

/// Prices per GB-month (decimal GB, as AWS bills snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    pub standard: f64,
    pub archive: f64,
}

/// What one snapshot costs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotCost {
    pub snapshot_id: String,
    pub run_id: String,
    /// What it is billed for in the standard tier (0 when archived).
    pub billed_bytes: u64,
    /// What deleting (or archiving) it would free.
    pub unique_bytes: u64,
    pub archived: bool,
    /// Its size was not counted by the direct APIs (archived before any cost run): that of its
    /// nearest readable neighbour.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    pub monthly_cost: f64,
}

/// The counts a lineage needs, oldest first, among its snapshots the direct APIs can read (the
/// archived ones left out): every block of each (the oldest's bill, the size an archived
/// snapshot keeps once archived, and an archived neighbour's estimate), each one against the one
/// before it, and each one's neighbours against each other.
pub fn pairs_needed(lineage: &[LineageSnapshot]) -> Vec<Pair> {
    let readable: Vec<&LineageSnapshot> = lineage.iter().filter(|s| !s.archived).collect();
    let mut pairs = Vec::new();
    for (k, s) in readable.iter().enumerate() {
        pairs.push(Pair::full(&s.snapshot_id));
        if k > 0 {
            pairs.push(Pair::between(&readable[k - 1].snapshot_id, &s.snapshot_id));
        }
        if k > 0 && k + 1 < readable.len() {
            pairs.push(Pair::between(
                &readable[k - 1].snapshot_id,
                &readable[k + 1].snapshot_id,
            ));
        }
    }
    pairs
}

/// Each snapshot's cost, from `counts` (blocks per pair) of `pairs_needed`; a snapshot whose
/// counts are missing is left out (the next cost run counts it).
pub fn estimate(
    lineage: &[LineageSnapshot],
    counts: &BTreeMap<Pair, u64>,
    block_size: u64,
    prices: Prices,
) -> Vec<SnapshotCost> {
    const GB: f64 = 1e9;
    let readable: Vec<&LineageSnapshot> = lineage.iter().filter(|s| !s.archived).collect();
    let count = |pair: Pair| counts.get(&pair).copied();
    let mut costs = Vec::new();
    for (k, s) in readable.iter().enumerate() {
        let incremental = if k == 0 {
            count(Pair::full(&s.snapshot_id))
        } else {
            count(Pair::between(&readable[k - 1].snapshot_id, &s.snapshot_id))
        };
        let unique = match (k.checked_sub(1), readable.get(k + 1)) {
            // Alone, or the newest: nothing newer shares what it wrote.
            (_, None) => incremental,
            // The oldest of several: what the next one changed again of it.
            (None, Some(next)) => count(Pair::between(&s.snapshot_id, &next.snapshot_id)),
            (Some(p), Some(next)) => {
                let prev = &readable[p].snapshot_id;
                match (
                    incremental,
                    count(Pair::between(&s.snapshot_id, &next.snapshot_id)),
                    count(Pair::between(prev, &next.snapshot_id)),
                ) {
                    (Some(a), Some(b), Some(c)) => Some((a + b).saturating_sub(c)),
                    _ => None,
                }
            }
        };
        let (Some(incremental), Some(unique)) = (incremental, unique) else {
            continue;
        };
        let billed = incremental * block_size;
        costs.push(SnapshotCost {
            snapshot_id: s.snapshot_id.clone(),
            run_id: s.run_id.clone(),
            billed_bytes: billed,
            unique_bytes: unique * block_size,
            archived: false,
            estimated: false,
            monthly_cost: billed as f64 / GB * prices.standard,
        });
    }
    for (k, s) in lineage.iter().enumerate().filter(|(_, s)| s.archived) {
        let (full, estimated) = match count(Pair::full(&s.snapshot_id)) {
            Some(full) => (Some(full * block_size), false),
            None => {
                // The nearest readable snapshot of the lineage, by position.
                let nearest = lineage
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| !n.archived)
                    .min_by_key(|(j, _)| j.abs_diff(k))
                    .and_then(|(_, n)| count(Pair::full(&n.snapshot_id)));
                (nearest.map(|n| n * block_size), true)
            }
        };
        let Some(full) = full else { continue };
        costs.push(SnapshotCost {
            snapshot_id: s.snapshot_id.clone(),
            run_id: s.run_id.clone(),
            billed_bytes: 0,
            unique_bytes: full,
            archived: true,
            estimated,
            monthly_cost: full as f64 / GB * prices.archive,
        });
    }
    costs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage(archived: &[bool]) -> Vec<LineageSnapshot> {
        archived
            .iter()
            .enumerate()
            .map(|(k, a)| LineageSnapshot {
                snapshot_id: format!("snap-{k}"),
                run_id: format!("run-{k}"),
                start_time: DateTime::from_timestamp(1_800_000_000 + 86_400 * k as i64, 0)
                    .unwrap_or_default(),
                archived: *a,
            })
            .collect()
    }

    /// Blocks as sets of (index, version): what each snapshot holds, so every count follows.
    fn counts_of(blocks: &[Vec<(u32, u32)>], names: &[&str]) -> BTreeMap<Pair, u64> {
        let mut counts = BTreeMap::new();
        for (i, held) in blocks.iter().enumerate() {
            counts.insert(Pair::full(names[i]), held.len() as u64);
            for (j, other) in blocks.iter().enumerate().filter(|(j, _)| *j != i) {
                let differ = held.iter().filter(|b| !other.contains(b)).count() as u64;
                counts.insert(Pair::between(names[j], names[i]), differ);
            }
        }
        counts
    }

    #[test]
    fn each_snapshot_is_billed_for_what_it_changed_and_frees_what_no_neighbour_shares() {
        // Four blocks written once; block 1 rewritten at every snapshot, block 2 at the second
        // only, block 3 at the third only.
        let blocks = vec![
            vec![(0, 0), (1, 0), (2, 0), (3, 0)],
            vec![(0, 0), (1, 1), (2, 1), (3, 0)],
            vec![(0, 0), (1, 2), (2, 1), (3, 1)],
        ];
        let names = ["snap-0", "snap-1", "snap-2"];
        let line = lineage(&[false, false, false]);
        let needed = pairs_needed(&line);
        let all = counts_of(&blocks, &names);
        let counts: BTreeMap<Pair, u64> = needed
            .iter()
            .map(|p| (p.clone(), all.get(p).copied().unwrap_or(0)))
            .collect();
        let prices = Prices {
            standard: 0.05,
            archive: 0.0125,
        };
        let costs = estimate(&line, &counts, 1_000_000_000, prices);
        let got: Vec<(u64, u64)> = costs
            .iter()
            .map(|c| {
                (
                    c.billed_bytes / 1_000_000_000,
                    c.unique_bytes / 1_000_000_000,
                )
            })
            .collect();
        // snap-0: billed 4, frees blocks 1 and 2 (rewritten next); snap-1: billed 2 (1, 2),
        // frees block 1 only (2 stays in snap-2); snap-2: billed 2 (1, 3), frees both.
        assert_eq!(got, vec![(4, 2), (2, 1), (2, 2)]);
        assert!((costs[0].monthly_cost - 0.2).abs() < 1e-9);
        // Every block billed once: what the lineage holds in all.
        let distinct: std::collections::BTreeSet<&(u32, u32)> = blocks.iter().flatten().collect();
        assert_eq!(
            costs.iter().map(|c| c.billed_bytes).sum::<u64>(),
            distinct.len() as u64 * 1_000_000_000
        );
    }

    #[test]
    fn an_archived_snapshot_costs_its_full_size_at_the_archive_price() {
        let line = lineage(&[true, false, false]);
        let needed = pairs_needed(&line);
        assert!(needed
            .iter()
            .all(|p| p.second != "snap-0" && p.first.as_deref() != Some("snap-0")));
        let counts: BTreeMap<Pair, u64> = needed.iter().map(|p| (p.clone(), 3)).collect();
        let prices = Prices {
            standard: 0.05,
            archive: 0.0125,
        };
        let costs = estimate(&line, &counts, 1_000_000_000, prices);
        let archived = costs.iter().find(|c| c.archived).expect("the archived one");
        assert_eq!(
            (archived.unique_bytes, archived.estimated),
            (3_000_000_000, true)
        );
        assert!((archived.monthly_cost - 3.0 * 0.0125).abs() < 1e-9);
        // Counted before it was archived: no estimate.
        let mut known = counts.clone();
        known.insert(Pair::full("snap-0"), 5);
        let costs = estimate(&line, &known, 1_000_000_000, prices);
        let archived = costs.iter().find(|c| c.archived).expect("the archived one");
        assert_eq!(
            (archived.unique_bytes, archived.estimated),
            (5_000_000_000, false)
        );
    }
}
