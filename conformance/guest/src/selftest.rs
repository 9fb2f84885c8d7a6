//! The suite checking itself: each case must produce one specific outcome (FAIL, CRASH,
//! SKIP, ERROR). They run only with `--selftest` and in the suite's own tests.

use guest_lib::abi::case::FLAG_SELFTEST;
use guest_lib::abi::env::Area;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::{case, check_eq, error, skip};

fn check_fails() {
    check_eq!(1u64 + 1, 3u64, "deliberate failure");
}
case!(
    check_fails,
    Spec::new(
        "selftest.check_fails",
        Area::Selftest,
        "a failed check_eq! is reported as FAIL with both values"
    )
    .flags(FLAG_SELFTEST)
);

fn never_reports() {
    loop {
        instr::spin(1 << 20);
    }
}
case!(
    never_reports,
    Spec::new(
        "selftest.never_reports",
        Area::Selftest,
        "a guest that never reports ends as CRASH (timeout)"
    )
    .flags(FLAG_SELFTEST)
    .timeout_ms(300)
);

fn skips() {
    skip!("deliberate skip");
}
case!(
    skips,
    Spec::new(
        "selftest.skips",
        Area::Selftest,
        "skip! ends the case as SKIP"
    )
    .flags(FLAG_SELFTEST)
);

fn errors() {
    error!("deliberate error");
}
case!(
    errors,
    Spec::new(
        "selftest.errors",
        Area::Selftest,
        "error! ends the case as ERROR"
    )
    .flags(FLAG_SELFTEST)
);
