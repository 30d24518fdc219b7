//! The shared vocabulary: tag keys, identifiers, the states AWS reports, and plain facts about
//! instances, snapshots, commands, failure causes, restores, a run's markers, the catalog's records, the readiness probe's line, the instance role's permissions and the retention tiers' calendar. Everything imports it; it
//! imports nothing of the crate but itself. No I/O, no clock.

pub mod catalog;
pub mod cause;
pub mod command;
pub mod cost;
pub mod fleet;
pub mod ids;
pub mod markers;
pub mod pace;
pub mod permissions;
pub mod probe;
pub mod requests;
pub mod restore;
pub mod snapshot;
pub mod state;
pub mod tags;
pub mod tiers;

use chrono::{DateTime, Duration, Utc};

/// For `skip_serializing_if`: a count that is zero is left out of a record or message.
pub fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// When a pass that may go on in the next invocation (deletions, restore steps) stops: 10 s
/// before the invocation's deadline (a quarter of the time left when that is less), leaving
/// time to queue the next pass and to answer.
pub fn stop_time(now: DateTime<Utc>, deadline: DateTime<Utc>) -> DateTime<Utc> {
    let left = deadline - now;
    deadline - std::cmp::min(Duration::seconds(10), left / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_stops_ten_seconds_before_the_deadline_or_at_three_quarters_of_a_short_one() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let deadline = now + Duration::seconds(120);
        assert_eq!(stop_time(now, deadline), deadline - Duration::seconds(10));
        let short = now + Duration::seconds(8);
        assert_eq!(stop_time(now, short), short - Duration::seconds(2));
    }
}
