//! `image.json`: what `build` wrote into an image directory (file names relative to it), for
//! `--target qemu --host-image DIR` and `--target gce`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::profile::Profile;
use crate::{Error, Result, io_err};

/// The manifest's file name in the image directory.
pub const FILE: &str = "image.json";

/// An image directory's contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The profile it was built with.
    pub profile: Profile,
    /// The kernel QEMU boots directly (vmlinux when it could be extracted).
    pub kernel: String,
    /// The initramfs.
    pub initrd: String,
    /// Disk forms written: (format name, file).
    pub disks: Vec<(String, String)>,
}

impl Manifest {
    /// Writes it as JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Invalid(format!("manifest: {e}")))?;
        std::fs::write(path, text).map_err(io_err(path))
    }

    /// Reads the manifest of image directory `dir` (or the manifest file itself); returns it
    /// and the directory.
    pub fn load(dir_or_file: &Path) -> Result<(Self, PathBuf)> {
        let (file, dir) = if dir_or_file.is_dir() {
            (dir_or_file.join(FILE), dir_or_file.to_path_buf())
        } else {
            let dir = dir_or_file.parent().unwrap_or(Path::new(".")).to_path_buf();
            (dir_or_file.to_path_buf(), dir)
        };
        let text = std::fs::read_to_string(&file).map_err(io_err(&file))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!("{}: not an image manifest: {e}", file.display()))
        })?;
        for f in [&m.kernel, &m.initrd] {
            if !dir.join(f).is_file() {
                return Err(Error::Invalid(format!(
                    "{}: names {f}, which is not in {}",
                    file.display(),
                    dir.display()
                )));
            }
        }
        Ok((m, dir))
    }
}
