//! `createInfiniteQuery`: server pages read with keyset pagination on
//! (order field, id), so rows inserted or deleted between pages never make a
//! page skip or repeat a row (offset pagination would).

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::api::check_entity;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::protocol::Row;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Asc,
    Desc,
}

#[derive(Default)]
struct Pages {
    rows: Vec<Arc<Row>>,
    seen: HashSet<String>,
    has_more: bool,
    loading: bool,
    /// Bumped by `reset`, so a page that arrives afterwards is dropped.
    generation: u64,
    json: Option<Arc<str>>,
}

pub struct InfiniteQuery {
    engine: Engine,
    entity: String,
    page_size: usize,
    order: Option<(String, Direction)>,
    pages: Mutex<Pages>,
}

impl InfiniteQuery {
    pub fn new(engine: Engine, entity: &str, page_size: usize, order: Option<(String, Direction)>) -> Result<Self> {
        check_entity(entity)?;
        if page_size == 0 || page_size > 10_000 {
            return Err(Error::InvalidArg(format!("pageSize must be 1..=10000, got {page_size}")));
        }
        if let Some((field, _)) = &order {
            check_entity(field).map_err(|_| Error::InvalidArg(format!("invalid order field {field:?}")))?;
        }
        Ok(InfiniteQuery {
            engine,
            entity: entity.to_string(),
            page_size,
            order,
            pages: Mutex::new(Pages { has_more: true, ..Pages::default() }),
        })
    }

    pub fn has_more(&self) -> bool {
        self.pages.lock().has_more
    }

    pub fn loading(&self) -> bool {
        self.pages.lock().loading
    }

    pub fn data(&self) -> Vec<Arc<Row>> {
        self.pages.lock().rows.clone()
    }

    pub fn data_json(&self) -> Arc<str> {
        let mut p = self.pages.lock();
        if let Some(j) = &p.json {
            return j.clone();
        }
        let j: Arc<str> = serde_json::to_string(&p.rows).expect("rows serialize").into();
        p.json = Some(j.clone());
        j
    }

    /// Forgets every page.
    pub fn reset(&self) {
        let mut p = self.pages.lock();
        let generation = p.generation + 1;
        *p = Pages { has_more: true, generation, ..Pages::default() };
    }

    /// Loads the next page. Returns false when nothing was loaded (already
    /// loading, exhausted, or reset meanwhile).
    pub async fn load_more(&self) -> Result<bool> {
        let (filter, generation, limit) = {
            let mut p = self.pages.lock();
            if p.loading || !p.has_more {
                return Ok(false);
            }
            p.loading = true;
            let (filter, limit) = self.next_filter(&p);
            (filter, p.generation, limit)
        };
        let token = self.engine.token();
        let res = self.engine.api().query(token.as_deref(), &self.entity, &filter).await;
        let mut p = self.pages.lock();
        if p.generation != generation {
            return Ok(false);
        }
        p.loading = false;
        let page = res?;
        p.has_more = page.len() >= limit;
        let mut added = 0;
        for row in page {
            let Some(id) = row.get("id").and_then(Value::as_str).map(str::to_string) else {
                return Err(Error::Protocol(format!("a {} row has no string id", self.entity)));
            };
            if added < self.page_size && p.seen.insert(id) {
                p.rows.push(Arc::new(row));
                added += 1;
            }
        }
        p.json = None;
        Ok(true)
    }

    /// The filter for the page after the last row held. Rows that tie with
    /// the last row on the order field are asked for again (and dropped as
    /// already seen), so a tie is never skipped.
    fn next_filter(&self, p: &Pages) -> (Value, usize) {
        let (field, dir) = match &self.order {
            Some((f, d)) => (f.as_str(), *d),
            None => ("id", Direction::Asc),
        };
        let word = |d: Direction| if d == Direction::Asc { "asc" } else { "desc" };
        let mut order = serde_json::Map::new();
        order.insert(field.to_string(), json!(word(dir)));
        if field != "id" {
            order.insert("id".into(), json!(word(dir)));
        }
        let mut filter = json!({ "$order": order });
        let mut limit = self.page_size;
        if let Some(last) = p.rows.last() {
            let value = last.get(field).cloned().unwrap_or(Value::Null);
            if field == "id" {
                let op = if dir == Direction::Asc { "$gt" } else { "$lt" };
                filter[field] = json!({ op: value });
            } else {
                let op = if dir == Direction::Asc { "$gte" } else { "$lte" };
                let ties = p.rows.iter().filter(|r| r.get(field) == Some(&value)).count();
                limit += ties;
                filter[field] = json!({ op: value });
            }
        }
        filter["$limit"] = json!(limit);
        (filter, limit)
    }
}
