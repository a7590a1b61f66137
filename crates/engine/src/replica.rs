//! The in-memory replica: the server's rows per entity plus the visible effect
//! of pending local writes. Pure data, no I/O: every change is first planned as
//! a list of [`Effect`]s, persisted, then committed here.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use crate::protocol::{ChangeEvent, Kind, Row};
use crate::queue::{project, Queue};

/// A row held as its compact JSON text (`id` included). Text takes a
/// fraction of the memory of a parsed map, loads from SQLite without parsing,
/// and is what JavaScript reads; it is parsed only to patch or compare it.
/// Rows loaded from the file are slices of one buffer (see [`Texts`]).
#[derive(Clone)]
pub struct RowText(Repr);

#[derive(Clone)]
enum Repr {
    /// A text of its own: one allocation.
    Own(Arc<str>),
    /// `buf[start..end]`, a slice of a loaded list.
    Slice { buf: Arc<String>, start: u32, end: u32 },
}

impl RowText {
    pub fn new(row: &Row) -> RowText {
        RowText::own(serde_json::to_string(row).expect("rows serialize"))
    }

    /// Text this program wrote (the replica's own table); not validated again.
    pub fn stored(text: &str) -> RowText {
        RowText(Repr::Own(text.into()))
    }

    fn own(text: String) -> RowText {
        RowText(Repr::Own(text.into()))
    }

    /// A text made whole, kept where it was made (no copy into an
    /// `Arc<str>`): for a list built to be handed out at once.
    fn whole(text: String) -> RowText {
        match u32::try_from(text.len()) {
            Ok(end) => RowText(Repr::Slice { buf: Arc::new(text), start: 0, end }),
            Err(_) => RowText::own(text),
        }
    }

    /// All of `buf`.
    fn of_buffer(buf: Arc<String>) -> RowText {
        let end = u32::try_from(buf.len()).expect("a buffer's offsets fit in 32 bits");
        RowText(Repr::Slice { buf, start: 0, end })
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Own(text) => text,
            Repr::Slice { buf, start, end } => &buf[*start as usize..*end as usize],
        }
    }

    pub fn parse(&self) -> Row {
        serde_json::from_str(self.as_str()).unwrap_or_default()
    }
}

impl PartialEq for RowText {
    fn eq(&self, other: &RowText) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RowText {}

/// The texts of a replica's rows as it loads them, written into one
/// buffer per entity laid out as that entity's list in JSON (`[row,row]`),
/// each row a slice of it. A fresh process makes 100,000 rows' texts in a
/// few allocations instead of 100,000, which was most of the time the load
/// took, and the first read of the whole list needs no text built (see
/// `Table::list`). A buffer is freed with the last of its rows, so what
/// stays is never more than was loaded. A list begun in parts is laid out
/// in buffers of about that size instead, each a JSON list of its own rows,
/// handed out as it is closed (see `Db::load`): no copy is made of them
/// (one that fits in one part is still held whole, by that part).
pub struct Texts {
    done: Vec<Arc<String>>,
    open: Option<String>,
    /// For each list begun: the buffer that holds it whole, unless it
    /// outgrew one (a slice's offsets are 32 bits, or it was begun in parts).
    whole: Vec<Option<usize>>,
    max: usize,
    /// Where the open list's buffers end (`max`, or the size of its parts).
    split: usize,
    /// Buffers in `done` already handed out by [`Texts::closed`].
    handed: usize,
}

impl Default for Texts {
    fn default() -> Texts {
        let max = u32::MAX as usize;
        Texts { done: Vec::new(), open: None, whole: Vec::new(), max, split: max, handed: 0 }
    }
}

/// Where [`Texts::push`] put a text; made a [`RowText`] once the texts are finished.
#[derive(Clone, Copy)]
pub struct TextAt {
    buf: u32,
    start: u32,
    end: u32,
}

/// The buffers [`Texts`] filled, and for each list begun the one holding it whole.
pub struct Lists {
    buffers: Vec<Arc<String>>,
    whole: Vec<Option<usize>>,
}

impl Texts {
    /// A new entity's rows follow; `parts`: in buffers of about that many
    /// bytes, each a list of its own.
    pub fn begin_list(&mut self, parts: Option<usize>) {
        self.end_buffer();
        self.split = parts.map_or(self.max, |p| p.min(self.max));
        self.open = Some(self.new_buffer());
        self.whole.push(Some(self.done.len()));
    }

    /// A part is made at its size, not grown to it.
    fn new_buffer(&self) -> String {
        let mut buf = String::with_capacity(if self.split < self.max { self.split + self.split / 8 } else { 0 });
        buf.push('[');
        buf
    }

    fn end_buffer(&mut self) {
        if let Some(mut list) = self.open.take() {
            list.push(']');
            list.shrink_to_fit();
            self.done.push(Arc::new(list));
        }
    }

    pub fn push(&mut self, text: &str) -> TextAt {
        if self.open.as_ref().is_some_and(|l| l.len() > 1 && l.len() + text.len() + 2 > self.split) {
            // a part is full, or past what 32-bit offsets reach: on in a
            // new buffer, and the whole list is built when asked for
            self.end_buffer();
            if let Some(whole) = self.whole.last_mut() {
                *whole = None;
            }
        }
        if self.open.is_none() {
            self.open = Some(self.new_buffer());
        }
        let list = self.open.as_mut().expect("a buffer is open");
        if list.len() > 1 {
            list.push(',');
        }
        let start = list.len();
        list.push_str(text);
        // SQLite holds no text over a gigabyte, so one text always fits
        let at = |n: usize| u32::try_from(n).expect("a buffer's offsets fit in 32 bits");
        TextAt { buf: at(self.done.len()), start: at(start), end: at(list.len()) }
    }

    /// The last list's rows are all pushed: its last buffer is closed.
    pub fn end_list(&mut self) {
        self.end_buffer();
    }

    /// The buffers closed since the last call, each a JSON list of the rows
    /// it holds.
    pub fn closed(&mut self) -> Vec<RowText> {
        let closed = self.done[self.handed..].iter().map(|buf| RowText::of_buffer(buf.clone())).collect();
        self.handed = self.done.len();
        closed
    }

    pub fn finish(mut self) -> Lists {
        self.end_buffer();
        Lists { buffers: self.done, whole: self.whole }
    }
}

impl Lists {
    pub fn text(&self, at: TextAt) -> RowText {
        RowText(Repr::Slice { buf: self.buffers[at.buf as usize].clone(), start: at.start, end: at.end })
    }

    /// The `n`th list begun, as JSON, if one buffer holds it whole.
    pub fn list(&self, n: usize) -> Option<RowText> {
        Some(RowText::of_buffer(self.buffers[self.whole[n]?].clone()))
    }
}

/// Stored rows as loaded, with each entity's list as JSON when its rows'
/// texts were read into one (see [`Texts`]).
#[derive(Default)]
pub struct Loaded {
    pub rows: Tables,
    pub lists: BTreeMap<String, RowText>,
}

impl std::fmt::Debug for RowText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server row, or a tombstone (`data: None`) that remembers the delete's seq.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseRow {
    /// Seq of the last change applied to it; 0 for rows from a snapshot-less
    /// source (hydration, an acknowledged local insert) that any event may replace.
    pub seq: u64,
    pub data: Option<RowText>,
}

/// Stored rows (and tombstones) by entity, then id.
pub type Tables = BTreeMap<String, BTreeMap<String, BaseRow>>;

/// A durable change to the server rows, planned before it is persisted.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Put { entity: String, id: String, seq: u64, data: RowText },
    Tombstone { entity: String, id: String, seq: u64 },
}

impl Effect {
    pub fn entity(&self) -> &str {
        match self {
            Effect::Put { entity, .. } | Effect::Tombstone { entity, .. } => entity,
        }
    }
    pub fn id(&self) -> &str {
        match self {
            Effect::Put { id, .. } | Effect::Tombstone { id, .. } => id,
        }
    }
    /// The stored row it leaves.
    pub fn row(&self) -> BaseRow {
        match self {
            Effect::Put { seq, data, .. } => BaseRow { seq: *seq, data: Some(data.clone()) },
            Effect::Tombstone { seq, .. } => BaseRow { seq: *seq, data: None },
        }
    }
}

/// An update for a row we do not hold: the full row must be fetched first.
#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    pub entity: String,
    pub id: String,
    pub seq: u64,
}

#[derive(Debug, Default)]
struct Table {
    base: BTreeMap<String, BaseRow>,
    /// Rows whose visible state differs from `base` because of pending writes.
    overlay: BTreeMap<String, Option<RowText>>,
    version: u64,
    /// Which rows changed visibly at each version after `journal_from`, so a
    /// reader holding an older list can be told only what changed.
    journal: VecDeque<(u64, String)>,
    journal_from: u64,
    /// The visible list as JSON while it is the text the rows were loaded
    /// from (see [`Texts`]): dropped at the first visible change.
    list: Option<RowText>,
    /// Whether the visible rows are still the rows loaded from the file.
    as_loaded: bool,
}

/// A snapshot's rows of one entity, with the ids that differ from ours
/// (`None`: too many to journal).
pub struct Replacement {
    rows: BTreeMap<String, BaseRow>,
    changed: Option<Vec<String>>,
}

impl Replacement {
    /// Whether any visible row differs from the rows it replaces.
    pub fn changes_rows(&self) -> bool {
        self.changed.as_ref().is_none_or(|ids| !ids.is_empty())
    }
}

/// The rows of an entity that may differ since some version, in id order,
/// with their visible state now (`None`: gone), and the version now.
#[derive(Debug, PartialEq)]
pub struct Changes {
    pub version: u64,
    pub rows: Vec<(String, Option<RowText>)>,
}

/// Journal entries kept per entity; a reader further behind reads the whole list.
const JOURNAL_CAP: usize = 32_768;

impl Table {
    /// Everything may have changed: readers start over.
    fn touch(&mut self) {
        self.version += 1;
        self.journal.clear();
        self.journal_from = self.version;
        self.list = None;
        self.as_loaded = false;
    }

    /// One row's visible state may have changed.
    fn touch_row(&mut self, id: &str) {
        self.version += 1;
        self.list = None;
        self.as_loaded = false;
        self.journal.push_back((self.version, id.to_string()));
        if self.journal.len() > JOURNAL_CAP {
            let (v, _) = self.journal.pop_front().expect("journal is not empty");
            self.journal_from = v;
        }
    }

    fn base_row(&self, id: &str) -> Option<&RowText> {
        self.base.get(id).and_then(|b| b.data.as_ref())
    }

    /// Visible rows in id order: stored rows with pending writes laid over
    /// them (rows that exist only locally sort in by id).
    fn visible(&self) -> impl Iterator<Item = &RowText> {
        let mut overlay = self.overlay.iter().peekable();
        let mut base = self.base.iter().peekable();
        std::iter::from_fn(move || loop {
            let next = match (base.peek(), overlay.peek()) {
                (None, None) => return None,
                (Some((bid, _)), Some((oid, _))) if oid <= bid => {
                    if oid == bid {
                        base.next();
                    }
                    overlay.next().unwrap().1.as_ref()
                }
                (Some(_), _) => base.next().unwrap().1.data.as_ref(),
                (None, Some(_)) => overlay.next().unwrap().1.as_ref(),
            };
            if next.is_some() {
                return next;
            }
        })
    }
}

#[derive(Debug, Default)]
pub struct Replica {
    tables: HashMap<String, Table>,
    /// Overlay entries changed since the database last took them.
    overlay_changed: OverlayChanges,
}

/// Overlay entries to store (see `Replica::take_overlay_changes`).
#[derive(Debug, Default, PartialEq)]
pub struct OverlayChanges {
    /// Every entry may have changed: the stored overlay is replaced by `rows`.
    pub all: bool,
    /// `(entity, id, shown)`: `None` when the row has no overlay entry (it
    /// shows as stored), `Some(None)` when a pending write deleted it.
    pub rows: Vec<(String, String, Option<Option<RowText>>)>,
    keys: BTreeSet<(String, String)>,
}

impl OverlayChanges {
    pub fn is_empty(&self) -> bool {
        !self.all && self.rows.is_empty()
    }
}

impl Replica {
    pub fn new() -> Replica {
        Replica::default()
    }

    /// Loads stored rows (rows and tombstones) without planning.
    pub fn load(&mut self, loaded: Loaded) {
        let entities: Vec<String> = loaded.rows.keys().cloned().collect();
        for (entity, base) in loaded.rows {
            self.tables.entry(entity).or_default().base = base;
        }
        for t in self.tables.values_mut() {
            t.touch();
        }
        for entity in entities {
            self.tables.get_mut(&entity).expect("loaded just now").as_loaded = true;
        }
        for (entity, list) in loaded.lists {
            if let Some(t) = self.tables.get_mut(&entity) {
                t.list = Some(list);
            }
        }
        self.overlay_changed.all = true;
    }

    /// Becomes `other` (built without holding a lock); versions keep growing
    /// past both, so caches of either invalidate.
    pub fn take_over(&mut self, other: Replica) {
        let mut tables = other.tables;
        for (entity, t) in &mut tables {
            let old = self.tables.get(entity).map_or(0, |o| o.version);
            t.version = t.version.max(old);
            // the same rows: readers' caches go, the list text stays
            let (list, as_loaded) = (t.list.take(), t.as_loaded);
            t.touch();
            (t.list, t.as_loaded) = (list, as_loaded);
        }
        for (entity, mut t) in self.tables.drain() {
            if let std::collections::hash_map::Entry::Vacant(slot) = tables.entry(entity) {
                t.base.clear();
                t.overlay.clear();
                t.touch();
                slot.insert(t);
            }
        }
        self.tables = tables;
        self.overlay_changed.all = true;
    }

    /// Drops every row, tombstone and overlay. Versions keep growing so caches invalidate.
    pub fn clear(&mut self) {
        for t in self.tables.values_mut() {
            t.base.clear();
            t.overlay.clear();
            t.touch();
        }
        self.overlay_changed.all = true;
    }

    pub fn entity_version(&self, entity: &str) -> u64 {
        self.tables.get(entity).map_or(0, |t| t.version)
    }

    pub fn entities(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tables.keys().cloned().collect();
        names.sort();
        names
    }

    /// Visible row.
    pub fn get(&self, entity: &str, id: &str) -> Option<RowText> {
        let t = self.tables.get(entity)?;
        match t.overlay.get(id) {
            Some(v) => v.clone(),
            None => t.base.get(id).and_then(|b| b.data.clone()),
        }
    }

    pub fn base(&self, entity: &str, id: &str) -> Option<&BaseRow> {
        self.tables.get(entity)?.base.get(id)
    }

    /// Stored rows (tombstones included) with ids greater than `after`, in id order.
    pub fn base_after<'a>(
        &'a self,
        entity: &str,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a String, &'a BaseRow)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let lower = after.map_or(Unbounded, |a| Excluded(a.to_string()));
        self.tables.get(entity).into_iter().flat_map(move |t| t.base.range::<String, _>((lower.clone(), Unbounded)))
    }

    /// The greatest stored id of `entity`.
    pub fn max_base_id(&self, entity: &str) -> Option<&str> {
        self.tables.get(entity)?.base.keys().next_back().map(String::as_str)
    }

    /// Visible rows ordered by id (server ids are time-ordered; temporary ids sort last).
    pub fn list(&self, entity: &str) -> Vec<RowText> {
        self.tables.get(entity).map_or_else(Vec::new, |t| t.visible().cloned().collect())
    }

    /// Number of visible rows.
    pub fn count(&self, entity: &str) -> usize {
        self.tables.get(entity).map_or(0, |t| t.visible().count())
    }

    /// The entity's version while its visible rows are still those loaded
    /// from the file (what [`Texts::closed`] handed out), else `None`.
    pub fn loaded_version(&self, entity: &str) -> Option<u64> {
        self.tables.get(entity).filter(|t| t.as_loaded).map(|t| t.version)
    }

    /// Visible rows as one JSON array, built from the rows' text (no parsing).
    /// Not cached: readers cache per version, and a copy here would double
    /// the memory of the replica.
    pub fn list_json(&self, entity: &str) -> RowText {
        let Some(t) = self.tables.get(entity) else {
            return RowText::stored("[]");
        };
        if let Some(list) = &t.list {
            return list.clone();
        }
        let size: usize = t.base.values().filter_map(|b| b.data.as_ref()).map(|r| r.as_str().len() + 1).sum();
        let mut json = String::with_capacity(size + 2 + t.overlay.len() * 64);
        json.push('[');
        for (i, row) in t.visible().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(row.as_str());
        }
        json.push(']');
        RowText::whole(json)
    }

    /// Works out what a batch of server changes does to the stored rows,
    /// following the merge rules: an event at or below a row's seq (or its
    /// tombstone's) is stale and ignored, and so is an insert of a row whose
    /// acknowledged delete left a tombstone of seq 0; insert replaces the row; update
    /// patches it; delete leaves a tombstone. Updates of rows we do not hold
    /// are returned as [`Missing`] so the caller can fetch the full row.
    pub fn plan(&self, events: &[ChangeEvent]) -> (Vec<Effect>, Vec<Missing>) {
        let mut scratch: HashMap<(&str, &str), BaseRow> = HashMap::new();
        let mut effects = Vec::new();
        let mut missing: Vec<Missing> = Vec::new();
        for ev in events {
            let k = (ev.entity.as_str(), ev.row_id.as_str());
            let current = scratch.get(&k).cloned().or_else(|| self.base(&ev.entity, &ev.row_id).cloned());
            if current.as_ref().is_some_and(|c| ev.seq <= c.seq) {
                continue;
            }
            // a row we inserted and deleted ourselves, known only from the
            // acknowledgements (seq 0): its insert event arriving later is
            // older than our delete, never a new row (ids are not reused)
            if ev.kind != Kind::Delete && current.as_ref().is_some_and(|c| c.data.is_none() && c.seq == 0) {
                continue;
            }
            let next = match (ev.kind, &ev.data) {
                (Kind::Insert, Some(data)) => {
                    let mut row = data.clone();
                    row.insert("id".into(), Value::String(ev.row_id.clone()));
                    BaseRow { seq: ev.seq, data: Some(RowText::new(&row)) }
                }
                (Kind::Update, Some(patch)) => match current.as_ref().and_then(|c| c.data.as_ref()) {
                    Some(row) => {
                        let mut row = row.parse();
                        for (f, v) in patch {
                            if f != "id" {
                                row.insert(f.clone(), v.clone());
                            }
                        }
                        BaseRow { seq: ev.seq, data: Some(RowText::new(&row)) }
                    }
                    None => {
                        if current.is_none() {
                            missing.retain(|m| (m.entity.as_str(), m.id.as_str()) != k);
                            missing.push(Missing { entity: ev.entity.clone(), id: ev.row_id.clone(), seq: ev.seq });
                        }
                        continue;
                    }
                },
                (Kind::Delete, _) => {
                    missing.retain(|m| (m.entity.as_str(), m.id.as_str()) != k);
                    BaseRow { seq: ev.seq, data: None }
                }
                // insert/update without data carry nothing to apply
                _ => continue,
            };
            scratch.insert(k, next);
        }
        for ((entity, id), row) in scratch {
            effects.push(match row.data {
                Some(data) => Effect::Put { entity: entity.into(), id: id.into(), seq: row.seq, data },
                None => Effect::Tombstone { entity: entity.into(), id: id.into(), seq: row.seq },
            });
        }
        // a later insert makes an earlier missing update moot
        missing.retain(|m| !effects.iter().any(|e| e.entity() == m.entity && e.id() == m.id));
        (effects, missing)
    }

    /// Applies persisted effects and refreshes the visible rows they touch.
    /// Returns the entities that changed.
    pub fn commit(&mut self, effects: &[Effect], queue: &Queue) -> Vec<String> {
        let mut touched: Vec<String> = Vec::new();
        for e in effects {
            self.put_base(e.entity(), e.id(), e.row());
            if !touched.iter().any(|x| x == e.entity()) {
                touched.push(e.entity().to_string());
            }
        }
        for e in effects {
            self.refresh(e.entity(), e.id(), queue);
        }
        touched
    }

    /// Recomputes the visible row of one key from its base row and the pending mutations.
    pub fn refresh(&mut self, entity: &str, id: &str, queue: &Queue) {
        let t = self.table_mut(entity);
        let changed = if !queue.has_pending_for(entity, id) {
            if t.overlay.remove(id).is_none() {
                return;
            }
            true
        } else {
            let base = t.base_row(id).map(RowText::parse);
            let visible = project(base.as_ref(), id, queue.pending_for(entity, id));
            let shown = (visible != base).then(|| visible.as_ref().map(RowText::new));
            let changed = t.overlay.get(id) != shown.as_ref();
            match shown {
                Some(v) => t.overlay.insert(id.to_string(), v),
                None => t.overlay.remove(id),
            };
            changed
        };
        t.touch_row(id);
        if changed && !self.overlay_changed.all {
            self.overlay_changed.keys.insert((entity.to_string(), id.to_string()));
        }
    }

    /// Every overlay entry is to be stored again (a transaction that would
    /// have stored some failed).
    pub fn overlay_all_changed(&mut self) {
        self.overlay_changed.all = true;
    }

    /// The overlay entries changed since the last call, as they are now,
    /// for the database to store in the transaction that made them.
    pub fn take_overlay_changes(&mut self) -> OverlayChanges {
        let mut changes = std::mem::take(&mut self.overlay_changed);
        if changes.all {
            for (entity, t) in &self.tables {
                changes.rows.extend(t.overlay.iter().map(|(id, v)| (entity.clone(), id.clone(), Some(v.clone()))));
            }
        } else {
            for (entity, id) in std::mem::take(&mut changes.keys) {
                let shown = self.tables.get(&entity).and_then(|t| t.overlay.get(&id)).cloned();
                changes.rows.push((entity, id, shown));
            }
        }
        changes
    }

    /// Tombstones exist to turn away events older than a delete. Once the
    /// cursor has passed a tombstone's seq no such event can come (pulls and
    /// streams drop events at or below the cursor), so it can go. Returns
    /// what went, for the database.
    pub fn prune_tombstones(&mut self, upto: u64) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        for (entity, t) in &mut self.tables {
            t.base.retain(|id, row| {
                let keep = row.data.is_some() || row.seq > upto;
                if !keep {
                    gone.push((entity.clone(), id.clone()));
                }
                keep
            });
        }
        gone
    }

    /// The table of `entity`, made when it is first written (the name is
    /// copied only then: this runs for every queued write).
    fn table_mut(&mut self, entity: &str) -> &mut Table {
        if !self.tables.contains_key(entity) {
            self.tables.insert(entity.to_string(), Table::default());
        }
        self.tables.get_mut(entity).expect("inserted above")
    }

    /// Sets one server row directly (an acknowledged insert, under its server id).
    pub fn put_base(&mut self, entity: &str, id: &str, row: BaseRow) {
        let t = self.table_mut(entity);
        t.base.insert(id.to_string(), row);
        t.touch_row(id);
    }

    /// What changed in `entity` since `version`; `None` when the journal
    /// does not reach back that far.
    pub fn changes_since(&self, entity: &str, version: u64) -> Option<Changes> {
        let Some(t) = self.tables.get(entity) else {
            return (version == 0).then(|| Changes { version: 0, rows: Vec::new() });
        };
        if version < t.journal_from || version > t.version {
            return None;
        }
        let ids: BTreeSet<&str> =
            t.journal.iter().rev().take_while(|(v, _)| *v > version).map(|(_, id)| id.as_str()).collect();
        let rows = ids
            .into_iter()
            .map(|id| {
                let visible = match t.overlay.get(id) {
                    Some(o) => o.clone(),
                    None => t.base_row(id).cloned(),
                };
                (id.to_string(), visible)
            })
            .collect();
        Some(Changes { version: t.version, rows })
    }

    /// Compares a snapshot's rows of `entity` with ours. Done under a read
    /// lock beforehand, so that the swap itself ([`Replica::replace_entities`])
    /// holds the write lock only briefly.
    pub fn prepare(&self, entity: &str, rows: BTreeMap<String, BaseRow>) -> Replacement {
        let empty = BTreeMap::new();
        let old = self.tables.get(entity).map_or(&empty, |t| &t.base);
        let data = |m: &BTreeMap<String, BaseRow>, id: &str| m.get(id).and_then(|b| b.data.clone());
        let mut changed: Vec<String> = Vec::new();
        for (id, b) in &rows {
            if data(old, id) != b.data {
                changed.push(id.clone());
            }
        }
        changed
            .extend(old.iter().filter(|(id, b)| b.data.is_some() && !rows.contains_key(*id)).map(|(id, _)| id.clone()));
        // most of the table: readers are better off reading it whole
        let changed = (changed.len() <= JOURNAL_CAP).then_some(changed);
        Replacement { rows, changed }
    }

    /// Replaces the rows of the snapshot's entities wholesale; their
    /// tombstones go. The rows that differ are journaled one by one. Returns
    /// the replaced rows, to be dropped once the lock is released.
    pub fn replace_entities(
        &mut self,
        snapshot: BTreeMap<String, Replacement>,
        queue: &Queue,
    ) -> Vec<BTreeMap<String, BaseRow>> {
        let mut replaced = Vec::new();
        for (entity, Replacement { rows, changed }) in snapshot {
            let t = self.tables.entry(entity).or_default();
            replaced.push(std::mem::replace(&mut t.base, rows));
            match changed {
                Some(ids) => ids.iter().for_each(|id| t.touch_row(id)),
                None => t.touch(),
            }
        }
        self.rebuild_overlay(queue);
        replaced
    }

    /// Recomputes every overlay from the queue (after load, reset, identity
    /// change or a snapshot), journaling the rows whose overlay changed.
    pub fn rebuild_overlay(&mut self, queue: &Queue) {
        for t in self.tables.values_mut() {
            for id in std::mem::take(&mut t.overlay).into_keys() {
                t.touch_row(&id);
            }
        }
        self.overlay_changed.all = true;
        let keys: Vec<(String, String)> = queue.all().map(|m| (m.entity.clone(), m.row_id.clone())).collect();
        for (e, id) in keys {
            self.refresh(&e, &id, queue);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Mutation, Status};
    use serde_json::json;

    fn ev(seq: u64, id: &str, kind: Kind, data: Option<Value>) -> ChangeEvent {
        ChangeEvent {
            seq,
            entity: "Todo".into(),
            row_id: id.into(),
            kind,
            data: data.map(|d| d.as_object().unwrap().clone()),
            timestamp: String::new(),
        }
    }

    fn apply(r: &mut Replica, q: &Queue, events: &[ChangeEvent]) -> Vec<Missing> {
        let (effects, missing) = r.plan(events);
        r.commit(&effects, q);
        missing
    }

    fn title(r: &Replica, id: &str) -> Option<Value> {
        r.get("Todo", id).map(|row| row.parse()["title"].clone())
    }

    #[test]
    fn tombstones_go_once_the_cursor_has_passed_them() {
        let (mut r, q) = (Replica::new(), Queue::default());
        apply(&mut r, &q, &[ev(1, "a", Kind::Insert, Some(json!({ "title": "x" }))), ev(2, "a", Kind::Delete, None)]);
        apply(&mut r, &q, &[ev(3, "b", Kind::Insert, Some(json!({ "title": "y" }))), ev(4, "b", Kind::Delete, None)]);
        assert_eq!(r.prune_tombstones(3), vec![("Todo".to_string(), "a".to_string())]);
        assert!(r.base("Todo", "a").is_none() && r.base("Todo", "b").is_some());
        // nothing visible changed
        assert!(r.list("Todo").is_empty());
    }

    #[test]
    fn insert_update_delete_in_one_batch() {
        let (mut r, q) = (Replica::new(), Queue::default());
        apply(
            &mut r,
            &q,
            &[
                ev(1, "a", Kind::Insert, Some(json!({ "title": "x", "done": false }))),
                ev(2, "a", Kind::Update, Some(json!({ "done": true }))),
                ev(3, "b", Kind::Insert, Some(json!({ "title": "y" }))),
                ev(4, "b", Kind::Delete, None),
            ],
        );
        assert_eq!(r.get("Todo", "a").unwrap().parse()["done"], true);
        assert_eq!(r.get("Todo", "a").unwrap().parse()["id"], "a");
        assert!(r.get("Todo", "b").is_none());
        assert_eq!(r.list("Todo").len(), 1);
    }

    #[test]
    fn a_tombstone_blocks_older_replays_but_not_newer_changes() {
        let (mut r, q) = (Replica::new(), Queue::default());
        apply(&mut r, &q, &[ev(5, "a", Kind::Insert, Some(json!({ "title": "x" }))), ev(6, "a", Kind::Delete, None)]);
        // replayed out of order: older insert and update must not resurrect it
        apply(
            &mut r,
            &q,
            &[
                ev(5, "a", Kind::Insert, Some(json!({ "title": "x" }))),
                ev(4, "a", Kind::Update, Some(json!({ "title": "z" }))),
            ],
        );
        assert!(r.get("Todo", "a").is_none());
        assert_eq!(r.base("Todo", "a").unwrap().seq, 6);
        apply(&mut r, &q, &[ev(9, "a", Kind::Insert, Some(json!({ "title": "again" })))]);
        assert_eq!(title(&r, "a"), Some(json!("again")));
    }

    #[test]
    fn a_row_we_inserted_and_deleted_is_not_brought_back_by_its_late_insert_event() {
        let (mut r, q) = (Replica::new(), Queue::default());
        // both acknowledged before any event: the row, then its tombstone, at seq 0
        r.put_base("Todo", "a", BaseRow { seq: 0, data: None });
        apply(&mut r, &q, &[ev(7, "a", Kind::Insert, Some(json!({ "title": "x" })))]);
        assert!(r.get("Todo", "a").is_none());
        apply(&mut r, &q, &[ev(8, "a", Kind::Delete, None)]);
        assert_eq!(r.base("Todo", "a").unwrap().seq, 8);
    }

    #[test]
    fn stale_and_duplicate_events_are_ignored() {
        let (mut r, q) = (Replica::new(), Queue::default());
        apply(
            &mut r,
            &q,
            &[
                ev(1, "a", Kind::Insert, Some(json!({ "title": "one" }))),
                ev(3, "a", Kind::Update, Some(json!({ "title": "three" }))),
            ],
        );
        apply(
            &mut r,
            &q,
            &[
                ev(2, "a", Kind::Update, Some(json!({ "title": "two" }))),
                ev(3, "a", Kind::Update, Some(json!({ "title": "three" }))),
            ],
        );
        assert_eq!(title(&r, "a"), Some(json!("three")));
    }

    #[test]
    fn an_update_of_an_unknown_row_asks_for_the_row_instead_of_inventing_it() {
        let (mut r, q) = (Replica::new(), Queue::default());
        let missing = apply(&mut r, &q, &[ev(7, "ghost", Kind::Update, Some(json!({ "title": "partial" })))]);
        assert_eq!(missing, vec![Missing { entity: "Todo".into(), id: "ghost".into(), seq: 7 }]);
        assert!(r.get("Todo", "ghost").is_none());
        // a delete after it in the same batch settles it
        let missing =
            apply(&mut r, &q, &[ev(8, "g2", Kind::Update, Some(json!({ "t": 1 }))), ev(9, "g2", Kind::Delete, None)]);
        assert!(missing.is_empty());
    }

    fn mutation(order: i64, id: &str, kind: Kind, data: Option<Value>) -> Mutation {
        crate::queue::sample(order, kind, id, data)
    }

    #[test]
    fn pending_writes_stay_on_top_of_server_changes_and_undo_cleanly() {
        let mut r = Replica::new();
        let mut q = Queue::default();
        apply(&mut r, &q, &[ev(1, "a", Kind::Insert, Some(json!({ "title": "server", "done": false })))]);
        q.push(mutation(1, "a", Kind::Update, Some(json!({ "done": true }))));
        r.refresh("Todo", "a", &q);
        assert_eq!(r.get("Todo", "a").unwrap().parse()["done"], true);
        // a server change to another field merges under the pending write
        apply(&mut r, &q, &[ev(2, "a", Kind::Update, Some(json!({ "title": "renamed" })))]);
        let row = r.get("Todo", "a").unwrap().parse();
        assert_eq!((row["title"].clone(), row["done"].clone()), (json!("renamed"), json!(true)));
        // the write fails: its effect goes, the server's state shows
        let mut failed = q.get("m1").unwrap().clone();
        failed.status = Status::Failed;
        q.replace(failed);
        r.refresh("Todo", "a", &q);
        assert_eq!(r.get("Todo", "a").unwrap().parse()["done"], false);
        // a pending delete hides the row
        q.push(mutation(2, "a", Kind::Delete, None));
        r.refresh("Todo", "a", &q);
        assert!(r.get("Todo", "a").is_none());
        assert!(r.list("Todo").is_empty());
    }

    #[test]
    fn temp_rows_list_after_server_rows_and_remap_moves_dependents() {
        let mut r = Replica::new();
        let mut q = Queue::default();
        apply(
            &mut r,
            &q,
            &[ev(1, "000000000000000018eb00000000000000000001", Kind::Insert, Some(json!({ "title": "old" })))],
        );
        q.push(mutation(1, "_pending_1_x", Kind::Insert, Some(json!({ "title": "new" }))));
        q.push(mutation(2, "_pending_1_x", Kind::Update, Some(json!({ "title": "newer" }))));
        q.push(mutation(3, "other", Kind::Update, Some(json!({ "parent": "_pending_1_x" }))));
        r.rebuild_overlay(&q);
        let ids: Vec<String> =
            r.list("Todo").iter().map(|row| row.parse()["id"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids, vec!["000000000000000018eb00000000000000000001", "_pending_1_x"]);
        assert_eq!(title(&r, "_pending_1_x"), Some(json!("newer")));
        q.remove("m1");
        let changed = q.remapped("Todo", "_pending_1_x", "server2", None);
        assert_eq!(changed.len(), 2);
        assert_eq!(q.get("m2").unwrap().row_id, "_pending_1_x", "remapped() only plans");
        for m in changed {
            q.replace(m);
        }
        assert_eq!(q.get("m2").unwrap().row_id, "server2");
        assert_eq!(q.get("m3").unwrap().data.as_ref().unwrap()["parent"], "server2");
    }

    #[test]
    fn list_json_lays_pending_writes_over_stored_rows_in_id_order() {
        let (mut r, mut q) = (Replica::new(), Queue::default());
        apply(
            &mut r,
            &q,
            &[ev(1, "b", Kind::Insert, Some(json!({ "t": 1 }))), ev(2, "d", Kind::Insert, Some(json!({ "t": 2 })))],
        );
        assert_eq!(r.list_json("Todo").as_str(), r#"[{"t":1,"id":"b"},{"t":2,"id":"d"}]"#);
        let v = r.entity_version("Todo");
        q.push(mutation(1, "a", Kind::Insert, Some(json!({ "t": 0 }))));
        q.push(mutation(2, "b", Kind::Delete, None));
        q.push(mutation(3, "d", Kind::Update, Some(json!({ "t": 3 }))));
        q.push(mutation(4, "e", Kind::Insert, Some(json!({ "t": 4 }))));
        r.rebuild_overlay(&q);
        assert!(r.entity_version("Todo") > v);
        assert_eq!(r.list_json("Todo").as_str(), r#"[{"t":0,"id":"a"},{"t":3,"id":"d"},{"t":4,"id":"e"}]"#);
        assert_eq!(r.count("Todo"), 3);
        assert_eq!(r.list_json("Nothing").as_str(), "[]");
    }

    #[test]
    fn a_loaded_list_is_handed_out_as_loaded_until_a_row_shows_differently() {
        let mut texts = Texts::default();
        texts.begin_list(None);
        let a = texts.push(r#"{"t":1,"id":"a"}"#);
        let b = texts.push(r#"{"t":2,"id":"b"}"#);
        texts.begin_list(None);
        let lists = texts.finish();
        let rows: BTreeMap<String, BaseRow> = [("a", a), ("b", b)]
            .into_iter()
            .map(|(id, at)| (id.to_string(), BaseRow { seq: 1, data: Some(lists.text(at)) }))
            .collect();
        assert_eq!(lists.list(1).unwrap().as_str(), "[]", "an entity with no rows");
        let mut r = Replica::new();
        let lists = BTreeMap::from([("Todo".to_string(), lists.list(0).unwrap())]);
        r.load(Loaded { rows: BTreeMap::from([("Todo".to_string(), rows)]), lists });
        let loaded = r.list_json("Todo");
        assert_eq!(loaded.as_str(), r#"[{"t":1,"id":"a"},{"t":2,"id":"b"}]"#);
        let version = r.entity_version("Todo");
        assert_eq!(r.loaded_version("Todo"), Some(version));
        assert_eq!(r.get("Todo", "b").unwrap().as_str(), r#"{"t":2,"id":"b"}"#, "a row is its slice of the list");
        // a pending write shows on a row: the list is built again
        let mut q = Queue::default();
        q.push(mutation(1, "a", Kind::Update, Some(json!({ "t": 9 }))));
        r.refresh("Todo", "a", &q);
        assert_eq!(r.list_json("Todo").as_str(), r#"[{"t":9,"id":"a"},{"t":2,"id":"b"}]"#);
        assert_eq!(r.loaded_version("Todo"), None, "no longer the rows loaded");
        r.refresh("Todo", "a", &Queue::default());
        assert_eq!(r.list_json("Todo").as_str(), loaded.as_str());
    }

    #[test]
    fn a_list_begun_in_parts_is_laid_out_in_lists_of_its_own_handed_out_as_they_close() {
        let mut texts = Texts::default();
        texts.begin_list(Some(24));
        assert!(texts.closed().is_empty(), "nothing closed yet");
        let at: Vec<TextAt> =
            [r#"{"id":"a"}"#, r#"{"id":"b"}"#, r#"{"id":"c"}"#].iter().map(|t| texts.push(t)).collect();
        let closed: Vec<String> = texts.closed().iter().map(|t| t.as_str().to_string()).collect();
        assert_eq!(closed, [r#"[{"id":"a"},{"id":"b"}]"#], "a part closes when the next row would not fit");
        texts.end_list();
        let closed: Vec<String> = texts.closed().iter().map(|t| t.as_str().to_string()).collect();
        assert_eq!(closed, [r#"[{"id":"c"}]"#], "the last part closes with the list");
        texts.begin_list(None);
        texts.push("{}");
        let lists = texts.finish();
        let shown: Vec<String> = at.iter().map(|a| lists.text(*a).as_str().to_string()).collect();
        assert_eq!(shown, [r#"{"id":"a"}"#, r#"{"id":"b"}"#, r#"{"id":"c"}"#], "each row a slice of its part");
        assert!(lists.list(0).is_none(), "in parts: built when asked for");
        assert_eq!(lists.list(1).unwrap().as_str(), "[{}]");
    }

    #[test]
    fn a_list_too_long_for_one_buffer_goes_on_in_another_and_is_not_whole() {
        let mut texts = Texts { max: 20, ..Texts::default() };
        texts.begin_list(None);
        let at: Vec<TextAt> =
            ["{\"id\":\"a\"}", "{\"id\":\"b\"}", "{\"id\":\"c\"}"].iter().map(|t| texts.push(t)).collect();
        texts.begin_list(None);
        texts.push("{}");
        let lists = texts.finish();
        let shown: Vec<String> = at.iter().map(|a| lists.text(*a).as_str().to_string()).collect();
        assert_eq!(shown, [r#"{"id":"a"}"#, r#"{"id":"b"}"#, r#"{"id":"c"}"#]);
        assert!(lists.list(0).is_none(), "split over buffers: built when asked for");
        assert_eq!(lists.list(1).unwrap().as_str(), "[{}]");
    }

    #[test]
    fn changes_since_names_the_rows_that_changed_until_the_journal_runs_out() {
        let (mut r, mut q) = (Replica::new(), Queue::default());
        apply(
            &mut r,
            &q,
            &[ev(1, "a", Kind::Insert, Some(json!({ "t": 1 }))), ev(2, "b", Kind::Insert, Some(json!({ "t": 2 })))],
        );
        let v = r.entity_version("Todo");
        assert_eq!(r.changes_since("Todo", v), Some(Changes { version: v, rows: vec![] }));
        apply(&mut r, &q, &[ev(3, "a", Kind::Update, Some(json!({ "t": 3 }))), ev(4, "b", Kind::Delete, None)]);
        q.push(mutation(1, "c", Kind::Insert, Some(json!({ "t": 5 }))));
        r.refresh("Todo", "c", &q);
        let Changes { version: now, rows } = r.changes_since("Todo", v).unwrap();
        assert_eq!(now, r.entity_version("Todo"));
        let text: Vec<(String, Option<String>)> =
            rows.into_iter().map(|(id, row)| (id, row.map(|t| t.as_str().to_string()))).collect();
        assert_eq!(
            text,
            vec![
                ("a".into(), Some(r#"{"t":3,"id":"a"}"#.into())),
                ("b".into(), None),
                ("c".into(), Some(r#"{"t":5,"id":"c"}"#.into()))
            ]
        );
        // a fresh snapshot is told row by row: here one row differs, one is gone
        let mut fresh: BTreeMap<String, BaseRow> = BTreeMap::new();
        fresh.insert("a".into(), r.base("Todo", "a").unwrap().clone());
        fresh.insert("d".into(), BaseRow { seq: 0, data: Some(RowText::stored(r#"{"t":6,"id":"d"}"#)) });
        let fresh = r.prepare("Todo", fresh);
        r.replace_entities(BTreeMap::from([("Todo".to_string(), fresh)]), &q);
        let Changes { version: now2, rows } = r.changes_since("Todo", now).unwrap();
        // (the pending insert's overlay was recomputed too: told again, unchanged)
        assert_eq!(
            rows.iter().map(|(id, row)| (id.as_str(), row.is_some())).collect::<Vec<_>>(),
            [("c", true), ("d", true)]
        );
        // a wholesale change (reload, reset) cannot be told row by row
        r.clear();
        assert_eq!(r.changes_since("Todo", now2), None);
        // nor can more changes than the journal keeps
        let v = r.entity_version("Todo");
        for i in 0..=JOURNAL_CAP {
            r.put_base("Todo", &format!("x{i}"), BaseRow { seq: 9, data: None });
        }
        assert_eq!(r.changes_since("Todo", v), None);
        assert!(r.changes_since("Todo", v + 2).is_some());
        assert_eq!(r.changes_since("Nothing", 0), Some(Changes { version: 0, rows: vec![] }));
    }
}
