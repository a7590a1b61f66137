'use strict'
// The README's first command runs the demo: it must keep working as the
// engine changes (it runs here on the debug build).
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync } = require('node:child_process')
const path = require('node:path')

test('the demo runs from start to end', { timeout: 180000 }, () => {
  const out = spawnSync(process.execPath, [path.join(__dirname, '..', 'demo', 'demo.js')], { encoding: 'utf8', timeout: 170000 })
  assert.equal(out.status, 0, `${out.stdout}\n${out.stderr}`)
  for (const line of [/both engines bootstrapped 20000 rows/, /bob sees it as \w+ after \d+ ms/, /refused at once: ERR_SYNC_INVALID_ARG/, /reopened from disk with 20001 rows/, /bob sees done = true; writes still queued: 0/]) {
    assert.match(out.stdout, line)
  }
})
