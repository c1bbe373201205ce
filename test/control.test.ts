import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import WebSocket from 'ws'
import { MemoryStore } from '../dist/index.js'
import { build, childPids, exists, fixture, startWitness, until, untilRunning } from './helpers.js'

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

t.test('cancel a task that ignores its signal: its signal is aborted, then after cancelGrace its process gets SIGTERM', async (t) => {
  const app = await build(t, { tasks: [...tasks, fixture('signals.ts')], cancelGrace: 200 })
  const witness = await startWitness(t, app, { sigterm: 'die' })
  await app.tasks.cancel(witness.uuid)
  const done = await app.tasks.wait(witness.uuid)
  t.equal(done.status, 'cancelled')
  t.equal(done.error, 'cancelled; it did not end on its signal, so its process was stopped after cancelGrace (200 ms)', 'the record says why it took the grace')
  await until('the stopped child to leave the process table', () => !exists(witness.pid))
  t.same(witness.log(), ['abort', 'SIGTERM'], 'first the signal, then SIGTERM, which it died of (no exit of its own)')
  t.equal((await app.tasks.wait((await app.tasks.submit('nap', { ms: 1 })).uuid)).status, 'succeeded', 'the next task succeeds')
  t.equal(childPids().length, 1, 'no process left over')
  t.notOk(childPids().includes(witness.pid), 'in a fresh child')
})

t.test('a cancel that comes after the task was handed to a child but before the child acknowledged it still stops it', async (t) => {
  // The child is stopped (SIGSTOP) when the task is handed to it, so its acknowledgement
  // comes only after the cancel: the acknowledgement must not undo the cancel's stop timers.
  const app = await build(t, { tasks, concurrency: 1, cancelGrace: 1000 })
  const [child] = childPids()
  process.kill(child as number, 'SIGSTOP')
  const task = await app.tasks.submit('stubborn')
  await until('the task to be handed to the child', () => app.tasks.stats().running === 1)
  t.equal((await app.tasks.get(task.uuid))?.status, 'pending', 'not acknowledged yet')
  await app.tasks.cancel(task.uuid)
  process.kill(child as number, 'SIGCONT')
  await until('the acknowledgement', async () => (await app.tasks.get(task.uuid))?.status !== 'pending')
  const done = await app.tasks.wait(task.uuid)
  t.equal(done.status, 'cancelled', 'stopped after cancelGrace, although the acknowledgement came after the cancel')
  t.equal(done.started === null ? 'never started' : 'started', 'started', 'it had started')
  await until('the stopped child to leave the process table', () => !exists(child as number))
})

t.test('a pending task leaves the queue at once and never runs', async (t) => {
  const app = await build(t, { tasks })
  const blocker = await app.tasks.submit('cooperative')
  const queued = await app.tasks.submit('nap', { ms: 1 })
  t.same(app.tasks.stats(), { queued: 1, running: 1, subscribers: 0, streams: 0 })
  const res = await app.inject({ method: 'POST', url: `/tasks/${queued.uuid}/cancel/` })
  t.equal(res.statusCode, 200)
  t.equal(res.json().status, 'cancelled', 'the answer already says cancelled')
  t.equal(res.json().started, null, 'it never started')
  t.equal(app.tasks.stats().queued, 0)
  await app.tasks.cancel(blocker.uuid)
  t.equal((await app.tasks.wait(blocker.uuid)).status, 'cancelled')
  const after = await app.tasks.get(queued.uuid)
  t.equal(after?.status, 'cancelled')
  t.equal(after?.started, null, 'it never ran, even once the worker was free')
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
  t.match(done.error, /^timed out after 200 ms; it did not end on its signal, so its process was stopped after cancelGrace \(100 ms\): \d+ ms in all$/)
})

t.test('maxQueued: past it, 429 with Retry-After and no record', async (t) => {
  const store = new MemoryStore()
  const app = await build(t, { tasks, maxQueued: 1, store })
  await app.tasks.submit('cooperative')
  await app.tasks.submit('nap', { ms: 1 })
  t.same(app.tasks.stats(), { queued: 1, running: 1, subscribers: 0, streams: 0 })
  const res = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'nap', inputs: { ms: 1 } } })
  t.equal(res.statusCode, 429)
  t.equal(res.json().code, 'FST_TASK_API_QUEUE_FULL')
  t.equal(res.json().message, 'too many tasks waiting (at most 1): try again later')
  t.equal(res.headers['retry-after'], '1')
  t.equal(store.size, 2, 'no record left behind')
  await t.rejects(app.tasks.submit('nap', { ms: 1 }), { code: 'FST_TASK_API_QUEUE_FULL', statusCode: 429 })
  t.equal(store.size, 2)
})

t.test('the cancelled status is streamed and ends the stream', async (t) => {
  const app = await build(t, { tasks })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const task = await app.tasks.submit('cooperative')
  await untilRunning(app, task.uuid)
  const socket = new WebSocket(`ws://127.0.0.1:${(app.server.address() as AddressInfo).port}/tasks/${task.uuid}/events`)
  const frames: Array<{ type: string, status?: string, task?: { status: string } }> = []
  const snapshot = new Promise<void>((resolve) => {
    socket.on('message', (data) => {
      frames.push(JSON.parse(data.toString()) as { type: string })
      if (frames.length === 1) resolve()
    })
  })
  await snapshot
  t.equal(frames[0]?.type, 'snapshot')
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
