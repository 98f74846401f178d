//! A batch of calls spread over clients, each on its own connection,
//! each taking the next call as soon as its previous one answered.

use crate::client::Connection;
use crate::ironic::{self, ApiError, Call, Done, OnConflict};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// The results of a batch, in the order of its calls.
#[derive(Debug)]
pub struct BatchRun {
    pub done: Vec<Done>,
    /// From the first call sent to the last answer.
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("a client task died")]
    Task(#[source] tokio::task::JoinError),
}

/// A failed batch, with the calls that succeeded before it stopped (the
/// nodes they created still need cleaning up).
#[derive(Debug, thiserror::Error)]
#[error("a batch of calls stopped after {} succeeded", done.len())]
pub struct BatchFailure {
    #[source]
    pub error: BatchError,
    pub done: Vec<Done>,
}

/// Runs `calls` over already open `connections` (one client each); stops
/// handing out calls at the first error and returns it.
pub async fn run_batch(
    connections: Vec<Connection>,
    calls: Vec<Call>,
    on_conflict: OnConflict,
) -> Result<BatchRun, BatchFailure> {
    let total = calls.len();
    let calls = Arc::new(calls);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for mut conn in connections {
        let calls = Arc::clone(&calls);
        let next = Arc::clone(&next);
        clients.spawn(async move {
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= calls.len() {
                    return (done, None);
                }
                match ironic::perform(&mut conn, &calls[index], on_conflict).await {
                    Ok(d) => done.push((index, d)),
                    Err(e) => {
                        // No new calls for anyone: the batch has failed.
                        next.store(calls.len(), Ordering::Relaxed);
                        return (done, Some(e));
                    }
                }
            }
        });
    }
    let mut done = Vec::with_capacity(total);
    let mut first_error = None;
    while let Some(joined) = clients.join_next().await {
        match joined {
            Ok((part, error)) => {
                done.extend(part);
                if let Some(e) = error {
                    first_error.get_or_insert(BatchError::Api(e));
                }
            }
            Err(e) => {
                first_error.get_or_insert(BatchError::Task(e));
            }
        }
    }
    let elapsed = started.elapsed();
    done.sort_unstable_by_key(|(index, _)| *index);
    let done = done.into_iter().map(|(_, d)| d).collect();
    match first_error {
        Some(error) => Err(BatchFailure { error, done }),
        None => Ok(BatchRun { done, elapsed }),
    }
}
