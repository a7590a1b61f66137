'use strict'
// Errors as JavaScript sees them: every failure, native or JS-side, becomes
// a SyncError with a stable code, whether the call was sync or async.

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

module.exports = { SyncError, nativeError, guard, settle, invalid }
