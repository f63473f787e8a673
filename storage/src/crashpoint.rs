//! Named crash points inside commits, for the crash tests: with the `failpoints` feature, a
//! point armed by the `FAILPOINTS` environment variable (fail-rs syntax, for example
//! `FAILPOINTS='storage::manifest-renamed=2*off->return'`: pass twice, die the third time)
//! kills the process with SIGKILL right there, so a test can crash a commit between any two of
//! its durable steps instead of hoping a timer lands there. Without the feature every point
//! compiles to nothing.
//!
//! The points, in the order a commit reaches them: `storage::segment-written` (a new segment's
//! files are written and fsynced, nothing references them), `storage::before-manifest` (the
//! `files/` directory is fsynced), `storage::manifest-written` (the manifest's temporary file
//! is written and fsynced, not renamed), `storage::manifest-renamed` (renamed, the directory
//! not yet fsynced), `storage::committed` (done, the handle not yet updated). `VACUUM`:
//! `storage::vacuum-manifests-removed`, `storage::vacuum-file-removed`. The engine's registry
//! installs: `engine::model-synced`, `engine::model-renamed`.

/// Dies here with SIGKILL when point `name` is armed (see the module documentation).
pub fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |_| kill_self());
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Arms the points `FAILPOINTS` names, for the rest of the process. A no-op without the
/// `failpoints` feature.
pub fn arm_from_env() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

#[cfg(feature = "failpoints")]
fn kill_self() {
    // SAFETY: sends a signal to this process; SIGKILL cannot be caught, so nothing runs after.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL returned");
}
