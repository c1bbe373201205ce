// Flood bench: clients that send junk WebSocket frames as fast as they can and never read
// what the server answers, against a server with the plugin's default stream options.
// Run with `npm run bench:flood` (builds, then `node bench/flood.js [seconds] [flooders]`, default 25 s, 4 clients).
//
// The server runs in its own process (bench/stream-server.js); its RSS is read from
// /proc/<pid>/status every 100 ms, so the samples do not depend on its event loop. The
// flooders are raw TCP sockets that complete the upgrade, stop reading, and write masked
// 1-byte text frames ("x", not JSON: each one earns an error frame of about 100 bytes);
// when the server drops one, it connects again. Half flood GET /tasks/events, half
// GET /tasks/:uuid/events of a held task. Meanwhile a well-behaved client on another
// source address (127.0.0.2) opens a socket on the held task every 250 ms and times its
// snapshot. Targets are not asserted: the table gets a verdict, the process exits 0.
import { fork } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'
import { createReport, fmt, pass, percentile } from './report.js'

const config = {
  seconds: Number(process.argv[2] ?? 25),
  flooders: Number(process.argv[3] ?? 4),
  // Junk written per write() call: 1,024 frames of 7 bytes.
  batch: 1024,
  // The server is stopped if its RSS passes this (an unbounded buffer would take the machine).
  rssAbortMb: 1536,
  probeEvery: 250,
  settle: 7000,
}

const report = createReport()
const { row, notes } = report
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function rssMb (pid) {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8')
    const kb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1])
    return kb / 1024
  } catch {
    return NaN
  }
}

function startServer () {
  const child = fork(fileURLToPath(new URL('./stream-server.js', import.meta.url)), [], {
    execArgv: ['--expose-gc', ...(process.env.BENCH_SERVER_NODE_OPTIONS ?? '').split(' ').filter(Boolean)],
    env: { ...process.env, BENCH_CONCURRENCY: '1', BENCH_PLUGIN_WEBSOCKET: '1', BENCH_MAX_STREAMS: '100' },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  const pending = new Map()
  let nextId = 1
  child.on('message', (message) => {
    if (message?.type !== 'reply') return
    const waiter = pending.get(message.id)
    pending.delete(message.id)
    if (message.error !== undefined) waiter?.reject(new Error(`server: ${message.error}`))
    else waiter?.resolve(message)
  })
  child.once('exit', (code, signal) => {
    for (const waiter of pending.values()) waiter.reject(new Error(`the server exited (${signal ?? code})`))
    pending.clear()
  })
  const port = new Promise((resolve, reject) => {
    child.once('exit', code => reject(new Error(`stream-server.js exited with ${code} before listening`)))
    child.on('message', message => { if (message?.type === 'listening') resolve(message.port) })
  })
  const request = (type, payload = {}) => new Promise((resolve, reject) => {
    const id = nextId++
    pending.set(id, { resolve, reject })
    child.send({ type, id, ...payload })
  })
  return { child, port, request }
}

function stopServer (child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 5000)
    child.once('exit', () => { clearTimeout(kill); resolve() })
    child.kill('SIGTERM')
  })
}

function junkFrame () {
  const mask = randomBytes(4)
  return Buffer.from([0x81, 0x81, ...mask, 'x'.charCodeAt(0) ^ mask[0]])
}

/**
 * One flooder: connects, upgrades, stops reading, writes junk until the server drops the
 * connection (or `stop()`), then connects again. Counts connections, refusals, bytes.
 */
function flooder (port, path, stats) {
  const chunk = Buffer.concat(Array.from({ length: config.batch }, junkFrame))
  let stopped = false
  let current
  const once = () => new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    current = socket
    let upgraded = false
    let head = ''
    const done = (outcome) => {
      socket.destroy()
      resolve(outcome)
    }
    socket.on('error', () => {})
    socket.on('close', () => resolve(upgraded ? 'cut' : 'failed'))
    socket.on('connect', () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`)
    })
    const onData = (data) => {
      head += data.toString('latin1')
      if (!head.includes('\r\n\r\n')) return
      socket.off('data', onData)
      socket.pause()
      if (!head.startsWith('HTTP/1.1 101')) {
        done(/^HTTP\/1.1 (\d+)/.exec(head)?.[1] ?? 'refused')
        return
      }
      upgraded = true
      stats.connections++
      const pump = () => {
        while (!stopped && !socket.destroyed) {
          stats.bytes += chunk.length
          if (!socket.write(chunk)) {
            socket.once('drain', pump)
            return
          }
        }
        if (stopped) done('stopped')
      }
      pump()
    }
    socket.on('data', onData)
  })
  const loop = (async () => {
    while (!stopped) {
      const outcome = await once()
      if (outcome === 'cut') stats.cuts++
      else if (outcome !== 'stopped') {
        stats.refused[outcome] = (stats.refused[outcome] ?? 0) + 1
        await sleep(50)
      }
    }
  })()
  return { stop: () => { stopped = true; current?.destroy(); return loop } }
}

/** Opens a socket on the held task from 127.0.0.2 and resolves with the ms to its snapshot, or an error. */
function probe (port, uuid) {
  const started = performance.now()
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/tasks/${uuid}/events`, { localAddress: '127.0.0.2', perMessageDeflate: false })
    const timer = setTimeout(() => { ws.terminate(); resolve({ error: 'no snapshot in 5 s' }) }, 5000)
    ws.on('error', err => { clearTimeout(timer); resolve({ error: err.message }) })
    ws.once('message', (data) => {
      clearTimeout(timer)
      const frame = JSON.parse(data)
      ws.close()
      resolve(frame.type === 'snapshot' ? { ms: performance.now() - started } : { error: `first frame ${frame.type}` })
    })
  })
}

const server = startServer()
const release = fileURLToPath(new URL(`./results/.flood-release-${process.pid}`, import.meta.url))
await mkdir(new URL('./results/', import.meta.url), { recursive: true })
try {
  const port = await server.port
  const pid = server.child.pid
  const { uuid } = await server.request('submit', { task: 'hold', inputs: { release, ms: 600_000 } })
  // Warm up the paths a flood takes, then the baseline.
  const warm = await probe(port, uuid)
  if (warm.error !== undefined) throw new Error(`warmup probe: ${warm.error}`)
  const m0 = await server.request('memory')
  const rss0 = await rssMb(pid)
  console.error(`flooding with ${config.flooders} clients for ${config.seconds} s (server RSS ${fmt(rss0, 1)} MB)`)

  await server.request('loop', { reset: true })
  const stats = { connections: 0, cuts: 0, bytes: 0, refused: {} }
  const samples = []
  let aborted = false
  const usages = []
  const sampler = setInterval(async () => {
    const mb = await rssMb(pid)
    samples.push(mb)
    if (samples.length % 5 === 0) server.request('usage').then(({ usage }) => usages.push(usage), () => {})
    if (mb > config.rssAbortMb && !aborted) {
      aborted = true
      console.error(`server RSS ${fmt(mb)} MB: over ${config.rssAbortMb} MB, stopping the flood`)
    }
  }, 100)
  const flooders = Array.from({ length: config.flooders }, (_, i) =>
    flooder(port, i % 2 === 0 ? '/tasks/events' : `/tasks/${uuid}/events`, stats))
  const probes = []
  const started = performance.now()
  let midFlood
  while (performance.now() - started < config.seconds * 1000 && !aborted) {
    probes.push(await probe(port, uuid))
    await sleep(config.probeEvery)
    // Once, past the middle: what the server really holds (after a full gc) while flooded.
    if (midFlood === undefined && performance.now() - started > config.seconds * 600) midFlood = await server.request('memory')
  }
  const floodSeconds = (performance.now() - started) / 1000
  const { delay } = await server.request('loop', { reset: false })
  await Promise.all(flooders.map(f => f.stop()))
  const rssEnd = samples.at(-1)
  const rssMax = Math.max(...samples)
  // Connections the server cut are dropped 5 s after their close began.
  await sleep(config.settle)
  clearInterval(sampler)
  const rssAfter = await rssMb(pid)
  const m1 = await server.request('memory')
  const rssAfterGc = await rssMb(pid)

  const latencies = Float64Array.from(probes.filter(p => p.ms !== undefined).map(p => p.ms)).sort()
  const failed = probes.filter(p => p.error !== undefined)
  const growth = rssMax - rss0
  row(`server RSS, ${config.flooders} junk flooders for ${fmt(floodSeconds, 1)} s: before -> max during (growth)`,
    `${fmt(rss0, 1)} -> ${fmt(rssMax, 1)} MB (+${fmt(growth, 1)} MB)`, 'a few MB, not hundreds', pass(growth <= 64 && !aborted))
  row('  at the end of the flood / 7 s later / after gc', `${fmt(rssEnd, 1)} / ${fmt(rssAfter, 1)} / ${fmt(rssAfterGc, 1)} MB`, 'info', '-')
  const peak = key => Math.max(...usages.map(u => u[key])) / 2 ** 20
  row('  server memory during the flood, peaks (sampled every 0.5 s): heapTotal / heapUsed / external / arrayBuffers',
    `${fmt(peak('heapTotal'), 1)} / ${fmt(peak('heapUsed'), 1)} / ${fmt(peak('external'), 1)} / ${fmt(peak('arrayBuffers'), 1)} MB (before: ${fmt(m0.usage.heapTotal / 2 ** 20, 1)} / ${fmt(m0.usage.heapUsed / 2 ** 20, 1)} / ${fmt(m0.usage.external / 2 ** 20, 1)} / ${fmt(m0.usage.arrayBuffers / 2 ** 20, 1)})`, 'info', '-')
  if (midFlood !== undefined) {
    row('  live JS heap while flooded (heapUsed after a full gc, past the middle of the flood)', `${fmt(midFlood.usage.heapUsed / 2 ** 20, 1)} MB (+${fmt((midFlood.usage.heapUsed - m0.usage.heapUsed) / 2 ** 20, 1)} MB over the baseline), ${fmt(midFlood.sockets)} flooder streams open`, 'info', '-')
  }
  row('  JS heap (heapUsed) before -> after the flood, after gc', `${fmt(m0.usage.heapUsed / 2 ** 20, 1)} -> ${fmt(m1.usage.heapUsed / 2 ** 20, 1)} MB`, 'info', '-')
  row('  flooder connections cut by the server / refused', `${fmt(stats.cuts)} of ${fmt(stats.connections)} / ${Object.entries(stats.refused).map(([k, v]) => `${fmt(v)} × ${k}`).join(', ') || 'none'}`,
    'every one cut', pass(stats.cuts >= stats.connections - config.flooders && stats.connections > 0))
  row('  junk written by the flooders', `${fmt(stats.bytes / 2 ** 20, 1)} MB (${fmt(stats.bytes / 7 / floodSeconds)} frames/s, ${fmt(stats.bytes / Math.max(1, stats.cuts) / 1024)} KiB per cut connection)`, 'info', '-')
  row(`  a well-behaved client meanwhile (127.0.0.2): socket -> snapshot, p50 / max (n=${latencies.length})`,
    `${fmt(percentile(latencies, 50), 1)} / ${fmt(latencies.at(-1) ?? NaN, 1)} ms; ${failed.length} failed${failed.length > 0 ? ` (${failed[0].error})` : ''}`,
    'served', pass(failed.length === 0 && latencies.length > 0))
  row('  server event-loop delay during the flood, p50 / p99 / max', `${fmt(delay.p50, 1)} / ${fmt(delay.p99, 1)} / ${fmt(delay.max, 1)} ms`, 'info', '-')
  row('  open WebSockets on the server after the flood', `${fmt(m1.sockets)}`, '0', pass(m1.sockets === 0))
  notes.push(`Flood: ${config.flooders} raw TCP clients (half on GET /tasks/events, half on GET /tasks/:uuid/events) upgrade, stop reading, and write 7-byte junk frames ` +
    `(${config.batch} per write, respecting their own socket's backpressure); each gets a ~100-byte error frame back. The server has the default streams options ` +
    '(hardBufferLimit 1 MiB, heartbeat 30 s, maxStreamsPerOwner 100: every flooder shares 127.0.0.1). RSS is read from /proc every 100 ms.')
} catch (err) {
  row('flood', `ERROR: ${err.message}`, '-', 'ERROR')
} finally {
  await writeFile(release, '')
  await stopServer(server.child)
  await rm(release, { force: true })
}

const output = report.markdown('fastify-task-api flood bench', [`server (bench/stream-server.js) forked, 1 pool child; flooders and probe in the bench process; 127.0.0.1`])
console.log('\n' + output)
await writeFile(new URL('./results/flood.md', import.meta.url), output)
