'use strict'
// Test helpers: a real dev server process on 127.0.0.1, temp directories, polling.
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const root = path.join(__dirname, '..')

function devserverBinary() {
  if (process.env.PYLON_DEVSERVER) return process.env.PYLON_DEVSERVER
  // the most recently built one: a stale release build must not shadow a fresh debug build
  const built = ['release', 'debug']
    .map((profile) => path.join(root, 'target', profile, 'pylon-devserver'))
    .filter((p) => fs.existsSync(p))
    .sort((x, y) => fs.statSync(y).mtimeMs - fs.statSync(x).mtimeMs)
  if (built.length === 0) throw new Error('pylon-devserver is not built: run `cargo build -p pylon-devserver`')
  return built[0]
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
              if (child.exitCode !== null || child.signalCode !== null) return done()
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

// ------------------------------------------------------------- real server

const net = require('node:net')

function portFree(port) {
  return new Promise((resolve) => {
    const s = net.createServer()
    s.once('error', () => resolve(false))
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
  })
}

/** A port P with P, P+1 and P+2 free (the real server also listens on P+1 and P+2). */
async function freePortTriple() {
  for (;;) {
    const p = 20000 + Math.floor(Math.random() * 30000)
    if ((await portFree(p)) && (await portFree(p + 1)) && (await portFree(p + 2))) return p
  }
}

function which(bin) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const p = path.join(dir, bin)
    if (fs.existsSync(p)) return p
  }
  return null
}

/**
 * Starts the real `pylon` server (PROTOCOL §16) with the fixture app, a
 * database file and an admin token. `restart()` kills it and starts it again
 * on the same ports and file (its change log is renumbered, §4.3).
 * Resolves null when `pylon` is not installed.
 */
/**
 * The real `pylon` on free ports with a fresh database, or null when it is
 * not installed. `production`: started as in production (PROTOCOL §2.5:
 * `PYLON_DEV_MODE` neither `1` nor `true`, a CORS origin), so its request
 * limits apply and only the admin token mints sessions.
 */
async function startPylon({ production = false } = {}) {
  const bin = process.env.PYLON_BIN || which('pylon')
  if (!bin) {
    if (process.env.PYLON_REQUIRED) throw new Error('pylon is required (PYLON_REQUIRED is set) but not on PATH')
    return null
  }
  const dir = tempDir()
  fs.copyFileSync(path.join(__dirname, 'fixtures', 'pylon-app', 'app.ts'), path.join(dir, 'app.ts'))
  const port = await freePortTriple()
  const adminToken = 'admin-' + Math.random().toString(36).slice(2)
  const env = {
    ...process.env,
    PATH: `${path.join(root, 'node_modules', '.bin')}${path.delimiter}${process.env.PATH}`,
    PYLON_DEV_MODE: production ? '0' : '1',
    ...(production ? { PYLON_CORS_ORIGIN: 'http://localhost:3000' } : {}),
    PYLON_DB_PATH: path.join(dir, 'app.db'),
    PYLON_JOBS_IN_MEMORY: '1',
    PYLON_FILES_DIR: path.join(dir, 'uploads'),
    PYLON_ADMIN_TOKEN: adminToken,
    RUST_LOG: 'warn',
  }
  const url = `http://127.0.0.1:${port}`
  let child
  const launch = async () => {
    child = spawn(bin, ['start', 'app.ts', '--port', String(port)], { cwd: dir, env, stdio: 'ignore' })
    const me = child
    await eventually('pylon to answer /health', async () => {
      if (me.exitCode !== null) throw new Error(`pylon exited with ${me.exitCode}`)
      return fetch(`${url}/health`).then((r) => r.ok, () => false)
    }, 60000)
  }
  const stop = () =>
    new Promise((done) => {
      if (child.exitCode !== null || child.signalCode !== null) return done()
      child.once('exit', () => done())
      child.kill('SIGKILL')
    })
  await launch()
  return {
    url,
    adminToken,
    stop,
    restart: async () => {
      await stop()
      await launch()
    },
  }
}

module.exports.startPylon = startPylon
module.exports.freePortTriple = freePortTriple

/**
 * The servers a shared scenario runs against: the dev server always, the
 * real `pylon` when it is installed (required under PYLON_REQUIRED). Each
 * `start()` resolves `{ url, adminToken, stop, restart, login(user) }`, or null to skip.
 */
function servers() {
  const login = (url) => async (user) => (await api(url, 'POST', '/api/auth/session', { user_id: user })).body.token
  return [
    { name: 'dev server', start: async () => {
      const adminToken = 'admin-' + Math.random().toString(36).slice(2)
      const s = await startDevserver(['--admin-token', adminToken])
      return { ...s, adminToken, login: login(s.url), restart: () => s.control('restart', {}) }
    } },
    { name: 'real pylon', start: async () => {
      const s = await startPylon()
      return s && { ...s, login: login(s.url) }
    } },
  ]
}

module.exports.servers = servers

// --------------------------------------------------------- fault proxy

const http = require('node:http')

/**
 * An HTTP proxy on 127.0.0.1 in front of `target` (the server's HTTP port;
 * streams go to the server directly). `rules` is a live list, checked in
 * order, each used `count` times (default once), from the `nth` request it
 * matches on (default the first):
 *   { method, path, cutAfterMs }  forward, let the server apply it, hold the
 *                                 answer that long, then cut the connection;
 *   { method, path, delayMs }     forward after that long;
 *   { method, path, status }      answer that status without forwarding.
 * `path` matches the start of the request path.
 */
async function startFaultProxy(target) {
  const rules = []
  const log = [] // every request passed on, with the server's status
  const take = (req) => {
    let chosen = null
    for (const rule of rules) {
      if ((rule.method && rule.method !== req.method) || !req.url.startsWith(rule.path)) continue
      rule.seen = (rule.seen ?? 0) + 1
      if (!chosen && rule.seen >= (rule.nth ?? 1) && (rule.count ?? 1) > 0) chosen = rule
    }
    if (chosen) chosen.count = (chosen.count ?? 1) - 1
    return chosen
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
  const server = http.createServer(async (req, res) => {
    const rule = take(req)
    if (rule?.status) {
      res.writeHead(rule.status, { 'content-type': 'application/json' })
      return res.end(JSON.stringify({ error: { code: 'INJECTED', message: 'injected by the proxy' } }))
    }
    if (rule?.delayMs) await sleep(rule.delayMs)
    const body = []
    for await (const chunk of req) body.push(chunk)
    // a connection of its own per request: a kept-alive one the server has
    // meanwhile closed (say, after the engine waited out a rate limit) would
    // fail the request, a fault of the proxy and not the network's
    const upstream = http.request(`${target}${req.url}`, { method: req.method, headers: req.headers, agent: false }, async (up) => {
      log.push({ method: req.method, path: req.url.split('?')[0], status: up.statusCode, at: Date.now() })
      const answer = []
      for await (const chunk of up) answer.push(chunk)
      if (rule?.cutAfterMs !== undefined) {
        await sleep(rule.cutAfterMs)
        return req.socket.destroy() // applied on the server, answer lost
      }
      res.writeHead(up.statusCode, up.headers)
      res.end(Buffer.concat(answer))
    })
    upstream.on('error', () => req.socket.destroy())
    upstream.end(Buffer.concat(body))
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    rules,
    log,
    close: () => new Promise((r) => server.close(r)).then(() => server.closeAllConnections?.()),
  }
}

module.exports.startFaultProxy = startFaultProxy
