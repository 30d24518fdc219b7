//! The end-to-end tests, as one test binary: each module is one capability, driven through the
//! real handler with real event payloads against the local emulator (`harness::World`), and
//! checked the way an operator would. One binary links the SDK once instead of once per file.
//!
//! `cargo test -p harness --test e2e -- chaos` runs one module.

mod chaos;
mod completion_events;
mod copy_limit;
mod copy_retention;
mod cost;
mod event_shapes;
mod fault_matrix;
mod faults;
mod fleet_scale;
mod hostile;
mod idempotency;
mod locks;
mod operations;
mod payload_fuzz;
mod restore;
mod retention_scale;
mod run_outcomes;
mod template_guarantees;
mod tiers;
mod upgrade;
mod vault;
mod vss_cases;
