'use strict'
// Two ways to render Pylon data on the server.
//   /      per request: getServerData with the visitor's own token (cookie
//          `pylon_token`), the rows in the HTML, and the same data embedded
//          for the client's engine to hydrate from (no first pull).
//   /live  from one long-lived engine the server keeps: no request to Pylon
//          per page view, and always fresh (it follows the server's changes).
//   PYLON_URL=http://127.0.0.1:4321 PORT=3000 node server.js
const path = require('node:path')
const express = require('express')
const { createSyncEngine, getServerData } = require('pylon-sync-native')

const PYLON_URL = process.env.PYLON_URL ?? 'http://127.0.0.1:4321'

// the server's own engine: rows every visitor may read, kept in a replica file
// (every page lists Todo: its rows are parsed while start() reads the replica)
const shared = createSyncEngine(PYLON_URL, { dbPath: path.join(__dirname, 'data', 'server.db'), preload: ['Todo'] })
shared.on('error', (e) => console.error(`sync error ${e.code}: ${e.message}`))
const ready = shared.start()

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

function page(heading, rows, hydration) {
  const items = rows.map((r) => `<li data-id="${escape(r.id)}">${escape(r.title)}${r.done ? ' ✓' : ''}</li>`).join('')
  // JSON inside <script> must not be able to close the tag
  const embedded = hydration ? `<script id="pylon-data" type="application/json">${JSON.stringify(hydration).replace(/</g, '\\u003c')}</script>` : ''
  return `<!doctype html><html><head><meta charset="utf-8"><title>${escape(heading)}</title></head>
<body><h1>${escape(heading)}</h1><ul id="todos">${items}</ul><p id="status">rendered on the server</p>
${embedded}<script src="/client.js" defer></script></body></html>`
}

function cookie(req, name) {
  const found = (req.headers.cookie ?? '').split(/;\s*/).find((c) => c.startsWith(`${name}=`))
  return found ? decodeURIComponent(found.slice(name.length + 1)) : undefined
}

const app = express()
app.use(express.static(path.join(__dirname, 'public')))

app.get('/', async (req, res, next) => {
  try {
    const data = await getServerData(PYLON_URL, ['Todo'], { token: cookie(req, 'pylon_token'), signal: AbortSignal.timeout(5000) })
    res.type('html').send(page('Todos', data.entities.Todo, data))
  } catch (e) {
    next(e)
  }
})

app.get('/live', async (req, res, next) => {
  try {
    await ready
    res.type('html').send(page('Todos, from the server’s engine', shared.store.list('Todo'), null))
  } catch (e) {
    next(e)
  }
})

const server = app.listen(Number(process.env.PORT ?? 3000), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`)
})

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => server.close(() => shared.close().then(() => process.exit(0))))
}
