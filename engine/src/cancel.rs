//! [`CancelToken`]: how a host stops a running statement. The shell raises it on Ctrl-C; the
//! Python package on KeyboardInterrupt. Long statements check it between batches (IMPORT
//! chunks and embedding batches, every EMBED / REEMBED segment, each training step, EVALUATE
//! per model and re-ranked query, COMPACT before each merge) and end with
//! [`crate::Error::Cancelled`], committing nothing (a REEMBED keeps the whole segments it had
//! committed and resumes after them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// A shared stop flag; clones watch the same flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the statements watching this token to stop at their next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Error::Cancelled)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The same flag as the training crate's stop signal.
    pub(crate) fn stop(&self) -> mirante_training::Stop {
        mirante_training::Stop::on(Arc::clone(&self.0))
    }
}
