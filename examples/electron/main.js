// @ts-check
'use strict'
// The main process owns the engine: one replica, in the app's userData
// folder, that outlives windows and works offline. Each window gets a
// MessagePort to it (see bridge.js and preload.js).
//   PYLON_URL=http://127.0.0.1:4321 npm start
const path = require('node:path')
const { app, BrowserWindow, MessageChannelMain } = require('electron')
const { createSyncEngine } = require('pylon-sync-native')
const { serve } = require('./bridge.js')

/** @type {import('pylon-sync-native').SyncEngine} */
let engine

app.whenReady().then(async () => {
  engine = createSyncEngine(process.env.PYLON_URL ?? 'http://127.0.0.1:4321', {
    dbPath: path.join(app.getPath('userData'), 'replica.db'),
    token: process.env.PYLON_TOKEN,
    // the window lists Todo first: its rows are parsed while start() reads the replica
    preload: ['Todo'],
  })
  engine.on('error', (e) => console.error(`sync error ${e.code}: ${e.message}`))
  await engine.start()
  open()
})

function open() {
  const win = new BrowserWindow({
    width: 640,
    height: 480,
    // the preload loads bridge.js, so it runs unsandboxed (contextIsolation stays on)
    webPreferences: { preload: path.join(__dirname, 'preload.js'), contextIsolation: true, sandbox: false },
  })
  win.webContents.on('did-finish-load', () => {
    const { port1, port2 } = new MessageChannelMain()
    const stop = serve(engine, {
      send: (message) => port1.postMessage(message),
      onMessage: (listener) => port1.on('message', (e) => listener(e.data)),
    })
    port1.start()
    win.once('closed', stop)
    win.webContents.postMessage('pylon-port', null, [port2])
  })
  win.loadFile(path.join(__dirname, 'renderer', 'index.html'))
}

// close() sends what is queued (up to 5 s) before the app quits
let closing = false
app.on('before-quit', (event) => {
  if (closing || !engine) return
  event.preventDefault()
  closing = true
  engine.close().finally(() => app.quit())
})
app.on('window-all-closed', () => app.quit())
