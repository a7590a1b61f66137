'use strict'
// Freshness with many engines in one process (an SSR server keeping one
// replica per signed-in user), against the real `pylon`: N engines pinned
// to WebSocket, then three changes written by another user; when each
// reached every engine's store. The limit is the same run with N raw
// WebSocket clients instead (Bun's WebSocket):
//   node bench/fanout.js [N]          engines
//   npx bun bench/fanout.js [N] raw   raw clients
// The real server allows 64 WebSocket connections per IP.
const { startPylon, api } = require('../__test__/helpers.js')

const N = Number(process.argv[2] || 64)
const raw = process.argv[3] === 'raw'
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const at = (xs, p) => xs.slice().sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]

/** N followers; `has(i, title)` says whether follower i has the row. */
async function followers(srv, tokens) {
  if (raw) {
    const port = Number(new URL(srv.url).port) + 1
    const seen = tokens.map(() => new Set())
    const sockets = tokens.map((token, i) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`, ['bearer.' + encodeURIComponent(token)])
      ws.onmessage = (m) => {
        const ev = JSON.parse(String(m.data))
        if (ev.data && ev.data.title) seen[i].add(ev.data.title)
      }
      return new Promise((r) => (ws.onopen = () => r(ws)))
    })
    const open = await Promise.all(sockets)
    return { has: (i, title) => seen[i].has(title), close: async () => open.forEach((ws) => ws.close()) }
  }
  const { createSyncEngine } = require('../sync.js')
  const engines = tokens.map((token) => createSyncEngine(srv.url, { persist: false, token, transport: 'websocket' }))
  await Promise.all(engines.map((e) => e.start()))
  while (!engines.every((e) => e.connected)) await sleep(10)
  return {
    has: (i, title) => engines[i].store.list('Todo').some((r) => r.title === title),
    close: () => Promise.all(engines.map((e) => e.close())),
  }
}

async function main() {
  const srv = await startPylon()
  if (!srv) throw new Error('pylon is not installed (cargo install pylon-cli --version 0.3.23 --locked)')
  try {
    const login = async (u) => (await api(srv.url, 'POST', '/api/auth/session', { user_id: u })).body.token
    const tokens = []
    for (let i = 0; i < N; i++) tokens.push(await login(`u${i}`))
    const f = await followers(srv, tokens)
    const writer = await login('writer')
    const rows = []
    for (let k = 1; k <= 3; k++) {
      const title = `change ${k}`
      const t = performance.now()
      await api(srv.url, 'POST', '/api/entities/Todo', { title, done: false }, writer)
      const got = new Array(N).fill(0)
      while (got.some((x) => !x)) {
        for (let i = 0; i < N; i++) if (!got[i] && f.has(i, title)) got[i] = performance.now() - t
        await sleep(2)
      }
      rows.push(`change ${k}: p50 ${at(got, 0.5).toFixed(0)} ms, p90 ${at(got, 0.9).toFixed(0)} ms, max ${Math.max(...got).toFixed(0)} ms`)
    }
    await f.close()
    console.log(`${N} ${raw ? 'raw WebSocket clients' : 'engines'} — ${rows.join('; ')}`)
  } finally {
    await srv.stop()
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err)
    process.exit(1)
  },
)
