'use strict'
// SQL over the replica from JavaScript: parameters checked and converted
// (`sqlParams`), and live queries (`LiveQuery`), which run their statement
// again after a change to an entity it reads, at most once per turn of the
// event loop, and call their listener only when the rows differ. Each
// LiveQuery owns its last result and its scheduling; the engine owns the
// set of live queries and tells them what changed.

const { SyncError, settle, invalid } = require('./errors.js')

/** One parameter as SQLite binds it: Dates as ISO-8601 text, booleans as 0/1 (in native). */
function sqlValue(v, where) {
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return v
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw invalid(`${where} must be a finite number, got ${v}`)
    return v
  }
  if (typeof v === 'bigint') {
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw invalid(`${where} is a bigint beyond 2^53; pass it as a string`)
    }
    return Number(v)
  }
  if (v instanceof Date) {
    if (Number.isNaN(v.getTime())) throw invalid(`${where} is an invalid Date`)
    return v.toISOString()
  }
  // arrays and plain objects bind as their JSON text, for json_each(?) and the like
  if (Array.isArray(v) || (typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype)) {
    return JSON.parse(JSON.stringify(v))
  }
  throw invalid(`${where} cannot be bound: ${v === undefined ? 'undefined' : Object.prototype.toString.call(v)}`)
}

/** `params` as native takes them: an array (by position), an object (by name) or null. */
function sqlParams(params) {
  if (params === undefined || params === null) return null
  if (Array.isArray(params)) return params.map((v, i) => sqlValue(v, `params[${i}]`))
  if (typeof params === 'object' && Object.getPrototypeOf(params) === Object.prototype) {
    const out = {}
    for (const [k, v] of Object.entries(params)) out[k] = sqlValue(v, `params.${k}`)
    return out
  }
  throw invalid('params must be an array (by position) or an object (by name)')
}

function checkSql(sql) {
  if (typeof sql !== 'string' || sql.trim() === '') throw invalid('sql must be a non-empty string')
}

class LiveQuery {
  constructor(native, sql, params, listener, onError) {
    this._native = native
    this._sql = sql
    this._params = params
    this._listener = listener
    this._onError = onError
    this._last = undefined // JSON text of the rows last handed to the listener
    this._entities = null // null: not known yet, or any change may matter
    this._running = false
    this._again = false
    this._queued = false
    this.closed = false
    // a statement that cannot be prepared fails its first run too: that run reports it
    settle(() => native.entitiesRead(sql))
      .then((entities) => (this._entities = entities))
      .catch(() => {})
    this._run()
  }

  /** A change to `entities` (undefined: to anything): runs again, once this turn. */
  changed(entities) {
    if (this.closed) return
    if (entities === null && this._entities !== null) return // only for statements that read the replica's own tables
    if (entities && this._entities && !this._entities.some((e) => entities.includes(e))) return
    if (this._queued) return
    this._queued = true
    setImmediate(() => {
      this._queued = false
      this._run()
    })
  }

  _run() {
    if (this.closed) return
    if (this._running) {
      this._again = true
      return
    }
    this._running = true
    settle(() => this._native.queryJson(this._sql, this._params))
      .then((text) => {
        if (this.closed || text === this._last) return
        this._last = text
        const rows = JSON.parse(text)
        try {
          this._listener(rows)
        } catch (e) {
          // the listener's own error is the listener's: thrown, not reported as the query's
          queueMicrotask(() => {
            throw e
          })
        }
      })
      .catch((e) => this._fail(e))
      .finally(() => {
        this._running = false
        if (this._again) {
          this._again = false
          this._run()
        }
      })
  }

  _fail(e) {
    if (this.closed || (e instanceof SyncError && e.code === 'ERR_SYNC_CLOSED')) return
    try {
      this._onError(e)
    } catch (thrown) {
      // the handler's own error is the handler's: thrown, as a listener's is
      queueMicrotask(() => {
        throw thrown
      })
    }
  }

  close() {
    this.closed = true
  }
}

module.exports = { sqlParams, checkSql, LiveQuery }
