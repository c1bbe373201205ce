// Forked by bench/run.js: a Fastify server with the plugin (noop task, one child).
// Listens on 127.0.0.1, port 0, and reports the port over IPC.
import Fastify from 'fastify'
import taskApi from 'fastify-task-api'
import { serve } from './serve.js'

const app = Fastify({ logger: false })
await app.register(taskApi, {
  tasks: [new URL('./tasks.js', import.meta.url)],
  concurrency: 1,
  runner: 'process',
})
await serve(app, () => ({ stats: app.tasks.stats() }))
