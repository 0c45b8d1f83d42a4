//! Wake-ups: the [`Wake`] a commit sends, and the `LISTEN` connection through which instances
//! wake each other (one coalesced `NOTIFY` per burst, on [`CHANNEL`]).

use super::board::JobsBoard;
use actix::Recipient;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// The notification channel shared by every instance.
pub const CHANNEL: &str = "rampart_jobs";

/// A commit wrote jobs to `queues` (empty: any). Sent after the commit, never waited on. Only
/// the queues named are claimed from: a checkout's wake-up must not cost a claim of every queue.
#[derive(Debug, Clone, Default)]
pub struct Wake {
    pub queues: Vec<String>,
    /// Also tell the other instances (false for a wake that came from them).
    pub broadcast: bool,
}

impl actix::Message for Wake {
    type Result = ();
}

/// Keeps a `LISTEN` connection: wakes the dispatcher on another instance's notification, and
/// sends this instance's own when asked. Reconnects after a poll interval when it breaks;
/// ends when the dispatcher stops.
pub(super) async fn listen(
    pg: tokio_postgres::Config,
    instance: String,
    addr: Recipient<Wake>,
    mut asks: tokio::sync::mpsc::Receiver<String>,
    retry: Duration,
    board: JobsBoard,
) {
    use futures_util::StreamExt;
    while addr.connected() {
        let Ok((client, mut connection)) = pg.connect(tokio_postgres::NoTls).await else {
            tokio::time::sleep(retry).await;
            continue;
        };
        let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
        let me = instance.clone();
        let driver = actix_rt::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    // "<instance> <queue>,<queue>": another instance's commit wrote to those.
                    let (from, queues) = n.payload().split_once(' ').unwrap_or((n.payload(), ""));
                    if from == me {
                        continue;
                    }
                    let queues = queues
                        .split(',')
                        .filter(|q| !q.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if tx.send(queues).is_err() {
                        break;
                    }
                }
            }
        });
        if client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .is_ok()
        {
            board.listening.store(true, Relaxed);
            // Jobs written while nobody listened are found now rather than at the next poll.
            addr.do_send(Wake::default());
            loop {
                tokio::select! {
                    note = notes.recv() => match note {
                        Some(queues) => {
                            board.notifications.fetch_add(1, Relaxed);
                            addr.do_send(Wake { queues, broadcast: false });
                        }
                        None => break,
                    },
                    ask = asks.recv() => match ask {
                        // Queue names are the kinds' own (letters and underscores).
                        Some(queues) => {
                            let sql = format!("NOTIFY {CHANNEL}, '{instance} {queues}'");
                            if client.batch_execute(&sql).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
        }
        board.listening.store(false, Relaxed);
        driver.abort();
        if asks.is_closed() {
            return;
        }
        tokio::time::sleep(retry).await;
    }
}
