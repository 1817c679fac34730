#!/usr/bin/env node
// The load generator of bench/peers.py: N stock Yjs clients in one room, each making small
// Y.Map writes, against any of the servers (same clients, same edits, same measurements).
//
//   node loadgen.mjs --kind relay|yws|pycrdt|hocuspocus --url URL --room bench
//        --clients 10 --writes 2000 [--rate 500 --paced-writes 2000] [--late 3]
//        [--server-pid PID] [--timeout-s 120]
//   node loadgen.mjs --floor --clients 10 --writes 2000      (in-process yjs apply cost)
//
// Clients: y-websocket's WebsocketProvider (relay, yws, pycrdt) or @hocuspocus/provider
// (hocuspocus speaks its own framing), all over the `ws` package with permessage-deflate
// off. Each client i owns key `c<i>` of the root map `m` and writes 1, 2, 3, ... to it:
// one small update per edit, causally ordered per writer, so seeing value v at a client
// means edits 1..v of that writer arrived there.
//
// Phases, each bounded by --timeout-s:
//   join     the first client alone (pycrdt-websocket hangs clients that join while a room
//            is starting), then the others; every client synced.
//   burst    every client writes --writes edits as fast as it can (one round of N edits per
//            event-loop turn); ends when every client holds every writer's last value.
//            Reported: edits/s, server CPU µs per edit (/proc/PID/stat utime+stime).
//   paced    --paced-writes edits at --rate edits/s in total, round-robin over clients;
//            fan-out latency = receive time at each other client - send time (one clock).
//   late     --late fresh clients join one after the other: connect -> synced and holding
//            every writer's last value.
// Output: one JSON object on stdout.

import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { HocuspocusProvider } from '@hocuspocus/provider'

/** The `ws` client without permessage-deflate (decided for every server alike). */
class NodeWebSocket extends WebSocket {
  constructor (url, protocols) {
    super(url, protocols, { perMessageDeflate: false })
  }
}

function parseArgs (argv) {
  const args = {
    kind: 'relay',
    url: '',
    room: 'bench',
    clients: 10,
    writes: 2000,
    rate: 500,
    'paced-writes': 0,
    late: 3,
    'server-pid': 0,
    'timeout-s': 120,
    floor: false
  }
  for (let i = 2; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '')
    if (!(key in args)) throw new Error(`unknown option ${argv[i]}`)
    if (typeof args[key] === 'boolean') {
      args[key] = true
    } else {
      const value = argv[++i]
      args[key] = typeof args[key] === 'number' ? Number(value) : value
    }
  }
  return args
}

const CLK_TCK = 100 // Linux USER_HZ; /proc/PID/stat times are in these ticks

function cpuSeconds (pid) {
  if (!pid) return 0
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // fields[0] is field 3 (state): utime is field 14, stime field 15
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
}

function statusKiB (pid, name) {
  if (!pid) return 0
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith(name + ':'))
  return line ? Number(line.split(/\s+/)[1]) : 0
}

function percentile (sorted, q) {
  if (sorted.length === 0) return null
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[index]
}

class Samples {
  constructor () {
    this.data = new Float64Array(1 << 16)
    this.length = 0
  }

  push (value) {
    if (this.length === this.data.length) {
      const grown = new Float64Array(this.data.length * 2)
      grown.set(this.data)
      this.data = grown
    }
    this.data[this.length++] = value
  }

  summary () {
    const sorted = this.data.slice(0, this.length).sort()
    return {
      samples: this.length,
      p50_ms: percentile(sorted, 0.5),
      p99_ms: percentile(sorted, 0.99),
      max_ms: this.length ? sorted[this.length - 1] : null
    }
  }
}

const withTimeout = (promise, ms, what) => {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

const turn = () => new Promise((resolve) => setImmediate(resolve))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Shared bookkeeping: what each writer wrote and when. */
class Ledger {
  constructor (writers) {
    this.writers = writers
    this.written = new Array(writers).fill(0) // last value written by writer i
    this.sentAt = Array.from({ length: writers }, () => new Samples())
    this.latency = null // Samples of the phase being measured, or null
  }
}

class Client {
  constructor (index, args, ledger) {
    this.index = index
    this.ledger = ledger
    this.doc = new Y.Doc()
    this.map = this.doc.getMap('m')
    this.seen = new Array(ledger.writers).fill(0)
    this.target = null
    this.behind = 0
    this.onConverged = null
    this.map.observe((event) => this._observe(event))
    this.syncedOnce = new Promise((resolve) => { this._resolveSynced = resolve })
    if (args.kind === 'hocuspocus') {
      this.provider = new HocuspocusProvider({
        url: args.url,
        name: args.room,
        document: this.doc,
        WebSocketPolyfill: NodeWebSocket,
        onSynced: ({ state }) => { if (state) this._resolveSynced() }
      })
    } else {
      this.provider = new WebsocketProvider(args.url, args.room, this.doc, {
        WebSocketPolyfill: NodeWebSocket,
        disableBc: true // through the server only
      })
      this.provider.on('sync', (synced) => { if (synced) this._resolveSynced() })
    }
  }

  _observe (event) {
    const now = performance.now()
    const local = event.transaction.local
    for (const key of event.keysChanged) {
      if (key[0] !== 'c') continue
      const writer = Number(key.slice(1))
      const value = this.map.get(key)
      const previous = this.seen[writer]
      if (typeof value !== 'number' || value <= previous) continue
      this.seen[writer] = value
      const samples = this.ledger.latency
      if (samples !== null && !local && writer !== this.index) {
        const sent = this.ledger.sentAt[writer].data
        // Seeing v means every earlier edit of that writer arrived now at the latest.
        for (let v = previous + 1; v <= value; v++) {
          if (sent[v] > 0) samples.push(now - sent[v])
        }
      }
      if (this.target !== null && previous < this.target[writer] && value >= this.target[writer]) {
        this.behind -= 1
        if (this.behind === 0 && this.onConverged) this.onConverged()
      }
    }
  }

  /** Resolves when this client holds every writer's value in `target`. */
  converged (target) {
    this.target = target
    this.behind = target.filter((t, w) => this.seen[w] < t).length
    if (this.behind === 0) return Promise.resolve()
    return new Promise((resolve) => { this.onConverged = resolve })
  }

  write () {
    const ledger = this.ledger
    const value = ++ledger.written[this.index]
    const sent = ledger.sentAt[this.index]
    while (sent.length <= value) sent.push(0)
    sent.data[value] = performance.now()
    this.doc.transact(() => this.map.set('c' + this.index, value))
  }

  destroy () {
    this.provider.destroy()
    this.doc.destroy()
  }
}

async function join (args, ledger, count) {
  const clients = []
  const deadline = args['timeout-s'] * 1000
  const first = new Client(0, args, ledger)
  clients.push(first)
  await withTimeout(first.syncedOnce, deadline, 'first client synced')
  for (let i = 1; i < count; i++) clients.push(new Client(i, args, ledger))
  await withTimeout(Promise.all(clients.map((c) => c.syncedOnce)), deadline, 'all clients synced')
  return clients
}

async function allConverged (clients, ledger, ms, what) {
  const target = ledger.written.slice()
  await withTimeout(Promise.all(clients.map((c) => c.converged(target))), ms, what)
}

async function burst (args, clients, ledger) {
  const pid = args['server-pid']
  const edits = clients.length * args.writes
  ledger.latency = new Samples()
  const cpu0 = cpuSeconds(pid)
  const t0 = performance.now()
  const done = allConverged(clients, { written: new Array(clients.length).fill(args.writes) },
    args['timeout-s'] * 1000, 'burst converged')
  for (let j = 0; j < args.writes; j++) {
    for (const client of clients) client.write()
    await turn()
  }
  await done
  const seconds = (performance.now() - t0) / 1000
  const cpu = cpuSeconds(pid) - cpu0
  const latency = ledger.latency.summary()
  ledger.latency = null
  return {
    edits,
    seconds,
    edits_per_s: edits / seconds,
    server_cpu_s: cpu,
    server_cpu_us_per_edit: pid ? (cpu / edits) * 1e6 : null,
    latency
  }
}

async function paced (args, clients, ledger) {
  const pid = args['server-pid']
  const total = args['paced-writes']
  const rate = args.rate
  ledger.latency = new Samples()
  const final = ledger.written.slice()
  for (let k = 0; k < total; k++) final[k % clients.length] += 1
  const done = allConverged(clients, { written: final }, args['timeout-s'] * 1000, 'paced converged')
  const cpu0 = cpuSeconds(pid)
  const t0 = performance.now()
  let k = 0
  while (k < total) {
    const due = Math.min(total, Math.floor(((performance.now() - t0) * rate) / 1000) + 1)
    while (k < due) {
      clients[k % clients.length].write()
      k += 1
    }
    if (k < total) {
      const next = t0 + (k * 1000) / rate
      await sleep(Math.max(0, next - performance.now()))
    }
  }
  await done
  const seconds = (performance.now() - t0) / 1000
  const cpu = cpuSeconds(pid) - cpu0
  const latency = ledger.latency.summary()
  ledger.latency = null
  return {
    edits: total,
    rate,
    seconds,
    server_cpu_us_per_edit: pid ? (cpu / total) * 1e6 : null,
    latency
  }
}

async function late (args, ledger, count) {
  const times = []
  const target = ledger.written.slice()
  for (let n = 0; n < count; n++) {
    const t0 = performance.now()
    const client = new Client(ledger.writers, args, ledger) // index beyond the writers
    await withTimeout(client.syncedOnce, args['timeout-s'] * 1000, 'late joiner synced')
    await withTimeout(client.converged(target), args['timeout-s'] * 1000, 'late joiner state')
    times.push(performance.now() - t0)
    client.destroy()
    await sleep(50)
  }
  const sorted = times.slice().sort((a, b) => a - b)
  return { joins: count, median_ms: percentile(sorted, 0.5), all_ms: times }
}

/** Raw cost of applying the same updates in-process with yjs (no network, no server). */
function floor (args) {
  const writers = Array.from({ length: args.clients }, () => new Y.Doc())
  const updates = []
  writers.forEach((doc, i) => doc.on('update', (u) => updates.push([i, u])))
  for (let j = 1; j <= args.writes; j++) {
    writers.forEach((doc, i) => doc.getMap('m').set('c' + i, j))
  }
  const server = new Y.Doc()
  const t0 = performance.now()
  for (const [, update] of updates) Y.applyUpdate(server, update)
  const seconds = (performance.now() - t0) / 1000
  return {
    floor: 'yjs',
    edits: updates.length,
    apply_us_per_edit: (seconds / updates.length) * 1e6,
    edits_per_s: updates.length / seconds
  }
}

async function main () {
  const args = parseArgs(process.argv)
  if (args.floor) {
    process.stdout.write(JSON.stringify(floor(args)) + '\n')
    return
  }
  const started = performance.now()
  const ledger = new Ledger(args.clients)
  const result = { kind: args.kind, clients: args.clients, writes: args.writes }
  let clients = []
  try {
    const tJoin = performance.now()
    clients = await join(args, ledger, args.clients)
    result.join_s = (performance.now() - tJoin) / 1000
    await sleep(300) // let the join's awareness chatter settle
    if (args.writes > 0) result.burst = await burst(args, clients, ledger)
    if (args['paced-writes'] > 0 && args.rate > 0) {
      await sleep(200)
      result.paced = await paced(args, clients, ledger)
    }
    if (args.late > 0) result.late = await late(args, ledger, args.late)
  } catch (err) {
    result.error = String(err && err.message ? err.message : err)
  } finally {
    result.server_rss_kib = statusKiB(args['server-pid'], 'VmRSS')
    result.server_hwm_kib = statusKiB(args['server-pid'], 'VmHWM')
    result.total_s = (performance.now() - started) / 1000
    for (const client of clients) client.destroy()
  }
  process.stdout.write(JSON.stringify(result) + '\n')
  // Providers keep timers (awareness renewal, reconnects): leave without waiting for them.
  process.exit(result.error ? 3 : 0)
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ error: String(err && err.stack ? err.stack : err) }) + '\n')
  process.exit(2)
})
