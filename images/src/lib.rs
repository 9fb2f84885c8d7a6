//! Host images: a PVM host kernel (a vendor's, or Debian's as the CI default) and an
//! initramfs that carries `pvmc-worker`, the guest image and a host profile, loads the
//! profile's modules and runs the suite at boot, writing its stream
//! (`conformance::target::worker::StreamLine`) to the second serial port.
//!
//! - [`profile`]: the TOML host profiles (`images/profiles/*.toml`).
//! - [`initramfs`]: the newc cpio archive (cpio crate), gzip'd (flate2).
//! - [`kernel`]: an uncompressed `vmlinux` out of a bzImage (QEMU boots it through PVH, which
//!   skips the kernel's own decompression: about 2.8 s under TCG).
//! - [`modules`]: kernel modules by name with their dependencies (from `.modinfo`).
//! - [`kmod`]: out-of-tree modules (Kbuild) built against a kernel's headers.
//! - [`disk`]: a BIOS-bootable raw disk (MBR, ext4, GRUB) without root or loop devices, and
//!   the qcow2 and GCE tarball forms through [`qemu_img`] and `tar`.
//! - [`manifest`]: `image.json`, what a build wrote, read by `--target qemu --host-image`.
//!
//! [`build`] does all of it: `cargo xtask images` calls it.

pub mod disk;
pub mod initramfs;
pub mod kernel;
pub mod kmod;
pub mod manifest;
pub mod modules;
pub mod profile;
pub mod qemu_img;

use std::path::{Path, PathBuf};

/// Errors of image building; each names the file or tool and the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// An input is not what it must be.
    #[error("{0}")]
    Invalid(String),
    /// An external tool failed or is missing.
    #[error("{tool}: {detail}")]
    Tool {
        /// The tool.
        tool: String,
        /// Its error output or why it could not run.
        detail: String,
    },
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |error| Error::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Runs an external tool, capturing its output; `Err` names it with its standard error.
pub(crate) fn tool(expr: duct::Expression, name: &str) -> Result<std::process::Output> {
    let out = expr
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .map_err(|e| Error::Tool {
            tool: name.into(),
            detail: format!("cannot run it: {e}"),
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: name.into(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out)
}

/// Which disk forms to write besides the kernel and initramfs QEMU boots directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `disk.raw`: MBR, one ext4 partition, GRUB.
    Raw,
    /// `disk.qcow2`, converted from the raw disk by qemu-img.
    Qcow2,
    /// `image.tar.gz`: `disk.raw` in an oldgnu sparse tar, the form GCE imports.
    Gce,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 3] = [Format::Raw, Format::Qcow2, Format::Gce];

    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Gce => "gce",
        }
    }

    /// Parses [`Format::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// What [`build`] needs.
#[derive(Clone, Debug)]
pub struct BuildSpec {
    /// The kernel (bzImage or vmlinux).
    pub kernel: PathBuf,
    /// Its modules tree (`lib/modules/<release>`), then directories of modules built out of
    /// tree.
    pub modules: Vec<PathBuf>,
    /// The profile.
    pub profile: profile::Profile,
    /// The `pvmc-worker` binary.
    pub worker: PathBuf,
    /// The guest image.
    pub guest: PathBuf,
    /// A static busybox.
    pub busybox: PathBuf,
    /// The output directory.
    pub out: PathBuf,
    /// Disk forms to write.
    pub formats: Vec<Format>,
}

/// Builds the image into `spec.out` and writes its manifest; returns it.
pub fn build(spec: &BuildSpec) -> Result<manifest::Manifest> {
    std::fs::create_dir_all(&spec.out).map_err(io_err(&spec.out))?;
    let boot_kernel = kernel::for_direct_boot(&spec.kernel, &spec.out)?;
    let mods = modules::resolve(&spec.modules, &spec.profile.modules)?;
    let initrd = spec.out.join("initrd.gz");
    initramfs::build(
        &initramfs::Contents {
            busybox: &spec.busybox,
            worker: &spec.worker,
            guest: &spec.guest,
            profile: &spec.profile,
            modules: &mods,
        },
        &initrd,
    )?;
    let mut m = manifest::Manifest {
        profile: spec.profile.clone(),
        kernel: file_name(&boot_kernel)?,
        initrd: file_name(&initrd)?,
        disks: Vec::new(),
    };
    if !spec.formats.is_empty() {
        let raw = spec.out.join("disk.raw");
        disk::bootable_raw(&spec.kernel, &initrd, &spec.profile.cmdline, &raw)?;
        for f in &spec.formats {
            let path = match f {
                Format::Raw => raw.clone(),
                Format::Qcow2 => {
                    let q = spec.out.join("disk.qcow2");
                    qemu_img::convert_to_qcow2(&raw, &q)?;
                    q
                }
                Format::Gce => {
                    let t = spec.out.join("image.tar.gz");
                    disk::gce_tarball(&raw, &t)?;
                    t
                }
            };
            m.disks.push((f.name().to_string(), file_name(&path)?));
        }
    }
    m.write(&spec.out.join(manifest::FILE))?;
    Ok(m)
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Invalid(format!("{}: no file name", p.display())))
}
