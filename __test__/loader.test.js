'use strict'
// When no native binary fits, requiring the package fails with an error
// that names the platform, arch and libc detected, the package it looked
// for, the usual cause and the fix. Each case runs a copy of the package's
// JavaScript (no binary next to it) in a fresh process.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const { tempDir } = require('./helpers.js')

const root = path.join(__dirname, '..')
const pkg = require('../package.json')
const here = `${process.platform}-${process.arch}${process.platform === 'linux' ? '-gnu' : process.platform === 'win32' ? '-msvc' : ''}`

/** A copy of the package's JavaScript, with `edit` applied to its package.json; no binary anywhere near it. */
function copy(edit = (p) => p) {
  const dir = path.join(tempDir(), 'node_modules', pkg.name)
  fs.mkdirSync(path.join(dir, 'lib'), { recursive: true })
  for (const f of ['sync.js', 'sync.mjs', 'index.js']) fs.copyFileSync(path.join(root, f), path.join(dir, f))
  fs.cpSync(path.join(root, 'lib'), path.join(dir, 'lib'), { recursive: true })
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(edit(structuredClone(pkg))))
  return dir
}

/** Requires `dir` in a fresh process; returns the error it threw, as JSON. */
function load(dir) {
  const script = `try { require(${JSON.stringify(dir)}); console.log(JSON.stringify({ loaded: true })) }
    catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message, cause: !!e.cause })) }`
  const out = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, NAPI_RS_NATIVE_LIBRARY_PATH: '' } })
  assert.equal(out.status, 0, out.stderr)
  return JSON.parse(out.stdout.trim().split('\n').pop())
}

test('a missing platform package is named, with the usual cause and the fix', { timeout: 30000 }, () => {
  const e = load(copy())
  assert.equal(e.code, 'ERR_SYNC_NO_BINDING')
  assert.ok(e.cause, 'the loader error is kept as the cause')
  assert.match(e.message, new RegExp(`platform ${process.platform}, arch ${process.arch}`))
  if (process.platform === 'linux') assert.match(e.message, /libc gnu/)
  assert.ok(e.message.includes(`${pkg.name}-${here}@${pkg.version}`), e.message)
  assert.ok(e.message.includes('https://github.com/npm/cli/issues/4828'), e.message)
  assert.match(e.message, /delete node_modules and package-lock\.json, then run `npm install`/)
})

test('a platform with no prebuilt binary is told so, with the list of those there are', { timeout: 30000 }, () => {
  const e = load(copy((p) => ({ ...p, napi: { ...p.napi, targets: ['aarch64-apple-darwin', 'x86_64-pc-windows-msvc'] } })))
  assert.equal(e.code, 'ERR_SYNC_NO_BINDING')
  assert.ok(e.message.includes(`There is no prebuilt binary for ${here}. Prebuilt: darwin-arm64, win32-x64-msvc.`), e.message)
})

test('an installed platform package that fails to load says so, with its cause', { timeout: 30000 }, () => {
  const dir = copy()
  const platform = path.join(dir, '..', `${pkg.name}-${here}`)
  fs.mkdirSync(platform, { recursive: true })
  const binary = `${pkg.napi.binaryName}.${here}.node`
  fs.writeFileSync(path.join(platform, 'package.json'), JSON.stringify({ name: `${pkg.name}-${here}`, version: pkg.version, main: binary }))
  fs.writeFileSync(path.join(platform, binary), 'not a shared object')
  const e = load(dir)
  assert.equal(e.code, 'ERR_SYNC_NO_BINDING')
  assert.ok(e.message.includes(`${pkg.name}-${here} is installed but failed to load: `), e.message)
  assert.match(e.message, /invalid ELF header|file too short|not a valid|cannot open/i)
})
