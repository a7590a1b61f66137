//! The filter grammar of `POST /api/query/<E>` (PROTOCOL §7.1).

use std::cmp::Ordering;

use serde_json::{Map, Value};

pub struct Query {
    conds: Vec<(String, String, Value)>,
    order: Vec<(String, bool)>,
    pub limit: Option<usize>,
    pub offset: usize,
}

fn cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Number(y)) | (Value::Number(y), Value::Bool(x)) => {
            let o = (*x as i64 as f64).partial_cmp(&y.as_f64()?)?;
            Some(if matches!(a, Value::Bool(_)) { o } else { o.reverse() })
        }
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

/// Null sorts first, like SQLite.
fn sort_cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let a = a.unwrap_or(&Value::Null);
    let b = b.unwrap_or(&Value::Null);
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => cmp(a, b).unwrap_or(Ordering::Equal),
    }
}

impl Query {
    /// Parses a filter; `Err(field)` names an unknown column.
    pub fn parse(body: &Map<String, Value>, known: &dyn Fn(&str) -> bool) -> Result<Query, String> {
        let mut q = Query { conds: Vec::new(), order: Vec::new(), limit: None, offset: 0 };
        for (k, v) in body {
            match k.as_str() {
                "$order" => {
                    for (f, d) in v.as_object().into_iter().flatten() {
                        if !known(f) {
                            return Err(f.clone());
                        }
                        q.order.push((f.clone(), d.as_str() != Some("desc")));
                    }
                }
                "$limit" => q.limit = v.as_u64().map(|n| n as usize),
                "$offset" => q.offset = v.as_u64().unwrap_or(0) as usize,
                "$search" => {}
                field => {
                    if !known(field) {
                        return Err(field.to_string());
                    }
                    match v {
                        Value::Object(ops) => {
                            for (op, arg) in ops {
                                q.conds.push((field.to_string(), op.clone(), arg.clone()));
                            }
                        }
                        other => q.conds.push((field.to_string(), "$eq".into(), other.clone())),
                    }
                }
            }
        }
        if q.order.is_empty() {
            q.order.push(("id".into(), true));
        }
        Ok(q)
    }

    /// Ordered by id ascending alone: rows can be read in key order.
    pub fn in_id_order(&self) -> bool {
        matches!(self.order.as_slice(), [(f, true)] if f == "id")
    }

    /// The `id $gt` bound of a keyset page, where a scan in id order can start.
    pub fn id_after(&self) -> Option<&str> {
        self.conds.iter().find(|(f, op, _)| f == "id" && op == "$gt").and_then(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        self.conds.iter().all(|(f, op, arg)| {
            let v = row.get(f).unwrap_or(&Value::Null);
            let o = cmp(v, arg);
            match op.as_str() {
                "$eq" => o == Some(Ordering::Equal),
                "$not" => o != Some(Ordering::Equal),
                "$gt" => o == Some(Ordering::Greater),
                "$gte" => matches!(o, Some(Ordering::Greater | Ordering::Equal)),
                "$lt" => o == Some(Ordering::Less),
                "$lte" => matches!(o, Some(Ordering::Less | Ordering::Equal)),
                "$in" => arg.as_array().is_some_and(|a| a.iter().any(|x| cmp(v, x) == Some(Ordering::Equal))),
                "$like" => match (v.as_str(), arg.as_str()) {
                    (Some(s), Some(p)) => s.to_lowercase().contains(&p.to_lowercase()),
                    _ => false,
                },
                _ => false,
            }
        })
    }

    pub fn sort(&self, rows: &mut [Map<String, Value>]) {
        rows.sort_by(|a, b| {
            for (f, asc) in &self.order {
                let o = sort_cmp(a.get(f), b.get(f));
                if o != Ordering::Equal {
                    return if *asc { o } else { o.reverse() };
                }
            }
            Ordering::Equal
        });
    }
}
