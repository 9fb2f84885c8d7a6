//! Repository invariants checked by `cargo test` (rust-analyzer's tidy pattern). The file set
//! and the dependency graph come from `cargo metadata`, and every check fails when it scanned
//! nothing, so a wrong root cannot make them pass vacuously:
//! - every Rust source file starts with a `//!` module doc;
//! - `unsafe` (blocks, functions, impls, traits, `extern` blocks and `unsafe(...)`
//!   attributes) appears only in the modules allowed to hold it;
//! - every workspace member inherits the workspace lints;
//! - guest-side crates depend only on their allowlisted crates;
//! - no code outside the environment modules tests which environment it runs in;
//! - host checks are matched exhaustively (no catch-all arm in `conformance::host_check`);
//! - guest code executes VMCALL/VMMCALL only in the opt-in module, whose cases are all
//!   `FLAG_OPT_IN` (off by default);
//! - the sources are rustfmt-clean;
//! - the guest crates pass clippy (`-D warnings`) for `x86_64-unknown-none`, which the host
//!   build never compiles them for;
//! - `cargo doc --workspace --no-deps` builds with `-D warnings`.

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    /// Files or directories (relative to the root) that may contain `unsafe` code.
    const UNSAFE_ALLOWED: &[&str] = &[
        "runner/src/kvm/",
        "runner/src/memory.rs",
        "guest-lib/src/arch/",
        // The reference model's engine: guest RAM shared with Unicorn, the watchdog's stop.
        "model/src/engine.rs",
        // The model's SIMD exception replay: SSE instructions run on the model's own CPU.
        "model/src/simd.rs",
    ];
    /// What each guest-side crate may depend on (normal and build dependencies).
    const GUEST_DEPS: &[(&str, &[&str])] = &[
        ("abi", &[]),
        ("guest-lib", &["abi"]),
        ("conformance-guest", &["guest-lib", "abi"]),
    ];
    /// The only files that may look at which environment runs: where environments are
    /// declared and where the guest picks its module.
    const ENV_DISPATCH_ALLOWED: &[&str] = &["abi/src/env.rs", "guest-lib/src/env/mod.rs"];

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn metadata() -> Value {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = duct::cmd(
            cargo,
            [
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ],
        )
        .dir(root())
        .stdout_capture()
        .read()
        .unwrap_or_else(|e| panic!("cargo metadata failed: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("cargo metadata output: {e}"))
    }

    /// Workspace packages: name -> (manifest dir, package JSON).
    fn packages() -> BTreeMap<String, (PathBuf, Value)> {
        let m = metadata();
        let pkgs: BTreeMap<String, (PathBuf, Value)> = m["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let name = p["name"].as_str()?.to_string();
                let manifest = PathBuf::from(p["manifest_path"].as_str()?);
                Some((name, (manifest.parent()?.to_path_buf(), p.clone())))
            })
            .collect();
        assert!(pkgs.len() >= 6, "cargo metadata lists only {pkgs:?}");
        pkgs
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                let skip = p
                    .file_name()
                    .is_some_and(|n| n == "target" || n == ".git" || n == "snapshots");
                // A member nested in another member's directory is scanned as its own member.
                if skip || p.join("Cargo.toml").exists() {
                    continue;
                }
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// Every Rust file of every workspace member: (path relative to the root, text).
    fn sources() -> Vec<(String, String)> {
        let root = root();
        let mut files = Vec::new();
        for (dir, _) in packages().values() {
            rust_files(dir, &mut files);
        }
        files.sort();
        files.dedup();
        let out: Vec<(String, String)> = files
            .into_iter()
            .map(|p| {
                let rel = p
                    .strip_prefix(&root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                let text =
                    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                (rel, text)
            })
            .collect();
        assert!(out.len() > 40, "only {} Rust files found", out.len());
        out
    }

    /// The code lines of a file (comment lines dropped).
    fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
        text.lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_start()))
            .filter(|(_, l)| !l.starts_with("//"))
    }

    /// `path:line: code` for every code line of `files` that `pred` accepts.
    fn matching_lines<'a>(
        files: impl Iterator<Item = &'a (String, String)>,
        pred: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        files
            .flat_map(|(p, t)| {
                code_lines(t)
                    .filter(|(_, l)| pred(l))
                    .map(|(n, l)| format!("{p}:{n}: {l}"))
                    .collect::<Vec<_>>()
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

    fn unsafe_lines(text: &str) -> Vec<usize> {
        const FORMS: [&str; 6] = [
            "unsafe {",
            "unsafe fn",
            "unsafe impl",
            "unsafe trait",
            "unsafe extern",
            "unsafe(",
        ];
        code_lines(text)
            .filter(|(_, l)| FORMS.iter().any(|f| l.contains(f)))
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn unsafe_stays_in_its_modules() {
        let all = sources();
        let offenders: Vec<String> = all
            .iter()
            .filter(|(p, _)| !UNSAFE_ALLOWED.iter().any(|a| p.starts_with(a)))
            .filter(|(p, _)| !p.starts_with("xtask/src/tidy.rs"))
            .flat_map(|(p, t)| unsafe_lines(t).into_iter().map(move |n| format!("{p}:{n}")))
            .collect();
        assert!(
            offenders.is_empty(),
            "unsafe code outside {UNSAFE_ALLOWED:?}: {offenders:?}"
        );
        let allowed_with_unsafe = all
            .iter()
            .filter(|(p, t)| {
                UNSAFE_ALLOWED.iter().any(|a| p.starts_with(a)) && !unsafe_lines(t).is_empty()
            })
            .count();
        assert!(
            allowed_with_unsafe >= 3,
            "the unsafe scan found almost nothing"
        );
    }

    #[test]
    fn the_scan_sees_every_unsafe_form() {
        for form in [
            "unsafe { x }",
            "pub unsafe fn f()",
            "#[unsafe(no_mangle)]",
            "unsafe extern \"C\" {",
        ] {
            assert_eq!(unsafe_lines(form), vec![1], "{form}");
        }
        assert!(unsafe_lines("// unsafe { in a comment }").is_empty());
    }

    #[test]
    fn members_inherit_workspace_lints() {
        for (name, (dir, _)) in packages() {
            let toml = std::fs::read_to_string(dir.join("Cargo.toml"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                toml.contains("[lints]\nworkspace = true"),
                "{name}/Cargo.toml must have [lints] workspace = true"
            );
        }
    }

    #[test]
    fn guest_crates_depend_only_on_their_allowlist() {
        let pkgs = packages();
        for (name, allowed) in GUEST_DEPS {
            let (_, p) = pkgs
                .get(*name)
                .unwrap_or_else(|| panic!("guest crate {name} is not a workspace member"));
            let deps: Vec<&str> = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .filter_map(|d| d["name"].as_str())
                .collect();
            for d in &deps {
                assert!(
                    allowed.contains(d),
                    "guest crate {name} depends on {d}; allowed: {allowed:?}"
                );
            }
        }
    }

    #[test]
    fn only_the_environment_modules_look_at_the_environment() {
        const PATTERNS: [&str; 6] = [
            "== Env::",
            "!= Env::",
            "matches!(env",
            "Env::PvLocal =>",
            "Env::Hvm64 =>",
            "pv_local: bool",
        ];
        let all = sources();
        let files = all
            .iter()
            .filter(|(p, _)| !ENV_DISPATCH_ALLOWED.contains(&p.as_str()))
            .filter(|(p, _)| !p.starts_with("xtask/src/tidy.rs"));
        let offenders = matching_lines(files, |l| PATTERNS.iter().any(|x| l.contains(x)));
        assert!(
            offenders.is_empty(),
            "code outside {ENV_DISPATCH_ALLOWED:?} branches on the environment: {offenders:#?}"
        );
    }

    /// The only guest sources that may name VMCALL/VMMCALL: the primitive and the opt-in cases.
    const VMCALL_ALLOWED: [&str; 2] = [
        "guest-lib/src/arch/optin.rs",
        "conformance/guest/src/optin.rs",
    ];

    #[test]
    fn guests_never_use_vmcall() {
        let all = sources();
        let guest: Vec<&(String, String)> = all
            .iter()
            .filter(|(p, _)| p.starts_with("guest-lib/") || p.starts_with("conformance/guest/"))
            .collect();
        assert!(guest.len() > 15, "only {} guest sources", guest.len());
        let offenders = matching_lines(
            guest
                .iter()
                .copied()
                .filter(|(p, _)| !VMCALL_ALLOWED.contains(&p.as_str())),
            |l| {
                let l = l.to_lowercase();
                l.contains("vmcall") || l.contains("vmmcall")
            },
        );
        assert!(
            offenders.is_empty(),
            "VMCALL/VMMCALL in guest code outside {VMCALL_ALLOWED:?} (it reaches past a nested \
             host): {offenders:?}"
        );
        // Every case of the opt-in module is opt-in.
        let (_, optin) = guest
            .iter()
            .find(|(p, _)| p == "conformance/guest/src/optin.rs")
            .expect("conformance/guest/src/optin.rs exists");
        let specs = optin.matches("Spec::new(").count();
        let flagged = optin.matches(".flags(FLAG_OPT_IN)").count();
        assert!(specs > 0, "no case in conformance/guest/src/optin.rs");
        assert_eq!(
            specs, flagged,
            "every case in conformance/guest/src/optin.rs must be `.flags(FLAG_OPT_IN)`"
        );
    }

    #[test]
    fn host_checks_are_matched_exhaustively() {
        let p = root().join("conformance/src/host_check.rs");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            text.contains("match check {"),
            "host_check.rs has no match on HostCheck"
        );
        let catch_all: Vec<usize> = code_lines(&text)
            .filter(|(_, l)| l.starts_with("_ =>"))
            .map(|(n, _)| n)
            .collect();
        assert!(
            catch_all.is_empty(),
            "catch-all arms in host_check.rs at lines {catch_all:?}"
        );
    }

    #[test]
    fn guest_crates_pass_clippy_for_the_bare_metal_target() {
        let out = conformance::guest_build::guest_cargo(
            &root(),
            &[
                "clippy",
                "--release",
                "--quiet",
                "--package",
                "conformance-guest",
                "--package",
                "guest-lib",
                "--",
                "-D",
                "warnings",
            ],
        )
        .stderr_capture()
        .unchecked()
        .run()
        .unwrap_or_else(|e| panic!("cannot run cargo clippy: {e}"));
        assert!(
            out.status.success(),
            "clippy on the guest crates (x86_64-unknown-none):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn sources_are_rustfmt_clean() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = duct::cmd(cargo, ["fmt", "--all", "--", "--check"])
            .dir(root())
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .unwrap_or_else(|e| panic!("cannot run cargo fmt: {e}"));
        assert!(
            out.status.success(),
            "cargo fmt --all -- --check (run `cargo fmt --all`):\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    #[test]
    fn docs_build_without_warnings() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // Its own target directory: the outer `cargo test` holds the lock of the main one.
        let dir = root().join("target/doc-check");
        let args: Vec<std::ffi::OsString> =
            ["doc", "--workspace", "--no-deps", "--quiet", "--target-dir"]
                .iter()
                .map(Into::into)
                .chain([dir.into_os_string()])
                .collect();
        let out = duct::cmd(cargo, args)
            .dir(root())
            .env("RUSTDOCFLAGS", "-D warnings")
            .env_remove("RUSTFLAGS")
            .stderr_capture()
            .unchecked()
            .run()
            .unwrap_or_else(|e| panic!("cannot run cargo doc: {e}"));
        assert!(
            out.status.success(),
            "RUSTDOCFLAGS=\"-D warnings\" cargo doc --workspace --no-deps:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
