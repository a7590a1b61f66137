'use strict'
// The pylon-sync CLI, run as a user runs it (a child process), against the
// dev server and the real `pylon`: mirror, inspect, doctor, types, help and
// exit codes. No token ever reaches its output.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')
const { spawn, spawnSync } = require('node:child_process')
const { startDevserver, api, tempDir, eventually, servers } = require('./helpers.js')

const BIN = path.join(__dirname, '..', 'bin', 'pylon-sync.js')

/** Runs the CLI to the end; `env` is added to the environment. */
function cli(args, env = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120000, env: { ...process.env, ...env } })
  return { code: r.status, out: r.stdout, err: r.stderr }
}

/** Every file of `dir` with a digest of its bytes. */
function snapshot(dir) {
  return Object.fromEntries(
    fs.readdirSync(dir).sort().map((f) => [f, crypto.createHash('sha256').update(fs.readFileSync(path.join(dir, f))).digest('hex')]),
  )
}

test('help, version and exit codes scripts can rely on', () => {
  const none = cli([])
  assert.equal(none.code, 2)
  assert.match(none.out, /Usage: pylon-sync <command>/)
  assert.equal(cli(['--help']).code, 0)
  assert.equal(cli(['--version']).out.trim(), require('../package.json').version)
  for (const c of ['mirror', 'inspect', 'sql', 'doctor', 'types']) {
    const h = cli([c, '--help'])
    assert.equal(h.code, 0)
    assert.match(h.out, new RegExp(`Usage: pylon-sync ${c} `))
    assert.match(h.out, /Exit codes:/)
  }
  const unknown = cli(['mirrror'])
  assert.equal(unknown.code, 2)
  assert.match(unknown.err, /unknown command "mirrror"; one of mirror, inspect, sql, doctor, types/)
  const badOption = cli(['inspect', 'x.db', '--jsn'])
  assert.equal(badOption.code, 2)
  assert.match(badOption.err, /Unknown option '--jsn'/)
  assert.equal(cli(['mirror', 'http://127.0.0.1:1']).code, 2, '--db is required')
  assert.equal(cli(['doctor']).code, 2, 'missing <url>')
  assert.equal(cli(['doctor', 'ftp://example.com']).code, 2, 'not an http(s) URL')
  const missing = cli(['inspect', path.join(tempDir(), 'none.db')])
  assert.equal(missing.code, 1)
  assert.match(missing.err, /no replica file at .*ERR_SYNC_NOT_FOUND/)
  const foreign = path.join(tempDir(), 'other.db')
  fs.writeFileSync(foreign, 'not a database at all, just text')
  assert.equal(cli(['inspect', foreign]).code, 1)
})

test('mirror, then inspect: the replica file holds the app, inspect never changes it, no token in the output', async () => {
  const srv = await startDevserver()
  try {
    await srv.control('seed', { entity: 'Todo', count: 1500, data: { title: 't{i}', done: false } })
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    await api(srv.url, 'POST', '/api/entities/Note', { body: 'mine', userId: 'alice' }, token)
    const dir = tempDir()
    const db = path.join(dir, 'app.db')
    const m = cli(['mirror', srv.url, '--db', db], { PYLON_TOKEN: token })
    assert.equal(m.code, 0, m.err)
    assert.match(m.out, /mirrored into .*app\.db at cursor 1,501: .*Note 1, .*Todo 1,500/)
    assert.match(m.err, /Todo +\[#+\] 1,500\/1,500 100%/)
    const json = cli(['mirror', srv.url, '--db', db, '--json', '--token', token])
    assert.equal(json.code, 0, json.err)
    assert.deepEqual(JSON.parse(json.out).rows, { Doc: 0, Note: 1, OrgMember: 0, Tag: 0, Todo: 1500 })

    const before = snapshot(dir)
    const text = cli(['inspect', db])
    assert.equal(text.code, 0, text.err)
    assert.match(text.out, /^cursor +1,501$/m)
    assert.match(text.out, /^identity +[0-9a-f]{24} \(fingerprint\)$/m)
    assert.match(text.out, /Todo: 1,500 rows/)
    assert.match(text.out, /^writes +0 pending, 0 failed, 0 of other identities$/m)
    const info = JSON.parse(cli(['inspect', db, '--json']).out)
    assert.equal(info.cursor, 1501)
    assert.deepEqual(info.entities.find((e) => e.name === 'Todo'), { name: 'Todo', rows: 1500, tombstones: 0, covered: true })
    assert.ok(info.serverBoot > Date.now() - 600000 && info.serverBoot <= Date.now())
    assert.deepEqual(snapshot(dir), before, 'inspect changed the directory')
    assert.ok(!info.identity.includes('alice'), 'the identity is shown as a fingerprint only')
    for (const r of [m, json, text]) assert.ok(!r.out.includes(token) && !r.err.includes(token), 'a token reached the output')
  } finally {
    await srv.stop()
  }
})

test('inspect shows pending and failed writes of a replica an engine left', async () => {
  const srv = await startDevserver()
  try {
    const { createSyncEngine } = require('../sync.js')
    const db = path.join(tempDir(), 'w.db')
    const e = createSyncEngine(srv.url, { dbPath: db })
    e.on('error', () => {})
    await e.start()
    await api(srv.url, 'POST', '/api/entities/Tag', { label: 'taken' })
    const tag = await e.insert('Tag', { label: 'taken' })
    await e.mutations.settled(tag).catch(() => {})
    await e.stop()
    await e.insert('Todo', { title: 'offline', done: false })
    await e.close({ flush: false })
    const info = JSON.parse(cli(['inspect', db, '--json']).out)
    assert.equal(info.pending, 1)
    assert.ok(info.oldestPendingAt > Date.now() - 60000)
    assert.equal(info.failed.length, 1)
    assert.equal(info.failed[0].entity, 'Tag')
    assert.equal(info.failed[0].code, 'INSERT_FAILED')
    const text = cli(['inspect', db]).out
    assert.match(text, /^writes +1 pending \(oldest \d+ s ago\), 1 failed/m)
    assert.match(text, /^failed +mut_\S+ insert Tag: INSERT_FAILED /m)
  } finally {
    await srv.stop()
  }
})

test('mirror --watch follows the server with a status line until Ctrl-C, then stops cleanly', async () => {
  const srv = await startDevserver()
  try {
    const token = (await api(srv.url, 'POST', '/api/auth/session', { user_id: 'alice' })).body.token
    const db = path.join(tempDir(), 'live.db')
    const child = spawn(process.execPath, [BIN, 'mirror', srv.url, '--db', db, '--watch'], { env: { ...process.env, PYLON_TOKEN: token } })
    let err = ''
    child.stderr.on('data', (d) => (err += d))
    const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)))
    try {
      await eventually('a live status line', () => /live over websocket · cursor 0/.test(err), 20000)
      await api(srv.url, 'POST', '/api/entities/Todo', { title: 'live', done: false })
      await eventually('the change in the status line', () => /cursor 1\b/.test(err), 20000)
      child.kill('SIGINT')
      assert.equal(await exited, 0, err)
    } finally {
      child.kill('SIGKILL')
    }
    assert.ok(!err.includes(token))
    const info = JSON.parse(cli(['inspect', db, '--json']).out)
    assert.equal(info.cursor, 1)
    assert.equal(info.entities.find((e) => e.name === 'Todo').rows, 1)
  } finally {
    await srv.stop()
  }
})

test('on a terminal, mirror redraws a progress bar per entity in place', async (t) => {
  // `script` (util-linux) runs the command on a pseudo-terminal
  if (spawnSync('script', ['--version']).status !== 0) return t.skip('no `script` to make a terminal')
  const srv = await startDevserver()
  try {
    await srv.control('seed', { entity: 'Todo', count: 4500, data: { title: 't{i}', done: false } })
    const db = path.join(tempDir(), 'tty.db')
    const command = [process.execPath, BIN, 'mirror', srv.url, '--db', db].map((a) => `'${a}'`).join(' ')
    const r = spawnSync('script', ['-qec', command, '/dev/null'], { encoding: 'utf8', timeout: 120000 })
    assert.equal(r.status, 0, r.stdout)
    // each page redraws the line: carriage return, clear to the end of the line
    const todo = r.stdout.split('\r\x1b[K').filter((l) => l.startsWith('Todo'))
    assert.ok(todo.length >= 3, JSON.stringify(r.stdout.slice(0, 500)))
    assert.match(todo.at(-1), /^Todo +\[#{24}\] 4,500\/4,500 100%/)
    assert.match(r.stdout, /mirrored into .* at cursor 4,500/)
  } finally {
    await srv.stop()
  }
})

test('mirror of a server that does not answer fails with exit code 1 and says why', () => {
  const db = path.join(tempDir(), 'none.db')
  const r = cli(['mirror', 'http://127.0.0.1:1', '--db', db])
  assert.equal(r.code, 1)
  assert.match(r.err, /not caught up: .*ERR_SYNC_NETWORK/)
})

for (const server of servers()) {
  test(`doctor against the ${server.name}: every check, a cause and a fix for each failure`, async (t) => {
    const srv = await server.start()
    if (!srv) return t.skip('pylon is not installed')
    try {
      const token = await srv.login('alice')
      const ok = cli(['doctor', srv.url], { PYLON_TOKEN: token })
      assert.equal(ok.code, 0, ok.out + ok.err)
      for (const name of ['health', 'session', 'manifest', 'log', 'websocket', 'sse']) {
        assert.match(ok.out, new RegExp(`^✓ ${name} `, 'm'))
      }
      assert.match(ok.out, /^- tls +skipped: plain http/m)
      assert.ok(!ok.out.includes(token) && !ok.err.includes(token))
      const checks = JSON.parse(cli(['doctor', srv.url, '--json']).out)
      assert.deepEqual(checks.map((c) => [c.name, c.outcome]), [
        ['health', 'ok'], ['tls', 'skipped'], ['session', 'ok'], ['manifest', 'ok'], ['log', 'ok'], ['websocket', 'skipped'], ['sse', 'ok'],
      ])
      const bad = cli(['doctor', srv.url, '--token', 'not-a-token'])
      assert.equal(bad.code, 1)
      assert.match(bad.out, /^✗ session +authentication failed: the server answers this token as anonymous/m)
      assert.match(bad.out, /^ {4}fix: +the token is unknown, expired or revoked/m)
      assert.ok(!bad.out.includes('not-a-token'))
      const port = Number(new URL(srv.url).port)
      const noWs = cli(['doctor', srv.url, '--ws-url', `ws://127.0.0.1:${port + 7}/`], { PYLON_TOKEN: token })
      assert.equal(noWs.code, 1)
      assert.match(noWs.out, /^✗ websocket /m)
      assert.match(noWs.out, /^ {4}cause: nothing answered there/m)
      assert.match(noWs.out, /^ {4}fix: +the server listens for WebSockets on its port \+ 1/m)
      // mirror against it too
      const db = path.join(tempDir(), 'm.db')
      await (await fetch(`${srv.url}/api/entities/Todo`, {
        method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({ title: 'from doctor', done: false }),
      })).text()
      const m = cli(['mirror', srv.url, '--db', db, '--json'], { PYLON_TOKEN: token })
      assert.equal(m.code, 0, m.err)
      assert.ok(JSON.parse(m.out).rows.Todo >= 1)
    } finally {
      await srv.stop()
    }
  })
}

test('doctor of a server that does not answer: exit code 1, the rest skipped', () => {
  const r = cli(['doctor', 'http://127.0.0.1:1'])
  assert.equal(r.code, 1)
  assert.match(r.out, /^✗ health +network error/m)
  assert.match(r.out, /^ {4}cause: nothing answered there/m)
  assert.match(r.out, /^- session +skipped: the server did not answer/m)
})

test('types writes the schema the typed engine compiles against', async () => {
  const srv = await startDevserver()
  try {
    const out = path.join(tempDir(), 'schema.ts')
    const r = cli(['types', srv.url, '--out', out])
    assert.equal(r.code, 0, r.err)
    assert.match(r.err, /wrote .*schema\.ts: 5 entities/)
    const committed = fs.readFileSync(path.join(__dirname, 'types', 'schema.ts'), 'utf8')
    const fresh = fs.readFileSync(out, 'utf8').replace(/from http:\/\/127\.0\.0\.1:\d+\/api\/manifest/, "from the dev server's /api/manifest")
    assert.equal(fresh, committed, '__test__/types/schema.ts is not what `pylon-sync types` writes')
    assert.equal(cli(['types', srv.url]).out, fs.readFileSync(out, 'utf8'))
    assert.equal(cli(['types', 'http://127.0.0.1:1']).code, 1)
  } finally {
    await srv.stop()
  }
})
