//! Links the guest with its linker script when building for the bare-metal target. The script
//! is `guest.ld.in` with the image's place in the guest layout (`abi::layout::IMAGE_BASE`,
//! `IMAGE_END`) filled in, so the addresses are defined once.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=guest.ld.in");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    let template = match std::fs::read_to_string(dir.join("guest.ld.in")) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read guest.ld.in: {e}");
            std::process::exit(1);
        }
    };
    let script = template
        .replace("@IMAGE_BASE@", &format!("{:#x}", abi::layout::IMAGE_BASE))
        .replace("@IMAGE_END@", &format!("{:#x}", abi::layout::IMAGE_END));
    let path = out.join("guest.ld");
    if let Err(e) = std::fs::write(&path, script) {
        eprintln!("cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
    println!("cargo:rustc-link-arg-bins=-T{}", path.display());
    println!("cargo:rustc-link-arg-bins=--no-pie");
}
