//! What the proxy benchmark prints: a table per row from the medians of its rounds (with the
//! errors, visibly, and the access-log lines per request), ratios from the median of per-round
//! ratios, and at the end the whole run as Markdown tables.

use super::load::Run;
use super::memory::Rss;
use super::targets::Target;

/// One target's runs in one row.
#[derive(Debug)]
pub struct Cell {
    /// Which target.
    pub target: Target,
    /// How tables name it.
    pub label: String,
    /// The measured runs, one per round.
    pub runs: Vec<Run>,
    /// Access-log lines written during the measured runs (None: no process of its own).
    pub logged: Option<u64>,
    /// Why it stopped being measured, if it did.
    pub failure: Option<String>,
}

impl Cell {
    /// A target about to be measured.
    pub fn new(target: Target, label: &str) -> Cell {
        Cell { target, label: label.to_string(), runs: Vec::new(), logged: Some(0), failure: None }
    }

    fn median(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.runs.iter().map(f).collect())
    }

    fn sum(&self, f: impl Fn(&Run) -> u64) -> u64 {
        self.runs.iter().map(f).sum()
    }

    /// The errors column: failed requests over all rounds (a median would hide rare ones).
    fn errors(&self) -> u64 {
        self.sum(Run::errors)
    }

    /// Access-log lines per request, as a percentage.
    fn logged_share(&self) -> Option<f64> {
        let requests = self.sum(|r| r.requests);
        self.logged.map(|l| if requests == 0 { 0.0 } else { 100.0 * l as f64 / requests as f64 })
    }
}

/// The middle value (the upper one of an even count); NaN for none.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One target against another in one row: medians of per-round ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ratio {
    rps: f64,
    p99: f64,
    /// CPU per request; NaN where either side's was not measured.
    cpu: f64,
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2}× req/s, p99 {:.2}×", self.rps, self.p99)?;
        if self.cpu.is_finite() {
            write!(f, ", CPU/req {:.2}×", self.cpu)?;
        }
        Ok(())
    }
}

/// A row's results: one cell per target, and which cells to compare.
#[derive(Debug)]
pub struct RowResult {
    /// What was sent.
    pub title: String,
    /// How: the tool and its flags.
    pub detail: String,
    /// The targets, in table order.
    pub cells: Vec<Cell>,
    /// Pairs (a, b) of cell indices whose ratio a ÷ b is reported.
    pub compare: Vec<(usize, usize)>,
}

impl RowResult {
    /// Shoal against each peer measured in the same row.
    pub fn shoal_vs_peers(cells: &[Cell]) -> Vec<(usize, usize)> {
        let Some(shoal) = cells.iter().position(|c| c.target == Target::Shoal) else { return Vec::new() };
        let peers = [Target::Haproxy, Target::Nginx, Target::Caddy];
        cells.iter().enumerate().filter(|(_, c)| peers.contains(&c.target)).map(|(i, _)| (shoal, i)).collect()
    }

    /// Median over rounds of a ÷ b, for req/s, p99 and CPU per request (same round, same
    /// weather on the machine); None if either has no complete round.
    fn ratio(&self, (a, b): (usize, usize)) -> Option<Ratio> {
        let (a, b) = (&self.cells[a], &self.cells[b]);
        let pairs: Vec<(&Run, &Run)> = a.runs.iter().zip(&b.runs).collect();
        if pairs.is_empty() {
            return None;
        }
        let of = |f: fn(&Run) -> f64| median(pairs.iter().map(|(a, b)| f(a) / f(b)).collect());
        Some(Ratio { rps: of(|r| r.rps), p99: of(|r| r.p99_ms), cpu: of(|r| r.cpu_us) })
    }

    /// The row's table, its errors and its ratios, on stdout.
    pub fn print(&self) {
        println!();
        println!("{} — {}", self.title, self.detail);
        println!(
            "{:<34} {:>10} {:>9} {:>9} {:>8} {:>10} {:>11}",
            "", "req/s", "p50 ms", "p99 ms", "errors", "log/req", "CPU µs/req"
        );
        for c in &self.cells {
            let logged = c.logged_share().map_or("–".into(), |p| format!("{p:.1} %"));
            if c.runs.is_empty() {
                println!("{:<34} {:>10}", c.label, "failed");
                continue;
            }
            println!(
                "{:<34} {:>10.0} {:>9.3} {:>9.3} {:>8} {:>10} {:>11}",
                c.label,
                c.median(|r| r.rps),
                c.median(|r| r.p50_ms),
                c.median(|r| r.p99_ms),
                c.errors(),
                logged,
                micros(c.median(|r| r.cpu_us))
            );
        }
        for c in &self.cells {
            if c.errors() > 0 {
                println!(
                    "!! {}: {} responses not 2xx/3xx and {} socket errors in {} runs",
                    c.label,
                    c.sum(|r| r.non_2xx),
                    c.sum(|r| r.socket_errors),
                    c.runs.len()
                );
            }
            if let Some(why) = &c.failure {
                println!("!! {}: not measured after {} runs: {why}", c.label, c.runs.len());
            }
        }
        let ratios: Vec<String> = self
            .compare
            .iter()
            .filter_map(|&pair| {
                let ratio = self.ratio(pair)?;
                let (a, b) = (&self.cells[pair.0], &self.cells[pair.1]);
                let (a, b) = if a.target == b.target {
                    (a.label.as_str(), b.label.as_str())
                } else {
                    (name(a.target), name(b.target))
                };
                Some(format!("{a} ÷ {b}: {ratio}"))
            })
            .collect();
        if !ratios.is_empty() {
            println!("{}   (median of per-round ratios)", ratios.join("   "));
        }
    }
}

/// A target's name in a column header.
fn name(t: Target) -> &'static str {
    match t {
        Target::Direct => "direct",
        Target::Shoal => "Shoal",
        Target::Haproxy => "HAProxy",
        Target::Nginx => "nginx",
        Target::Caddy => "Caddy",
    }
}

/// A CPU time per request in µs, `–` where not measured.
fn micros(us: f64) -> String {
    if us.is_finite() { format!("{us:.1}") } else { "–".into() }
}

/// `39802.4` as `39 802`.
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

/// The whole run as Markdown: req/s, latencies and ratios (rows × targets), the thread-count
/// comparison and memory.
pub fn print_markdown(rows: &[RowResult], threads: Option<&RowResult>, memory: &[Rss], idle_conns: usize) {
    if !rows.is_empty() {
        print_rows(rows);
    }
    if let Some(t) = threads {
        println!();
        println!("| {} | req/s | p50 | p99 | errors |", t.title);
        println!("|---|---|---|---|---|");
        for c in &t.cells {
            println!(
                "| {} | {} | {:.2} ms | {:.2} ms | {} |",
                c.label,
                thousands(c.median(|r| r.rps)),
                c.median(|r| r.p50_ms),
                c.median(|r| r.p99_ms),
                c.errors()
            );
        }
        if let Some(ratio) = t.compare.first().and_then(|&pair| t.ratio(pair)) {
            println!();
            println!("2 threads ÷ 1 thread, median of per-round ratios: {ratio}");
        }
    }
    if !memory.is_empty() {
        println!();
        println!("| RSS | idle | {idle_conns} idle keep-alive connections | per connection |");
        println!("|---|---|---|---|");
        for m in memory {
            println!(
                "| {} | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
                m.label,
                m.idle_kib as f64 / 1024.0,
                m.loaded_kib as f64 / 1024.0,
                m.loaded_kib.saturating_sub(m.idle_kib) as f64 / idle_conns.max(1) as f64
            );
        }
    }
}

/// The request rows: req/s, latencies, and Shoal's ratios to each peer.
fn print_rows(rows: &[RowResult]) {
    let cells = || rows.iter().flat_map(|r| &r.cells);
    let columns: Vec<Target> = Target::ALL.into_iter().filter(|t| cells().any(|c| c.target == *t)).collect();
    let mut labels: Vec<&str> = Vec::new();
    for c in cells() {
        if !labels.contains(&c.label.as_str()) {
            labels.push(&c.label);
        }
    }
    println!();
    println!("Targets: {}", labels.join("; "));
    // A measured cell through `f`; `–` where the target sat the row out.
    let measured = |row: &RowResult, t: Target, f: &dyn Fn(&Cell) -> String| {
        row.cells
            .iter()
            .find(|c| c.target == t)
            .map_or("–".into(), |c| if c.runs.is_empty() { "failed".into() } else { f(c) })
    };
    table("req/s (errors)", rows, &columns, &|row, t| {
        measured(row, t, &|c| match c.errors() {
            0 => thousands(c.median(|r| r.rps)),
            e => format!("{} (**{e} errors**)", thousands(c.median(|r| r.rps))),
        })
    });
    table("p50 / p99, ms", rows, &columns, &|row, t| {
        measured(row, t, &|c| format!("{:.2} / {:.2}", c.median(|r| r.p50_ms), c.median(|r| r.p99_ms)))
    });
    table("proxy CPU per request, µs (all its threads)", rows, &columns, &|row, t| {
        measured(row, t, &|c| micros(c.median(|r| r.cpu_us)))
    });
    let peers: Vec<Target> =
        [Target::Haproxy, Target::Nginx, Target::Caddy].into_iter().filter(|t| columns.contains(t)).collect();
    if columns.contains(&Target::Shoal) && !peers.is_empty() {
        table(
            "Shoal ÷ peer: req/s, p99, CPU per request (median of per-round ratios)",
            rows,
            &peers,
            &|row, t| {
                let index = |t: Target| row.cells.iter().position(|c| c.target == t);
                index(Target::Shoal).zip(index(t)).and_then(|pair| row.ratio(pair)).map_or(
                    "–".into(),
                    |r| {
                        format!(
                            "{:.2}×, {:.2}×, {}",
                            r.rps,
                            r.p99,
                            if r.cpu.is_finite() { format!("{:.2}×", r.cpu) } else { "–".into() }
                        )
                    },
                )
            },
        );
    }
}

/// A Markdown table: a line per row, a column per target, each cell from `f`.
fn table(title: &str, rows: &[RowResult], columns: &[Target], f: &dyn Fn(&RowResult, Target) -> String) {
    let names: Vec<&str> = columns.iter().map(|&t| name(t)).collect();
    println!();
    println!("| {title} | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(columns.len()));
    for row in rows {
        let cols: Vec<String> = columns.iter().map(|&t| f(row, t)).collect();
        println!("| {} | {} |", row.title, cols.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rps: f64, p99_ms: f64) -> Run {
        Run { rps, p50_ms: 1.0, p99_ms, requests: 100, cpu_us: 1e6 / rps, ..Run::default() }
    }

    #[test]
    fn ratios_are_medians_of_per_round_ratios() {
        let mut shoal = Cell::new(Target::Shoal, "Shoal, 1 worker thread");
        shoal.runs = vec![run(100.0, 2.0), run(90.0, 2.0), run(120.0, 3.0)];
        let mut hp = Cell::new(Target::Haproxy, "HAProxy 2.6.12, nbthread 1");
        hp.runs = vec![run(100.0, 4.0), run(60.0, 2.0), run(100.0, 3.0)];
        let cells = vec![shoal, hp];
        let row = RowResult {
            title: "t".into(),
            detail: String::new(),
            compare: RowResult::shoal_vs_peers(&cells),
            cells,
        };
        assert_eq!(row.compare, vec![(0, 1)]);
        // req/s ratios 1.0, 1.5, 1.2 → 1.2; p99 ratios 0.5, 1.0, 1.0 → 1.0; CPU per request
        // (here the inverse of req/s) 1.0, 0.67, 0.83 → 0.83
        let r = row.ratio((0, 1)).unwrap();
        assert_eq!((r.rps, r.p99), (1.2, 1.0));
        assert!((r.cpu - 100.0 / 120.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.to_string(), "1.20× req/s, p99 1.00×, CPU/req 0.83×");
    }

    #[test]
    fn numbers_group_by_thousands() {
        assert_eq!(thousands(39802.4), "39 802");
        assert_eq!(thousands(812.0), "812");
        assert_eq!(thousands(1000.0), "1 000");
        assert_eq!(thousands(f64::NAN), "–");
    }

    #[test]
    fn log_share_counts_lines_per_request() {
        let mut c = Cell::new(Target::Nginx, "nginx");
        c.runs = vec![run(1.0, 1.0), run(1.0, 1.0)];
        c.logged = Some(150);
        assert_eq!(c.logged_share(), Some(75.0));
    }
}
