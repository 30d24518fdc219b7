//! Retention in every region the deployment uses: `plan` decides, `step` deletes.

pub mod plan;
pub mod step;
