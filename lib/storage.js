'use strict'
// Where the token is read from: the host's localStorage, an in-memory map,
// or a write-through map the application persists itself.

const { invalid } = require('./errors.js')

function tokenStorageKey(appName) {
  return !appName || appName === 'default' ? 'pylon_token' : `pylon:${appName}:token`
}

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

module.exports = { tokenStorageKey, defaultStorage, createWriteThroughStorage }
