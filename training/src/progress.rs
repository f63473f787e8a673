//! Where long work (embedding, fine-tuning, importing, re-ranking) shows its progress: nowhere,
//! as bars on stderr (the CLI), or on a board that another thread reads and draws in its own
//! way (the Python package draws it with tqdm, in terminals and notebooks alike).

use std::sync::{Arc, Mutex, PoisonError};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How a job shows its progress. Cloning shares the destination.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Progress {
    /// No progress shown.
    #[default]
    Hidden,
    /// Bars drawn on stderr.
    Stderr,
    /// Bars registered on a board, drawn by whoever watches it.
    Watched(ProgressBoard),
}

impl From<bool> for Progress {
    /// `true`: bars on stderr.
    fn from(show: bool) -> Self {
        if show {
            Progress::Stderr
        } else {
            Progress::Hidden
        }
    }
}

impl Progress {
    /// A bar over `len` steps named `what`; callers may add a message (a loss, say).
    pub fn steps(&self, len: usize, what: &str) -> ProgressBar {
        self.bar(
            Some(len as u64),
            what,
            "{prefix} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta}) {msg}",
        )
    }

    /// A counter of rows of unknown total named `what` (`importing: 1200 rows (350/s)`).
    pub fn rows(&self, what: &str) -> ProgressBar {
        self.bar(None, what, "{spinner} {prefix}: {pos} rows ({per_sec})")
    }

    fn bar(&self, len: Option<u64>, what: &str, template: &str) -> ProgressBar {
        let bar = match self {
            Progress::Stderr => {
                let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
                if let Ok(style) = ProgressStyle::with_template(template) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar
            }
            Progress::Hidden | Progress::Watched(_) => {
                ProgressBar::with_draw_target(len, ProgressDrawTarget::hidden())
            }
        };
        bar.set_prefix(what.to_string());
        if let Progress::Watched(board) = self {
            board.lock().push(bar.clone());
        }
        bar
    }
}

/// The bars of one call, in the order its jobs started them.
#[derive(Debug, Clone, Default)]
pub struct ProgressBoard {
    bars: Arc<Mutex<Vec<ProgressBar>>>,
}

/// One bar's state as read off a [`ProgressBoard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// What the job does ("embedding images").
    pub what: String,
    /// Steps (or rows) done.
    pub position: u64,
    /// Steps in all, when known.
    pub length: Option<u64>,
    /// The job's latest note (a training loss), possibly empty.
    pub message: String,
    /// The job finished (a job stopped by an error or a cancel never does: the call is over
    /// then, and its watcher closes every bar).
    pub finished: bool,
}

/// Boards are equal when they are the same board.
impl PartialEq for ProgressBoard {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.bars, &other.bars)
    }
}

impl ProgressBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ProgressBar>> {
        self.bars.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state of every bar started so far.
    pub fn tasks(&self) -> Vec<TaskState> {
        self.lock()
            .iter()
            .map(|bar| TaskState {
                what: bar.prefix(),
                position: bar.position(),
                length: bar.length(),
                message: bar.message(),
                finished: bar.is_finished(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_board_reports_each_bar_as_its_job_moves() {
        let board = ProgressBoard::default();
        let progress = Progress::Watched(board.clone());
        assert!(board.tasks().is_empty());
        let embed = progress.steps(10, "embedding images");
        embed.inc(4);
        let import = progress.rows("importing");
        import.inc(7);
        embed.set_message("loss 0.5");
        let tasks = board.tasks();
        assert_eq!(tasks.len(), 2);
        assert_eq!(
            tasks[0],
            TaskState {
                what: "embedding images".into(),
                position: 4,
                length: Some(10),
                message: "loss 0.5".into(),
                finished: false,
            }
        );
        assert_eq!((tasks[1].position, tasks[1].length), (7, None));
        embed.finish_and_clear();
        assert!(board.tasks()[0].finished);
        assert!(!board.tasks()[1].finished);
    }

    #[test]
    fn hidden_progress_registers_nothing() {
        let bar = Progress::Hidden.steps(3, "x");
        bar.inc(1);
        assert_eq!(bar.position(), 1);
        assert!(bar.is_hidden());
    }
}
