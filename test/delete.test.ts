import t from 'tap'
import WebSocket from 'ws'
import type { AddressInfo } from 'node:net'
import { build, fixture, submit, untilRunning } from './helpers.js'

// README, REST API: DELETE /tasks/:uuid and app.tasks.delete.

const tasks = [fixture('basic.ts'), fixture('control.ts')]

t.test('DELETE removes a finished task: 204, then 404 everywhere; a live one answers 409 and runs on', async (t) => {
  const app = await build(t, { tasks, concurrency: 1, list: true })
  const done = (await submit(app, 'hello', { name: 'x', count: 1 })).json().uuid as string
  await app.tasks.wait(done)
  const live = (await submit(app, 'cooperative', {})).json().uuid as string
  await untilRunning(app, live)

  const refused = await app.inject({ method: 'DELETE', url: `/tasks/${live}` })
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), { code: 'FST_TASK_API_TASK_LIVE', message: `task ${live} is still pending or running: cancel it, and delete it once it has ended` })
  t.equal((await app.tasks.get(live))?.status, 'running', 'the live task runs on')
  await t.rejects(app.tasks.delete(live), { code: 'FST_TASK_API_TASK_LIVE' }, 'app.tasks.delete refuses it too')

  const deleted = await app.inject({ method: 'DELETE', url: `/tasks/${done}` })
  t.equal(deleted.statusCode, 204)
  t.equal(deleted.body, '', 'no body')
  t.equal((await app.inject(`/tasks/${done}`)).statusCode, 404, 'GET answers 404')
  t.equal((await app.inject({ method: 'DELETE', url: `/tasks/${done}/` })).statusCode, 404, 'a second DELETE too (trailing slash spelling)')
  t.equal((await app.inject({ method: 'POST', url: `/tasks/${done}/cancel` })).statusCode, 404, 'cancel too')
  t.notOk(((await app.inject('/tasks')).json().tasks as Array<{ uuid: string }>).some(task => task.uuid === done), 'the list no longer has it')

  await app.tasks.cancel(live)
  t.equal((await app.tasks.wait(live)).status, 'cancelled')
  t.equal(await app.tasks.delete(live), true, 'once it has ended, it can go')
  t.equal(await app.tasks.delete(live), false, 'app.tasks.delete: false for an unknown uuid')
  t.equal(await app.tasks.delete('not-a-uuid'), false)
})

t.test('a stream opened after the delete answers 404; a resume too', async (t) => {
  const app = await build(t, { tasks, concurrency: 1 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const { uuid } = await app.tasks.submit('hello', { name: 'x', count: 2 })
  // Followed, so that the server holds its events for resuming clients.
  const socket = new WebSocket(`ws://127.0.0.1:${port}/tasks/${uuid}/events`)
  const closed = new Promise<number>(resolve => socket.on('close', code => resolve(code)))
  t.equal(await closed, 1000, 'the stream ended with the task, after its final status')
  t.equal(await app.tasks.delete(uuid), true)
  for (const headers of [{ accept: 'text/event-stream' }, { accept: 'text/event-stream', 'last-event-id': '1' }] as Array<Record<string, string>>) {
    const response = await fetch(`http://127.0.0.1:${port}/tasks/${uuid}/events`, { headers })
    t.equal(response.status, 404, `SSE ${JSON.stringify(headers)}`)
    await response.body?.cancel()
  }
  const refused = await new Promise<number>((resolve) => {
    const late = new WebSocket(`ws://127.0.0.1:${port}/tasks/${uuid}/events?since=1`)
    late.on('unexpected-response', (_request, response) => resolve(response.statusCode ?? 0))
    late.on('open', () => resolve(101))
    late.on('error', () => {})
  })
  t.equal(refused, 404, 'WebSocket resume')
})

t.test('DELETE is owner-scoped, asks authorize with action "delete", and refuses other sites', async (t) => {
  const asked: string[] = []
  const app = await build(t, {
    tasks,
    concurrency: 1,
    owner: request => (request.headers['x-user'] as string | undefined) ?? null,
    authorize: (request, { action }) => {
      asked.push(action)
      return !(action === 'delete' && request.headers['x-user'] === 'bob')
    },
  })
  const mine = (await app.inject({ method: 'POST', url: '/tasks', headers: { 'x-user': 'ann' }, payload: { task: 'hello', inputs: { name: 'a', count: 1 } } })).json().uuid as string
  const bobs = (await app.inject({ method: 'POST', url: '/tasks', headers: { 'x-user': 'bob' }, payload: { task: 'hello', inputs: { name: 'b', count: 1 } } })).json().uuid as string
  await app.tasks.wait(mine)
  await app.tasks.wait(bobs)

  const other = await app.inject({ method: 'DELETE', url: `/tasks/${mine}`, headers: { 'x-user': 'bob' } })
  t.equal(other.statusCode, 404, 'another owner\'s task: 404, exactly as an unknown one')
  t.equal(other.json().code, 'FST_TASK_API_TASK_NOT_FOUND')
  const forbidden = await app.inject({ method: 'DELETE', url: `/tasks/${bobs}`, headers: { 'x-user': 'bob' } })
  t.equal(forbidden.statusCode, 403, 'authorize said no')
  t.equal(forbidden.json().code, 'FST_TASK_API_FORBIDDEN')
  t.ok(asked.includes('delete'), 'authorize was asked about action "delete"')
  const crossSite = await app.inject({ method: 'DELETE', url: `/tasks/${mine}`, headers: { 'x-user': 'ann', origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' } })
  t.equal(crossSite.statusCode, 403, 'a page of another site')
  t.equal(crossSite.json().code, 'FST_TASK_API_ORIGIN_FORBIDDEN')
  t.equal((await app.tasks.get(mine))?.status, 'succeeded', 'none of them deleted anything')
  t.equal((await app.tasks.get(bobs))?.status, 'succeeded')
  t.equal((await app.inject({ method: 'DELETE', url: `/tasks/${mine}`, headers: { 'x-user': 'ann' } })).statusCode, 204, 'the owner deletes it')
})
