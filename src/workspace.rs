//! What a [`crate::BatchNorm`] keeps between calls so that a training loop's steady state
//! allocates nothing: for each input it has seen (the kind of call, the shape, and the buffers
//! and offsets of its tensors), the prepared dispatches (pipelines, one uniform buffer, bind
//! groups) and the per-channel output they write (saved statistics, or dgamma and dbeta).
//!
//! Design: per layer, not per context, so that one layer's calls never evict another's, and
//! keyed by buffer and offset rather than by tensor object, so that a loop that makes a new view
//! of the same buffer each step still hits. Uniform values are constant per entry (the only
//! value that changed from call to call, momentum `None`'s 1 / count, is computed on the GPU),
//! so an entry may be recorded any number of times before a submission. Bounded, least recently
//! used first out; and an entry one of whose tensors was dropped is swept at the layer's next
//! call, so the cache never keeps a caller's dropped buffers alive past it.

use std::sync::Weak;

use crate::dtype::DType;
use crate::encode::Prepared;
use crate::epilogue::kind::EpilogueKind;
use crate::layout::Layout;
use crate::tensor::{ChannelPair, Tensor, TensorInner};

/// Entries a layer keeps at most.
pub(crate) const CAPACITY: usize = 16;

/// What identifies a call's dispatches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    /// Training forward, inference forward, or backward (through batch statistics or not).
    pub kind: Kind,
    /// The epilogue the dispatches are specialized for.
    pub epilogue: EpilogueKind,
    pub shape: Vec<usize>,
    pub layout: Layout,
    pub dtype: DType,
    /// Each tensor's buffer and offset, then any other buffer the dispatches bind.
    pub buffers: Vec<(wgpu::Buffer, u64)>,
}

/// The kinds of call a layer caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    TrainingForward,
    InferenceForward,
    Backward {
        batch_stats: bool,
    },
    /// The halves of a synchronized call (`crate::sync`), in the order they run.
    SyncStatistics,
    SyncNormalize,
    SyncGradientSums,
    SyncInputGradient,
}

impl Key {
    /// The key of a call of `kind` with `epilogue` on `tensors` (their buffers and offsets)
    /// and `others`.
    pub fn new(
        kind: Kind,
        epilogue: EpilogueKind,
        tensors: &[&Tensor],
        others: &[&wgpu::Buffer],
    ) -> Self {
        Key {
            kind,
            epilogue,
            shape: tensors[0].shape().to_vec(),
            layout: tensors[0].layout(),
            dtype: tensors[0].dtype(),
            buffers: tensors
                .iter()
                .map(|t| (t.buffer().clone(), t.offset()))
                .chain(others.iter().map(|b| ((*b).clone(), 0)))
                .collect(),
        }
    }
}

struct Entry {
    key: Key,
    last_use: u64,
    /// The tensors of its last call: when one is gone, so is the entry.
    tensors: Vec<Weak<TensorInner>>,
    prepared: Prepared,
    output: ChannelPair,
}

/// A layer's entries.
#[derive(Default)]
pub(crate) struct Workspace {
    entries: Vec<Entry>,
    clock: u64,
}

impl Workspace {
    /// The entry of `key`, made by `make` when there is none (or an error, which leaves the
    /// workspace as it was), with `tensors` as its live tensors; then sweeps entries whose
    /// tensors are all gone and, over capacity, the least recently used.
    pub fn entry(
        &mut self,
        key: Key,
        tensors: &[&Tensor],
        make: impl FnOnce() -> crate::Result<(Prepared, ChannelPair)>,
    ) -> crate::Result<(&Prepared, &ChannelPair)> {
        self.clock += 1;
        let index = match self.entries.iter().position(|e| e.key == key) {
            Some(index) => index,
            None => {
                let (prepared, output) = make()?;
                self.entries.push(Entry {
                    key,
                    last_use: 0,
                    tensors: Vec::new(),
                    prepared,
                    output,
                });
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[index];
        entry.last_use = self.clock;
        entry.tensors = tensors.iter().map(|t| t.downgrade()).collect();
        let clock = self.clock;
        self.entries
            .retain(|e| e.last_use == clock || e.tensors.iter().all(|t| t.strong_count() > 0));
        while self.entries.len() > CAPACITY {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_use)
                .map(|(i, _)| i)
                .expect("over capacity, so not empty");
            self.entries.remove(oldest);
        }
        let entry = self
            .entries
            .iter()
            .find(|e| e.last_use == clock)
            .expect("the entry just used is never swept");
        Ok((&entry.prepared, &entry.output))
    }

    /// How many entries the layer holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}
