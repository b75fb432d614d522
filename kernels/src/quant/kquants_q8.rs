//! Integer dots of the k-quant formats (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) with 8-bit activations.

use super::q8::DotQ8;
use super::DType;

/// The fastest integer dot this CPU supports for `dtype`, or `None` when not a k-quant format
/// (or not written yet).
pub(super) fn best(dtype: DType) -> Option<DotQ8> {
    let _ = dtype;
    None
}
