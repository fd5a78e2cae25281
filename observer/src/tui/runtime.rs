//! The event loop that owns the terminal: keys and mouse (an event task on
//! crossterm's `EventStream`), data updates and a clock tick all become
//! `Action`s for `App::update`; effects are carried out here; the screen is
//! redrawn after each batch.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{
    Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::app::{Action, App, DataUpdate, Effect, Key};
use super::remote::{RemoteOptions, spawn_agents};
use super::render::render;
use super::terminal::TerminalGuard;

/// Actions handled before the screen is redrawn, so a burst of updates
/// costs one draw, not one per update.
const MAX_BATCH: usize = 256;

#[derive(Clone, Debug)]
pub struct TuiOptions {
    /// Where `e` writes the recommendations.
    pub export_path: PathBuf,
    /// How often the clock ticks (bars grow, rates roll over).
    pub tick: Duration,
    /// Sources to list as "connecting" before they send anything.
    pub sources: Vec<String>,
    /// Shown in the status line once every data source has ended.
    pub ended_message: String,
}

impl Default for TuiOptions {
    fn default() -> Self {
        TuiOptions {
            export_path: PathBuf::from("observer-recommendations.yaml"),
            tick: Duration::from_millis(250),
            sources: Vec::new(),
            ended_message: "data source ended".to_string(),
        }
    }
}

/// Maps a terminal key to the TUI's keys; `None` for keys it ignores.
pub fn map_key(event: KeyEvent) -> Option<Key> {
    if event.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = event.modifiers.contains(KeyModifiers::CONTROL);
    Some(match event.code {
        KeyCode::Char('c') if ctrl => Key::Interrupt,
        KeyCode::Char(c) if !ctrl => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        _ => return None,
    })
}

/// Terminal events -> actions. Ends when the terminal's input ends or the
/// TUI has gone.
async fn event_task(tx: mpsc::Sender<Action>) {
    let mut events = EventStream::new();
    while let Some(event) = events.next().await {
        let action = match event {
            Ok(Event::Key(key)) => map_key(key).map(Action::Key),
            Ok(Event::Mouse(mouse)) => match mouse.kind {
                MouseEventKind::ScrollUp => Some(Action::ScrollUp),
                MouseEventKind::ScrollDown => Some(Action::ScrollDown),
                _ => None,
            },
            // A resize needs only the redraw every action gets; the loop
            // stamps the tick with the real time.
            Ok(Event::Resize(..)) => Some(Action::Tick { now_ms: 0 }),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, "terminal input failed");
                break;
            }
        };
        if let Some(action) = action
            && tx.send(action).await.is_err()
        {
            break;
        }
    }
}

/// Runs the TUI until the user quits, fed by `updates`. Owns the terminal
/// for its whole run and restores it on every way out.
pub async fn run_tui(
    mut updates: mpsc::Receiver<DataUpdate>,
    options: TuiOptions,
) -> anyhow::Result<()> {
    let mut guard = TerminalGuard::enter()?;
    let mut app = App::new(options.export_path.clone());
    for source in &options.sources {
        app.add_source(source);
    }
    let (action_tx, mut actions) = mpsc::channel(MAX_BATCH);
    let events = tokio::spawn(event_task(action_tx));
    let started = Instant::now();
    let mut tick = tokio::time::interval(options.tick);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut updates_open = true;

    let result = 'run: loop {
        guard
            .terminal
            .draw(|frame| render(&app, frame))
            .context("drawing the screen")?;
        let first = tokio::select! {
            action = actions.recv() => match action {
                Some(action) => action,
                None => break 'run Err(anyhow::anyhow!("terminal input ended")),
            },
            update = updates.recv(), if updates_open => match update {
                Some(update) => Action::Data(update),
                None => {
                    updates_open = false;
                    app.message = Some(options.ended_message.clone());
                    continue;
                }
            },
            _ = tick.tick() => Action::Tick { now_ms: started.elapsed().as_millis() as u64 },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match updates.try_recv() {
                Ok(update) => batch.push(Action::Data(update)),
                Err(_) => break,
            }
        }
        while let Ok(action) = actions.try_recv() {
            batch.push(action);
        }
        for action in batch {
            let action = match action {
                // Resizes carry no time; stamp them so the clock never runs back.
                Action::Tick { .. } => Action::Tick {
                    now_ms: started.elapsed().as_millis() as u64,
                },
                other => other,
            };
            match app.update(action) {
                Some(Effect::Quit) => break 'run Ok(()),
                Some(Effect::Export { path, contents }) => {
                    let outcome = tokio::fs::write(&path, contents)
                        .await
                        .map(|()| std::path::absolute(&path).unwrap_or(path.clone()))
                        .map_err(|e| format!("{}: {e}", path.display()));
                    app.update(Action::Exported(outcome));
                }
                None => {}
            }
        }
    };
    events.abort();
    drop(guard);
    result
}

/// `observer tui --agents URL,…`: reads every agent's HTTP API and runs the
/// TUI over the merged picture. A lost agent is shown and retried.
/// `remote` says how agents are reached (their API token, timeouts).
pub async fn run_remote(
    agents: &[String],
    remote: RemoteOptions,
    mut options: TuiOptions,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(super::feed::DEFAULT_CAPACITY);
    let handles = spawn_agents(agents, tx, remote)?;
    options.sources = agents.to_vec();
    let result = run_tui(rx, options).await;
    for handle in handles {
        handle.abort();
    }
    result
}
