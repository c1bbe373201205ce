import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import WebSocket from 'ws'
import { build, childPids, fixture, untilRunning } from './helpers.js'

const tasks = [fixture('control.ts')]


t.test('cancel a running task that honours its signal: cancelled, and its child is kept', async (t) => {
  const app = await build(t, { tasks })
  const pids = childPids()
  const task = await app.tasks.submit('cooperative')
  await untilRunning(app, task.uuid)
  const res = await app.inject({ method: 'POST', url: `/tasks/${task.uuid}/cancel` })
  t.equal(res.statusCode, 200)
  const done = await app.tasks.wait(task.uuid)
  t.equal(done.status, 'cancelled')
  t.equal(done.error, null)
  t.same(childPids(), pids, 'the child ended the task itself and was not replaced')
  const next = await app.tasks.wait((await app.tasks.submit('nap', { ms: 1 })).uuid)
  t.equal(next.status, 'succeeded')
})

t.test('cancel a task that ignores its signal: SIGTERM after cancelGrace', async (t) => {
  const app = await build(t, { tasks, cancelGrace: 200 })
  const task = await app.tasks.submit('stubborn')
  await untilRunning(app, task.uuid)
  const started = Date.now()
  await app.tasks.cancel(task.uuid)
  const done = await app.tasks.wait(task.uuid)
  t.equal(done.status, 'cancelled')
  t.ok(Date.now() - started < 10_000, 'it did not wait for the task')
  t.equal((await app.tasks.wait((await app.tasks.submit('nap', { ms: 1 })).uuid)).status, 'succeeded', 'the next task succeeds')
  t.equal(childPids().length, 1, 'no process left over')
})

t.test('a pending task leaves the queue at once and never runs', async (t) => {
  const app = await build(t, { tasks })
  const blocker = await app.tasks.submit('nap', { ms: 300 })
  const queued = await app.tasks.submit('nap', { ms: 1 })
  const res = await app.inject({ method: 'POST', url: `/tasks/${queued.uuid}/cancel/` })
  t.equal(res.statusCode, 200)
  t.equal(res.json().status, 'cancelled', 'the answer already says cancelled')
  t.equal(res.json().started, null, 'it never started')
  t.equal(app.tasks.stats().queued, 0)
  t.equal((await app.tasks.wait(blocker.uuid)).status, 'succeeded')
})

t.test('cancelling a finished task changes nothing; an unknown one is 404', async (t) => {
  const app = await build(t, { tasks })
  const done = await app.tasks.wait((await app.tasks.submit('nap', { ms: 1 })).uuid)
  const res = await app.inject({ method: 'POST', url: `/tasks/${done.uuid}/cancel` })
  t.equal(res.statusCode, 200)
  t.same(res.json(), done)
  t.equal((await app.inject({ method: 'POST', url: '/tasks/3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b/cancel' })).statusCode, 404)
  t.equal(await app.tasks.cancel('3f2a1b6e-8c4d-4e5f-9a0b-1c2d3e4f5a6b'), undefined)
})

t.test('the timeout option applies to tasks without their own', async (t) => {
  const app = await build(t, { tasks, timeout: 200, cancelGrace: 100 })
  const done = await app.tasks.wait((await app.tasks.submit('nap', { ms: 30_000 })).uuid)
  t.equal(done.status, 'failed')
  t.equal(done.error, 'timed out after 200 ms')
})

t.test('maxQueued: past it, 429 with Retry-After and no record', async (t) => {
  const app = await build(t, { tasks, maxQueued: 1, list: true })
  await app.tasks.submit('nap', { ms: 300 })
  await app.tasks.submit('nap', { ms: 1 })
  const before = (await app.inject('/tasks')).json().tasks.length
  const res = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'nap', inputs: { ms: 1 } } })
  t.equal(res.statusCode, 429)
  t.equal(res.json().code, 'FST_TASK_API_QUEUE_FULL')
  t.equal(res.headers['retry-after'], '1')
  t.equal((await app.inject('/tasks')).json().tasks.length, before, 'no record left behind')
  await t.rejects(app.tasks.submit('nap', { ms: 1 }), { code: 'FST_TASK_API_QUEUE_FULL', statusCode: 429 })
})

t.test('the cancelled status is streamed and ends the stream', async (t) => {
  const app = await build(t, { tasks })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const task = await app.tasks.submit('cooperative')
  await untilRunning(app, task.uuid)
  const socket = new WebSocket(`ws://127.0.0.1:${(app.server.address() as AddressInfo).port}/tasks/${task.uuid}/events`)
  const frames: Array<{ type: string, status?: string, task?: { status: string } }> = []
  socket.on('message', data => frames.push(JSON.parse(data.toString()) as { type: string }))
  await once(socket, 'open')
  await new Promise(resolve => setTimeout(resolve, 50))
  await app.tasks.cancel(task.uuid)
  const [code] = await once(socket, 'close') as [number]
  t.equal(code, 1000)
  t.same(frames.at(-1)?.task?.status, 'cancelled')
  t.equal(frames.at(-1)?.status, 'cancelled')
})

t.test('inline runner: cancel through the signal', async (t) => {
  const app = await build(t, { tasks, runner: 'inline', cancelGrace: 100 })
  const cooperative = await app.tasks.submit('cooperative')
  await untilRunning(app, cooperative.uuid)
  await app.tasks.cancel(cooperative.uuid)
  t.equal((await app.tasks.wait(cooperative.uuid)).status, 'cancelled')
  const stubborn = await app.tasks.submit('stubborn')
  await untilRunning(app, stubborn.uuid)
  await app.tasks.cancel(stubborn.uuid)
  t.equal((await app.tasks.wait(stubborn.uuid)).status, 'cancelled', 'given up on after the grace period')
})
