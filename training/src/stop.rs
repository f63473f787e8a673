//! [`Stop`]: how a caller asks a long job (embedding, training) to end early.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// A flag the caller raises to stop a job; jobs check it between batches and steps and then
/// return [`Error::Cancelled`]. The default never stops.
#[derive(Debug, Clone, Default)]
pub struct Stop(Option<Arc<AtomicBool>>);

impl Stop {
    /// Stops once `flag` is set.
    pub fn on(flag: Arc<AtomicBool>) -> Self {
        Stop(Some(flag))
    }

    pub fn is_raised(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// `Err(Error::Cancelled)` once the flag is raised.
    pub fn check(&self) -> Result<()> {
        if self.is_raised() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Two stops are equal when they watch the same flag (or neither watches one).
impl PartialEq for Stop {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}
