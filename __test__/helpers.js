'use strict'
// Test helpers: a real dev server process on 127.0.0.1, temp directories, polling.
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const root = path.join(__dirname, '..')

function devserverBinary() {
  if (process.env.PYLON_DEVSERVER) return process.env.PYLON_DEVSERVER
  for (const profile of ['release', 'debug']) {
    const p = path.join(root, 'target', profile, 'pylon-devserver')
    if (fs.existsSync(p)) return p
  }
  throw new Error('pylon-devserver is not built: run `cargo build -p pylon-devserver`')
}

/** Starts a dev server on a free port; resolves { url, control, stop }. */
function startDevserver(args = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(devserverBinary(), ['--port', '0', ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.once('error', reject)
    child.stdout.on('data', (chunk) => {
      out += chunk
      const line = out.split('\n')[0]
      if (out.includes('\n')) {
        const { url } = JSON.parse(line)
        resolve({
          url,
          child,
          control: (what, body) => control(url, what, body),
          stop: () =>
            new Promise((done) => {
              if (child.exitCode !== null) return done()
              child.once('exit', () => done())
              child.kill('SIGKILL')
            }),
        })
      }
    })
  })
}

async function control(url, what, body) {
  const res = await fetch(`${url}/__control/${what}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  return res.json()
}

async function api(url, method, p, body, token) {
  const headers = { 'content-type': 'application/json' }
  if (token) headers.authorization = `Bearer ${token}`
  const res = await fetch(`${url}${p}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
  return { status: res.status, body: await res.json().catch(() => null) }
}

function tempDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'pylon-sync-test-'))
}

async function eventually(what, check, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

module.exports = { startDevserver, control, api, tempDir, eventually, root }
