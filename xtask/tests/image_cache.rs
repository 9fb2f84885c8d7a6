//! A corrupted cached guest image is rebuilt, not used: the test copies the guest's target
//! directory (so it never touches the shared cache), corrupts the cached image in two ways
//! (bytes changed inside `.text`, which still parses; the file cut short, which does not) and
//! checks that `cargo xtask conformance` rebuilds it, says why, and runs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run_with_cache(cache: &Path, report: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "conformance",
            "--env",
            "hvm64",
            "--filter",
            "io.hlt_exit",
            "--report",
        ])
        .arg(report)
        .env("PVMC_GUEST_TARGET_DIR", cache)
        .output()
        .unwrap_or_else(|e| panic!("cannot run xtask: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cached_image(cache: &Path) -> PathBuf {
    cache
        .join(conformance::guest_build::GUEST_TARGET)
        .join("release")
        .join(conformance::guest_build::GUEST_PACKAGE)
}

#[test]
fn a_corrupted_cached_image_is_rebuilt() {
    let root = conformance::guest_build::workspace_root();
    conformance::guest_build::build(&root).unwrap_or_else(|e| panic!("guest image: {e}"));
    let d = tempfile::tempdir().expect("tempdir");
    let cache = d.path().join("guest");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(conformance::guest_build::target_dir(&root))
        .arg(&cache)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot copy the guest's target directory");
    let report = d.path().join("report.json");

    let (code, err) = run_with_cache(&cache, &report);
    assert_eq!(code, 0, "a sound cache runs as is:\n{err}");
    assert!(!err.contains("rebuilt"), "{err}");

    let image = cached_image(&cache);
    let mut bytes = std::fs::read(&image).expect("cached image");
    let elf = goblin::elf::Elf::parse(&bytes).expect("ELF");
    let text = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".text"))
        .map(|s| s.sh_offset as usize + 64)
        .expect(".text");
    for b in &mut bytes[text..text + 32] {
        *b = 0xcc;
    }
    std::fs::write(&image, &bytes).expect("corrupt");
    let (code, err) = run_with_cache(&cache, &report);
    assert_eq!(code, 0, "rebuilt and ran:\n{err}");
    assert!(
        err.contains("rebuilt the guest image") && err.contains("SHA-256"),
        "the rebuild says why:\n{err}"
    );
    assert_ne!(
        std::fs::read(&image).expect("image"),
        bytes,
        "the image was replaced"
    );

    let len = std::fs::metadata(&image).expect("image").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .expect("open");
    f.set_len(len / 3).expect("truncate");
    drop(f);
    let (code, err) = run_with_cache(&cache, &report);
    assert_eq!(code, 0, "rebuilt and ran:\n{err}");
    assert!(err.contains("rebuilt the guest image"), "{err}");
}
