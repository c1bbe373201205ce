// Forked by bench/run.js: a Fastify server with the plugin (noop task, one child).
// Listens on 127.0.0.1, port 0, and reports the port over IPC.
import Fastify from 'fastify'
import taskApi from 'fastify-task-api'

const app = Fastify({ logger: false })
await app.register(taskApi, {
  tasks: [new URL('./tasks.js', import.meta.url)],
  concurrency: 1,
  runner: 'process',
})
await app.listen({ host: '127.0.0.1', port: 0 })

let closing = false
async function shutdown () {
  if (closing) return
  closing = true
  const stats = app.tasks.stats()
  try { await app.close() } finally {
    process.send?.({ type: 'closed', stats }, () => process.exit(0))
    setTimeout(() => process.exit(0), 1000).unref()
  }
}
process.on('SIGTERM', shutdown)
process.on('message', (m) => {
  if (m?.type === 'stop') shutdown()
  // CPU time of this process (not of task children), for µs per request.
  if (m?.type === 'cpu') process.send({ type: 'cpu', usage: process.cpuUsage() })
})
process.on('disconnect', () => process.exit(0))
process.send({ type: 'listening', port: app.server.address().port })
