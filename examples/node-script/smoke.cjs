'use strict'
// Runs the example as a user would, against the server at PYLON_URL:
//   1. with the server out of reach, mirror.cjs writes a Todo (to disk) and is stopped;
//   2. with the server, mirror.mjs starts: the write made offline reaches the
//      server, and a Todo added on the server is printed as it arrives.
// Exits non-zero on any failure. `PYLON_URL=… npm run smoke`
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const url = process.env.PYLON_URL
if (!url) throw new Error('PYLON_URL must name a running server')

/** The mirrors still running: killed if the smoke test fails. */
const running = new Set()

/** Runs `script` with `env`; `waitFor(pattern)` resolves on a line of its output that matches. */
function run(script, env) {
  const child = spawn(process.execPath, [path.join(__dirname, script)], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
  const lines = []
  const waiting = new Set()
  let buffer = ''
  child.stdout.on('data', (chunk) => {
    buffer += chunk
    const parts = buffer.split('\n')
    buffer = parts.pop()
    for (const line of parts) {
      process.stdout.write(`  ${script}: ${line}\n`)
      lines.push(line)
      for (const w of waiting) if (w.pattern.test(line)) w.resolve(line)
    }
  })
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)))
  running.add(child)
  exited.then(() => running.delete(child))
  return {
    waitFor(pattern, ms = 20000) {
      const seen = lines.find((l) => pattern.test(l))
      if (seen) return Promise.resolve(seen)
      return new Promise((resolve, reject) => {
        const w = { pattern, resolve }
        waiting.add(w)
        setTimeout(() => reject(new Error(`${script} printed nothing like ${pattern} in ${ms} ms`)), ms).unref()
        exited.then((code) => reject(new Error(`${script} exited (${code}) before printing ${pattern}`)))
      })
    },
    async stop() {
      child.kill('SIGINT')
      const code = await exited
      if (code !== 0) throw new Error(`${script} exited with ${code}`)
    },
  }
}

async function serverTitles() {
  const answer = await fetch(`${url}/api/entities/Todo`)
  return (await answer.json()).data.map((row) => row.title)
}

async function main() {
  fs.rmSync(path.join(__dirname, 'data'), { recursive: true, force: true })
  const title = `made offline ${Date.now()}`
  const offline = run('mirror.cjs', { PYLON_URL: 'http://127.0.0.1:9', TITLE: title })
  await offline.waitFor(new RegExp(`^wrote .* "${title}"`))
  await offline.stop()
  if ((await serverTitles()).includes(title)) throw new Error('the offline write reached a server it could not reach')

  const online = run('mirror.mjs', { PYLON_URL: url, TITLE: `made online ${Date.now()}` })
  await online.waitFor(/^mirrored \d+ Todo rows/)
  for (const deadline = Date.now() + 20000; !(await serverTitles()).includes(title); ) {
    if (Date.now() > deadline) throw new Error('the write made offline never reached the server')
    await new Promise((r) => setTimeout(r, 100))
  }
  const elsewhere = `made elsewhere ${Date.now()}`
  await fetch(`${url}/api/entities/Todo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title: elsewhere, done: false }) })
  await online.waitFor(new RegExp(`^\\+ Todo \\S+ .*${elsewhere}`))
  await online.stop()
  console.log('ok node-script')
}

main().catch((e) => {
  console.error(e)
  for (const child of running) child.kill('SIGKILL')
  process.exit(1)
})
