//! The `gce` target: the suite on Google Compute Engine VMs booted from a vendor's PVM host
//! image, driven entirely through the `gcloud` command line (`PVMC_GCLOUD` names another
//! program: the tests use a fake that records its arguments).
//!
//! A run, in order ([`plan`] prints it for `--dry-run`):
//! 1. `gcloud storage cp IMAGE.tar.gz gs://BUCKET/NAME.tar.gz` (the host image, made by
//!    `cargo xtask images`: `disk.raw` in an oldgnu sparse tar, the form GCE imports);
//! 2. `gcloud compute images create NAME --source-uri gs://...`;
//! 3. per shard K of `--instances N` (instance i goes to shard i mod N):
//!    `gcloud compute instances create NAME-K --image NAME` with the shard's instance ids as
//!    metadata (`pvmc-ids`), serial port output and guest attributes enabled. The image's
//!    worker (`pvmc-worker stream`) reads the ids and writes its stream
//!    (`super::worker::StreamLine`) to the second serial port;
//! 4. `gcloud compute instances get-serial-port-output NAME-K --port 2 --start OFFSET`,
//!    paging with the offset gcloud reports, until the stream's end line; every result goes
//!    to the report as it arrives (a VM that dies mid-run loses nothing that finished). The
//!    serial ring buffer keeps 1 MB: output lost before it was read is reported, and the
//!    instances it held are CRASH. A VM that stops (`instances describe`) or stays silent past
//!    its deadline ends its shard: what it did not report is CRASH with the end of its console
//!    (`--port 1`). The worker's verdict (guest attribute `pvmc/verdict`) is read at the end;
//! 5. cleanup: everything created is deleted (instances, image, the uploaded object) on every
//!    path: success, failure, timeout, and cancellation by SIGINT/SIGTERM (each gcloud runs in
//!    its own process group, so the terminal's Ctrl-C reaches only the suite, which cancels
//!    the run and cleans up).

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use runner::detect::{HostInfo, KvmStatus};

use super::worker::{StreamLine, StreamReader};
use super::{Target, TargetOptions};
use crate::catalog::Instance;
use crate::outcome::Outcome;
use crate::result::CaseResult;

/// Environment variable naming the gcloud program.
pub const GCLOUD_VAR: &str = "PVMC_GCLOUD";
/// Environment variable setting the serial poll interval in milliseconds (tests).
pub const POLL_VAR: &str = "PVMC_GCE_POLL_MS";
/// Environment variable fixing the run's resource name (tests; else `pvmc-<time>-<pid>`).
pub const NAME_VAR: &str = "PVMC_GCE_NAME";
/// The default machine type: AMD, so without nested virtualization, where PVM hosts run.
pub const DEFAULT_MACHINE_TYPE: &str = "n2d-standard-2";
/// How long a VM may take to boot before its first instance counts against its timeout.
pub const BOOT_ALLOWANCE: Duration = Duration::from_secs(600);

/// What `--target gce` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GceSpec {
    /// `--project`.
    pub project: String,
    /// `--zone`.
    pub zone: String,
    /// `--machine-type`.
    pub machine_type: String,
    /// `--instances`: VMs to shard the selection over.
    pub instances: usize,
    /// `--bucket`: the Cloud Storage bucket for the image upload (default `PROJECT-pvmc`).
    pub bucket: Option<String>,
    /// `--host-image`: the image tarball.
    pub image: PathBuf,
}

fn valid_name(s: &str) -> bool {
    // GCE resource names: [a-z]([-a-z0-9]*[a-z0-9])?, at most 63 characters.
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !s.ends_with('-')
}

impl GceSpec {
    /// `Err` names the first option that cannot be right.
    pub fn check(&self) -> Result<(), String> {
        if self.project.is_empty() || self.project.contains(char::is_whitespace) {
            return Err(format!("--project {:?}: not a project id", self.project));
        }
        if !valid_name(&self.zone) {
            return Err(format!("--zone {:?}: not a zone name", self.zone));
        }
        if !valid_name(&self.machine_type) {
            return Err(format!(
                "--machine-type {:?}: not a machine type name",
                self.machine_type
            ));
        }
        if !(1..=64).contains(&self.instances) {
            return Err(format!("--instances {}: want 1 to 64", self.instances));
        }
        let name = self
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        if !name.is_some_and(|n| n.ends_with(".tar.gz")) {
            return Err(format!(
                "--host-image {}: want the GCE image tarball (*.tar.gz, `cargo xtask images`)",
                self.image.display()
            ));
        }
        Ok(())
    }

    fn bucket(&self) -> String {
        self.bucket
            .clone()
            .unwrap_or_else(|| format!("{}-pvmc", self.project))
    }
}

/// The run's resource name: [`NAME_VAR`], or `pvmc-<unix seconds>-<pid>`.
pub fn run_name() -> String {
    std::env::var(NAME_VAR).unwrap_or_else(|_| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("pvmc-{secs}-{}", std::process::id())
    })
}

/// Which shard each instance goes to: instance `i` of the selection to shard `i % n`.
pub fn shards(instances: &[Instance], n: usize) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); n.max(1)];
    for (i, inst) in instances.iter().enumerate() {
        out[i % n.max(1)].push(inst.id());
    }
    out
}

/// One step of a run, as gcloud arguments.
struct Step {
    args: Vec<String>,
    /// What undoes it (deleting what it created).
    undo: Option<Vec<String>>,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_string()).collect()
}

/// The creation steps of a run named `name` over `ids_files` (one ids file per shard).
fn steps(spec: &GceSpec, name: &str, ids_files: &[PathBuf]) -> Vec<Step> {
    let object = format!("gs://{}/{name}.tar.gz", spec.bucket());
    let project = format!("--project={}", spec.project);
    let zone = format!("--zone={}", spec.zone);
    let mut steps = vec![
        Step {
            args: vec![
                "storage".into(),
                "cp".into(),
                spec.image.display().to_string(),
                object.clone(),
                project.clone(),
            ],
            undo: Some(vec![
                "storage".into(),
                "rm".into(),
                object.clone(),
                project.clone(),
            ]),
        },
        Step {
            args: vec![
                "compute".into(),
                "images".into(),
                "create".into(),
                name.into(),
                format!("--source-uri={object}"),
                project.clone(),
            ],
            undo: Some(vec![
                "compute".into(),
                "images".into(),
                "delete".into(),
                name.into(),
                project.clone(),
                "--quiet".into(),
            ]),
        },
    ];
    for (k, ids) in ids_files.iter().enumerate() {
        let vm = format!("{name}-{k}");
        let mut args = s(&["compute", "instances", "create"]);
        args.extend([
            vm.clone(),
            format!("--image={name}"),
            format!("--machine-type={}", spec.machine_type),
            project.clone(),
            zone.clone(),
            "--metadata=serial-port-enable=TRUE,enable-guest-attributes=TRUE".into(),
            format!("--metadata-from-file=pvmc-ids={}", ids.display()),
            "--no-restart-on-failure".into(),
            "--maintenance-policy=TERMINATE".into(),
        ]);
        let mut undo = s(&["compute", "instances", "delete"]);
        undo.extend([vm, project.clone(), zone.clone(), "--quiet".into()]);
        steps.push(Step {
            args,
            undo: Some(undo),
        });
    }
    steps
}

/// What `--dry-run` prints: every gcloud command a run would issue to create things, then the
/// ones that poll and the ones that clean up.
pub fn plan(spec: &GceSpec, instances: &[Instance]) -> Vec<String> {
    let name = run_name();
    let shards = shards(instances, spec.instances);
    let files: Vec<PathBuf> = (0..shards.len())
        .map(|k| PathBuf::from(format!("<ids of shard {k}: {} instances>", shards[k].len())))
        .collect();
    let st = steps(spec, &name, &files);
    let mut out: Vec<String> = st
        .iter()
        .map(|s| format!("gcloud {}", s.args.join(" ")))
        .collect();
    for k in 0..shards.len() {
        out.push(format!(
            "gcloud compute instances get-serial-port-output {name}-{k} --port=2 --start=OFFSET \
             --project={} --zone={}   (repeated until the end line)",
            spec.project, spec.zone
        ));
    }
    out.extend(
        st.iter()
            .rev()
            .filter_map(|s| s.undo.as_ref())
            .map(|u| format!("gcloud {}", u.join(" "))),
    );
    out
}

/// The gcloud program.
#[derive(Clone, Debug)]
struct Gcloud(PathBuf);

impl Gcloud {
    fn find() -> Self {
        Gcloud(std::env::var_os(GCLOUD_VAR).map_or_else(|| PathBuf::from("gcloud"), PathBuf::from))
    }

    /// Runs gcloud with `args` in its own process group; (stdout, stderr) or the error.
    fn run(&self, args: &[String]) -> Result<(String, String), String> {
        let out = Command::new(&self.0)
            .args(args)
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.0.display()))?;
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        if out.status.success() {
            Ok((o, e))
        } else {
            Err(format!(
                "gcloud {}: {} ({})",
                args.join(" "),
                e.trim().lines().last().unwrap_or(""),
                out.status
            ))
        }
    }
}

/// The GCE target.
pub struct GceTarget {
    spec: GceSpec,
    gcloud: Gcloud,
    name: String,
    provisional: HostInfo,
    /// What was created and is not deleted yet, newest last.
    created: Mutex<Vec<Vec<String>>>,
    poll: Duration,
}

/// The gcloud page size hint in the stderr of get-serial-port-output.
fn next_start(stderr: &str) -> Option<u64> {
    let at = stderr.find("--start=")?;
    let digits: String = stderr[at + 8..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// One VM's progress.
struct Shard {
    vm: String,
    ids: Vec<String>,
    offset: u64,
    reader: StreamReader,
    reported: std::collections::HashSet<String>,
    done: bool,
    deadline: Instant,
}

impl GceTarget {
    /// A target for `spec` (nothing is created before [`Target::run`]).
    pub fn new(spec: GceSpec) -> Result<Self, String> {
        spec.check()?;
        let provisional = HostInfo {
            kernel: format!(
                "(the PVM host image {}, not booted yet)",
                spec.image.display()
            ),
            cpu: format!("GCE {} in {}", spec.machine_type, spec.zone),
            kvm_backend: "gce".into(),
            kvm: KvmStatus::Usable,
            dialect: None,
            dialect_evidence: "reported by the VM's worker once it boots".into(),
            cpuid_differs: Vec::new(),
        };
        let poll = std::env::var(POLL_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(5), Duration::from_millis);
        Ok(Self {
            provisional,
            spec,
            gcloud: Gcloud::find(),
            name: run_name(),
            created: Mutex::new(Vec::new()),
            poll,
        })
    }

    /// Deletes everything created, newest first; failures are printed, not fatal.
    fn cleanup(&self) {
        let undo: Vec<Vec<String>> = match self.created.lock() {
            Ok(mut c) => c.drain(..).rev().collect(),
            Err(_) => return,
        };
        for args in undo {
            if let Err(e) = self.gcloud.run(&args) {
                eprintln!("warning: gce cleanup: {e}");
            }
        }
    }

    fn create(&self, ids_files: &[PathBuf]) -> Result<(), String> {
        for step in steps(&self.spec, &self.name, ids_files) {
            self.gcloud.run(&step.args)?;
            if let (Some(undo), Ok(mut c)) = (step.undo, self.created.lock()) {
                c.push(undo);
            }
        }
        Ok(())
    }

    fn loc(&self) -> [String; 2] {
        [
            format!("--project={}", self.spec.project),
            format!("--zone={}", self.spec.zone),
        ]
    }

    /// Reads shard `sh`'s new serial output; its new results.
    fn poll_shard(&self, sh: &mut Shard) -> Result<Vec<StreamLine>, String> {
        let mut args = s(&["compute", "instances", "get-serial-port-output"]);
        args.push(sh.vm.clone());
        args.extend(["--port=2".to_string(), format!("--start={}", sh.offset)]);
        args.extend(self.loc());
        let (out, err) = self.gcloud.run(&args)?;
        let next = next_start(&err).unwrap_or(sh.offset + out.len() as u64);
        let lost = next.saturating_sub(sh.offset + out.len() as u64);
        sh.offset = next;
        let mut lines = sh.reader.push(&out);
        if lost > 0 {
            // The ring buffer dropped output before we read it: a line may be cut.
            eprintln!("gce: {}: {lost} bytes of serial output were lost", sh.vm);
            lines.retain(|l| !matches!(l, StreamLine::End(_)));
            lines.extend(sh.reader.push("\n"));
        }
        Ok(lines)
    }

    fn status(&self, vm: &str) -> String {
        let mut args = s(&["compute", "instances", "describe"]);
        args.push(vm.into());
        args.push("--format=value(status)".into());
        args.extend(self.loc());
        self.gcloud
            .run(&args)
            .map_or_else(|e| format!("unknown ({e})"), |(o, _)| o.trim().to_string())
    }

    fn console_tail(&self, vm: &str) -> String {
        let mut args = s(&["compute", "instances", "get-serial-port-output"]);
        args.extend([vm.to_string(), "--port=1".into()]);
        args.extend(self.loc());
        let out = self.gcloud.run(&args).map(|(o, _)| o).unwrap_or_default();
        let lines: Vec<&str> = out.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    fn verdict(&self, vm: &str) -> String {
        let mut args = s(&["compute", "instances", "get-guest-attributes"]);
        args.extend([
            vm.to_string(),
            "--query-path=pvmc/verdict".into(),
            "--format=value(value)".into(),
        ]);
        args.extend(self.loc());
        self.gcloud.run(&args).map_or_else(
            |e| format!("unreadable ({e})"),
            |(o, _)| o.trim().to_string(),
        )
    }

    fn drive(
        &self,
        instances: &[Instance],
        opts: &TargetOptions,
        sink: &mut dyn FnMut(usize, CaseResult),
    ) -> Result<(), String> {
        let index: HashMap<String, usize> = instances
            .iter()
            .enumerate()
            .map(|(i, x)| (x.id(), i))
            .collect();
        let shards_ids = shards(instances, self.spec.instances);
        let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let mut files = Vec::new();
        for (k, ids) in shards_ids.iter().enumerate() {
            let f = dir.path().join(format!("ids-{k}"));
            std::fs::write(&f, ids.join("\n") + "\n")
                .map_err(|e| format!("{}: {e}", f.display()))?;
            files.push(f);
        }
        if opts.cancel.is_cancelled() {
            return Ok(());
        }
        self.create(&files)?;
        let mut shards: Vec<Shard> = shards_ids
            .into_iter()
            .enumerate()
            .map(|(k, ids)| {
                let budget: Duration = ids
                    .iter()
                    .filter_map(|id| index.get(id))
                    .map(|&i| crate::exec::timeout_of(&instances[i], opts.timeout))
                    .sum();
                Shard {
                    vm: format!("{}-{k}", self.name),
                    ids,
                    offset: 0,
                    reader: StreamReader::default(),
                    reported: Default::default(),
                    done: false,
                    deadline: Instant::now() + BOOT_ALLOWANCE + budget,
                }
            })
            .collect();
        while shards.iter().any(|s| !s.done) && !opts.cancel.is_cancelled() {
            for sh in shards.iter_mut().filter(|s| !s.done) {
                let offset_before = sh.offset;
                let lines = self.poll_shard(sh).unwrap_or_else(|e| {
                    eprintln!("gce: {}: {e}", sh.vm);
                    Vec::new()
                });
                for line in lines {
                    match line {
                        StreamLine::Host(h) => eprintln!(
                            "gce: {}: host kernel {}, backend {}, dialect {}, cpu {}",
                            sh.vm,
                            h.kernel,
                            h.kvm_backend,
                            h.dialect.as_deref().unwrap_or("none"),
                            h.cpu
                        ),
                        StreamLine::Result(r) => {
                            if let Some(&i) = index.get(&r.id)
                                && sh.ids.contains(&r.id)
                                && sh.reported.insert(r.id.clone())
                            {
                                sink(i, *r);
                            }
                        }
                        StreamLine::End(e) => {
                            sh.done = true;
                            eprintln!(
                                "gce: {}: worker done ({} results, {}); verdict: {}",
                                sh.vm,
                                e.results,
                                e.status,
                                self.verdict(&sh.vm)
                            );
                        }
                    }
                }
                // A VM whose output is still coming is running; only one that had nothing new
                // is asked for its status (so output a stopped VM left is read to the end
                // before its missing instances are called CRASH).
                if sh.done || (sh.offset != offset_before && Instant::now() <= sh.deadline) {
                    continue;
                }
                let status = self.status(&sh.vm);
                let stopped = matches!(status.as_str(), "TERMINATED" | "STOPPED" | "SUSPENDED");
                if stopped || Instant::now() > sh.deadline {
                    sh.done = true;
                    let why = if stopped {
                        format!("the VM {} stopped ({status}) before reporting it", sh.vm)
                    } else {
                        format!("the VM {} reported nothing more before its deadline", sh.vm)
                    };
                    let console = self.console_tail(&sh.vm);
                    for id in sh.ids.iter().filter(|id| !sh.reported.contains(*id)) {
                        if let Some(&i) = index.get(id) {
                            let detail = format!("{why}; its console ends: {console}");
                            sink(
                                i,
                                CaseResult::without_run(&instances[i], Outcome::Crash, detail),
                            );
                        }
                    }
                }
            }
            if shards.iter().any(|s| !s.done) {
                let until = Instant::now() + self.poll;
                while Instant::now() < until && !opts.cancel.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(20).min(self.poll));
                }
            }
        }
        // The shards' instances that never got an answer (cancellation): nothing is sent.
        Ok(())
    }
}

impl Drop for GceTarget {
    fn drop(&mut self) {
        self.cleanup();
    }
}

impl Target for GceTarget {
    fn name(&self) -> &str {
        "gce"
    }

    fn host(&self) -> &HostInfo {
        // The report's header is written before any VM boots; each VM's own host line is
        // printed as it arrives.
        &self.provisional
    }

    fn usable(&self) -> Result<(), String> {
        self.gcloud.run(&s(&["--version"])).map(drop)
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
        if let Err(e) = self.drive(instances, opts, sink) {
            // Setup failed before any VM ran: every instance gets the reason.
            let why = format!("gce setup failed: {e}");
            super::all_without_run(instances, Outcome::Error, &why, sink);
        }
        self.cleanup();
    }
}

/// The host image tarball a spec names exists (checked before anything is created).
pub fn image_exists(path: &Path) -> Result<(), String> {
    if path.is_file() {
        Ok(())
    } else {
        Err(format!("--host-image {}: no such file", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_follow_gce_rules() {
        assert!(valid_name("pvmc-1700000000-42"));
        assert!(valid_name("us-central1-a"));
        assert!(!valid_name("Pvmc"));
        assert!(!valid_name("pvmc-"));
        assert!(!valid_name("1pvmc"));
        assert!(!valid_name(&"a".repeat(64)));
    }

    #[test]
    fn the_next_offset_comes_from_gcloud_s_hint() {
        let err = "Specify --start=2048 in the next get-serial-port-output invocation to get \
                   only the new output starting from here.";
        assert_eq!(next_start(err), Some(2048));
        assert_eq!(next_start("nothing"), None);
    }

    #[test]
    fn bad_specs_are_refused_naming_the_option() {
        let good = GceSpec {
            project: "p".into(),
            zone: "us-central1-a".into(),
            machine_type: DEFAULT_MACHINE_TYPE.into(),
            instances: 2,
            bucket: None,
            image: "img.tar.gz".into(),
        };
        assert!(good.check().is_ok());
        for (bad, word) in [
            (
                GceSpec {
                    zone: "Bad Zone".into(),
                    ..good.clone()
                },
                "--zone",
            ),
            (
                GceSpec {
                    instances: 0,
                    ..good.clone()
                },
                "--instances",
            ),
            (
                GceSpec {
                    image: "disk.raw".into(),
                    ..good.clone()
                },
                "--host-image",
            ),
            (
                GceSpec {
                    project: String::new(),
                    ..good.clone()
                },
                "--project",
            ),
        ] {
            let e = bad.check().expect_err("bad");
            assert!(e.contains(word), "{e}");
        }
    }
}
