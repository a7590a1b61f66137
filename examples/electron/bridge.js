// @ts-check
'use strict'
// The bridge between the main process, which owns the engine, and a
// window, over a message port. Plain messages, so it works over Electron's
// MessagePortMain and over Node's own MessagePort alike (the smoke test
// runs it in Node with the real engine behind it).
//
//   window → main   { id, op: 'list' | 'insert' | 'status' | 'subscribe' | 'unsubscribe', entity?, data? }
//   main → window   { id, ok: true, value } | { id, ok: false, error: { code, message } }
//                   { event: 'rows', entity, rows }   (after 'subscribe', and on every change)

/**
 * @typedef {{ send(message: unknown): void, onMessage(listener: (message: any) => void): void }} Port
 * @typedef {{ id: number, op: string, entity: string, data?: Record<string, unknown> }} Request
 * @typedef {import('pylon-sync-native').SyncEngine} SyncEngine
 */

/**
 * Answers a window's requests from `engine` over `port`, and pushes the rows of the entities it subscribed to.
 * @param {SyncEngine} engine
 * @param {Port} port
 */
function serve(engine, port) {
  /** @type {Map<string, () => void>} */
  const subscriptions = new Map()
  const push = (/** @type {string} */ entity) => port.send({ event: 'rows', entity, rows: engine.store.list(entity) })
  port.onMessage(async (/** @type {Request} */ { id, op, entity, data }) => {
    try {
      let value = null
      if (op === 'list') value = engine.store.list(entity)
      else if (op === 'insert') value = await engine.insert(entity, data ?? {})
      else if (op === 'status') value = engine.status
      else if (op === 'subscribe' && !subscriptions.has(entity)) {
        let last = engine.store.list(entity)
        subscriptions.set(
          entity,
          engine.store.subscribe(() => {
            const rows = engine.store.list(entity)
            if (rows !== last) push(entity) // the store keeps one frozen list per version
            last = rows
          }),
        )
        push(entity)
      } else if (op === 'unsubscribe') {
        subscriptions.get(entity)?.()
        subscriptions.delete(entity)
      } else if (op !== 'subscribe') throw Object.assign(new Error(`unknown op ${op}`), { code: 'ERR_BRIDGE_OP' })
      port.send({ id, ok: true, value })
    } catch (e) {
      const err = /** @type {{ code?: string, message?: string }} */ (e)
      port.send({ id, ok: false, error: { code: err.code ?? 'ERR_BRIDGE', message: String(err.message) } })
    }
  })
  return () => subscriptions.forEach((off) => off())
}

/** The window's side: `list`, `insert` and `status` as promises, `subscribe` with an unsubscribe function. */
function client(/** @type {Port} */ port) {
  let next = 0
  /** @type {Map<number, { resolve(v: any): void, reject(e: Error): void }>} */
  const waiting = new Map()
  /** @type {Map<string, Set<(rows: any[]) => void>>} */
  const listeners = new Map()
  port.onMessage((m) => {
    if (m.event === 'rows') return listeners.get(m.entity)?.forEach((l) => l(m.rows))
    const w = waiting.get(m.id)
    waiting.delete(m.id)
    if (m.ok) w?.resolve(m.value)
    else w?.reject(Object.assign(new Error(m.error.message), { code: m.error.code }))
  })
  const call = (/** @type {string} */ op, /** @type {object} */ args = {}) =>
    new Promise((resolve, reject) => {
      const id = ++next
      waiting.set(id, { resolve, reject })
      port.send({ id, op, ...args })
    })
  return {
    list: (/** @type {string} */ entity) => call('list', { entity }),
    insert: (/** @type {string} */ entity, /** @type {object} */ data) => call('insert', { entity, data }),
    status: () => call('status'),
    subscribe(/** @type {string} */ entity, /** @type {(rows: any[]) => void} */ listener) {
      let set = listeners.get(entity)
      if (!set) listeners.set(entity, (set = new Set()))
      set.add(listener)
      if (set.size === 1) call('subscribe', { entity })
      return () => {
        set.delete(listener)
        if (set.size === 0) call('unsubscribe', { entity })
      }
    },
  }
}

module.exports = { serve, client }
