//! The EBS direct APIs, for the cost estimate: how many blocks of a snapshot are written
//! (ListSnapshotBlocks) and how many differ between two snapshots of one lineage
//! (ListChangedBlocks), 10,000 a page. AWS allows about 50 of these calls a second per account:
//! each call here waits its turn (`PACE`), so one cost run stays well under it.

use std::time::Duration;

use crate::aws::aws;
use crate::error::Error;
use crate::model::cost::Pair;

/// The least time between two calls of one cost run (AWS: about 50 a second per account).
const PACE: Duration = Duration::from_millis(25);
const PAGE: i32 = 10_000;
/// The most pages of one count (10,000 blocks of 512 KiB a page: 64 TiB, EBS's largest volume).
const PAGES_MAX: usize = 14;

/// What a count found: the blocks, and their size (512 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub blocks: u64,
    pub block_size: u64,
    /// Calls made.
    pub calls: usize,
}

/// Why a pair could not be counted for good (not a transient error).
pub fn uncountable(err: &Error) -> bool {
    matches!(
        err.aws_code(),
        Some(
            "ValidationException"
                | "ResourceNotFoundException"
                | "AccessDeniedException"
                | "TooManyPages"
        )
    )
}

/// Counts the blocks of `pair`: every block written of its second snapshot, or those that
/// differ from its first.
pub async fn count(ebs: &aws_sdk_ebs::Client, pair: &Pair) -> Result<Counted, Error> {
    let subject = match &pair.first {
        Some(first) => format!("blocks changed from {first} to {}", pair.second),
        None => format!("blocks of {}", pair.second),
    };
    let mut counted = Counted {
        blocks: 0,
        block_size: 512 * 1024,
        calls: 0,
    };
    let mut token: Option<String> = None;
    for _ in 0..PAGES_MAX {
        tokio::time::sleep(PACE).await;
        counted.calls += 1;
        let (blocks, size, next) = match &pair.first {
            Some(first) => {
                let page = ebs
                    .list_changed_blocks()
                    .first_snapshot_id(first)
                    .second_snapshot_id(&pair.second)
                    .max_results(PAGE)
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| aws("ListChangedBlocks", subject.as_str(), e))?;
                (
                    page.changed_blocks().len(),
                    page.block_size(),
                    page.next_token().map(str::to_string),
                )
            }
            None => {
                let page = ebs
                    .list_snapshot_blocks()
                    .snapshot_id(&pair.second)
                    .max_results(PAGE)
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| aws("ListSnapshotBlocks", subject.as_str(), e))?;
                (
                    page.blocks().len(),
                    page.block_size(),
                    page.next_token().map(str::to_string),
                )
            }
        };
        counted.blocks += blocks as u64;
        if let Some(size) = size.and_then(|s| u64::try_from(s).ok()) {
            counted.block_size = size;
        }
        match next.filter(|t| !t.is_empty()) {
            Some(next) => token = Some(next),
            None => return Ok(counted),
        }
    }
    Err(Error::Aws {
        call: "ListChangedBlocks",
        subject,
        code: "TooManyPages".into(),
        message: format!("more than {PAGES_MAX} pages of blocks: not counted"),
    })
}
