//! The suite checking itself: each case must produce the one outcome it declares with
//! `Spec::selftest` (FAIL, CRASH, SKIP, ERROR, and FAIL outranking a later ERROR). They run
//! only with `--selftest` and in the suite's own tests, which compare each with its design.

use guest_lib::abi::case::Designed;
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
    .selftest(Designed::Fail)
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
    .selftest(Designed::Crash)
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
    .selftest(Designed::Skip)
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
    .selftest(Designed::Error)
);

fn fail_outranks_error() {
    check_eq!(2u64, 3u64, "deliberate failure first");
    error!("deliberate error after it");
}
case!(
    fail_outranks_error,
    Spec::new(
        "selftest.fail_outranks_error",
        Area::Selftest,
        "a failed check outranks a later error! (FAIL, both messages kept)"
    )
    .selftest(Designed::Fail)
);

fn checks_nothing() {}
case!(
    checks_nothing,
    Spec::new(
        "selftest.checks_nothing",
        Area::Selftest,
        "a case that returns without a single check is ERROR, not PASS"
    )
    .selftest(Designed::Error)
);
