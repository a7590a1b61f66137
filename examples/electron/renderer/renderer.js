// @ts-check
// The window: shows the Todo rows the main process pushes, adds one on
// submit. It never talks to Pylon itself.

/** @type {{ list(e: string): Promise<any[]>, insert(e: string, d: object): Promise<string>, status(): Promise<{ phase: string }>, subscribe(e: string, l: (rows: any[]) => void): () => void }} */
const pylon = /** @type {any} */ (window).pylon

const list = /** @type {HTMLUListElement} */ (document.getElementById('todos'))
pylon.subscribe('Todo', (rows) => {
  list.replaceChildren(
    ...rows.map((row) => {
      const li = document.createElement('li')
      li.textContent = row.title + (row.done ? ' ✓' : '')
      return li
    }),
  )
})

const form = /** @type {HTMLFormElement} */ (document.getElementById('add'))
form.addEventListener('submit', async (event) => {
  event.preventDefault()
  const input = /** @type {HTMLInputElement} */ (form.elements.namedItem('title'))
  await pylon.insert('Todo', { title: input.value, done: false }) // on disk in the main process now
  input.value = ''
})

pylon.status().then((s) => {
  /** @type {HTMLElement} */ (document.getElementById('status')).textContent = `sync: ${s.phase}`
})
