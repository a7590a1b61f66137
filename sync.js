'use strict'
// The JavaScript API of the spec, on top of the native classes in index.js.
// Only JS-side concerns live here: storage adapters, listener sets and
// unsubscribe functions, caching of parsed rows, and Error objects.

const native = require('./index.js')

/** An engine failure. `code` is stable (ERR_SYNC_*); `status`/`serverCode` come from HTTP answers. */
class SyncError extends Error {
  constructor(info) {
    super(info.message)
    this.name = 'SyncError'
    this.code = info.code
    if (info.status != null) this.status = info.status
    if (info.serverCode != null) this.serverCode = info.serverCode
  }
}

/** Calls every listener; one that throws does not stop the others. */
function callAll(listeners, args) {
  for (const l of [...listeners]) {
    try {
      l(...args)
    } catch (e) {
      queueMicrotask(() => {
        throw e
      })
    }
  }
}

/**
 * A native failure as a SyncError: engine errors keep their code; napi's own
 * argument conversions ("StringExpected", …) are invalid arguments; anything
 * else (a contained Rust panic) is internal.
 */
function nativeError(e) {
  if (e instanceof SyncError) return e
  const code = e && typeof e.code === 'string' ? e.code : ''
  if (code.startsWith('ERR_SYNC_')) return new SyncError({ code, message: e.message })
  if (/Expected$|^InvalidArg$/.test(code)) {
    return new SyncError({ code: 'ERR_SYNC_INVALID_ARG', message: `invalid argument: ${e.message}` })
  }
  return new SyncError({ code: 'ERR_SYNC_INTERNAL', message: `internal error: ${e && e.message}` })
}

/** Runs a synchronous native call; every failure is a SyncError. */
function guard(fn) {
  try {
    return fn()
  } catch (e) {
    throw nativeError(e)
  }
}

/** Runs an asynchronous native call (a thunk, so bad arguments reject instead of throwing). */
async function settle(work) {
  let outcome
  try {
    outcome = await work()
  } catch (e) {
    throw nativeError(e)
  }
  if (outcome.ok) return outcome.value
  throw new SyncError(outcome.error)
}

function invalid(message) {
  return new SyncError({ code: 'ERR_SYNC_INVALID_ARG', message: `invalid argument: ${message}` })
}

function checkRow(entity, rowId) {
  if (typeof entity !== 'string') throw invalid('entity must be a string')
  if (typeof rowId !== 'string') throw invalid('rowId must be a string')
}

function tokenStorageKey(appName) {
  return !appName || appName === 'default' ? 'pylon_token' : `pylon:${appName}:token`
}

// ---------------------------------------------------------------- storage

function memoryStorage(seed, onWrite) {
  const map = new Map(Object.entries(seed || {}))
  const watchers = new Set()
  const changed = (key, value) => {
    if (onWrite) Promise.resolve(onWrite(key, value)).catch(() => {})
    for (const w of watchers) w(key, value)
  }
  return {
    get: (key) => (map.has(key) ? map.get(key) : null),
    set: (key, value) => {
      map.set(key, String(value))
      changed(key, String(value))
    },
    remove: (key) => {
      map.delete(key)
      changed(key, null)
    },
    // lets an engine see token changes at once
    _watch: (fn) => {
      watchers.add(fn)
      return () => watchers.delete(fn)
    },
  }
}

/** `localStorage` when the host has one, else an in-memory map. */
function defaultStorage() {
  try {
    const ls = globalThis.localStorage
    if (ls && typeof ls.getItem === 'function') {
      return {
        get: (k) => ls.getItem(k),
        set: (k, v) => ls.setItem(k, v),
        remove: (k) => ls.removeItem(k),
      }
    }
  } catch {
    // a host that throws on access has no usable localStorage
  }
  return memoryStorage()
}

/** An in-memory storage seeded from `seed`, calling `onWrite(key, value | null)` on every change. */
function createWriteThroughStorage(seed, onWrite) {
  if (seed != null && typeof seed !== 'object') throw invalid('seed must be an object')
  if (typeof onWrite !== 'function') throw invalid('onWrite must be a function')
  return memoryStorage(seed, onWrite)
}

// ------------------------------------------------------------------ store

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

  _mark(entity) {
    if (this._current.size === 0) queueMicrotask(() => this._current.clear())
    this._current.add(entity)
  }

  _entry(entity) {
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

// ----------------------------------------------------------- infinite query

class InfiniteQuery {
  constructor(nativeQuery) {
    this._q = nativeQuery
    this._listeners = new Set()
    this._data = []
  }

  get data() {
    return this._data
  }

  get hasMore() {
    return this._q.hasMore()
  }

  get loading() {
    return this._q.loading()
  }

  async loadMore() {
    const loaded = await settle(() => this._q.loadMore())
    if (loaded) this._refresh()
  }

  reset() {
    this._q.reset()
    this._refresh()
  }

  subscribe(listener) {
    if (typeof listener !== 'function') throw invalid('listener must be a function')
    this._listeners.add(listener)
    return () => this._listeners.delete(listener)
  }

  _refresh() {
    this._data = Object.freeze(JSON.parse(this._q.dataJson()))
    for (const l of [...this._listeners]) l()
  }
}

// ----------------------------------------------------------------- engine

const OWN_OPTIONS = ['storage']

class SyncEngine {
  constructor(baseUrl, options = {}) {
    if (typeof baseUrl !== 'string') throw invalid('baseUrl must be a string')
    if (options === null || typeof options !== 'object' || Array.isArray(options)) {
      throw invalid('options must be an object')
    }
    const storage = options.storage ?? defaultStorage()
    for (const m of ['get', 'set', 'remove']) {
      if (typeof storage[m] !== 'function') throw invalid(`storage.${m} must be a function`)
    }
    // NaN and Infinity would cross into Rust as null; catch them here
    for (const k of ['pollInterval', 'reconnectDelay', 'pingInterval', 'pingTimeout', 'probeInterval']) {
      if (typeof options[k] === 'number' && !Number.isFinite(options[k])) {
        throw invalid(`${k} must be a finite number of milliseconds, got ${options[k]}`)
      }
    }
    const nativeOptions = {}
    for (const [k, v] of Object.entries(options)) if (!OWN_OPTIONS.includes(k) && v !== undefined) nativeOptions[k] = v
    this._native = guard(() => new native.NativeEngine(baseUrl, nativeOptions))
    this._storage = storage
    this._tokenKey = tokenStorageKey(options.appName)
    this._fixedToken = typeof options.token === 'string'
    this._token = undefined // last token handed to native
    this._listeners = new Map()
    this._topics = new Map() // topic -> Set of handlers
    this._binary = new Set()
    this._hydrating = Promise.resolve()
    this._native.onEvent((ev) => this._dispatch(ev))
    this._unwatch = typeof storage._watch === 'function' ? storage._watch((key) => key === this._tokenKey && this._readToken()) : null
    this._readToken()
    this.store = new Store(this)
    this.mutations = new Mutations(this)
  }

  _readToken() {
    if (this._fixedToken) return
    const raw = this._storage.get(this._tokenKey)
    const token = typeof raw === 'string' && raw !== '' ? raw : null
    if (token === this._token) return
    this._token = token
    this._native.setToken(token)
  }

  _on(type, listener) {
    if (typeof listener !== 'function') throw invalid('listener must be a function')
    let set = this._listeners.get(type)
    if (!set) this._listeners.set(type, (set = new Set()))
    set.add(listener)
    return () => set.delete(listener)
  }

  _dispatch(ev) {
    if (ev.type === 'change') {
      // a burst of changes reaches listeners once per turn of the event
      // loop, not once per applied batch
      if (!this._changeQueued) {
        this._changeQueued = true
        setImmediate(() => {
          this._changeQueued = false
          const set = this._listeners.get('change')
          if (set && set.size > 0) callAll(set, [undefined])
        })
      }
      return
    }
    if (ev.type === 'topic') {
      const handlers = this._topics.get(ev.topic)
      if (handlers) callAll(handlers, [ev.data, { topic: ev.topic, from: ev.from }])
    }
    const set = this._listeners.get(ev.type)
    if (!set || set.size === 0) return
    const arg =
      ev.type === 'change' ? undefined
      : ev.type === 'mutation' ? ev.mutation
      : ev.type === 'status' ? ev.status
      : ev.type === 'error' ? Object.assign(new SyncError(ev.error), { context: ev.context })
      : ev.type === 'session' ? ev.session
      : ev.type === 'connection' ? ev.connection
      : ev.type === 'presence' ? ev.peers
      : ev.type === 'topic' ? { topic: ev.topic, from: ev.from, data: ev.data }
      : ev.type === 'room' ? ev.event
      : ev
    callAll(set, [arg])
  }

  /**
   * Subscribe to engine events: 'status', 'error', 'session', 'resync', 'progress', 'change', 'mutation',
   * 'connection', 'presence', 'topic', 'room'. Returns an unsubscribe function.
   */
  on(type, listener) {
    const known = [
      'status', 'error', 'session', 'resync', 'progress', 'change', 'mutation',
      'connection', 'presence', 'topic', 'room',
    ]
    if (!known.includes(type)) throw invalid(`unknown event ${typeof type === 'string' ? JSON.stringify(type) : typeof type}; one of ${known.join(', ')}`)
    return this._on(type, listener)
  }

  /** Loads the replica and queue from disk, resolves the session, catches up, then follows the server. */
  async start() {
    this._readToken()
    await this._hydrating
    return settle(() => this._native.start())
  }

  stop() {
    return settle(() => this._native.stop())
  }

  async close() {
    if (this._unwatch) this._unwatch()
    await settle(() => this._native.close())
    this._listeners.clear()
    this._topics.clear()
    this._binary.clear()
  }

  /** Runs one sync round now (session, queued writes, pull). Rejects when it fails. */
  sync() {
    this._readToken()
    return settle(() => this._native.sync())
  }

  /** Current sync state: phase, transport, cursor, pending/failed counts, last error. */
  get status() {
    return this._native.status()
  }

  get cursor() {
    return this._native.cursor()
  }

  /** The realtime connection: `{ state, transport, attempts, lastError, since, ignored }`. */
  get connection() {
    return this._native.connection()
  }

  /** True while a WebSocket is open (as upstream's `connected`). */
  get connected() {
    const c = this.connection
    return c.state === 'open' && c.transport === 'websocket'
  }

  /** This engine's id in presence frames. */
  get clientId() {
    return this._native.clientId()
  }

  /** Other engines' presence: `[{ from, clientId, data }]`. */
  get presence() {
    return this._native.presence()
  }

  /** Sets this engine's presence (any JSON value; null withdraws it). Re-sent after every reconnect. */
  setPresence(data) {
    guard(() => this._native.setPresence(data === undefined ? null : data))
  }

  /** Publishes on a topic over the open WebSocket. Returns false when none is open (nothing is queued). */
  publishTopic(topic, data) {
    if (typeof topic !== 'string' || topic === '') throw invalid('topic must be a non-empty string')
    return guard(() => this._native.publishTopic(topic, data === undefined ? null : data))
  }

  /** `handler(data, { topic, from })` for each message on `topic` (this engine's own included). Returns an unsubscribe function. */
  onTopic(topic, handler) {
    if (typeof topic !== 'string' || topic === '') throw invalid('topic must be a non-empty string')
    if (typeof handler !== 'function') throw invalid('handler must be a function')
    let set = this._topics.get(topic)
    if (!set) this._topics.set(topic, (set = new Set()))
    set.add(handler)
    return () => {
      set.delete(handler)
      if (set.size === 0 && this._topics.get(topic) === set) this._topics.delete(topic)
    }
  }

  /**
   * `handler(bytes, frame)` for every binary (CRDT) frame: `bytes` is the raw frame,
   * `frame` is `{ type, entity, rowId, payload }` (null if the header does not decode).
   * Returns an unregister function.
   */
  onBinaryFrame(handler) {
    if (typeof handler !== 'function') throw invalid('handler must be a function')
    if (this._binary.size === 0 && !this._binarySink) {
      this._binarySink = true
      this._native.onBinary((bytes, header) => {
        let frame = null
        if (header !== null) {
          const h = JSON.parse(header)
          frame = { type: h.frameType, entity: h.entity, rowId: h.rowId, payload: bytes.subarray(h.payloadOffset) }
        }
        callAll(this._binary, [bytes, frame])
      })
    }
    this._binary.add(handler)
    return () => this._binary.delete(handler)
  }

  /** Refcounted: frames for the row keep coming until every subscriber unsubscribed. */
  subscribeCrdt(entity, rowId) {
    checkRow(entity, rowId)
    guard(() => this._native.subscribeCrdt(entity, rowId))
  }

  /** Extra calls are no-ops. */
  unsubscribeCrdt(entity, rowId) {
    checkRow(entity, rowId)
    guard(() => this._native.unsubscribeCrdt(entity, rowId))
  }

  /** Optimistic insert: resolves the temporary id once the write is durable on disk. */
  insert(entity, data) {
    this._readToken()
    return settle(() => this._native.insert(entity, data))
  }

  update(entity, id, patch) {
    this._readToken()
    return settle(() => this._native.update(entity, id, patch))
  }

  delete(entity, id) {
    this._readToken()
    return settle(() => this._native.delete(entity, id))
  }

  /** Re-reads the token and `/api/auth/me`; resets the replica when the user or tenant changed. */
  async notifySessionChanged() {
    this._readToken()
    return settle(() => this._native.notifySessionChanged())
  }

  /** `{ userId, tenantId, isAdmin, roles }`, or null before the session is known. */
  resolvedSession() {
    return this._native.session()
  }

  /** Drops every row (memory and disk) and sets the cursor to 0. Does not pull. */
  resetReplica() {
    return settle(() => this._native.resetReplica())
  }

  /** Seeds rows and cursor from `getServerData`. Call before `start()`; `start()` waits for it. */
  hydrate(data) {
    const p = settle(() => this._native.hydrate(data))
    this._hydrating = p.catch(() => {})
    return p
  }

  /** Server pages with keyset pagination: no row skipped or repeated across pages. */
  createInfiniteQuery(entity, options = {}) {
    if (options === null || typeof options !== 'object') throw invalid('options must be an object')
    const { pageSize, order } = options
    if (pageSize !== undefined && typeof pageSize !== 'number') throw invalid('pageSize must be a number')
    let field
    let descending
    if (order !== undefined) {
      const entries = order && typeof order === 'object' ? Object.entries(order) : []
      if (entries.length !== 1 || !['asc', 'desc'].includes(entries[0][1])) {
        throw invalid('order must look like { field: "asc" | "desc" }')
      }
      field = entries[0][0]
      descending = entries[0][1] === 'desc'
    }
    return new InfiniteQuery(guard(() => this._native.createInfiniteQuery(entity, pageSize, field, descending)))
  }
}

function createSyncEngine(baseUrl, options) {
  return new SyncEngine(baseUrl, options)
}

// ------------------------------------------------------------ direct calls

const direct = (fn) => (...args) => settle(() => fn(...args))

module.exports = {
  createSyncEngine,
  SyncEngine,
  SyncError,
  defaultStorage,
  createWriteThroughStorage,
  mutationQueueListener,
  getServerData: (baseUrl, entities, options) => settle(() => native.getServerData(baseUrl, entities, options)),
  fetchList: direct(native.directFetchList),
  fetchById: direct(native.directFetchById),
  insert: direct(native.directInsert),
  update: direct(native.directUpdate),
  remove: direct(native.directRemove),
  callFn: direct(native.directCallFn),
}
