//! Kernel modules by name, with the modules they depend on first. A distribution kernel's
//! package carries no `modules.dep` until depmod runs, so the dependencies come from each
//! module's own `.modinfo` section (`depends=a,b`), read with goblin.

use std::path::{Path, PathBuf};

use crate::profile::Module;
use crate::{Error, Result, io_err};

/// A module file to load and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Its name as modprobe spells it (`_` for `-`).
    pub name: String,
    /// The `.ko` file (uncompressed).
    pub file: PathBuf,
    /// Parameters (empty for a dependency).
    pub params: String,
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let p = e.map_err(io_err(dir))?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "ko") {
            out.push(p);
        }
    }
    Ok(())
}

/// The `depends=` list of a module file.
pub fn depends(ko: &Path) -> Result<Vec<String>> {
    Ok(modinfo(ko, "depends")?
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(canonical)
        .collect())
}

/// The value of `key` in a module file's `.modinfo` (`depends`, `vermagic`, ...).
pub fn modinfo(ko: &Path, key: &str) -> Result<Option<String>> {
    let bytes = std::fs::read(ko).map_err(io_err(ko))?;
    let elf = goblin::elf::Elf::parse(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: not an ELF module: {e}", ko.display())))?;
    let Some(sh) = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".modinfo"))
    else {
        return Ok(None);
    };
    let (start, len) = (sh.sh_offset as usize, sh.sh_size as usize);
    let info = bytes
        .get(start..start + len)
        .ok_or_else(|| Error::Invalid(format!("{}: .modinfo outside the file", ko.display())))?;
    let prefix = format!("{key}=");
    Ok(info
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(prefix.as_str()))
        .map(str::to_string))
}

/// The modules `wanted` (in order) and their dependencies, each before what needs it, found
/// under `trees` (`lib/modules/<release>` and directories of modules built out of tree; the
/// first tree that has a module wins).
pub fn resolve(trees: &[PathBuf], wanted: &[Module]) -> Result<Vec<Resolved>> {
    let mut files = Vec::new();
    if !wanted.is_empty() {
        for tree in trees {
            walk(tree, &mut files)?;
        }
    }
    let where_ = trees
        .iter()
        .map(|t| t.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let find = |name: &str| {
        files
            .iter()
            .find(|f| {
                f.file_stem()
                    .is_some_and(|s| canonical(&s.to_string_lossy()) == name)
            })
            .cloned()
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "module {name}: no {name}.ko under {where_} (compressed .ko.xz/.ko.zst \
                     modules are not unpacked yet)"
                ))
            })
    };
    let mut out: Vec<Resolved> = Vec::new();
    fn visit(
        name: &str,
        params: &str,
        find: &dyn Fn(&str) -> Result<PathBuf>,
        out: &mut Vec<Resolved>,
        stack: &mut Vec<String>,
    ) -> Result<()> {
        if out.iter().any(|r| r.name == name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(Error::Invalid(format!(
                "module {name}: circular dependency"
            )));
        }
        let file = find(name)?;
        stack.push(name.to_string());
        for d in depends(&file)? {
            visit(&d, "", find, out, stack)?;
        }
        stack.pop();
        out.push(Resolved {
            name: name.to_string(),
            file,
            params: params.to_string(),
        });
        Ok(())
    }
    for m in wanted {
        visit(
            &canonical(&m.name),
            &m.params,
            &find,
            &mut out,
            &mut Vec::new(),
        )?;
    }
    Ok(out)
}
