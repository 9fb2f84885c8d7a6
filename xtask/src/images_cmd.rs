//! `cargo xtask images`: a host image (kernel, initramfs with `pvmc-worker`, the guest image and
//! a profile; disks as raw, qcow2 and the GCE tarball) through `pvmc_images::build`.
//!
//! `--debian-kernel` takes Debian's current bookworm kernel (the package `linux-image-amd64`
//! depends on), fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
//! `target/images/debian` (kept there for later builds): the CI default.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use pvmc_images::profile::Profile;
use pvmc_images::{BuildSpec, Format};

use crate::out::{errln, outln};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The host kernel: a bzImage (vmlinuz) or a vmlinux.
    #[arg(long, required_unless_present = "debian_kernel")]
    kernel: Option<PathBuf>,
    /// Its modules tree (`lib/modules/<release>`).
    #[arg(long, required_unless_present = "debian_kernel")]
    modules: Option<PathBuf>,
    /// A directory of modules built out of tree (`cargo xtask kmod build --out`), searched
    /// after the kernel's own modules; repeatable.
    #[arg(long = "module-dir")]
    module_dirs: Vec<PathBuf>,
    /// Download and use Debian's bookworm kernel instead of --kernel/--modules.
    #[arg(long, conflicts_with_all = ["kernel", "modules"])]
    debian_kernel: bool,
    /// The host profile: a name from images/profiles or a .toml path.
    #[arg(long, default_value = "debian-kvm-amd")]
    profile: String,
    /// Output directory (default `target/images/PROFILE`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Disk forms, comma separated: raw, qcow2, gce, or none (QEMU boots the kernel and
    /// initramfs directly without a disk).
    #[arg(long, value_delimiter = ',', default_value = "raw,qcow2,gce")]
    format: Vec<String>,
    /// A static busybox for the initramfs (package busybox-static).
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// The guest image instead of building it.
    #[arg(long)]
    image: Option<PathBuf>,
}

/// Debian's kernel package: (bzImage, modules tree), downloaded into `cache` once.
fn debian_kernel(cache: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(cache).with_context(|| format!("{}", cache.display()))?;
    let deps = duct::cmd!("apt-cache", "depends", "linux-image-amd64")
        .read()
        .context("apt-cache depends linux-image-amd64 (is this Debian?)")?;
    let Some(pkg) = deps.lines().find_map(|l| {
        l.trim().strip_prefix("Depends: ").filter(|p| {
            p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
        })
    }) else {
        bail!("apt-cache depends linux-image-amd64 names no linux-image-<version> package");
    };
    let release = pkg.trim_start_matches("linux-image-").to_string();
    let root = cache.join(&release);
    let kernel = root.join(format!("boot/vmlinuz-{release}"));
    let modules = root.join(format!("lib/modules/{release}"));
    if kernel.exists() && modules.exists() {
        return Ok((kernel, modules));
    }
    errln!("images: downloading {pkg}");
    duct::cmd!("apt-get", "download", pkg)
        .dir(cache)
        .stdout_null()
        .run()
        .with_context(|| format!("apt-get download {pkg}"))?;
    let deb = std::fs::read_dir(cache)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {pkg}_*.deb in {}",
                cache.display()
            )
        })?;
    duct::cmd!("dpkg-deb", "-x", &deb, &root)
        .run()
        .with_context(|| format!("dpkg-deb -x {}", deb.display()))?;
    if !kernel.exists() || !modules.exists() {
        bail!(
            "{}: the package has no {} and {}",
            deb.display(),
            kernel.display(),
            modules.display()
        );
    }
    Ok((kernel, modules))
}

/// `cargo xtask kmod build`.
#[derive(Debug, clap::Args)]
pub struct KmodArgs {
    #[command(subcommand)]
    cmd: KmodCmd,
}

#[derive(Debug, clap::Subcommand)]
enum KmodCmd {
    /// Build an out-of-tree module (a Kbuild directory) for a kernel's headers.
    Build {
        /// The module source (a directory with a Kbuild file).
        #[arg(long)]
        src: PathBuf,
        /// The kernel's build tree or headers (`/usr/src/linux-headers-<release>`).
        #[arg(long)]
        kdir: PathBuf,
        /// Where the build happens and the `.ko` files land.
        #[arg(long, default_value = "target/kmod")]
        out: PathBuf,
    },
}

pub fn kmod(args: KmodArgs) -> anyhow::Result<ExitCode> {
    let KmodCmd::Build { src, kdir, out } = args.cmd;
    let kos = pvmc_images::kmod::build(&src, &kdir, &out)?;
    let release = pvmc_images::kmod::release(&kdir)?;
    for ko in kos {
        outln!("{} (for {release})", ko.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = conformance::guest_build::workspace_root();
    let profile = Profile::find(&args.profile, &root.join("images/profiles"))?;
    let mut formats = Vec::new();
    for f in &args.format {
        match (f.as_str(), Format::from_name(f)) {
            ("none", _) => {}
            (_, Some(x)) => formats.push(x),
            (_, None) => bail!("--format {f}: want raw, qcow2, gce or none"),
        }
    }
    if !args.busybox.is_file() {
        bail!(
            "--busybox {}: no such file (install busybox-static)",
            args.busybox.display()
        );
    }
    let (kernel, modules) = match (args.kernel, args.modules) {
        (Some(k), Some(m)) => (k, m),
        _ => debian_kernel(&root.join("target/images/debian"))?,
    };
    let out = args
        .out
        .unwrap_or_else(|| root.join("target/images").join(&profile.name));
    let guest = match args.image {
        Some(p) => p,
        None => conformance::guest_build::build(&root)?.path,
    };
    let worker_debug = conformance::target::cargo_binary(
        &root,
        "pvmc-worker",
        conformance::target::ssh::WORKER_BIN_VAR,
    )
    .map_err(anyhow::Error::msg)?;
    // The debug build's symbols are most of its size; the initramfs need not carry them.
    std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
    let worker = out.join("pvmc-worker");
    duct::cmd!("strip", "--strip-debug", "-o", &worker, &worker_debug)
        .run()
        .context("strip --strip-debug pvmc-worker (binutils)")?;
    let mut trees = vec![modules];
    trees.extend(args.module_dirs);
    let spec = BuildSpec {
        kernel,
        modules: trees,
        profile,
        worker,
        guest,
        busybox: args.busybox,
        out: out.clone(),
        formats,
    };
    let m = pvmc_images::build(&spec)?;
    outln!(
        "image {} ({}) in {}",
        m.profile.name,
        m.profile.description,
        out.display()
    )?;
    let mut files = vec![m.kernel.clone(), m.initrd.clone()];
    files.extend(m.disks.iter().map(|(_, f)| f.clone()));
    for f in files {
        let len = std::fs::metadata(out.join(&f))
            .map(|m| m.len())
            .unwrap_or(0);
        outln!("  {f:<16} {:>8.1} MiB", len as f64 / (1 << 20) as f64)?;
    }
    outln!("  {}", pvmc_images::manifest::FILE)?;
    Ok(ExitCode::SUCCESS)
}
