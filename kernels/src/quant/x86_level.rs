//! The x86 instruction-set levels the integer-dot kernels are built for, best first, and the best
//! one this CPU has (detected once). Each kernel family maps a level to its own kernels.

use std::arch::is_x86_feature_detected as has;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Level {
    Avx512Vnni,
    AvxVnni,
    Avx2,
}

impl Level {
    pub(super) const ALL: [Level; 3] = [Level::Avx512Vnni, Level::AvxVnni, Level::Avx2];

    pub(super) fn detected(self) -> bool {
        let avx2 = has!("avx2") && has!("fma") && has!("f16c");
        avx2 && match self {
            Level::Avx512Vnni => has!("avx512vnni") && has!("avx512vl"),
            Level::AvxVnni => has!("avxvnni"),
            Level::Avx2 => true,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Level::Avx512Vnni => "avx512vnni",
            Level::AvxVnni => "avxvnni",
            Level::Avx2 => "avx2",
        }
    }
}

/// The best level this CPU has, detected once.
pub(super) fn best_level() -> Option<Level> {
    static BEST: OnceLock<Option<Level>> = OnceLock::new();
    *BEST.get_or_init(|| Level::ALL.into_iter().find(|l| l.detected()))
}
