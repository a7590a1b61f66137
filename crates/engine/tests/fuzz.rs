//! Property tests of everything that parses input from outside: stream
//! frames (text and binary), SSE byte streams in any split, and the wire
//! types. Nothing panics; what is well formed comes out whole.
//! `PROPTEST_CASES=100000 cargo test -p pylon-sync-engine --test fuzz` runs longer.

use proptest::prelude::*;
use pylon_sync_engine::protocol::PullPage;
use pylon_sync_engine::transport::sse::Parser;
use pylon_sync_engine::transport::{classify, BinaryFrame, Inbound};
use pylon_sync_engine::{ChangeEvent, Session};
use serde_json::{json, Value};

/// Arbitrary JSON, biased towards the shapes the protocol uses.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        "[a-z_]{0,8}".prop_map(Value::String),
        prop_oneof![Just("presence"), Just("topic"), Just("insert"), Just("update"), Just("delete"), Just("join")]
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("seq".to_string()),
                    Just("entity".to_string()),
                    Just("kind".to_string()),
                    Just("row_id".to_string()),
                    Just("type".to_string()),
                    Just("event".to_string()),
                    Just("data".to_string()),
                    Just("clientId".to_string()),
                    Just("topic".to_string()),
                    Just("room".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn text_frames_never_panic(text in ".{0,200}") {
        let _ = classify(&text);
    }

    #[test]
    fn json_frames_are_classified_without_panicking(v in json_value()) {
        let text = v.to_string();
        if let Inbound::Change(ev) = classify(&text) {
            // a change event that parses is one the replica can take
            prop_assert!(ev.seq > 0);
            prop_assert!(!ev.entity.is_empty());
        }
    }

    #[test]
    fn binary_frames_decode_or_say_they_cannot(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let f = BinaryFrame::decode(bytes.clone());
        if let Some(h) = f.header {
            prop_assert!(h.payload_offset <= bytes.len());
        }
    }

    #[test]
    fn binary_frames_round_trip(entity in "[A-Za-z]{1,20}", row in "[0-9a-f]{1,40}", payload in prop::collection::vec(any::<u8>(), 0..100)) {
        let mut b = vec![0x10];
        b.extend_from_slice(&(entity.len() as u16).to_be_bytes());
        b.extend_from_slice(entity.as_bytes());
        b.extend_from_slice(&(row.len() as u16).to_be_bytes());
        b.extend_from_slice(row.as_bytes());
        b.extend_from_slice(&payload);
        let h = BinaryFrame::decode(b.clone()).header.unwrap();
        prop_assert_eq!(h.entity, entity);
        prop_assert_eq!(h.row_id, row);
        prop_assert_eq!(&b[h.payload_offset..], &payload[..]);
    }

    #[test]
    fn sse_streams_of_random_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..20)) {
        let mut p = Parser::default();
        for c in chunks {
            let _ = p.feed(&c);
        }
    }

    #[test]
    fn sse_events_survive_any_split(events in prop::collection::vec("[ -~]{1,40}", 1..8), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10), crlf in any::<bool>()) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut stream = format!(": connected{nl}{nl}");
        for e in &events {
            stream.push_str(&format!("data: {e}{nl}{nl}: keepalive{nl}{nl}"));
        }
        let bytes = stream.as_bytes();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len())).collect();
        points.sort();
        let mut p = Parser::default();
        let mut got = Vec::new();
        let mut at = 0;
        for cut in points.into_iter().chain([bytes.len()]) {
            got.extend(p.feed(&bytes[at..cut]).unwrap());
            at = cut;
        }
        // "data: x": the one space after the colon is not part of the data
        prop_assert_eq!(got, events);
    }

    #[test]
    fn wire_types_reject_or_accept_without_panicking(v in json_value()) {
        let _ = serde_json::from_value::<ChangeEvent>(v.clone());
        let _ = serde_json::from_value::<Session>(v.clone());
        let _ = serde_json::from_value::<PullPage>(v);
    }
}
