'use strict'
// What a row, a patch or a function's arguments may hold: JSON, as
// `JSON.stringify` makes it. `toJSON` is applied (a Date becomes its
// ISO-8601 string) and undefined fields are dropped; a number that is not
// finite, a bigint, a function or a symbol is refused with the path of the
// field, where JSON would silently write null or throw without a name.

const { invalid } = require('./errors.js')

function describe(v) {
  if (typeof v === 'number') return String(v)
  return typeof v
}

function json(value, path, seen) {
  if (value !== null && typeof value === 'object' && typeof value.toJSON === 'function') value = value.toJSON()
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value
    case 'number':
      if (!Number.isFinite(value)) throw invalid(`${path} must be a finite number, got ${describe(value)}`)
      return value
    case 'object': {
      if (value === null) return null
      if (seen.includes(value)) throw invalid(`${path} refers to itself`)
      seen.push(value)
      let out
      if (Array.isArray(value)) {
        out = value.map((v, i) => (v === undefined ? null : json(v, `${path}[${i}]`, seen)))
      } else {
        out = Object.create(null) // a `__proto__` key stays a key, for native to refuse
        for (const [k, v] of Object.entries(value)) {
          if (v === undefined) continue
          out[k] = json(v, `${path}.${k}`, seen)
        }
      }
      seen.pop()
      return out
    }
    default:
      throw invalid(`${path} must be JSON, got ${describe(value)}`)
  }
}

/** `value` as JSON would carry it; `what` names it in errors ("data", "patch"). */
function toJson(what, value) {
  return json(value, what, [])
}

/** `value` as an object of JSON fields (a row or a patch): null and non-objects are refused. */
function toFields(what, value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalid(`${what} must be an object, got ${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`)
  }
  return toJson(what, value)
}

/** An entity name, row id or topic: a string. */
function checkString(what, value) {
  if (typeof value !== 'string') throw invalid(`${what} must be a string, got ${value === null ? 'null' : typeof value}`)
}

module.exports = { toJson, toFields, checkString }
