//! Ember's activation-sparsity pipeline (profiler, threshold calibration, hot-set ranking,
//! predictor training). Its work is tracked by the sparsity issue; nothing here yet.
