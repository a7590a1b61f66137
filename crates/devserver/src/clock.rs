//! The server's wall clock and chance. By default the system's; a
//! simulation fixes the wall time at start and a seed, after which the
//! clock moves only with tokio's (paused, virtual) time and every id and
//! token follows from the seed, so a run replays exactly.

use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct Clock {
    /// The wall time (ns since the epoch) at `origin`; `None`: the system clock.
    start: Option<(u128, tokio::time::Instant)>,
    rng: Mutex<StdRng>,
}

impl Clock {
    pub fn new(epoch_ms: Option<u64>, seed: Option<u64>) -> Clock {
        Clock {
            start: epoch_ms.map(|ms| (ms as u128 * 1_000_000, tokio::time::Instant::now())),
            rng: Mutex::new(match seed {
                Some(s) => StdRng::seed_from_u64(s),
                None => StdRng::from_os_rng(),
            }),
        }
    }

    /// Nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u128 {
        match self.start {
            Some((at, origin)) => at + origin.elapsed().as_nanos(),
            None => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
        }
    }

    /// A number in `0..max`.
    pub fn random(&self, max: u32) -> u32 {
        self.rng.lock().random_range(0..max)
    }
}
