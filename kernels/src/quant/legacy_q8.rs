//! Integer dots of the legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with 8-bit activations.

use super::q8::DotQ8;
use super::DType;

/// The fastest integer dot this CPU supports for `dtype`, or `None` when not a legacy format
/// (or not written yet).
pub(super) fn best(dtype: DType) -> Option<DotQ8> {
    let _ = dtype;
    None
}
