//! The figures of one measurement: latency percentiles, or throughput.

use serde::Serialize;

/// Latency figures of one measurement, in nanoseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyStats {
    pub samples: usize,
    pub median_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
    pub mean_ns: f64,
    pub min_ns: f64,
    pub max_ns: f64,
}

impl LatencyStats {
    /// The figures of `samples` (at least one), in nanoseconds.
    pub fn from_samples(mut samples: Vec<u64>) -> LatencyStats {
        samples.sort_unstable();
        let n = samples.len();
        // Nearest rank: the smallest sample with at least q of all samples at or below it.
        let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64;
        LatencyStats {
            samples: n,
            median_ns: rank(0.5),
            p99_ns: rank(0.99),
            p999_ns: rank(0.999),
            mean_ns: samples.iter().sum::<u64>() as f64 / n as f64,
            min_ns: samples[0] as f64,
            max_ns: samples[n - 1] as f64,
        }
    }
}

/// Throughput figures of one measurement: the median round, and the spread.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputStats {
    pub rounds: u32,
    pub msgs_per_round: u64,
    pub msgs_per_s: f64,
    pub bytes_per_s: f64,
    pub bytes_per_s_min: f64,
    pub bytes_per_s_max: f64,
}

impl ThroughputStats {
    /// The figures of timed rounds of `msgs_per_round` messages of `size` bytes, each
    /// round as messages per second (at least one round).
    pub fn from_rounds(mut rounds: Vec<f64>, msgs_per_round: u64, size: usize) -> ThroughputStats {
        rounds.sort_by(f64::total_cmp);
        let median = rounds[rounds.len() / 2];
        let bytes = size as f64;
        ThroughputStats {
            rounds: rounds.len() as u32,
            msgs_per_round,
            msgs_per_s: median,
            bytes_per_s: median * bytes,
            bytes_per_s_min: rounds[0] * bytes,
            bytes_per_s_max: rounds[rounds.len() - 1] * bytes,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Figures {
    Latency(LatencyStats),
    Throughput(ThroughputStats),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let stats = LatencyStats::from_samples((1..=1000).rev().collect());
        assert_eq!(stats.median_ns, 500.0);
        assert_eq!(stats.p99_ns, 990.0);
        assert_eq!(stats.p999_ns, 999.0);
        assert_eq!(stats.min_ns, 1.0);
        assert_eq!(stats.max_ns, 1000.0);
        let one = LatencyStats::from_samples(vec![7]);
        assert_eq!((one.median_ns, one.p999_ns), (7.0, 7.0));
    }

    #[test]
    fn throughput_is_the_median_round() {
        let stats = ThroughputStats::from_rounds(vec![3.0, 1.0, 2.0], 10, 64);
        assert_eq!((stats.rounds, stats.msgs_per_round, stats.msgs_per_s), (3, 10, 2.0));
        assert_eq!((stats.bytes_per_s, stats.bytes_per_s_min, stats.bytes_per_s_max), (128.0, 64.0, 192.0));
    }
}
