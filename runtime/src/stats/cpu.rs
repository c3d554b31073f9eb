//! CPU rate (`usage_nano_cores`) from successive cumulative samples.
//!
//! The cgroup only gives cumulative CPU time. CRI's `usage_nano_cores` is a rate, so as
//! containerd and cAdvisor do, the sampler remembers the previous (timestamp, usage) of
//! each container or sandbox and reports Δusage / Δtime × 1e9 on the next sample. The
//! first sample of an id has no rate.

use std::collections::HashMap;
use std::sync::Mutex;

/// Remembers the last CPU sample per id to turn cumulative usage into a rate.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Mutex<HashMap<String, Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    timestamp_ns: i64,
    usage_ns: u64,
}

impl CpuSampler {
    /// An empty sampler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a sample of `id` and returns the rate since the previous one, in
    /// nanocores (CPU nanoseconds per second), or `None` for the first sample.
    ///
    /// A sample not newer than the previous one returns `None` and is dropped, so
    /// concurrent callers cannot move the baseline backwards. A usage counter that went
    /// down (the cgroup was recreated under the same id) resets the baseline.
    pub fn sample(&self, id: &str, timestamp_ns: i64, usage_ns: u64) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let current = Sample {
            timestamp_ns,
            usage_ns,
        };
        let Some(previous) = last.get(id).copied() else {
            last.insert(id.to_owned(), current);
            return None;
        };
        if timestamp_ns <= previous.timestamp_ns {
            return None;
        }
        last.insert(id.to_owned(), current);
        let delta_usage = usage_ns.checked_sub(previous.usage_ns)?;
        let delta_time = (timestamp_ns - previous.timestamp_ns) as u128;
        let rate = u128::from(delta_usage) * 1_000_000_000 / delta_time;
        Some(u64::try_from(rate).unwrap_or(u64::MAX))
    }

    /// Keeps the samples of the ids `alive` accepts, forgetting removed objects.
    pub fn retain(&self, alive: &dyn Fn(&str) -> bool) {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| alive(id));
    }

    /// Forgets `id`, once its container or sandbox is removed.
    pub fn forget(&self, id: &str) {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;

    #[test]
    fn retain_forgets_the_removed() {
        let sampler = CpuSampler::new();
        sampler.sample("keep", SECOND, 1);
        sampler.sample("gone", SECOND, 1);
        sampler.retain(&|id| id == "keep");
        assert_eq!(sampler.sample("gone", 2 * SECOND, 2), None, "a fresh start");
        assert!(sampler.sample("keep", 2 * SECOND, 2).is_some());
    }

    #[test]
    fn rate_from_two_samples() {
        let sampler = CpuSampler::new();
        assert_eq!(sampler.sample("c1", 10 * SECOND, 5_000_000_000), None);
        // 1.5 CPU-seconds over 2 seconds: three quarters of a core.
        assert_eq!(
            sampler.sample("c1", 12 * SECOND, 6_500_000_000),
            Some(750_000_000)
        );
        // The baseline moved: 2 CPU-seconds over 1 second is two cores.
        assert_eq!(
            sampler.sample("c1", 13 * SECOND, 8_500_000_000),
            Some(2_000_000_000)
        );
    }

    #[test]
    fn ids_are_independent_and_forgotten() {
        let sampler = CpuSampler::new();
        assert_eq!(sampler.sample("a", SECOND, 0), None);
        assert_eq!(sampler.sample("b", SECOND, 100), None);
        assert_eq!(
            sampler.sample("a", 2 * SECOND, 250_000_000),
            Some(250_000_000)
        );
        sampler.forget("a");
        assert_eq!(sampler.sample("a", 3 * SECOND, 300_000_000), None);
        assert_eq!(sampler.sample("b", 3 * SECOND, 100), Some(0));
    }

    #[test]
    fn stale_sample_and_counter_reset() {
        let sampler = CpuSampler::new();
        sampler.sample("c", 10 * SECOND, 1_000);
        assert_eq!(sampler.sample("c", 10 * SECOND, 2_000), None);
        assert_eq!(sampler.sample("c", 9 * SECOND, 2_000), None);
        // Counter went down: no rate, but the new baseline is kept.
        assert_eq!(sampler.sample("c", 11 * SECOND, 10), None);
        assert_eq!(
            sampler.sample("c", 12 * SECOND, 1_000_000_010),
            Some(1_000_000_000)
        );
    }
}
