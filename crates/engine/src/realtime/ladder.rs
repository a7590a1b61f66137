//! Which transport to use next in automatic mode. Pure: the follower asks
//! it at every connection, and tells it how each ended.

use std::time::Duration;

use tokio::time::Instant;

use crate::transport::Which;

/// Connections that die (or never open) this many times in a row make the
/// automatic mode step down a transport.
const STEP_DOWN_AFTER: u32 = 3;
/// Failed probes double the wait up to this.
const PROBE_MAX: Duration = Duration::from_secs(600);

/// Which transport to use next, in automatic mode: step down after repeated
/// failures, probe one step up again later.
pub(super) struct Ladder {
    pinned: Option<Which>,
    level: Which,
    failures: u32,
    probing: bool,
    pub(super) probe_at: Instant,
    probe_every: Duration,
    probe_first: Duration,
}

impl Ladder {
    pub(super) fn new(pinned: Option<Which>, probe_first: Duration) -> Ladder {
        Ladder {
            pinned,
            level: Which::best(),
            failures: 0,
            probing: false,
            probe_at: Instant::now(),
            probe_every: probe_first,
            probe_first,
        }
    }

    /// `top`: the best transport possible now (some need a user session).
    pub(super) fn pick(&mut self, top: Which) -> Which {
        if let Some(p) = self.pinned {
            return p;
        }
        self.level = self.level.max(top);
        if self.level > top && Instant::now() >= self.probe_at {
            self.probing = true;
            let up = self.level.step(-1).max(top);
            tracing::info!(from = self.level.name(), to = up.name(), "transport: probing a better one");
            return up;
        }
        self.level
    }

    /// When a connection on a step below `top` should end, to probe a
    /// higher one. A probe that succeeds below `top` keeps probing later.
    pub(super) fn deadline(&self, which: Which, top: Which) -> Option<Instant> {
        if self.pinned.is_some() || which <= top {
            return None;
        }
        Some(if self.probing { Instant::now() + self.probe_first } else { self.probe_at })
    }

    pub(super) fn opened(&mut self, which: Which) {
        if self.probing {
            tracing::info!(transport = which.name(), "transport: the probe opened; staying on it");
            self.probing = false;
            self.level = which;
            self.failures = 0;
            self.probe_every = self.probe_first;
            self.probe_at = Instant::now() + self.probe_every;
        }
    }

    /// Records how a connection ended; true when the next one should be
    /// tried at once (a failed probe, or a step down).
    pub(super) fn ended(&mut self, opened: bool, stable: bool) -> bool {
        if self.pinned.is_some() {
            return false;
        }
        if self.probing {
            self.probing = false;
            if !opened {
                tracing::info!(back_to = self.level.name(), "transport: the probe failed");
                self.probe_every = (self.probe_every * 2).min(PROBE_MAX.max(self.probe_first));
                self.probe_at = Instant::now() + self.probe_every;
                return true;
            }
        }
        if stable {
            self.failures = 0;
            return false;
        }
        self.failures += 1;
        if self.failures >= STEP_DOWN_AFTER && self.level != Which::Poll {
            let down = self.level.step(1);
            tracing::info!(
                from = self.level.name(),
                to = down.name(),
                failures = self.failures,
                "transport: stepping down after connections that died or never opened"
            );
            self.level = down;
            self.failures = 0;
            self.probe_at = Instant::now() + self.probe_every;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn the_ladder_steps_down_after_repeated_deaths_and_probes_back_up() {
        let mut l = Ladder::new(None, MINUTE);
        assert_eq!(l.pick(Which::WebSocket), Which::WebSocket);
        // two quick deaths stay; the third steps down, to be tried at once
        assert!(!l.ended(true, false));
        assert!(!l.ended(false, false));
        assert!(l.ended(false, false));
        assert_eq!(l.pick(Which::WebSocket), Which::Sse);
        // a connection below the top ends when it is time to probe
        assert_eq!(l.deadline(Which::Sse, Which::WebSocket), Some(Instant::now() + MINUTE));
        tokio::time::advance(MINUTE).await;
        assert_eq!(l.pick(Which::WebSocket), Which::WebSocket, "the probe");
        // a probe that fails goes back down at once, and waits twice as long
        assert!(l.ended(false, false));
        assert_eq!(l.pick(Which::WebSocket), Which::Sse);
        assert_eq!(l.deadline(Which::Sse, Which::WebSocket), Some(Instant::now() + 2 * MINUTE));
        // a probe that opens climbs back, and the wait starts over
        tokio::time::advance(2 * MINUTE).await;
        assert_eq!(l.pick(Which::WebSocket), Which::WebSocket);
        l.opened(Which::WebSocket);
        assert_eq!(l.pick(Which::WebSocket), Which::WebSocket);
        assert_eq!(l.deadline(Which::WebSocket, Which::WebSocket), None);
        assert_eq!(l.probe_every, MINUTE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_connection_forgets_earlier_deaths() {
        let mut l = Ladder::new(None, MINUTE);
        l.pick(Which::WebSocket);
        assert!(!l.ended(true, false));
        assert!(!l.ended(true, false));
        assert!(!l.ended(true, true), "stable");
        assert!(!l.ended(true, false));
        assert!(!l.ended(true, false));
        assert_eq!(l.pick(Which::WebSocket), Which::WebSocket);
        // the bottom step has nowhere to go
        let mut bottom = Ladder::new(None, MINUTE);
        bottom.level = Which::Poll;
        for _ in 0..2 * STEP_DOWN_AFTER {
            assert!(!bottom.ended(false, false));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_user_session_the_top_is_sse_and_a_pinned_transport_never_moves() {
        let mut l = Ladder::new(None, MINUTE);
        assert_eq!(l.pick(Which::Sse), Which::Sse);
        assert_eq!(l.deadline(Which::Sse, Which::Sse), None);
        let mut pinned = Ladder::new(Some(Which::WebSocket), MINUTE);
        for _ in 0..2 * STEP_DOWN_AFTER {
            assert_eq!(pinned.pick(Which::WebSocket), Which::WebSocket);
            assert!(!pinned.ended(false, false));
        }
        assert_eq!(pinned.deadline(Which::WebSocket, Which::Sse), None);
    }
}
