//! The transport of synchronized batch norm: [`Exchange`], an all-gather of a few words per
//! rank, and its in-process implementation, [`InProcessExchange`] (one endpoint per thread,
//! each thread driving its own `GpuContext`). The MPI one is `MpiExchange` (feature `mpi`).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::error::SyncError;

/// An all-gather among the ranks of a group: the one collective synchronized batch norm
/// needs. Every rank calls [`Exchange::all_gather`] in the same order with as many words as
/// every other rank (the protocol sees to it), and gets every rank's words, rank 0's first.
pub trait Exchange {
    /// This rank's index, from 0.
    fn rank(&self) -> usize;
    /// How many ranks the group has.
    fn ranks(&self) -> usize;
    /// Every rank's `local`, concatenated in rank order. Blocks until every rank has called
    /// it.
    fn all_gather(&self, local: &[u32]) -> Result<Vec<u32>, SyncError>;
}

/// The endpoints of a group of `ranks` ranks in one process, rank 0 first: give one to each
/// thread. When an endpoint is dropped (its thread ended or panicked), every exchange of the
/// others returns [`SyncError::PeerGone`] instead of waiting for it.
pub fn in_process_group(ranks: usize) -> Vec<InProcessExchange> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            generation: 0,
            pending: vec![None; ranks],
            gathered: Ok(Arc::new(Vec::new())),
            gone: None,
        }),
        arrived: Condvar::new(),
    });
    (0..ranks)
        .map(|rank| InProcessExchange {
            rank,
            ranks,
            shared: Arc::clone(&shared),
        })
        .collect()
}

/// One rank's endpoint of an in-process group ([`in_process_group`]).
pub struct InProcessExchange {
    rank: usize,
    ranks: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InProcessExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessExchange")
            .field("rank", &self.rank)
            .field("ranks", &self.ranks)
            .finish()
    }
}

struct Shared {
    state: Mutex<State>,
    arrived: Condvar,
}

struct State {
    /// Exchanges completed so far.
    generation: u64,
    /// Each rank's words for the exchange in progress.
    pending: Vec<Option<Vec<u32>>>,
    /// The last completed exchange's result. No rank can complete the next one before every
    /// rank has entered it, so it stays until every rank has read it.
    gathered: Result<Arc<Vec<u32>>, String>,
    /// The first rank whose endpoint was dropped.
    gone: Option<usize>,
}

impl InProcessExchange {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; take over a poisoned one all the same.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn result_of(state: &State) -> Result<Vec<u32>, SyncError> {
    match &state.gathered {
        Ok(words) => Ok(words.as_ref().clone()),
        Err(message) => Err(SyncError::Transport(message.clone())),
    }
}

impl Exchange for InProcessExchange {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.ranks
    }

    fn all_gather(&self, local: &[u32]) -> Result<Vec<u32>, SyncError> {
        let mut state = self.lock();
        if let Some(rank) = state.gone {
            return Err(SyncError::PeerGone { rank });
        }
        let generation = state.generation;
        state.pending[self.rank] = Some(local.to_vec());
        if state.pending.iter().all(Option::is_some) {
            let parts: Vec<Vec<u32>> = state.pending.iter_mut().filter_map(Option::take).collect();
            state.gathered = if parts.iter().all(|p| p.len() == local.len()) {
                Ok(Arc::new(parts.concat()))
            } else {
                Err(format!(
                    "the ranks sent different numbers of words: {:?}",
                    parts.iter().map(Vec::len).collect::<Vec<_>>()
                ))
            };
            state.generation += 1;
            self.shared.arrived.notify_all();
            return result_of(&state);
        }
        let state = self
            .shared
            .arrived
            .wait_while(state, |s| s.generation == generation && s.gone.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match state.gone {
            Some(rank) if state.generation == generation => Err(SyncError::PeerGone { rank }),
            _ => result_of(&state),
        }
    }
}

impl Drop for InProcessExchange {
    fn drop(&mut self) {
        let mut state = self.lock();
        state.gone.get_or_insert(self.rank);
        self.shared.arrived.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_gets_every_rank_words_in_rank_order_round_after_round() {
        let group = in_process_group(3);
        let results: Vec<Vec<Vec<u32>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .iter()
                .map(|endpoint| {
                    scope.spawn(move || {
                        (0..50u32)
                            .map(|round| {
                                let r = endpoint.rank() as u32;
                                endpoint.all_gather(&[round, r, 10 * r]).unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for rounds in &results {
            for (round, words) in rounds.iter().enumerate() {
                let round = round as u32;
                assert_eq!(words, &[round, 0, 0, round, 1, 10, round, 2, 20]);
            }
        }
    }

    #[test]
    fn a_dropped_endpoint_ends_the_others_wait_with_an_error() {
        let mut group = in_process_group(2);
        let leaver = group.pop().unwrap();
        let stayer = group.pop().unwrap();
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| stayer.all_gather(&[1]));
            // Let the stayer block first, most of the time; either order must end in an error.
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(leaver);
            assert!(matches!(
                waiting.join().unwrap(),
                Err(SyncError::PeerGone { rank: 1 })
            ));
        });
        assert!(matches!(
            stayer.all_gather(&[1]),
            Err(SyncError::PeerGone { rank: 1 })
        ));
    }

    #[test]
    fn unequal_lengths_are_an_error_on_every_rank() {
        let group = in_process_group(2);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .iter()
                .map(|e| scope.spawn(move || e.all_gather(&vec![7; 1 + e.rank()])))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for result in results {
            assert!(matches!(result, Err(SyncError::Transport(m)) if m.contains("[1, 2]")));
        }
    }
}
