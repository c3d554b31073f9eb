//! Latency summaries: percentiles by the nearest-rank method, in milliseconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The distribution of one measured operation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// How many samples.
    pub n: usize,
    /// Fastest, in ms.
    pub min_ms: f64,
    /// Arithmetic mean, in ms.
    pub mean_ms: f64,
    /// Median, in ms.
    pub p50_ms: f64,
    /// 90th percentile, in ms.
    pub p90_ms: f64,
    /// 99th percentile, in ms.
    pub p99_ms: f64,
    /// Slowest, in ms.
    pub max_ms: f64,
}

impl Summary {
    /// Summarizes `samples`; all zeros when there are none.
    pub fn of(samples: &[Duration]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Summary {
            n: ms.len(),
            min_ms: ms[0],
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            p50_ms: percentile(&ms, 50.0),
            p90_ms: percentile(&ms, 90.0),
            p99_ms: percentile(&ms, 99.0),
            max_ms: ms[ms.len() - 1],
        }
    }
}

/// The nearest-rank percentile `p` (0–100] of sorted, non-empty `sorted`: the smallest
/// sample with at least p% of the samples at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = Summary::of(&ms(&(1..=100).rev().collect::<Vec<_>>()));
        assert_eq!((s.p50_ms, s.p90_ms, s.p99_ms), (50.0, 90.0, 99.0));
        assert_eq!((s.min_ms, s.max_ms, s.n), (1.0, 100.0, 100));
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
    }

    #[test]
    fn few_samples_take_the_top_one_for_high_percentiles() {
        let s = Summary::of(&ms(&[3, 1, 2]));
        assert_eq!((s.p50_ms, s.p90_ms, s.p99_ms), (2.0, 3.0, 3.0));
    }

    #[test]
    fn no_samples_is_all_zero() {
        assert_eq!(Summary::of(&[]), Summary::default());
    }
}
