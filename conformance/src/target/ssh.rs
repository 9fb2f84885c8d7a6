//! The `ssh` target: a remote PVM host reached with OpenSSH. At open, it makes a private
//! directory there (`mktemp -d`), copies the `pvmc-worker` binary and the guest image into it
//! (over ssh, through `cat`: no scp or SFTP server needed), and asks the worker for the host (`pvmc-worker host`); each of `jobs` workers is
//! then one `ssh HOST DIR/pvmc-worker run ...` speaking the worker protocol (`super::worker`),
//! so results stream back as they finish and a lost connection costs only the instance it
//! was running (CRASH). The directory is removed when the target is dropped: after a complete
//! run, a failed one, or an interrupted one (SIGINT/SIGTERM cancel the run, which returns).
//!
//! Each result carries the remote kernel's lines logged while it ran (the worker reads
//! `/dev/kmsg` there when the ssh user may), which go to the suite's host health.
//!
//! Every `ssh` runs with `BatchMode=yes` (no password prompts: a key or an agent is
//! needed) and the `-o` options of `--ssh-option`. The worker binary must run on the remote:
//! same architecture and a glibc at least as new as the one it was built against.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use runner::detect::HostInfo;

use super::{Target, TargetOptions, worker};
use crate::catalog::Instance;
use crate::result::CaseResult;

/// Environment variable naming the `pvmc-worker` binary to copy instead of building it.
pub const WORKER_BIN_VAR: &str = "PVMC_WORKER_BIN";

/// Prefix of the remote directory (`mktemp -d PREFIX.XXXXXX`).
pub const REMOTE_PREFIX: &str = "/tmp/pvmc-ssh";

/// Builds `pvmc-worker` in the workspace at `root` (dev profile) or takes [`WORKER_BIN_VAR`].
pub fn worker_binary(root: &Path) -> Result<PathBuf, String> {
    super::cargo_binary(root, "pvmc-worker", WORKER_BIN_VAR)
}

/// A destination and the options of every connection to it.
#[derive(Clone, Debug)]
pub struct Ssh {
    dest: String,
    options: Vec<String>,
}

impl Ssh {
    /// `dest` (`[USER@]HOST`) with `-o` options `options` (`Port=2222`, ...).
    pub fn new(dest: &str, options: &[String]) -> Result<Self, String> {
        if dest.is_empty() || dest.starts_with('-') || dest.contains(char::is_whitespace) {
            return Err(format!("--host {dest:?}: not a [USER@]HOST destination"));
        }
        if let Some(bad) = options
            .iter()
            .find(|o| !o.contains('=') || o.starts_with('-'))
        {
            return Err(format!(
                "--ssh-option {bad:?}: want KEY=VALUE (an ssh -o option)"
            ));
        }
        Ok(Self {
            dest: dest.to_string(),
            options: options.to_vec(),
        })
    }

    /// `ssh DEST -- words...` (the remote shell joins the words).
    pub fn command(&self, words: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd.arg(&self.dest).arg("--").args(words);
        cmd
    }

    /// Runs `words` remotely; its standard output, or an error naming the command.
    fn output(&self, words: &[&str]) -> Result<String, String> {
        let what = format!("ssh {} {}", self.dest, words.join(" "));
        self.run(words, Stdio::null(), &what)
    }

    /// Copies `local` to `remote` on the destination (through `cat` on the remote, so
    /// neither scp nor an SFTP server is needed) and sets its mode to `mode`.
    fn copy(&self, local: &Path, remote: &str, mode: &str) -> Result<(), String> {
        let file = std::fs::File::open(local)
            .map_err(|e| format!("{}: cannot read: {e}", local.display()))?;
        let what = format!("copying {} to {}:{remote}", local.display(), self.dest);
        let words = ["cat", ">", remote, "&&", "chmod", mode, remote];
        self.run(&words, file.into(), &what).map(drop)
    }

    /// Runs `words` remotely with `stdin`; its standard output, or an error that starts with
    /// `what` and carries the remote's standard error.
    fn run(&self, words: &[&str], stdin: Stdio, what: &str) -> Result<String, String> {
        let out = self
            .command(words)
            .stdin(stdin)
            .output()
            .map_err(|e| format!("cannot run ssh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{what}: {} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A remote host with the worker and the image copied to it.
pub struct SshTarget {
    ssh: Ssh,
    dir: String,
    host: HostInfo,
    kernel_lines: worker::ForwardedLog,
}

impl SshTarget {
    /// Prepares the remote host: directory, `worker` and `image` copied, host detected. On an
    /// error, whatever was made there is removed again.
    pub fn new(ssh: Ssh, worker: &Path, image: &Path) -> Result<Self, String> {
        let made = ssh.output(&["mktemp", "-d", &format!("{REMOTE_PREFIX}.XXXXXX")])?;
        let dir = made.trim().to_string();
        if !dir.starts_with(REMOTE_PREFIX) || dir.contains(char::is_whitespace) {
            return Err(format!("ssh {}: mktemp -d said {made:?}", ssh.dest));
        }
        let mut target = Self {
            ssh,
            dir,
            host: runner::detect::HostInfo {
                kernel: String::new(),
                cpu: String::new(),
                kvm_backend: String::new(),
                kvm: runner::detect::KvmStatus::Unusable("not detected yet".into()),
                dialect: None,
                dialect_evidence: String::new(),
                cpuid_differs: Vec::new(),
            },
            kernel_lines: worker::ForwardedLog::default(),
        };
        eprintln!("ssh: working in {}:{}", target.ssh.dest, target.dir);
        // From here on, dropping `target` removes the directory.
        target.ssh.copy(worker, &target.worker(), "0700")?;
        target.ssh.copy(image, &target.image(), "0600")?;
        let line = target.ssh.output(&[&target.worker(), "host"])?;
        let report: crate::report::HostReport = serde_json::from_str(line.trim())
            .map_err(|e| format!("{}: pvmc-worker host said {line:?}: {e}", target.ssh.dest))?;
        target.host = report.to_host_info()?;
        target.host.dialect_evidence = format!(
            "{} (over ssh to {})",
            target.host.dialect_evidence, target.ssh.dest
        );
        Ok(target)
    }

    /// The remote directory (gone once the target is dropped).
    pub fn remote_dir(&self) -> &str {
        &self.dir
    }

    fn worker(&self) -> String {
        format!("{}/pvmc-worker", self.dir)
    }

    fn image(&self) -> String {
        format!("{}/guest.elf", self.dir)
    }

    fn command(&self, timeout: Duration) -> Command {
        let ms = timeout.as_millis().to_string();
        let (worker, image) = (self.worker(), self.image());
        self.ssh
            .command(&[&worker, "run", "--image", &image, "--timeout-ms", &ms])
    }
}

impl Drop for SshTarget {
    fn drop(&mut self) {
        if let Err(e) = self.ssh.output(&["rm", "-rf", &self.dir]) {
            eprintln!(
                "warning: could not remove {} on {}: {e}",
                self.dir, self.ssh.dest
            );
        }
    }
}

impl Target for SshTarget {
    fn name(&self) -> &str {
        "ssh"
    }

    fn host(&self) -> &HostInfo {
        &self.host
    }

    fn watch_host(&self) -> Result<Box<dyn crate::host_health::HostLog>, String> {
        Ok(Box::new(self.kernel_lines.clone()))
    }

    fn usable(&self) -> Result<(), String> {
        match &self.host.kvm {
            runner::detect::KvmStatus::Usable => Ok(()),
            runner::detect::KvmStatus::Unusable(why) => Err(format!(
                "the KVM device on {} is not usable: {why}",
                self.ssh.dest
            )),
        }
    }

    fn run(
        &self,
        instances: &[Instance],
        opts: &TargetOptions,
        sink: &mut dyn FnMut(usize, CaseResult),
    ) {
        let what = format!("the worker on {}", self.ssh.dest);
        worker::run_pool(
            &|| self.command(opts.timeout),
            &what,
            instances,
            opts,
            &mut |i, r| {
                self.kernel_lines.forward(&r);
                sink(i, r);
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_and_options_that_ssh_would_misread_are_refused() {
        assert!(Ssh::new("root@127.0.0.1", &["Port=2222".into()]).is_ok());
        assert!(Ssh::new("-oProxyCommand=x", &[]).is_err());
        assert!(Ssh::new("a b", &[]).is_err());
        assert!(Ssh::new("", &[]).is_err());
        assert!(Ssh::new("h", &["Port".into()]).is_err());
        assert!(Ssh::new("h", &["-F=x".into()]).is_err());
    }

    #[test]
    fn every_command_is_batch_mode_with_the_options() {
        let s = Ssh::new("u@h", &["Port=2222".into()]).expect("ok");
        let c = s.command(&["true"]);
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "Port=2222",
                "u@h",
                "--",
                "true"
            ]
        );
    }
}
