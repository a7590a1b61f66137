//! Fault injection, switched at run time through `POST /__control/faults`.

use serde::Deserialize;

use crate::stream::{EventFaults, StreamFaults};

/// Makes matching requests fail before they are handled.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailRule {
    /// Requests whose path starts with this fail (`""`: every API request).
    #[serde(default)]
    pub path: String,
    /// Only this method (`None`: any).
    #[serde(default)]
    pub method: Option<String>,
    /// How many requests to fail; `None`: until cleared.
    #[serde(default)]
    pub count: Option<u32>,
    /// Let this many matching requests through first (a fault in the
    /// middle of a run of pages).
    #[serde(default)]
    pub after: u32,
    /// Hold the request this long, then answer it as usual: no failure
    /// (a slow server, for one route).
    #[serde(default)]
    pub hold_ms: Option<u64>,
    /// HTTP status of the failure (429, 500, 503, 410, …).
    #[serde(default = "default_status")]
    pub status: u16,
    /// `Retry-After` seconds for a 429.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Answer 200 with a truncated, unparseable JSON body instead.
    #[serde(default)]
    pub malformed: bool,
    /// Handle the request (apply a write), then answer with the failure:
    /// the client cannot know the write happened.
    #[serde(default)]
    pub after_apply: bool,
}

fn default_status() -> u16 {
    503
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    #[serde(default)]
    pub rules: Vec<FailRule>,
    /// Events per pull page (1..=100; the real server uses 100).
    #[serde(default)]
    pub page_size: Option<usize>,
    /// Delay before every API answer, in ms.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// WebSocket connections made from now on.
    #[serde(default)]
    pub ws: StreamFaults,
    /// SSE connections made from now on.
    #[serde(default)]
    pub sse: StreamFaults,
    /// Change events on every stream.
    #[serde(default)]
    pub events: EventFaults,
    /// SSE keepalive comment period (the real server: 30,000).
    #[serde(default)]
    pub sse_keepalive_ms: Option<u64>,
}

impl Faults {
    /// The rule that applies to this request, counting it down.
    pub fn take(&mut self, method: &str, path: &str) -> Option<FailRule> {
        let i = self.rules.iter().position(|r| {
            path.starts_with(&r.path) && r.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
        })?;
        if self.rules[i].after > 0 {
            self.rules[i].after -= 1;
            return None;
        }
        let rule = self.rules[i].clone();
        if let Some(n) = self.rules[i].count.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.rules.remove(i);
            }
        }
        Some(rule)
    }
}
