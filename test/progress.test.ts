import t from 'tap'
import type { FastifyInstance } from 'fastify'
import type { TaskEvent } from '../dist/index.js'
import { build, fixture } from './helpers.js'

let app: FastifyInstance
t.before(async () => {
  app = await build(t, { tasks: [fixture('progress.ts')], concurrency: 2, progressInterval: 50 })
})

/** Follows a task the documented way: subscribe, then snapshot, then drop what it covers. */
async function record (task: string, inputs: Record<string, unknown>) {
  const created = await app.tasks.submit(task, inputs)
  const live: TaskEvent[] = []
  const unsubscribe = app.tasks.subscribe(created.uuid, event => live.push(event))
  const snapshot = await app.tasks.snapshot(created.uuid)
  if (snapshot === undefined) throw new Error('no snapshot')
  const done = await app.tasks.wait(created.uuid)
  unsubscribe()
  const events = live.filter(event => event.seq > snapshot.seq)
  return { done, events, snapshot }
}

/*
 * How many updates a child may send, from what the task measured itself: the child paces
 * its flushes so that n flushes span at least (n - 1) * interval - interval / 2 ms (see
 * lib/pace.ts), and a synchronous run() makes them all between its first and last call.
 * So a run whose calls took `ms` sends at most floor((ms + interval / 2) / interval) + 1
 * paced updates, plus the one that carries the final values with the result. A bound
 * derived from the task's own clock, not from how fast this process saw it.
 */
const interval = 50
const pacedAtMost = (ms: number): number => Math.floor((ms + interval / 2) / interval) + 1

t.test('a million setProgress calls: a bounded number of updates and the exact final value', async (t) => {
  const { done, events } = await record('spin', { calls: 1_000_000 })
  t.equal(done.status, 'succeeded')
  t.equal(done.progress, 1_000_000)
  t.equal(done.target, 1_000_000)
  const ms = done.outputs.ms as number
  const progress = events.filter(event => event.type === 'progress')
  const bound = pacedAtMost(ms) + 1
  t.ok(progress.length <= bound, `${progress.length} progress events for calls that took ${Math.round(ms)} ms (at most ${bound})`)
  t.same(progress[0], { type: 'progress', uuid: done.uuid, seq: progress[0]?.seq, progress: null, target: 1_000_000 },
    'the first update goes at once: the target, before any progress')
  const last = progress.at(-1)
  t.equal(last?.type === 'progress' && last.progress, 1_000_000, 'the final progress event carries the exact value')
  t.not(progress[0], last, 'so there are at least two')
})

t.test('a task that never yields still reports progress while it runs', async (t) => {
  const { done, events } = await record('busy', { cpuMs: 600 })
  const calls = done.outputs.calls as number
  const ms = done.outputs.ms as number
  const intermediate = events.filter(event => event.type === 'progress' && event.progress !== null && event.progress > 0 && event.progress < calls)
  // The first call goes out at once; the loop runs well past the tolerance after it (at
  // least 300 ms of wall time), so a later call goes out too, before the last.
  t.ok(intermediate.length >= 2, `${intermediate.length} progress events arrived during a synchronous loop of ${Math.round(ms)} ms`)
  t.equal(intermediate[0]?.type === 'progress' && intermediate[0].progress, 1, 'the first call went out at once')
  t.ok(intermediate.length <= pacedAtMost(ms), `and no more than the pacing allows (${pacedAtMost(ms)})`)
  t.equal(done.progress, calls)
})

t.test('messages are never lost or reordered, and seq has no gaps', async (t) => {
  const { done, events, snapshot } = await record('chatty', { count: 1000 })
  const expected = Array.from({ length: 1000 }, (_, i) => `message ${i}`)
  t.same(done.messages, expected)
  const streamed = events.filter(event => event.type === 'message').map(event => event.type === 'message' && event.message)
  t.same([...snapshot.task.messages, ...streamed], expected, 'snapshot plus events: every message once, in order')
  t.same(events.map(event => event.seq), events.map((_, i) => snapshot.seq + i + 1), 'seq continues the snapshot without gaps')
  t.equal(done.progress, 1000)
})

t.test('incProgress starts from 0 while progress is still null', async (t) => {
  const { done } = await record('inc', {})
  t.equal(done.progress, 3)
  t.equal(done.target, null)
})

t.test('progress values that are not finite, negative, or a target of 0 fail the task with a clear error', async (t) => {
  const cases: Record<string, string> = {
    nan: 'setProgress expects a finite number of 0 or more, got NaN',
    negative: 'setProgress expects a finite number of 0 or more, got -1',
    infinite: 'setProgress expects a finite number of 0 or more, got Infinity',
    string: 'setProgress expects a finite number of 0 or more, got "5"',
    'zero-target': 'setTarget expects a finite number greater than 0, got 0',
  }
  for (const [kind, error] of Object.entries(cases)) {
    const { done } = await record('bad-progress', { kind })
    t.equal(done.status, 'failed', kind)
    t.equal(done.error, error, kind)
    t.equal(done.progress, null, `${kind}: nothing stored`)
  }
})

