//! Builds the guest image with cargo for `x86_64-unknown-none`, and makes sure the cached
//! image is the one cargo built.
//!
//! The build runs in its own target directory (`target/guest`) so it never contends for the
//! lock of an outer `cargo test`/`cargo run`, and with the outer cargo's per-invocation
//! environment removed (an outer `CARGO_TARGET_DIR`, `RUSTFLAGS` or `CARGO_BUILD_TARGET` would
//! otherwise leak into the bare-metal build). Cargo's fingerprinting makes a rebuild of an
//! unchanged guest a no-op, so the image is built once and cached.
//!
//! Cargo does not notice a cached output that was changed behind its back, so after each build
//! the image is checked: when cargo reports it fresh, its SHA-256 must equal the one recorded
//! (`<image>.sha256`) when cargo last linked it, and it must pass validation (ELF and case
//! table). A cached image that fails either is removed with `cargo clean -p` and rebuilt once;
//! [`build`] says so in its [`Built::rebuilt`].
//!
//! Build, check and the recorded hash are one step under an exclusive lock on
//! `<guest target dir>/image.lock`: a second build in between (parallel tests, or `cargo
//! xtask` beside `cargo test`) would see cargo's fresh image before the first recorded its
//! hash, take it for a changed cache and clean it while the first one's users run it.

use std::path::{Path, PathBuf};

use runner::image::GuestImage;

use crate::Error;
use crate::catalog::Catalog;

/// The bare-metal target triple.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";
/// The guest package.
pub const GUEST_PACKAGE: &str = "conformance-guest";

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// The guest's target directory: `$PVMC_GUEST_TARGET_DIR`, else `<root>/target/guest`.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("PVMC_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/guest"))
}

/// Where [`build`] puts the image.
pub fn image_path(root: &Path) -> PathBuf {
    target_dir(root)
        .join(GUEST_TARGET)
        .join("release")
        .join(GUEST_PACKAGE)
}

fn hash_path(image: &Path) -> PathBuf {
    image.with_extension("sha256")
}

/// `cargo <subcommand> --target x86_64-unknown-none --target-dir <guest dir> <args>` in
/// `root` (`args[0]` is the subcommand), with the outer cargo's per-invocation environment
/// removed.
pub fn guest_cargo(root: &Path, args: &[&str]) -> duct::Expression {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let (sub, rest) = args
        .split_first()
        .map_or(("build", &[][..]), |(s, r)| (*s, r));
    let mut full: Vec<std::ffi::OsString> = vec![sub.into()];
    full.extend([
        "--target".into(),
        GUEST_TARGET.into(),
        "--target-dir".into(),
    ]);
    full.push(target_dir(root).into_os_string());
    full.extend(rest.iter().map(Into::into));
    let mut cmd = duct::cmd(cargo, full).dir(root);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let leaks = (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || matches!(
                &*k,
                "RUSTFLAGS" | "RUSTDOCFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
            );
        if leaks {
            cmd = cmd.env_remove(&*k);
        }
    }
    cmd
}

/// `cargo build` of the guest; returns whether cargo reported the binary fresh (not relinked).
fn cargo_build(root: &Path) -> Result<bool, Error> {
    let out = guest_cargo(
        root,
        &[
            "build",
            "--release",
            "--package",
            GUEST_PACKAGE,
            "--message-format=json-render-diagnostics",
        ],
    )
    .stdout_capture()
    .stderr_capture()
    .unchecked()
    .run()
    .map_err(|e| Error::Build(format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        return Err(Error::Build(format!(
            "cargo build of {GUEST_PACKAGE} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let fresh = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == GUEST_PACKAGE)
        .any(|v| v["fresh"] == true);
    Ok(fresh)
}

/// The result of [`build`].
#[derive(Debug)]
pub struct Built {
    /// The image.
    pub path: PathBuf,
    /// It parsed and its case table validated.
    pub catalog: Catalog,
    /// Why the cached image was rebuilt, if it was.
    pub rebuilt: Option<String>,
}

/// Loads and validates the image at `path`: the ELF, the case table, and that every
/// requirement id a case names is in the catalog.
pub fn load(path: &Path) -> Result<Catalog, Error> {
    let image = GuestImage::load(path)?;
    let catalog = Catalog::new(image).map_err(|error| Error::Catalog {
        path: path.display().to_string(),
        error,
    })?;
    crate::requirements::Requirements::builtin()?.check(&catalog)?;
    Ok(catalog)
}

/// Why the cached image at `path` cannot be used as is, if it cannot.
fn cache_problem(path: &Path, fresh: bool) -> Option<String> {
    let loaded = load(path);
    if let Err(e) = &loaded {
        return Some(e.to_string());
    }
    let sha = loaded.ok()?.image.sha256.clone();
    let recorded = std::fs::read_to_string(hash_path(path)).ok();
    match (fresh, recorded) {
        (true, Some(r)) if r.trim() != sha => Some(format!(
            "its SHA-256 {sha} is not the {} recorded when cargo built it",
            r.trim()
        )),
        (true, None) => Some("no hash was recorded when cargo built it".into()),
        _ => None,
    }
}

/// Builds (or confirms up to date) the guest image, checks the cached one (see the module
/// documentation) and returns it loaded.
pub fn build(root: &Path) -> Result<Built, Error> {
    let path = image_path(root);
    let lock_path = target_dir(root).join("image.lock");
    let io = |error| Error::Io {
        path: lock_path.display().to_string(),
        error,
    };
    std::fs::create_dir_all(target_dir(root)).map_err(io)?;
    let lock = std::fs::File::create(&lock_path).map_err(io)?;
    // Held until `lock` is dropped, when this function returns.
    lock.lock().map_err(io)?;
    let fresh = cargo_build(root)?;
    let mut rebuilt = None;
    if let Some(problem) = cache_problem(&path, fresh) {
        guest_cargo(root, &["clean", "--release", "--package", GUEST_PACKAGE])
            .stdout_null()
            .stderr_capture()
            .run()
            .map_err(|e| Error::Build(format!("cargo clean of the cached image failed: {e}")))?;
        cargo_build(root)?;
        rebuilt = Some(format!("cached guest image {}: {problem}", path.display()));
    }
    let catalog = load(&path)?;
    std::fs::write(hash_path(&path), format!("{}\n", catalog.image.sha256)).map_err(|error| {
        Error::Io {
            path: hash_path(&path).display().to_string(),
            error,
        }
    })?;
    Ok(Built {
        path,
        catalog,
        rebuilt,
    })
}
