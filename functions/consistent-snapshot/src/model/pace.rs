//! Pacing a loop of steps of unknown length against a stop time.

use chrono::{DateTime, Duration, Utc};

/// A loop's pace: a step is started only while twice the longest step so far still fits
/// before the stop time, so that the last one started ends before it, with time left for
/// whatever the loop does when it stops (queue its next pass, answer).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    stop_at: DateTime<Utc>,
    longest: Duration,
}

impl Pace {
    pub fn until(stop_at: DateTime<Utc>) -> Self {
        Pace {
            stop_at,
            longest: Duration::zero(),
        }
    }

    /// Whether a step started at `now` may be expected to end in time.
    pub fn fits(&self, now: DateTime<Utc>) -> bool {
        now + self.longest * 2 < self.stop_at
    }

    /// Counts a step that ran from `began` to `ended`.
    pub fn took(&mut self, began: DateTime<Utc>, ended: DateTime<Utc>) {
        self.longest = self.longest.max(ended - began);
    }

    /// Takes in the steps another loop ran towards the same stop time (its longest).
    pub fn absorb(&mut self, other: &Pace) {
        self.longest = self.longest.max(other.longest);
    }

    pub fn longest(&self) -> Duration {
        self.longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_starts_only_while_two_of_the_longest_fit() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let mut pace = Pace::until(now + Duration::seconds(10));
        assert!(pace.fits(now));
        assert!(!pace.fits(now + Duration::seconds(10)));
        pace.took(now, now + Duration::seconds(2));
        // 4 s fit in the 6 s left, not in the 3 s left.
        assert!(pace.fits(now + Duration::seconds(4)));
        assert!(!pace.fits(now + Duration::seconds(7)));
        // A shorter step does not shorten the longest.
        pace.took(now, now + Duration::milliseconds(100));
        assert_eq!(pace.longest(), Duration::seconds(2));
        // Loops run beside each other: the longest of either.
        let mut other = Pace::until(now + Duration::seconds(10));
        other.took(now, now + Duration::seconds(3));
        pace.absorb(&other);
        assert_eq!(pace.longest(), Duration::seconds(3));
        other.absorb(&Pace::until(now));
        assert_eq!(other.longest(), Duration::seconds(3));
    }
}
