'use strict'
// Loads the native addon (through napi-rs' generated index.js). When no
// binary fits this machine, the error says which platform, arch and libc
// were detected, which package holds the binary for them, the usual cause,
// and how to fix it, instead of napi's generic "Cannot find native binding".

const { name, version, napi } = require('../package.json')
const { platformArchAbi } = require('./platforms.js')

/** `gnu` or `musl` on Linux (from Node's own report, as napi's loader does), else null. */
function libc() {
  if (process.platform !== 'linux') return null
  try {
    process.report.excludeNetwork = true
    return process.report.getReport().header.glibcVersionRuntime ? 'gnu' : 'musl'
  } catch {
    return 'unknown'
  }
}

/** This machine as the binary packages name it (`linux-x64-gnu`, `darwin-arm64`, `win32-x64-msvc`), given its libc. */
function detected(c) {
  const abi = process.platform === 'linux' ? c : process.platform === 'win32' ? 'msvc' : null
  return [process.platform, process.arch, abi].filter(Boolean).join('-')
}

/** The first line of each message in an error's cause chain. */
function messages(err) {
  const out = []
  for (let e = err; e && out.length < 20; e = e.cause) out.push(String(e.message ?? e).split('\n')[0])
  return out
}

/** The error thrown when the addon cannot load: what was detected, what was looked for, why, and the fix. */
function loadError(cause) {
  const c = libc()
  const here = detected(c)
  const supported = napi.targets.map(platformArchAbi)
  const pkg = `${name}-${here}`
  let installed = false
  try {
    require.resolve(`${pkg}/package.json`)
    installed = true
  } catch {}
  // why the installed package's binary did not load (not the other places the loader tried)
  const failure = messages(cause).find((m) => m.includes(pkg) && !m.startsWith('Cannot find module'))
  const lines = [
    `${name} could not load its native binary for platform ${process.platform}, arch ${process.arch}` +
      (c ? `, libc ${c}` : '') +
      ` (Node ${process.versions.node}).`,
  ]
  if (!supported.includes(here)) {
    lines.push(`There is no prebuilt binary for ${here}. Prebuilt: ${supported.join(', ')}.`)
  } else if (!installed) {
    lines.push(
      `It looked for the package ${pkg}@${version}, an optional dependency of ${name}, and it is not installed.`,
      'Usual causes: a lockfile written on another platform that dropped the optional dependency (npm bug https://github.com/npm/cli/issues/4828),',
      'an install with --omit=optional / --no-optional, or node_modules copied from another machine.',
      `Fix: delete node_modules and package-lock.json, then run \`npm install\` again (or \`npm install ${pkg}@${version}\`).`,
    )
  } else if (/GLIBC_[0-9.]+' not found/.test(failure)) {
    lines.push(`${pkg} is installed, but this system's C library is older than the one it needs: ${failure}`)
  } else {
    lines.push(`${pkg} is installed but failed to load: ${failure ?? 'see the cause'}`)
  }
  lines.push('The loader\'s attempts are in this error\'s `cause`.')
  const e = new Error(lines.join('\n'), { cause })
  e.code = 'ERR_SYNC_NO_BINDING'
  return e
}

let binding
try {
  binding = require('../index.js')
} catch (e) {
  throw loadError(e)
}

module.exports = binding
