// @ts-check
'use strict'
// What can be proven without Electron's binary (it cannot be downloaded
// where this runs): every file typechecks against Electron's own types, and
// the bridge, the one piece of logic here, works over a real MessagePort
// with the real engine behind it, against the Pylon server at PYLON_URL.
// Exits non-zero on any failure. `PYLON_URL=… npm run smoke`
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { MessageChannel } = require('node:worker_threads')
const { createSyncEngine } = require('pylon-sync-native')
const { serve, client } = require('./bridge.js')

const url = process.env.PYLON_URL ?? ''
if (!url) throw new Error('PYLON_URL must name a running server')

/** @param {import('node:worker_threads').MessagePort} port */
const adapt = (port) => ({
  send: (/** @type {unknown} */ m) => port.postMessage(m),
  onMessage: (/** @type {(m: any) => void} */ listener) => port.on('message', listener),
})

/** @template T @param {string} what @param {() => T | undefined} probe @returns {Promise<T>} */
async function until(what, probe) {
  for (const deadline = Date.now() + 20000; ; ) {
    const found = probe()
    if (found !== undefined) return found
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

async function main() {
  execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', __dirname], { stdio: 'inherit' })

  const engine = createSyncEngine(url, { dbPath: path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'electron-smoke-')), 'replica.db') })
  await engine.start()
  const { port1, port2 } = new MessageChannel()
  const stop = serve(engine, adapt(port1))
  const pylon = client(adapt(port2))
  try {
    /** @type {any[] | undefined} */
    let pushed
    const off = pylon.subscribe('Todo', (rows) => (pushed = rows))
    await until('the first rows', () => pushed)
    const before = /** @type {any[]} */ (await pylon.list('Todo')).length

    const title = `from the window ${Date.now()}`
    const id = await pylon.insert('Todo', { title, done: false })
    if (typeof id !== 'string') throw new Error(`insert answered ${id}`)
    await until('the insert to be pushed', () => pushed?.find((r) => r.title === title))

    const elsewhere = `made elsewhere ${Date.now()}`
    await fetch(`${url}/api/entities/Todo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title: elsewhere, done: false }) })
    await until('the remote change to be pushed', () => pushed?.find((r) => r.title === elsewhere))
    if (/** @type {any[]} */ (await pylon.list('Todo')).length !== before + 2) throw new Error('list() disagrees with what was pushed')

    const status = /** @type {{ phase: string }} */ (await pylon.status())
    if (typeof status.phase !== 'string') throw new Error('status() has no phase')
    const refused = await pylon.insert('NoSuchEntity', {}).then(() => null, (e) => e)
    if (refused?.code !== 'ERR_SYNC_INVALID_ARG') throw new Error(`a bad write came back as ${refused && refused.code}`)
    off()
  } finally {
    stop()
    port1.close()
    await engine.close()
  }
  console.log('ok electron')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
