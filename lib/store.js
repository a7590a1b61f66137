'use strict'
// The store and the mutation queue as JavaScript reads them: parsed rows
// cached per entity and patched with what changed since, and the queue's
// listeners. The rows themselves live in native memory.

const { invalid, settle } = require('./errors.js')

/**
 * Orders ids as native does (by code point, as their UTF-8 bytes sort).
 * `<` compares UTF-16 units, which puts characters above U+E000 after
 * supplementary ones; a surrogate here always stands for the larger code point.
 */
function compareIds(a, b) {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x !== y) {
      const sx = x >= 0xd800 && x <= 0xdfff
      const sy = y >= 0xd800 && y <= 0xdfff
      if (sx !== sy) return sx ? 1 : -1
      return x < y ? -1 : 1
    }
  }
  return a.length - b.length
}

/** The first index at or after `from` whose row id is not below `id`. */
function lowerBound(rows, id, from) {
  let lo = from
  let hi = rows.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (compareIds(rows[mid].id, id) < 0) lo = mid + 1
    else hi = mid
  }
  return lo
}

/**
 * `rows` with the changed rows put in place and the gone ones dropped. All
 * three come from native ordered by id, so each edit is found by binary
 * search and the rows between edits are copied as they are: a few changes
 * to a large list cost a copy of it, not a comparison per row.
 */
function patchRows(rows, changed, gone) {
  if (changed.length === 0 && gone.length === 0) return rows
  const out = []
  let from = 0
  let c = 0
  let g = 0
  while (c < changed.length || g < gone.length) {
    // the next edit in id order: a changed row, or a gone id
    const takeGone = c === changed.length || (g < gone.length && compareIds(gone[g], changed[c].id) < 0)
    const id = takeGone ? gone[g] : changed[c].id
    const at = lowerBound(rows, id, from)
    for (let i = from; i < at; i++) out.push(rows[i])
    if (takeGone) g++
    else out.push(changed[c++])
    from = at < rows.length && rows[at].id === id ? at + 1 : at
  }
  for (let i = from; i < rows.length; i++) out.push(rows[i])
  return out
}

class Store {
  constructor(engine) {
    this._engine = engine
    this._cache = new Map() // entity -> { version, rows, byId }
    // entities whose cache was found current in this turn of the event loop:
    // reads within one synchronous turn see one consistent snapshot, and ask
    // native for the version once instead of on every read
    this._current = new Set()
    // `preload`: entity -> the arrays parsed from the parts native handed
    // out while the replica loaded (null for an entity whose part failed)
    this._parts = null
  }

  _preloading() {
    this._parts = new Map()
  }

  /** Parses the parts native read so far, while the rest of the replica loads. */
  _takeParts() {
    const taken = this._engine._native.takeListParts()
    if (!this._parts) return
    for (const { entity, json } of taken) {
      let parts = this._parts.get(entity)
      if (parts === null) continue
      if (parts === undefined) this._parts.set(entity, (parts = []))
      try {
        parts.push(JSON.parse(json))
      } catch {
        this._parts.set(entity, null) // read from the whole list, as without preload
      }
    }
  }

  /**
   * Once the first load is over: each entity whose parts make its list at
   * a version native names is cached as that version's list, so the first
   * `list` reads only what changed since (usually nothing). Before, it does
   * nothing and the preload goes on.
   */
  _adoptPreloaded() {
    if (!this._parts) return
    const native = this._engine._native
    // the versions first: every part was handed out before they are known
    const preloaded = native.takePreloaded()
    if (preloaded === null) return
    this._takeParts()
    for (const { entity, version } of preloaded) {
      const parts = this._parts.get(entity)
      const held = this._cache.get(entity)
      if (!parts || (held && held.version >= version)) continue
      const rows = parts.length === 1 ? parts[0] : [].concat(...parts)
      this._cache.set(entity, { version, rows: Object.freeze(rows), byId: null })
    }
    this._endPreload()
  }

  _endPreload() {
    if (!this._parts) return
    this._parts = null
    this._engine._native.endPreload()
  }

  /** The cached rows of `entity` if they are still current, else null. */
  _fresh(entity) {
    if (typeof entity !== 'string') throw invalid('entity must be a string')
    const entry = this._cache.get(entity)
    if (!entry) return null
    if (this._current.has(entity)) return entry
    if (entry.version !== this._engine._native.version(entity)) return null
    this._mark(entity)
    return entry
  }

  /** `entities` changed by a call of this turn (hydrate): the next read sees them. */
  _changed(entities) {
    for (const e of entities) this._current.delete(e)
  }

  _mark(entity) {
    if (this._current.size === 0) queueMicrotask(() => this._current.clear())
    this._current.add(entity)
  }

  _entry(entity) {
    // a list read while the replica loads, or at the change that tells it
    // loaded, takes what `preload` parsed
    if (this._parts) this._adoptPreloaded()
    let entry = this._fresh(entity)
    if (!entry) {
      const native = this._engine._native
      const old = this._cache.get(entity)
      // only what changed since the list we hold crosses over and is parsed,
      // so following a fast-changing entity never re-reads all of it
      const delta = old ? native.changesJson(entity, old.version) : null
      if (delta !== null) {
        const { version, rows, gone } = JSON.parse(delta)
        entry = { version, rows: Object.freeze(patchRows(old.rows, rows, gone)), byId: null }
      } else {
        const version = native.version(entity)
        entry = { version, rows: Object.freeze(JSON.parse(native.listJson(entity))), byId: null }
      }
      this._cache.set(entity, entry)
      this._mark(entity)
    }
    return entry
  }

  /** Visible rows of `entity` (server rows merged with pending local writes), ordered by id. */
  list(entity) {
    return this._entry(entity).rows
  }

  /** One visible row, or null. */
  get(entity, id) {
    if (typeof id !== 'string') throw invalid('id must be a string')
    const entry = this._fresh(entity)
    if (!entry) {
      // one row from native; the whole list is only parsed when someone lists it
      const json = this._engine._native.getJson(entity, id)
      return json === null ? null : JSON.parse(json)
    }
    if (!entry.byId) entry.byId = new Map(entry.rows.map((r) => [r.id, r]))
    const row = entry.byId.get(id)
    if (row) return row
    // a temporary id the server has since named: native knows which row it became
    if (id.startsWith('_pending_')) {
      const json = this._engine._native.getJson(entity, id)
      return json === null ? null : JSON.parse(json)
    }
    return null
  }

  /**
   * Calls `listener()` after every change of the visible rows, and when
   * other engines' presence changes (as the spec's store notifier does).
   * Returns an unsubscribe function.
   */
  subscribe(listener) {
    const offChange = this._engine._on('change', listener)
    const offPresence = this._engine._on('presence', () => listener())
    return () => {
      offChange()
      offPresence()
    }
  }
}

class Mutations {
  constructor(engine) {
    this._engine = engine
  }

  /** Queued mutations (pending and failed), oldest first. */
  list() {
    return this._engine._native.mutations()
  }

  get(id) {
    return this.list().find((m) => m.id === id) ?? null
  }

  /** Drops a mutation and undoes its optimistic effect. Resolves whether it existed. */
  remove(id) {
    if (typeof id !== 'string') return Promise.reject(invalid('id must be a string'))
    return settle(() => this._engine._native.removeMutation(id))
  }

  /** Puts a failed mutation back in the queue. */
  retry(id) {
    if (typeof id !== 'string') return Promise.reject(invalid('id must be a string'))
    return settle(() => this._engine._native.retryMutation(id))
  }

  /**
   * Resolves when the write is acknowledged by the server; rejects with its SyncError when it is refused
   * or removed (or the engine closes first). `id` is a mutation id, or the row id an insert resolved
   * with (then the last write to that row queued now). A write no longer queued was acknowledged already.
   */
  settled(id) {
    if (typeof id !== 'string') return Promise.reject(invalid('id must be a string'))
    return settle(() => this._engine._native.settled(id))
  }

  /** `listener({ id, status, change, error })` on every transition. Returns an unsubscribe function. */
  subscribe(listener) {
    return this._engine._on('mutation', listener)
  }
}

/** The spec's helper: calls `listener({ status, change, error })` for every queue transition. */
function mutationQueueListener(mutations, listener) {
  if (!(mutations instanceof Mutations)) throw invalid('mutationQueueListener expects engine.mutations')
  if (typeof listener !== 'function') throw invalid('listener must be a function')
  return mutations.subscribe(listener)
}

module.exports = { Store, Mutations, mutationQueueListener }
