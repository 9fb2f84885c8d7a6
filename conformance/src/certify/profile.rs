//! Certification profiles: what a report must show for a host to be certified against them.
//!
//! ```toml
//! name = "local-host"                      # shown on the certificate
//! description = "The local PVM dialect"    # optional
//! dialect = "local"                        # optional: the host dialect the report must show
//! envs = ["hvm64", "pv-local"]             # environments whose instances count
//! areas = "all"                            # or a list: ["priv", "paging", ...]
//! levels = ["MUST"]                        # requirement levels that must hold
//! deviations = "reject"                    # or "accept-documented"
//! min_instances = 50                       # in-scope instances that ran (not SKIP); default 1
//! require_host_health = true               # host_health.status must be "clean"; default true
//! require_complete = true                  # report state must be "complete"; default true
//! ```
//!
//! `areas = "all"` means every area that checks the host ([`certifiable_areas`]: all but
//! `selftest`, the harness checking itself, and `bench`, measured rather than checked); those
//! two cannot be certified and are refused when listed. Requirements of a level not
//! in `levels` are still evaluated, and their failures and deviations are warnings.
//! `deviations = "accept-documented"` lets an XFAIL (a deviation listed in the expectations
//! with its reason and evidence) certify, as CERTIFIED WITH DEVIATIONS; `"reject"` makes it a
//! reason for NOT CERTIFIED. Unknown fields, environments, areas, levels and dialects are
//! errors naming the file and the bad value.

use std::path::Path;

use abi::env::{Area, Env};
use serde::{Deserialize, Serialize};

use super::CertifyError;
use crate::requirements::Level;

/// The dialect names a report's host can show (`abi::env::Dialect::name`).
pub const DIALECTS: [&str; 4] = ["local", "upstream-v1", "upstream-mid", "upstream-v2"];

/// The areas that `areas = "all"` stands for: those whose cases check the host (every area
/// but `selftest` and `bench`), in report order.
pub fn certifiable_areas() -> Vec<Area> {
    Area::ALL
        .into_iter()
        .filter(|a| !matches!(a, Area::Selftest | Area::Bench))
        .collect()
}

/// Whether a documented deviation (XFAIL) on a required requirement still certifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviationPolicy {
    /// An XFAIL is a reason for NOT CERTIFIED.
    Reject,
    /// An XFAIL with a reason and evidence certifies, as CERTIFIED WITH DEVIATIONS.
    AcceptDocumented,
}

impl DeviationPolicy {
    /// The name in profile files.
    pub const fn name(self) -> &'static str {
        match self {
            DeviationPolicy::Reject => "reject",
            DeviationPolicy::AcceptDocumented => "accept-documented",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AreasField {
    All(String),
    List(Vec<String>),
}

fn all_areas() -> AreasField {
    AreasField::All("all".into())
}

const fn yes() -> bool {
    true
}

const fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    dialect: Option<String>,
    envs: Vec<String>,
    #[serde(default = "all_areas")]
    areas: AreasField,
    levels: Vec<String>,
    deviations: DeviationPolicy,
    #[serde(default = "one")]
    min_instances: usize,
    #[serde(default = "yes")]
    require_host_health: bool,
    #[serde(default = "yes")]
    require_complete: bool,
}

/// A validated profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// Its name.
    pub name: String,
    /// What it certifies, for humans.
    pub description: String,
    /// The file it came from.
    pub source: String,
    /// The host dialect the report must show, if any.
    pub dialect: Option<String>,
    /// Environments whose instances count.
    #[serde(serialize_with = "env_names")]
    pub envs: Vec<Env>,
    /// Areas whose cases count.
    #[serde(serialize_with = "area_names")]
    pub areas: Vec<Area>,
    /// Requirement levels that must hold.
    pub levels: Vec<Level>,
    /// Whether documented deviations certify.
    pub deviations: DeviationPolicy,
    /// In-scope instances that must have run (outcome other than SKIP).
    pub min_instances: usize,
    /// Whether the report's host health must be `clean`.
    pub require_host_health: bool,
    /// Whether the report's state must be `complete`.
    pub require_complete: bool,
}

fn env_names<S: serde::Serializer>(envs: &[Env], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(envs.iter().map(|e| e.name()))
}

fn area_names<S: serde::Serializer>(areas: &[Area], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(areas.iter().map(|a| a.name()))
}

/// A TOML error in one line: where (line, column) and what.
fn toml_reason(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

fn level_from_name(s: &str) -> Option<Level> {
    [Level::Must, Level::Should, Level::May]
        .into_iter()
        .find(|l| l.name() == s)
}

fn area_from_name(s: &str) -> Option<Area> {
    Area::ALL.into_iter().find(|a| a.name() == s)
}

fn names<T>(items: impl IntoIterator<Item = T>, name: impl Fn(&T) -> &'static str) -> String {
    items
        .into_iter()
        .map(|x| name(&x))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses each of `list` with `parse`, refusing unknown names and duplicates.
fn parse_list<T: PartialEq>(
    field: &str,
    list: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    if list.is_empty() {
        return Err(format!("{field} is empty"));
    }
    let mut out: Vec<T> = Vec::new();
    for s in list {
        let v = parse(s)?;
        if out.contains(&v) {
            return Err(format!("{field}: {s:?} is listed twice"));
        }
        out.push(v);
    }
    Ok(out)
}

impl Profile {
    /// Parses a profile's text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, CertifyError> {
        let bad = |reason: String| CertifyError::Invalid {
            what: "profile",
            path: source.into(),
            reason,
        };
        let f: File = toml::from_str(text).map_err(|e| bad(toml_reason(text, &e)))?;
        if f.name.trim().is_empty() {
            return Err(bad("name is empty".into()));
        }
        if f.name.contains(['\n', '\r']) {
            return Err(bad("name must be one line".into()));
        }
        let envs = parse_list("envs", &f.envs, |s| {
            Env::from_name(s).ok_or_else(|| {
                format!(
                    "unknown environment {s:?} (known: {})",
                    names(Env::ALL, |e| e.name())
                )
            })
        })
        .map_err(bad)?;
        let areas = match &f.areas {
            AreasField::All(s) if s == "all" => certifiable_areas(),
            AreasField::All(s) => {
                return Err(bad(format!(
                    "areas must be \"all\" or a list of area names, not {s:?}"
                )));
            }
            AreasField::List(list) => parse_list("areas", list, |s| {
                let a = area_from_name(s).ok_or_else(|| {
                    format!(
                        "unknown area {s:?} (known: {})",
                        names(certifiable_areas(), |a| a.name())
                    )
                })?;
                if certifiable_areas().contains(&a) {
                    Ok(a)
                } else {
                    Err(format!(
                        "area {s:?} cannot be certified (it checks the harness or measures, \
                         not the host; certifiable: {})",
                        names(certifiable_areas(), |a| a.name())
                    ))
                }
            })
            .map_err(bad)?,
        };
        let levels = parse_list("levels", &f.levels, |s| {
            level_from_name(s)
                .ok_or_else(|| format!("unknown level {s:?} (known: MUST, SHOULD, MAY)"))
        })
        .map_err(bad)?;
        if let Some(d) = &f.dialect
            && !DIALECTS.contains(&d.as_str())
        {
            return Err(bad(format!(
                "unknown dialect {d:?} (known: {})",
                DIALECTS.join(", ")
            )));
        }
        Ok(Self {
            name: f.name.trim().into(),
            description: f.description.trim().into(),
            source: source.into(),
            dialect: f.dialect,
            envs,
            areas,
            levels,
            deviations: f.deviations,
            min_instances: f.min_instances,
            require_host_health: f.require_host_health,
            require_complete: f.require_complete,
        })
    }

    /// Reads and validates a profile file.
    pub fn load(path: &Path) -> Result<Self, CertifyError> {
        let text = super::read("profile", path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Whether instances of environment `env` (by name) count.
    pub fn has_env(&self, env: &str) -> bool {
        self.envs.iter().any(|e| e.name() == env)
    }

    /// Whether cases of area `area` (by name) count.
    pub fn has_area(&self, area: &str) -> bool {
        self.areas.iter().any(|a| a.name() == area)
    }

    /// Whether requirements of `level` must hold.
    pub fn requires(&self, level: Level) -> bool {
        self.levels.contains(&level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str =
        "name = \"p\"\nenvs = [\"hvm64\"]\nlevels = [\"MUST\"]\ndeviations = \"reject\"\n";

    fn err(text: &str) -> String {
        Profile::parse(text, "p.toml")
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_minimal_profile_gets_strict_defaults() {
        let p = Profile::parse(MIN, "p.toml").expect("valid");
        assert_eq!(p.areas, certifiable_areas());
        assert!(!p.has_area("selftest") && !p.has_area("bench") && p.has_area("paging"));
        assert!(p.require_complete && p.require_host_health);
        assert_eq!(p.min_instances, 1);
        assert_eq!(p.deviations, DeviationPolicy::Reject);
        assert!(p.has_env("hvm64") && !p.has_env("pv-local"));
        assert!(p.requires(Level::Must) && !p.requires(Level::Should));
    }

    #[test]
    fn bad_profiles_name_the_file_and_the_value() {
        let cases = [
            (
                MIN.replace("hvm64", "pv-v9"),
                "unknown environment \"pv-v9\"",
            ),
            (MIN.replace("MUST", "OUGHT"), "unknown level \"OUGHT\""),
            (
                format!("{MIN}areas = [\"pagin\"]\n"),
                "unknown area \"pagin\"",
            ),
            (
                format!("{MIN}areas = [\"selftest\"]\n"),
                "cannot be certified",
            ),
            (format!("{MIN}areas = \"some\"\n"), "not \"some\""),
            (format!("{MIN}areas = [\"io\", \"io\"]\n"), "listed twice"),
            (
                format!("{MIN}dialect = \"upstream-v3\"\n"),
                "unknown dialect",
            ),
            (format!("{MIN}bogus = 1\n"), "bogus"),
            (MIN.replace("reject", "maybe"), "maybe"),
            (MIN.replace("[\"hvm64\"]", "[]"), "envs is empty"),
            (MIN.replace("name = \"p\"", "name = \" \""), "name is empty"),
            (MIN.replace("name = \"p\"\n", ""), "name"),
            ("name = [".into(), "line 1"),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.starts_with("profile p.toml: "), "{e}");
            assert!(e.contains(want), "{e:?} should mention {want:?}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }

    #[test]
    fn the_shipped_profiles_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles");
        let mut n = 0;
        for e in std::fs::read_dir(dir).expect("profiles dir").flatten() {
            let p = Profile::load(&e.path()).unwrap_or_else(|e| panic!("{e}"));
            assert!(!p.description.is_empty(), "{}: no description", p.source);
            n += 1;
        }
        assert!(n >= 2, "only {n} profiles in {dir}");
        let local = Profile::load(Path::new(&format!("{dir}/local-host.toml"))).expect("local");
        assert_eq!(local.deviations, DeviationPolicy::Reject);
        assert!(local.has_env("hvm64") && local.has_env("pv-local"));
        let v2 = Profile::load(Path::new(&format!("{dir}/upstream-v2.toml"))).expect("v2");
        assert_eq!(v2.envs, vec![Env::PvV2]);
    }
}
