//! [`MpiExchange`]: synchronized batch norm's all-gather over MPI (rsmpi), for ranks in several
//! processes on one host or several. MPI is initialized once per process by the caller
//! (`mpi::initialize()`), which passes a communicator, usually the world's.
//!
//! MPI's default error handler aborts the job on an error, so a failed collective does not
//! come back as a [`SyncError`]: when a rank dies, `mpirun` ends every rank of the job.

use mpi::traits::{Communicator, CommunicatorCollectives};

use super::error::SyncError;
use super::exchange::Exchange;

/// The ranks of an MPI communicator as a synchronized batch norm's group.
pub struct MpiExchange<C: Communicator> {
    communicator: C,
}

impl<C: Communicator> MpiExchange<C> {
    /// The group of `communicator`'s ranks (e.g. `universe.world()`).
    pub fn new(communicator: C) -> Self {
        MpiExchange { communicator }
    }

    /// The communicator.
    pub fn communicator(&self) -> &C {
        &self.communicator
    }
}

impl<C: Communicator> Exchange for MpiExchange<C> {
    fn rank(&self) -> usize {
        self.communicator.rank() as usize
    }

    fn ranks(&self) -> usize {
        self.communicator.size() as usize
    }

    fn all_gather(&self, local: &[u32]) -> Result<Vec<u32>, SyncError> {
        let mut gathered = vec![0u32; local.len() * self.ranks()];
        self.communicator.all_gather_into(local, &mut gathered[..]);
        Ok(gathered)
    }
}
