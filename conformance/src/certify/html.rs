//! The certificate as one self-contained HTML file: inline CSS, no script, no external
//! resource (a Content-Security-Policy forbids loading any), readable without a network.
//!
//! Sections: the verdict banner (colour-coded) with the profile; the run's identity (host,
//! suite version, guest image hash, run id and start); the reasons and warnings; the profile;
//! the per-area table (instances by outcome, requirements by status); the per-requirement
//! table; the failures and deviations with their evidence (the instance's detail and
//! kernel-log lines); host health; and, when a benchmark report is given, its chart
//! ([`super::svg`]) and table.
//!
//! Every string that comes from the report, the profile or the benchmark report is passed
//! through [`escape`]: the report holds guest-provided text.

use std::fmt::Write;

use super::svg::{bench_chart, format_ns};
use super::verdict::{Certificate, ReqStatus, RequirementVerdict, Verdict, deviation_evidence};
use crate::bench::BenchReport;
use crate::outcome::Outcome;
use crate::report::{KernelLine, SUITE_VERSION, summary_line};

/// A detail longer than this is cut in the certificate (the JSON report has all of it).
pub const MAX_DETAIL_CHARS: usize = 8000;

/// The banner colour of each verdict (also what the browser test looks for).
pub const fn verdict_color(v: Verdict) -> &'static str {
    match v {
        Verdict::Certified => "#1b7f3b",
        Verdict::CertifiedWithDeviations => "#a15c00",
        Verdict::NotCertified => "#b3261e",
    }
}

/// `text` safe inside HTML text and attribute values: the five markup characters become
/// entities, and control and bidirectional-override characters (which could garble or
/// disguise the page) become U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                out.push('\u{fffd}');
            }
            c => out.push(c),
        }
    }
    out
}

/// A benchmark report to show, and the file it came from.
#[derive(Clone, Copy, Debug)]
pub struct BenchInput<'a> {
    /// The report.
    pub report: &'a BenchReport,
    /// Its file.
    pub file: &'a str,
}

const CSS: &str = "\
*{box-sizing:border-box}
body{margin:0;font-family:'DejaVu Sans',Arial,Helvetica,sans-serif;font-size:15px;color:#1f2328;background:#ffffff}
main{max-width:1220px;margin:0 auto;padding:8px 24px 32px}
.banner{color:#ffffff;padding:26px 24px 22px;text-align:center}
.banner .verdict{font-size:56px;font-weight:bold;letter-spacing:1px;line-height:1.1}
.banner .profile{font-size:26px;margin-top:10px}
.banner .sub{font-size:16px;margin-top:8px;opacity:.95}
h2{font-size:21px;border-bottom:2px solid #d0d7de;padding-bottom:4px;margin:28px 0 10px}
h3{font-size:17px;margin:0 0 6px}
h3 .mono{font-size:15px}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{border:1px solid #d0d7de;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f3f4f6}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.id{white-space:nowrap}
table.reqs th:nth-child(3){width:36%}
table.reqs th:nth-child(4){width:19%}
table.reqs th:nth-child(6){width:25%}
table.kv th{width:210px}
.mono,pre{font-family:'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:13px}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;border:1px solid #d0d7de;padding:8px;margin:6px 0}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:bold;font-size:13px;white-space:nowrap}
.s-held,.o-pass{background:#d8f3de;color:#14532d}
.s-failed,.o-fail,.o-crash,.o-error{background:#fde0de;color:#8a1c1c}
.s-deviation,.o-xfail{background:#fff0c2;color:#6b4200}
.s-not-run,.o-skip{background:#e5e7eb;color:#374151}
.s-uncovered{background:#ece6ff;color:#4c1d95}
td.zero{color:#9aa0a6}
ol.reasons li{margin:3px 0}
ol.reasons li.reason{color:#8a1c1c}
.finding{border:1px solid #d0d7de;border-left:6px solid #b3261e;padding:10px 12px;margin:12px 0}
.finding.xfail{border-left-color:#a15c00}
.meta{color:#57606a;margin:2px 0 6px}
.small{font-size:13px;color:#57606a}
.note{background:#fff8e1;border:1px solid #f0d58a;padding:6px 10px}
svg.chart{max-width:100%;height:auto;border:1px solid #d0d7de;background:#ffffff}
footer{color:#57606a;font-size:13px;margin-top:30px}
";

fn status_class(s: ReqStatus) -> &'static str {
    match s {
        ReqStatus::Held => "s-held",
        ReqStatus::Deviation => "s-deviation",
        ReqStatus::NotRun => "s-not-run",
        ReqStatus::Uncovered => "s-uncovered",
        ReqStatus::Failed => "s-failed",
    }
}

fn pill_outcome(o: Outcome) -> String {
    format!("<span class=\"pill o-{}\">{}</span>", o.name(), o.label())
}

fn pill_status(s: ReqStatus) -> String {
    format!(
        "<span class=\"pill {}\">{}</span>",
        status_class(s),
        s.label()
    )
}

/// A count cell: greyed when zero, coloured like its outcome or status otherwise.
fn count_cell(n: usize, class: &str) -> String {
    if n == 0 {
        "<td class=\"n zero\">0</td>".into()
    } else {
        format!("<td class=\"n {class}\">{n}</td>")
    }
}

fn kv(out: &mut String, key: &str, value_html: &str) {
    let _ = writeln!(
        out,
        "<tr><th>{}</th><td>{value_html}</td></tr>",
        escape(key)
    );
}

fn cut(text: &str) -> String {
    let n = text.chars().count();
    if n <= MAX_DETAIL_CHARS {
        return escape(text);
    }
    let head: String = text.chars().take(MAX_DETAIL_CHARS).collect();
    format!(
        "{}\n[... {} more characters: see the JSON report]",
        escape(&head),
        n - MAX_DETAIL_CHARS
    )
}

fn banner(out: &mut String, c: &Certificate) {
    let problems = if c.reasons.is_empty() {
        String::new()
    } else {
        format!(
            " &middot; {} reason{}",
            c.reasons.len(),
            if c.reasons.len() == 1 { "" } else { "s" }
        )
    };
    let _ = writeln!(
        out,
        "<header class=\"banner\" id=\"banner\" style=\"background:{}\">\n\
         <div class=\"verdict\" id=\"verdict\">{}</div>\n\
         <div class=\"profile\">Profile <b>{}</b>{}</div>\n\
         <div class=\"sub\">host kernel {} &middot; {} &middot; run {}{problems}</div>\n\
         </header>",
        verdict_color(c.verdict),
        c.verdict.label(),
        escape(&c.profile.name),
        if c.profile.description.is_empty() {
            String::new()
        } else {
            format!(": {}", escape(&c.profile.description))
        },
        escape(&c.run.host.kernel),
        escape(&c.run.host.kvm_backend),
        escape(&c.run.run_id),
    );
}

fn identity(out: &mut String, c: &Certificate) {
    out.push_str("<section id=\"run\"><h2>Host and run</h2><table class=\"kv\">\n");
    let h = &c.run.host;
    kv(
        out,
        "Host kernel",
        &format!("<span id=\"kernel\">{}</span>", escape(&h.kernel)),
    );
    kv(out, "KVM backend", &escape(&h.kvm_backend));
    kv(
        out,
        "PVM dialect",
        &format!(
            "{} <span class=\"small\">({})</span>",
            escape(h.dialect.as_deref().unwrap_or("none")),
            escape(&h.dialect_evidence)
        ),
    );
    kv(out, "CPU", &escape(&h.cpu));
    kv(out, "/dev/kvm", &escape(&h.kvm));
    kv(out, "Target", &escape(&c.run.target));
    kv(
        out,
        "Suite version",
        &format!(
            "{} <span class=\"small\">(certified by {})</span>",
            escape(if c.run.suite_version.is_empty() {
                "not recorded"
            } else {
                &c.run.suite_version
            }),
            escape(SUITE_VERSION)
        ),
    );
    kv(
        out,
        "Guest image SHA-256",
        &format!(
            "<span class=\"mono\" id=\"image-sha256\">{}</span>",
            escape(if c.run.image_sha256.is_empty() {
                "missing"
            } else {
                &c.run.image_sha256
            })
        ),
    );
    kv(
        out,
        "Run id",
        &format!("<span class=\"mono\">{}</span>", escape(&c.run.run_id)),
    );
    kv(out, "Started", &escape(&c.run.started));
    kv(
        out,
        "Report",
        &format!(
            "<span class=\"mono\">{}</span> &middot; {} &middot; state {}",
            escape(&c.report_file),
            escape(&c.report_schema),
            escape(match c.report_state {
                crate::report::RunState::Running => "running",
                crate::report::RunState::Interrupted => "interrupted",
                crate::report::RunState::Complete => "complete",
            })
        ),
    );
    kv(out, "Instances", &escape(&summary_line(&c.summary)));
    kv(out, "Known deviations from", &escape(&c.expectations));
    out.push_str("</table></section>\n");
}

fn reasons(out: &mut String, c: &Certificate) {
    if c.reasons.is_empty() {
        let _ = writeln!(
            out,
            "<section id=\"reasons\"><h2>Reasons</h2><p>None: every required requirement {} \
             and the report shows what the profile asks for.</p>",
            if c.verdict == Verdict::CertifiedWithDeviations {
                "held or has a documented deviation the profile accepts,"
            } else {
                "held,"
            }
        );
    } else {
        let _ = writeln!(
            out,
            "<section id=\"reasons\"><h2>Reasons ({})</h2><ol class=\"reasons\">",
            c.reasons.len()
        );
        for r in &c.reasons {
            let _ = writeln!(out, "<li class=\"reason\">{}</li>", escape(r));
        }
        out.push_str("</ol>\n");
    }
    if !c.accepted_deviations.is_empty() {
        let _ = writeln!(
            out,
            "<h2>Accepted deviations ({})</h2><p>Documented in the expectations with a reason \
             and evidence (see Failures and deviations below); the profile accepts them.</p>\
             <ol class=\"reasons\">",
            c.accepted_deviations.len()
        );
        for d in &c.accepted_deviations {
            let _ = writeln!(out, "<li>{}</li>", escape(d));
        }
        out.push_str("</ol>\n");
    }
    if !c.warnings.is_empty() {
        let _ = writeln!(
            out,
            "<h2>Warnings ({})</h2><ol class=\"reasons\">",
            c.warnings.len()
        );
        for w in &c.warnings {
            let _ = writeln!(out, "<li>{}</li>", escape(w));
        }
        out.push_str("</ol>\n");
    }
    out.push_str("</section>\n");
}

fn profile(out: &mut String, c: &Certificate) {
    let p = &c.profile;
    let join = |v: Vec<&str>| escape(&v.join(", "));
    out.push_str("<section id=\"profile\"><h2>Profile</h2><table class=\"kv\">\n");
    kv(out, "Name", &format!("<b>{}</b>", escape(&p.name)));
    kv(
        out,
        "File",
        &format!("<span class=\"mono\">{}</span>", escape(&p.source)),
    );
    if !p.description.is_empty() {
        kv(out, "Description", &escape(&p.description));
    }
    if let Some(d) = &p.dialect {
        kv(out, "Host dialect", &escape(d));
    }
    kv(
        out,
        "Environments",
        &join(p.envs.iter().map(|e| e.name()).collect()),
    );
    kv(
        out,
        "Areas",
        &join(p.areas.iter().map(|a| a.name()).collect()),
    );
    kv(
        out,
        "Levels that must hold",
        &join(p.levels.iter().map(|l| l.name()).collect()),
    );
    kv(
        out,
        "Documented deviations",
        escape(p.deviations.name()).as_str(),
    );
    kv(
        out,
        "Instances that ran",
        &format!(
            "{} of {} in scope (at least {} required)",
            c.ran_instances, c.in_scope_instances, p.min_instances
        ),
    );
    kv(
        out,
        "Requires",
        &format!(
            "complete run: {}; clean host health: {}",
            if p.require_complete { "yes" } else { "no" },
            if p.require_host_health { "yes" } else { "no" }
        ),
    );
    out.push_str("</table></section>\n");
}

fn areas(out: &mut String, c: &Certificate) {
    out.push_str(
        "<section id=\"areas\"><h2>Areas</h2><table>\n<tr><th rowspan=\"2\">area</th>\
         <th colspan=\"6\">instances in scope</th><th colspan=\"5\">requirements</th></tr>\n<tr>",
    );
    for o in Outcome::ALL {
        let _ = write!(out, "<th>{}</th>", o.label());
    }
    for s in ReqStatus::ALL {
        let _ = write!(out, "<th>{}</th>", s.label());
    }
    out.push_str("</tr>\n");
    for row in &c.areas {
        let _ = write!(out, "<tr><th>{}</th>", escape(&row.area));
        for o in Outcome::ALL {
            out.push_str(&count_cell(row.outcome(o), &format!("o-{}", o.name())));
        }
        for s in ReqStatus::ALL {
            out.push_str(&count_cell(row.status(s), status_class(s)));
        }
        out.push_str("</tr>\n");
    }
    let uncovered = c.count(ReqStatus::Uncovered, false);
    if uncovered > 0 {
        out.push_str("<tr><th>no case</th>");
        for _ in Outcome::ALL {
            out.push_str(&count_cell(0, ""));
        }
        for s in ReqStatus::ALL {
            let n = if s == ReqStatus::Uncovered {
                uncovered
            } else {
                0
            };
            out.push_str(&count_cell(n, status_class(s)));
        }
        out.push_str("</tr>\n");
    }
    let _ = writeln!(
        out,
        "</table><p class=\"small\">A requirement counts in the row of every area whose cases \
         name it. {} requirement(s) of the catalog are outside the profile's environments or \
         areas.</p></section>",
        c.out_of_scope
    );
}

fn instances_cell(r: &RequirementVerdict) -> String {
    if r.status == ReqStatus::Uncovered {
        return "<span class=\"small\">no case names it</span>".into();
    }
    if r.instances.is_empty() {
        return "<span class=\"small\">none in the profile's environments</span>".into();
    }
    let counts: Vec<String> = Outcome::ALL
        .iter()
        .rev()
        .filter_map(|&o| {
            let n = r.instances.iter().filter(|i| i.outcome == o).count();
            (n > 0).then(|| format!("{n} {}", o.label()))
        })
        .collect();
    let mut s = escape(&counts.join(", "));
    let notable: Vec<String> = r
        .instances
        .iter()
        .filter(|i| i.outcome != Outcome::Pass)
        .map(|i| format!("{} {}", escape(&i.id), i.outcome.label()))
        .collect();
    if !notable.is_empty() {
        let _ = write!(
            s,
            "<br><span class=\"small mono\">{}</span>",
            notable.join("<br>")
        );
    }
    s
}

fn requirements(out: &mut String, c: &Certificate) {
    let mut rows: Vec<&RequirementVerdict> = c.requirements.iter().collect();
    rows.sort_by(|a, b| {
        b.required
            .cmp(&a.required)
            .then(b.status.cmp(&a.status))
            .then(a.requirement.id.cmp(&b.requirement.id))
    });
    let counts: Vec<String> = ReqStatus::ALL
        .iter()
        .rev()
        .filter_map(|&s| {
            let n = c.count(s, true);
            (n > 0).then(|| format!("{n} {}", s.label()))
        })
        .collect();
    let _ = writeln!(
        out,
        "<section id=\"requirements\"><h2>Requirements ({} in scope)</h2>\
         <p>Required ({}): {}. Informative rows (a level the profile does not require) are \
         marked; their failures are warnings.</p>\n<table class=\"reqs\">\n<tr><th>id, areas</th><th>level</th>\
         <th>statement</th><th>source</th><th>status</th><th>instances</th></tr>",
        c.requirements.len(),
        escape(
            &c.profile
                .levels
                .iter()
                .map(|l| l.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        escape(&if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        })
    );
    for r in rows {
        let q = &r.requirement;
        let _ = writeln!(
            out,
            "<tr><td class=\"id\"><span class=\"mono\">{}</span><br><span class=\"small\">{}\
             </span></td><td>{}{}</td><td>{}</td><td class=\"small\">{}</td><td>{}</td>\
             <td>{}</td></tr>",
            escape(&q.id),
            escape(&if r.areas.is_empty() {
                "no area".to_string()
            } else {
                r.areas.join(", ")
            }),
            q.level.name(),
            if r.required {
                ""
            } else {
                "<br><span class=\"small\">informative</span>"
            },
            escape(&q.statement),
            escape(&q.source),
            pill_status(r.status),
            instances_cell(r)
        );
    }
    out.push_str("</table></section>\n");
}

fn findings(out: &mut String, c: &Certificate) {
    let _ = writeln!(
        out,
        "<section id=\"findings\"><h2>Failures and deviations ({})</h2>",
        c.findings.len()
    );
    if c.findings.is_empty() {
        out.push_str(
            "<p>No in-scope instance failed, crashed, errored or deviated.</p></section>\n",
        );
        return;
    }
    for f in &c.findings {
        let class = if f.outcome == Outcome::Xfail {
            "finding xfail"
        } else {
            "finding"
        };
        let _ = writeln!(
            out,
            "<article class=\"{class}\"><h3>{} <span class=\"mono\">{}</span></h3>\n\
             <p class=\"meta\">area {} &middot; environment {} &middot; requirements {} \
             &middot; {} check(s) &middot; {:.0} ms</p><p>{}</p>",
            pill_outcome(f.outcome),
            escape(&f.id),
            escape(&f.area),
            escape(&f.env),
            escape(&if f.requirements.is_empty() {
                "none".to_string()
            } else {
                f.requirements.join(", ")
            }),
            f.checks,
            f.duration_ms,
            escape(&f.summary)
        );
        if f.outcome == Outcome::Xfail {
            let _ = writeln!(
                out,
                "<p>Evidence: <span class=\"mono\">{}</span></p>",
                escape(deviation_evidence(&f.detail).unwrap_or("none named"))
            );
        }
        let _ = writeln!(out, "<pre class=\"detail\">{}</pre>", cut(&f.detail));
        if !f.kernel_log.is_empty() {
            let _ = writeln!(
                out,
                "<p class=\"meta\">Host kernel log while it ran ({} line(s)):</p><pre>{}</pre>",
                f.kernel_log.len(),
                cut(&f.kernel_log.join("\n"))
            );
        }
        out.push_str("</article>\n");
    }
    out.push_str("</section>\n");
}

fn kernel_lines(out: &mut String, title: &str, lines: &[KernelLine], with_reason: bool) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "<h3>{} ({})</h3><table><tr><th>instance</th><th>class</th><th>line</th>{}</tr>",
        escape(title),
        lines.len(),
        if with_reason { "<th>reason</th>" } else { "" }
    );
    for l in lines {
        let _ = writeln!(
            out,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td>{}</tr>",
            escape(&l.instance),
            escape(&l.class),
            cut(&l.text),
            if with_reason {
                format!("<td>{}</td>", escape(&l.reason))
            } else {
                String::new()
            }
        );
    }
    out.push_str("</table>\n");
}

fn health(out: &mut String, c: &Certificate) {
    out.push_str("<section id=\"health\"><h2>Host health</h2>\n");
    let Some(h) = &c.host_health else {
        out.push_str(
            "<p class=\"note\">Not recorded: the report has no host-health section (the host \
             kernel log was not watched during the run).</p></section>\n",
        );
        return;
    };
    out.push_str("<table class=\"kv\">\n");
    let class = match h.status.as_str() {
        "clean" => "s-held",
        "bad" => "s-failed",
        _ => "s-not-run",
    };
    kv(
        out,
        "Status",
        &format!("<span class=\"pill {class}\">{}</span>", escape(&h.status)),
    );
    kv(
        out,
        "Fresh VM after the run",
        &match h.fresh_boot {
            None => "not checked".to_string(),
            Some(true) => "booted and reported".to_string(),
            Some(false) => format!("did not boot: {}", escape(&h.fresh_boot_detail)),
        },
    );
    kv(out, "Bad kernel-log lines", &h.bad_lines.len().to_string());
    kv(
        out,
        "Allowed kernel-log lines",
        &h.allowed_lines.len().to_string(),
    );
    out.push_str("</table>\n");
    kernel_lines(out, "Bad lines", &h.bad_lines, false);
    kernel_lines(out, "Allowed lines", &h.allowed_lines, true);
    out.push_str("</section>\n");
}

fn bench(out: &mut String, c: &Certificate, b: &BenchInput<'_>) {
    let r = b.report;
    let _ = writeln!(
        out,
        "<section id=\"bench\"><h2>Benchmarks</h2><p class=\"small\">From <span \
         class=\"mono\">{}</span>: host kernel {}, {}, {} VMs per benchmark, TSC {} kHz. \
         Informative: benchmarks do not decide the verdict.</p>",
        escape(b.file),
        escape(&r.host.kernel),
        escape(&r.host.kvm_backend),
        r.repetitions,
        r.tsc_khz
    );
    if r.host.kernel != c.run.host.kernel || r.host.cpu != c.run.host.cpu {
        let _ = writeln!(
            out,
            "<p class=\"note\">The benchmark report comes from another host (kernel {}, CPU {}) \
             than the conformance report.</p>",
            escape(&r.host.kernel),
            escape(&r.host.cpu)
        );
    }
    match bench_chart(r) {
        Some(svg) => out.push_str(&svg),
        None => out.push_str("<p>No benchmark row has samples.</p>\n"),
    }
    out.push_str(
        "<table><tr><th>benchmark</th><th>environment</th><th>median</th><th>p99</th>\
         <th>CV of VM medians</th><th>vs native</th><th>note</th></tr>\n",
    );
    let rows = r
        .benchmarks
        .iter()
        .map(|b| {
            (
                &b.name,
                b.env.as_str(),
                &b.stats,
                b.ratio_to_native,
                b.note.as_str(),
            )
        })
        .chain(
            r.native
                .iter()
                .map(|n| (&n.name, "native host", &n.stats, None, "")),
        );
    for (name, env, s, ratio, note) in rows {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{:.3}</td><td class=\"n\">{}</td><td class=\"small\">{}</td></tr>",
            escape(name),
            escape(env),
            if s.samples > 0 {
                format_ns(s.median_ns)
            } else {
                "-".into()
            },
            if s.samples > 0 {
                format_ns(s.p99_ns)
            } else {
                "-".into()
            },
            s.cv,
            ratio.map_or("-".into(), |x| format!("{x:.1}x")),
            escape(note)
        );
    }
    out.push_str("</table></section>\n");
}

/// The certificate page for `c`, with `bench` when given; `generated` is the time it was made.
pub fn render(c: &Certificate, bench_input: Option<&BenchInput<'_>>, generated: &str) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'\">\n<meta name=\"viewport\" content=\"width=device-width\">\n\
         <title>{}: {} - pvm-conformance certificate</title>\n<style>\n{CSS}</style></head>\n\
         <body>",
        c.verdict.label(),
        escape(&c.profile.name)
    );
    banner(&mut out, c);
    out.push_str("<main>\n");
    identity(&mut out, c);
    reasons(&mut out, c);
    areas(&mut out, c);
    profile(&mut out, c);
    requirements(&mut out, c);
    findings(&mut out, c);
    health(&mut out, c);
    if let Some(b) = bench_input {
        bench(&mut out, c, b);
    }
    let _ = writeln!(
        out,
        "<footer>{} &middot; made {} by pvm-conformance {} (cargo xtask certify) from {}.\
         </footer>\n</main></body></html>",
        escape(super::CERTIFICATE_SCHEMA),
        escape(generated),
        escape(SUITE_VERSION),
        escape(&c.report_file)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{all_pass, bench_report, catalog, inst, report};
    use super::super::profile::Profile;
    use super::super::verdict::evaluate;
    use super::*;

    const HOSTILE: &str =
        "<script>alert(1)</script></pre><img src=x onerror=y> & \"q\" 'a' \u{202e}\u{1}";

    fn page(bench_report: Option<&BenchReport>) -> String {
        let p = Profile::parse(
            "name = \"t<p>\"\ndescription = \"d & d\"\nenvs = [\"hvm64\", \"pv-local\"]\n\
             levels = [\"MUST\"]\ndeviations = \"reject\"\n",
            "t.toml",
        )
        .expect("profile");
        let mut cases = all_pass();
        let mut bad = inst("io.h", "hvm64", "io", Outcome::Crash, &["M-1"]);
        bad.detail = HOSTILE.into();
        bad.summary = HOSTILE.into();
        bad.kernel_log = vec![HOSTILE.into()];
        cases.push(bad);
        cases.push(inst("io.d", "pv-local", "io", Outcome::Xfail, &["S-1"]));
        let mut r = report(cases);
        r.run.host.kernel = "6.18<k>".into();
        let c = evaluate(&p, &r, &catalog(), "r<.json");
        let b = bench_report.map(|report| BenchInput {
            report,
            file: "bench.json",
        });
        render(&c, b.as_ref(), "2026-12-01T00:00:00Z")
    }

    #[test]
    fn everything_from_the_report_is_escaped() {
        let html = page(None);
        assert!(!html.contains("<script"), "no script element");
        assert!(!html.contains("<img"), "no img element");
        assert!(!html.contains("\u{202e}") && !html.contains('\u{1}'));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&lt;/pre&gt;"));
        assert!(html.contains("6.18&lt;k&gt;") && html.contains("t&lt;p&gt;"));
        assert!(html.contains("r&lt;.json") && html.contains("d &amp; d"));
        assert_eq!(escape("a\tb\nc"), "a\tb\nc");
    }

    /// The page's own tags (all text from the report is escaped, so every `<` starts one).
    fn tags(html: &str) -> Vec<&str> {
        html.split('<')
            .skip(1)
            .map(|t| t.split('>').next().unwrap_or(t))
            .collect()
    }

    #[test]
    fn the_page_is_self_contained() {
        let html = page(Some(&bench_report()));
        let tags = tags(&html);
        assert!(tags.len() > 100, "{} tags", tags.len());
        for t in tags {
            let name = t.split_whitespace().next().unwrap_or("").to_lowercase();
            for bad in [
                "script", "link", "img", "iframe", "object", "embed", "image", "use",
            ] {
                assert_ne!(name, bad, "the page has a <{t}> element");
            }
            for bad in ["src=", "href=", "url(", "http:", "https:", " on"] {
                assert!(!t.contains(bad), "tag <{t}> contains {bad:?}");
            }
        }
        for bad in ["url(", "@import"] {
            assert!(!CSS.contains(bad), "the CSS contains {bad:?}");
        }
        assert!(html.contains("default-src 'none'"));
        assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    }

    #[test]
    fn the_page_has_every_section() {
        let html = page(Some(&bench_report()));
        assert!(html.contains(&format!(
            "style=\"background:{}\"",
            verdict_color(Verdict::NotCertified)
        )));
        assert!(html.contains("<div class=\"verdict\" id=\"verdict\">NOT CERTIFIED</div>"));
        for id in [
            "run",
            "reasons",
            "areas",
            "profile",
            "requirements",
            "findings",
            "health",
            "bench",
        ] {
            assert!(
                html.contains(&format!("<section id=\"{id}\">")),
                "section {id}"
            );
        }
        assert!(html.contains("M-1 (MUST) FAILED: io.h~hvm64 CRASH"));
        assert!(html.contains(&"ab".repeat(32)));
        assert!(html.contains("Evidence: <span class=\"mono\">docs/x.md#1</span>"));
        assert!(html.contains("<svg class=\"chart\""));
        assert!(html.contains("Host kernel log while it ran (1 line(s))"));
        assert!(!page(None).contains("<section id=\"bench\">"));
    }

    #[test]
    fn long_details_are_cut() {
        let long = "x".repeat(MAX_DETAIL_CHARS + 10);
        let c = cut(&long);
        assert!(c.ends_with("[... 10 more characters: see the JSON report]"));
    }
}
