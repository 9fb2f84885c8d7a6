//! What the model does not play yet: cases whose rules it has no counterpart for. Their
//! instances SKIP with the reason instead of running against a host that would answer
//! wrongly; each entry is a model limitation, not a host finding, and leaves this list once
//! the model implements the rule (the run then shows whether the case passes). docs/model.md
//! lists the same gaps.

/// `(case name, why the model cannot judge it)`.
pub const GAPS: &[(&str, &str)] = &[
    (
        "priv.cpl0.system_insns",
        "the model does not model the guest's TSS (LTR of a busy TSS)",
    ),
    (
        "paging.wp0_supervisor_write",
        "the model always enforces CR0.WP for the guest kernel",
    ),
];

/// Why the model cannot judge case `name`, if it cannot.
pub fn gap(name: &str) -> Option<&'static str> {
    GAPS.iter().find(|(n, _)| *n == name).map(|&(_, why)| why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_exactly() {
        assert!(gap("priv.cpl0.system_insns").is_some());
        assert!(gap("priv.cpl0.system_insnsx").is_none());
        assert!(gap("priv.cpl0").is_none());
        assert!(gap("io.mmio.movzx8").is_none());
    }
}
