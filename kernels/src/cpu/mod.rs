//! CPU kernels: quantized matrix products ([`matmul`]) and the small per-vector ops ([`ops`]).
//! Parallel with rayon's global pool; SIMD chosen at run time inside the row kernels.

pub mod attention;
pub mod columns;
pub mod matmul;
pub mod ops;
pub mod sparse;

pub use attention::{attention, AttnShape};
pub use matmul::{matmul, matmul_group, matvec, needs_q8, Input, Product};
