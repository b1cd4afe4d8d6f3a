//! `docker events`: every change the head makes or learns of, per account, with
//! Docker's types, actions and attributes. The most recent [`KEEP_EVENTS`] are
//! kept in memory for `--since` (Docker keeps 256 and none on disk); live
//! subscribers get them from a broadcast channel.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex as StdMutex;

use chrono::Utc;
use tokio::sync::broadcast;

use crate::cluster::Cluster;
use crate::model::ContainerRecord;

/// Events kept for `--since`.
const KEEP_EVENTS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub account: String,
    /// `container`, `image`, `volume`.
    pub typ: &'static str,
    /// Docker's action, e.g. `start`, `die`, `exec_create: sh -c x`,
    /// `health_status: healthy`.
    pub action: String,
    /// The actor's id: container id, image reference or id, volume name.
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    /// Nanoseconds since the epoch.
    pub time_nano: i64,
}

/// The in-memory event log and its live feed.
pub struct EventLog {
    recent: StdMutex<VecDeque<Event>>,
    live: broadcast::Sender<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            recent: StdMutex::new(VecDeque::with_capacity(KEEP_EVENTS)),
            live: broadcast::channel(4096).0,
        }
    }
}

impl EventLog {
    fn push(&self, e: Event) {
        // Under the lock, so a subscriber sees each event exactly once: either
        // in its snapshot or on its receiver.
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == KEEP_EVENTS {
            recent.pop_front();
        }
        recent.push_back(e.clone());
        let _ = self.live.send(e);
    }

    /// The account's kept events at or after `since_nano`, and a receiver for
    /// the ones that follow (other accounts' included: filter them).
    pub fn subscribe(
        &self,
        account: &str,
        since_nano: Option<i64>,
    ) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.live.subscribe();
        let past = match since_nano {
            Some(t) => recent
                .iter()
                .filter(|e| e.account == account && e.time_nano >= t)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (past, rx)
    }
}

/// A container's event attributes: image, name and its labels (Docker's).
pub fn container_attributes(c: &ContainerRecord) -> BTreeMap<String, String> {
    let mut a = c.labels.clone();
    a.insert("image".into(), c.image_ref.clone());
    a.insert("name".into(), c.name.clone());
    a
}

impl Cluster {
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Records an event of the account's.
    pub(crate) fn emit(
        &self,
        account: &str,
        typ: &'static str,
        action: impl Into<String>,
        id: &str,
        attributes: BTreeMap<String, String>,
    ) {
        self.events.push(Event {
            account: account.to_string(),
            typ,
            action: action.into(),
            id: id.to_string(),
            attributes,
            time_nano: Utc::now().timestamp_nanos_opt().unwrap_or(0),
        });
    }

    /// A container event with the container's attributes plus `extra`.
    pub(crate) fn emit_container(
        &self,
        c: &ContainerRecord,
        action: impl Into<String>,
        extra: &[(&str, String)],
    ) {
        let mut a = container_attributes(c);
        for (k, v) in extra {
            a.insert((*k).to_string(), v.clone());
        }
        self.emit(&c.account, "container", action, &c.id, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(account: &str, t: i64) -> Event {
        Event {
            account: account.into(),
            typ: "container",
            action: "start".into(),
            id: "x".into(),
            attributes: BTreeMap::new(),
            time_nano: t,
        }
    }

    #[test]
    fn history_is_per_account_bounded_and_gapless() {
        let log = EventLog::default();
        for t in 0..(KEEP_EVENTS as i64 + 10) {
            log.push(ev(if t % 2 == 0 { "alice" } else { "bob" }, t));
        }
        let (past, mut rx) = log.subscribe("alice", Some(0));
        assert_eq!(past.len(), KEEP_EVENTS / 2);
        assert!(past.iter().all(|e| e.account == "alice"));
        // The oldest were dropped.
        assert_eq!(past[0].time_nano, 10);
        assert!(log.subscribe("alice", None).0.is_empty());
        assert_eq!(log.subscribe("alice", Some(KEEP_EVENTS as i64)).0.len(), 5);
        log.push(ev("alice", 99_999));
        assert_eq!(rx.try_recv().unwrap().time_nano, 99_999);
    }
}
