//! Benchmark statistics and reports: samples, percentiles, the printed table
//! and the JSON file, and the benchmarks' flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Timing samples of one benchmark measure.
pub struct Samples {
    pub name: String,
    pub unit: &'static str,
    pub values: Vec<f64>,
}

impl Samples {
    pub fn new(name: &str, unit: &'static str) -> Self {
        Samples {
            name: name.to_string(),
            unit,
            values: Vec::new(),
        }
    }

    pub fn sorted(&self) -> Vec<f64> {
        let mut s = self.values.clone();
        s.sort_by(f64::total_cmp);
        s
    }

    /// The `p`-th percentile (nearest rank); 0 is the minimum, 100 the maximum.
    pub fn percentile(&self, p: f64) -> f64 {
        let s = self.sorted();
        // Float-to-int `as` saturates (a negative rank becomes 0); the clamp
        // below keeps the rank within the samples.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
        s[rank.clamp(1, s.len()) - 1]
    }
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A benchmark's flags: `--short`, `--demo`, `--json PATH`.
pub struct BenchArgs {
    pub short: bool,
    pub demo: bool,
    pub json_path: PathBuf,
}

impl BenchArgs {
    /// Parses the process arguments; the JSON goes to `target/bench/<name>.json` by default.
    pub fn parse(name: &str) -> Self {
        let args: Vec<String> = std::env::args().collect();
        let json_path = args
            .iter()
            .position(|a| a == "--json")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench"))
                    .join(format!("{name}.json"))
            });
        BenchArgs {
            short: args.iter().any(|a| a == "--short"),
            demo: args.iter().any(|a| a == "--demo"),
            json_path,
        }
    }

    pub fn write_report(&self, report: &serde_json::Value) {
        if let Some(parent) = self.json_path.parent() {
            std::fs::create_dir_all(parent).expect("create the JSON directory");
        }
        let text = serde_json::to_string_pretty(report).expect("encode the report");
        std::fs::write(&self.json_path, text).expect("write the JSON report");
        println!("JSON: {}", self.json_path.display());
    }
}

/// Prints one row per measure (runs, min, p50, p99, max) and returns them as JSON.
pub fn print_table(all: &[&Samples]) -> Vec<serde_json::Value> {
    println!(
        "{:<44} {:>6} {:>10} {:>10} {:>10} {:>10}  unit",
        "measure", "runs", "min", "p50", "p99", "max"
    );
    all.iter()
        .map(|s| {
            let sorted = s.sorted();
            let (min, p50, p99, max) = (
                sorted[0],
                s.percentile(50.0),
                s.percentile(99.0),
                sorted[sorted.len() - 1],
            );
            println!(
                "{:<44} {:>6} {min:>10.0} {p50:>10.0} {p99:>10.0} {max:>10.0}  {}",
                s.name,
                sorted.len(),
                s.unit
            );
            serde_json::json!({"name": s.name, "unit": s.unit, "runs": sorted.len(),
                "min": min, "p50": p50, "p99": p99, "max": max, "samples": sorted})
        })
        .collect()
}
