//! The case table, as the guest image declares it, and its case instances.
//!
//! The guest's `case!` puts one `CaseDesc` per case in the image's `pvmc_cases` section; this
//! module decodes and validates that table (names present, unique and `area.what`; entries
//! inside executable segments; known areas, host checks and designed outcomes), so a broken
//! image is refused before anything runs instead of turning into hypervisor FAILs.
//!
//! A case instance is one case in one environment, identified as `<case>~<env>`. Which
//! instances exist follows from each case's environment mask; which run is decided by the
//! selection (environments, substring filters, self-tests or benchmarks).

use std::collections::HashSet;
use std::sync::Arc;

use abi::case::{CASE_DESC_SIZE, CASE_SECTION, CaseDesc, Designed, FLAG_SELFTEST, HostCheck};
use abi::env::{Area, Env};
use abi::fixed_str_read;
use runner::image::GuestImage;

/// Why a case table is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    /// The image has no case section.
    #[error("no {CASE_SECTION} section: the image declares no cases")]
    NoCaseSection,
    /// The section size is not a whole number of descriptors.
    #[error("case section size {0} is not a multiple of {CASE_DESC_SIZE}")]
    BadSectionSize(usize),
    /// A descriptor has the wrong magic or version.
    #[error("case descriptor {0} has a bad magic or version (image built by another version?)")]
    BadDescriptor(usize),
    /// A descriptor has no name.
    #[error("case descriptor {0} has an empty name")]
    EmptyName(usize),
    /// Two descriptors share a name.
    #[error("case {0} is declared twice")]
    Duplicate(String),
    /// A name is not `<area>.<what>` for its area.
    #[error("case {name} is not named {area}.<what>")]
    BadName {
        /// Name.
        name: String,
        /// Its area.
        area: &'static str,
    },
    /// A field has a value this harness does not know.
    #[error("case {name}: unknown {field} {value}")]
    Unknown {
        /// Case.
        name: String,
        /// Which field.
        field: &'static str,
        /// The raw value.
        value: u64,
    },
    /// The entry point is not code.
    #[error("case {name}: entry {entry:#x} is not inside an executable segment")]
    EntryNotExecutable {
        /// Case.
        name: String,
        /// Entry.
        entry: u64,
    },
    /// The vCPU count is out of range.
    #[error("case {name}: {vcpus} vCPUs (1 to {} allowed)", abi::layout::MAX_VCPUS)]
    BadVcpus {
        /// Case.
        name: String,
        /// Count.
        vcpus: u16,
    },
}

/// A case as declared in the guest image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestCase {
    /// `area.what`.
    pub name: String,
    /// Area.
    pub area: Area,
    /// Environment mask (`Env::bit`).
    pub envs: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Host-side behaviour.
    pub host: HostCheck,
    /// Timeout override in ms (0 = default).
    pub timeout_ms: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// The outcome a self-test is designed to produce ([`Designed::Pass`] for real cases).
    pub designed: Designed,
    /// Requirement ids.
    pub requirements: Vec<String>,
    /// One-line description.
    pub summary: String,
    /// The parameter the case function reads (one function, a table of cases).
    pub param: u64,
    /// Guest VA of the case function.
    pub entry: u64,
}

impl GuestCase {
    /// Whether this is a self-test of the suite.
    pub fn is_selftest(&self) -> bool {
        self.flags & FLAG_SELFTEST != 0
    }

    /// Whether the case applies to `env`.
    pub fn applies_to(&self, env: Env) -> bool {
        self.envs & env.bit() != 0
    }
}

fn decode(index: usize, raw: &[u8], image: &GuestImage) -> Result<GuestCase, CatalogError> {
    let d = CaseDesc::parse(raw).ok_or(CatalogError::BadDescriptor(index))?;
    let name = fixed_str_read(&d.name).to_string();
    if name.is_empty() {
        return Err(CatalogError::EmptyName(index));
    }
    let unknown = |field, value| CatalogError::Unknown {
        name: name.clone(),
        field,
        value,
    };
    let area = Area::from_raw(d.area).ok_or_else(|| unknown("area", u64::from(d.area)))?;
    let host =
        HostCheck::from_raw(d.host).ok_or_else(|| unknown("host check", u64::from(d.host)))?;
    let designed = Designed::from_raw(d.designed)
        .ok_or_else(|| unknown("designed outcome", u64::from(d.designed)))?;
    if !name.starts_with(&format!("{}.", area.name())) || name.len() <= area.name().len() + 1 {
        return Err(CatalogError::BadName {
            name,
            area: area.name(),
        });
    }
    if !image.is_executable(d.entry) {
        return Err(CatalogError::EntryNotExecutable {
            name,
            entry: d.entry,
        });
    }
    if d.vcpus == 0 || u32::from(d.vcpus) > abi::layout::MAX_VCPUS {
        return Err(CatalogError::BadVcpus {
            name,
            vcpus: d.vcpus,
        });
    }
    Ok(GuestCase {
        area,
        host,
        envs: d.envs,
        flags: d.flags,
        timeout_ms: d.timeout_ms,
        vcpus: u32::from(d.vcpus),
        designed,
        requirements: fixed_str_read(&d.requirements)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        summary: fixed_str_read(&d.summary).to_string(),
        param: d.param,
        entry: d.entry,
        name,
    })
}

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

/// Which cases a run takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Suite {
    /// The cases flagged `smoke`: a fast, broad sample (under 5 s here).
    Smoke,
    /// Every case but the ones flagged `slow`.
    #[default]
    Default,
    /// Every case.
    Full,
}

impl Suite {
    /// Every suite.
    pub const ALL: [Suite; 3] = [Suite::Smoke, Suite::Default, Suite::Full];

    /// Name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::Smoke => "smoke",
            Suite::Default => "default",
            Suite::Full => "full",
        }
    }

    /// Parses [`Suite::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Whether a case with `flags` belongs to the suite.
    pub const fn takes(self, flags: u32) -> bool {
        match self {
            Suite::Smoke => flags & abi::case::FLAG_SMOKE != 0,
            Suite::Default => flags & abi::case::FLAG_SLOW == 0,
            Suite::Full => true,
        }
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
    /// The suite (self-tests and benchmarks are not in any suite's filter).
    pub suite: Suite,
    /// Take opt-in cases (`FLAG_OPT_IN`, such as VMCALL on a nested host) that a filter
    /// names; without it they never run.
    pub opt_in: bool,
}

impl Selection {
    /// The environments the guest implements (`abi::env::Env::guest_support`), the default.
    pub fn default_envs() -> Vec<Env> {
        Env::implemented().collect()
    }

    /// `envs` in first-seen order with duplicates merged.
    pub fn dedup_envs(envs: impl IntoIterator<Item = Env>) -> Vec<Env> {
        let mut seen = HashSet::new();
        envs.into_iter().filter(|e| seen.insert(*e)).collect()
    }
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            envs: Self::default_envs(),
            filters: Vec::new(),
            selftest: false,
            bench: false,
            suite: Suite::Default,
            opt_in: false,
        }
    }
}

/// The case table of a guest image.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// The image (segments are loaded into every VM).
    pub image: Arc<GuestImage>,
    /// Its cases, by area, then name.
    pub cases: Vec<Arc<GuestCase>>,
}

impl Catalog {
    /// Decodes and validates the case table of `image`. Cases are ordered by area, then name
    /// (the section order is the linker's, which is not meaningful).
    pub fn new(image: GuestImage) -> Result<Self, CatalogError> {
        let raw = image
            .section(CASE_SECTION)
            .ok_or(CatalogError::NoCaseSection)?;
        if raw.len() % CASE_DESC_SIZE != 0 {
            return Err(CatalogError::BadSectionSize(raw.len()));
        }
        let mut cases = Vec::new();
        let mut names = HashSet::new();
        for (i, chunk) in raw.chunks_exact(CASE_DESC_SIZE).enumerate() {
            let c = decode(i, chunk, &image)?;
            if !names.insert(c.name.clone()) {
                return Err(CatalogError::Duplicate(c.name));
            }
            cases.push(Arc::new(c));
        }
        cases.sort_by(|a, b| (a.area.rank(), &a.name).cmp(&(b.area.rank(), &b.name)));
        Ok(Self {
            image: Arc::new(image),
            cases,
        })
    }

    /// The selected instances, in table order, environments in the selection's order.
    pub fn instances(&self, sel: &Selection) -> Vec<Instance> {
        let mut out = Vec::new();
        for case in &self.cases {
            if (case.is_selftest() && !sel.selftest) || (case.area == Area::Bench) != sel.bench {
                continue;
            }
            if !case.is_selftest() && !sel.bench && !sel.suite.takes(case.flags) {
                continue;
            }
            let opt_in = case.flags & abi::case::FLAG_OPT_IN != 0;
            if opt_in && (!sel.opt_in || sel.filters.is_empty()) {
                continue;
            }
            for &env in &Selection::dedup_envs(sel.envs.iter().copied()) {
                if !case.applies_to(env) {
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

    /// Every instance the image declares, in every environment, self-tests and benchmarks
    /// included: what an expectations file may name.
    pub fn all_ids(&self) -> HashSet<String> {
        let mut ids = HashSet::new();
        for case in &self.cases {
            for env in Env::ALL.into_iter().filter(|&e| case.applies_to(e)) {
                ids.insert(format!("{}~{}", case.name, env.name()));
            }
        }
        ids
    }

    /// The first case with host check `host` (for the host-measured benchmark cases).
    pub fn case_with_host_check(&self, host: HostCheck) -> Option<&Arc<GuestCase>> {
        self.cases.iter().find(|c| c.host == host)
    }
}
