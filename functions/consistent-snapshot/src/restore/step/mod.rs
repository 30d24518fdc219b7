//! The restore use cases: a restore (`volumes` or `replace`) and a verification (a restore test).

pub mod restore;
pub mod verify;
