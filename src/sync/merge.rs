//! The host's part of a synchronized call: every rank's per-channel statistics merged, and
//! every rank's gradient sums added, in rank order and in f64, each result rounded once to f32.
//! Every rank runs these on the same gathered bits in the same order, so every rank gets
//! bitwise the same values, whatever its adapter or transport.

use super::protocol::RankVectors;

/// Per-channel statistics of all ranks' values together, in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    /// Values per channel over all ranks.
    pub count: u64,
    /// The mean of each channel.
    pub mean: Vec<f64>,
    /// The sum of squared deviations from the mean of each channel.
    pub m2: Vec<f64>,
}

/// Merges each rank's (count, mean, M2) with Chan's formula, in rank order, skipping ranks
/// without values. `counts[r]` is rank r's values per channel; `shards[r]` its mean (`first`)
/// and M2 (`second`) as its GPU computed them.
pub fn merge_moments(counts: &[u64], shards: &[RankVectors]) -> Merged {
    let channels = shards.first().map_or(0, |s| s.first.len());
    let mut merged = Merged {
        count: 0,
        mean: vec![0.0; channels],
        m2: vec![0.0; channels],
    };
    for (&count, shard) in counts.iter().zip(shards) {
        if count == 0 {
            continue;
        }
        let before = merged.count as f64;
        let total = before + count as f64;
        for c in 0..channels {
            let delta = f64::from(shard.first[c]) - merged.mean[c];
            merged.mean[c] += delta * (count as f64 / total);
            merged.m2[c] +=
                f64::from(shard.second[c]) + delta * delta * before * count as f64 / total;
        }
        merged.count += count;
    }
    merged
}

impl Merged {
    /// (mean, invstd = 1 / sqrt(M2 / count + eps)), each rounded once to f32: what every rank
    /// normalizes with and saves for the backward.
    pub fn mean_invstd(&self, eps: f64) -> (Vec<f32>, Vec<f32>) {
        let n = self.count as f64;
        let mean = self.mean.iter().map(|&m| m as f32).collect();
        let invstd = self
            .m2
            .iter()
            .map(|&m2| (1.0 / (m2 / n + eps).sqrt()) as f32)
            .collect();
        (mean, invstd)
    }

    /// The running statistics after this batch: r_mean = (1 - m) r_mean + m mean and
    /// r_var = (1 - m) r_var + m M2 / (count - 1) (the unbiased variance over all ranks), in
    /// f64 from the f32 running statistics, rounded once.
    pub fn updated_running(
        &self,
        running_mean: &[f32],
        running_var: &[f32],
        momentum: f64,
    ) -> (Vec<f32>, Vec<f32>) {
        let keep = 1.0 - momentum;
        let unbiased = (self.count - 1) as f64;
        let mean = running_mean
            .iter()
            .zip(&self.mean)
            .map(|(&r, &m)| (keep * f64::from(r) + momentum * m) as f32)
            .collect();
        let var = running_var
            .iter()
            .zip(&self.m2)
            .map(|(&r, &m2)| (keep * f64::from(r) + momentum * (m2 / unbiased)) as f32)
            .collect();
        (mean, var)
    }
}

/// The means the dx kernel needs from every rank's (sum dy x_hat, sum dy): each summed over
/// the ranks in rank order in f64, divided by the values per channel over all ranks, rounded
/// once. Returns (mean dy x_hat, mean dy).
pub fn gradient_means(shards: &[RankVectors], total: u64) -> (Vec<f32>, Vec<f32>) {
    let channels = shards.first().map_or(0, |s| s.first.len());
    let mean_of = |pick: fn(&RankVectors) -> &[f32]| -> Vec<f32> {
        (0..channels)
            .map(|c| {
                let sum: f64 = shards.iter().map(|s| f64::from(pick(s)[c])).sum();
                (sum / total as f64) as f32
            })
            .collect()
    };
    (mean_of(|s| &s.first), mean_of(|s| &s.second))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mean and M2 of `values` by two passes in f64.
    fn two_pass(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        (mean, values.iter().map(|v| (v - mean).powi(2)).sum())
    }

    /// One channel's shard as its GPU would report it: f32 mean and M2.
    fn shard(values: &[f64]) -> RankVectors {
        let (mean, m2) = if values.is_empty() {
            (0.0, 0.0)
        } else {
            two_pass(values)
        };
        RankVectors {
            first: vec![mean as f32],
            second: vec![m2 as f32],
        }
    }

    #[test]
    fn merging_shards_gives_the_statistics_of_their_union() {
        // Shards of 3, 0, 1 and 6 values far from 0, of unequal means.
        let parts: [&[f64]; 4] = [
            &[1000.5, 1001.25, 999.0],
            &[],
            &[1003.0],
            &[998.0, 1000.0, 1002.5, 1001.0, 999.5, 1000.75],
        ];
        let counts: Vec<u64> = parts.iter().map(|p| p.len() as u64).collect();
        let shards: Vec<RankVectors> = parts.iter().map(|p| shard(p)).collect();
        let merged = merge_moments(&counts, &shards);
        let all: Vec<f64> = parts.concat();
        let (mean, m2) = two_pass(&all);
        assert_eq!(merged.count, 10);
        // The shards' f32 rounding is all the error: their means are off by up to
        // |mean| 2^-24, which Chan's delta^2 term carries into M2, held to the design's 1e-5
        // relative for the variance.
        assert!(
            (merged.mean[0] - mean).abs() < 1000.0 * 2f64.powi(-23),
            "{merged:?}"
        );
        assert!(
            (merged.m2[0] - m2).abs() < m2 * 1e-5,
            "{} vs {m2}",
            merged.m2[0]
        );
        let (got_mean, invstd) = merged.mean_invstd(1e-5);
        assert_eq!(got_mean[0], mean as f32);
        let want = 1.0 / (m2 / 10.0 + 1e-5).sqrt();
        // invstd within the design's 1e-5 relative.
        assert!((f64::from(invstd[0]) - want).abs() < want * 1e-5);
    }

    #[test]
    fn a_nan_in_one_shard_poisons_only_its_channel() {
        let shards = [
            RankVectors {
                first: vec![f32::NAN, 1.0],
                second: vec![0.0, 2.0],
            },
            RankVectors {
                first: vec![0.0, 3.0],
                second: vec![1.0, 2.0],
            },
        ];
        let merged = merge_moments(&[2, 2], &shards);
        assert!(merged.mean[0].is_nan() && merged.m2[0].is_nan());
        assert_eq!((merged.mean[1], merged.m2[1]), (2.0, 8.0));
    }

    #[test]
    fn running_statistics_use_the_count_of_every_rank() {
        let merged = Merged {
            count: 5,
            mean: vec![2.0],
            m2: vec![8.0],
        };
        let (mean, var) = merged.updated_running(&[1.0], &[3.0], 0.25);
        assert_eq!(mean, vec![0.75 * 1.0 + 0.25 * 2.0]);
        assert_eq!(var, vec![0.75 * 3.0 + 0.25 * (8.0 / 4.0)]);
    }

    #[test]
    fn gradient_means_add_every_rank_then_divide_by_the_total_count() {
        let shards = [
            RankVectors {
                first: vec![1.0, -2.0],
                second: vec![0.5, 4.0],
            },
            RankVectors {
                first: vec![0.0, 0.0],
                second: vec![0.0, 0.0],
            },
            RankVectors {
                first: vec![2.0, 1.0],
                second: vec![1.0, -1.0],
            },
        ];
        let (dy_xhat, dy) = gradient_means(&shards, 6);
        assert_eq!(dy_xhat, vec![0.5, (-1.0f64 / 6.0) as f32]);
        assert_eq!(dy, vec![0.25, 0.5]);
    }
}
