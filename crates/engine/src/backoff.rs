//! Full-jitter exponential backoff: `random(0, min(cap, base·2^attempt))`.

use std::sync::Arc;
use std::time::Duration;

use crate::io::Io;

#[derive(Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    /// Where the jitter comes from.
    io: Arc<dyn Io>,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, io: Arc<dyn Io>) -> Backoff {
        Backoff { base, cap, attempt: 0, io }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn window(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay; each call widens the window.
    pub fn next_delay(&mut self) -> Duration {
        let window = self.window();
        self.attempt = self.attempt.saturating_add(1);
        let ms = window.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { self.io.random(ms) })
    }

    /// Adds attempts at once (a 429 widens the window faster).
    pub fn penalize(&mut self, attempts: u32) {
        self.attempt = self.attempt.saturating_add(attempts);
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_inside_a_doubling_capped_window() {
        let io = crate::net::Net::shared(None, Default::default()).unwrap();
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000), io);
        for attempt in 0..10u32 {
            let ceiling = Duration::from_millis((100u64 << attempt).min(1000));
            assert_eq!(b.window(), ceiling);
            assert!(b.next_delay() <= ceiling);
        }
        b.reset();
        assert_eq!(b.window(), Duration::from_millis(100));
    }
}
