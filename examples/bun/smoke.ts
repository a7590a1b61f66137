// Runs mirror.ts under Bun against the Pylon server at PYLON_URL: a write
// through the mirror reaches Pylon, and a change made on Pylon reaches the
// mirror's answers. Exits non-zero on any failure. `PYLON_URL=… bun run smoke.ts`
const pylon = process.env.PYLON_URL
if (!pylon) throw new Error('PYLON_URL must name a running server')

const child = Bun.spawn(['bun', 'run', `${import.meta.dir}/mirror.ts`], {
  env: { ...process.env, PORT: '0' },
  stdout: 'pipe',
  stderr: 'inherit',
})

async function until<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  for (const deadline = Date.now() + 20000; ; ) {
    const found = await probe()
    if (found !== undefined) return found
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await Bun.sleep(100)
  }
}

let printed = ''
const reader = child.stdout.getReader()
let reading: Promise<{ value?: Uint8Array }> | null = null
const mirror = await until('the mirror to serve', async () => {
  // a read that brings nothing within a second is waited for again, until the deadline
  reading ??= reader.read()
  const read = await Promise.race([reading, Bun.sleep(1000).then(() => null)])
  if (read) {
    reading = null
    printed += new TextDecoder().decode(read.value ?? new Uint8Array())
  }
  return printed.match(/serving the replica on (\S+)/)?.[1]
}).catch((e) => {
  child.kill('SIGKILL')
  throw e
})

/** The titles a URL lists: Pylon answers `{ data: rows }`, the mirror the rows themselves. */
async function listed(url: string): Promise<string[]> {
  const body = (await (await fetch(url)).json()) as { data: { title: string }[] } | { title: string }[]
  return (Array.isArray(body) ? body : body.data).map((r) => r.title)
}

try {
  const mine = `through the mirror ${Date.now()}`
  const answer = await fetch(`${mirror}/todos`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title: mine }) })
  if (answer.status !== 201) throw new Error(`POST /todos answered ${answer.status}`)
  await until('the write to reach Pylon', async () => ((await listed(`${pylon}/api/entities/Todo`)).includes(mine) ? true : undefined))

  const theirs = `made on Pylon ${Date.now()}`
  await fetch(`${pylon}/api/entities/Todo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title: theirs, done: false }) })
  await until('the change to reach the mirror', async () => ((await listed(`${mirror}/todos`)).includes(theirs) ? true : undefined))
} finally {
  child.kill('SIGINT')
}
if ((await child.exited) !== 0) throw new Error(`mirror.ts exited with ${child.exitCode}`)
console.log('ok bun')
