//! Job scripts for the schedulers of the clusters where dictionary research runs: Slurm today.
//!
//! This crate owns the batch scripts saescope writes (an [`slurm::Job`] is one script: a job
//! array, one task per part or per dictionary, or a single job such as a merge), where their logs
//! go, and their submission through `sbatch` with dependencies between them. It knows nothing of
//! models or runs: the CLI decides what each task runs and which tasks are left to do, and
//! `saescope-store` tells it what is complete. It does not start or manage a cluster.

pub mod slurm;

pub use slurm::{Job, JobId, Resources, SlurmError, Work};
