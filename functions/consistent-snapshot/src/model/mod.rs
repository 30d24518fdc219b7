//! The shared vocabulary: tag keys, identifiers, the states AWS reports, and plain facts about
//! instances, snapshots, commands, restores, a run's markers and the catalog's records. Everything imports it; it
//! imports nothing of the crate but itself. No I/O, no clock.

pub mod catalog;
pub mod command;
pub mod fleet;
pub mod ids;
pub mod markers;
pub mod requests;
pub mod restore;
pub mod snapshot;
pub mod state;
pub mod tags;
