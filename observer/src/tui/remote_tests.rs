//! The remote client against tiny HTTP servers on 127.0.0.1 serving
//! recorded snapshots and streams: two agents merge, one goes away and is
//! shown lost, nothing is fatal.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::app::{Action, App, SourceEvent};
use super::fixtures::{NOW_UNIX_MS, finding, snapshot};
use super::merge::{SourceStatus, summarize};
use super::remote::{AgentDecoder, AgentUrl, RemoteOptions, spawn_agents};
use crate::probe::FailureClass;

#[test]
fn agent_urls() {
    let url = AgentUrl::parse("http://10.0.0.3:9090").expect("valid");
    assert_eq!(url.authority, "10.0.0.3:9090");
    assert_eq!(url.prefix, "");
    let url = AgentUrl::parse("http://agent.local/observer/").expect("valid");
    assert_eq!(url.authority, "agent.local:80");
    assert_eq!(url.prefix, "/observer");
    assert!(AgentUrl::parse("https://x:1").is_err());
    assert!(AgentUrl::parse("10.0.0.3:9090").is_err());
    assert!(AgentUrl::parse("").is_err());
}

#[test]
fn decoder_reads_snapshots_and_findings_and_rejects_junk() {
    let mut decoder = AgentDecoder::new("a");
    let line = serde_json::json!({ "snapshot": snapshot(5, 0) }).to_string();
    let update = decoder
        .line(&line, NOW_UNIX_MS)
        .expect("decodes")
        .expect("an update");
    let SourceEvent::Snapshot(data) = &update.event else {
        panic!("expected a snapshot, got {:?}", update.event);
    };
    assert_eq!(data.terminations.len(), 5);
    // The destination view and the view behind a recommendation cross
    // the wire.
    let ledger = data
        .terminations
        .iter()
        .find(|t| t.pod == "ledger-6b7c9-p4x2m")
        .and_then(|t| t.destination.as_ref());
    assert_eq!(ledger.and_then(|d| d.arrival_gap_ms), Some(9_800));
    assert_eq!(ledger.map(|d| d.senders.len()), Some(4));
    let cart = data
        .terminations
        .iter()
        .find(|t| t.pod == "cart-7d9f8-abcde")
        .and_then(|t| t.destination.as_ref());
    assert_eq!(cart.and_then(|d| d.views_apart_ms), Some(2.0));
    let marks: Vec<_> = data.services.iter().map(|s| s.gap_view_mark()).collect();
    assert_eq!(marks, [None, None, Some("dst")]);

    let failed = finding(
        250,
        (17, 8080),
        FailureClass::Refused,
        Some("cart-7d9f8-abcde"),
    );
    let line = serde_json::json!({ "finding": failed }).to_string();
    let update = decoder.line(&line, 0).expect("decodes").expect("an update");
    let SourceEvent::Failures(rows) = update.event else {
        panic!("expected failures");
    };
    // Timed from the snapshot's clock: 250 ms before its `now`.
    assert_eq!(rows[0].at_unix_ms, NOW_UNIX_MS - 250);
    assert_eq!(rows[0].source, "a");

    assert!(decoder.line("", 0).expect("blank is fine").is_none());
    assert!(decoder.line("{\"nonsense\": 1}", 0).is_err());
    assert!(decoder.line("not json", 0).is_err());
}

/// Reads one request head and returns its path.
async fn read_path(socket: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace().nth(1).map(str::to_string)
}

/// Serves the snapshot and a stream of `lines`; the stream stays open
/// when `hold` is set, otherwise it ends (and the server stops accepting).
async fn agent(lines: Vec<String>, hold: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            match read_path(&mut socket).await.as_deref() {
                Some("/api/v1/snapshot") => {
                    let body = serde_json::to_string(&snapshot(100, 0)).expect("json");
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(body.as_bytes()).await;
                }
                Some("/api/v1/stream") => {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n";
                    let _ = socket.write_all(head.as_bytes()).await;
                    for line in &lines {
                        let _ = socket.write_all(format!("{line}\n").as_bytes()).await;
                    }
                    if hold {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    } else {
                        // The agent goes away: no more connections.
                        return;
                    }
                }
                _ => {
                    let _ = socket
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            }
        }
    });
    url
}

#[tokio::test]
async fn two_agents_merge_and_the_one_that_goes_away_is_lost() {
    let failed = finding(
        100,
        (17, 8080),
        FailureClass::Refused,
        Some("cart-7d9f8-abcde"),
    );
    let stream = vec![
        serde_json::json!({ "finding": failed }).to_string(),
        serde_json::json!({ "snapshot": snapshot(180, 1) }).to_string(),
        "{\"from_a_newer_agent\": true}".to_string(),
    ];
    let steady = agent(stream, true).await;
    let leaving = agent(Vec::new(), false).await;
    let (tx, mut rx) = mpsc::channel(64);
    let options = RemoteOptions {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        api_token: None,
    };
    let handles =
        spawn_agents(&[steady.clone(), leaving.clone()], tx, options).expect("valid URLs");

    let mut app = App::new("out.yaml".into());
    app.add_source(&steady);
    app.add_source(&leaving);
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(update) = rx.recv().await {
            app.update(Action::Data(update));
            let summary = summarize(&app.sources);
            let reconnect_failed = matches!(
                &app.sources[&leaving].status,
                SourceStatus::Lost { reason } if reason.starts_with("cannot connect")
            );
            if summary.up == 1 && reconnect_failed && !app.failures.is_empty() {
                return;
            }
        }
    })
    .await;
    for handle in handles {
        handle.abort();
    }
    assert!(settled.is_ok(), "did not settle: {:?}", app.sources.keys());
    assert_eq!(app.sources[&steady].status, SourceStatus::Up);
    // The lost agent's last snapshot is still merged in: both reported
    // every pod, one row each.
    let rows = app.termination_rows();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|t| t.sources.len() == 2), "{rows:#?}");
    assert_eq!(app.failures[0].source, steady);
    assert_eq!(app.failures[0].class, FailureClass::Refused);
}

#[tokio::test]
async fn an_agent_that_never_answers_is_lost_not_fatal() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let (tx, mut rx) = mpsc::channel(8);
    let handles =
        spawn_agents(std::slice::from_ref(&url), tx, RemoteOptions::default()).expect("valid URL");
    let update = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an update in time")
        .expect("the task is alive");
    assert_eq!(update.source, url);
    assert!(matches!(update.event, SourceEvent::Lost { .. }));
    // Dropping the receiver (the TUI quit) ends the task.
    drop(rx);
    for handle in handles {
        let _ = tokio::time::timeout(Duration::from_secs(15), handle).await;
    }
}
