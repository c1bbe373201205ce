import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import taskApi, { MemoryStore, type AuthorizeContext, type TaskApiOptions } from '../dist/index.js'
import { childExecArgv, fixture, pluginTimeout, untilRunning } from './helpers.js'

// README, Authentication, permissions and owners: the promises auth.test.ts leaves out.

const missing = '3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b'

async function serve (t: Test, options: Partial<TaskApiOptions>): Promise<{ app: FastifyInstance, base: string }> {
  const app = Fastify({ pluginTimeout })
  t.teardown(() => app.close())
  await app.register(taskApi, { tasks: [fixture('basic.ts'), fixture('control.ts')], concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 200, ...options })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, base: `127.0.0.1:${(app.server.address() as AddressInfo).port}` }
}

/** The status of a WebSocket upgrade (101 when it opened) and the body of a refusal. */
async function upgrade (url: string, headers: Record<string, string> = {}): Promise<{ status: number, body: string }> {
  const socket = new WebSocket(url, { headers })
  socket.on('error', () => {})
  return await new Promise((resolve) => {
    socket.once('open', () => {
      socket.terminate()
      resolve({ status: 101, body: '' })
    })
    socket.once('unexpected-response', (_request, response: http.IncomingMessage) => {
      let body = ''
      response.on('data', (chunk: Buffer) => { body += chunk.toString() })
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }))
    })
  })
}

/** GET an SSE route until its first event (or the end of a refusal). */
async function firstEvent (url: string, headers: Record<string, string> = {}): Promise<{ status: number, body: string }> {
  return await new Promise((resolve, reject) => {
    const request = http.get(url, { headers: { accept: 'text/event-stream', ...headers } }, (response) => {
      let body = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => {
        body += chunk
        if (response.statusCode === 200 && body.includes('data: ')) {
          request.destroy()
          resolve({ status: 200, body })
        }
      })
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }))
    })
    request.on('error', (err) => { if (!request.destroyed) reject(err) })
  })
}

t.test('authorize is asked about cancels: a refusal is 403 and the task runs on', async (t) => {
  const asked: AuthorizeContext[] = []
  const { app } = await serve(t, {
    authorize: (request, context) => {
      asked.push(context)
      return context.action !== 'cancel' || request.headers['x-role'] === 'admin'
    },
  })
  const { uuid } = await app.tasks.submit('cooperative')
  await untilRunning(app, uuid)
  const refused = await app.inject({ method: 'POST', url: `/tasks/${uuid}/cancel` })
  t.equal(refused.statusCode, 403)
  t.equal(refused.json().code, 'FST_TASK_API_FORBIDDEN')
  const cancels = asked.filter(context => context.action === 'cancel')
  t.equal(cancels.length, 1)
  t.equal(cancels[0]?.task, 'cooperative')
  t.equal(cancels[0]?.record?.uuid, uuid, 'authorize gets the stored record')
  t.equal((await app.tasks.get(uuid))?.status, 'running', 'the refused cancel changed nothing')
  const allowed = await app.inject({ method: 'POST', url: `/tasks/${uuid}/cancel`, headers: { 'x-role': 'admin' } })
  t.equal(allowed.statusCode, 200)
  t.equal((await app.tasks.wait(uuid)).status, 'cancelled')
})

t.test('another owner\'s cancel answers 404, exactly as an unknown uuid, and changes nothing', async (t) => {
  const { app } = await serve(t, { owner: request => (request.headers['x-user'] as string | undefined) ?? null })
  const created = await app.inject({ method: 'POST', url: '/tasks', headers: { 'x-user': 'ann' }, payload: { task: 'cooperative' } })
  const uuid = created.json().uuid as string
  await untilRunning(app, uuid)
  const foreign = await app.inject({ method: 'POST', url: `/tasks/${uuid}/cancel`, headers: { 'x-user': 'ben' } })
  const unknown = await app.inject({ method: 'POST', url: `/tasks/${missing}/cancel`, headers: { 'x-user': 'ben' } })
  t.equal(foreign.statusCode, 404)
  t.same(foreign.json(), { ...unknown.json(), message: (unknown.json().message as string).replace(missing, uuid) })
  t.equal((await app.tasks.get(uuid))?.status, 'running')
  const own = await app.inject({ method: 'POST', url: `/tasks/${uuid}/cancel`, headers: { 'x-user': 'ann' } })
  t.equal(own.statusCode, 200)
  t.equal((await app.tasks.wait(uuid)).status, 'cancelled')
})

t.test('authRelation "and" needs every strategy; "or" (the default) any one', async (t) => {
  const needs = (header: string) => async (request: FastifyRequest): Promise<void> => {
    if (request.headers[header] !== 'yes') throw new Error(`no ${header}`)
  }
  const auth = [needs('x-a'), needs('x-b')]
  const post = (app: FastifyInstance, headers: Record<string, string>) =>
    app.inject({ method: 'POST', url: '/tasks', headers, payload: { task: 'hello', inputs: { name: 'x' } } })
  const and = (await serve(t, { auth, authRelation: 'and', runner: 'inline' })).app
  t.equal((await post(and, { 'x-a': 'yes' })).statusCode, 401, 'one of two is not enough')
  t.equal((await post(and, { 'x-b': 'yes' })).json().message, 'no x-a')
  t.equal((await post(and, { 'x-a': 'yes', 'x-b': 'yes' })).statusCode, 201)
  const or = (await serve(t, { auth, runner: 'inline' })).app
  t.equal((await post(or, { 'x-b': 'yes' })).statusCode, 201, 'with "or" one is enough')
  t.equal((await post(or, {})).statusCode, 401)
})

t.test('allowedOrigins "*" lets any origin open the WebSockets', async (t) => {
  const { app, base } = await serve(t, { allowedOrigins: '*', runner: 'inline' })
  const { uuid } = await app.tasks.submit('hello', { name: 'x' })
  const origin = { origin: 'https://anywhere.example' }
  t.equal((await upgrade(`ws://${base}/tasks/${uuid}/events`, origin)).status, 101)
  t.equal((await upgrade(`ws://${base}/tasks/events`, origin)).status, 101, 'the multiplexed route too')
  const strict = (await serve(t, { runner: 'inline' })).base
  t.equal((await upgrade(`ws://${strict}/tasks/events`, origin)).status, 403, 'where the default refuses it')
})

t.test('streamTokens.secret shared by two instances: a token from one is honoured by the other', async (t) => {
  // Two servers over one store, as behind a load balancer; the second never saw the task run.
  const store = new MemoryStore()
  const auth = [async (request: FastifyRequest) => { if (request.headers.authorization !== 'Bearer ok') throw new Error('who are you?') }]
  const secret = 'a shared secret of 32 characters'
  const one = await serve(t, { store, auth, streamTokens: { secret } })
  const two = await serve(t, { store, auth, streamTokens: { secret }, runner: 'inline' })
  const other = await serve(t, { store, auth, streamTokens: { secret: 'another secret, as long as that one' }, runner: 'inline' })
  const unset = await serve(t, { store, auth, runner: 'inline' })
  const created = await one.app.inject({ method: 'POST', url: '/tasks', headers: { authorization: 'Bearer ok' }, payload: { task: 'hello', inputs: { name: 'x' } } })
  const uuid = created.json().uuid as string
  await one.app.tasks.wait(uuid)
  const { token } = (await one.app.inject({ url: `/tasks/${uuid}/token`, headers: { authorization: 'Bearer ok' } })).json()
  const followed = await firstEvent(`http://${two.base}/tasks/${uuid}/events?token=${token}`)
  t.equal(followed.status, 200, 'the other instance takes the token')
  t.match(followed.body, /"type":"snapshot".*"status":"succeeded"/)
  t.equal((await upgrade(`ws://${two.base}/tasks/${uuid}/events?token=${token}`)).status, 101, 'for a WebSocket too')
  for (const [name, server] of [['another secret', other], ['no secret (random per instance)', unset]] as const) {
    const refused = await firstEvent(`http://${server.base}/tasks/${uuid}/events?token=${token}`)
    t.equal(refused.status, 401, name)
    t.equal(JSON.parse(refused.body).code, 'FST_TASK_API_TOKEN_INVALID', name)
  }
})

t.test('streamTokens.ttl sets the lifetime; past it the token is refused with FST_TASK_API_TOKEN_INVALID everywhere', async (t) => {
  const ttl = 300
  const { app, base } = await serve(t, { streamTokens: { ttl }, runner: 'inline' })
  const { uuid } = await app.tasks.submit('hello', { name: 'x' })
  const before = Date.now()
  const res = await app.inject(`/tasks/${uuid}/token`)
  const after = Date.now()
  const { token, expires } = res.json() as { token: string, expires: string }
  t.ok(Date.parse(expires) >= before + ttl && Date.parse(expires) <= after + ttl, `expires ${ttl} ms after it was minted (${expires})`)
  const fresh = await firstEvent(`http://${base}/tasks/${uuid}/events?token=${token}`)
  t.equal(fresh.status, 200, 'honoured until then')
  // Nothing announces an expiry: wait until the clock is past it.
  while (Date.now() <= Date.parse(expires)) await new Promise(resolve => setTimeout(resolve, Date.parse(expires) - Date.now() + 1))
  const sse = await firstEvent(`http://${base}/tasks/${uuid}/events?token=${token}`)
  t.equal(sse.status, 401, 'SSE')
  t.same(JSON.parse(sse.body), { statusCode: 401, code: 'FST_TASK_API_TOKEN_INVALID', error: 'Unauthorized', message: 'the stream token is invalid or expired' })
  const ws = await upgrade(`ws://${base}/tasks/${uuid}/events?token=${token}`)
  t.equal(ws.status, 401, 'WebSocket')
  t.equal(JSON.parse(ws.body).code, 'FST_TASK_API_TOKEN_INVALID')
  const socket = new WebSocket(`ws://${base}/tasks/events`)
  await once(socket, 'open')
  socket.send(JSON.stringify({ type: 'subscribe', uuid, token }))
  const [data] = await once(socket, 'message') as [Buffer]
  t.same(JSON.parse(data.toString()), { type: 'error', uuid, message: 'the stream token is invalid or expired' }, 'a multiplexed subscribe')
  socket.terminate()
})
