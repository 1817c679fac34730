#!/usr/bin/env node
// A real Yjs client (npm `yjs` + `y-websocket`, with `ws` as its WebSocket) driven over
// stdin/stdout by tests/compat/test_yjs_node.py.
//
// Protocol: one JSON object per line on stdin, {"id": n, "cmd": "...", ...}; one JSON
// object per line on stdout, {"id": n, "ok": true, ...} or {"id": n, "ok": false, "error":
// "..."}. One process may hold several clients (each its own Y.Doc, websocket and
// awareness), named by "client".
//
// Commands:
//   connect    {client, url, room, token?, stopOn?: [close codes that end reconnecting]}
//   set        {client, map, key, value}            Y.Map set in one transaction
//   dump       {client, maps: [names]}              -> {maps: {name: toJSON()}, status}
//   awareness  {client, state}                      set the local awareness state
//   peers      {client}                             -> {states: {clientID: state}}
//   disconnect {client}                             destroy provider and doc
//   exit                                            destroy everything and exit 0
//
// A client records its connection history: status changes, close codes and the reasons of
// permission-denied (auth) messages, reported by `dump`.

import * as readline from 'node:readline'
import * as decoding from 'lib0/decoding'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

/** The `ws` client with permessage-deflate off (the relay does not negotiate it anyway). */
class NodeWebSocket extends WebSocket {
  constructor (url, protocols) {
    super(url, protocols, { perMessageDeflate: false })
  }
}

/** @type {Map<string, {doc: Y.Doc, provider: WebsocketProvider, history: object}>} */
const clients = new Map()

function client (name) {
  const found = clients.get(name)
  if (found === undefined) throw new Error(`no client ${name}`)
  return found
}

function connect ({ client: name, url, room, token, stopOn = [] }) {
  if (clients.has(name)) throw new Error(`client ${name} exists`)
  const doc = new Y.Doc()
  const history = { statuses: [], closeCodes: [], denied: [], synced: false, syncs: 0 }
  const provider = new WebsocketProvider(url, room, doc, {
    WebSocketPolyfill: NodeWebSocket,
    params: token ? { token } : {},
    disableBc: true, // every update must travel through the server
    maxBackoffTime: 300,
    shouldReconnect: (event) => !stopOn.includes(event.code)
  })
  provider.on('status', ({ status }) => history.statuses.push(status))
  provider.on('sync', (synced) => {
    history.synced = synced
    if (synced) history.syncs += 1
  })
  provider.on('connection-close', (event) => {
    if (event) history.closeCodes.push(event.code)
  })
  // y-websocket only logs a permission-denied message; keep the reason for the test.
  const authHandler = provider.messageHandlers[2]
  provider.messageHandlers[2] = (encoder, decoder, prov, emitSynced, type) => {
    try {
      // auth message: varuint 0 (permission denied), varstring reason
      const peek = decoding.createDecoder(decoder.arr)
      peek.pos = decoder.pos
      decoding.readVarUint(peek)
      history.denied.push(decoding.readVarString(peek))
    } catch (err) {
      history.denied.push(String(err))
    }
    const warn = console.warn
    console.warn = () => {}
    try {
      authHandler(encoder, decoder, prov, emitSynced, type)
    } finally {
      console.warn = warn
    }
  }
  clients.set(name, { doc, provider, history })
  return {}
}

function dump ({ client: name, maps = [] }) {
  const { doc, provider, history } = client(name)
  const out = {}
  for (const map of maps) out[map] = doc.getMap(map).toJSON()
  return {
    maps: out,
    clientID: doc.clientID,
    connected: provider.wsconnected,
    synced: provider.synced,
    history
  }
}

function set ({ client: name, map, key, value }) {
  const { doc } = client(name)
  doc.transact(() => doc.getMap(map).set(key, value))
  return {}
}

function awareness ({ client: name, state }) {
  client(name).provider.awareness.setLocalState(state)
  return {}
}

function peers ({ client: name }) {
  const states = {}
  for (const [id, state] of client(name).provider.awareness.getStates()) states[id] = state
  return { states }
}

function disconnect ({ client: name }) {
  const { doc, provider } = client(name)
  provider.destroy()
  doc.destroy()
  clients.delete(name)
  return {}
}

const commands = { connect, set, dump, awareness, peers, disconnect }

function reply (message) {
  process.stdout.write(JSON.stringify(message) + '\n')
}

function shutdown (code) {
  for (const name of [...clients.keys()]) {
    try { disconnect({ client: name }) } catch { /* already gone */ }
  }
  process.exit(code)
}

const input = readline.createInterface({ input: process.stdin })
input.on('line', (line) => {
  if (!line.trim()) return
  let request
  try {
    request = JSON.parse(line)
  } catch (err) {
    reply({ id: null, ok: false, error: `bad JSON: ${err}` })
    return
  }
  if (request.cmd === 'exit') {
    reply({ id: request.id, ok: true })
    shutdown(0)
    return
  }
  const handler = commands[request.cmd]
  if (handler === undefined) {
    reply({ id: request.id, ok: false, error: `unknown command ${request.cmd}` })
    return
  }
  try {
    reply({ id: request.id, ok: true, ...handler(request) })
  } catch (err) {
    reply({ id: request.id, ok: false, error: String(err && err.stack ? err.stack : err) })
  }
})
// The test process going away (stdin closed) ends this one too: nothing is left running.
input.on('close', () => shutdown(0))
