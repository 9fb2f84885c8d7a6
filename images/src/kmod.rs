//! Out-of-tree host modules (Kbuild), built for a kernel's headers: the source tree is copied
//! into the output directory (the source stays clean), `make -C KDIR M=OUT modules` builds it,
//! and every `.ko` must carry the vermagic of KDIR's kernel (its `UTS_RELEASE`),
//! so a module built for another kernel is refused here, not at insmod time in the image.

use std::path::{Path, PathBuf};

use crate::{Error, Result, io_err};

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io_err(to))?;
    for e in std::fs::read_dir(from).map_err(io_err(from))? {
        let p = e.map_err(io_err(from))?.path();
        let dest = to.join(p.file_name().unwrap_or_default());
        if p.is_dir() {
            copy_tree(&p, &dest)?;
        } else {
            std::fs::copy(&p, &dest).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

/// The kernel release the headers at `kdir` are for: `UTS_RELEASE` of
/// `include/generated/utsrelease.h`, what vermagic carries (Debian's `kernel.release` file
/// holds the upstream version instead).
pub fn release(kdir: &Path) -> Result<String> {
    let f = kdir.join("include/generated/utsrelease.h");
    let text = std::fs::read_to_string(&f).map_err(|e| {
        Error::Invalid(format!(
            "{}: not a prepared kernel tree ({e})",
            kdir.display()
        ))
    })?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("#define UTS_RELEASE "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| Error::Invalid(format!("{}: no UTS_RELEASE", f.display())))
}

/// Builds the Kbuild tree `src` against `kdir` in `out`; returns the modules made.
pub fn build(src: &Path, kdir: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    if !src.join("Kbuild").is_file() && !src.join("Makefile").is_file() {
        return Err(Error::Invalid(format!(
            "{}: no Kbuild or Makefile",
            src.display()
        )));
    }
    let release = release(kdir)?;
    copy_tree(src, out)?;
    let out_abs = std::fs::canonicalize(out).map_err(io_err(out))?;
    crate::tool(
        duct::cmd!(
            "make",
            "-C",
            kdir,
            format!("M={}", out_abs.display()),
            "modules"
        ),
        "make modules",
    )?;
    let mut kos: Vec<PathBuf> = std::fs::read_dir(&out_abs)
        .map_err(io_err(&out_abs))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ko"))
        .collect();
    kos.sort();
    if kos.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: make built no module",
            src.display()
        )));
    }
    for ko in &kos {
        let vermagic = crate::modules::modinfo(ko, "vermagic")?.unwrap_or_default();
        if vermagic.split_whitespace().next() != Some(release.as_str()) {
            return Err(Error::Invalid(format!(
                "{}: vermagic {vermagic:?} is not for kernel {release}",
                ko.display()
            )));
        }
    }
    Ok(kos)
}
