//! The case table, as the guest image declares it, and its case instances.
//!
//! A case instance is one case in one environment, identified as `<case>~<env>` (the XTF
//! convention). Which instances exist follows from each case's environment mask; which run is
//! decided by the selection (environments, substring filter, self-tests).

use std::sync::Arc;

use abi::case::FLAG_SELFTEST;
use abi::env::{Area, Env};
use runner::image::{GuestCase, GuestImage};

/// A case instance.
#[derive(Clone, Debug)]
pub struct Instance {
    /// The case.
    pub case: Arc<GuestCase>,
    /// The environment.
    pub env: Env,
}

impl Instance {
    /// `<case>~<env>`.
    pub fn id(&self) -> String {
        format!("{}~{}", self.case.name, self.env.name())
    }
}

/// Which instances to run.
#[derive(Clone, Debug)]
pub struct Selection {
    /// Environments (an instance runs only if its case applies to the environment).
    pub envs: Vec<Env>,
    /// Substrings; an instance is kept if its id contains any of them (empty: all).
    pub filters: Vec<String>,
    /// Include self-test cases (and only those are flagged so).
    pub selftest: bool,
    /// Select the benchmarks (area `bench`) instead of the conformance cases.
    pub bench: bool,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            envs: vec![Env::Hvm64, Env::PvLocal],
            filters: Vec::new(),
            selftest: false,
            bench: false,
        }
    }
}

/// The case table of a guest image.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// The image (segments are loaded into every VM).
    pub image: Arc<GuestImage>,
    /// Its cases.
    pub cases: Vec<Arc<GuestCase>>,
}

impl Catalog {
    /// Wraps a parsed image; cases are ordered by area, then name (the section order is the
    /// linker's, which is not meaningful).
    pub fn new(image: GuestImage) -> Self {
        let mut cases: Vec<_> = image.cases.iter().cloned().map(Arc::new).collect();
        cases.sort_by(|a, b| (a.area, &a.name).cmp(&(b.area, &b.name)));
        Self {
            image: Arc::new(image),
            cases,
        }
    }

    /// The selected instances, in table order, environments in the selection's order.
    pub fn instances(&self, sel: &Selection) -> Vec<Instance> {
        let mut out = Vec::new();
        for case in &self.cases {
            let is_selftest = case.flags & FLAG_SELFTEST != 0;
            if (is_selftest && !sel.selftest) || (case.area == Area::Bench) != sel.bench {
                continue;
            }
            for &env in &sel.envs {
                if case.envs & env.bit() == 0 {
                    continue;
                }
                let inst = Instance {
                    case: Arc::clone(case),
                    env,
                };
                let id = inst.id();
                if sel.filters.is_empty() || sel.filters.iter().any(|f| id.contains(f.as_str())) {
                    out.push(inst);
                }
            }
        }
        out
    }
}
