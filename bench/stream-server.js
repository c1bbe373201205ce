// Forked by bench/streams.js (with --expose-gc): a Fastify server with the plugin and the
// stream bench tasks. Listens on 127.0.0.1, port 0, reports the port over IPC (serve.js),
// and answers these requests, each carrying an `id` that its reply repeats:
//   { type: 'submit', task, inputs }   -> { uuid }          submits, and times each of the
//                                                            task's progress events as this
//                                                            process publishes them
//   { type: 'wait', uuid }             -> { task, publish } the final state, and each progress
//                                                            event's value and setProgress ->
//                                                            publish latency (ms)
//   { type: 'memory' }                 -> { usage, sockets } process.memoryUsage() after gc,
//                                                            and the open WebSockets
import Fastify from 'fastify'
import taskApi from 'fastify-task-api'
import { serve } from './serve.js'

const app = Fastify({ logger: false })
await app.register(taskApi, {
  tasks: [new URL('./stream-tasks.js', import.meta.url)],
  concurrency: Number(process.env.BENCH_CONCURRENCY ?? 2),
  runner: 'process',
  progressInterval: Number(process.env.BENCH_PROGRESS_INTERVAL ?? 50),
  execArgv: [],
})

/** Publish-time latencies per task, collected by a listener of this process. */
const published = new Map()

async function settleAndGc () {
  for (let i = 0; i < 4; i++) {
    await new Promise(resolve => setImmediate(resolve))
    global.gc?.()
  }
}

const handlers = {
  async submit ({ task, inputs }) {
    const record = await app.tasks.submit(task, inputs)
    const publish = { values: [], latencies: [] }
    published.set(record.uuid, publish)
    // Subscribed before any client: runs first on each event, before the fan-out.
    const unsubscribe = app.tasks.subscribe(record.uuid, (event) => {
      if (event.type === 'progress' && event.progress !== null) {
        publish.values.push(event.progress)
        publish.latencies.push(performance.timeOrigin + performance.now() - event.progress)
      }
      if (event.type === 'status' && event.task !== undefined) unsubscribe()
    })
    return { uuid: record.uuid }
  },
  async wait ({ uuid }) {
    const task = await app.tasks.wait(uuid)
    const publish = published.get(uuid) ?? { values: [], latencies: [] }
    published.delete(uuid)
    return { task, publish }
  },
  async memory () {
    await settleAndGc()
    return { usage: process.memoryUsage(), sockets: app.websocketServer.clients.size }
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
