//! What the model does not play yet: cases whose rules it has no counterpart for. Their
//! instances SKIP with the reason instead of running against a host that would answer
//! wrongly; each entry is a model limitation, not a host finding, and leaves this list once
//! the model implements the rule (the run then shows whether the case passes). docs/model.md
//! lists the same gaps. The list is empty today: the last two (LTR of a guest TSS, CR0.WP=0)
//! left it once their host behaviour was researched (docs/research/pvm-cr0-wp-ltr.md).

/// `(case name, why the model cannot judge it)`.
pub const GAPS: &[(&str, &str)] = &[];

/// Why the model cannot judge case `name`, if it cannot.
pub fn gap(name: &str) -> Option<&'static str> {
    gap_in(GAPS, name)
}

fn gap_in(gaps: &[(&str, &'static str)], name: &str) -> Option<&'static str> {
    gaps.iter().find(|(n, _)| *n == name).map(|&(_, why)| why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_exactly() {
        let gaps = [("priv.cpl0.system_insns", "why")];
        assert_eq!(gap_in(&gaps, "priv.cpl0.system_insns"), Some("why"));
        assert!(gap_in(&gaps, "priv.cpl0.system_insnsx").is_none());
        assert!(gap_in(&gaps, "priv.cpl0").is_none());
        assert!(gap_in(&gaps, "io.mmio.movzx8").is_none());
    }
}
