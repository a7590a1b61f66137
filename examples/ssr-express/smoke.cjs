'use strict'
// Starts the server against PYLON_URL and checks its pages in a real
// headless Chromium (`CHROMIUM`, default `chromium`):
//   - the rows are in the document, and were before any script ran (the
//     page's only script notes what it found): rendered on the server;
//   - the client script read the embedded data;
//   - /live shows a row added after the server started.
// Exits non-zero on any failure. `PYLON_URL=… npm run smoke`
const { spawn, execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const url = process.env.PYLON_URL
if (!url) throw new Error('PYLON_URL must name a running server')
const chromium = process.env.CHROMIUM ?? 'chromium'

function startServer() {
  const child = spawn(process.execPath, [path.join(__dirname, 'server.js')], { env: { ...process.env, PORT: '0' }, stdio: ['ignore', 'pipe', 'inherit'] })
  return new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
      const m = out.match(/listening on (\S+)/)
      if (m) resolve({ base: m[1], stop: () => child.kill('SIGTERM') })
    })
    child.once('exit', (code) => reject(new Error(`server.js exited (${code}): ${out}`)))
  })
}

/** The document as Chromium has it after loading `page`, in a profile of its own. */
function dumpDom(page) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ssr-smoke-'))
  const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', `--user-data-dir=${profile}`]
  try {
    return execFileSync(chromium, [...flags, '--dump-dom', page], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60000 })
  } finally {
    fs.rmSync(profile, { recursive: true, force: true })
  }
}

const addTodo = (title) =>
  fetch(`${url}/api/entities/Todo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title, done: false }) })

async function main() {
  const first = `rendered on the server ${Date.now()}`
  await addTodo(first)
  const server = await startServer()
  try {
    const html = await (await fetch(`${server.base}/`)).text()
    if (!html.includes(`>${first}</li>`)) throw new Error(`the row is not in the HTML the server sent:\n${html}`)

    // the page's only script notes how many rows the document held before it ran
    const rendered = await (await fetch(`${server.base}/`)).text()
    const count = (rendered.match(/<li /g) ?? []).length
    const dom = dumpDom(`${server.base}/`)
    if (!dom.includes(`>${first}</li>`)) throw new Error(`the row is not in the browser's document:\n${dom}`)
    if (!dom.includes(`data-rows-before-scripts="${count}"`)) throw new Error(`the rows were not there before the scripts ran:\n${dom}`)
    if (!/hydrated \d+ rows at cursor \d+/.test(dom)) throw new Error(`the client did not read the embedded data:\n${dom}`)

    const later = `added later ${Date.now()}`
    await addTodo(later)
    for (const deadline = Date.now() + 20000; ; ) {
      if (dumpDom(`${server.base}/live`).includes(`>${later}</li>`)) break
      if (Date.now() > deadline) throw new Error('/live never showed the row added after the server started')
      await new Promise((r) => setTimeout(r, 200))
    }
  } finally {
    server.stop()
  }
  console.log('ok ssr-express')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
