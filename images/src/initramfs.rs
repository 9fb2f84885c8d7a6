//! The initramfs: a gzip'd newc cpio archive (written with the cpio crate, compressed with
//! flate2; every entry owned by root with mtime 0, so two builds of the same inputs are the
//! same bytes) holding busybox, the modules, `pvmc-worker` with the shared libraries it links
//! against (from `ldd`, at the paths it names), the guest image, the profile and `/init`.
//!
//! `/init` mounts proc, sysfs and devtmpfs, loads the modules in order, sets the second serial
//! port raw (else the tty turns `\n` into `\r\n`), sources `/pvmc/run.env` and runs
//! `pvmc-worker stream` over the ids in `/pvmc/ids` into `/dev/ttyS1`, then powers off. The ids
//! and run.env come at run time, from a second archive the target appends to this one (the
//! kernel unpacks concatenated archives in order). Without them (a cloud VM booted from the
//! disk) `/init` brings the network up with udhcpc and the worker fetches the ids from the GCE
//! metadata server (`pvmc-ids`) and stores its verdict as the guest attribute `pvmc/verdict`.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use cpio::newc::Builder;

use crate::modules::Resolved;
use crate::profile::Profile;
use crate::{Error, Result, io_err};

/// What goes in.
pub struct Contents<'a> {
    /// A static busybox.
    pub busybox: &'a Path,
    /// `pvmc-worker`.
    pub worker: &'a Path,
    /// The guest image.
    pub guest: &'a Path,
    /// The profile.
    pub profile: &'a Profile,
    /// The modules, in load order.
    pub modules: &'a [Resolved],
}

/// The busybox applets `/init` uses.
const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "stty", "cat", "echo", "poweroff", "sleep", "dmesg", "mkdir", "grep",
    "ip", "udhcpc",
];

/// udhcpc's hook: configure the lease (GCE hands out a /32 with a gateway outside it, so
/// the gateway gets a host route first).
const UDHCPC_SCRIPT: &str = "#!/bin/sh\n\
case \"$1\" in\n\
bound|renew)\n\
    ip addr flush dev \"$interface\"\n\
    ip addr add \"$ip/${mask:-24}\" dev \"$interface\"\n\
    for r in $router; do\n\
        ip route add \"$r\" dev \"$interface\" 2>/dev/null\n\
        ip route add default via \"$r\" dev \"$interface\"\n\
        break\n\
    done\n\
    ;;\n\
esac\n";

/// The GCE metadata server's instance directory.
const METADATA: &str = "http://169.254.169.254/computeMetadata/v1/instance";

/// An archive being assembled.
#[derive(Default)]
pub struct Archive {
    entries: Vec<(Builder, Vec<u8>)>,
    dirs: std::collections::BTreeSet<String>,
}

impl Archive {
    fn parents(&mut self, path: &str) {
        let mut at = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(p);
            if self.dirs.insert(at.clone()) {
                self.entries
                    .push((Builder::new(&at).mode(0o040_755).nlink(2), Vec::new()));
            }
        }
    }

    /// A directory.
    pub fn dir(&mut self, path: &str) {
        self.parents(&format!("{path}/x"));
    }

    /// A regular file with `mode` (permission bits).
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entries
            .push((Builder::new(path).mode(0o100_000 | mode).nlink(1), data));
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entries.push((
            Builder::new(path).mode(0o120_777).nlink(1),
            target.as_bytes().to_vec(),
        ));
    }

    /// The gzip'd archive.
    pub fn finish(self) -> Result<Vec<u8>> {
        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::default());
        let inputs = self.entries.into_iter().map(|(b, d)| (b, Cursor::new(d)));
        let gz = cpio::write_cpio(inputs, gz).map_err(|e| Error::Invalid(format!("cpio: {e}")))?;
        gz.finish()
            .map_err(|e| Error::Invalid(format!("gzip: {e}")))
    }
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(io_err(p))
}

/// The shared libraries `binary` needs, from `ldd` (absolute paths, the loader included).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = crate::tool(duct::cmd!("ldd", binary), "ldd")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut libs: Vec<PathBuf> = text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// The `/init` script for `profile` and `modules`.
pub fn init_script(profile: &Profile, modules: &[Resolved]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         # pvm-conformance host image (generated by cargo xtask images)\n\
         /bin/busybox mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n",
    );
    s.push_str(&format!(
        "echo \"pvmc: host image {} on kernel $(cat /proc/sys/kernel/osrelease)\"\n",
        profile.name
    ));
    // The parameter set comes with the run-time archive (default: the modules' own).
    s.push_str(
        "PVMC_PARAM_SET=default\n\
         PVMC_TIMEOUT_MS=10000\n\
         [ -f /pvmc/run.env ] && . /pvmc/run.env\n\
         echo \"pvmc: parameter set $PVMC_PARAM_SET\"\n",
    );
    for (i, m) in modules.iter().enumerate() {
        // The module's own parameters (a dependency the profile does not list has none).
        let own = m.params.clone();
        s.push_str(&format!("p='{own}'\n"));
        let overrides: Vec<(String, String)> = profile
            .param_sets
            .iter()
            .filter_map(|set| {
                let p = profile.params_of(&set.name, &m.name)?;
                (p != own).then(|| (set.name.clone(), p))
            })
            .collect();
        if !overrides.is_empty() {
            s.push_str("case \"$PVMC_PARAM_SET\" in\n");
            for (set, p) in overrides {
                s.push_str(&format!("{set}) p='{p}' ;;\n"));
            }
            s.push_str("esac\n");
        }
        s.push_str(&format!(
            "insmod /pvmc/modules/{i:02}-{}.ko $p || echo \"pvmc: insmod {} failed\"\n",
            m.name, m.name
        ));
    }
    // The loaded modules' own kernel lines, on the console (which `quiet` keeps short).
    if !modules.is_empty() {
        let names: Vec<String> = modules
            .iter()
            .map(|m| format!("-e '{}'", m.name.replace(['_', '-'], "[-_]")))
            .collect();
        s.push_str(&format!(
            "dmesg | grep -i {} | while read -r l; do echo \"pvmc: kmsg: $l\"; done\n",
            names.join(" ")
        ));
    }
    s.push_str(&format!(
        "stty -F /dev/ttyS1 raw -echo\n\
         if [ -f /pvmc/ids ]; then\n\
         \x20   /pvmc/pvmc-worker stream --image /pvmc/guest.elf --ids /pvmc/ids --out /dev/ttyS1 \
         --timeout-ms \"$PVMC_TIMEOUT_MS\"\n\
         else\n\
         \x20   # No run-time archive: a cloud VM. The network, then the metadata server.\n\
         \x20   ip link set lo up\n\
         \x20   for d in /sys/class/net/*; do n=${{d##*/}}; [ \"$n\" = lo ] && continue; \
         ip link set \"$n\" up; udhcpc -i \"$n\" -n -q -t 10 -s /pvmc/udhcpc.script && break; done\n\
         \x20   /pvmc/pvmc-worker stream --image /pvmc/guest.elf --ids-url {METADATA}/attributes/pvmc-ids \
         --verdict-url {METADATA}/guest-attributes/pvmc/verdict --out /dev/ttyS1 \
         --timeout-ms \"$PVMC_TIMEOUT_MS\"\n\
         fi\n\
         echo \"pvmc: worker exited with $?\"\n\
         poweroff -f\n"
    ));
    s
}

/// Writes the initramfs for `c` to `out`.
pub fn build(c: &Contents<'_>, out: &Path) -> Result<()> {
    let mut a = Archive::default();
    for d in ["dev", "proc", "sys", "tmp", "pvmc/modules"] {
        a.dir(d);
    }
    a.file("bin/busybox", 0o755, read(c.busybox)?);
    for applet in APPLETS {
        a.symlink(&format!("bin/{applet}"), "busybox");
    }
    a.file("pvmc/pvmc-worker", 0o755, read(c.worker)?);
    for lib in shared_libraries(c.worker)? {
        a.file(&lib.display().to_string(), 0o755, read(&lib)?);
    }
    a.file("pvmc/guest.elf", 0o644, read(c.guest)?);
    let profile = toml::to_string(c.profile)
        .map_err(|e| Error::Invalid(format!("profile {}: {e}", c.profile.name)))?;
    a.file("pvmc/profile.toml", 0o644, profile.into_bytes());
    for (i, m) in c.modules.iter().enumerate() {
        a.file(
            &format!("pvmc/modules/{i:02}-{}.ko", m.name),
            0o644,
            read(&m.file)?,
        );
    }
    a.file(
        "pvmc/udhcpc.script",
        0o755,
        UDHCPC_SCRIPT.as_bytes().to_vec(),
    );
    a.file(
        "init",
        0o755,
        init_script(c.profile, c.modules).into_bytes(),
    );
    let bytes = a.finish()?;
    let mut f = std::fs::File::create(out).map_err(io_err(out))?;
    f.write_all(&bytes).map_err(io_err(out))
}

/// The run-time archive: the instance ids, the timeout and the parameter set, appended to the
/// image's initramfs.
pub fn run_archive(ids: &[String], timeout_ms: u64, param_set: &str) -> Result<Vec<u8>> {
    if !param_set
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(Error::Invalid(format!("parameter set name {param_set:?}")));
    }
    let mut a = Archive::default();
    a.file("pvmc/ids", 0o644, (ids.join("\n") + "\n").into_bytes());
    a.file(
        "pvmc/run.env",
        0o644,
        format!("PVMC_TIMEOUT_MS={timeout_ms}\nPVMC_PARAM_SET={param_set}\n").into_bytes(),
    );
    a.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn unpack(gz: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut raw)
            .expect("gunzip");
        let mut out = Vec::new();
        let mut r = Cursor::new(raw);
        loop {
            let mut e = cpio::newc::Reader::new(r).expect("entry");
            if e.entry().is_trailer() {
                break;
            }
            let (name, mode) = (e.entry().name().to_string(), e.entry().mode());
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("data");
            out.push((name, mode, data));
            r = e.finish().expect("next");
        }
        out
    }

    #[test]
    fn archives_have_their_directories_first_and_are_reproducible() {
        let build = || {
            let mut a = Archive::default();
            a.file("pvmc/modules/00-kvm.ko", 0o644, b"ko".to_vec());
            a.symlink("bin/sh", "busybox");
            a.finish().expect("archive")
        };
        let (x, y) = (build(), build());
        assert_eq!(x, y, "same inputs, same bytes");
        let names: Vec<_> = unpack(&x)
            .into_iter()
            .map(|(n, m, _)| (n, m >> 12))
            .collect();
        assert_eq!(
            names,
            [
                ("pvmc".to_string(), 0o04),
                ("pvmc/modules".to_string(), 0o04),
                ("pvmc/modules/00-kvm.ko".to_string(), 0o10),
                ("bin".to_string(), 0o04),
                ("bin/sh".to_string(), 0o12),
            ]
        );
    }

    #[test]
    fn the_run_archive_carries_the_ids_and_the_timeout() {
        let got =
            unpack(&run_archive(&["a~hvm64".into(), "b~hvm64".into()], 777, "set-2").expect("a"));
        let ids = got.iter().find(|(n, _, _)| n == "pvmc/ids").expect("ids");
        assert_eq!(ids.2, b"a~hvm64\nb~hvm64\n");
        let env = got
            .iter()
            .find(|(n, _, _)| n == "pvmc/run.env")
            .expect("env");
        assert_eq!(env.2, b"PVMC_TIMEOUT_MS=777\nPVMC_PARAM_SET=set-2\n");
        assert!(run_archive(&[], 1, "a;b").is_err());
    }

    #[test]
    fn a_parameter_set_picks_its_module_parameters_in_init() {
        let profile = Profile::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/debian-kvm-amd-marker.toml"),
        )
        .expect("parse");
        let marker = Resolved {
            name: "pvmc_marker".into(),
            file: PathBuf::new(),
            params: "level=7".into(),
        };
        let s = init_script(&profile, &[marker]);
        assert!(
            s.contains(
                "p='level=7'\ncase \"$PVMC_PARAM_SET\" in\nmarker-level-3) p='level=3' ;;\nesac\n"
            ),
            "{s}"
        );
        // run.env (which sets PVMC_PARAM_SET) is read before the first insmod.
        assert!(s.find(". /pvmc/run.env") < s.find("insmod"));
    }

    #[test]
    fn init_loads_the_modules_in_order_with_their_parameters() {
        let profile = Profile::parse(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/debian-kvm-amd.toml"),
            )
            .expect("read"),
            "p",
        )
        .expect("parse");
        let m = |n: &str, p: &str| Resolved {
            name: n.into(),
            file: PathBuf::new(),
            params: p.into(),
        };
        let s = init_script(&profile, &[m("kvm", ""), m("kvm_amd", "nested=1")]);
        let kvm = s.find("00-kvm.ko").expect("kvm");
        let amd = s
            .find("p='nested=1'\ninsmod /pvmc/modules/01-kvm_amd.ko $p")
            .expect("kvm_amd");
        assert!(kvm < amd);
        assert!(s.contains("stty -F /dev/ttyS1 raw -echo"));
        assert!(s.trim_end().ends_with("poweroff -f"));
        assert!(s.contains(
            "--ids-url http://169.254.169.254/computeMetadata/v1/instance/attributes/pvmc-ids"
        ));
        // The script and the udhcpc hook are valid sh.
        for script in [s.as_str(), UDHCPC_SCRIPT] {
            let check = duct::cmd!("sh", "-n")
                .stdin_bytes(script)
                .stderr_capture()
                .unchecked()
                .run();
            let out = check.expect("sh runs");
            assert!(
                out.status.success(),
                "{}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
