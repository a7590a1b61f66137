'use strict'
// `pylon-sync sql <db> "select …"`: one read-only statement on a replica
// file, over the entity views (one per entity, a column per field). The
// file is opened read-only and never changed, so it is safe on a replica
// an application has open: the query sees it as of its last commit.

const { queryReplica } = require('../../sync.js')
const { UsageError } = require('./common.js')

const usage = 'sql <db> <statement> [--param V]... [--json]'
const summary = 'a read-only SQL query over a replica file'
const help = `Runs one read-only SQL statement on a replica file. Each entity of the
app is a view with a column per field (booleans read as 0/1), showing the
rows as the application shows them, its pending writes included. A
statement that would write is refused. The file is never changed.

  pylon-sync sql replica.db "select title from Todo where done = 0 order by title"
  pylon-sync sql replica.db "select count(*) as n from Todo where userId = ?" --param alice

Options:
  --param V     a value for the next ? of the statement (text; repeat for more)
  --json        print the rows as a JSON array of objects

Exit codes: 0 ran; 1 SQLite refused the statement, or the file is not a
replica; 2 usage (a statement that writes included).`

const options = { param: { type: 'string', multiple: true }, json: { type: 'boolean' } }

function cell(v) {
  if (v === null) return 'NULL'
  return String(v).replace(/\n/g, '\\n')
}

async function run(positionals, values, io) {
  if (positionals.length !== 2) throw new UsageError('expects the replica file and one SQL statement')
  const [file, sql] = positionals
  const rows = await queryReplica(file, sql, values.param ?? [])
  if (values.json) {
    io.out.write(`${JSON.stringify(rows, null, 2)}\n`)
    return 0
  }
  const columns = rows.length > 0 ? Object.keys(rows[0]) : []
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)))
  const line = (cells) => `${cells.map((c, i) => c.padEnd(widths[i])).join('  ')}`.trimEnd()
  if (columns.length > 0) {
    io.out.write(`${line(columns)}\n${line(widths.map((w) => '-'.repeat(w)))}\n`)
    for (const r of rows) io.out.write(`${line(columns.map((c) => cell(r[c])))}\n`)
  }
  io.out.write(`(${rows.length} ${rows.length === 1 ? 'row' : 'rows'})\n`)
  return 0
}

module.exports = { usage, summary, help, options, run }
