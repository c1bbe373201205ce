import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { MemoryStore, type TaskRecord } from '../dist/index.js'
import { SqliteStore } from '../dist/store/sqlite.js'
import { build, fixture, untilRunning } from './helpers.js'
import { newRecord } from './store-contract.js'

/*
 * README, Durability: restart recovery. A store holds what a server that stopped left
 * behind (pending and running records, written as that server wrote them); a new server
 * on the same store picks them up. The SIGKILL test with a SQLite file is in
 * restart.test.ts; this one checks each rule on its own, in-process.
 */

const interrupted = 'interrupted: the server stopped while the task was running'

/** A record a stopped server left behind: task `once`, created a minute ago, then `fields`. */
function leftBehind (fields: Partial<TaskRecord>): TaskRecord {
  return newRecord({ task: 'once', inputs: { n: 7 }, created: new Date(Date.now() - 60_000).toISOString(), ...fields })
}

t.test('a restart runs pending tasks, retries interrupted ones with retries left, fails the others; seq goes on', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-recovery-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const runLog = join(dir, 'runs.log')
  const started = new Date(Date.now() - 30_000).toISOString()
  const records = {
    pending: leftBehind({ seq: 0 }),
    retryWaiting: leftBehind({ task: 'again', attempt: 1, error: 'attempt 1 failed', seq: 4, inputs: { n: 2 } }),
    runningOnce: leftBehind({ status: 'running', attempt: 1, started, progress: 3, target: 10, seq: 6, messages: ['half way'] }),
    runningAgain: leftBehind({ task: 'again', status: 'running', attempt: 1, started, seq: 3, inputs: { n: 3 } }),
    runningLast: leftBehind({ task: 'again', status: 'running', attempt: 3, started, seq: 9, inputs: { n: 4 } }),
    unregistered: leftBehind({ task: 'gone', seq: 2 }),
    finished: leftBehind({ status: 'succeeded', attempt: 1, started, finished: started, outputs: { n: 1 }, seq: 5 }),
  }
  const store = new MemoryStore()
  for (const record of Object.values(records)) await store.create(structuredClone(record))

  const app = await build(t, { tasks: [fixture('durable.ts')], concurrency: 2, store, env: { ...process.env, RUN_LOG: runLog } })
  const final = async (record: TaskRecord) => await app.tasks.wait(record.uuid)

  const pending = await final(records.pending)
  t.match(pending, { status: 'succeeded', outputs: { n: 7 }, attempt: 1, error: null }, 'a pending task runs after the restart')
  const retryWaiting = await final(records.retryWaiting)
  t.match(retryWaiting, { status: 'succeeded', outputs: { n: 2, attempt: 2 }, attempt: 2, error: null }, 'one waiting for its retry runs as its next attempt')

  const runningOnce = await final(records.runningOnce)
  t.match(runningOnce, { status: 'failed', error: interrupted, attempt: 1, progress: 3, messages: ['half way'] },
    'an interrupted task without retries fails, keeping what it had reported')
  t.ok(runningOnce.finished !== null && runningOnce.finished >= runningOnce.started!, 'and is finished')
  const runningAgain = await final(records.runningAgain)
  t.match(runningAgain, { status: 'succeeded', outputs: { n: 3, attempt: 2 }, attempt: 2, error: null }, 'an interrupted task with retries left runs again, as a new attempt')
  const runningLast = await final(records.runningLast)
  t.match(runningLast, { status: 'failed', error: interrupted, attempt: 3 }, 'an interrupted task on its last attempt fails')
  const unregistered = await final(records.unregistered)
  t.match(unregistered, { status: 'failed', error: 'task "gone" is no longer registered' }, 'a task no module defines any more fails')
  t.same(await app.tasks.get(records.finished.uuid), await app.tasks.get(records.finished.uuid), 'a finished task is left alone')
  t.match(await app.tasks.get(records.finished.uuid), { status: 'succeeded', outputs: { n: 1 }, finished: started })

  // What ran: each pending or retried task once, the failed ones never.
  const runs = existsSync(runLog) ? readFileSync(runLog, 'utf8').trim().split('\n').sort() : []
  t.same(runs, [
    `${records.pending.uuid} 1`,
    `${records.retryWaiting.uuid} 2`,
    `${records.runningAgain.uuid} 2`,
  ].sort(), 'entered exactly once each; the interrupted ones without retries never again')

  // Seq never goes backwards: every record's seq moved on from what was stored.
  for (const [name, record] of Object.entries(records)) {
    const snapshot = await app.tasks.snapshot(record.uuid)
    if (name === 'finished') t.equal(snapshot?.seq, record.seq, 'a finished record keeps its seq')
    else t.ok((snapshot?.seq ?? 0) > record.seq, `${name}: seq ${snapshot?.seq} after the stored ${record.seq}`)
  }
  t.same(await store.live(), [], 'nothing is left pending or running')
})

t.test('a subscriber that reconnects after a restart with its last seq gets a fresh snapshot, then the live events', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-recovery-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const gate = join(dir, 'gate')
  const record = leftBehind({ task: 'gated', status: 'running', attempt: 1, started: new Date().toISOString(), seq: 12, inputs: { gate } })
  const store = new MemoryStore()
  await store.create(structuredClone(record))
  const app = await build(t, { tasks: [fixture('durable.ts')], concurrency: 1, store })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as import('node:net').AddressInfo
  // The client had seen up to seq 12 from the previous server.
  const response = await fetch(`http://127.0.0.1:${port}/tasks/${record.uuid}/events`, { headers: { accept: 'text/event-stream', 'last-event-id': '12' } })
  const reader = (response.body as ReadableStream<Uint8Array>).getReader()
  const decoder = new TextDecoder()
  let body = ''
  while (!body.includes('"type":"snapshot"')) {
    const { value, done } = await reader.read()
    if (done) break
    body += decoder.decode(value, { stream: true })
  }
  // The task (running again, as its second attempt) waits for its gate: open it now.
  writeFileSync(gate, '')
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    body += decoder.decode(value, { stream: true })
  }
  const frames = body.split('\n\n').filter(block => block.startsWith('id:')).map(block => ({
    id: Number(/^id: (\d+)/.exec(block)?.[1]),
    frame: JSON.parse(/\ndata: (.*)$/.exec(block)?.[1] ?? 'null') as { type: string, status?: string, progress?: number, task?: { status: string, attempt: number } },
  }))
  t.match(frames[0]?.frame, { type: 'snapshot', task: { status: 'running', attempt: 2 } },
    'a fresh snapshot first (the new server holds no history): running again, as the next attempt')
  t.ok((frames[0]?.id ?? 0) > 12, `whose seq (${frames[0]?.id}) is past what the client had`)
  const ids = frames.map(frame => frame.id)
  t.same(ids, [...ids].sort((a, b) => a - b), 'seq only goes up')
  t.equal(new Set(ids).size, ids.length, 'no seq twice')
  t.ok(frames.some(({ frame }) => frame.type === 'progress' && frame.progress === 3), 'the live events follow: its progress')
  t.match(frames.at(-1)?.frame, { type: 'status', status: 'succeeded', task: { attempt: 2 } }, 'and its end')
})

t.test('a graceful close over a durable store leaves unrun tasks pending and ends stopped ones as a restart would; the next server runs them', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-recovery-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'tasks.db')
  const runLog = join(dir, 'runs.log')
  const gate = join(dir, 'gate')
  const options = { tasks: [fixture('durable.ts')], concurrency: 2, env: { ...process.env, RUN_LOG: runLog } }

  const first = await build(t, { ...options, store: new SqliteStore({ path }) })
  const once = await first.tasks.submit('once', { n: 1, ms: 60_000 }) // running, no retries
  const gated = await first.tasks.submit('gated', { gate }) // running, one retry; the gate is shut
  const queuedOnce = await first.tasks.submit('once', { n: 3 })
  const queuedAgain = await first.tasks.submit('again', { n: 4 })
  await untilRunning(first, once.uuid)
  await untilRunning(first, gated.uuid)
  await first.close() // shutdownTimeout: 200 ms

  const left = new SqliteStore({ path })
  t.match(await left.get(once.uuid), { status: 'failed', error: interrupted, attempt: 1 }, 'a stopped task without retries failed, interrupted')
  t.match(await left.get(gated.uuid), { status: 'pending', error: interrupted, attempt: 1, finished: null }, 'one with retries left is pending again, for the next server')
  t.match(await left.get(queuedOnce.uuid), { status: 'pending', attempt: 0, error: null }, 'queued tasks stay pending')
  t.match(await left.get(queuedAgain.uuid), { status: 'pending', attempt: 0, error: null })
  await left.close()

  writeFileSync(gate, '')
  const second = await build(t, { ...options, store: new SqliteStore({ path }) })
  t.match(await second.tasks.wait(gated.uuid), { status: 'succeeded', outputs: { attempt: 2 }, attempt: 2, error: null }, 'the next server retries it as its second attempt')
  t.match(await second.tasks.wait(queuedOnce.uuid), { status: 'succeeded', outputs: { n: 3 }, attempt: 1 }, 'and runs the queued ones')
  t.match(await second.tasks.wait(queuedAgain.uuid), { status: 'succeeded', outputs: { n: 4 }, attempt: 1 })
  t.equal((await second.tasks.get(once.uuid))?.status, 'failed')
  const runs = readFileSync(runLog, 'utf8').trim().split('\n').sort()
  // (gated keeps no run log: its attempts are in its outputs.)
  t.same(runs, [`${once.uuid} 1`, `${queuedOnce.uuid} 1`, `${queuedAgain.uuid} 1`].sort(), 'each entered once: the stopped one not again')
})

t.test('a graceful close over a store that is not durable cancels what has not run', async (t) => {
  const app = await build(t, { tasks: [fixture('durable.ts')], concurrency: 1 })
  const running = await app.tasks.submit('once', { n: 1, ms: 60_000 })
  const queued = await app.tasks.submit('again', { n: 2 })
  await untilRunning(app, running.uuid)
  const waits = [app.tasks.wait(running.uuid), app.tasks.wait(queued.uuid)]
  await app.close()
  const [stopped, unrun] = await Promise.all(waits)
  t.match(stopped, { status: 'cancelled' })
  t.match(unrun, { status: 'cancelled', attempt: 0 })
})
