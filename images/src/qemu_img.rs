//! qemu-img, wrapped once: every disk conversion goes through here.

use std::path::Path;

use crate::Result;

/// Converts raw disk `raw` to qcow2 `out`, then checks with `qemu-img compare` that both hold
/// the same data.
pub fn convert_to_qcow2(raw: &Path, out: &Path) -> Result<()> {
    crate::tool(
        duct::cmd!("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out),
        "qemu-img convert",
    )?;
    crate::tool(
        duct::cmd!("qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, out),
        "qemu-img compare",
    )?;
    Ok(())
}
