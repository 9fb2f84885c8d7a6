//! The requirements catalog (`conformance/requirements.toml`): one entry per requirement with
//! its id, statement, source, level (MUST/SHOULD/MAY) and the environments it applies to.
//! Cases name the ids they check; [`Requirements::check`] refuses a case table that names an id
//! the catalog lacks, so the ids stay a vocabulary rather than free strings. [`coverage`] maps
//! every requirement to the instances that check it and their outcomes.

use std::collections::BTreeMap;

use abi::env::Env;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::catalog::Catalog;
use crate::outcome::Outcome;
use crate::report::Report;

/// The built-in catalog.
pub const BUILTIN: &str = include_str!("../requirements.toml");

/// How binding a requirement is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// A host that breaks it is not conformant.
    Must,
    /// Expected of a good host; a deviation is reported.
    Should,
    /// Measured or allowed; never a conformance failure on its own.
    May,
}

impl Level {
    /// Upper-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
            Level::May => "MAY",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EnvsField {
    All(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    level: Level,
    statement: String,
    source: String,
    envs: EnvsField,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    requirement: Vec<Entry>,
}

/// One requirement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// Stable id (`X86-PF-1`, `PVM-ISO-1`, ...).
    pub id: String,
    /// How binding it is.
    pub level: Level,
    /// What must hold.
    pub statement: String,
    /// Where it comes from (a spec section, host source, or a local observation).
    pub source: String,
    /// The environments it applies to.
    #[serde(serialize_with = "env_names")]
    pub envs: Vec<Env>,
}

fn env_names<S: serde::Serializer>(envs: &[Env], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(envs.iter().map(|e| e.name()))
}

/// The catalog.
#[derive(Clone, Debug)]
pub struct Requirements {
    by_id: BTreeMap<String, Requirement>,
}

impl Requirements {
    /// Parses a catalog; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::Requirements {
            path: source.into(),
            reason,
        };
        let file: File = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        let mut by_id = BTreeMap::new();
        for e in file.requirement {
            if e.id.trim().is_empty() || e.id.contains(',') || e.id.contains(char::is_whitespace) {
                return Err(bad(format!(
                    "requirement id {:?} is not a plain token",
                    e.id
                )));
            }
            if e.statement.trim().is_empty() || e.source.trim().is_empty() {
                return Err(bad(format!("{} needs a statement and a source", e.id)));
            }
            let envs = match e.envs {
                EnvsField::All(s) if s == "all" => Env::ALL.to_vec(),
                EnvsField::All(s) => {
                    return Err(bad(format!(
                        "{}: envs must be \"all\" or a list, not {s:?}",
                        e.id
                    )));
                }
                EnvsField::List(l) => l
                    .iter()
                    .map(|n| {
                        Env::from_name(n)
                            .ok_or_else(|| bad(format!("{}: unknown environment {n:?}", e.id)))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let r = Requirement {
                id: e.id.clone(),
                level: e.level,
                statement: e.statement,
                source: e.source,
                envs,
            };
            if by_id.insert(e.id.clone(), r).is_some() {
                return Err(bad(format!("{} is listed twice", e.id)));
            }
        }
        Ok(Self { by_id })
    }

    /// The built-in catalog.
    pub fn builtin() -> Result<Self, Error> {
        Self::parse(BUILTIN, "conformance/requirements.toml")
    }

    /// Every requirement, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Requirement> {
        self.by_id.values()
    }

    /// One requirement.
    pub fn get(&self, id: &str) -> Option<&Requirement> {
        self.by_id.get(id)
    }

    /// Refuses a case table naming a requirement the catalog lacks.
    pub fn check(&self, catalog: &Catalog) -> Result<(), Error> {
        for c in &catalog.cases {
            for r in &c.requirements {
                if !self.by_id.contains_key(r) {
                    return Err(Error::Requirements {
                        path: "conformance/requirements.toml".into(),
                        reason: format!(
                            "case {} names requirement {r}, which is not in the catalog",
                            c.name
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// One row of the coverage table.
#[derive(Clone, Debug, Serialize)]
pub struct CoverageRow {
    /// The requirement.
    pub requirement: Requirement,
    /// Cases that name it.
    pub cases: Vec<String>,
    /// Outcomes of their instances in the report given, by instance id.
    pub outcomes: Vec<(String, Outcome)>,
}

/// Requirement -> cases -> outcomes (from `report`, when given).
pub fn coverage(
    reqs: &Requirements,
    catalog: &Catalog,
    report: Option<&Report>,
) -> Vec<CoverageRow> {
    reqs.iter()
        .map(|r| {
            let cases: Vec<String> = catalog
                .cases
                .iter()
                .filter(|c| c.requirements.iter().any(|x| x == &r.id))
                .map(|c| c.name.clone())
                .collect();
            let outcomes = report
                .map(|rep| {
                    rep.cases
                        .iter()
                        .filter(|c| cases.contains(&c.case))
                        .map(|c| (c.id.clone(), c.outcome))
                        .collect()
                })
                .unwrap_or_default();
            CoverageRow {
                requirement: r.clone(),
                cases,
                outcomes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_parses() {
        let r = Requirements::builtin().expect("parses");
        assert!(r.iter().count() > 50);
        assert!(r.get("X86-PF-1").is_some_and(|x| x.level == Level::Must));
    }

    #[test]
    fn bad_catalogs_are_refused() {
        let one = "[[requirement]]\nid = \"A-1\"\nlevel = \"MUST\"\nstatement = \"s\"\nsource = \"x\"\nenvs = \"all\"\n";
        Requirements::parse(one, "t").expect("valid");
        assert!(Requirements::parse(&format!("{one}{one}"), "t").is_err());
        assert!(Requirements::parse(&one.replace("MUST", "OUGHT"), "t").is_err());
        assert!(Requirements::parse(&one.replace("\"all\"", "[\"pv-v9\"]"), "t").is_err());
        assert!(Requirements::parse(&one.replace("\"all\"", "\"some\""), "t").is_err());
        assert!(Requirements::parse(&one.replace("A-1", "A 1"), "t").is_err());
        assert!(Requirements::parse(&one.replace("source = \"x\"", "source = \"\""), "t").is_err());
    }
}
