// Runs in the browser after the server-rendered list is already on screen.
// A client-side engine (the JavaScript `@pylonsync/sync`, or an Electron
// renderer talking to its main process) hydrates from the embedded data
// instead of pulling it again: `engine.hydrate(data); await engine.start()`.

// what the page held before any script ran (the smoke test reads it)
document.body.dataset.rowsBeforeScripts = String(document.querySelectorAll('#todos li').length)

const embedded = document.getElementById('pylon-data')
if (embedded) {
  const data = JSON.parse(embedded.textContent)
  const rows = Object.values(data.entities).reduce((n, list) => n + list.length, 0)
  document.getElementById('status').textContent = `hydrated ${rows} rows at cursor ${data.cursor.last_seq}`
}
