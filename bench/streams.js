// Benchmarks of the live event streams (WebSocket), all measured in one run on this machine.
// Run with `npm run bench:streams` (builds, then `node --expose-gc bench/streams.js`).
// The server runs in a forked process (bench/stream-server.js), the `ws` clients in this one,
// the tasks (bench/stream-tasks.js) in the plugin's pool children. Targets are not asserted:
// each line gets a verdict, the process exits 0 either way.
import { fork } from 'node:child_process'
import { mkdir, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { createReport, fmt, pass, percentile } from './report.js'
import { serverCpu } from './serve.js'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'

const PROGRESS_INTERVAL = 50

const config = {
  // 1. setProgress -> client latency: one ticker task, one client per endpoint.
  latency: { every: 100, count: 300, delay: 1000 },
  latency20: { every: 50, count: 200, delay: 1000 },
  // 2. One task at 20 updates/s, 1,000 multiplexed sockets; measured window after a warmup.
  fanout: { clients: 1000, batch: 100, every: 50, warmup: 1000, seconds: 10, delay: 1500 },
  // 2b. The same at a pace just slower than progressInterval (every update could take the
  // leading edge), to tell the cost of the fan-out from the effect of the coalescing.
  fanoutControl: { every: 60, seconds: 6 },
  // 3. Idle sockets per endpoint, each on a fresh server; a few warmup sockets first.
  idle: { sockets: 10_000, batch: 500, warmup: 50, tasks: 2, endpoints: (process.env.BENCH_IDLE_ENDPOINTS ?? 'task,multiplexed').split(','), recheck: 6000 },
  // Whole run: past this the bench kills what it started and exits.
  watchdog: 240_000,
}

if (typeof global.gc !== 'function') {
  console.error('run with node --expose-gc bench/streams.js (npm run bench:streams does)')
  process.exit(1)
}

const report = createReport()
const { row, notes } = report
const servers = new Set()
const ownLoop = monitorEventLoopDelay({ resolution: 5 })
ownLoop.enable()

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
/** Wall-clock ms with sub-ms resolution; the tasks stamp progress with the same clock. */
const now = () => performance.timeOrigin + performance.now()


function summary (values) {
  const sorted = Float64Array.from(values).sort()
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    min: sorted[0] ?? NaN,
    max: sorted.at(-1) ?? NaN,
  }
}

const ms = (s, keys = ['p50', 'p99']) => keys.map(k => fmt(s[k], 1)).join(' / ') + ' ms'

// ---------------------------------------------------------------------------
// The server, in its own process.

function startServer () {
  const child = fork(fileURLToPath(new URL('./stream-server.js', import.meta.url)), [], {
    execArgv: ['--expose-gc', ...(process.env.BENCH_SERVER_NODE_OPTIONS ?? '').split(' ').filter(Boolean)],
    env: { ...process.env, BENCH_PROGRESS_INTERVAL: String(PROGRESS_INTERVAL), BENCH_CONCURRENCY: '2' },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  servers.add(child)
  child.once('exit', () => servers.delete(child))
  const pending = new Map()
  let nextId = 1
  child.on('message', (message) => {
    if (message?.type !== 'reply') return
    const waiter = pending.get(message.id)
    if (waiter === undefined) return
    pending.delete(message.id)
    if (message.error !== undefined) waiter.reject(new Error(`server: ${message.error}`))
    else waiter.resolve(message)
  })
  child.once('exit', (code, signal) => {
    for (const waiter of pending.values()) waiter.reject(new Error(`the server exited (${signal ?? code})`))
    pending.clear()
  })
  const port = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('stream-server.js did not start in 15 s')), 15_000)
    child.once('error', reject)
    child.once('exit', code => reject(new Error(`stream-server.js exited with code ${code} before listening`)))
    child.on('message', (message) => {
      if (message?.type === 'listening') {
        clearTimeout(timer)
        resolve(message.port)
      }
    })
  })
  const request = (type, payload = {}) => new Promise((resolve, reject) => {
    const id = nextId++
    pending.set(id, { resolve, reject })
    child.send({ type, id, ...payload })
  })
  const cpu = () => serverCpu(child)
  return { child, port, request, cpu }
}

function stopServer (child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 5_000)
    child.once('exit', () => { clearTimeout(kill); resolve() })
    child.kill('SIGTERM')
  })
}

// ---------------------------------------------------------------------------
// Clients.

/**
 * One WebSocket following one task: `endpoint` 'task' is GET /tasks/:uuid/events,
 * 'multiplexed' is GET /tasks/events plus a subscribe frame. `ready` resolves on the
 * snapshot; `closed` resolves with the close code. A multiplexed client made without a
 * uuid only connects (`opened`) until `subscribe(uuid)`. `onProgress(receivedAt, event)` sees
 * each progress frame; the receive time is read before anything else.
 */
class Client {
  constructor (port, endpoint, uuid, { onProgress, onFinal } = {}) {
    this.uuid = uuid
    this.snapshot = undefined
    this.lastSeq = -1
    this.anomalies = []
    this.final = undefined
    this.closeCode = undefined
    const url = endpoint === 'task' ? `ws://127.0.0.1:${port}/tasks/${uuid}/events` : `ws://127.0.0.1:${port}/tasks/events`
    const ws = new WebSocket(url, { perMessageDeflate: false })
    this.ws = ws
    this.ready = new Promise((resolve, reject) => { this.resolveReady = resolve; this.rejectReady = reject })
    this.closed = new Promise((resolve) => {
      ws.once('close', (code) => {
        this.closeCode = code
        this.closedAt = performance.now()
        this.rejectReady(new Error(`socket closed with ${code} before the snapshot`))
        resolve(code)
      })
    })
    this.ready.catch(() => {})
    ws.on('error', err => this.rejectReady(err))
    this.opened = new Promise((resolve, reject) => {
      ws.once('open', resolve)
      ws.once('error', reject)
    })
    this.opened.catch(() => {})
    if (endpoint === 'multiplexed' && uuid !== undefined) ws.once('open', () => this.subscribe(uuid))
    ws.on('message', (data, isBinary) => {
      const at = now()
      let frame
      try {
        frame = JSON.parse(data)
      } catch {
        this.anomalies.push(`not JSON (${isBinary ? 'binary' : 'text'})`)
        return
      }
      if (this.snapshot === undefined) {
        if (frame.type !== 'snapshot') {
          this.anomalies.push(`first frame is ${frame.type}, not snapshot: ${data.toString().slice(0, 200)}`)
          if (frame.type === 'error') this.rejectReady(new Error(`error frame: ${frame.message}`))
          return
        }
        this.snapshot = frame
        this.lastSeq = frame.seq
        this.resolveReady(this)
        return
      }
      if (frame.type === 'error') {
        this.anomalies.push(`error frame: ${frame.message}`)
        return
      }
      if (!(frame.seq > this.lastSeq)) this.anomalies.push(`seq ${frame.seq} after ${this.lastSeq}`)
      this.lastSeq = frame.seq
      if (frame.type === 'progress') onProgress?.(at, frame)
      else if (frame.type === 'status' && frame.task !== undefined) {
        this.final = frame
        this.finalAt = performance.now()
        onFinal?.(at, frame)
      }
    })
  }

  /** Multiplexed sockets: starts following `uuid`. */
  subscribe (uuid) {
    this.uuid = uuid
    this.ws.send(JSON.stringify({ type: 'subscribe', uuid }))
  }

  close () {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(1000)
  }

  terminate () {
    this.ws.terminate()
  }
}

/** Opens `count` clients, `batch` at a time, each batch subscribed (snapshot in) before the next. */
async function openClients (count, batch, make) {
  const clients = []
  const t = performance.now()
  for (let done = 0; done < count; done += batch) {
    const wave = []
    for (let i = done; i < Math.min(count, done + batch); i++) wave.push(make(i))
    clients.push(...wave)
    await Promise.all(wave.map(client => client.ready))
  }
  return { clients, seconds: (performance.now() - t) / 1000 }
}

/** Resolves when every client has closed, or after `timeout` ms (then terminates the rest). */
async function closeAll (clients, { initiate = true, timeout = 10_000 } = {}) {
  if (initiate) for (const client of clients) client.close()
  let timer
  const all = Promise.all(clients.map(client => client.closed))
  const timedOut = new Promise(resolve => { timer = setTimeout(() => resolve('timeout'), timeout) })
  const result = await Promise.race([all, timedOut])
  clearTimeout(timer)
  if (result === 'timeout') {
    for (const client of clients) if (client.closeCode === undefined) client.terminate()
    await Promise.all(clients.map(client => client.closed))
    return false
  }
  return true
}

function anomalies (clients) {
  const all = clients.flatMap(client => client.anomalies)
  return { count: all.length, first: all.slice(0, 3) }
}

// ---------------------------------------------------------------------------
// 1. setProgress -> frame latency, a ticker task and one client per endpoint.

async function latencyRun (server, port, { every, count, delay }, endpoints) {
  const { uuid } = await server.request('submit', { task: 'ticker', inputs: { every, count, delay } })
  const samples = Object.fromEntries(endpoints.map(endpoint => [endpoint, []]))
  const offsets = []
  const clients = endpoints.map(endpoint => new Client(port, endpoint, uuid, {
    onProgress: (at, frame) => {
      samples[endpoint].push(at - frame.progress)
      offsets.push(at - Date.now())
    },
  }))
  await Promise.all(clients.map(client => client.ready))
  const connectedAt = now()
  const done = await server.request('wait', { uuid })
  // The per-task socket is closed by the server (1000) after the final status.
  const perTask = clients[endpoints.indexOf('task')]
  let closedByServer
  if (perTask !== undefined) {
    closedByServer = await Promise.race([perTask.closed, sleep(5_000).then(() => 'no close in 5 s')])
  }
  await sleep(100)
  await closeAll(clients)
  return { uuid, samples, clients, done, closedByServer, connectedAt, clientOffset: offsets.reduce((a, b) => a + b, 0) / offsets.length }
}

async function benchLatency (server, port) {
  console.error(`1. setProgress -> client latency (setProgress every ${config.latency.every} ms, then every ${config.latency20.every} ms)`)
  const endpoints = ['task', 'multiplexed']
  const a = await latencyRun(server, port, config.latency, endpoints)
  const label = { task: 'GET /tasks/:uuid/events', multiplexed: 'GET /tasks/events' }
  const all = []
  for (const endpoint of endpoints) {
    const s = summary(a.samples[endpoint])
    all.push(...a.samples[endpoint])
    row(`latency, setProgress every ${config.latency.every} ms, 1 client on ${label[endpoint]}: p50 / p99 (n=${s.n})`,
      `${ms(s)} (min ${fmt(s.min, 1)}, max ${fmt(s.max, 1)})`, `p99 <= ${PROGRESS_INTERVAL + 10} ms`, pass(s.p99 <= PROGRESS_INTERVAL + 10))
  }
  const pub = summary(a.done.publish.latencies)
  row(`  of which setProgress -> server publish (child coalescing + IPC + store), p50 / p99 (n=${pub.n})`, `${ms(pub)} (max ${fmt(pub.max, 1)})`, 'info', '-')
  const expected = config.latency.count
  const got = endpoints.map(endpoint => a.samples[endpoint].length)
  notes.push(`Latency (${config.latency.every} ms): the ticker task called setProgress ${fmt(a.done.task.outputs.calls)} times; the server published ${pub.n} progress events; ` +
    `the clients got ${got.join(' and ')} progress frames (${endpoints.join(', ')}). The per-task socket ${typeof a.closedByServer === 'number' ? `was closed by the server with ${a.closedByServer}` : `was not closed by the server: ${a.closedByServer}`} after the final status` +
    `${a.clients.every(c => c.final !== undefined) ? ' (both clients got the final status with the record)' : ' (a client MISSED the final status)'}.`)
  if (got.some(n => n < expected - 2)) notes.push(`Latency (${config.latency.every} ms): fewer frames than setProgress calls: the pace should keep every update on the leading edge.`)
  // Clock: both processes read the same wall clock through their own timeOrigin.
  const skew = a.done.task.outputs.offset - a.clientOffset
  notes.push(`Clock: mean (timeOrigin + now) - Date.now() is ${fmt(a.done.task.outputs.offset, 2)} ms in the task child and ${fmt(a.clientOffset, 2)} ms in the client process ` +
    `(difference ${fmt(skew, 2)} ms; Date.now() has 1 ms resolution, so only a skew well over 1 ms would show). Latencies are not corrected for it.`)

  const b = await latencyRun(server, port, config.latency20, ['task'])
  const s20 = summary(b.samples.task)
  const pub20 = summary(b.done.publish.latencies)
  row(`latency, setProgress every ${config.latency20.every} ms (20/s), 1 client on ${label.task}: p50 / p99 (n=${s20.n})`,
    `${ms(s20)} (min ${fmt(s20.min, 1)}, max ${fmt(s20.max, 1)})`, `p99 <= ${PROGRESS_INTERVAL} ms`, pass(s20.p99 <= PROGRESS_INTERVAL))
  row(`  of which setProgress -> server publish, p50 / p99 (n=${pub20.n})`, `${ms(pub20)} (max ${fmt(pub20.max, 1)})`, 'info', '-')
  notes.push(`Latency (${config.latency20.every} ms): ${fmt(b.done.task.outputs.calls)} setProgress calls, ${pub20.n} progress events published by the server ` +
    `(the child's coalescing merged ${b.done.task.outputs.calls - pub20.n}), ${s20.n} frames to the client (per-subscriber coalescing merged ${pub20.n - s20.n}).`)
  const bad = anomalies([...a.clients, ...b.clients])
  if (bad.count > 0) notes.push(`Latency: ${bad.count} protocol anomalies seen by the clients, e.g. ${bad.first.join('; ')}`)
}

// ---------------------------------------------------------------------------
// 2. 1,000 sockets on one task at 20 updates a second.

const excess = (delay, resolution = 5) => Object.fromEntries(Object.entries(delay).map(([k, v]) => [k, Math.max(0, v - resolution)]))

async function benchFanout (server, port, run = {}) {
  const { clients: n, batch, every, warmup, seconds, delay } = { ...config.fanout, ...run }
  const control = run.every !== undefined
  const rate = fmt(1000 / every, 1)
  const tag = control ? `fan-out control, setProgress every ${every} ms (${rate}/s)` : 'fan-out'
  console.error(`2${control ? 'b' : ''}. ${fmt(n)} multiplexed sockets, one task at ${rate} updates/s`)
  const count = Math.ceil((warmup + seconds * 1000 + 1000) / every)
  // Open the sockets first (batches of `batch`), then submit, then subscribe them all
  // (batches of `batch`); the task waits `delay` ms before its first setProgress.
  await server.request('trace', { on: true })
  const perClient = []
  const clients = []
  const t0 = performance.now()
  for (let done = 0; done < n; done += batch) {
    const wave = []
    for (let i = done; i < Math.min(n, done + batch); i++) {
      const mine = { values: [], latencies: [] }
      perClient[i] = mine
      wave.push(new Client(port, 'multiplexed', undefined, {
        onProgress: (at, frame) => {
          mine.values.push(frame.progress)
          mine.latencies.push(at - frame.progress)
        },
      }))
    }
    clients.push(...wave)
    await Promise.all(wave.map(client => client.opened))
  }
  const openSeconds = (performance.now() - t0) / 1000
  const { uuid } = await server.request('submit', { task: 'ticker', inputs: { every, count, delay } })
  const submittedAt = now()
  for (let done = 0; done < n; done += batch) {
    const wave = clients.slice(done, done + batch)
    for (const client of wave) client.subscribe(uuid)
    await Promise.all(wave.map(client => client.ready))
  }
  const subscribeSeconds = (now() - submittedAt) / 1000
  await server.request('tail', { uuid })
  await server.request('trace', { on: false })
  const subscribedAt = now()
  const tickingAt = submittedAt + delay
  if (subscribedAt > tickingAt) notes.push(`Fan-out: subscribing took longer (${fmt(subscribedAt - submittedAt)} ms) than the task's ${delay} ms delay; frames before the measured window are not counted anyway.`)
  // The measured window: from `warmup` ms after the first setProgress, for `seconds`.
  const windowStart = tickingAt + warmup
  await sleep(Math.max(0, windowStart - now()))
  await server.request('loop', { reset: true })
  ownLoop.reset()
  const cpu0 = await server.cpu()
  const own0 = process.cpuUsage()
  const wall0 = now()
  await sleep(seconds * 1000)
  const cpu1 = await server.cpu()
  const own1 = process.cpuUsage()
  const wall1 = now()
  const serverLoop = excess((await server.request('loop', { reset: false })).delay)
  const clientLoop = excess({ p50: ownLoop.percentile(50) / 1e6, p99: ownLoop.percentile(99) / 1e6, max: ownLoop.max / 1e6 })
  const done = await server.request('wait', { uuid })
  await sleep(200)

  const wallS = (wall1 - wall0) / 1000
  const serverCpuMs = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / 1000
  const clientCpuMs = (own1.user + own1.system - own0.user - own0.system) / 1000
  const inWindow = value => value >= wall0 && value < wall1
  const latencies = []
  const framesPerClient = []
  // Per event (by value): the first and last client to get it, for the fan-out spread.
  const firstLast = new Map()
  for (const mine of perClient) {
    let frames = 0
    for (let i = 0; i < mine.values.length; i++) {
      const value = mine.values[i]
      if (!inWindow(value)) continue
      frames++
      const latency = mine.latencies[i]
      latencies.push(latency)
      const fl = firstLast.get(value)
      if (fl === undefined) firstLast.set(value, [latency, latency, 1])
      else {
        if (latency < fl[0]) fl[0] = latency
        if (latency > fl[1]) fl[1] = latency
        fl[2]++
      }
    }
    framesPerClient.push(frames)
  }
  const s = summary(latencies)
  const publishInWindow = done.publish.latencies.filter((_, i) => inWindow(done.publish.values[i]))
  const pub = summary(publishInWindow)
  // Fan-outs are timed from the first events after the tail listener came in: the window
  // starts later, so the last ones line up with the last values.
  const valuesInWindow = done.publish.values.slice(-done.publish.loops.length).map(inWindow)
  const loops = summary(done.publish.loops.filter((_, i) => valuesInWindow[i]))
  const spread = summary([...firstLast.values()].map(([min, max]) => max - min))
  const fpc = summary(framesPerClient)
  const traced = done.sends.filter(([value]) => inWindow(value))
  const firstSend = summary(traced.map(([value, first]) => first - value))
  const lastSend = summary(traced.map(([value, , last]) => last - value))
  const sendSpread = summary(traced.map(([, first, last]) => last - first))
  const sendsPerEvent = summary(traced.map(([, , , count]) => count))
  const complete = [...firstLast.values()].filter(([, , k]) => k === n).length
  const early = clients.filter(client => client.closeCode !== undefined).length
  const closedAll = await closeAll(clients)
  const target = control ? 'info' : `p99 <= ${PROGRESS_INTERVAL} ms`
  row(`${tag}, ${fmt(n)} sockets, ${fmt(wallS, 1)} s: delivery latency p50 / p99 (n=${fmt(s.n)} frames)`,
    `${ms(s)} (p90 ${fmt(s.p90, 1)}, max ${fmt(s.max, 1)})`, target, control ? '-' : pass(s.p99 <= PROGRESS_INTERVAL))
  row('  of which setProgress -> server publish (before the fan-out), p50 / p99', `${ms(pub)} (max ${fmt(pub.max, 1)}, n=${pub.n})`, 'info', '-')
  row('  setProgress -> server writes the frame to the first / last subscriber, p50 / p99', `${ms(firstSend)} / ${ms(lastSend)} (max ${fmt(lastSend.max, 1)})`, 'info', '-')
  row('  server fan-out per event (publish -> the last subscriber\'s send; sends a subscriber\'s pacing defers go out later on timers), p50 / p99', `${ms(loops)} (max ${fmt(loops.max, 1)})`, 'info', '-')
  row('  spread per event, server sends (last minus first) / client receives, p50 / p99', `${ms(sendSpread)} / ${ms(spread)}`, 'info', '-')
  row('  event-loop delay past the 5 ms sampling period, server / client process, p50 / p99 / max', `${ms(serverLoop, ['p50', 'p99', 'max'])} / ${ms(clientLoop, ['p50', 'p99', 'max'])}`, 'info', '-')
  row(`${tag}, server CPU (user+system, % of one core) over the window`,
    `${fmt(serverCpuMs / wallS / 10, 1)} % (${fmt(serverCpuMs / wallS)} ms/s; client process ${fmt(clientCpuMs / wallS / 10, 1)} %)`, 'info', '-')
  row(`${tag}, frames per client per second: median (min - max)`,
    `${fmt(fpc.p50 / wallS, 1)} (${fmt(fpc.min / wallS, 1)} - ${fmt(fpc.max / wallS, 1)}) for ${fmt(pub.n / wallS, 1)} events/s published`, 'info', '-')
  const finals = clients.filter(client => client.final !== undefined).length
  const bad = anomalies(clients)
  notes.push(`${control ? 'Fan-out control' : 'Fan-out'}: ${fmt(n)} sockets opened in ${fmt(openSeconds, 1)} s (batches of ${batch}) before the submit, then subscribed (snapshot in) ` +
    `in ${fmt(subscribeSeconds, 1)} s right after it (batches of ${batch}). Window: ${fmt(wallS, 2)} s from ${warmup} ms after the first setProgress; ` +
    `${fmt(firstLast.size)} distinct progress events reached clients in it, ${fmt(complete)} of them reached all ${fmt(n)}; ` +
    `the server sent each to a median of ${fmt(sendsPerEvent.p50)} subscribers (min ${fmt(sendsPerEvent.min)}). ` +
    `${fmt(finals)} of ${fmt(n)} clients got the final status; ${early} sockets closed before the bench closed them; ` +
    `${bad.count} protocol anomalies${bad.count > 0 ? ` (e.g. ${bad.first.join('; ')})` : ''}` +
    `${closedAll ? '' : '; some sockets did not finish the close handshake in 10 s and were terminated'}. Load average after: ${os.loadavg().map(x => x.toFixed(2)).join(', ')}.`)
}

// ---------------------------------------------------------------------------
// 3. Server RSS per idle subscribed socket, on a fresh server per endpoint.

async function benchIdle (endpoint) {
  const { sockets: n, batch, warmup, tasks } = config.idle
  const label = endpoint === 'task' ? 'GET /tasks/:uuid/events' : 'GET /tasks/events + subscribe'
  console.error(`3. ${fmt(n)} idle sockets on ${label}`)
  const server = startServer()
  const releases = Array.from({ length: tasks }, (_, i) => fileURLToPath(new URL(`./results/.release-${process.pid}-${endpoint}-${i}`, import.meta.url)))
  const removeReleases = () => Promise.all(releases.map(file => rm(file, { force: true })))
  await removeReleases()
  try {
    const port = await server.port
    const uuids = []
    for (let i = 0; i < tasks; i++) uuids.push((await server.request('submit', { task: 'hold', inputs: { release: releases[i], ms: 120_000 } })).uuid)
    // Warm the code paths (and lazily loaded modules) with a few sockets, then the baseline.
    const warm = await openClients(warmup, warmup, i => new Client(port, endpoint, uuids[i % tasks]))
    await closeAll(warm.clients)
    await sleep(100)
    const m0 = await server.request('memory')
    const { clients, seconds } = await openClients(n, batch, i => new Client(port, endpoint, uuids[i % tasks]))
    for (const uuid of uuids) await server.request('tail', { uuid })
    await sleep(200)
    const m1 = await server.request('memory')
    const per = key => (m1.usage[key] - m0.usage[key]) / n / 1024
    const rss = per('rss')
    row(`idle sockets, ${fmt(n)} on ${label}: server RSS per socket`, `${fmt(rss, 1)} KB (RSS ${fmt(m0.usage.rss / 2 ** 20)} -> ${fmt(m1.usage.rss / 2 ** 20)} MB)`, '<= 20 KB', pass(rss <= 20))
    row('  of which JS heap (heapUsed) / external + arrayBuffers, per socket', `${fmt(per('heapUsed'), 1)} / ${fmt(per('external') + per('arrayBuffers'), 1)} KB`, 'info', '-')
    // Release the tasks one after the other: each socket gets the final status; the per-task
    // ones are then closed by the server.
    const releasedAt = performance.now()
    const finals = []
    for (let i = 0; i < tasks; i++) {
      await writeFile(releases[i], '')
      finals.push((await server.request('wait', { uuid: uuids[i] })).publish.final)
    }
    const perTask = pick => finals.map(f => f === undefined ? '?' : pick(f)).join(' / ')
    const three = s => `${fmt(s.p50, 1)} / ${fmt(s.p99, 1)} / ${fmt(s.max, 1)}`
    row(`  final status to ${fmt(n / tasks)} sockets per task${endpoint === 'task' ? ' (each socket then closed by the server, 1000)' : ''}: from publish to the last send, per task (released one after the other)`,
      `${perTask(f => fmt(f.span))} ms over ${perTask(f => fmt(f.turns))} turns of the event loop`, 'info', '-')
    row('  its turns of the event loop, per task: wall clock p50 / p99 / max (includes the time the OS gave other processes)', perTask(f => `${three(f.turn)} ms`), 'info', '-')
    row('  its turns, per task: CPU time of the server process (all its threads, gc included) p50 / p99 / max', perTask(f => `${three(f.cpu)} ms (longest gc pause ${fmt(f.longestGc, 1)} ms)`),
      'p99 <= a few ms', pass(finals.every(f => f !== undefined && f.cpu.p99 <= 5)))
    let closedByServer = 0
    let finalCount = 0
    if (endpoint === 'task') {
      await closeAll(clients, { initiate: false, timeout: 15_000 })
      closedByServer = clients.filter(client => client.closeCode === 1000).length
    } else {
      const deadline = performance.now() + 15_000
      while (clients.some(client => client.final === undefined) && performance.now() < deadline) await sleep(50)
    }
    finalCount = clients.filter(client => client.final !== undefined).length
    const finalMs = performance.now() - releasedAt
    const finalAt = summary(clients.filter(c => c.finalAt !== undefined).map(c => c.finalAt - releasedAt))
    const closedAt = summary(clients.filter(c => c.closedAt !== undefined).map(c => c.closedAt - releasedAt))
    await closeAll(clients)
    await sleep(200)
    const m2 = await server.request('memory')
    // Sockets the server closed itself are kept for a while by its close timeout: look again later.
    await sleep(config.idle.recheck)
    const m3 = await server.request('memory')
    const mb = m => fmt(m.usage.heapUsed / 2 ** 20, 1)
    row(`  heapUsed after all ${fmt(n)} closed, +0.2 s / +${fmt(config.idle.recheck / 1000, 1)} s (baseline ${mb(m0)} MB, ${mb(m1)} MB while open)`, `${mb(m2)} / ${mb(m3)} MB`, 'info', '-')
    const bad = anomalies(clients)
    notes.push(`Idle (${label}): ${fmt(n)} sockets opened and subscribed in ${fmt(seconds, 1)} s (batches of ${batch}) over ${tasks} hold tasks; the server counted ${fmt(m1.sockets)} open WebSockets. ` +
      `After gc: RSS ${fmt(m0.usage.rss / 2 ** 20, 1)} -> ${fmt(m1.usage.rss / 2 ** 20, 1)} MB, heapUsed ${fmt(m0.usage.heapUsed / 2 ** 20, 1)} -> ${fmt(m1.usage.heapUsed / 2 ** 20, 1)} MB; ` +
      `after all closed and gc: RSS ${fmt(m2.usage.rss / 2 ** 20, 1)} MB (${fmt(m3.usage.rss / 2 ** 20, 1)} MB ${fmt(config.idle.recheck / 1000, 1)} s later; ${fmt(m2.sockets)} sockets left). ` +
      `Releasing the tasks: ${fmt(finalCount)} of ${fmt(n)} clients got the final status` +
      (endpoint === 'task' ? ` and ${fmt(closedByServer)} were closed by the server with 1000` : '') +
      ` within ${fmt(finalMs)} ms of the first release (the tasks were released one after the other and poll their release file every 100 ms; final status received ${fmt(finalAt.min)} - ${fmt(finalAt.max)} ms` +
      (endpoint === 'task' ? `; socket closed ${fmt(closedAt.min)} - ${fmt(closedAt.max)} ms, median ${fmt(closedAt.p50)} ms` : '') + `); ${bad.count} protocol anomalies${bad.count > 0 ? ` (e.g. ${bad.first.join('; ')})` : ''}.`)
  } finally {
    await stopServer(server.child)
    await removeReleases()
  }
}

// ---------------------------------------------------------------------------


const watchdog = setTimeout(() => {
  console.error(`streams bench: still running after ${config.watchdog / 1000} s; killing the servers and exiting`)
  for (const child of servers) child.kill('SIGKILL')
  process.exit(1)
}, config.watchdog)
watchdog.unref()

await mkdir(new URL('./results/', import.meta.url), { recursive: true })

// `node --expose-gc bench/streams.js latency fanout idle` runs only the steps named; no argument runs them all.
const wanted = process.argv.slice(2)
const want = name => wanted.length === 0 || wanted.includes(name)

async function step (name, fn) {
  try {
    await fn()
  } catch (err) {
    row(name, `ERROR: ${err.message}`, '-', 'ERROR')
  }
}

if (want('latency') || want('fanout')) {
  // Steps 1 and 2 share one server: step 2 runs on a warmed-up process.
  const server = startServer()
  try {
    const port = await server.port
    if (want('latency')) await step('latency', () => benchLatency(server, port))
    if (want('fanout')) {
      await step('fanout', () => benchFanout(server, port))
      await step('fanout control', () => benchFanout(server, port, config.fanoutControl))
      notes.push('Fan-out timing: the server script wrapped socket.send on the measured sockets to time the progress frames it writes ' +
        '(the plugin sends every subscriber the same Buffer per event, so a Map lookup per send identifies the event). ' +
        'Receive times in the client process include its own queueing (one process reads all the sockets); the task child shares the same 2 cores.')
    }
  } catch (err) {
    row('server', `ERROR: ${err.message}`, '-', 'ERROR')
  } finally {
    await stopServer(server.child)
  }
}
if (want('idle')) {
  for (const endpoint of config.idle.endpoints) await step(`idle ${endpoint}`, () => benchIdle(endpoint))
}

const output = report.markdown('fastify-task-api stream benchmarks', [`progressInterval ${PROGRESS_INTERVAL} ms; server (bench/stream-server.js) forked, 2 pool children; clients (\`ws\`) in the bench process; 127.0.0.1`])

console.log('\n' + output)
await writeFile(new URL('./results/streams.md', import.meta.url), output)
clearTimeout(watchdog)
