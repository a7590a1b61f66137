'use strict'
// Freshness with many engines in one process (an SSR server keeping one
// replica per signed-in user), against the real `pylon`: N engines pinned
// to WebSocket, then three changes written by another user; when each
// reached every engine's store. The limit is the same run with N raw
// WebSocket clients instead (Bun's WebSocket):
//   node bench/fanout.js [N]          engines
//   npx bun bench/fanout.js [N] raw   raw clients, opened at once
//   npx bun bench/fanout.js [N] raw spread   raw clients, opened one after another
//   node bench/fanout.js [N] auto     engines choosing their transport
// The real server allows 64 WebSocket and 64 SSE connections per IP: past
// them, `auto` engines fall back (WebSocket, then SSE, then polling every
// second), and each transport's figures are given apart.
const { startPylon, api } = require('../__test__/helpers.js')

const N = Number(process.argv[2] || 64)
const raw = process.argv[3] === 'raw'
const auto = process.argv[3] === 'auto'
const spread = process.argv[4] === 'spread'
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const at = (xs, p) => xs.slice().sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]

/** N followers; `has(i, title)` says whether follower i has the row. */
async function followers(srv, tokens) {
  if (raw) {
    const port = Number(new URL(srv.url).port) + 1
    const seen = tokens.map(() => new Set())
    const open = []
    for (const [i, token] of tokens.entries()) {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`, ['bearer.' + encodeURIComponent(token)])
      ws.onmessage = (m) => {
        const ev = JSON.parse(String(m.data))
        if (ev.data && ev.data.title) seen[i].add(ev.data.title)
      }
      const opened = new Promise((r) => (ws.onopen = () => r(ws)))
      // `spread`: one after another, as engines starting together open theirs
      if (spread) await opened
      open.push(opened)
    }
    await Promise.all(open)
    return {
      transport: () => 'websocket',
      has: (i, title) => seen[i].has(title),
      close: async () => (await Promise.all(open)).forEach((ws) => ws.close()),
    }
  }
  const { createSyncEngine } = require('../sync.js')
  const transport = auto ? {} : { transport: 'websocket' }
  const engines = tokens.map((token) => createSyncEngine(srv.url, { persist: false, token, ...transport }))
  await Promise.all(engines.map((e) => e.start()))
  // pinned: every WebSocket open; auto: every engine open on some transport,
  // once the ladder settled (refused WebSockets and SSE streams step down)
  const open = (e) => (auto ? e.connection.state === 'open' : e.connected)
  if (auto) await sleep(5000)
  while (!engines.every(open)) await sleep(10)
  return {
    transport: (i) => engines[i].connection.transport,
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
      const by = new Map()
      got.forEach((ms, i) => by.set(f.transport(i), [...(by.get(f.transport(i)) || []), ms]))
      const spread = (xs) => `p50 ${at(xs, 0.5).toFixed(0)} ms, p90 ${at(xs, 0.9).toFixed(0)} ms, max ${Math.max(...xs).toFixed(0)} ms`
      const parts = [...by].map(([t, xs]) => (by.size > 1 ? `${t} ×${xs.length}: ` : '') + spread(xs))
      rows.push(`change ${k}: ${parts.join(' | ')}`)
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
