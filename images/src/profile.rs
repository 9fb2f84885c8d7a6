//! Host profiles (`images/profiles/*.toml`): the kernel command line, the modules to load with
//! their parameters, the PVM dialect the host must speak, and machine hints for QEMU and GCE.
//! Unknown fields are refused (a misspelt key would otherwise be ignored).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, io_err};

/// A module to load at boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    /// Its name (`kvm-amd`, `kvm-pvm`; `-` and `_` are the same, as for modprobe).
    pub name: String,
    /// Parameters for insmod (`nested=0 ...`), empty for none.
    #[serde(default)]
    pub params: String,
}

/// A named set of module parameters: the suite runs once per set, one report each
/// (`--param-set NAME`); a module the set does not name keeps its own `params`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSet {
    /// Its name (`[a-z0-9-]`, not `default`, which is the modules' own parameters).
    pub name: String,
    /// Module name -> the parameters it gets in this set.
    pub params: std::collections::BTreeMap<String, String>,
}

/// The name of the parameter set that is every module's own `params`.
pub const DEFAULT_SET: &str = "default";

/// Machine hints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// QEMU `-cpu` (TCG offers SVM with `max`, never VMX).
    pub qemu_cpu: String,
    /// QEMU `-m`.
    pub memory_mib: u32,
    /// The GCE machine type.
    pub gce_machine_type: String,
}

/// A host profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Name (the file's stem).
    pub name: String,
    /// One line for reports.
    pub description: String,
    /// The kernel command line (PVM hosts: `pti=off nokaslr`).
    pub cmdline: String,
    /// `none` or a dialect name (`local`, `upstream-v2`, ...): what the worker must detect.
    pub expected_dialect: String,
    /// Modules in load order.
    #[serde(default)]
    pub modules: Vec<Module>,
    /// Further parameter sets besides [`DEFAULT_SET`].
    #[serde(default)]
    pub param_sets: Vec<ParamSet>,
    /// Machine hints.
    pub machine: Machine,
}

impl Profile {
    /// Parses and checks `text` (from `source`, for errors).
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let p: Profile = toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("{source}: {}", e.message())))?;
        if p.expected_dialect != "none"
            && ![
                "local",
                "upstream-v1",
                "upstream-mid",
                "upstream-v2",
                "upstream-7x",
            ]
            .contains(&p.expected_dialect.as_str())
        {
            return Err(Error::Invalid(format!(
                "{source}: expected_dialect {:?} is not none or a dialect name",
                p.expected_dialect
            )));
        }
        if p.cmdline.contains('\n') || p.modules.iter().any(|m| m.params.contains('\n')) {
            return Err(Error::Invalid(format!(
                "{source}: a line break in cmdline or params"
            )));
        }
        if let Some(m) = p.modules.iter().find(|m| {
            m.name.is_empty()
                || !m
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }) {
            return Err(Error::Invalid(format!(
                "{source}: module name {:?}",
                m.name
            )));
        }
        let canonical = |n: &str| n.replace('-', "_");
        let mut seen = std::collections::BTreeSet::new();
        for set in &p.param_sets {
            let ok_name = !set.name.is_empty()
                && set.name != DEFAULT_SET
                && set
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok_name || !seen.insert(set.name.clone()) {
                return Err(Error::Invalid(format!(
                    "{source}: parameter set name {:?} (want [a-z0-9-], unique, not {DEFAULT_SET})",
                    set.name
                )));
            }
            for (module, params) in &set.params {
                if !p
                    .modules
                    .iter()
                    .any(|m| canonical(&m.name) == canonical(module))
                {
                    return Err(Error::Invalid(format!(
                        "{source}: parameter set {} names module {module}, which the profile \
                         does not load",
                        set.name
                    )));
                }
                if params.contains(['\n', '"', '\'', '$', '`', '\\']) {
                    return Err(Error::Invalid(format!(
                        "{source}: parameter set {}: the parameters of {module} contain a \
                         character /init cannot pass on safely",
                        set.name
                    )));
                }
            }
        }
        if !(256..=65536).contains(&p.machine.memory_mib) {
            return Err(Error::Invalid(format!(
                "{source}: machine.memory_mib {} (want 256 to 65536)",
                p.machine.memory_mib
            )));
        }
        Ok(p)
    }

    /// Every parameter set's name, [`DEFAULT_SET`] first.
    pub fn set_names(&self) -> Vec<String> {
        std::iter::once(DEFAULT_SET.to_string())
            .chain(self.param_sets.iter().map(|s| s.name.clone()))
            .collect()
    }

    /// The parameters of module `name` in set `set` (its own unless the set names it).
    pub fn params_of(&self, set: &str, name: &str) -> Option<String> {
        let canonical = |n: &str| n.replace('-', "_");
        let m = self
            .modules
            .iter()
            .find(|m| canonical(&m.name) == canonical(name))?;
        let over = self
            .param_sets
            .iter()
            .find(|s| s.name == set)
            .and_then(|s| {
                s.params
                    .iter()
                    .find(|(k, _)| canonical(k) == canonical(name))
            })
            .map(|(_, v)| v.clone());
        Some(over.unwrap_or_else(|| m.params.clone()))
    }

    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A profile by name from `dir` (`images/profiles`), or a path.
    pub fn find(name_or_path: &str, dir: &Path) -> Result<Self> {
        let p = Path::new(name_or_path);
        if p.extension().is_some_and(|e| e == "toml") || p.components().count() > 1 {
            return Self::load(p);
        }
        let file = dir.join(format!("{name_or_path}.toml"));
        if !file.exists() {
            let mut known: Vec<String> = std::fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter_map(|e| {
                            e.path()
                                .file_stem()
                                .map(|s| s.to_string_lossy().into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            known.sort();
            return Err(Error::Invalid(format!(
                "--profile {name_or_path}: no such profile (known: {})",
                known.join(", ")
            )));
        }
        Self::load(&file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_profiles_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("profiles") {
            let path = e.expect("entry").path();
            let p = Profile::load(&path).expect("parses");
            assert_eq!(
                Some(p.name.as_str()),
                path.file_stem().and_then(|s| s.to_str())
            );
            n += 1;
        }
        assert!(n >= 2, "scanned {n} profiles");
    }

    #[test]
    fn a_set_overrides_only_the_modules_it_names() {
        let p = Profile::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/debian-kvm-amd-marker.toml"),
        )
        .expect("parses");
        assert_eq!(p.set_names()[0], DEFAULT_SET);
        assert!(p.set_names().len() >= 2, "the CI profile has a second set");
        let other = &p.set_names()[1];
        assert_eq!(
            p.params_of(DEFAULT_SET, "pvmc_marker").as_deref(),
            Some("level=7")
        );
        assert_ne!(
            p.params_of(other, "pvmc_marker").as_deref(),
            Some("level=7")
        );
        assert_eq!(
            p.params_of(other, "kvm-amd"),
            p.params_of(DEFAULT_SET, "kvm_amd")
        );
        assert_eq!(p.params_of(other, "not-loaded"), None);
    }

    #[test]
    fn bad_profiles_name_the_problem() {
        let good = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/debian-kvm-amd.toml"),
        )
        .expect("read");
        for (text, word) in [
            (
                good.replace("expected_dialect = \"none\"", "expected_dialect = \"pvm\""),
                "expected_dialect",
            ),
            (
                good.replace("memory_mib = 1024", "memory_mib = 1"),
                "memory_mib",
            ),
            (
                good.replace("name = \"kvm-amd\"", "name = \"kvm amd\""),
                "module name",
            ),
            (format!("{good}\nbogus = 1\n"), "bogus"),
            (
                format!("{good}\n[[param_sets]]\nname = \"x\"\nparams = {{ nope = \"a=1\" }}\n"),
                "does not load",
            ),
            (
                format!("{good}\n[[param_sets]]\nname = \"default\"\nparams = {{}}\n"),
                "parameter set name",
            ),
            (
                format!(
                    "{good}\n[[param_sets]]\nname = \"x\"\nparams = {{ kvm_amd = \"a=$(x)\" }}\n"
                ),
                "cannot pass on",
            ),
        ] {
            let e = Profile::parse(&text, "p.toml").expect_err("bad");
            assert!(e.to_string().contains(word), "{e}");
        }
    }
}
