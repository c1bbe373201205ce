import http from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import t from 'tap'
import taskApi, { MemoryStore } from '../dist/index.js'
import { childExecArgv, fixture, pluginTimeout } from './helpers.js'

t.test('a submission in flight when the server starts closing answers 503 FST_TASK_API_RUNNER_CLOSED over HTTP and creates nothing', async (t) => {
  const store = new MemoryStore()
  let entered!: () => void
  const inAuth = new Promise<void>((resolve) => { entered = resolve })
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  const app = Fastify({ pluginTimeout })
  await app.register(taskApi, {
    tasks: [fixture('basic.ts')],
    concurrency: 1,
    execArgv: childExecArgv,
    store,
    // Holds the request between authentication and the handler while the server starts closing.
    auth: [async () => {
      entered()
      await gate
    }],
  })
  let closing!: () => void
  const closingStarted = new Promise<void>((resolve) => { closing = resolve })
  // Registered after the plugin's own preClose hook, so it runs after it.
  app.addHook('preClose', async () => { closing() })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo

  const answer = new Promise<{ status: number, body: string }>((resolve, reject) => {
    const request = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/tasks', headers: { 'content-type': 'application/json' } }, (response) => {
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { body += chunk })
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }))
    })
    request.on('error', reject)
    request.end(JSON.stringify({ task: 'hello', inputs: { name: 'late' } }))
  })
  await inAuth
  const closed = app.close()
  await closingStarted
  release()
  const { status, body } = await answer
  t.equal(status, 503)
  t.same(JSON.parse(body), { statusCode: 503, code: 'FST_TASK_API_RUNNER_CLOSED', error: 'Service Unavailable', message: 'the task runner is closed' })
  await closed
  t.equal(store.size, 0, 'nothing was created')
})
