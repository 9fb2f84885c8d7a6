//! The certificate as a person sees it: `cargo xtask certify` renders a fixture report
//! (`support`), headless Chromium takes a 1280x1600 screenshot of the HTML, and the test
//! looks at it: the PNG's IHDR has the window size, the page is not blank, the verdict
//! banner's colour is there (at the top), and OCR (`tesseract`) reads the verdict and the
//! profile name; Chromium's `--dump-dom` holds the verdict, the host kernel and the image
//! hash, and none of the guest-provided markup became an element.
//!
//! Chromium is `$PVMC_CHROMIUM`, else `chromium` or `chromium-browser` on `PATH`; tesseract
//! is `$PVMC_TESSERACT`, else `tesseract`. Without them each test prints
//! `skipped: chromium not installed` (or tesseract) and passes, unless
//! `PVMC_REQUIRE_BROWSER=1` (CI: `.ci/run`, with `ci/setup.sh` installing both), where a
//! missing tool is a failure. Screenshots stay in `CARGO_TARGET_TMPDIR/certify-browser/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conformance::certify::Verdict;
use conformance::certify::html::verdict_color;

mod support;

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 1600;

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The tool from `$var`, else the first of `names` on `PATH`.
fn find(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    names.iter().find_map(|n| on_path(n))
}

/// Chromium and tesseract, or `None` (after saying so) when one is missing and the browser
/// is not required.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var("PVMC_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let chromium = find("PVMC_CHROMIUM", &["chromium", "chromium-browser"]);
    let tesseract = find("PVMC_TESSERACT", &["tesseract"]);
    let missing = match (&chromium, &tesseract) {
        (None, _) => "chromium",
        (_, None) => "tesseract",
        (Some(c), Some(t)) => return Some((c.clone(), t.clone())),
    };
    assert!(
        !required,
        "PVMC_REQUIRE_BROWSER=1 but {missing} is not installed (apt-get install chromium \
         tesseract-ocr, as ci/setup.sh does; or set PVMC_CHROMIUM / PVMC_TESSERACT)"
    );
    // Straight to stderr: libtest captures print! and eprint! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {missing} not installed (PVMC_REQUIRE_BROWSER=1 makes this a failure)"
    );
    None
}

/// Runs `cmd` with stdout to `out`, killing it after `limit`; returns its stderr.
fn run_bounded(cmd: &mut Command, out: &Path, limit: Duration) -> String {
    let err_path = out.with_extension("stderr");
    let stdout = std::fs::File::create(out).expect("stdout file");
    let stderr = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "{cmd:?}: {status}\n{err}");
    err
}

fn chromium(bin: &Path, profile_dir: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ])
    .args(["--no-first-run", "--disable-extensions"])
    .arg(format!("--user-data-dir={}", profile_dir.display()));
    c
}

struct Png {
    width: u32,
    height: u32,
    /// RGB triples, row by row.
    rgb: Vec<[u8; 3]>,
}

fn read_png(path: &Path) -> Png {
    let bytes = std::fs::read(path).expect("screenshot written");
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{}: not a PNG",
        path.display()
    );
    assert_eq!(
        &bytes[12..16],
        b"IHDR",
        "{}: first chunk is not IHDR",
        path.display()
    );
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (width, height) = (be(16), be(20));
    let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes))
        .read_info()
        .expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    assert_eq!(
        (info.width, info.height),
        (width, height),
        "IHDR vs decoder"
    );
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("{}: colour type {other:?}", path.display()),
    };
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(step)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Png { width, height, rgb }
}

fn hex_color(s: &str) -> [u8; 3] {
    let v = u32::from_str_radix(s.trim_start_matches('#'), 16).expect("#rrggbb");
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

fn near(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tol)
}

/// Lower-case letters and digits only: OCR may misread spaces and hyphens.
fn squash(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

struct Case<'a> {
    name: &'a str,
    variant: support::Variant,
    profile: PathBuf,
    profile_name: &'a str,
    bench: bool,
    verdict: Verdict,
    status: i32,
}

fn check(case: &Case<'_>) {
    let Some((chromium_bin, tesseract)) = tools() else {
        return;
    };
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("certify-browser");
    std::fs::create_dir_all(&keep).expect("screenshot dir");
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path();
    let report = support::write_report(dir, "report.json", case.variant);
    let html = keep.join(format!("{}.html", case.name));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.arg("certify")
        .arg("--report")
        .arg(&report)
        .arg("--profile")
        .arg(&case.profile)
        .arg("--html")
        .arg(&html);
    if case.bench {
        cmd.arg("--bench")
            .arg(support::write_bench(dir, "bench.json"));
    }
    let out = cmd.output().expect("run xtask certify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(case.status),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with(case.verdict.label()), "{stdout}");
    let url = format!("file://{}", html.display());

    // The screenshot: size, not blank, the banner colour at the top.
    let png_path = keep.join(format!("{}.png", case.name));
    let _ = std::fs::remove_file(&png_path);
    run_bounded(
        chromium(&chromium_bin, &dir.join("chromium-shot"))
            .arg(format!("--screenshot={}", png_path.display()))
            .arg(format!("--window-size={WIDTH},{HEIGHT}"))
            .arg(&url),
        &dir.join("shot.out"),
        Duration::from_secs(120),
    );
    let shot = read_png(&png_path);
    let at = png_path.display();
    assert_eq!((shot.width, shot.height), (WIDTH, HEIGHT), "{at}: size");
    let total = shot.rgb.len();
    let background = shot
        .rgb
        .iter()
        .filter(|p| near(**p, [255, 255, 255], 6))
        .count();
    let inked = total - background;
    assert!(
        inked * 100 >= total * 12,
        "{at}: only {inked} of {total} pixels differ from the white background"
    );
    let banner = hex_color(verdict_color(case.verdict));
    let banner_px = shot.rgb.iter().filter(|p| near(**p, banner, 8)).count();
    assert!(
        banner_px >= (WIDTH * 120) as usize,
        "{at}: only {banner_px} pixels of the banner colour {banner:?}"
    );
    assert!(
        near(shot.rgb[5 * WIDTH as usize + 5], banner, 8),
        "{at}: no banner at the top"
    );
    for other in [
        Verdict::Certified,
        Verdict::CertifiedWithDeviations,
        Verdict::NotCertified,
    ] {
        if other != case.verdict {
            let c = hex_color(verdict_color(other));
            let n = shot.rgb.iter().filter(|p| near(**p, c, 4)).count();
            assert!(
                n < (WIDTH * 20) as usize,
                "{at}: {n} pixels of the {other:?} colour"
            );
        }
    }

    // What a reader sees: OCR of the screenshot.
    let ocr_out = dir.join("ocr.txt");
    run_bounded(
        Command::new(&tesseract).arg(&png_path).arg("stdout"),
        &ocr_out,
        Duration::from_secs(120),
    );
    let text = std::fs::read_to_string(&ocr_out).expect("OCR text");
    let seen = squash(&text);
    for want in [case.verdict.label(), case.profile_name, "Host and run"] {
        assert!(
            seen.contains(&squash(want)),
            "{at}: OCR does not read {want:?}; it read:\n{text}"
        );
    }

    // What the browser parsed: the DOM.
    let dom_out = dir.join("dom.html");
    run_bounded(
        chromium(&chromium_bin, &dir.join("chromium-dom"))
            .arg("--dump-dom")
            .arg(&url),
        &dom_out,
        Duration::from_secs(120),
    );
    let dom = std::fs::read_to_string(&dom_out).expect("DOM");
    for want in [
        format!("id=\"verdict\">{}</div>", case.verdict.label()),
        format!("id=\"kernel\">{}</span>", support::KERNEL),
        format!("id=\"image-sha256\">{}</span>", support::IMAGE_SHA256),
        format!("<b>{}</b>", case.profile_name),
    ] {
        assert!(dom.contains(&want), "the DOM of {url} lacks {want:?}");
    }
    assert!(
        !dom.contains("<script") && !dom.contains("<h1>"),
        "guest markup became elements"
    );
    let title = dom
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap_or("");
    assert!(
        title.starts_with(case.verdict.label()) && !title.contains("pwned"),
        "the title is {title:?}: guest script ran?"
    );
    if case.variant == support::Variant::Failing {
        assert!(
            dom.contains("&lt;script&gt;"),
            "the hostile detail is shown as text"
        );
    }
    if case.bench {
        assert!(dom.contains("<svg class=\"chart\""), "no benchmark chart");
        assert!(dom.contains(">hypercall (pv-local)</text>"), "chart labels");
    }
}

#[test]
fn a_not_certified_report_renders_red_and_readable() {
    check(&Case {
        name: "not-certified",
        variant: support::Variant::Failing,
        profile: support::local_host_profile(),
        profile_name: "local-host",
        bench: false,
        verdict: Verdict::NotCertified,
        status: 1,
    });
}

#[test]
fn accepted_deviations_render_amber_with_the_benchmark_chart() {
    let d = tempfile::tempdir().expect("tempdir");
    let profile = d.path().join("accepting.toml");
    std::fs::write(&profile, support::ACCEPTING_PROFILE).expect("write profile");
    check(&Case {
        name: "with-deviations",
        variant: support::Variant::Deviating,
        profile,
        profile_name: "fixture-accepting",
        bench: true,
        verdict: Verdict::CertifiedWithDeviations,
        status: 0,
    });
}
