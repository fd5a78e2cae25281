//! The vocabulary of the TUI's state machine: screens, sorts, keys, what
//! can happen to the `App` (`Action`, `DataUpdate`) and what it asks the
//! outside world to do (`Effect`).

use std::path::PathBuf;

use super::view::{FailureRow, SourceData};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    Overview,
    Live,
    Failures,
    Detail,
}

impl Screen {
    /// The screens Tab cycles through (Detail is entered with Enter).
    pub const TABS: [Screen; 3] = [Screen::Overview, Screen::Live, Screen::Failures];

    pub fn title(self) -> &'static str {
        match self {
            Screen::Overview => "Overview",
            Screen::Live => "Live terminations",
            Screen::Failures => "Failures",
            Screen::Detail => "Detail",
        }
    }

    /// The tab label on narrow terminals.
    pub fn short_title(self) -> &'static str {
        match self {
            Screen::Live => "Live",
            other => other.title(),
        }
    }

    /// Index into `App::selected` for the list screens.
    pub(crate) fn list_index(self) -> Option<usize> {
        Screen::TABS.iter().position(|s| *s == self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// Largest preStop shortfall, then most failures, then longest gap.
    Worst,
    /// Longest propagation gap (p99 on the Overview).
    Gap,
    Failures,
    Name,
}

impl SortKey {
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Worst => SortKey::Gap,
            SortKey::Gap => SortKey::Failures,
            SortKey::Failures => SortKey::Name,
            SortKey::Name => SortKey::Worst,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::Worst => "worst",
            SortKey::Gap => "gap",
            SortKey::Failures => "failures",
            SortKey::Name => "name",
        }
    }
}

/// What the Detail screen is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetailTarget {
    Termination { source: String, uid: String },
    Service { namespace: String, name: String },
}

/// Keys the TUI understands, independent of the terminal library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Tab,
    BackTab,
    Backspace,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    /// Ctrl-C: quits from any mode.
    Interrupt,
}

/// News from one data source.
#[derive(Clone, Debug, PartialEq)]
pub struct DataUpdate {
    /// The source's name (the agent URL, or "local").
    pub source: String,
    pub event: SourceEvent,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// The source's current state, replacing its previous one.
    Snapshot(SourceData),
    /// Failed connects, oldest first.
    Failures(Vec<FailureRow>),
    /// The source is unreachable; it will be retried.
    Lost { reason: String },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Key(Key),
    ScrollUp,
    ScrollDown,
    /// The TUI's clock, in ms since it started.
    Tick {
        now_ms: u64,
    },
    Data(DataUpdate),
    /// The outcome of an [`Effect::Export`].
    Exported(Result<PathBuf, String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Quit,
    /// Write `contents` to `path`, then report back with `Action::Exported`.
    Export {
        path: PathBuf,
        contents: String,
    },
}
