// Forked by bench/streams.js (with --expose-gc): a Fastify server with the plugin and the
// stream bench tasks. Listens on 127.0.0.1, port 0, reports the port over IPC (serve.js),
// and answers these requests, each carrying an `id` that its reply repeats:
//   { type: 'submit', task, inputs }   -> { uuid }          submits, and times each of the
//                                                            task's progress events as this
//                                                            process publishes them
//   { type: 'tail', uuid }             -> {}                subscribes a last listener: from now
//                                                            on each event's fan-out is timed
//   { type: 'wait', uuid }             -> { task, publish } the final state, and each progress
//                                                            event's value, setProgress ->
//                                                            publish latency (ms); once a tail
//                                                            is in, each progress event's
//                                                            fan-out span (ms), and the final
//                                                            status's
//                                                            { span, turns, turn, cpu, longestGc }:
//                                                            turn and cpu are p50 / p99 / max of
//                                                            each turn's wall-clock and CPU ms
//   { type: 'memory' }                 -> { usage, sockets } process.memoryUsage() after gc,
//                                                            and the open WebSockets (or
//                                                            event streams)
//   { type: 'usage' }                  -> { usage }          process.memoryUsage() now, no gc
//   { type: 'trace', on }              -> {}                 from now on (or no longer), times the
//                                                            sends of progress frames on sockets
//                                                            opened meanwhile: 'wait' then also
//                                                            returns `sends` [value, first, last,
//                                                            count] per progress event
//   { type: 'loop', reset }            -> { delay }          event-loop delay percentiles (ms)
//                                                            since the last reset
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import websocket from '@fastify/websocket'
import Fastify from 'fastify'
import taskApi from 'fastify-task-api'
import { serve } from './serve.js'

const app = Fastify({ logger: false })
// Registered here, before the plugin, so that this script can reach app.websocketServer
// (to trace sends); the plugin then uses it, with the options the plugin would give it.
// BENCH_PLUGIN_WEBSOCKET=1 leaves it to the plugin, as most apps do (no tracing then).
const ownWebsocket = process.env.BENCH_PLUGIN_WEBSOCKET !== '1'
if (ownWebsocket) await app.register(websocket, { options: { maxPayload: 4096, allowSynchronousEvents: false } })
await app.register(taskApi, {
  tasks: [new URL('./stream-tasks.js', import.meta.url)],
  concurrency: Number(process.env.BENCH_CONCURRENCY ?? 2),
  runner: 'process',
  progressInterval: Number(process.env.BENCH_PROGRESS_INTERVAL ?? 50),
  execArgv: [],
  // Every bench client comes from 127.0.0.1: the per-owner cap would stop the idle step at
  // 100 sockets. BENCH_MAX_STREAMS sets it (the flood bench keeps the default, 100).
  streams: { maxStreamsPerOwner: Number(process.env.BENCH_MAX_STREAMS ?? 0) },
})

/** Publish-time latencies per task, collected by a listener of this process. */
const published = new Map()

// Send tracing, for the fan-out step: every subscriber of an event is sent the same Buffer
// (the plugin serializes each event once), so the Buffer identifies the event. A Map
// lookup per send; sockets opened while tracing is off are not wrapped at all.
let tracing = false
const sends = new Map()
if (ownWebsocket) app.websocketServer.on('connection', (socket) => {
  if (!tracing) return
  const send = socket.send
  socket.send = function (data, ...rest) {
    if (Buffer.isBuffer(data)) {
      const at = performance.timeOrigin + performance.now()
      const entry = sends.get(data)
      if (entry !== undefined) {
        entry[2] = at
        entry[3]++
      } else if (data.includes('"type":"progress"')) {
        sends.set(data, [JSON.parse(data).progress, at, at, 1])
      }
    }
    return send.call(this, data, ...rest)
  }
})

// Garbage-collection pauses, to tell them from the work of a turn: the longest since reset.
let longestGc = 0
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) longestGc = Math.max(longestGc, entry.duration)
}).observe({ entryTypes: ['gc'] })

const loopDelay = monitorEventLoopDelay({ resolution: 5 })
loopDelay.enable()

async function settleAndGc () {
  for (let i = 0; i < 4; i++) {
    await new Promise(resolve => setImmediate(resolve))
    global.gc?.()
  }
}

const handlers = {
  async submit ({ task, inputs }) {
    const record = await app.tasks.submit(task, inputs)
    const publish = { values: [], latencies: [], loops: [], final: undefined, fanouts: new Map() }
    published.set(record.uuid, publish)
    // Subscribed before any client: runs first on each event, before the fan-out. Once a
    // tail listener is subscribed (after the clients: it runs last), each event's fan-out is
    // timed from here to the tail; the final status's also turn by turn.
    const unsubscribe = app.tasks.subscribe(record.uuid, (event) => {
      const at = performance.now()
      if (event.type === 'progress' && event.progress !== null) {
        publish.values.push(event.progress)
        publish.latencies.push(performance.timeOrigin + at - event.progress)
      }
      if (publish.tail) {
        const fanout = { at, last: at, gaps: [], cpuLast: 0, cpus: [], done: false }
        publish.fanouts.set(event.seq, fanout)
      }
      // The final status's fan-out is watched turn by turn. (Not the progress events': a
      // ticker keeps the event loop spinning, which would slow what it measures.)
      const fanout = publish.fanouts.get(event.seq)
      if (fanout !== undefined && event.type === 'status' && event.task !== undefined) {
        // Wall-clock gaps between turns include the time the OS gave the CPU to other
        // processes; the CPU time this process used between two turns does not.
        const cpu = process.cpuUsage()
        fanout.cpuLast = cpu.user + cpu.system
        longestGc = 0
        const tick = () => {
          const t = performance.now()
          const c = process.cpuUsage()
          fanout.gaps.push(t - fanout.last)
          fanout.cpus.push((c.user + c.system - fanout.cpuLast) / 1000)
          fanout.last = t
          fanout.cpuLast = c.user + c.system
          if (!fanout.done) setImmediate(tick)
        }
        setImmediate(tick)
      }
      if (event.type === 'status' && event.task !== undefined) unsubscribe()
    })
    return { uuid: record.uuid }
  },
  /** Subscribes the tail listener of a task: call it once every client is subscribed. */
  async tail ({ uuid }) {
    const publish = published.get(uuid)
    publish.tail = true
    publish.finalSeen = new Promise((resolve) => { publish.sawFinal = resolve })
    const unsubscribe = app.tasks.subscribe(uuid, (event) => {
      const fanout = publish.fanouts.get(event.seq)
      if (fanout === undefined) return
      publish.fanouts.delete(event.seq)
      fanout.done = true
      const t = performance.now()
      const c = process.cpuUsage()
      const gaps = [...fanout.gaps, t - fanout.last].sort((a, b) => a - b)
      const cpus = [...fanout.cpus, (c.user + c.system - fanout.cpuLast) / 1000].sort((a, b) => a - b)
      const q = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.ceil(p / 100 * sorted.length) - 1)]
      const result = {
        span: t - fanout.at,
        turns: gaps.length,
        turn: { p50: q(gaps, 50), p99: q(gaps, 99), max: gaps.at(-1) },
        cpu: { p50: q(cpus, 50), p99: q(cpus, 99), max: cpus.at(-1) },
        longestGc,
      }
      if (event.type === 'progress') publish.loops.push(result.span)
      if (event.type === 'status' && event.task !== undefined) {
        publish.final = result
        unsubscribe()
        publish.sawFinal()
      }
    })
    return {}
  },
  async wait ({ uuid }) {
    const task = await app.tasks.wait(uuid)
    // A task that ended before this request came reads as ended at once, while the fan-out
    // of its final status may still be going on: wait for the tail.
    await published.get(uuid)?.finalSeen
    await new Promise(resolve => setImmediate(resolve))
    const { fanouts, finalSeen, sawFinal, ...publish } = published.get(uuid) ?? { values: [], latencies: [], loops: [] }
    published.delete(uuid)
    const traced = [...sends.values()]
    sends.clear()
    return { task, publish, sends: traced }
  },
  async trace ({ on }) {
    tracing = on
    return {}
  },
  async loop ({ reset }) {
    const q = p => loopDelay.percentile(p) / 1e6
    const delay = { p50: q(50), p99: q(99), max: loopDelay.max / 1e6 }
    if (reset) loopDelay.reset()
    return { delay }
  },
  async usage () {
    return { usage: process.memoryUsage() }
  },
  async memory () {
    await settleAndGc()
    return { usage: process.memoryUsage(), sockets: ownWebsocket ? app.websocketServer.clients.size : app.tasks.stats().streams }
  },
}

process.on('message', (message) => {
  const handler = handlers[message?.type]
  if (handler === undefined || message.id === undefined) return
  handler(message).then(
    result => process.send({ type: 'reply', id: message.id, ...result }),
    err => process.send({ type: 'reply', id: message.id, error: err.message })
  )
})

await serve(app)
