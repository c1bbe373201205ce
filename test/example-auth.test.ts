import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import WebSocket from 'ws'
// @ts-expect-error the examples are plain JavaScript, without type declarations
import { build as buildBearer } from '../examples/auth/bearer.js'
// @ts-expect-error the examples are plain JavaScript, without type declarations
import { build as buildCookie } from '../examples/auth/cookie.js'
import { childExecArgv, pluginTimeout } from './helpers.js'

const quiet = { logger: false, fastify: { pluginTimeout }, taskApi: { concurrency: 1, execArgv: childExecArgv } }

async function firstFrame (url: string, headers: Record<string, string> = {}): Promise<{ type: string, task?: { status: string } }> {
  const socket = new WebSocket(url, { headers })
  const [data] = await once(socket, 'message') as [Buffer]
  socket.terminate()
  return JSON.parse(data.toString()) as { type: string }
}

t.test('examples/auth/bearer.js: tokens, owners, a stream token for the browser', async (t) => {
  const app: FastifyInstance = await buildBearer(quiet)
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `127.0.0.1:${(app.server.address() as AddressInfo).port}`
  const alice = { authorization: 'Bearer demo-alice' }
  const bob = { authorization: 'Bearer demo-bob' }
  t.equal((await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'wait', inputs: { seconds: 1 } } })).statusCode, 401)
  const created = await app.inject({ method: 'POST', url: '/tasks', headers: alice, payload: { task: 'wait', inputs: { seconds: 1 } } })
  t.equal(created.statusCode, 201)
  const uuid = created.json().uuid as string
  t.equal((await app.inject({ url: `/tasks/${uuid}`, headers: bob })).statusCode, 404, "bob cannot see alice's task")
  t.equal((await app.inject({ method: 'POST', url: '/tasks', headers: bob, payload: { task: 'wait', inputs: { seconds: 120 } } })).statusCode, 403, 'only admins run long tasks')
  const { token } = (await app.inject({ url: `/tasks/${uuid}/token`, headers: alice })).json()
  const frame = await firstFrame(`ws://${base}/tasks/${uuid}/events?token=${token}`)
  t.equal(frame.type, 'snapshot', 'the browser follows the task with its stream token')
  t.equal((await app.tasks.wait(uuid)).status, 'succeeded')
})

t.test('examples/auth/cookie.js: a session cookie, same-origin WebSockets only', async (t) => {
  const app: FastifyInstance = await buildCookie(quiet)
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `127.0.0.1:${(app.server.address() as AddressInfo).port}`
  t.equal((await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'wait', inputs: { seconds: 1 } } })).statusCode, 401)
  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ann' } })
  const cookie = (login.headers['set-cookie'] as string).split(';')[0] as string
  const created = await app.inject({ method: 'POST', url: '/tasks', headers: { cookie }, payload: { task: 'wait', inputs: { seconds: 1 } } })
  t.equal(created.statusCode, 201)
  const uuid = created.json().uuid as string
  const other = (((await app.inject({ method: 'POST', url: '/login', payload: { user: 'ben' } })).headers['set-cookie'] as string).split(';')[0]) as string
  t.equal((await app.inject({ url: `/tasks/${uuid}`, headers: { cookie: other } })).statusCode, 404, "ben cannot see ann's task")
  t.equal((await app.inject({ url: `/tasks/${uuid}`, headers: { cookie: 'session=ann' } })).statusCode, 401, 'an unsigned cookie is refused')
  const frame = await firstFrame(`ws://${base}/tasks/${uuid}/events`, { cookie, origin: `http://${base}` })
  t.equal(frame.type, 'snapshot', 'the page follows its task with the cookie alone')
  const hijack = new WebSocket(`ws://${base}/tasks/${uuid}/events`, { headers: { cookie, origin: 'https://evil.example' } })
  hijack.on('error', () => {})
  const [, response] = await once(hijack, 'unexpected-response') as [unknown, { statusCode: number }]
  t.equal(response.statusCode, 403, 'another site cannot ride the cookie into a socket')
  t.equal((await app.tasks.wait(uuid)).status, 'succeeded')
})
