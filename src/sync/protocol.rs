//! What the ranks send each other, as 32-bit words (floats travel as their bits, so nothing is
//! converted on the way): first a fixed-size [`Header`] from every rank, then, when every
//! header agrees, a payload of `1 + 2C` words (a status word and two per-channel vectors).
//!
//! The header comes first because its size never depends on the layer: ranks that disagree on
//! the channels (and so on the payload's size) learn it from the headers, and every rank
//! refuses the call, instead of an all-gather of unequal lengths, which MPI does not define.
//! A rank that refuses its own arguments, or whose GPU fails, still sends its header and its
//! payload with a status that says so: every rank makes the same exchanges whatever happens,
//! so no rank waits for one that gave up.

use super::error::{HeaderField, SyncError};
use crate::dtype::DType;

/// The first word of every header: "SBN" and the format's version, 1.
pub const PROTOCOL_VERSION: u32 = 0x5342_4e01;
/// Words of a header.
pub const HEADER_WORDS: usize = 13;
/// The header's code of a storage type: 0 for f32, 1 for f16, 2 for bf16.
pub fn dtype_code(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
    }
}

/// Which exchange of a training step a header opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// The forward's per-channel (count, mean, M2).
    ForwardStatistics = 1,
    /// The backward's per-channel (sum dy x_hat, sum dy).
    BackwardSums = 2,
}

/// A rank's state at an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Its part follows.
    Ready = 0,
    /// It refused its arguments (its own error says why).
    RefusedArguments = 1,
    /// Its GPU work failed (its own error says why).
    GpuFailed = 2,
}

impl Status {
    fn reason(code: u32) -> &'static str {
        match code {
            1 => "its arguments",
            2 => "its GPU",
            _ => "an unknown status",
        }
    }
}

/// How a layer updates its running statistics, as the header carries it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RunningUpdate {
    /// No running statistics (`track_running_stats = false`).
    Untracked,
    /// Momentum `None`: a cumulative average.
    Cumulative,
    /// This momentum.
    Momentum(f64),
}

/// What every rank says about itself before an exchange.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Header {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// An [`Operation`]'s code.
    pub operation: u32,
    /// A [`Status`]'s code.
    pub status: u32,
    /// The layer's channels.
    pub channels: u64,
    /// The storage type of the rank's tensors ([`dtype_code`]).
    pub dtype: u32,
    /// The layer's eps.
    pub eps: f64,
    /// The layer's running-statistics update.
    pub update: RunningUpdate,
    /// Values per channel of this rank's shard (0 for an empty one).
    pub count: u64,
}

fn split(value: u64) -> [u32; 2] {
    [value as u32, (value >> 32) as u32]
}

fn join(low: u32, high: u32) -> u64 {
    u64::from(low) | (u64::from(high) << 32)
}

impl Header {
    /// The header of this crate's version.
    pub fn new(
        operation: Operation,
        status: Status,
        channels: usize,
        dtype: DType,
        eps: f64,
        update: RunningUpdate,
        count: u64,
    ) -> Self {
        Header {
            protocol: PROTOCOL_VERSION,
            operation: operation as u32,
            status: status as u32,
            channels: channels as u64,
            dtype: dtype_code(dtype),
            eps,
            update,
            count,
        }
    }

    /// The header's words.
    pub fn encode(&self) -> [u32; HEADER_WORDS] {
        let (tag, value) = match self.update {
            RunningUpdate::Untracked => (0, 0.0),
            RunningUpdate::Cumulative => (1, 0.0),
            RunningUpdate::Momentum(momentum) => (2, momentum),
        };
        let [channels_low, channels_high] = split(self.channels);
        let [eps_low, eps_high] = split(self.eps.to_bits());
        let [momentum_low, momentum_high] = split(f64::to_bits(value));
        let [count_low, count_high] = split(self.count);
        [
            self.protocol,
            self.operation,
            self.status,
            channels_low,
            channels_high,
            self.dtype,
            eps_low,
            eps_high,
            tag,
            momentum_low,
            momentum_high,
            count_low,
            count_high,
        ]
    }

    /// Reads a header from its words (any words: an unknown momentum tag reads as
    /// `Momentum(NaN)`, which agrees with no rank).
    pub fn decode(words: &[u32; HEADER_WORDS]) -> Self {
        let update = match words[8] {
            0 => RunningUpdate::Untracked,
            1 => RunningUpdate::Cumulative,
            2 => RunningUpdate::Momentum(f64::from_bits(join(words[9], words[10]))),
            _ => RunningUpdate::Momentum(f64::NAN),
        };
        Header {
            protocol: words[0],
            operation: words[1],
            status: words[2],
            channels: join(words[3], words[4]),
            dtype: words[5],
            eps: f64::from_bits(join(words[6], words[7])),
            update,
            count: join(words[11], words[12]),
        }
    }

    /// The value of `field`, as the error that reports a disagreement shows it.
    fn describe(&self, field: HeaderField) -> String {
        match field {
            HeaderField::Protocol => format!("{:#010x}", self.protocol),
            HeaderField::Operation => match self.operation {
                1 => "forward statistics".into(),
                2 => "backward sums".into(),
                other => format!("unknown ({other})"),
            },
            HeaderField::Channels => self.channels.to_string(),
            HeaderField::DType => [DType::F32, DType::F16, DType::BF16]
                .into_iter()
                .find(|&dtype| dtype_code(dtype) == self.dtype)
                .map_or_else(|| format!("unknown ({})", self.dtype), |d| d.name().into()),
            HeaderField::Eps => self.eps.to_string(),
            HeaderField::Momentum => match self.update {
                RunningUpdate::Untracked => "no running statistics".into(),
                RunningUpdate::Cumulative => "None".into(),
                RunningUpdate::Momentum(momentum) => momentum.to_string(),
            },
        }
    }

    /// The bits of `field`, for comparing ranks exactly.
    fn bits(&self, field: HeaderField) -> (u32, u64) {
        match field {
            HeaderField::Protocol => (0, self.protocol.into()),
            HeaderField::Operation => (0, self.operation.into()),
            HeaderField::Channels => (0, self.channels),
            HeaderField::DType => (0, self.dtype.into()),
            HeaderField::Eps => (0, self.eps.to_bits()),
            HeaderField::Momentum => match self.update {
                RunningUpdate::Untracked => (0, 0),
                RunningUpdate::Cumulative => (1, 0),
                RunningUpdate::Momentum(momentum) => (2, momentum.to_bits()),
            },
        }
    }
}

/// The fields every rank must agree on, in the order they are compared.
const AGREED: [HeaderField; 6] = [
    HeaderField::Protocol,
    HeaderField::Operation,
    HeaderField::Channels,
    HeaderField::DType,
    HeaderField::Eps,
    HeaderField::Momentum,
];

/// Splits gathered words into `ranks` equal parts, refusing any other length.
pub fn per_rank(gathered: &[u32], ranks: usize, words: usize) -> Result<Vec<&[u32]>, SyncError> {
    if ranks == 0 || words == 0 || ranks.checked_mul(words) != Some(gathered.len()) {
        return Err(SyncError::Transport(format!(
            "expected {ranks} parts of {words} words, got {} words",
            gathered.len()
        )));
    }
    Ok(gathered.chunks(words).collect())
}

/// Reads every rank's header and checks that they agree: the same version, operation,
/// channels, dtype, eps and momentum, and no rank refusing. Returns each rank's count. The
/// verdict depends on the gathered words alone, so every rank reaches the same one.
pub fn agree(gathered: &[u32], ranks: usize) -> Result<Vec<u64>, SyncError> {
    let headers: Vec<Header> = per_rank(gathered, ranks, HEADER_WORDS)?
        .into_iter()
        .map(|words| Header::decode(words.try_into().expect("split into header-sized parts")))
        .collect();
    for field in AGREED {
        let first = headers[0].bits(field);
        if headers.iter().any(|h| h.bits(field) != first) {
            return Err(SyncError::Disagreement {
                field,
                values: headers.iter().map(|h| h.describe(field)).collect(),
            });
        }
    }
    refusals(headers.iter().map(|h| h.status))?;
    let counts: Vec<u64> = headers.iter().map(|h| h.count).collect();
    // Every later sum of the counts (the total, the merge's running count) stays below this.
    if counts
        .iter()
        .try_fold(0u64, |total, &count| total.checked_add(count))
        .is_none()
    {
        return Err(SyncError::Transport(format!(
            "the ranks' counts {counts:?} add up past 2^64: a header was corrupted"
        )));
    }
    Ok(counts)
}

/// `PeerRefused` when any of the statuses (in rank order) is not [`Status::Ready`].
fn refusals(statuses: impl Iterator<Item = u32>) -> Result<(), SyncError> {
    let refused: Vec<(usize, u32)> = statuses
        .enumerate()
        .filter(|&(_, status)| status != Status::Ready as u32)
        .collect();
    match refused.first() {
        None => Ok(()),
        Some(&(_, status)) => Err(SyncError::PeerRefused {
            ranks: refused.iter().map(|&(rank, _)| rank).collect(),
            reason: Status::reason(status),
        }),
    }
}

/// A payload: the status, then `first` and `second` (per-channel vectors) as their bits.
pub fn payload(status: Status, first: &[f32], second: &[f32]) -> Vec<u32> {
    std::iter::once(status as u32)
        .chain(first.iter().chain(second).map(|v| v.to_bits()))
        .collect()
}

/// One rank's two per-channel vectors, read from its payload.
#[derive(Clone, Debug, PartialEq)]
pub struct RankVectors {
    /// The first vector (mean, or sum dy x_hat).
    pub first: Vec<f32>,
    /// The second vector (M2, or sum dy).
    pub second: Vec<f32>,
}

/// Every rank's vectors from gathered payloads of `channels` channels; `PeerRefused` when a
/// rank's status is not ready.
pub fn read_payloads(
    gathered: &[u32],
    ranks: usize,
    channels: usize,
) -> Result<Vec<RankVectors>, SyncError> {
    let words = channels
        .checked_mul(2)
        .and_then(|values| values.checked_add(1))
        .ok_or_else(|| SyncError::Transport(format!("{channels} channels are too many words")))?;
    let parts = per_rank(gathered, ranks, words)?;
    refusals(parts.iter().map(|part| part[0]))?;
    Ok(parts
        .into_iter()
        .map(|part| {
            let floats = |words: &[u32]| words.iter().map(|&w| f32::from_bits(w)).collect();
            RankVectors {
                first: floats(&part[1..1 + channels]),
                second: floats(&part[1 + channels..]),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(channels: usize, eps: f64, update: RunningUpdate, count: u64) -> Header {
        Header::new(
            Operation::ForwardStatistics,
            Status::Ready,
            channels,
            DType::F32,
            eps,
            update,
            count,
        )
    }

    fn gather(headers: &[Header]) -> Vec<u32> {
        headers.iter().flat_map(|h| h.encode()).collect()
    }

    #[test]
    fn headers_round_trip_through_their_words() {
        for update in [
            RunningUpdate::Untracked,
            RunningUpdate::Cumulative,
            RunningUpdate::Momentum(0.1),
        ] {
            let h = Header {
                status: Status::GpuFailed as u32,
                dtype: dtype_code(DType::BF16),
                ..header(70_000, 1e-3, update, (1 << 40) + 7)
            };
            assert_eq!(Header::decode(&h.encode()), h);
        }
    }

    #[test]
    fn agreeing_headers_give_every_count() {
        let m = RunningUpdate::Momentum(0.1);
        let words = gather(&[header(6, 1e-5, m, 12), header(6, 1e-5, m, 0)]);
        assert_eq!(agree(&words, 2).unwrap(), vec![12, 0]);
    }

    #[test]
    fn counts_that_add_up_past_u64_are_refused() {
        let m = RunningUpdate::Momentum(0.1);
        let words = gather(&[header(6, 1e-5, m, u64::MAX), header(6, 1e-5, m, 1)]);
        match agree(&words, 2) {
            Err(SyncError::Transport(message)) => {
                assert!(message.contains("past 2^64"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let words = gather(&[header(6, 1e-5, m, u64::MAX - 1), header(6, 1e-5, m, 1)]);
        assert_eq!(agree(&words, 2).unwrap(), vec![u64::MAX - 1, 1]);
    }

    #[test]
    fn part_sizes_past_usize_are_refused() {
        assert!(matches!(
            per_rank(&[0; 4], usize::MAX, 2),
            Err(SyncError::Transport(_))
        ));
        assert!(matches!(
            read_payloads(&[0; 4], 2, usize::MAX),
            Err(SyncError::Transport(_))
        ));
    }

    #[test]
    fn each_disagreement_names_its_field_and_every_rank_value() {
        let m = RunningUpdate::Momentum(0.1);
        let base = header(6, 1e-5, m, 4);
        let cases = [
            (
                Header {
                    protocol: 7,
                    ..base
                },
                HeaderField::Protocol,
            ),
            (
                Header {
                    operation: Operation::BackwardSums as u32,
                    ..base
                },
                HeaderField::Operation,
            ),
            (header(5, 1e-5, m, 4), HeaderField::Channels),
            (
                Header {
                    dtype: dtype_code(DType::F16),
                    ..base
                },
                HeaderField::DType,
            ),
            (header(6, 1e-3, m, 4), HeaderField::Eps),
            (
                header(6, 1e-5, RunningUpdate::Cumulative, 4),
                HeaderField::Momentum,
            ),
            (
                header(6, 1e-5, RunningUpdate::Momentum(0.2), 4),
                HeaderField::Momentum,
            ),
            (
                header(6, 1e-5, RunningUpdate::Untracked, 4),
                HeaderField::Momentum,
            ),
        ];
        for (odd, want) in cases {
            let words = gather(&[base, base, odd]);
            match agree(&words, 3) {
                Err(SyncError::Disagreement { field, values }) => {
                    assert_eq!(field, want);
                    assert_eq!(values.len(), 3);
                    assert_eq!(values[0], values[1]);
                    assert_ne!(values[0], values[2], "{field}");
                }
                other => panic!("{want:?}: {other:?}"),
            }
        }
        let f16 = Header {
            dtype: dtype_code(DType::F16),
            ..base
        };
        let message = agree(&gather(&[base, f16]), 2).unwrap_err().to_string();
        assert!(message.contains("dtype: f32, f16"), "{message}");
    }

    #[test]
    fn a_refusing_rank_makes_every_rank_refuse() {
        let m = RunningUpdate::Momentum(0.1);
        let refused = Header {
            status: Status::RefusedArguments as u32,
            ..header(6, 1e-5, m, 4)
        };
        let words = gather(&[header(6, 1e-5, m, 4), refused, refused]);
        match agree(&words, 3) {
            Err(SyncError::PeerRefused { ranks, reason }) => {
                assert_eq!(ranks, vec![1, 2]);
                assert_eq!(reason, "its arguments");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn payloads_carry_bits_exactly_and_statuses() {
        let nan = f32::from_bits(0x7fc0_1234);
        let a = payload(Status::Ready, &[1.5, -0.0], &[nan, f32::INFINITY]);
        let b = payload(Status::Ready, &[2.0, 3.0], &[4.0, 5.0]);
        let both: Vec<u32> = a.iter().chain(&b).copied().collect();
        let ranks = read_payloads(&both, 2, 2).unwrap();
        assert_eq!(ranks[0].first[1].to_bits(), (-0.0f32).to_bits());
        assert_eq!(ranks[0].second[0].to_bits(), nan.to_bits());
        assert_eq!(ranks[1].second, vec![4.0, 5.0]);
        let failed = payload(Status::GpuFailed, &[0.0; 2], &[0.0; 2]);
        let words: Vec<u32> = a.iter().chain(&failed).copied().collect();
        assert!(matches!(
            read_payloads(&words, 2, 2),
            Err(SyncError::PeerRefused { ref ranks, reason: "its GPU" }) if ranks == &[1]
        ));
        assert!(matches!(
            read_payloads(&both[1..], 2, 2),
            Err(SyncError::Transport(_))
        ));
    }
}
