//! Repository invariants checked by `cargo test` (rust-analyzer's tidy pattern):
//! - every Rust source file starts with a `//!` module doc;
//! - `unsafe` blocks, functions and impls appear only in the modules allowed to hold them;
//! - every workspace member inherits the workspace lints;
//! - guest-side crates (`abi`, `guest-lib`, `conformance-guest`) depend on no host crate;
//! - the guest crates pass clippy (`-D warnings`) for `x86_64-unknown-none`, which the host
//!   build never compiles them for.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Files (relative to the root) that may contain `unsafe` code.
    const UNSAFE_ALLOWED: &[&str] = &[
        "runner/src/kvm.rs",
        "runner/src/memory.rs",
        // The raw-loop baseline must not share the runner's code, so it registers its own memslot.
        "runner/src/baseline.rs",
        "guest-lib/src/arch/",
    ];
    const MEMBERS: &[&str] = &[
        "abi",
        "guest-lib",
        "runner",
        "conformance",
        "conformance/guest",
        "xtask",
    ];
    const GUEST_CRATES: &[&str] = &["abi", "guest-lib", "conformance/guest"];
    const HOST_CRATES: &[&str] = &[
        "runner",
        "conformance",
        "xtask",
        "kvm-ioctls",
        "kvm-bindings",
        "libc",
        "serde",
    ];

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "target" || n == ".git") {
                    continue;
                }
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    fn sources() -> Vec<(String, String)> {
        let root = root();
        let mut files = Vec::new();
        for m in MEMBERS {
            rust_files(&root.join(m), &mut files);
        }
        files.sort();
        files.dedup();
        files
            .into_iter()
            .map(|p| {
                let rel = p
                    .strip_prefix(&root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                (rel, text)
            })
            .collect()
    }

    #[test]
    fn every_module_has_a_doc() {
        let missing: Vec<_> = sources()
            .into_iter()
            .filter(|(_, t)| !t.trim_start().starts_with("//!"))
            .map(|(p, _)| p)
            .collect();
        assert!(
            missing.is_empty(),
            "files without a `//!` module doc: {missing:?}"
        );
    }

    #[test]
    fn unsafe_stays_in_its_modules() {
        let offenders: Vec<_> = sources()
            .into_iter()
            .filter(|(p, _)| !UNSAFE_ALLOWED.iter().any(|a| p.starts_with(a)))
            .filter(|(p, _)| !p.contains("/tests/") && !p.starts_with("xtask/src/tidy.rs"))
            .filter(|(_, t)| {
                t.lines()
                    .map(str::trim_start)
                    .filter(|l| !l.starts_with("//"))
                    .any(|l| {
                        l.contains("unsafe {")
                            || l.contains("unsafe fn")
                            || l.contains("unsafe impl")
                    })
            })
            .map(|(p, _)| p)
            .collect();
        assert!(
            offenders.is_empty(),
            "unsafe code outside {UNSAFE_ALLOWED:?}: {offenders:?}"
        );
    }

    #[test]
    fn members_inherit_workspace_lints() {
        for m in MEMBERS {
            let toml =
                std::fs::read_to_string(root().join(m).join("Cargo.toml")).unwrap_or_default();
            assert!(
                toml.contains("[lints]\nworkspace = true"),
                "{m}/Cargo.toml must have [lints] workspace = true"
            );
        }
    }

    #[test]
    fn guest_crates_pass_clippy_for_the_bare_metal_target() {
        if let Err(e) = conformance::guest_build::clippy(&root()) {
            panic!("{e}");
        }
    }

    #[test]
    fn guest_crates_depend_on_no_host_crate() {
        for m in GUEST_CRATES {
            let toml =
                std::fs::read_to_string(root().join(m).join("Cargo.toml")).unwrap_or_default();
            let deps = toml.split("[dependencies]").nth(1).unwrap_or("");
            let deps = deps.split("\n[").next().unwrap_or("");
            for h in HOST_CRATES {
                assert!(
                    !deps
                        .lines()
                        .any(|l| l.trim_start().starts_with(&format!("{h} "))
                            || l.trim_start().starts_with(&format!("{h}."))),
                    "guest crate {m} depends on host crate {h}"
                );
            }
        }
    }
}
