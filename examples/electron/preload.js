// @ts-check
'use strict'
// Gives the window `window.pylon` ({ list, insert, status, subscribe }),
// served by the main process over the MessagePort it sends once the page
// has loaded. Calls made before it arrives wait for it.
const { contextBridge, ipcRenderer } = require('electron')
const { client } = require('./bridge.js')

/** @type {(message: unknown) => void} */
let send
const pending = /** @type {unknown[]} */ ([])
/** @type {(message: any) => void} */
let deliver = () => {}
const api = client({
  send: (message) => (send ? send(message) : pending.push(message)),
  onMessage: (listener) => (deliver = listener),
})

ipcRenderer.once('pylon-port', (event) => {
  const [port] = event.ports
  port.onmessage = (e) => deliver(e.data)
  send = (message) => port.postMessage(message)
  pending.splice(0).forEach(send)
})

contextBridge.exposeInMainWorld('pylon', api)
