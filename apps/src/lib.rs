//! Applications of the Mirante engine, built on its public API only: the end-to-end demo and
//! its HTML report (`demo`, `demo_report`), the recipe that trained the default model
//! (`pretrain`), and the generator of the bundled shapes benchmark (`shapes`). The `mirante`
//! command line runs them; the engine does not depend on them.

pub mod demo;
mod demo_report;
mod error;
pub mod pretrain;
pub mod shapes;

pub use error::{Error, Result};
