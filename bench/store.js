// The stores, measured at the store level in one run: MemoryStore against SqliteStore.
// Run with `npm run bench:store` (builds, then `node --expose-gc bench/store.js`); the
// table is printed and saved to bench/results/store.md. Targets are not asserted.
//
// 1. A task's life (create, running, one update with 5 messages and progress, finished
//    with small outputs): tasks per second, one task at a time and 256 at once, rounds
//    alternating the stores; the longest event-loop delay (monitorEventLoopDelay) while
//    each takes the load.
// 2. 100,000 finished tasks in a SQLite file (5 messages and small outputs each): the
//    file's size, and the time of a list page (first and deep) for each filter, of a get,
//    and of a retention batch.
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import { randomUUID } from 'node:crypto'
import { MemoryStore } from 'fastify-task-api'
import { SqliteStore } from 'fastify-task-api/sqlite'
// Not part of the package's exports: the bench builds records the way the service does.
import { newRecord as initialRecord } from '../dist/store/types.js'
import { createReport, fmt, pass, percentile } from './report.js'

const config = {
  life: { rounds: 3, sequential: 3_000, concurrent: 20_000, lanes: 256 },
  fill: { records: 100_000, perTurn: 1_000 },
  list: { limit: 50, repeat: 21, deepCursor: '5000' },
}

if (typeof global.gc !== 'function') {
  console.error('run with node --expose-gc bench/store.js (npm run bench:store does)')
  process.exit(1)
}

const report = createReport()
const { row, notes } = report
const dir = mkdtempSync(join(tmpdir(), 'task-api-bench-store-'))
process.on('exit', () => rmSync(dir, { recursive: true, force: true }))

const owners = [null, ...Array.from({ length: 10 }, (_, i) => `owner-${i}`)]
const taskNames = ['hello', 'resize', 'report']
const messages = Array.from({ length: 5 }, (_, i) => `step ${i + 1} of 5: processed ${(i + 1) * 200} items`)

/** A new pending record of task `hello`, built the way the service builds one, then `fields`. */
function newRecord (fields = {}) {
  return initialRecord({ uuid: randomUUID(), task: 'hello', inputs: { name: 'World', count: 5 }, created: new Date().toISOString(), ...fields })
}

/** One task's life through the store, as the service drives it. */
async function life (store, i) {
  const record = newRecord({ owner: owners[i % owners.length], task: taskNames[i % 3] })
  await store.create(record)
  await store.update(record.uuid, { status: 'running', started: new Date().toISOString(), attempt: 1, seq: 1 })
  await store.update(record.uuid, { progress: 5, target: 5, messages, seq: 7 })
  await store.update(record.uuid, { status: 'succeeded', finished: new Date().toISOString(), outputs: { greeting: `Hello, World! (${i})` }, seq: 8 })
}

/** Runs `n` lives, `lanes` at a time; answers tasks/s and the longest event-loop delay (ms). */
async function lives (store, n, lanes) {
  global.gc()
  const loop = monitorEventLoopDelay({ resolution: 1 })
  let next = 0
  const started = performance.now()
  const elu = performance.eventLoopUtilization()
  let longestGc = 0
  const gc = new PerformanceObserver(list => { for (const entry of list.getEntries()) longestGc = Math.max(longestGc, entry.duration) })
  gc.observe({ entryTypes: ['gc'] })
  loop.enable()
  await Promise.all(Array.from({ length: lanes }, async () => {
    while (next < n) await life(store, next++)
  }))
  loop.disable()
  gc.disconnect()
  const seconds = (performance.now() - started) / 1000
  return { rate: n / seconds, maxDelay: loop.max / 1e6, p99Delay: loop.percentile(99) / 1e6, utilization: performance.eventLoopUtilization(elu).utilization, longestGc }
}

const median = values => percentile(Float64Array.from(values).sort(), 50)

/**
 * The machine's own noise: the longest event-loop delay of this process doing nothing
 * but turn after turn (setImmediate) for `ms`. On a shared machine, other processes (and
 * CPU quotas) stall any process now and then; a store's delays are read against this.
 */
async function noiseFloor (ms = 3000) {
  const loop = monitorEventLoopDelay({ resolution: 1 })
  loop.enable()
  const end = performance.now() + ms
  while (performance.now() < end) await new Promise(resolve => setImmediate(resolve))
  loop.disable()
  return { max: loop.max / 1e6, p99: loop.percentile(99) / 1e6 }
}
let files = 0
const newSqlite = () => new SqliteStore({ path: join(dir, `life-${files++}.db`) })

async function benchLife () {
  const results = { memory: { seq: [], conc: [] }, sqlite: { seq: [], conc: [], delay: [], p99: [], utilization: [], gc: [], held: [] }, noise: [] }
  for (let round = 0; round < config.life.rounds; round++) {
    results.noise.push(await noiseFloor())
    for (const kind of ['memory', 'sqlite']) {
      const store = kind === 'memory' ? new MemoryStore() : newSqlite()
      const sequential = await lives(store, config.life.sequential, 1)
      const concurrent = await lives(store, config.life.concurrent, config.life.lanes)
      results[kind].held?.push(store.stats().longestWriteMs)
      await store.close?.()
      results[kind].seq.push(sequential.rate)
      results[kind].conc.push(concurrent.rate)
      results[kind].delay?.push(Math.max(sequential.maxDelay, concurrent.maxDelay))
      results[kind].p99?.push(concurrent.p99Delay)
      results[kind].utilization?.push(concurrent.utilization)
      results[kind].gc?.push(Math.max(sequential.longestGc, concurrent.longestGc))
      console.error(`  round ${round + 1} ${kind}: ${fmt(sequential.rate)} / ${fmt(concurrent.rate)} tasks/s, longest loop delay ${fmt(Math.max(sequential.maxDelay, concurrent.maxDelay), 1)} ms`)
    }
  }
  const { memory, sqlite } = results
  const runs = values => values.map(value => fmt(value)).join(', ')
  row('task lives/s, one at a time: memory', `${fmt(median(memory.seq))} (runs: ${runs(memory.seq)})`, 'baseline', '-')
  row('task lives/s, one at a time: SQLite', `${fmt(median(sqlite.seq))} (runs: ${runs(sqlite.seq)})`, 'info', '-')
  row(`task lives/s, ${config.life.lanes} at once: memory`, `${fmt(median(memory.conc))} (runs: ${runs(memory.conc)})`, 'baseline', '-')
  row(`task lives/s, ${config.life.lanes} at once: SQLite`, `${fmt(median(sqlite.conc))} (runs: ${runs(sqlite.conc)})`, 'info', '-')
  const ratio = median(sqlite.conc) / median(memory.conc)
  row(`SQLite / memory, ${config.life.lanes} at once (medians)`, fmt(ratio, 2), 'info', '-')
  const worst = Math.max(...sqlite.delay)
  row('event-loop delay under that load, SQLite: longest (each round); p99 at once', `${fmt(worst, 1)} ms (${sqlite.delay.map(v => fmt(v, 1)).join(', ')}); p99 ${sqlite.p99.map(v => fmt(v, 1)).join(', ')} ms`, 'info', '-')
  // That delay includes garbage collection and the machine's noise (rows below); the store
  // measures how long its own writes held the loop.
  const held = Math.max(...sqlite.held)
  row('event loop held by the store\'s writes (stats().longestWriteMs), each round', `${fmt(held, 1)} ms (${sqlite.held.map(v => fmt(v, 1)).join(', ')})`, '<= 20 ms', pass(held <= 20))
  row('longest garbage-collection pause under that load, SQLite (each round)', `${sqlite.gc.map(v => fmt(v, 1)).join(', ')} ms`, 'info', '-')
  row(`event-loop utilization under that load, SQLite, ${config.life.lanes} at once (each round)`, sqlite.utilization.map(v => fmt(v, 2)).join(', '), 'info', '-')
  row('noise floor: longest event-loop delay of this process idling 3 s (each round); p99', `${fmt(Math.max(...results.noise.map(n => n.max)), 1)} ms (${results.noise.map(n => fmt(n.max, 1)).join(', ')}); p99 ${results.noise.map(n => fmt(n.p99, 1)).join(', ')} ms`, 'info', '-')
  notes.push(`A task's life: create, update to running, one update with 5 messages (about 35 characters each) and progress, update to succeeded with outputs of about 30 bytes: 4 store calls, each awaited before the next. The memory store's calls never yield to the event loop (nothing to measure there: the lanes run as one long turn). "At once": ${config.life.lanes} lives in flight, ${fmt(config.life.concurrent)} per round; "one at a time": ${fmt(config.life.sequential)} per round, so each SQLite call waits for its own commit. ${config.life.rounds} rounds, memory and SQLite alternating, each on a fresh store.`)
}

function fmtBytes (bytes) {
  return `${fmt(bytes / 1024 / 1024, 1)} MB`
}

async function benchFile () {
  const path = join(dir, 'big.db')
  let store = new SqliteStore({ path })
  const statuses = ['succeeded', 'succeeded', 'succeeded', 'failed', 'cancelled']
  const base = Date.now() - config.fill.records * 1000
  const loop = monitorEventLoopDelay({ resolution: 1 })
  const started = performance.now()
  loop.enable()
  for (let i = 0; i < config.fill.records; i += config.fill.perTurn) {
    const batch = []
    for (let j = i; j < Math.min(config.fill.records, i + config.fill.perTurn); j++) {
      // The oldest ten belong to "rare": a filter a scan would walk the whole file to fill.
      const status = statuses[j % statuses.length]
      const at = new Date(base + j * 1000).toISOString()
      batch.push(store.create(newRecord({
        owner: j < 10 ? 'rare' : owners[j % owners.length],
        task: taskNames[j % 3],
        status,
        progress: 5,
        target: 5,
        messages,
        attempt: 1,
        created: at,
        started: at,
        finished: at,
        seq: 8,
        outputs: status === 'succeeded' ? { greeting: `Hello, World! (${j})` } : {},
        error: status === 'failed' ? 'the upstream service answered 502 Bad Gateway' : null,
      })))
    }
    await Promise.all(batch)
  }
  loop.disable()
  const fillSeconds = (performance.now() - started) / 1000
  await store.close()
  const size = readdirSync(dir).filter(name => name.startsWith('big.db')).reduce((sum, name) => sum + statSync(join(dir, name)).size, 0)
  row('fill: 100,000 finished tasks (created finished, 1,000 per turn)', `${fmt(config.fill.records / fillSeconds)} records/s; longest event-loop delay ${fmt(loop.max / 1e6, 1)} ms`, 'info', '-')
  row('file size with 100,000 finished tasks', `${fmtBytes(size)} (${fmt(size / config.fill.records)} B/task, after close)`, 'info', '-')

  store = new SqliteStore({ path })
  const time = async (fn) => {
    const times = []
    let result
    for (let i = 0; i < config.list.repeat; i++) {
      const t0 = performance.now()
      result = await fn()
      times.push(performance.now() - t0)
    }
    return { ms: median(times), result }
  }
  const filters = [
    ['none', {}],
    ['owner', { owner: 'owner-3' }],
    ['owner null', { owner: null }],
    ['status', { status: 'failed' }],
    ['task', { task: 'resize' }],
    ['owner + status', { owner: 'owner-3', status: 'succeeded' }],
    ['owner + task', { owner: 'owner-3', task: 'resize' }],
    ['status + task', { status: 'cancelled', task: 'report' }],
    ['owner + status + task', { owner: 'owner-3', status: 'succeeded', task: 'report' }],
    ['rare owner (its 10 records are the oldest)', { owner: 'rare' }],
  ]
  for (const [name, filter] of filters) {
    const first = await time(() => store.list({ ...filter, limit: config.list.limit }))
    const deep = await time(() => store.list({ ...filter, limit: config.list.limit, cursor: config.list.deepCursor }))
    row(`list page of ${config.list.limit}, filter ${name}: first / deep`, `${fmt(first.ms, 2)} / ${fmt(deep.ms, 2)} ms (${first.result.records.length} / ${deep.result.records.length} records)`, 'info', '-')
  }
  const some = (await store.list({ limit: 1, cursor: '50000' })).records[0]
  const get = await time(() => store.get(some.uuid))
  row('get of a finished task (from the file)', `${fmt(get.ms, 3)} ms`, 'info', '-')
  let expired = 0
  const cutoff = new Date(base + 50_000 * 1000).toISOString()
  const expire = await time(async () => { expired += (await store.expire('succeeded', cutoff, 100)).length })
  row('retention: expire a batch of 100', `${fmt(expire.ms, 2)} ms (${fmt(expired)} expired in ${config.list.repeat} batches)`, 'info', '-')
  await store.close()
  notes.push(`The file: 100,000 tasks created finished (60% succeeded, 20% failed, 20% cancelled) over 11 owners (one null) and 3 task names, each with 5 messages of about 35 characters, outputs of about 30 bytes (succeeded) or an error of 46 characters (failed), inputs dropped. A list page returns whole records (messages included). Deep page: cursor ${config.list.deepCursor}, among the oldest 5%. Times are medians of ${config.list.repeat} runs, in the bench process.`)
}

for (const step of [benchLife, benchFile]) {
  try {
    await step()
  } catch (err) {
    row(step.name, `ERROR: ${err.stack}`, '-', 'ERROR')
  }
}

const output = report.markdown('fastify-task-api store bench', ['MemoryStore and SqliteStore (better-sqlite3, WAL, synchronous NORMAL) in the bench process; files in the OS temp directory'])
console.log('\n' + output)
await mkdir(new URL('./results/', import.meta.url), { recursive: true })
await writeFile(new URL('./results/store.md', import.meta.url), output)
