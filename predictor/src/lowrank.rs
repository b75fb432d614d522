//! placeholder, replaced by the low-rank predictor
