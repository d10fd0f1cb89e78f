//! The human report of a run, written next to `result.json`: `report.md` (Markdown, the
//! plots as SVG files beside it) and `report.html` (the same, plots inline). Plots: the share
//! of accesses served from node 0 (DRAM) over time per migration run, the batch latency
//! distribution per engine, and benchmark throughput by engine x folio size x batch size.

use crate::plots;
use crate::report::RunResult;
use guest_agent::spec::{BenchReport, EngineKind, MigrateReport};
use std::path::Path;

/// One figure: file name, caption, SVG text.
struct Figure {
    file: String,
    caption: String,
    svg: String,
}

fn node0_figure(name: &str, r: &MigrateReport) -> Figure {
    let pts: Vec<(f64, f64)> = r
        .node0_fraction
        .iter()
        .map(|&(ms, f)| (ms as f64 / 1000.0, f * 100.0))
        .collect();
    Figure {
        file: format!("node0-share-{name}.svg"),
        caption: format!(
            "Run {name}: share of the workload's accesses served from node 0 (DRAM) while the migrator promoted {} of {} folios",
            r.promoted, r.folios
        ),
        svg: plots::line_chart(
            &format!("Accesses served from DRAM: {name}"),
            "seconds since the workload started",
            "% of accesses on node 0",
            (0.0, 100.0),
            &[(format!("{:?} source", r.source.source), pts)],
        ),
    }
}

/// With a DRAM budget: promotion and demotion over time with the node-0 share.
fn tiering_figure(name: &str, r: &MigrateReport) -> Option<Figure> {
    let t = r.tiering.as_ref()?;
    Some(Figure {
        file: format!("tiering-{name}.svg"),
        caption: format!(
            "Run {name}: promotions and demotions per sample period and node-0 use, as % of the DRAM budget of {} folios, with the share of accesses served from node 0; {} promoted and {} demoted in all",
            t.dram_budget, t.promoted_total, t.demoted_total
        ),
        svg: plots::line_chart(
            &format!("Tiering both ways: {name}"),
            "seconds since the workload started",
            "%",
            (0.0, 100.0),
            &crate::tiering::figure_series(r),
        ),
    })
}

fn latency_figure(name: &str, r: &MigrateReport) -> Option<Figure> {
    if r.batches.is_empty() {
        return None;
    }
    let mut engines: Vec<EngineKind> = r.batches.iter().map(|b| b.engine).collect();
    engines.sort_by_key(|e| e.name());
    engines.dedup();
    let series: Vec<(String, Vec<u64>)> = engines
        .iter()
        .map(|e| {
            (
                e.name().to_owned(),
                r.batches
                    .iter()
                    .filter(|b| b.engine == *e)
                    .map(|b| b.latency_us)
                    .collect(),
            )
        })
        .collect();
    Some(Figure {
        file: format!("batch-latency-{name}.svg"),
        caption: format!(
            "Run {name}: batch latency (write-protect, copy, verify, remap), {} batches; p50 {} us, p99 {} us",
            r.batches.len(),
            r.batch_latency_us.p50,
            r.batch_latency_us.p99
        ),
        svg: plots::histogram(
            &format!("Batch latency: {name}"),
            "batch latency (bars start at powers of two)",
            &series,
        ),
    })
}

fn bench_figures(b: &BenchReport) -> Vec<Figure> {
    let mut engines: Vec<EngineKind> = Vec::new();
    for c in &b.cases {
        if !engines.contains(&c.engine) {
            engines.push(c.engine);
        }
    }
    let mut keys: Vec<(String, u32)> = Vec::new();
    for c in &b.cases {
        let k = (c.folio.name().to_owned(), c.batch);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let names: Vec<String> = engines.iter().map(|e| e.name().to_owned()).collect();
    let value =
        |k: &(String, u32), e: EngineKind, f: &dyn Fn(&guest_agent::spec::BenchCase) -> f64| {
            b.cases
                .iter()
                .find(|c| c.folio.name() == k.0 && c.batch == k.1 && c.engine == e)
                .map(f)
        };
    let mut out = Vec::new();
    for folio in ["4k", "2m"] {
        let ks: Vec<&(String, u32)> = keys.iter().filter(|k| k.0 == folio).collect();
        if ks.is_empty() {
            continue;
        }
        let groups: Vec<(String, Vec<Option<f64>>)> = ks
            .iter()
            .map(|k| {
                (
                    format!("batch {}", k.1),
                    engines
                        .iter()
                        .map(|&e| value(k, e, &|c| c.gb_per_s))
                        .collect(),
                )
            })
            .collect();
        out.push(Figure {
            file: format!("throughput-{folio}.svg"),
            caption: format!(
                "Migration throughput with {folio} folios (write-protect, copy, verify, remap) by engine and batch size"
            ),
            svg: plots::bar_chart(
                &format!("Throughput, {folio} folios"),
                "folios per batch",
                "GB/s",
                &names,
                &groups,
            ),
        });
    }
    out
}

fn markdown(r: &RunResult, figs: &[Figure]) -> String {
    let mut s = format!(
        "# {}: {}\n\n{} ({}), {}, kernel {}. Boot to agent {:.1} s, scenario {:.1} s.\n\n",
        r.scenario,
        if r.passed { "passed" } else { "FAILED" },
        r.accel.accel,
        r.accel.reason,
        r.qemu,
        r.kernel,
        r.timings.boot_to_agent_s,
        r.timings.scenario_s
    );
    s.push_str("| check | result | detail |\n|---|---|---|\n");
    for c in &r.checks {
        s.push_str(&format!(
            "| `{}` | {} | {} |\n",
            c.name,
            if c.passed { "ok" } else { "**FAIL**" },
            c.detail.replace('|', "\\|")
        ));
    }
    for m in &r.migrate {
        let rep = &m.report;
        s.push_str(&format!(
            "\n## Run {}\n\n{} {} folios, {:?} source, {:?} policy, batches of {}: {} promoted ({:.0}/s), {} batches.\n\n",
            m.name,
            rep.folios,
            rep.spec.workload.folio.name(),
            rep.source.source,
            rep.spec.engine.policy,
            rep.spec.batch.size,
            rep.promoted,
            rep.promoted_per_s,
            rep.batches.len()
        ));
        s.push_str(
            "| engine | batches | folios | GB/s | guest CPU s/GB |\n|---|---|---|---|---|\n",
        );
        for e in &rep.engines {
            s.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.2} |\n",
                e.engine.name(),
                e.batches,
                e.folios,
                e.gb_per_s,
                e.cpu_s_per_gb
            ));
        }
    }
    if r.migrate.len() > 1 {
        s.push_str("\n## Runs side by side\n\n");
        s.push_str(&crate::compare::markdown(&crate::compare::rows(&r.migrate)));
    }
    if let Some(b) = &r.bench {
        let cols = crate::migration::BENCH_COLUMNS;
        s.push_str(&format!(
            "\n## Copy benchmark\n\n| {} |\n|{}\n",
            cols.join(" | "),
            "---|".repeat(cols.len())
        ));
        for c in &b.cases {
            s.push_str(&format!(
                "| {} |\n",
                crate::migration::bench_cells(c).join(" | ")
            ));
        }
    }
    if !figs.is_empty() {
        s.push_str("\n## Plots\n\n");
        for f in figs {
            s.push_str(&format!(
                "![{}]({})\n\n*{}*\n\n",
                f.caption, f.file, f.caption
            ));
        }
    }
    s
}

fn html(md_title: &str, r: &RunResult, figs: &[Figure]) -> String {
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut s = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{border:1px solid #ccc;padding:2px 6px}}table{{border-collapse:collapse}}.fail{{color:#b00;font-weight:bold}}</style></head><body><h1>{}</h1><table><tr><th>check</th><th>result</th><th>detail</th></tr>",
        esc(md_title),
        esc(md_title)
    );
    for c in &r.checks {
        s.push_str(&format!(
            "<tr><td><code>{}</code></td><td{}>{}</td><td>{}</td></tr>",
            esc(&c.name),
            if c.passed { "" } else { " class=\"fail\"" },
            if c.passed { "ok" } else { "FAIL" },
            esc(&c.detail)
        ));
    }
    s.push_str("</table>");
    for f in figs {
        s.push_str(&format!(
            "<figure>{}<figcaption>{}</figcaption></figure>",
            f.svg,
            esc(&f.caption)
        ));
    }
    s.push_str("</body></html>\n");
    s
}

/// Writes `report.md`, `report.html` and the SVG plots into `dir`.
pub fn write(r: &RunResult, dir: &Path) -> std::io::Result<()> {
    let mut figs = Vec::new();
    for m in &r.migrate {
        figs.push(node0_figure(&m.name, &m.report));
        figs.extend(latency_figure(&m.name, &m.report));
        figs.extend(tiering_figure(&m.name, &m.report));
    }
    if r.migrate.len() > 1 {
        figs.push(Figure {
            file: "node0-share-all-runs.svg".into(),
            caption: "Every run's share of the workload's accesses served from node 0 (DRAM), on one chart".into(),
            svg: crate::compare::share_chart(&r.migrate),
        });
    }
    if let Some(b) = &r.bench {
        figs.extend(bench_figures(b));
    }
    for f in &figs {
        std::fs::write(dir.join(&f.file), &f.svg)?;
    }
    std::fs::write(dir.join("report.md"), markdown(r, &figs))?;
    let title = format!(
        "{}: {}",
        r.scenario,
        if r.passed { "passed" } else { "FAILED" }
    );
    std::fs::write(dir.join("report.html"), html(&title, r, &figs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_agent::spec::{BatchStat, BenchCase, FolioSize};

    #[test]
    fn a_run_with_migrations_and_a_bench_gets_all_its_plots() {
        let mut r = crate::report::tests::sample_result();
        let rep = MigrateReport {
            folios: 10,
            promoted: 4,
            node0_fraction: vec![(0, 0.0), (500, 0.5), (1000, 0.9)],
            batches: vec![
                BatchStat {
                    engine: EngineKind::Sdxi,
                    latency_us: 3000,
                    ..BatchStat::default()
                },
                BatchStat {
                    engine: EngineKind::Cpu,
                    latency_us: 70,
                    ..BatchStat::default()
                },
            ],
            ..MigrateReport::default()
        };
        r.migrate.push(crate::migration::MigrateRun {
            name: "demo".into(),
            report: Box::new(rep),
            host_verify: crate::migration::HostVerify::default(),
        });
        r.bench = Some(BenchReport {
            cases: vec![BenchCase {
                engine: EngineKind::Cpu,
                folio: FolioSize::Huge,
                batch: 64,
                gb_per_s: 1.5,
                ..BenchCase::default()
            }],
        });
        let dir = std::env::temp_dir().join(format!("tierbed-doc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        write(&r, &dir).expect("write");
        let md = std::fs::read_to_string(dir.join("report.md")).expect("md");
        for f in [
            "node0-share-demo.svg",
            "batch-latency-demo.svg",
            "throughput-2m.svg",
        ] {
            assert!(md.contains(f), "{f} linked");
            let svg = std::fs::read_to_string(dir.join(f)).expect(f);
            assert!(svg.starts_with("<svg"), "{f}");
        }
        let html = std::fs::read_to_string(dir.join("report.html")).expect("html");
        assert_eq!(html.matches("<svg").count(), 3);
        std::fs::remove_dir_all(dir).ok();
    }
}
