//! Real time as the engine offers it: the connection's state, presence,
//! topics and CRDT subscriptions (kept by `realtime::Realtime`), and the
//! engine's side of the narrow handle (`realtime::Host`) the realtime task
//! works through. Owns nothing; `rt` is the realtime module's.

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;

use crate::config::Config;
use crate::events::{Connection, Event, Peer};
use crate::io::Io;
use crate::protocol::ChangeEvent;
use crate::realtime::{Follower, Host, Realtime};

use super::Engine;

impl Host for Engine {
    fn realtime(&self) -> &Realtime {
        &self.inner.rt
    }

    fn config(&self) -> &Config {
        &self.inner.cfg
    }

    fn io(&self) -> &Arc<dyn Io> {
        &self.inner.io
    }

    fn span(&self) -> tracing::Span {
        self.inner.span.clone()
    }

    fn now_ms(&self) -> u64 {
        Engine::now_ms(self)
    }

    fn emit(&self, ev: Event) {
        Engine::emit(self, ev)
    }

    fn want_pull(&self) {
        self.wake(super::Wake::Pull)
    }

    fn server_may_have_restarted(&self) {
        Engine::server_may_have_restarted(self)
    }

    fn stream_token(&self) -> Option<String> {
        self.session_token().or_else(|| self.token())
    }

    fn stream_user(&self) -> bool {
        self.stream_token().is_some() && self.session().is_none_or(|s| s.user_id.is_some())
    }

    fn apply_stream(&self, events: Vec<(u64, ChangeEvent)>) -> impl Future<Output = ()> + Send {
        Engine::apply_stream(self, events)
    }
}

impl Engine {
    /// Starts following the server in real time (no-op when polling is pinned).
    pub(super) fn start_realtime(&self) {
        Follower(self.clone()).start()
    }

    pub(super) async fn stop_realtime(&self) {
        Follower(self.clone()).stop().await
    }

    /// Tells the connection how the last round went, while polling.
    pub(super) fn polled(&self, error: Option<&crate::error::Error>, attempts: u32) {
        Follower(self.clone()).polled(error, attempts)
    }

    /// Reconnects at once with the current token (after a flip, without the
    /// previous identity's presence).
    pub(super) fn restart_realtime(&self, flipped: bool) {
        Follower(self.clone()).restart(flipped)
    }

    pub fn connection(&self) -> Connection {
        self.inner.rt.status()
    }

    /// This engine's id in presence frames.
    pub fn client_id(&self) -> &str {
        &self.inner.rt.client_id
    }

    /// Presence of the other engines connected to the server.
    /// Other engines' presence. Reading it says the application uses
    /// presence (see `use_presence`).
    pub fn presence(&self) -> Vec<Peer> {
        self.inner.rt.use_presence();
        self.inner.rt.peers()
    }

    /// The application uses presence (a listener for it): peers are asked
    /// to re-announce now and after each reconnect. An engine that never
    /// uses presence never asks (PROTOCOL §10: each ask is relayed to every
    /// connection of the server).
    pub fn use_presence(&self) {
        self.inner.rt.use_presence()
    }

    /// Sets (or with `None` withdraws) this engine's presence. It is sent now
    /// when a WebSocket is open, and again after every reconnect.
    pub fn set_presence(&self, data: Option<Value>) {
        self.inner.rt.set_presence(data)
    }

    /// Publishes to a topic over the open WebSocket; false when none is open
    /// (topic messages are not queued: they are about now).
    pub fn publish_topic(&self, topic: &str, data: Value) -> bool {
        self.inner.rt.publish_topic(topic, data)
    }

    /// Refcounted: the first subscriber sends `crdt-subscribe`, and it is
    /// re-sent after every reconnect.
    pub fn subscribe_crdt(&self, entity: &str, row_id: &str) {
        self.inner.rt.subscribe_crdt(entity, row_id)
    }

    /// The last unsubscriber sends `crdt-unsubscribe`; extra calls are no-ops.
    pub fn unsubscribe_crdt(&self, entity: &str, row_id: &str) {
        self.inner.rt.unsubscribe_crdt(entity, row_id)
    }

    /// Active CRDT subscriptions with their counts.
    pub fn crdt_subscriptions(&self) -> Vec<(String, String, u32)> {
        self.inner.rt.crdt_subscriptions()
    }
}
