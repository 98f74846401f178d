//! Percentiles and medians of measured durations.

use std::time::Duration;

/// Durations sorted once, so every statistic is a lookup.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    pub fn new(mut durations: Vec<Duration>) -> Self {
        durations.sort_unstable();
        Samples { sorted: durations }
    }

    /// The nearest-rank percentile: the smallest sample that at least `p`
    /// per cent of the samples are less than or equal to. Always a measured
    /// value, never an interpolation; `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let n = self.sorted.len();
        if n == 0 {
            return None;
        }
        let p = p.clamp(0.0, 100.0);
        // rank = ceil(p/100 * n). Multiplying before dividing keeps whole
        // ranks exact; the epsilon stops a rounding error just above a whole
        // rank (99.9 * 1000 / 100) from moving to the next sample.
        let rank = (p * n as f64 / 100.0 - 1e-9).ceil() as usize;
        Some(self.sorted[rank.clamp(1, n) - 1])
    }

    /// The median: the middle sample, or the mean of the two middle ones.
    pub fn median(&self) -> Option<Duration> {
        let n = self.sorted.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(self.sorted[n / 2]),
            _ => Some((self.sorted[n / 2 - 1] + self.sorted[n / 2]) / 2),
        }
    }

    pub fn min(&self) -> Option<Duration> {
        self.sorted.first().copied()
    }

    pub fn max(&self) -> Option<Duration> {
        self.sorted.last().copied()
    }
}

/// Milliseconds as a float, the unit every latency is reported in.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Rounds to `decimals` places, so reports carry no false precision
/// (the clock's resolution is nanoseconds, the noise far larger).
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Operations per second; 0 for an empty interval.
pub fn rate(count: usize, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Samples {
        Samples::new(values.iter().map(|&v| Duration::from_millis(v)).collect())
    }

    #[test]
    fn empty_samples_have_no_statistics() {
        let s = ms(&[]);
        assert_eq!(s.percentile(50.0), None);
        assert_eq!(s.median(), None);
        assert_eq!(s.min(), None);
        assert_eq!(s.max(), None);
    }

    #[test]
    fn one_sample_is_every_statistic() {
        let s = ms(&[7]);
        for p in [0.0, 1.0, 50.0, 99.0, 100.0] {
            assert_eq!(s.percentile(p), Some(Duration::from_millis(7)));
        }
        assert_eq!(s.median(), Some(Duration::from_millis(7)));
    }

    #[test]
    fn nearest_rank_percentiles_of_one_to_hundred() {
        // Unsorted input: 100, 99, ..., 1.
        let s = ms(&(1..=100).rev().collect::<Vec<_>>());
        assert_eq!(s.percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(s.percentile(99.0), Some(Duration::from_millis(99)));
        assert_eq!(s.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(s.percentile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(s.percentile(0.5), Some(Duration::from_millis(1)));
        assert_eq!(s.percentile(1.0), Some(Duration::from_millis(1)));
        assert_eq!(s.percentile(1.5), Some(Duration::from_millis(2)));
    }

    #[test]
    fn p99_of_a_thousand_is_the_990th_value() {
        let s = ms(&(1..=1000).collect::<Vec<_>>());
        assert_eq!(s.percentile(99.0), Some(Duration::from_millis(990)));
        assert_eq!(s.percentile(50.0), Some(Duration::from_millis(500)));
        assert_eq!(s.percentile(99.9), Some(Duration::from_millis(999)));
    }

    #[test]
    fn p99_of_few_samples_is_the_maximum() {
        let s = ms(&[3, 1, 2, 10]);
        assert_eq!(s.percentile(99.0), Some(Duration::from_millis(10)));
        assert_eq!(s.percentile(50.0), Some(Duration::from_millis(2)));
    }

    #[test]
    fn out_of_range_percentiles_are_clamped() {
        let s = ms(&[1, 2, 3]);
        assert_eq!(s.percentile(-5.0), Some(Duration::from_millis(1)));
        assert_eq!(s.percentile(250.0), Some(Duration::from_millis(3)));
    }

    #[test]
    fn median_of_odd_count_is_the_middle() {
        assert_eq!(ms(&[9, 1, 5]).median(), Some(Duration::from_millis(5)));
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(ms(&[4, 1, 10, 6]).median(), Some(Duration::from_millis(5)));
        // 20 repeats, as the list benchmark takes: mean of the 10th and 11th.
        let s = ms(&(1..=20).collect::<Vec<_>>());
        assert_eq!(s.median(), Some(Duration::from_micros(10_500)));
    }

    #[test]
    fn min_and_max() {
        let s = ms(&[4, 1, 10, 6]);
        assert_eq!(s.min(), Some(Duration::from_millis(1)));
        assert_eq!(s.max(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn rounding() {
        assert_eq!(round(6.6051139999999995, 3), 6.605);
        assert_eq!(round(5529.4069899, 1), 5529.4);
        assert_eq!(round(0.0004, 3), 0.0);
    }

    #[test]
    fn rate_and_millis() {
        assert_eq!(rate(1000, Duration::from_millis(500)), 2000.0);
        assert_eq!(rate(5, Duration::ZERO), 0.0);
        assert_eq!(millis(Duration::from_micros(1500)), 1.5);
    }
}
