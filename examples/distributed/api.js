// An API node of the distributed example: the task API on the deployment's Redis, running
// no task itself (`concurrency: 0`: the workers run them), and the example's page.
// start.js runs two; by hand: REDIS_URL=redis://127.0.0.1:6379 PORT=3001 node api.js
import { readFile } from 'node:fs/promises'
import { networkInterfaces } from 'node:os'
import Fastify from 'fastify'
import taskApi from 'fastify-task-api'

const port = Number(process.env.PORT ?? 3001)
const host = process.env.HOST ?? '127.0.0.1'
// Every API node's port, this one's included: the page follows tasks on the others.
const ports = (process.env.API_PORTS ?? String(port)).split(',').map(Number)
if (!ports.includes(port)) ports.unshift(port)
const name = `api-${ports.indexOf(port) + 1}`

// The page of one node opens WebSockets on the others: a browser sends its page's origin
// with the upgrade, and the plugin refuses other origins unless `allowedOrigins` lists them.
// The names a browser may use for this machine: with HOST=0.0.0.0, its addresses too.
const hostnames = new Set(['127.0.0.1', 'localhost'])
if (host !== '0.0.0.0' && host !== '::') hostnames.add(host)
else for (const { address, family } of Object.values(networkInterfaces()).flat()) hostnames.add(family === 'IPv6' ? `[${address}]` : address)
const allowedOrigins = ports.flatMap(p => [...hostnames].map(h => `http://${h}:${p}`))

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'warn' } })
await app.register(taskApi, {
  // API nodes import the task modules too: to validate submissions against their inputs.
  tasks: [new URL('./tasks/wait.js', import.meta.url)],
  redis: { connection: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', prefix: process.env.REDIS_PREFIX ?? '{task-api-example}' },
  concurrency: 0,
  allowedOrigins,
})
const page = await readFile(new URL('./index.html', import.meta.url), 'utf8')
app.get('/', async (request, reply) => reply.type('text/html; charset=utf-8').send(page))
app.get('/nodes', async () => ({ self: name, port, nodes: ports.map((p, i) => ({ name: `api-${i + 1}`, port: p })) }))
await app.listen({ port, host })
console.log(`${name} listening on http://${host}:${port}, pid ${process.pid}`)

let closing = false
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    if (closing) return
    closing = true
    app.close().then(() => process.exit(0), (err) => {
      console.error(err)
      process.exit(1)
    })
  })
}
