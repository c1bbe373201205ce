import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { build, fixture, until } from './helpers.js'

// README, Durability: retention. An injected clock (the `clock` option) moves time on.

const tasks = [fixture('basic.ts'), fixture('control.ts')]
const hour = 3_600_000
const day = 24 * hour

async function finishOne (app: FastifyInstance, status: 'succeeded' | 'failed' | 'cancelled'): Promise<string> {
  if (status === 'cancelled') {
    const { uuid } = await app.tasks.submit('cooperative')
    await app.tasks.cancel(uuid)
    await app.tasks.wait(uuid)
    return uuid
  }
  const { uuid } = await app.tasks.submit(status === 'succeeded' ? 'hello' : 'raises', status === 'succeeded' ? { name: 'x', count: 1 } : {})
  const final = await app.tasks.wait(uuid)
  if (final.status !== status) throw new Error(`task ${uuid} ended ${final.status}, not ${status}`)
  return uuid
}

t.test('each final status is kept for its own retention; a status left out is kept forever; live tasks never go', async (t) => {
  let now = Date.parse('2026-01-01T00:00:00Z')
  const app = await build(t, { tasks, runner: 'inline', concurrency: 4, clock: () => now, retention: { succeeded: '1h', failed: 2 * hour } })
  const succeeded = await finishOne(app, 'succeeded')
  const failed = await finishOne(app, 'failed')
  const cancelled = await finishOne(app, 'cancelled')
  t.equal((await app.tasks.get(succeeded))?.finished, '2026-01-01T00:00:00.000Z', 'record times come from the clock')
  now += 30 * 60_000
  const live = (await app.tasks.submit('cooperative')).uuid
  const young = await finishOne(app, 'succeeded')

  t.equal(await app.tasks.sweep(), 0, 'after 30 minutes nothing is old enough')
  now += 45 * 60_000 // 1 h 15 min after the first ones
  t.equal(await app.tasks.sweep(), 1, 'after 1 h 15 min the first succeeded task goes')
  t.equal(await app.tasks.get(succeeded), undefined)
  t.equal((await app.tasks.get(young))?.status, 'succeeded', 'the one that finished 45 minutes ago stays')
  t.equal((await app.tasks.get(failed))?.status, 'failed', 'failed ones have two hours')
  now += hour // 2 h 15 min
  t.equal(await app.tasks.sweep(), 2, 'then the failed one goes, and the younger succeeded one')
  t.equal(await app.tasks.get(failed), undefined)
  t.equal(await app.tasks.get(young), undefined)
  now += 365 * day
  t.equal(await app.tasks.sweep(), 0)
  t.equal((await app.tasks.get(cancelled))?.status, 'cancelled', 'cancelled was left out: kept forever')
  t.equal((await app.tasks.get(live))?.status, 'running', 'a live task is never swept, however old')
  await app.tasks.cancel(live)
})

t.test('the defaults: succeeded and cancelled 7 days, failed 30 days', async (t) => {
  let now = Date.parse('2026-01-01T00:00:00Z')
  const app = await build(t, { tasks, runner: 'inline', concurrency: 4, clock: () => now })
  const ids = { succeeded: await finishOne(app, 'succeeded'), failed: await finishOne(app, 'failed'), cancelled: await finishOne(app, 'cancelled') }
  now += 7 * day - 1
  t.equal(await app.tasks.sweep(), 0, 'just under 7 days: all kept')
  now += 2
  t.equal(await app.tasks.sweep(), 2, 'just over 7 days: succeeded and cancelled go')
  t.equal(await app.tasks.get(ids.succeeded), undefined)
  t.equal(await app.tasks.get(ids.cancelled), undefined)
  now += 23 * day
  t.equal(await app.tasks.sweep(), 1, 'just over 30 days: the failed one goes')
  t.equal(await app.tasks.get(ids.failed), undefined)

  const forever = await build(t, { tasks, runner: 'inline', concurrency: 4, clock: () => now, retention: false })
  const kept = await finishOne(forever, 'succeeded')
  now += 10_000 * day
  t.equal(await forever.tasks.sweep(), 0, 'retention: false keeps everything')
  t.equal((await forever.tasks.get(kept))?.status, 'succeeded')
})

t.test('the sweep runs by itself, in batches, yielding to the event loop between them', async (t) => {
  let now = Date.parse('2026-01-01T00:00:00Z')
  const app = await build(t, { tasks, runner: 'inline', concurrency: 4, clock: () => now, retention: '1s' })
  const uuids: string[] = []
  for (let i = 0; i < 450; i++) uuids.push((await app.tasks.submit('hello', { name: 'x', count: 0 })).uuid)
  for (const uuid of uuids) await app.tasks.wait(uuid)
  now += 5000
  // A turn of the event loop queued now runs before a sweep of 450 records ends: it yields.
  let turns = 0
  const tick = (): void => { turns++; if (turns < 1000) setImmediate(tick) }
  setImmediate(tick)
  const removed = await app.tasks.sweep()
  t.equal(removed, 450, 'every expired record, in batches of 200')
  t.ok(turns >= 2, `other work ran between the batches (${turns} turns)`)
  const later = (await app.tasks.submit('hello', { name: 'y', count: 0 })).uuid
  await app.tasks.wait(later)
  now += 5000
  // retention 1 s: the periodic sweep runs every second (its shortest period).
  await until('the periodic sweep to remove the record', async () => await app.tasks.get(later) === undefined, 20_000)
  t.equal(await app.tasks.get(later), undefined, 'the periodic sweep removed it without being asked')
})

t.test('retention and clock are checked at register', async (t) => {
  for (const [retention, message] of [
    ['soon', /^options\.retention must be a positive number of milliseconds or a duration such as '30s', '15m', '12h', '7d', got "soon"$/],
    [-5, /^options\.retention must be a positive number .*, got -5$/],
    [{ succeeded: '1x' }, /^options\.retention\.succeeded must be a positive number .*, got "1x"$/],
    [{ running: '1h' }, /^options\.retention\.running must be a final status \(succeeded, failed, cancelled\), got an unknown key$/],
    [['1h'], /^options\.retention must be a duration, false, or an object per final status, got /],
  ] as const) {
    await t.rejects(build(t, { tasks, runner: 'inline', retention: retention as never }), { code: 'FST_TASK_API_OPT_INVALID', message }, JSON.stringify(retention))
  }
  await t.rejects(build(t, { tasks, runner: 'inline', concurrency: 4, clock: 5 as never }), { code: 'FST_TASK_API_OPT_INVALID', message: /^options\.clock must be a function/ })
  const app = await build(t, { tasks, runner: 'inline', retention: { succeeded: '1.5h', failed: '500ms', cancelled: 60_000 } })
  t.ok(app.tasks, 'durations with units and plain milliseconds are taken')
})
