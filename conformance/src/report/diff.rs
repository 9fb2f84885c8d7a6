//! The instances whose outcome differs between two reports (two targets, two commits, two
//! hosts, a model with and without a fault switch): `cargo xtask diff`.

use crate::outcome::Outcome;
use crate::report::Report;

/// One instance whose outcome is not the same in both reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// `<case>~<env>`.
    pub id: String,
    /// Its outcome and detail in the first report (`None`: not there).
    pub a: Option<(Outcome, String)>,
    /// Its outcome and detail in the second report (`None`: not there).
    pub b: Option<(Outcome, String)>,
}

/// The instances whose outcome differs between `a` and `b`, or that only one of them has: in
/// `a`'s order, then those only `b` has in `b`'s order.
pub fn diff(a: &Report, b: &Report) -> Vec<Difference> {
    let find = |r: &Report, id: &str| {
        r.cases
            .iter()
            .find(|c| c.id == id)
            .map(|c| (c.outcome, c.detail.clone()))
    };
    let mut out: Vec<Difference> = a
        .cases
        .iter()
        .filter_map(|ca| {
            let other = find(b, &ca.id);
            let same = other.as_ref().is_some_and(|(o, _)| *o == ca.outcome);
            (!same).then(|| Difference {
                id: ca.id.clone(),
                a: Some((ca.outcome, ca.detail.clone())),
                b: other,
            })
        })
        .collect();
    out.extend(
        b.cases
            .iter()
            .filter(|cb| !a.cases.iter().any(|ca| ca.id == cb.id))
            .map(|cb| Difference {
                id: cb.id.clone(),
                a: None,
                b: Some((cb.outcome, cb.detail.clone())),
            }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::{result, run_info};
    use crate::report::{RunState, SCHEMA, Summary};

    fn report(cases: Vec<crate::result::CaseResult>) -> Report {
        Report {
            schema: SCHEMA.into(),
            run: run_info(),
            state: RunState::Complete,
            interrupted: false,
            expectations: "built-in".into(),
            summary: Summary::of(&cases, cases.len(), 1),
            cases,
            host_health: None,
        }
    }

    #[test]
    fn only_changed_and_one_sided_instances_are_listed() {
        let a = report(vec![
            result("x~hvm64", "hvm64", Outcome::Pass, ""),
            result("y~hvm64", "hvm64", Outcome::Pass, ""),
            result("z~hvm64", "hvm64", Outcome::Fail, "bad"),
        ]);
        let b = report(vec![
            result(
                "x~hvm64",
                "hvm64",
                Outcome::Pass,
                "other detail, same outcome",
            ),
            result("y~hvm64", "hvm64", Outcome::Crash, "boom"),
            result("w~hvm64", "hvm64", Outcome::Skip, "new"),
        ]);
        let d = diff(&a, &b);
        let ids: Vec<&str> = d.iter().map(|x| x.id.as_str()).collect();
        assert_eq!(ids, ["y~hvm64", "z~hvm64", "w~hvm64"]);
        assert_eq!(d[0].b, Some((Outcome::Crash, "boom".into())));
        assert_eq!(d[1].b, None);
        assert_eq!(d[2].a, None);
        assert!(diff(&a, &a).is_empty());
    }
}
