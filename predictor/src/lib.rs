//! Ember's activation-sparsity pipeline: the statistics the profiler gathers while the model
//! runs over a calibration corpus ([`stats`]), the versioned profile file ([`profile`]), and the
//! per-layer low-rank activation predictors ([`lowrank`]). Nothing here runs a model: the engine
//! drives the model and feeds these types.

pub mod error;
pub mod lowrank;
pub mod profile;
pub mod stats;
mod w2;

pub use error::{PredictorError, Result};
pub use profile::{Criterion, Profile};
