//! The figures of a run, how they print, and what `/proc` says of a process.

use std::time::Duration;

use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at =
            |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// A watched service process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessFigures {
    pub name: String,
    pub pid: u32,
    pub rss_mib: Option<f64>,
    /// CPU (user and system) used from the first order placed until every order was
    /// final, per order: a count that is stable on a noisy box, where times are not.
    pub cpu_ms_per_order: Option<f64>,
    /// CPU used while idle for 5 s after the run, in percent of one core.
    pub idle_cpu_percent: Option<f64>,
}

/// What a reference committed, and the system's completed orders as a ratio to it.
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceRate {
    pub name: &'static str,
    pub what: &'static str,
    pub orders_per_second: f64,
    pub ratio: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub orders: u64,
    pub concurrency: u64,
    pub rate: Option<f64>,
    pub accepted: u64,
    pub failed: u64,
    pub accepted_per_second: f64,
    pub completed_per_second: f64,
    pub post_latency_ms: Percentiles,
    pub created_to_final_ms: Percentiles,
    pub final_statuses: std::collections::BTreeMap<String, u64>,
    /// The references, in [`crate::reference::REFERENCES`]' order (none if skipped).
    pub references: Vec<ReferenceRate>,
    /// The planner's cost of a random page read in the system's database, and so in the
    /// references' (`random_page_cost`).
    pub random_page_cost: f64,
    /// What Postgres did per order while the system ran (server-wide).
    pub postgres_per_order: crate::postgres_counts::PerOrder,
    pub processes: Vec<ProcessFigures>,
    /// A soak's windows (empty unless `--duration`).
    pub soak: Vec<crate::soak::Window>,
}

impl Figures {
    pub fn print(&self) {
        let load = match self.rate {
            Some(rate) => format!("at {rate} orders/s"),
            None => format!("at concurrency {}", self.concurrency),
        };
        println!(
            "\n{} orders {load}: {} accepted, {} failed",
            self.orders, self.accepted, self.failed
        );
        println!(
            "  accepted orders/s      {:>10.1}",
            self.accepted_per_second
        );
        println!(
            "  completed orders/s     {:>10.1}",
            self.completed_per_second
        );
        let row = |name: &str, p: &Percentiles| {
            println!(
                "  {name:<22} p50 {:>8.2}  p90 {:>8.2}  p99 {:>8.2}  max {:>8.2} ms",
                p.p50, p.p90, p.p99, p.max
            );
        };
        row("POST /orders", &self.post_latency_ms);
        row("created -> final", &self.created_to_final_ms);
        println!("  final states           {:?}", self.final_statuses);
        if !self.references.is_empty() {
            println!(
                "  references (pgbench, same concurrency, same Postgres, random_page_cost {}), orders/s:",
                self.random_page_cost
            );
        }
        for r in &self.references {
            println!(
                "    {:<28} {:>10.1}   completed / it {:>6.2}   ({})",
                r.name, r.orders_per_second, r.ratio, r.what
            );
        }
        if let Some(batched) = self.references.last() {
            println!(
                "  completed / the design's writes batched {:>6.2}",
                batched.ratio
            );
        }
        let pg = &self.postgres_per_order;
        println!(
            "  postgres (all processes) CPU per order {:.2} ms, WAL {:.1} records / {:.0} bytes, {:.2} commits per order; {} checkpoints during the run",
            pg.cpu_ms, pg.wal_records, pg.wal_bytes, pg.commits, pg.checkpoints
        );
        for p in &self.processes {
            let rss = p.rss_mib.map_or("?".to_owned(), |m| format!("{m:.1} MiB"));
            let idle = p
                .idle_cpu_percent
                .map_or("?".to_owned(), |c| format!("{c:.2}% of a core"));
            let busy = p
                .cpu_ms_per_order
                .map_or("?".to_owned(), |c| format!("{c:.2} ms"));
            println!(
                "  {:<22} CPU per order {busy}, RSS {rss}, idle CPU {idle}",
                p.name
            );
        }
    }
}

/// Resident memory of `pid` in MiB (Linux).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// User plus system CPU seconds `pid` has used (Linux, 100 clock ticks a second).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// The CPU seconds each watched process has used so far.
pub fn cpu_now(watch: &[(String, u32)]) -> Vec<Option<f64>> {
    watch.iter().map(|(_, pid)| cpu_seconds(*pid)).collect()
}

/// Of each watched process: resident memory now, CPU per order between `loaded_from` and
/// `loaded_until` (taken with [`cpu_now`] before the first of `orders` was placed and
/// once all were final), and CPU used over 5 idle seconds.
pub async fn watch_processes(
    watch: &[(String, u32)],
    loaded_from: &[Option<f64>],
    loaded_until: &[Option<f64>],
    orders: u64,
) -> Vec<ProcessFigures> {
    if watch.is_empty() {
        return Vec::new();
    }
    let loaded: Vec<Option<f64>> = loaded_until
        .iter()
        .zip(loaded_from)
        .map(|(until, from)| {
            Some((until.as_ref()? - from.as_ref()?) * 1000.0 / orders.max(1) as f64)
        })
        .collect();
    let before = cpu_now(watch);
    tokio::time::sleep(Duration::from_secs(5)).await; // the idle window being measured
    watch
        .iter()
        .zip(before)
        .zip(loaded)
        .map(|(((name, pid), before), cpu_ms_per_order)| ProcessFigures {
            name: name.clone(),
            pid: *pid,
            rss_mib: rss_mib(*pid),
            cpu_ms_per_order,
            idle_cpu_percent: before
                .zip(cpu_seconds(*pid))
                .map(|(b, a)| (a - b) / 5.0 * 100.0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Percentiles;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&samples);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&[]).p99, 0.0);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(super::rss_mib(pid).is_some_and(|m| m > 0.0));
        assert!(super::cpu_seconds(pid).is_some());
    }
}
