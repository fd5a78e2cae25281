//! Owning the terminal safely: raw mode, the alternate screen and mouse
//! capture are undone on every way out (normal exit, error, panic), and
//! logs go to a file because the screen is taken.

use std::fs::{File, OpenOptions};
use std::io::{self, Stdout, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, Once};

use crossterm::event::{DisableMouseCapture, EnableMouseCapture};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use thiserror::Error;

/// Where TUI commands log unless told otherwise.
pub const DEFAULT_LOG_FILE: &str = "observer-tui.log";

#[derive(Debug, Error)]
pub enum TerminalError {
    #[error("cannot set up the terminal: {0}")]
    Setup(#[source] io::Error),
    #[error("cannot open log file {path}: {source}")]
    LogFile {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("a global tracing subscriber is already installed")]
    SubscriberTaken,
}

/// Puts the terminal back the way it was. Safe to call more than once and
/// from a panic hook: every step is attempted, errors are ignored (there is
/// nowhere left to report them).
pub fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, DisableMouseCapture);
    let _ = execute!(io::stdout(), crossterm::cursor::Show);
}

/// Holds the terminal in TUI mode; dropping it restores the terminal.
pub struct TerminalGuard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    /// Enters raw mode and the alternate screen, captures the mouse, and
    /// installs the panic hook that restores the terminal first.
    pub fn enter() -> Result<TerminalGuard, TerminalError> {
        install_panic_hook();
        enable_raw_mode().map_err(TerminalError::Setup)?;
        let setup = execute!(io::stdout(), EnterAlternateScreen, EnableMouseCapture)
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        match setup {
            Ok(mut terminal) => {
                // A failed clear only leaves stale characters until the first draw.
                let _ = terminal.clear();
                Ok(TerminalGuard { terminal })
            }
            Err(error) => {
                restore_terminal();
                Err(TerminalError::Setup(error))
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Chains a hook before the existing panic hook that restores the
/// terminal, so the panic message lands on a usable screen. Installed once.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

/// A `tracing` writer that appends to one shared file.
#[derive(Clone)]
struct SharedFile(Arc<Mutex<File>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.lock() {
            Ok(mut file) => file.write(buf),
            // A writer panicked mid-line; the file is still usable.
            Err(poisoned) => poisoned.into_inner().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.0.lock() {
            Ok(mut file) => file.flush(),
            Err(poisoned) => poisoned.into_inner().flush(),
        }
    }
}

/// Sends `tracing` (and `log`) output to `path` (appending) instead of the
/// terminal, honouring `RUST_LOG` (default `info`). Call it before
/// [`super::run_tui`] and instead of the usual stderr subscriber.
pub fn log_to_file(path: &Path) -> Result<(), TerminalError> {
    use tracing_subscriber::EnvFilter;

    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| TerminalError::LogFile {
            path: path.display().to_string(),
            source,
        })?;
    let writer = SharedFile(Arc::new(Mutex::new(file)));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .map_err(|_| TerminalError::SubscriberTaken)
}
