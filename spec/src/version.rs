//! Spec versions. A runtime runs every spec version from
//! [`MIN_SUPPORTED_VERSION`] to [`SPEC_VERSION`]; a newer spec is refused with
//! a message that names both, never half-understood. Bump `SPEC_VERSION` when a
//! change would alter the meaning of an existing job; adding an optional field
//! with a default that keeps old behaviour does not need a bump.

/// The spec version this crate writes and understands.
pub const SPEC_VERSION: u32 = 1;
/// The oldest spec version this runtime still runs.
pub const MIN_SUPPORTED_VERSION: u32 = 1;
