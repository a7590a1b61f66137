'use strict'
// The JavaScript API of the spec, on top of the native classes in index.js.
// Only JS-side concerns live here and in lib/: errors (lib/errors.js),
// token storage (lib/storage.js), the store's row cache and the mutation
// queue (lib/store.js), infinite queries (lib/infinite.js); this file is
// the engine's listener sets, unsubscribe functions and direct calls.

const native = require('./lib/native.js')
const { SyncError, guard, settle, invalid } = require('./lib/errors.js')
const { tokenStorageKey, defaultStorage, createWriteThroughStorage } = require('./lib/storage.js')
const { Store, Mutations, mutationQueueListener } = require('./lib/store.js')
const { InfiniteQuery } = require('./lib/infinite.js')
const { toJson, toFields, checkString } = require('./lib/values.js')
const { sqlParams, checkSql, LiveQuery } = require('./lib/query.js')

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

function closed() {
  return new SyncError({ code: 'ERR_SYNC_CLOSED', message: 'the sync engine is closed' })
}

function checkRow(entity, rowId) {
  if (typeof entity !== 'string') throw invalid('entity must be a string')
  if (typeof rowId !== 'string') throw invalid('rowId must be a string')
}

const OWN_OPTIONS = ['storage', 'logger', 'logLevel', 'preload']
const LOG_LEVELS = ['error', 'warn', 'info', 'debug', 'trace']

/**
 * What native calls when something waits to be taken (writes' outcomes,
 * rows read while the replica loads): it holds the function for good, so
 * the function reaches the engine through a WeakRef (made here, where no
 * other closure puts the engine in its scope) and a closed engine can be
 * collected; `_holding` keeps it while writes are unanswered.
 */
function taker(engine, method) {
  const ref = new WeakRef(engine)
  return () => ref.deref()?.[method]()
}

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
    const { logger, logLevel = 'info', preload = false } = options
    if (preload !== true && preload !== false && !(Array.isArray(preload) && preload.every((e) => typeof e === 'string'))) {
      throw invalid('preload must be a boolean or an array of entity names')
    }
    if (logger !== undefined && typeof logger !== 'function') throw invalid('logger must be a function (level, message, fields) => void')
    if (!LOG_LEVELS.includes(logLevel)) throw invalid(`logLevel must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`)
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
    this._onClose = new Set() // waits that end when the engine closes
    this._live = new Set() // live queries (watch)
    this._native.onEvent((ev) => this._dispatch(ev))
    // writes' promises: native answers each by its ticket, many at a time
    this._outcomes = new Map() // ticket -> resolve
    this._ticket = 0
    this._holding = null // keeps the process alive while a write is unanswered
    this._native.onOutcomes(taker(this, '_takeOutcomes'))
    if (logger) this._native.setLogger((level, message, fields) => logger(level, message, fields), logLevel)
    this._unwatch = typeof storage._watch === 'function' ? storage._watch((key) => key === this._tokenKey && this._readToken()) : null
    this._readToken()
    this.store = new Store(this)
    this.mutations = new Mutations(this)
    if (preload !== false) {
      this.store._preloading()
      this._native.preload(preload === true ? null : preload, taker(this, '_takeListParts'))
    }
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
      for (const live of this._live) live.changed(ev.entities)
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
    // a write's status moves without a change of rows: statements that read
    // the replica's own tables (the queue) run again
    if (ev.type === 'mutation') for (const live of this._live) live.changed(null)
    if (ev.type === 'topic') {
      const handlers = this._topics.get(ev.topic)
      if (handlers) callAll(handlers, [ev.data, { topic: ev.topic, from: ev.from }])
    }
    const set = this._listeners.get(ev.type)
    if (!set || set.size === 0) {
      if (ev.type === 'error') this._unheard(ev)
      return
    }
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

  // An error nobody listens for still reaches whoever debugs: logged at
  // warn (stderr by default, and the logger), each once (a retry loop
  // repeats the same one every round).
  _unheard(ev) {
    const { code, message } = ev.error
    const key = `${ev.context}\0${code}\0${message}`
    if (key === this._lastUnheard) return
    this._lastUnheard = key
    this._native.warn(`pylon-sync: ${ev.context} failed with ${code}: ${message} (engine.on('error', …) receives these)`)
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
    const off = this._on(type, listener)
    // only an engine that uses presence asks its peers to re-announce
    if (type === 'presence') this._native.usePresence()
    return off
  }

  /**
   * Loads the replica and queue from disk, resolves the session, catches up, then follows the server.
   * From here until `stop()` or `close()` the engine keeps the process alive, as an open socket
   * does (`unref()` opts out).
   */
  async start() {
    this._readToken()
    this._hold()
    try {
      return await settle(() => this._native.start())
    } catch (e) {
      // it follows nothing: it holds nothing
      if (this.status.phase === 'stopped' || this.status.phase === 'closed') this._release()
      throw e
    } finally {
      this.store._adoptPreloaded()
    }
  }

  stop() {
    this._release()
    return settle(() => this._native.stop())
  }

  /**
   * Sends what is queued (for at most `flushTimeout` ms, default 5000; `flush: false` skips it),
   * then stops and releases the replica. What is left stays on disk for the next start.
   * Closing a closed engine does nothing.
   */
  async close(options = {}) {
    if (options === null || typeof options !== 'object') throw invalid('options must be an object')
    const { flush = true, flushTimeout = 5000 } = options
    if (typeof flush !== 'boolean') throw invalid('flush must be a boolean')
    if (typeof flushTimeout !== 'number' || !(flushTimeout >= 0) || flushTimeout > 86_400_000) {
      throw invalid(`flushTimeout must be a number of milliseconds between 0 and 86400000, got ${flushTimeout}`)
    }
    if (this._closing) return this._closing
    if (this._unwatch) this._unwatch()
    this._closing = settle(() => this._native.close(flush ? flushTimeout : null)).finally(() => {
      this._release()
      this.store._endPreload()
      callAll(this._onClose, [])
      this._listeners.clear()
      this._topics.clear()
      this._binary.clear()
      for (const live of this._live) live.close()
      this._live.clear()
    })
    return this._closing
  }

  /** Lets the process exit while this engine runs (as `socket.unref()`). Returns the engine. */
  unref() {
    this._unrefed = true
    if (this._handle) this._handle.unref()
    return this
  }

  /** Keeps the process alive while this engine runs again (the default). Returns the engine. */
  ref() {
    this._unrefed = false
    if (this._handle) this._handle.ref()
    return this
  }

  // A running engine holds the event loop with one timer that never fires:
  // the native side's callbacks are weak and hold nothing on their own.
  _hold() {
    if (this._handle) return
    this._handle = setInterval(() => {}, 0x7fffffff)
    if (this._unrefed) this._handle.unref()
  }

  _release() {
    if (this._handle) clearInterval(this._handle)
    this._handle = null
  }

  /** Runs one sync round now (session, queued writes, pull). Rejects when it fails. */
  sync() {
    this._readToken()
    return settle(() => this._native.sync())
  }

  /**
   * Resolves once a round has reached the head of the server's log since the engine started
   * (`status.hasSynced`). Rejects with ERR_SYNC_CLOSED when the engine closes first, or with the
   * signal's reason when `signal` aborts.
   */
  waitForFirstSync(options = {}) {
    if (options === null || typeof options !== 'object') return Promise.reject(invalid('options must be an object'))
    const { signal } = options
    if (signal !== undefined && (signal === null || typeof signal !== 'object' || typeof signal.addEventListener !== 'function')) {
      return Promise.reject(invalid('signal must be an AbortSignal'))
    }
    if (signal?.aborted) return Promise.reject(signal.reason)
    const now = this.status
    if (now.hasSynced) return Promise.resolve()
    if (now.phase === 'closed') return Promise.reject(closed())
    return new Promise((resolve, reject) => {
      const done = (f, v) => {
        off()
        this._onClose.delete(onClose)
        signal?.removeEventListener('abort', onAbort)
        f(v)
      }
      const onAbort = () => done(reject, signal.reason)
      const onClose = () => done(reject, closed())
      const off = this._on('status', (s) => {
        if (s.hasSynced) done(resolve)
      })
      this._onClose.add(onClose)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  /**
   * Read-your-writes: resolves once every write queued before the call is acknowledged and the replica
   * has pulled past it (a round runs now). Rejects with the round's error, or the first of those writes
   * the server refused.
   */
  caughtUp() {
    this._readToken()
    return settle(() => this._native.caughtUp())
  }

  /**
   * What the engine has done and where it stands: requests, bytes, reconnects by transport, events
   * applied, resyncs, writes sent/acknowledged/failed, the queue's depth and its oldest write, time spent
   * waiting on the server, and the last errors. Every count only grows.
   */
  diagnostics() {
    return this._native.diagnostics()
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
    guard(() => this._native.setPresence(data === undefined ? null : toJson('data', data)))
  }

  /** Publishes on a topic over the open WebSocket. Returns false when none is open (nothing is queued). */
  publishTopic(topic, data) {
    if (typeof topic !== 'string' || topic === '') throw invalid('topic must be a non-empty string')
    return guard(() => this._native.publishTopic(topic, data === undefined ? null : toJson('data', data)))
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

  /**
   * Runs a write: `call(now)` puts it in line in native. `now` is true for
   * the first write of a turn of the event loop: native may then commit it
   * on this thread (one short transaction) and answer at once, and the
   * store's reads of this turn show it. Writes after it in the same turn, a
   * burst, commit together off this thread.
   */
  _write(entity, call) {
    this._readToken()
    return settle(() => {
      checkString('entity', entity)
      const now = !this._wroteThisTurn
      if (now) {
        this._wroteThisTurn = true
        queueMicrotask(() => {
          this._wroteThisTurn = false
        })
      }
      const ticket = (this._ticket = (this._ticket + 1) >>> 0)
      const outcome = call(now, ticket)
      if (outcome !== null) {
        this.store._changed([entity])
        return outcome
      }
      // as a promise of napi's own did, an unanswered write keeps the
      // process alive, and this engine with it (it holds the answers)
      if (this._holding === null) this._holding = setInterval(() => this, 2 ** 30)
      return new Promise((resolve) => this._outcomes.set(ticket, resolve))
    })
  }

  /** Parses the rows native read so far for `preload`. */
  _takeListParts() {
    this.store._takeParts()
  }

  /** Answers the writes native has outcomes for. */
  _takeOutcomes() {
    for (const [ticket, outcome] of this._native.takeOutcomes()) {
      const resolve = this._outcomes.get(ticket)
      this._outcomes.delete(ticket)
      if (resolve) resolve(outcome)
    }
    if (this._outcomes.size === 0 && this._holding !== null) {
      clearInterval(this._holding)
      this._holding = null
    }
  }

  /** Optimistic insert: resolves the temporary id once the write is durable on disk. */
  insert(entity, data) {
    return this._write(entity, (now, ticket) => this._native.insert(entity, toFields('data', data), now, ticket))
  }

  update(entity, id, patch) {
    return this._write(entity, (now, ticket) => {
      checkString('id', id)
      return this._native.update(entity, id, toFields('patch', patch), now, ticket)
    })
  }

  delete(entity, id) {
    return this._write(entity, (now, ticket) => {
      checkString('id', id)
      return this._native.delete(entity, id, now, ticket)
    })
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

  /**
   * Seeds rows and cursor from `getServerData`, before `start()`. When it returns, `store.list/get` show the
   * rows and store subscribers have been called; `start()` stores them with the cursor (and rejects if it
   * cannot). A hydration older than the replica, or of another identity, is refused. Returns a Promise for
   * callers that await it: resolved, or rejected with the SyncError.
   */
  hydrate(data) {
    let entities
    try {
      entities = guard(() => this._native.hydrate(data))
    } catch (e) {
      // `engine.hydrate(data); await engine.start()` does not await it: a
      // refusal must not end the process as an unhandled rejection (start()
      // then goes on from the replica as stored, which is safe)
      const refused = Promise.reject(e)
      refused.catch(() => {})
      return refused
    }
    this.store._changed(entities)
    const set = this._listeners.get('change')
    if (entities.length > 0 && set && set.size > 0) callAll(set, [undefined])
    return Promise.resolve()
  }

  /**
   * Runs one read-only SQL statement over the replica: each entity of the manifest is a view with a column
   * per field, showing what `store.list` shows (pending writes included). `params`: an array binds `?` by
   * position, an object binds `:name`, `@name` or `$name`. Resolves to the rows, as objects keyed by column.
   */
  query(sql, params) {
    return settle(() => {
      checkSql(sql)
      return this._native.queryJson(sql, sqlParams(params))
    }).then(JSON.parse)
  }

  /**
   * A live query: runs `sql` now and again whenever an entity it reads changes (at most once per turn of the
   * event loop), and calls `listener(rows)` with the first result and then whenever the rows differ. Errors go to
   * `options.onError`, else to 'error' listeners with context 'watch'. Returns an unsubscribe function.
   */
  watch(sql, params, listener, options = {}) {
    checkSql(sql)
    const bound = sqlParams(params)
    if (typeof listener !== 'function') throw invalid('listener must be a function (rows) => void')
    if (options === null || typeof options !== 'object') throw invalid('options must be an object')
    if (options.onError !== undefined && typeof options.onError !== 'function') throw invalid('onError must be a function')
    const onError =
      options.onError ??
      ((e) => {
        const set = this._listeners.get('error')
        if (set && set.size > 0) callAll(set, [Object.assign(e, { context: 'watch' })])
        else this._unheard({ context: 'watch', error: e })
      })
    const live = new LiveQuery(this._native, sql, bound, listener, onError)
    this._live.add(live)
    return () => {
      live.close()
      this._live.delete(live)
    }
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
// One request each, no engine. Arguments are checked here, where they can
// be named, and the rest in native.

/**
 * Runs a direct call with `options.signal` taken out: an aborted signal
 * rejects the call with its reason, as `fetch` does — at once when it is
 * already aborted (nothing is sent), else as soon as it aborts (a write
 * already sent may still be applied by the server).
 */
function abortable(options, call) {
  const signal = options !== null && typeof options === 'object' ? options.signal : undefined
  if (signal === undefined) return settle(() => call(options))
  const { signal: _, ...rest } = options
  if (signal === null || typeof signal !== 'object' || typeof signal.aborted !== 'boolean' || typeof signal.addEventListener !== 'function') {
    return Promise.reject(invalid('signal must be an AbortSignal'))
  }
  if (signal.aborted) return Promise.reject(signal.reason)
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    settle(() => call(rest))
      .then(resolve, reject)
      .finally(() => signal.removeEventListener('abort', onAbort))
  })
}

const direct = {
  fetchList: (baseUrl, entity, options) =>
    abortable(options, (o) => {
      checkString('entity', entity)
      return native.directFetchList(baseUrl, entity, o)
    }),
  fetchById: (baseUrl, entity, id, options) =>
    abortable(options, (o) => {
      checkString('entity', entity)
      checkString('id', id)
      return native.directFetchById(baseUrl, entity, id, o)
    }),
  insert: (baseUrl, entity, data, options) =>
    abortable(options, (o) => {
      checkString('entity', entity)
      return native.directInsert(baseUrl, entity, toFields('data', data), o)
    }),
  update: (baseUrl, entity, id, patch, options) =>
    abortable(options, (o) => {
      checkString('entity', entity)
      checkString('id', id)
      return native.directUpdate(baseUrl, entity, id, toFields('patch', patch), o)
    }),
  remove: (baseUrl, entity, id, options) =>
    abortable(options, (o) => {
      checkString('entity', entity)
      checkString('id', id)
      return native.directRemove(baseUrl, entity, id, o)
    }),
  callFn: (baseUrl, name, args, options) =>
    abortable(options, (o) => {
      checkString('name', name)
      return native.directCallFn(baseUrl, name, args === undefined ? null : toJson('args', args), o)
    }),
  getServerData: (baseUrl, entities, options) => abortable(options, (o) => native.getServerData(baseUrl, entities, o)),
  fetchManifest: (baseUrl, options) => abortable(options, (o) => native.directFetchManifest(baseUrl, o)),
}

// ------------------------------------------------------------ tools
// What the pylon-sync CLI is built on; usable from code as well.

/** What a replica file holds: cursor, identity fingerprint, rows per entity, pending and failed writes. Opens it read-only. */
function inspectReplica(dbPath) {
  return settle(() => {
    checkString('dbPath', dbPath)
    return native.inspectReplica(dbPath)
  })
}

/** Runs one read-only SQL statement on a replica file, as of its last commit, without an engine. */
function queryReplica(dbPath, sql, params) {
  return settle(() => {
    checkString('dbPath', dbPath)
    checkSql(sql)
    return native.queryReplica(dbPath, sql, sqlParams(params))
  }).then(JSON.parse)
}

/** Checks a server the way the engine uses it: health, TLS, session, manifest, log, WebSocket, SSE. */
function checkServer(baseUrl, options) {
  return settle(() => {
    checkString('baseUrl', baseUrl)
    return native.checkServer(baseUrl, options ?? null)
  })
}

module.exports = {
  createSyncEngine,
  SyncEngine,
  SyncError,
  defaultStorage,
  createWriteThroughStorage,
  mutationQueueListener,
  inspectReplica,
  queryReplica,
  checkServer,
  ...direct,
}
