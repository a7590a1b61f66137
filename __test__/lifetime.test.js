'use strict'
// How long a script lives with an engine in it: a started engine holds the
// process as an open socket does, `unref()` lets go, a never-started or
// closed engine never holds it, and `close()` sends what is queued first.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn, spawnSync } = require('node:child_process')
const path = require('node:path')

const { startDevserver, api, tempDir } = require('./helpers.js')

const script = path.join(__dirname, 'fixtures', 'lifetime.js')

/** Runs the fixture; resolves once it printed `ready`, with a promise of its exit code. */
function run(mode, url, n = 0) {
  const dbPath = path.join(tempDir(), 'replica.db')
  const child = spawn(process.execPath, [script, mode, url, dbPath, String(n)], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)))
  const ready = new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
      if (out.includes('ready\n')) resolve()
    })
    exited.then((code) => reject(new Error(`${mode} exited (${code}) before it was ready`)))
  })
  return { child, ready, exited }
}

async function titles(url) {
  return (await api(url, 'POST', '/api/query/Todo', {})).body.map((r) => r.title)
}

test('a started engine keeps the process alive; unref, never started and closed engines do not', async () => {
  const srv = await startDevserver()
  try {
    const following = run('follow', srv.url)
    await following.ready
    const ended = await Promise.race([following.exited, new Promise((r) => setTimeout(() => r('running'), 1500))])
    assert.equal(ended, 'running', 'a following engine let its process end')
    following.child.kill('SIGTERM')
    await following.exited
    for (const mode of ['unref', 'never']) {
      const p = run(mode, srv.url)
      await p.ready
      assert.equal(await p.exited, 0, `${mode}: the process should end by itself`)
    }
  } finally {
    await srv.stop()
  }
})

test('close() sends the queued writes before it stops, and the process then ends', async () => {
  const srv = await startDevserver()
  try {
    const p = run('close', srv.url, 300)
    await p.ready
    assert.equal(await p.exited, 0)
    const sent = await titles(srv.url)
    assert.equal(sent.filter((t) => t.startsWith('close-')).length, 300, 'every write made before close() reaches the server')
  } finally {
    await srv.stop()
  }
})

test('an unref’d engine closed on beforeExit sends its writes and lets the process end', async () => {
  const srv = await startDevserver()
  try {
    const p = run('beforeExit', srv.url, 200)
    await p.ready
    assert.equal(await p.exited, 0)
    const sent = await titles(srv.url)
    assert.equal(sent.filter((t) => t.startsWith('beforeExit-')).length, 200)
    assert.equal(new Set(sent).size, sent.length, 'a write was sent twice')
  } finally {
    await srv.stop()
  }
})

test('an error with no listener is written to stderr, once', () => {
  const script = `
    const { createSyncEngine } = require(${JSON.stringify(path.join(__dirname, '..', 'sync.js'))})
    const e = createSyncEngine('http://127.0.0.1:1', { persist: false, reconnectDelay: 1, transport: 'poll' })
    e.on('status', (s) => { if (s.attempts >= 3) e.close() })
    e.start()
  `
  const r = spawnSync(process.execPath, ['-e', script], { timeout: 20000, encoding: 'utf8' })
  assert.equal(r.status, 0, r.stderr)
  const lines = r.stderr.split('\n').filter((l) => l.includes('pylon-sync:'))
  assert.equal(lines.length, 1, r.stderr)
  assert.match(lines[0], /sync failed with ERR_SYNC_NETWORK/)
})
