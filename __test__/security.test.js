'use strict'
// Secrets and hostile input: tokens never reach the database file, errors or
// events; the files are private; garbage arguments give typed errors; a Rust
// panic becomes an exception instead of ending the process.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { spawn } = require('node:child_process')
const sync = require('../sync.js')
const native = require('../index.js')
const { startDevserver, api, eventually, tempDir } = require('./helpers.js')

const { createSyncEngine, SyncError } = sync

test('a token never reaches the database file, its WAL, errors or events', async () => {
  const srv = await startDevserver()
  const dir = tempDir()
  const dbPath = path.join(dir, 'replica.db')
  try {
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    const e = createSyncEngine(srv.url, { dbPath, token, pingInterval: 200, pingTimeout: 200 })
    const seen = []
    for (const type of ['status', 'error', 'session', 'resync', 'mutation', 'connection', 'presence', 'topic']) {
      e.on(type, (x) => seen.push(JSON.stringify(x, Object.getOwnPropertyNames(x ?? {}).concat(['message', 'stack']))))
    }
    await e.start()
    await e.insert('Todo', { title: 'fine', done: false })
    await api(srv.url, 'POST', '/api/entities/Tag', { label: 'taken' })
    await e.insert('Tag', { label: 'taken' }) // refused by the server: unique
    await e.insert('Note', { body: 'mine', userId: 'alice' })
    e.setPresence({ here: true })
    await eventually('the queue to settle', () => e.mutations.list().every((m) => m.status === 'failed'))
    // errors of every kind, with the token in play
    await srv.control('faults', { rules: [{ path: '', status: 401 }] })
    await e.sync().catch((err) => seen.push(err.message + err.stack))
    await srv.control('faults', {})
    for (const f of ['replica.db', 'replica.db-wal', 'replica.db-shm']) {
      const p = path.join(dir, f)
      if (!fs.existsSync(p)) continue
      assert.ok(!fs.readFileSync(p).includes(token), `the token is in ${f}`)
      // private files, WAL and shared memory included
      assert.equal(fs.statSync(p).mode & 0o777, 0o600, `${f} is not 0600`)
    }
    assert.ok(seen.length > 5)
    for (const s of seen) assert.ok(!s.includes(token), `the token leaked: ${s.slice(0, 200)}`)
    await e.close()
    assert.ok(!fs.readFileSync(dbPath).includes(token), 'the token is in the checkpointed database')
  } finally {
    await srv.stop()
  }
})

test('a Rust panic becomes an exception; the process lives on', () => {
  assert.throws(() => native.panicForTests(), /deliberate panic/)
  assert.equal(typeof native.panicForTests, 'function')
})

/** Values a careless or hostile caller might pass. */
const garbage = [
  undefined, null, NaN, Infinity, -1, 2 ** 64, '', 'x'.repeat(1 << 20), 'a/../b', '\u0000', true, {}, [],
  [1, 2], () => 1, 10n, new Date(0), Buffer.from('hi'), JSON.parse('{"__proto__": {"polluted": true}}'),
  { constructor: { prototype: { polluted: true } } }, { toString: () => { throw new Error('boom') } },
]

function isTyped(err) {
  return err instanceof SyncError && typeof err.code === 'string' && err.code.startsWith('ERR_SYNC_')
}

test('garbage arguments to every call give typed errors and queue nothing', async () => {
  const e = createSyncEngine('http://127.0.0.1:1', { persist: false })
  const calls = {
    insert: (a, b) => e.insert(a, b),
    update: (a, b, c) => e.update(a, b, c),
    delete: (a, b) => e.delete(a, b),
    list: (a) => e.store.list(a),
    get: (a, b) => e.store.get(a, b),
    remove: (a) => e.mutations.remove(a),
    retry: (a) => e.mutations.retry(a),
    hydrate: (a) => e.hydrate(a),
    infinite: (a, b) => e.createInfiniteQuery(a, b),
    presence: (a) => e.setPresence(a),
    publish: (a, b) => e.publishTopic(a, b),
    onTopic: (a, b) => e.onTopic(a, b),
    onBinary: (a) => e.onBinaryFrame(a),
    subscribeCrdt: (a, b) => e.subscribeCrdt(a, b),
    unsubscribeCrdt: (a, b) => e.unsubscribeCrdt(a, b),
    on: (a, b) => e.on(a, b),
    subscribe: (a) => e.store.subscribe(a),
    create: (a, b) => createSyncEngine(a, b),
    fetchList: (a, b) => sync.fetchList(a, b),
    insertDirect: (a, b, c) => sync.insert(a, b, c),
    callFn: (a, b, c) => sync.callFn(a, b, c),
  }
  let typed = 0
  for (const [name, call] of Object.entries(calls)) {
    for (let i = 0; i < garbage.length; i++) {
      const args = [garbage[i], garbage[(i * 7 + 3) % garbage.length], garbage[(i * 5 + 1) % garbage.length]]
      let outcome
      try {
        outcome = call(...args)
        if (outcome && typeof outcome.then === 'function') await outcome
      } catch (err) {
        if (!isTyped(err)) assert.fail(`${name}(${args.map((a) => typeof a).join(', ')}) threw an untyped ${err && err.name}: ${err && err.message}`)
        typed++
        continue
      }
      if (name === 'create' && outcome) await outcome.close()
    }
  }
  assert.ok(typed > 100, `only ${typed} typed errors`)
  assert.equal({}.polluted, undefined, 'Object.prototype was polluted')
  assert.deepEqual(e.mutations.list(), [])
  await e.close()
})

/** A private CA and a certificate it signed for 127.0.0.1 (openssl), as PEM. */
function privateCa(dir) {
  const { execFileSync } = require('node:child_process')
  const f = (name) => path.join(dir, name)
  const run = (...args) => execFileSync('openssl', args, { stdio: 'ignore' })
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '1', '-subj', '/CN=test CA')
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('key.pem'), '-out', f('leaf.csr'), '-subj', '/CN=127.0.0.1')
  fs.writeFileSync(f('ext'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n')
  run('x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-out', f('cert.pem'), '-days', '1', '-extfile', f('ext'))
  const read = (name) => fs.readFileSync(f(name), 'utf8')
  return { key: read('key.pem'), cert: read('cert.pem'), ca: read('ca.pem') }
}

/**
 * TLS, signed by a private CA, in front of a dev server's three ports
 * (HTTP, WebSocket, SSE). Resolves { url, ca, caFile, close }.
 */
async function tlsFront(srv) {
  const tls = require('node:tls')
  const net = require('node:net')
  const { freePortTriple } = require('./helpers.js')
  const dir = tempDir()
  const { key, cert, ca } = privateCa(dir)
  const base = await freePortTriple()
  const devPort = Number(new URL(srv.url).port)
  const terminators = [0, 1, 2].map((i) =>
    tls.createServer({ key, cert }, (s) => {
      const up = net.connect(devPort + i, '127.0.0.1')
      s.pipe(up).pipe(s)
      s.on('error', () => up.destroy())
      up.on('error', () => s.destroy())
    }).listen(base + i, '127.0.0.1'))
  return { url: `https://127.0.0.1:${base}`, ca, caFile: path.join(dir, 'ca.pem'), close: () => terminators.forEach((t) => t.close()) }
}

test('https and wss verify certificates: a server signed by a private CA is ERR_SYNC_TLS unless that CA is passed', async () => {
  const srv = await startDevserver()
  const front = await tlsFront(srv)
  const { url, ca } = front
  try {
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    const untrusting = createSyncEngine(url, { persist: false, token })
    await assert.rejects(untrusting.start(), (e) => e instanceof SyncError && e.code === 'ERR_SYNC_TLS')
    // no retry mends an untrusted certificate: a start that rejects leaves nothing running or holding the process
    assert.equal(untrusting.status.phase, 'stopped')
    assert.equal(untrusting.connection.state, 'offline')
    assert.equal(untrusting._handle, null)
    await untrusting.close()
    await assert.rejects(sync.fetchList(url, 'Todo'), { code: 'ERR_SYNC_TLS' })
    assert.throws(() => createSyncEngine(url, { ca: 'not a pem' }), { code: 'ERR_SYNC_INVALID_ARG' })
    assert.deepEqual(await sync.fetchList(url, 'Todo', { ca }), [])
    for (const transport of ['websocket', 'sse']) {
      const e = createSyncEngine(url, { persist: false, token, ca, transport, pollInterval: 3600000 })
      await e.start()
      await eventually(`a ${transport} over TLS`, () => e.connection.state === 'open' && e.connection.transport === transport)
      await api(srv.url, 'POST', '/api/entities/Todo', { title: `over ${transport}`, done: false })
      await eventually('the change', () => e.store.list('Todo').some((r) => r.title === `over ${transport}`))
      await e.close()
    }
    // the CLI: doctor names the TLS failure and its fix; --ca mends it, for doctor and mirror alike
    const cli = (...args) => spawnAsync(process.execPath, [path.join(__dirname, '..', 'bin', 'pylon-sync.js'), ...args], { PYLON_TOKEN: token })
    const untrusted = await cli('doctor', url)
    assert.equal(untrusted.code, 1)
    assert.match(untrusted.out, /^✗ tls +TLS certificate verification failed/m)
    assert.match(untrusted.out, /^ {4}fix: +pass the server's CA certificate as the `ca` option \(`--ca FILE`\)/m)
    const trusted = await cli('doctor', url, '--ca', front.caFile)
    assert.equal(trusted.code, 0, trusted.out)
    assert.match(trusted.out, /^✓ tls +the certificate chain is trusted/m)
    assert.match(trusted.out, /^✓ websocket +opens/m)
    const db = path.join(tempDir(), 'tls.db')
    const mirrored = await cli('mirror', url, '--db', db, '--ca', front.caFile, '--transport', 'sse', '--json')
    assert.equal(mirrored.code, 0, mirrored.err)
    assert.ok(JSON.parse(mirrored.out).rows.Todo >= 2)
  } finally {
    front.close()
    await srv.stop()
  }
})

/** Runs a command to its end without blocking the event loop (the servers of the test run in it). */
function spawnAsync(cmd, args, env) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env } })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    child.once('exit', (code) => resolve({ code, out, err }))
  })
}

/** Runs `script` (given `args`: `url`, `token`) in a fresh process with `env` added; resolves what it printed last, parsed. */
function inProcess(script, args, env) {
  const code = `const sync = require(${JSON.stringify(path.join(__dirname, '..', 'sync.js'))}); const { url, token } = ${JSON.stringify(args)};
    (async () => { ${script} })().then((v) => console.log(JSON.stringify(v ?? null)), (e) => console.log(JSON.stringify({ code: e.code, message: e.message })))`
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', code], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.on('error', reject)
    child.on('exit', () => {
      try {
        resolve(JSON.parse(out.trim().split('\n').pop()))
      } catch (e) {
        reject(new Error(`no answer from the child: ${out}`))
      }
    })
  })
}

/**
 * A script for `inProcess`: a direct call, then an engine over each of
 * `transports` until its stream is open. Returns `{ rows, seen }`.
 */
function everyWay(transports) {
  return `
    const rows = await sync.fetchList(url, 'Todo')
    const seen = []
    for (const transport of ${JSON.stringify(transports)}) {
      const e = sync.createSyncEngine(url, { persist: false, token, transport, pollInterval: 3600000 })
      await e.start()
      for (const deadline = Date.now() + 10000; !(e.connection.state === 'open' && e.connection.transport === transport); ) {
        if (Date.now() > deadline) throw new Error(transport + ' did not open: ' + JSON.stringify(e.connection))
        await new Promise((r) => setTimeout(r, 20))
      }
      seen.push(transport)
      await e.close()
    }
    return { rows: rows.length, seen }`
}

test('the system trust store (SSL_CERT_FILE here) and NODE_EXTRA_CA_CERTS are trusted, for HTTP, SSE and WebSocket', async () => {
  const srv = await startDevserver()
  const front = await tlsFront(srv)
  try {
    const script = everyWay(['websocket', 'sse'])
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    const args = { url: front.url, token }
    const trusted = { rows: 0, seen: ['websocket', 'sse'] }
    assert.deepEqual(await inProcess(script, args, { NODE_EXTRA_CA_CERTS: front.caFile }), trusted)
    assert.deepEqual(await inProcess(script, args, { SSL_CERT_FILE: front.caFile }), trusted)
    // neither: the private CA is not trusted
    assert.equal((await inProcess(script, args, {})).code, 'ERR_SYNC_TLS')
    // a NODE_EXTRA_CA_CERTS that cannot be read is ignored, as Node ignores it
    assert.equal((await inProcess(script, args, { NODE_EXTRA_CA_CERTS: path.join(tempDir(), 'none.pem') })).code, 'ERR_SYNC_TLS')
  } finally {
    front.close()
    await srv.stop()
  }
})

test('the default replica path is built from the parsed URL: credentials never reach the file name, nor an error', async () => {
  const srv = await startDevserver()
  try {
    const data = tempDir()
    const port = new URL(srv.url).port
    const script = `
      const e = sync.createSyncEngine(url.replace('http://', 'http://someone:hunter2@') + '/pylon/', { transport: 'poll', pollInterval: 3600000 })
      await e.start()
      await e.close()
      // nor errors: one from a server that is not there
      const down = sync.createSyncEngine('http://someone:hunter2@127.0.0.1:9/', { persist: false })
      const heard = new Promise((resolve) => down.on('error', resolve))
      down.start().catch(() => {})
      const leaked = (await heard).message.includes('hunter2')
      await down.close()
      const bad = [leaked]
      for (const u of ['not a url', 'ftp://127.0.0.1/', 'http://someone:hunter2@']) {
        try { sync.createSyncEngine(u, { persist: false }) } catch (err) { bad.push([err.code, err.message.includes('hunter2')]) }
      }
      for (const call of [() => sync.fetchList('http://someone:hunter2@', 'Todo'), () => sync.getServerData('ftp://someone:hunter2@x/', ['Todo'])]) {
        await call().catch((err) => bad.push([err.code, err.message.includes('hunter2')]))
      }
      return bad`
    const bad = await inProcess(script, { url: srv.url }, { XDG_DATA_HOME: data })
    assert.deepEqual(bad, [false, ...Array(5).fill(['ERR_SYNC_INVALID_ARG', false])])
    const files = fs.readdirSync(path.join(data, 'pylon-sync', 'default'))
    assert.ok(files.includes(`127.0.0.1_${port}_pylon.db`), files.join(', '))
    assert.ok(!files.some((f) => f.includes('hunter2') || f.includes('someone')), files.join(', '))
  } finally {
    await srv.stop()
  }
})

test('HTTP and SSE go through the proxy that HTTP_PROXY names; WebSockets connect directly', async () => {
  const http = require('node:http')
  const srv = await startDevserver()
  // a forward proxy that notes the port of every request it carries
  const carried = []
  const proxy = http.createServer((req, res) => {
    const target = new URL(req.url)
    carried.push(Number(target.port))
    const up = http.request(target, { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers)
      answer.pipe(res)
    })
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  await new Promise((r) => proxy.listen(0, '127.0.0.1', r))
  proxy.on('connection', (s) => s.unref())
  try {
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    const port = Number(new URL(srv.url).port)
    const script = everyWay(['sse', 'websocket'])
    const env = { HTTP_PROXY: `http://127.0.0.1:${proxy.address().port}`, NO_PROXY: '' }
    assert.deepEqual(await inProcess(script, { url: srv.url, token }, env), { rows: 0, seen: ['sse', 'websocket'] })
    assert.ok(carried.includes(port), 'HTTP requests went through the proxy')
    assert.ok(carried.includes(port + 2), 'the SSE stream went through the proxy')
    assert.ok(!carried.includes(port + 1), 'the WebSocket went through the proxy')
  } finally {
    proxy.close()
    await srv.stop()
  }
})
