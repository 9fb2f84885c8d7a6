//! The QEMU backend: each VM is one `qemu-system-x86_64` process that boots the prepared guest
//! RAM directly (the way kvm-unit-tests runs its tests), under TCG here or `-accel kvm` on a
//! machine with VMX/SVM.
//!
//! [`crate::boot`] writes page tables, image and boot info into a host-side copy of guest RAM
//! as for any backend; [`Vm::run`] turns that and the start state into a PVH boot file
//! ([`pvh`]) and starts QEMU on it: `-M pc` with qboot (the fastest firmware measured here,
//! and the one whose boot never hangs under load), no default devices, `-no-reboot`, and an
//! `isa-debugcon` on the report port whose bytes go to QEMU's standard output. The guest sends
//! its messages as a byte stream there ([`abi::report::Channel::Stream`]), which this module
//! decodes and hands to the [`ExitHandler`]; VMM requests get no reply (the guest takes them
//! as `Unsupported`). The run ends when the handler stops it (QEMU is killed), at the timeout
//! or cancellation (killed), or when QEMU exits by itself: with `-no-reboot` a triple fault
//! exits QEMU with status 0, which is [`RunEnd::Shutdown`].
//!
//! What the QEMU VM cannot do, [`Backend::create_vm`] refuses up front: several vCPUs (APs
//! would need INIT/SIPI; the KVM backend starts them directly) and high vCPU ids.
//!
//! Each QEMU also listens for QMP on a private socket: when a run ends at its timeout or with
//! an unexpected message, the registers (`info registers` through `human-monitor-command`,
//! the qapi crate) go into [`Vm::register_dump`] for the CRASH detail.

pub mod pvh;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use abi::report::{MESSAGE_MAGIC, MESSAGE_SIZE, Message};

use crate::memory::MmapRam;
use crate::vm::{
    Action, Backend, ExitHandler, GuestRam, InitialState, RunEnd, RunLimits, VcpuState, Vm,
    VmOptions,
};
use crate::{Result, RunnerError};

/// Environment variable naming the QEMU binary (else `qemu-system-x86_64` on `PATH`).
pub const QEMU_VAR: &str = "PVMC_QEMU";
/// Environment variable naming the firmware (else qboot from QEMU's data directory, else
/// QEMU's default SeaBIOS).
pub const FIRMWARE_VAR: &str = "PVMC_QEMU_FIRMWARE";
/// Where Debian's qemu-system-data puts qboot.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// QEMU's `-m`: guest RAM, the trampoline above it, and room for the firmware's tables.
const MEMORY_MIB: u64 = 64;
/// How much of QEMU's standard error a CRASH detail carries.
const STDERR_TAIL: usize = 1500;

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// The TCG emulator (any machine).
    Tcg,
    /// Hardware virtualization through the host's `/dev/kvm` (a machine with VMX/SVM).
    Kvm,
}

impl Accel {
    /// QEMU's name.
    pub const fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    /// KVM when this machine's CPU flags show VMX or SVM (QEMU's `-accel kvm` needs them;
    /// a PVM host's `/dev/kvm` runs only PVM guests), else TCG.
    pub fn detect() -> Self {
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw = flags
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if hw && Path::new("/dev/kvm").exists() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// A QEMU installation to run guests with.
#[derive(Clone, Debug)]
pub struct Qemu {
    binary: PathBuf,
    firmware: Option<PathBuf>,
    accel: Accel,
    version: String,
    tsc_khz: u32,
}

impl Qemu {
    /// The QEMU of [`QEMU_VAR`] or `PATH`, checked by running `--version`; the firmware of
    /// [`FIRMWARE_VAR`] or qboot. `tsc_khz` is what the guest is told its TSC runs at (under
    /// TCG and KVM alike QEMU's TSC is the host's).
    pub fn find(accel: Accel, tsc_khz: u32) -> Result<Self> {
        let binary = std::env::var_os(QEMU_VAR)
            .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from);
        let out = Command::new(&binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                RunnerError::Setup(format!(
                    "{}: cannot run QEMU ({e}); install qemu-system-x86 or set {QEMU_VAR}",
                    binary.display()
                ))
            })?;
        if !out.status.success() {
            return Err(RunnerError::Setup(format!(
                "{} --version: {}",
                binary.display(),
                out.status
            )));
        }
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("QEMU")
            .trim()
            .to_string();
        let firmware = match std::env::var_os(FIRMWARE_VAR) {
            Some(f) => Some(PathBuf::from(f)),
            None => Path::new(QBOOT).exists().then(|| PathBuf::from(QBOOT)),
        };
        Ok(Self {
            binary,
            firmware,
            accel,
            version,
            tsc_khz,
        })
    }

    /// The QEMU binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The first line of `qemu-system-x86_64 --version`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The accelerator.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The firmware passed with `-bios`, if any.
    pub fn firmware(&self) -> Option<&Path> {
        self.firmware.as_deref()
    }

    /// The command line for booting `kernel` (everything but the binary).
    pub fn args(&self, kernel: &Path) -> Vec<String> {
        let mut a = self.machine_args("max", MEMORY_MIB, kernel);
        a.extend(["-serial", "none", "-monitor", "none"].map(String::from));
        a.extend([
            "-chardev".into(),
            "stdio,id=report,signal=off".into(),
            "-device".into(),
            format!(
                "isa-debugcon,iobase={:#x},chardev=report",
                abi::report::REPORT_PORT
            ),
        ]);
        a
    }

    /// What every QEMU of the suite gets: the pc machine with the firmware, no default devices
    /// or user config, no display, exit instead of reboot, one vCPU of model `cpu`, `memory_mib`
    /// of RAM, the accelerator, and `kernel` booted directly.
    pub fn machine_args(&self, cpu: &str, memory_mib: u64, kernel: &Path) -> Vec<String> {
        let mut a: Vec<String> = [
            "-M",
            "pc",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-smp",
            "1",
        ]
        .map(String::from)
        .to_vec();
        a.extend(["-accel".into(), self.accel.name().into()]);
        a.extend(["-cpu".into(), cpu.into()]);
        a.extend(["-m".into(), memory_mib.to_string()]);
        if let Some(fw) = &self.firmware {
            a.extend(["-bios".into(), fw.display().to_string()]);
        }
        a.extend(["-kernel".into(), kernel.display().to_string()]);
        a
    }
}

/// `-qmp` on the unix socket `sock`, QEMU listening without waiting for a client.
pub fn qmp_args(sock: &Path) -> [String; 2] {
    [
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ]
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn create_vm(&self, opts: &VmOptions) -> Result<Box<dyn Vm>> {
        if opts.vcpus != 1 {
            return Err(RunnerError::Setup(format!(
                "the QEMU backend boots one vCPU, not {}",
                opts.vcpus
            )));
        }
        if opts.high_vcpu_ids {
            return Err(RunnerError::Setup(
                "the QEMU backend has no high vCPU ids".into(),
            ));
        }
        Ok(Box::new(QemuVm {
            qemu: self.clone(),
            ram: MmapRam::new(opts.ram)?,
            state: None,
            stderr: Arc::new(Mutex::new(String::new())),
            registers: Mutex::new(String::new()),
        }))
    }
}

/// One guest in QEMU (see the module documentation).
pub struct QemuVm {
    qemu: Qemu,
    ram: MmapRam,
    state: Option<VcpuState>,
    stderr: Arc<Mutex<String>>,
    /// `info registers` when the run ended abnormally, on one line.
    registers: Mutex<String>,
}

/// `info registers` of the QEMU listening on `sock`, on one line (`None` if it does not
/// answer).
fn registers_over_qmp(sock: &Path) -> Option<String> {
    let stream = std::os::unix::net::UnixStream::connect(sock).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut qmp = qapi::Qmp::from_stream(&stream);
    qmp.handshake().ok()?;
    let text = qmp
        .execute(&qapi::qmp::human_monitor_command {
            command_line: "info registers".into(),
            cpu_index: None,
        })
        .ok()?;
    Some(one_line_registers(&text))
}

/// The general and control registers of an `info registers` text, on one line.
pub fn one_line_registers(text: &str) -> String {
    let wanted = [
        "RAX=", "RSI=", "R8 =", "R12=", "RIP=", "CS =", "SS =", "CR0=",
    ];
    text.lines()
        .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Splits QEMU's report stream into messages: each starts with [`MESSAGE_MAGIC`] and is
/// [`MESSAGE_SIZE`] bytes long; bytes before a magic (none are expected) are counted and
/// dropped.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    /// Bytes dropped because no message started with them.
    pub dropped: usize,
}

impl StreamDecoder {
    /// Adds `bytes`; returns the messages they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Message> {
        self.buf.extend_from_slice(bytes);
        let magic = MESSAGE_MAGIC.to_le_bytes();
        let mut out = Vec::new();
        loop {
            let start = self.buf.windows(4).position(|w| w == magic);
            let Some(start) = start else {
                // Keep a possible partial magic at the end.
                let keep = self.buf.len().min(3);
                self.dropped += self.buf.len() - keep;
                self.buf.drain(..self.buf.len() - keep);
                return out;
            };
            self.dropped += start;
            self.buf.drain(..start);
            if self.buf.len() < MESSAGE_SIZE {
                return out;
            }
            let mut raw = [0u8; MESSAGE_SIZE];
            raw.copy_from_slice(&self.buf[..MESSAGE_SIZE]);
            self.buf.drain(..MESSAGE_SIZE);
            out.push(Message::from_bytes(&raw));
        }
    }
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(STDERR_TAIL);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].trim()
}

impl QemuVm {
    fn boot_file(&self) -> Result<tempfile::NamedTempFile> {
        let Some(state) = &self.state else {
            return Err(RunnerError::Setup(
                "QEMU VM run before its initial state was set".into(),
            ));
        };
        let size = usize::try_from(self.ram.size())
            .map_err(|_| RunnerError::Setup("guest RAM too large".into()))?;
        let mut ram = vec![0u8; size];
        self.ram.read(0, &mut ram)?;
        // Room above RAM for the trampoline; the top 16 MiB are the firmware's.
        let file = pvh::boot_file(&ram, state, (MEMORY_MIB - 16) << 20)?;
        let mut tmp = tempfile::Builder::new()
            .prefix("pvmc-qemu-boot-")
            .suffix(".elf")
            .tempfile()
            .map_err(|e| RunnerError::Setup(format!("cannot create the QEMU boot file: {e}")))?;
        std::io::Write::write_all(&mut tmp, &file)
            .map_err(|e| RunnerError::Setup(format!("cannot write the QEMU boot file: {e}")))?;
        Ok(tmp)
    }
}

/// What the reader thread sends.
enum Chunk {
    Bytes(Vec<u8>),
    Eof,
}

impl Vm for QemuVm {
    fn memory(&self) -> &dyn GuestRam {
        &self.ram
    }

    fn set_initial_state(&mut self, state: &InitialState) -> Result<()> {
        match state.vcpus.as_slice() {
            [one] => {
                self.state = Some(one.clone());
                Ok(())
            }
            more => Err(RunnerError::Setup(format!(
                "the QEMU backend boots one vCPU, not {}",
                more.len()
            ))),
        }
    }

    fn tsc_khz(&self) -> Result<u32> {
        Ok(self.qemu.tsc_khz)
    }

    fn report_channel(&self) -> abi::report::Channel {
        abi::report::Channel::Stream
    }

    fn run(
        &mut self,
        handler: &mut (dyn ExitHandler + Send),
        limits: &RunLimits,
    ) -> Result<RunEnd> {
        if limits.cancel.is_cancelled() {
            return Ok(RunEnd::Cancelled);
        }
        let boot = self.boot_file()?;
        let qmp_dir = tempfile::Builder::new()
            .prefix("pvmc-qemu-qmp-")
            .tempdir()
            .map_err(|e| RunnerError::Setup(format!("cannot create the QMP directory: {e}")))?;
        let qmp = qmp_dir.path().join("qmp.sock");
        let mut child = Command::new(&self.qemu.binary)
            .args(self.qemu.args(boot.path()))
            .args(qmp_args(&qmp))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                RunnerError::Setup(format!(
                    "{}: cannot start QEMU: {e}",
                    self.qemu.binary.display()
                ))
            })?;
        let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RunnerError::Setup(
                "QEMU's standard streams are missing".into(),
            ));
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Chunk::Eof);
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Chunk::Bytes(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let err_sink = Arc::clone(&self.stderr);
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            if let Ok(mut e) = err_sink.lock() {
                *e = s;
            }
        });
        let deadline = Instant::now() + limits.timeout;
        let mut decoder = StreamDecoder::default();
        let end = 'run: loop {
            if limits.cancel.is_cancelled() {
                break RunEnd::Cancelled;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break RunEnd::Timeout(limits.timeout);
            }
            match rx.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(Chunk::Bytes(b)) => {
                    for msg in decoder.push(&b) {
                        match handler.report(&msg) {
                            Action::Continue | Action::Serve(_) | Action::Reply(_) => {}
                            Action::Stop => break 'run RunEnd::Stopped,
                            Action::Unexpected(why) => break 'run RunEnd::Unexpected(why),
                        }
                    }
                }
                Ok(Chunk::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    let _ = err_reader.join();
                    return match status {
                        Ok(s) if s.success() => Ok(RunEnd::Shutdown),
                        Ok(s) => Err(RunnerError::Setup(format!(
                            "QEMU exited with {s}: {}",
                            self.stderr
                                .lock()
                                .map(|e| tail(&e).to_string())
                                .unwrap_or_default()
                        ))),
                        Err(e) => Err(RunnerError::Setup(format!("waiting for QEMU: {e}"))),
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        };
        if matches!(end, RunEnd::Timeout(_) | RunEnd::Unexpected(_))
            && let Some(regs) = registers_over_qmp(&qmp)
            && let Ok(mut r) = self.registers.lock()
        {
            *r = regs;
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = err_reader.join();
        Ok(end)
    }

    fn register_dump(&self) -> String {
        let err = self
            .stderr
            .lock()
            .map(|e| tail(&e).to_string())
            .unwrap_or_default();
        let regs = self.registers.lock().map(|r| r.clone()).unwrap_or_default();
        let regs = if regs.is_empty() {
            "(QEMU did not answer info registers)".to_string()
        } else {
            regs
        };
        if err.is_empty() {
            regs
        } else {
            format!("{regs}; QEMU said: {err}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::report::MessageKind;

    #[test]
    fn the_decoder_splits_messages_across_chunks_and_drops_noise() {
        let mut m = Message::new(MessageKind::Log);
        m.text = abi::fixed_str("hello");
        let bytes = m.to_bytes();
        let mut d = StreamDecoder::default();
        assert!(d.push(b"xx").is_empty());
        assert!(d.push(&bytes[..100]).is_empty());
        let mut rest = bytes[100..].to_vec();
        rest.extend_from_slice(&bytes[..2]);
        let got = d.push(&rest);
        assert_eq!(got, vec![m]);
        assert_eq!(d.dropped, 2);
        assert_eq!(d.push(&bytes[2..]), vec![m]);
    }

    #[test]
    fn the_command_line_puts_the_report_port_on_a_debugcon() {
        let q = Qemu {
            binary: "qemu-system-x86_64".into(),
            firmware: Some(QBOOT.into()),
            accel: Accel::Tcg,
            version: String::new(),
            tsc_khz: 0,
        };
        let a = q.args(Path::new("/tmp/k.elf")).join(" ");
        assert!(a.contains("-M pc -nodefaults"), "{a}");
        assert!(a.contains("-no-reboot"), "{a}");
        assert!(a.contains("-accel tcg"), "{a}");
        assert!(
            a.contains(&format!(
                "isa-debugcon,iobase={:#x}",
                abi::report::REPORT_PORT
            )),
            "{a}"
        );
        assert!(a.contains("-bios /usr/share/qemu/qboot.rom"), "{a}");
    }

    #[test]
    fn info_registers_is_condensed_to_one_line() {
        let text = "RAX=0000000000000001 RBX=0000000000000002\r\n\
                    RSI=0000000000000003 RDI=0000000000000004\r\n\
                    RIP=0000000000201000 RFL=00000002 [-------] CPL=0 II=0\r\n\
                    ES =0018 0000000000000000 ffffffff 00c09300\r\n\
                    CS =0010 0000000000000000 ffffffff 00a09b00\r\n\
                    CR0=80050033 CR2=0000000000000000 CR3=0000000000002000 CR4=00000020\r\n";
        let one = one_line_registers(text);
        assert!(
            one.starts_with("RAX=0000000000000001 RBX=0000000000000002; RSI="),
            "{one}"
        );
        assert!(one.contains("RIP=0000000000201000") && one.contains("CR3=0000000000002000"));
        assert!(!one.contains("ES =") && !one.contains('\n'), "{one}");
    }

    #[test]
    fn several_vcpus_are_refused_up_front() {
        let q = Qemu {
            binary: "qemu-system-x86_64".into(),
            firmware: None,
            accel: Accel::Tcg,
            version: String::new(),
            tsc_khz: 0,
        };
        let opts = VmOptions {
            vcpus: 2,
            ..VmOptions::default()
        };
        assert!(q.create_vm(&opts).is_err());
    }
}
