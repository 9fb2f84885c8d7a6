//! A BIOS-bootable raw disk without root or loop devices (shared/notes/qemu-and-images.md §5):
//! an MBR partition table (sfdisk on the file), one ext4 partition filled from a directory at
//! mkfs time (`mkfs.ext4 -d` at an offset), GRUB's boot.img in the MBR and its core.img
//! (grub-mkimage, i386-pc) in the gap before the partition. GRUB loads the bzImage and the
//! initramfs with the profile's command line on the serial console. The GCE form is that disk
//! as `disk.raw` in an oldgnu sparse tarball (the format `gcloud compute images create
//! --source-uri` takes).

use std::path::Path;

use crate::{Error, Result, io_err};

/// Where Debian's grub-pc-bin keeps the i386-pc modules and boot.img.
const GRUB_I386_PC: &str = "/usr/lib/grub/i386-pc";
/// The partition starts at 1 MiB.
const PART_OFFSET: u64 = 1 << 20;

/// Writes `out`: a disk that boots `kernel` (a bzImage) with `initrd` and `cmdline`.
pub fn bootable_raw(kernel: &Path, initrd: &Path, cmdline: &str, out: &Path) -> Result<()> {
    if !Path::new(GRUB_I386_PC).join("boot.img").exists() {
        return Err(Error::Tool {
            tool: "grub".into(),
            detail: format!("{GRUB_I386_PC}/boot.img is missing (package grub-pc-bin)"),
        });
    }
    let bytes = std::fs::read(kernel).map_err(io_err(kernel))?;
    if crate::kernel::payload(&bytes).is_none() {
        return Err(Error::Invalid(format!(
            "{}: GRUB boots a bzImage; this is not one",
            kernel.display()
        )));
    }
    let root = tempfile::tempdir().map_err(io_err(Path::new("a temporary directory")))?;
    let boot = root.path().join("boot");
    let grub = boot.join("grub");
    std::fs::create_dir_all(&grub).map_err(io_err(&grub))?;
    std::fs::write(boot.join("vmlinuz"), &bytes).map_err(io_err(&boot))?;
    std::fs::copy(initrd, boot.join("initrd.gz")).map_err(io_err(initrd))?;
    let cfg = format!(
        "set timeout=0\nserial --unit=0 --speed=115200\nterminal_input serial\n\
         terminal_output serial\nlinux /boot/vmlinuz {cmdline}\ninitrd /boot/initrd.gz\nboot\n"
    );
    std::fs::write(grub.join("grub.cfg"), cfg).map_err(io_err(&grub))?;
    let payload = bytes.len() as u64 + std::fs::metadata(initrd).map_err(io_err(initrd))?.len();
    let size_mib = (payload >> 20) + 64;
    let part_kib = (size_mib << 10) - PART_OFFSET / 1024;
    let _ = std::fs::remove_file(out);
    let f = std::fs::File::create(out).map_err(io_err(out))?;
    f.set_len(size_mib << 20).map_err(io_err(out))?;
    drop(f);
    crate::tool(
        duct::cmd!("sfdisk", "-q", out).stdin_bytes(format!(
            "label: dos\nstart={}, type=83, bootable\n",
            PART_OFFSET / 512
        )),
        "sfdisk",
    )?;
    crate::tool(
        duct::cmd!(
            "mkfs.ext4",
            "-q",
            "-F",
            "-E",
            format!("offset={PART_OFFSET}"),
            "-d",
            root.path(),
            out,
            format!("{part_kib}k")
        ),
        "mkfs.ext4",
    )?;
    let core = root.path().join("core.img");
    crate::tool(
        duct::cmd!(
            "grub-mkimage",
            "-d",
            GRUB_I386_PC,
            "-O",
            "i386-pc",
            "-o",
            &core,
            "-p",
            "(hd0,msdos1)/boot/grub",
            "biosdisk",
            "part_msdos",
            "ext2",
            "linux",
            "normal",
            "configfile",
            "echo",
            "serial",
            "terminal"
        ),
        "grub-mkimage",
    )?;
    let core = std::fs::read(&core).map_err(io_err(&core))?;
    if core.len() as u64 > PART_OFFSET - 512 {
        return Err(Error::Invalid(format!(
            "GRUB's core.img ({} bytes) does not fit before the partition",
            core.len()
        )));
    }
    let boot_img = Path::new(GRUB_I386_PC).join("boot.img");
    let mbr = std::fs::read(&boot_img).map_err(io_err(&boot_img))?;
    let mut disk = std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .map_err(io_err(out))?;
    use std::io::{Seek, SeekFrom, Write};
    // boot.img's first 440 bytes (the partition table after them stays).
    disk.write_all(&mbr[..440]).map_err(io_err(out))?;
    disk.seek(SeekFrom::Start(512)).map_err(io_err(out))?;
    disk.write_all(&core).map_err(io_err(out))?;
    Ok(())
}

/// Writes `out`: `raw` as `disk.raw` in an oldgnu sparse gzip'd tarball (GCE's import form).
pub fn gce_tarball(raw: &Path, out: &Path) -> Result<()> {
    let dir = raw.parent().unwrap_or(Path::new("."));
    if raw.file_name().is_none_or(|n| n != "disk.raw") {
        return Err(Error::Invalid(format!(
            "{}: GCE wants the member named disk.raw",
            raw.display()
        )));
    }
    crate::tool(
        duct::cmd!(
            "tar",
            "--format=oldgnu",
            "-Sczf",
            out,
            "-C",
            dir,
            "disk.raw"
        ),
        "tar",
    )?;
    Ok(())
}
