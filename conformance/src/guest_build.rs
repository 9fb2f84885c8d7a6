//! Builds the guest image with cargo for `x86_64-unknown-none`.
//!
//! The build runs in its own target directory (`target/guest`) so it never contends for the
//! lock of an outer `cargo test`/`cargo run`, and with the outer cargo's per-invocation
//! environment removed (an outer `CARGO_TARGET_DIR`, `RUSTFLAGS` or `CARGO_BUILD_TARGET` would
//! otherwise leak into the bare-metal build). Cargo's own fingerprinting makes a rebuild of an
//! unchanged guest a no-op, so the image is built once and cached.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

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

/// Where [`build`] puts the image.
pub fn image_path(root: &Path) -> PathBuf {
    root.join("target/guest")
        .join(GUEST_TARGET)
        .join("release")
        .join(GUEST_PACKAGE)
}

/// `cargo <subcommand> --release -p conformance-guest --target x86_64-unknown-none` in the
/// guest's own target directory, with the outer cargo's per-invocation environment removed.
fn guest_cargo(root: &Path, subcommand: &str) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args([
        subcommand,
        "--release",
        "--quiet",
        "--package",
        GUEST_PACKAGE,
        "--target",
        GUEST_TARGET,
        "--target-dir",
    ]);
    cmd.arg(root.join("target/guest"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let drop = (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || matches!(
                &*k,
                "RUSTFLAGS" | "RUSTDOCFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
            );
        if drop {
            cmd.env_remove(&*k);
        }
    }
    cmd
}

/// Builds (or confirms up to date) the guest image; returns its path.
pub fn build(root: &Path) -> Result<PathBuf, Error> {
    let out = guest_cargo(root, "build")
        .output()
        .map_err(|e| Error::Build(format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        return Err(Error::Build(format!(
            "cargo build of {GUEST_PACKAGE} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let path = image_path(root);
    if !path.exists() {
        return Err(Error::Build(format!(
            "{} missing after a successful build",
            path.display()
        )));
    }
    Ok(path)
}

/// Runs clippy with `-D warnings` on the guest crates (`conformance-guest` and `guest-lib`)
/// for the bare-metal target, which the host build never compiles them for.
pub fn clippy(root: &Path) -> Result<(), Error> {
    let out = guest_cargo(root, "clippy")
        .args(["--package", "guest-lib", "--", "-D", "warnings"])
        .output()
        .map_err(|e| Error::Lint(format!("cannot run cargo clippy: {e}")))?;
    if !out.status.success() {
        return Err(Error::Lint(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}
