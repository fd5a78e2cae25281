//! The TUI's state and its one transition function, `App::update`.
//!
//! Pure: no terminal, no clock, no I/O. Time arrives as `Action::Tick`,
//! data as `Action::Data`, keys as `Action::Key`; anything the outside
//! world must do (quit, write a file) comes back as an [`Effect`]. That is
//! what lets every key, the pause, the filter and the merge be unit-tested.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

pub use super::action::{
    Action, DataUpdate, DetailTarget, Effect, Key, Screen, SortKey, SourceEvent,
};
use super::merge::{Merged, SourceState, SourceStatus, merge};
use super::view::{FailureRow, RatePoint};

/// The failures log keeps this many rows (newest first).
pub const FAILURE_LOG_CAPACITY: usize = 2_000;
/// Seconds of connect/failure rates kept for the sparklines.
pub const RATE_HISTORY_SECONDS: usize = 300;
/// Updates held while paused beyond this are dropped (oldest failures go).
const HELD_FAILURES_CAPACITY: usize = FAILURE_LOG_CAPACITY;

/// The whole TUI state.
#[derive(Clone, Debug)]
pub struct App {
    pub screen: Screen,
    /// Where Esc goes back to from Detail.
    pub previous: Screen,
    pub sort: SortKey,
    pub filter: String,
    pub editing_filter: bool,
    pub show_help: bool,
    /// The TUI clock when the view was paused.
    pub paused_at: Option<u64>,
    pub clock_ms: u64,
    pub sources: BTreeMap<String, SourceState>,
    /// What the screens show (frozen while paused).
    pub merged: Merged,
    /// Failed connects, newest first (frozen while paused).
    pub failures: VecDeque<FailureRow>,
    held_failures: VecDeque<FailureRow>,
    /// Completed one-second buckets, oldest first.
    pub rates: VecDeque<RatePoint>,
    frozen_rates: Option<Vec<RatePoint>>,
    bucket: RatePoint,
    bucket_start_ms: u64,
    last_totals: BTreeMap<String, (u64, u64)>,
    /// Selected row on Overview, Live and Failures.
    pub selected: [usize; 3],
    pub detail: Option<DetailTarget>,
    pub detail_scroll: u16,
    /// A one-line message for the status bar (export results, hints).
    pub message: Option<String>,
    pub export_path: PathBuf,
}

impl App {
    pub fn new(export_path: PathBuf) -> App {
        App {
            screen: Screen::Overview,
            previous: Screen::Overview,
            sort: SortKey::Worst,
            filter: String::new(),
            editing_filter: false,
            show_help: false,
            paused_at: None,
            clock_ms: 0,
            sources: BTreeMap::new(),
            merged: Merged::default(),
            failures: VecDeque::new(),
            held_failures: VecDeque::new(),
            rates: VecDeque::new(),
            frozen_rates: None,
            bucket: RatePoint::default(),
            bucket_start_ms: 0,
            last_totals: BTreeMap::new(),
            selected: [0; 3],
            detail: None,
            detail_scroll: 0,
            message: None,
            export_path,
        }
    }

    /// Registers a source before it has said anything, so the status line
    /// can show it as connecting.
    pub fn add_source(&mut self, name: &str) {
        self.sources.entry(name.to_string()).or_default();
    }

    pub fn is_paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// The clock the screens are drawn at: frozen while paused.
    pub fn view_clock_ms(&self) -> u64 {
        self.paused_at.unwrap_or(self.clock_ms)
    }

    /// Rates as shown (frozen while paused), oldest first.
    pub fn shown_rates(&self) -> Vec<RatePoint> {
        match &self.frozen_rates {
            Some(frozen) => frozen.clone(),
            None => self.rates.iter().copied().collect(),
        }
    }

    /// How many failures arrived while paused and are not shown yet.
    pub fn held(&self) -> usize {
        self.held_failures.len()
    }

    pub fn update(&mut self, action: Action) -> Option<Effect> {
        match action {
            Action::Key(key) => return self.on_key(key),
            Action::ScrollUp => self.move_selection(-1),
            Action::ScrollDown => self.move_selection(1),
            Action::Tick { now_ms } => self.on_tick(now_ms),
            Action::Data(update) => self.on_data(update),
            Action::Exported(Ok(path)) => {
                self.message = Some(format!("wrote recommendations to {}", path.display()));
            }
            Action::Exported(Err(error)) => {
                self.message = Some(format!("export failed: {error}"));
            }
        }
        None
    }

    fn on_tick(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        // After a long stall, only the last RATE_HISTORY_SECONDS matter.
        let behind = self.clock_ms.saturating_sub(self.bucket_start_ms) / 1000;
        if behind as usize > RATE_HISTORY_SECONDS {
            self.bucket_start_ms = self.clock_ms - RATE_HISTORY_SECONDS as u64 * 1000;
        }
        while self.clock_ms >= self.bucket_start_ms + 1000 {
            self.rates.push_back(self.bucket);
            self.bucket = RatePoint::default();
            self.bucket_start_ms += 1000;
            while self.rates.len() > RATE_HISTORY_SECONDS {
                self.rates.pop_front();
            }
        }
    }

    fn on_data(&mut self, update: DataUpdate) {
        let DataUpdate { source, event } = update;
        let state = self.sources.entry(source.clone()).or_default();
        match event {
            SourceEvent::Snapshot(data) => {
                let totals = (data.connects_total, data.failures_total);
                if let Some((connects, failures)) = self.last_totals.insert(source, totals) {
                    // A restarted agent starts its counters again: no delta.
                    self.bucket.connects += totals.0.saturating_sub(connects);
                    self.bucket.failures += totals.1.saturating_sub(failures);
                }
                state.status = SourceStatus::Up;
                state.data = Some(data);
                state.received_at_ms = self.clock_ms;
            }
            SourceEvent::Failures(rows) => {
                state.status = SourceStatus::Up;
                for row in rows {
                    if self.is_paused() {
                        self.held_failures.push_front(row);
                        self.held_failures.truncate(HELD_FAILURES_CAPACITY);
                    } else {
                        self.push_failure(row);
                    }
                }
            }
            SourceEvent::Lost { reason } => state.status = SourceStatus::Lost { reason },
        }
        if !self.is_paused() {
            self.merged = merge(&self.sources);
        }
    }

    fn push_failure(&mut self, row: FailureRow) {
        self.failures.push_front(row);
        self.failures.truncate(FAILURE_LOG_CAPACITY);
        // Keep a scrolled-down selection on the same row as rows arrive.
        let i = Screen::Failures.list_index().unwrap_or(2);
        if self.selected[i] > 0 {
            self.selected[i] = (self.selected[i] + 1).min(FAILURE_LOG_CAPACITY - 1);
        }
    }

    fn toggle_pause(&mut self) {
        if self.paused_at.take().is_some() {
            self.frozen_rates = None;
            while let Some(row) = self.held_failures.pop_back() {
                self.push_failure(row);
            }
            self.merged = merge(&self.sources);
        } else {
            self.paused_at = Some(self.clock_ms);
            self.frozen_rates = Some(self.rates.iter().copied().collect());
        }
    }

    fn on_key(&mut self, key: Key) -> Option<Effect> {
        if key == Key::Interrupt {
            return Some(Effect::Quit);
        }
        if self.editing_filter {
            self.on_filter_key(key);
            return None;
        }
        if self.show_help {
            match key {
                Key::Char('q') => return Some(Effect::Quit),
                Key::Char('?') | Key::Esc | Key::Enter => self.show_help = false,
                _ => {}
            }
            return None;
        }
        self.message = None;
        match key {
            Key::Char('q') => return Some(Effect::Quit),
            Key::Char('?') => self.show_help = true,
            Key::Char('/') => {
                self.editing_filter = true;
            }
            Key::Char('p') => self.toggle_pause(),
            Key::Char('s') => {
                self.sort = self.sort.next();
                self.selected = [0; 3];
            }
            Key::Char('e') => return self.export(),
            Key::Char(c @ '1'..='3') => {
                let index = c as usize - '1' as usize;
                self.switch_to(Screen::TABS[index]);
            }
            Key::Char('4') => self.open_detail(),
            Key::Tab => self.cycle_screen(1),
            Key::BackTab => self.cycle_screen(Screen::TABS.len() - 1),
            Key::Up | Key::Char('k') => self.move_selection(-1),
            Key::Down | Key::Char('j') => self.move_selection(1),
            Key::PageUp => self.move_selection(-10),
            Key::PageDown => self.move_selection(10),
            Key::Home | Key::Char('g') => self.move_selection(i64::MIN / 2),
            Key::End | Key::Char('G') => self.move_selection(i64::MAX / 2),
            Key::Enter => self.open_detail(),
            Key::Esc => {
                if self.screen == Screen::Detail {
                    self.screen = self.previous;
                } else if !self.filter.is_empty() {
                    self.filter.clear();
                    self.selected = [0; 3];
                }
            }
            _ => {}
        }
        None
    }

    fn on_filter_key(&mut self, key: Key) {
        match key {
            Key::Char(c) => self.filter.push(c),
            Key::Backspace => {
                self.filter.pop();
            }
            Key::Enter => self.editing_filter = false,
            Key::Esc => {
                self.filter.clear();
                self.editing_filter = false;
            }
            _ => return,
        }
        self.selected = [0; 3];
    }

    fn switch_to(&mut self, screen: Screen) {
        self.screen = screen;
        self.detail_scroll = 0;
    }

    fn cycle_screen(&mut self, step: usize) {
        let current = self.screen.list_index().unwrap_or(0);
        let next = (current + step) % Screen::TABS.len();
        self.switch_to(Screen::TABS[next]);
    }

    /// Rows on the current list screen after the filter.
    fn row_count(&self) -> usize {
        match self.screen {
            Screen::Overview => self.service_rows().len(),
            Screen::Live => self.termination_rows().len(),
            Screen::Failures => self.failure_rows().len(),
            Screen::Detail => 0,
        }
    }

    fn move_selection(&mut self, delta: i64) {
        if self.screen == Screen::Detail {
            let scrolled = (self.detail_scroll as i64 + delta).clamp(0, u16::MAX as i64);
            self.detail_scroll = scrolled as u16;
            return;
        }
        let Some(i) = self.screen.list_index() else {
            return;
        };
        let last = self.row_count().saturating_sub(1) as i64;
        self.selected[i] = (self.selected[i] as i64 + delta).clamp(0, last.max(0)) as usize;
    }

    /// The selected row on the current list screen, clamped to the rows
    /// that exist (data can shrink under a selection).
    pub fn selected_index(&self, screen: Screen) -> usize {
        let Some(i) = screen.list_index() else {
            return 0;
        };
        let count = match screen {
            Screen::Overview => self.service_rows().len(),
            Screen::Live => self.termination_rows().len(),
            _ => self.failure_rows().len(),
        };
        self.selected[i].min(count.saturating_sub(1))
    }

    fn open_detail(&mut self) {
        let target = match self.screen {
            Screen::Overview => {
                let rows = self.service_rows();
                rows.get(self.selected_index(Screen::Overview))
                    .map(|r| DetailTarget::Service {
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                    })
            }
            Screen::Live => {
                let rows = self.termination_rows();
                rows.get(self.selected_index(Screen::Live))
                    .map(|t| DetailTarget::Termination {
                        source: t.source.clone(),
                        uid: t.uid.clone(),
                    })
            }
            Screen::Failures => {
                let rows = self.failure_rows();
                let row = rows.get(self.selected_index(Screen::Failures));
                let found = row.and_then(|f| self.termination_for_failure(f));
                if row.is_some() && found.is_none() {
                    self.message = Some("no termination record for that pod".to_string());
                }
                found
            }
            Screen::Detail => return,
        };
        if let Some(target) = target {
            self.previous = self.screen;
            self.detail = Some(target);
            self.detail_scroll = 0;
            self.screen = Screen::Detail;
        }
    }

    fn termination_for_failure(&self, f: &FailureRow) -> Option<DetailTarget> {
        let pod = f.pod.as_deref()?;
        self.merged
            .terminations
            .iter()
            .find(|t| {
                t.seen_by(&f.source) && t.pod == pod && f.namespace.as_deref() == Some(&t.namespace)
            })
            .map(|t| DetailTarget::Termination {
                source: t.source.clone(),
                uid: t.uid.clone(),
            })
    }

    fn export(&mut self) -> Option<Effect> {
        let rows = self.service_rows();
        if rows.is_empty() {
            self.message = Some("nothing to export yet: no recommendations".to_string());
            return None;
        }
        let contents = super::rows::export_contents(&rows);
        Some(Effect::Export {
            path: self.export_path.clone(),
            contents,
        })
    }
}
