//! Progress bars of long statements (hidden unless the handle's options ask for them).

/// A spinner counting rows (`importing: 1200 rows (350/s)`), or a hidden bar.
pub(crate) fn rows(show: bool, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{spinner}} {what}: {{pos}} rows ({{per_sec}})"
    )) {
        bar.set_style(style);
    }
    bar
}

/// A bar over `len` steps with a message, or a hidden bar.
pub(crate) fn steps(show: bool, len: usize, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}
