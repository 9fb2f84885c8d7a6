//! `--target qemu --host-image DIR`: a host image (`cargo xtask images`) booted as an L1 host
//! under QEMU, the suite running inside it on the L1 kernel's `/dev/kvm`.
//!
//! The image's initramfs gets a second archive appended at run time with the selected
//! instance ids and the timeout (`pvmc_images::initramfs::run_archive`); QEMU boots the
//! image's kernel directly (`-kernel`/`-initrd`, qboot, `-cpu` and `-m` from the profile), the
//! first serial port goes to a console log and the second to a results file that the worker's
//! stream (`super::worker::StreamLine`) fills, read as it grows: every result reaches the report
//! as it arrives, so a host that dies mid-run loses nothing that finished. QEMU is controlled
//! over QMP (the qapi crate): handshake after start, `quit` at the end, at the deadline or on
//! cancellation, then a kill if it is still there. What the host did not report is CRASH with
//! the console's last lines. The L1 kernel's lines logged during each instance come with its
//! result and go to the suite's host health ([`Target::watch_host`]): attached to the instance,
//! and a splat fails the run, as on the local host.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pvmc_images::manifest::Manifest;
use runner::detect::{HostInfo, KvmStatus};
use runner::qemu::{Accel, Qemu};

use super::worker::{ForwardedLog, StreamLine, StreamReader};
use super::{Target, TargetOptions};
use crate::catalog::Instance;
use crate::outcome::Outcome;
use crate::result::CaseResult;

/// How long the host may take from QEMU's start to its first result (TCG boots a
/// distribution kernel in a few seconds; loading modules and the first VM take more).
pub const BOOT_ALLOWANCE: Duration = Duration::from_secs(180);

/// A host image under QEMU.
pub struct QemuHostTarget {
    qemu: Result<Qemu, String>,
    manifest: Manifest,
    dir: PathBuf,
    host: HostInfo,
    /// The L1 kernel's lines that came with results and the suite has not taken yet.
    kernel_lines: ForwardedLog,
    /// The profile's parameter set the modules load with.
    param_set: String,
}

impl QemuHostTarget {
    /// The image in `dir` (or its `image.json`), its modules loaded with parameter set
    /// `param_set` (default: their own parameters); `Err` when it is not a host image or has no
    /// such set.
    pub fn new(image: &Path, param_set: Option<&str>) -> Result<Self, String> {
        let (manifest, dir) = Manifest::load(image).map_err(|e| format!("--host-image: {e}"))?;
        let sets = manifest.profile.set_names();
        let param_set = param_set
            .unwrap_or(pvmc_images::profile::DEFAULT_SET)
            .to_string();
        if !sets.contains(&param_set) {
            return Err(format!(
                "--param-set {param_set}: profile {} has the sets {}",
                manifest.profile.name,
                sets.join(", ")
            ));
        }
        let accel = Accel::detect();
        let qemu = Qemu::find(accel, 0).map_err(|e| e.to_string());
        let host = HostInfo {
            kernel: format!(
                "{} (host image {}, booting)",
                manifest.kernel,
                dir.display()
            ),
            cpu: format!(
                "QEMU -cpu {} ({})",
                manifest.profile.machine.qemu_cpu,
                accel.name()
            ),
            kvm_backend: format!("qemu-host-image-{}", accel.name()),
            kvm: match &qemu {
                Ok(_) => KvmStatus::Usable,
                Err(e) => KvmStatus::Unusable(e.clone()),
            },
            dialect: None,
            dialect_evidence: format!(
                "profile {}, parameter set {param_set}, expects {}; the L1 host's worker \
                 reports its own",
                manifest.profile.name, manifest.profile.expected_dialect
            ),
            cpuid_differs: Vec::new(),
        };
        Ok(Self {
            qemu,
            manifest,
            dir,
            host,
            kernel_lines: ForwardedLog::default(),
            param_set,
        })
    }

    fn args(&self, qemu: &Qemu, work: &Path, initrd: &Path) -> Vec<String> {
        let m = &self.manifest;
        let machine = &m.profile.machine;
        let kernel = self.dir.join(&m.kernel);
        let mut a = qemu.machine_args(&machine.qemu_cpu, machine.memory_mib.into(), &kernel);
        a.extend(["-initrd".into(), initrd.display().to_string()]);
        a.extend(["-append".into(), m.profile.cmdline.clone()]);
        for f in ["console.log", "results.out"] {
            a.extend(["-serial".into(), format!("file:{}", work.join(f).display())]);
        }
        a.extend(runner::qemu::qmp_args(&work.join("qmp.sock")));
        a
    }
}

/// QMP to a running QEMU.
struct Monitor(Option<std::os::unix::net::UnixStream>);

impl Monitor {
    /// Connects and does the capabilities handshake, retrying while QEMU starts.
    fn connect(sock: &Path, child: &mut Child) -> Result<Self, String> {
        let t0 = Instant::now();
        loop {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(sock) {
                let mut q = qapi::Qmp::from_stream(&s);
                q.handshake().map_err(|e| format!("QMP handshake: {e}"))?;
                return Ok(Self(Some(s)));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("QEMU exited at start ({status})"));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("no QMP socket at {} after 10 s", sock.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks QEMU to quit (errors ignored: it may be gone already).
    fn quit(&mut self) {
        if let Some(s) = self.0.take() {
            let mut q = qapi::Qmp::from_stream(&s);
            let _ = q.execute(&qapi::qmp::quit {});
        }
    }
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let last: Vec<&str> = text
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(lines)
        .collect();
    last.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

impl Target for QemuHostTarget {
    fn name(&self) -> &str {
        "qemu"
    }

    fn host(&self) -> &HostInfo {
        &self.host
    }

    fn watch_host(&self) -> Result<Box<dyn crate::host_health::HostLog>, String> {
        Ok(Box::new(self.kernel_lines.clone()))
    }

    fn usable(&self) -> Result<(), String> {
        self.qemu.as_ref().map(drop).map_err(Clone::clone)
    }

    fn host_outlives_runs(&self) -> bool {
        false
    }

    fn run(
        &self,
        instances: &[Instance],
        opts: &TargetOptions,
        sink: &mut dyn FnMut(usize, CaseResult),
    ) {
        let qemu = match &self.qemu {
            Ok(q) => q,
            Err(e) => {
                let why = format!("no usable QEMU: {e}");
                return super::all_without_run(instances, Outcome::Skip, &why, sink);
            }
        };
        if let Err(e) = self.boot_and_read(qemu, instances, opts, sink) {
            let why = format!("host image setup failed: {e}");
            super::all_without_run(instances, Outcome::Error, &why, sink);
        }
    }
}

impl QemuHostTarget {
    fn boot_and_read(
        &self,
        qemu: &Qemu,
        instances: &[Instance],
        opts: &TargetOptions,
        sink: &mut dyn FnMut(usize, CaseResult),
    ) -> Result<(), String> {
        let work = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let ids: Vec<String> = instances.iter().map(Instance::id).collect();
        let base = self.dir.join(&self.manifest.initrd);
        let mut initrd = std::fs::read(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let timeout_ms = u64::try_from(opts.timeout.as_millis()).unwrap_or(u64::MAX);
        initrd.extend(
            pvmc_images::initramfs::run_archive(&ids, timeout_ms, &self.param_set)
                .map_err(|e| e.to_string())?,
        );
        let initrd_path = work.path().join("initrd.gz");
        std::fs::write(&initrd_path, initrd)
            .map_err(|e| format!("{}: {e}", initrd_path.display()))?;
        let results = work.path().join("results.out");
        std::fs::write(&results, b"").map_err(|e| format!("{}: {e}", results.display()))?;
        let mut child = Command::new(qemu.binary())
            .args(self.args(qemu, work.path(), &initrd_path))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: cannot start QEMU: {e}", qemu.binary().display()))?;
        let mut monitor = match Monitor::connect(&work.path().join("qmp.sock"), &mut child) {
            Ok(m) => m,
            Err(e) => {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                let _ = child.wait();
                return Err(format!("{e}: {}", err.trim()));
            }
        };
        let index: HashMap<String, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let budget: Duration = instances
            .iter()
            .map(|i| crate::exec::timeout_of(i, opts.timeout))
            .sum();
        let deadline = Instant::now() + BOOT_ALLOWANCE + budget;
        let mut reader = StreamReader::default();
        let mut reported = std::collections::HashSet::new();
        let mut offset = 0u64;
        let mut ended = None;
        let mut file =
            std::fs::File::open(&results).map_err(|e| format!("{}: {e}", results.display()))?;
        let why_stopped = loop {
            // Whether QEMU had exited before this read: then the read below has everything the
            // host wrote.
            let exited = child.try_wait().ok().flatten();
            let mut chunk = String::new();
            let _ = file.seek(SeekFrom::Start(offset));
            if let Ok(n) = file.read_to_string(&mut chunk) {
                offset += n as u64;
            }
            for line in reader.push(&chunk) {
                match line {
                    StreamLine::Host(h) => eprintln!(
                        "qemu host image: kernel {}, backend {}, dialect {}, kvm {}",
                        h.kernel,
                        h.kvm_backend,
                        h.dialect.as_deref().unwrap_or("none"),
                        h.kvm
                    ),
                    StreamLine::Result(r) => {
                        if let Some(&i) = index.get(&r.id)
                            && reported.insert(r.id.clone())
                        {
                            self.kernel_lines.forward(&r);
                            sink(i, *r);
                        }
                    }
                    StreamLine::End(e) => ended = Some(e),
                }
            }
            if let Some(e) = &ended {
                break format!("the host's worker ended ({}) before reporting it", e.status);
            }
            if let Some(status) = exited {
                break format!("QEMU exited ({status}) before the host reported it");
            }
            if opts.cancel.is_cancelled() {
                break String::new();
            }
            if Instant::now() > deadline {
                break format!(
                    "the host reported nothing more within {} s",
                    (BOOT_ALLOWANCE + budget).as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        monitor.quit();
        let t0 = Instant::now();
        while child.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        if opts.cancel.is_cancelled() {
            return Ok(());
        }
        let console_log = work.path().join("console.log");
        // The image's own lines (module loading, the loaded modules' kernel messages).
        for l in std::fs::read_to_string(&console_log)
            .unwrap_or_default()
            .lines()
        {
            if l.trim_start().starts_with("pvmc:") {
                eprintln!("qemu host image console: {}", l.trim());
            }
        }
        let console = tail_of(&console_log, 6);
        for (i, inst) in instances.iter().enumerate() {
            if !reported.contains(&inst.id()) {
                let detail = format!("{why_stopped}; the console ends: {console}");
                sink(i, CaseResult::without_run(inst, Outcome::Crash, detail));
            }
        }
        Ok(())
    }
}
