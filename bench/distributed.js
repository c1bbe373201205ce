// Scale-out benchmarks: API nodes and workers on Redis and BullMQ, all measured in one run
// on this machine, on one redis-server of the bench's own (a free port of 127.0.0.1, a
// temporary directory, no persistence; never the system's Redis).
// Run with `npm run bench:distributed` (builds, then `node --expose-gc bench/distributed.js`);
// BENCH_QUICK=1 for a short run; `node --expose-gc bench/distributed.js throughput progress cpu`
// runs only the steps named. BENCH_PROFILE=<dir> runs the workers (and their children) with
// --cpu-prof into <dir>; BENCH_CHILDREN=<n> gives both stacks of step 1 n children instead
// of 2 (a diagnostic, not the comparison the issue asks for). Targets are not asserted:
// each line gets a verdict, the process exits 0 either way.
//
// 1. No-op throughput and submit -> run() latency: our stack (an API node in this process,
//    the plugin with `redis` and concurrency 0, plus one worker process, `dist/cli.js worker
//    --concurrency 2`) against raw BullMQ (a Queue in this process, a Worker in a process of
//    its own with a sandboxed processor file, concurrency 2, so 2 forked children), in
//    alternating rounds, each on a fresh prefix.
// 2. Progress latency across nodes: 2 API node processes and 1 worker process; a task on the
//    worker calls setProgress every 10 ms with the time as the value; a WebSocket client on
//    the node the task was NOT submitted to receives it.
// 3. CPU-bound tasks on 1, 2 and 4 worker processes (concurrency 1 each).
import { spawn, fork, spawnSync } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { createServer, Socket } from 'node:net'
import os from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Queue, QueueEvents } from 'bullmq'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import WebSocket from 'ws'
import taskApi from '../dist/index.js'
import { burn } from './distributed-tasks.js'
import { createReport, fmt, pass, percentile } from './report.js'

const quick = process.env.BENCH_QUICK === '1'
const TASKS = new URL('./distributed-tasks.js', import.meta.url)
const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url))
const BULLMQ_WORKER = fileURLToPath(new URL('./distributed-bullmq-worker.js', import.meta.url))
const API_NODE = fileURLToPath(new URL('./distributed-node.js', import.meta.url))
const PROGRESS_INTERVAL = 50
const FINAL = new Set(['succeeded', 'failed', 'cancelled'])

const config = {
  // 1. Per round and stack: a warm-up batch, the measured batch (submitted `window` at a
  // time, one call per job), then `samples` jobs one at a time for the unloaded latency.
  throughput: quick
    ? { rounds: 1, warmup: 200, n: 1000, window: 64, samples: 50, children: Number(process.env.BENCH_CHILDREN ?? 2) }
    : { rounds: 3, warmup: 300, n: 4000, window: 64, samples: 200, children: Number(process.env.BENCH_CHILDREN ?? 2) },
  // 2. setProgress every `every` ms for `seconds`, after `delay` ms (the sockets connect).
  progress: quick ? { rounds: 1, every: 10, seconds: 2, delay: 1000 } : { rounds: 3, every: 10, seconds: 4, delay: 1000 },
  // 3. A batch of `tasks` CPU-bound tasks of about `taskMs` ms of CPU each.
  cpu: quick ? { rounds: 1, tasks: 12, taskMs: 200, workers: [1, 2, 4] } : { rounds: 3, tasks: 30, taskMs: 200, workers: [1, 2, 4] },
  // Whole run: past this the bench kills what it started and exits.
  watchdog: 420_000,
}

if (typeof global.gc !== 'function') {
  console.error('run with node --expose-gc bench/distributed.js (npm run bench:distributed does)')
  process.exit(1)
}

const report = createReport()
const { row, notes } = report
const loadBefore = os.loadavg()
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
/** Wall-clock ms with sub-ms resolution; the tasks stamp with the same clock. */
const now = () => performance.timeOrigin + performance.now()
const sorted = values => Float64Array.from(values).sort()
const median = values => percentile(sorted(values), 50)
const profileDir = process.env.BENCH_PROFILE

function summary (values) {
  const s = sorted(values)
  return { n: s.length, p50: percentile(s, 50), p95: percentile(s, 95), p99: percentile(s, 99), min: s[0] ?? NaN, max: s.at(-1) ?? NaN }
}

// ---------------------------------------------------------------------------
// Processes: every one the bench starts, and every descendant it has been seen with, is
// killed by pid at the end (also on error, on SIGINT, and by the watchdog).

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100
/** pid -> start time (in ticks since boot), to never kill a pid the system reused. */
const seen = new Map()
const children = new Set()

function processTable () {
  const table = new Map()
  for (const name of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue
    let stat
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8')
    } catch {
      continue
    }
    // Fields after "pid (comm) ": state, ppid, ... utime (14), stime, cutime, cstime (17), ... starttime (22).
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    table.set(Number(name), { state: f[0], ppid: Number(f[1]), own: Number(f[11]) + Number(f[12]), reaped: Number(f[13]) + Number(f[14]), start: f[19] })
  }
  return table
}

/** The pid and its descendants, remembered for the final sweep. */
function tree (pid, table = processTable()) {
  const pids = []
  const queue = [pid]
  while (queue.length > 0) {
    const p = queue.shift()
    const entry = table.get(p)
    if (entry === undefined) continue
    pids.push(p)
    seen.set(p, entry.start)
    for (const [q, e] of table) if (e.ppid === p) queue.push(q)
  }
  return pids
}

/**
 * CPU time (ms, user + system) of a process (`own`) and of its descendants, the reaped
 * ones included (`children`). /proc counts in clock ticks (10 ms at 100 Hz).
 */
function treeCpu (pid) {
  const table = processTable()
  const pids = tree(pid, table)
  const ms = ticks => ticks * 1000 / CLK_TCK
  const own = table.get(pid)?.own ?? 0
  const all = pids.reduce((sum, p) => sum + table.get(p).own + table.get(p).reaped, 0)
  return { own: ms(own), children: ms(all - own) }
}

function track (child) {
  children.add(child)
  seen.set(child.pid, processTable().get(child.pid)?.start)
  child.once('exit', () => children.delete(child))
  return child
}

const exited = child => child.exitCode !== null || child.signalCode !== null

/** Kills those of `pids` still there (the same process: same start time), by pid. */
function kill (pids) {
  const table = processTable()
  for (const pid of pids) {
    const entry = table.get(pid)
    if (entry === undefined || entry.start !== seen.get(pid) || entry.state === 'Z') continue
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
}

/** Those of `pids` still there, not zombies. */
function alive (pids) {
  const table = processTable()
  return pids.filter(pid => table.get(pid)?.start === seen.get(pid) && table.get(pid)?.state !== 'Z')
}

/** Processes that outlived a graceful stop of their parent by a second, and what they ran. */
const orphans = []

/**
 * SIGTERM (graceful), then SIGKILL after `timeout`; then any descendant it left (a
 * graceful stop should leave none: those still there a second later are counted).
 */
async function stop (child, timeout = 8_000) {
  if (child === undefined) return
  const pids = tree(child.pid).filter(pid => pid !== child.pid)
  if (!exited(child)) {
    const gone = new Promise(resolve => child.once('exit', resolve))
    let forced = false
    child.kill('SIGTERM')
    const timer = setTimeout(() => { forced = true; child.kill('SIGKILL') }, timeout)
    await gone
    clearTimeout(timer)
    for (let i = 0; i < 20 && alive(pids).length > 0; i++) await sleep(50)
    for (const pid of alive(pids)) {
      let command = '?'
      try { command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').slice(0, 120) } catch {}
      orphans.push(`${pid} (${command}) after ${forced ? 'a SIGKILL' : 'a graceful stop'} of ${child.pid}`)
    }
  }
  kill(pids)
}

/** The last resort (end, error, signal, watchdog): every process started or seen under one. */
function killEverything () {
  for (const child of children) tree(child.pid)
  for (const child of children) if (!exited(child)) child.kill('SIGKILL')
  kill([...seen.keys()])
}

process.once('exit', killEverything)
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    console.error(`distributed bench: ${signal}: killing what it started`)
    killEverything()
    process.exit(130)
  })
}

/** Resolves with the first match of `marker` on the child's stdout; rejects if it exits first. */
function waitFor (child, marker, what, timeout = 60_000) {
  return new Promise((resolve, reject) => {
    let out = ''
    const timer = setTimeout(() => reject(new Error(`${what} did not start in ${timeout / 1000} s: ${out}`)), timeout)
    child.stdout.on('data', (chunk) => {
      out = (out + chunk.toString()).slice(-4000)
      const match = marker.exec(out)
      if (match !== null) {
        clearTimeout(timer)
        resolve(match)
      }
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`${what} exited (${signal ?? code}) before starting: ${out}`))
    })
  })
}

const execArgv = () => profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${profileDir}`]

/** Our worker: `node dist/cli.js worker`, its pool of `concurrency` children forked before it says "running". */
async function startOurWorker (prefix, concurrency) {
  const child = track(spawn(process.execPath, [...execArgv(), CLI, 'worker', '--redis', redis.url, '--prefix', prefix, '--concurrency', String(concurrency), fileURLToPath(TASKS)],
    { stdio: ['ignore', 'pipe', 'inherit'] }))
  await waitFor(child, /running/, 'the worker')
  return child
}

/** Raw BullMQ's worker, in a process of its own; its sandbox children are forked on the first jobs. */
async function startBullWorker (prefix, queue, concurrency) {
  const child = track(spawn(process.execPath, [...execArgv(), BULLMQ_WORKER], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, BULLMQ_REDIS: redis.url, BULLMQ_PREFIX: prefix, BULLMQ_QUEUE: queue, BULLMQ_CONCURRENCY: String(concurrency) },
  }))
  await waitFor(child, /ready/, 'the BullMQ worker')
  return child
}

/** An API node process (bench/distributed-node.js); resolves with the child and its port. */
async function startApiNode (prefix) {
  const child = track(fork(API_NODE, [], { execArgv: [], env: { ...process.env, BENCH_REDIS: redis.url, BENCH_PREFIX: prefix }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }))
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('an API node did not start in 60 s')), 60_000)
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`an API node exited with ${code} before listening`)) })
    child.on('message', (message) => {
      if (message?.type === 'listening') {
        clearTimeout(timer)
        resolve(message.port)
      }
    })
  })
  return { child, port }
}

// ---------------------------------------------------------------------------
// The bench's own redis-server (as test/redis-server.ts starts one).

function freePort () {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

async function startRedis () {
  const found = spawnSync('redis-server', ['--version'], { encoding: 'utf8' })
  if (found.error !== undefined || found.status !== 0) throw new Error('redis-server is not installed: apt-get install -y redis-server')
  const dir = mkdtempSync(join(os.tmpdir(), 'task-api-bench-redis-'))
  const port = await freePort()
  const child = track(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--protected-mode', 'no'],
    { stdio: ['ignore', 'pipe', 'pipe'] }))
  let output = ''
  child.stdout.on('data', (chunk) => { output = (output + chunk.toString()).slice(-4000) })
  child.stderr.on('data', (chunk) => { output = (output + chunk.toString()).slice(-4000) })
  const deadline = Date.now() + 20_000
  for (;;) {
    if (exited(child)) throw new Error(`redis-server exited: ${output}`)
    if (Date.now() > deadline) throw new Error(`redis-server did not answer PING on ${port} in 20 s: ${output}`)
    const answered = await new Promise((resolve) => {
      const socket = new Socket()
      const done = (ok) => { socket.destroy(); resolve(ok) }
      socket.setTimeout(500, () => done(false))
      socket.once('error', () => done(false))
      socket.once('data', data => done(data.toString().startsWith('+PONG')))
      socket.connect(port, '127.0.0.1', () => socket.write('PING\r\n'))
    })
    if (answered) break
    await sleep(50)
  }
  const version = found.stdout.match(/v=([0-9.]+)/)?.[1] ?? '?'
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    version,
    async stop () {
      await stop(child, 3_000)
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** Redis's own CPU time (ms, user + system) and its commands, per name, since it started. */
async function redisStats (client) {
  const text = (await client.info('cpu')) + (await client.info('commandstats'))
  const number = key => Number(text.match(new RegExp(`^${key}:([0-9.]+)`, 'm'))?.[1] ?? NaN)
  const commands = new Map()
  for (const [, name, calls] of text.matchAll(/^cmdstat_([^:]+):calls=([0-9]+)/gm)) commands.set(name, Number(calls))
  return { cpu: (number('used_cpu_user') + number('used_cpu_sys')) * 1000, commands }
}

function redisDelta (before, after, jobs) {
  const commands = []
  let calls = 0
  for (const [name, n] of after.commands) {
    const d = n - (before.commands.get(name) ?? 0)
    if (d <= 0) continue
    // INFO is the bench's own (its SCAN and UNLINK run outside the measured batch).
    if (name === 'info') continue
    calls += d
    commands.push([name, d / jobs])
  }
  commands.sort((a, b) => b[1] - a[1])
  return { cpuPerJob: (after.cpu - before.cpu) * 1000 / jobs, callsPerJob: calls / jobs, top: commands.slice(0, 6) }
}

async function dropKeys (client, prefix) {
  let cursor = '0'
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
    if (keys.length > 0) await client.unlink(...keys)
    cursor = next
  } while (cursor !== '0')
}

// ---------------------------------------------------------------------------
// Completions: what each job's run() stamped, as the bench process learns it.

class Completions {
  constructor () {
    this.done = new Map()
    this.failed = []
    this.lastSeen = 0
    this.waiters = new Map()
    this.counters = []
  }

  record (id, at, ok, error) {
    if (this.done.has(id)) return
    const seenAt = now()
    this.done.set(id, { at, seenAt, ok })
    if (!ok) this.failed.push(`${id}: ${error}`)
    this.lastSeen = seenAt
    this.waiters.get(id)?.()
    this.waiters.delete(id)
    this.counters = this.counters.filter(({ n, resolve }) => this.done.size >= n ? (resolve(), false) : true)
  }

  one (id) {
    if (this.done.has(id)) return Promise.resolve()
    return new Promise((resolve) => { this.waiters.set(id, resolve) })
  }

  count (n, timeout, what) {
    if (this.done.size >= n) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${what}: ${this.done.size} of ${n} jobs finished after ${timeout / 1000} s`)), timeout)
      this.counters.push({ n, resolve: () => { clearTimeout(timer); resolve() } })
    })
  }
}

/** Submits `n` jobs, `window` calls in flight, one call per job; returns id -> time of the call. */
async function pump (submit, n, window) {
  const calls = new Map()
  let next = 0
  const lane = async () => {
    while (next < n) {
      next++
      const t = now()
      calls.set(await submit(), t)
    }
  }
  await Promise.all(Array.from({ length: Math.min(window, n) }, lane))
  return calls
}

// ---------------------------------------------------------------------------
// 1. The two stacks.

let admin
let redis

/** Our stack: an API node in this process (concurrency 0) and one worker process. */
async function ourStack (round) {
  const prefix = `{bench-ours-${round}}`
  const worker = await startOurWorker(prefix, config.throughput.children)
  const app = Fastify({ logger: false, pluginTimeout: 120_000 })
  await app.register(taskApi, { tasks: [TASKS], redis: { connection: redis.url, prefix }, concurrency: 0 })
  await app.ready()
  const completions = new Completions()
  // The events every server gets over pub/sub, read by a plain subscriber (app.tasks.wait
  // would read the store once per task: a cost of the bench, not of the stack).
  const observer = new Redis(redis.url)
  observer.on('message', (channel, text) => {
    const event = JSON.parse(text)
    if (event.type === 'status' && event.task !== undefined && FINAL.has(event.status)) {
      completions.record(event.uuid, event.task.outputs?.at, event.status === 'succeeded', event.task.error)
    }
  })
  await observer.subscribe(`${prefix}:events`)
  return {
    worker,
    completions,
    submit: async () => (await app.tasks.submit('stamp')).uuid,
    async close () {
      await stop(worker)
      await app.close()
      observer.disconnect()
      await dropKeys(admin, prefix)
    },
  }
}

/** Raw BullMQ: a Queue and QueueEvents in this process, a Worker (sandboxed processor) in its own. */
async function bullStack (round) {
  const prefix = `{bench-bull-${round}}`
  const name = 'noop'
  const connection = { host: '127.0.0.1', port: redis.port, maxRetriesPerRequest: null }
  const worker = await startBullWorker(prefix, name, config.throughput.children)
  // The event stream is kept whole (BullMQ trims it at about 10,000 events by default), so
  // that QueueEvents, reading from its start, cannot miss a completion.
  const queue = new Queue(name, { connection, prefix, streams: { events: { maxLen: 1_000_000 } } })
  queue.on('error', () => {})
  await queue.waitUntilReady()
  const completions = new Completions()
  const events = new QueueEvents(name, { connection, prefix, lastEventId: '0-0' })
  events.on('error', () => {})
  events.on('completed', ({ jobId, returnvalue }) => completions.record(jobId, Number(returnvalue), true))
  events.on('failed', ({ jobId, failedReason }) => completions.record(jobId, NaN, false, failedReason))
  await events.waitUntilReady()
  const options = { removeOnComplete: true, removeOnFail: true, attempts: 1 }
  return {
    worker,
    completions,
    submit: async () => (await queue.add('noop', {}, options)).id,
    async close () {
      await stop(worker)
      await events.close()
      await queue.close()
      await dropKeys(admin, prefix)
    },
  }
}

async function throughputRound (kind, round) {
  const { warmup, n, window, samples } = config.throughput
  const stack = kind === 'ours' ? await ourStack(round) : await bullStack(round)
  try {
    await pump(stack.submit, warmup, window)
    await stack.completions.count(warmup, 120_000, `${kind} warm-up`)
    await sleep(200)
    global.gc()
    const redis0 = await redisStats(admin)
    const worker0 = treeCpu(stack.worker.pid)
    const own0 = process.cpuUsage()
    const start = now()
    const calls = await pump(stack.submit, n, window)
    const submitted = now()
    await stack.completions.count(warmup + n, 300_000, kind)
    const end = stack.completions.lastSeen
    const worker1 = treeCpu(stack.worker.pid)
    const own1 = process.cpuUsage()
    const redis1 = await redisStats(admin)
    const loaded = [...calls].map(([id, t]) => stack.completions.done.get(id).at - t)
    // Unloaded: one job at a time, each waited for before the next.
    const unloaded = []
    for (let i = 0; i < samples; i++) {
      const t = now()
      const id = await stack.submit()
      await stack.completions.one(id)
      unloaded.push(stack.completions.done.get(id).at - t)
    }
    const seconds = (end - start) / 1000
    return {
      rate: n / seconds,
      seconds,
      submitRate: n / ((submitted - start) / 1000),
      loaded: summary(loaded),
      unloaded: summary(unloaded),
      workerCpu: (worker1.own - worker0.own) * 1000 / n,
      childrenCpu: (worker1.children - worker0.children) * 1000 / n,
      ownCpu: (own1.user + own1.system - own0.user - own0.system) / n,
      redis: redisDelta(redis0, redis1, n),
      failed: stack.completions.failed,
    }
  } finally {
    await stack.close()
  }
}

const fmtTop = top => top.map(([name, perJob]) => `${name} ${fmt(perJob, 1)}`).join(', ')

async function benchThroughput () {
  const { rounds, n, warmup, window, samples, children: c } = config.throughput
  console.error(`1. no-op throughput and latency: ours vs raw BullMQ, ${rounds} alternating rounds of ${fmt(n)} jobs, ${c} children each`)
  const runs = { ours: [], bullmq: [] }
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? ['ours', 'bullmq'] : ['bullmq', 'ours']
    for (const kind of order) {
      const result = await throughputRound(kind, round)
      runs[kind].push(result)
      console.error(`  round ${round + 1} ${kind}: ${fmt(result.rate)} jobs/s, submit -> run() p50 loaded ${fmt(result.loaded.p50, 1)} ms, unloaded ${fmt(result.unloaded.p50, 2)} ms`)
    }
  }
  const med = (kind, pick) => median(runs[kind].map(pick))
  const list = (kind, pick, digits = 0) => runs[kind].map(r => fmt(pick(r), digits)).join(', ')
  const label = { ours: 'ours (API node + 1 worker process)', bullmq: 'raw BullMQ (sandboxed processor)' }
  for (const kind of ['ours', 'bullmq']) {
    row(`no-op throughput, ${label[kind]}, ${fmt(n)} jobs, ${c} children`, `${fmt(med(kind, r => r.rate))} jobs/s (runs: ${list(kind, r => r.rate)})`, 'baseline', '-')
  }
  const ratio = med('ours', r => r.rate) / med('bullmq', r => r.rate)
  row('no-op throughput ratio ours / BullMQ (medians)', fmt(ratio, 2), '>= 2.00', pass(ratio >= 2))
  for (const kind of ['ours', 'bullmq']) {
    row(`submit -> run() entered, unloaded (one job at a time), ${kind}: p50 / p99 (median of rounds)`,
      `${fmt(med(kind, r => r.unloaded.p50), 2)} / ${fmt(med(kind, r => r.unloaded.p99), 2)} ms (p50 runs: ${list(kind, r => r.unloaded.p50, 2)})`, 'info', '-')
  }
  const p50Ratio = med('ours', r => r.unloaded.p50) / med('bullmq', r => r.unloaded.p50)
  row('submit -> run() entered, unloaded p50 ratio ours / BullMQ', fmt(p50Ratio, 2), '< 1.00', pass(p50Ratio < 1))
  for (const kind of ['ours', 'bullmq']) {
    row(`submit -> run() entered, during the ${fmt(n)}-job batch (queueing included), ${kind}: p50 / p99`,
      `${fmt(med(kind, r => r.loaded.p50), 1)} / ${fmt(med(kind, r => r.loaded.p99), 1)} ms`, 'info', '-')
  }
  const loadedRatio = med('ours', r => r.loaded.p50) / med('bullmq', r => r.loaded.p50)
  row('submit -> run() entered, batch p50 ratio ours / BullMQ', fmt(loadedRatio, 2), '< 1.00', pass(loadedRatio < 1))
  for (const kind of ['ours', 'bullmq']) {
    row(`submit rate during the batch (calls resolved), ${kind}`, `${fmt(med(kind, r => r.submitRate))} jobs/s`, 'info', '-')
  }
  for (const kind of ['ours', 'bullmq']) {
    row(`CPU per job, ${kind}: worker process / its children / this process (${kind === 'ours' ? 'API node' : 'Queue'}, submitter, observer) / redis-server`,
      `${fmt(med(kind, r => r.workerCpu))} / ${fmt(med(kind, r => r.childrenCpu))} / ${fmt(med(kind, r => r.ownCpu))} / ${fmt(med(kind, r => r.redis.cpuPerJob))} µs`, 'info', '-')
  }
  for (const kind of ['ours', 'bullmq']) {
    const last = runs[kind].at(-1)
    row(`Redis commands per job, ${kind} (scripts' own commands included)`, `${fmt(med(kind, r => r.redis.callsPerJob), 1)} (most: ${fmtTop(last.redis.top)})`, 'info', '-')
  }
  const failed = [...runs.ours, ...runs.bullmq].flatMap(r => r.failed)
  row('no-op jobs failed (both stacks, all rounds)', `${failed.length}${failed.length > 0 ? ` (e.g. ${failed.slice(0, 2).join('; ')})` : ''}`, '0', pass(failed.length === 0))
  notes.push(`Throughput: ${rounds} rounds alternating which stack goes first; each round and stack on a fresh prefix (ours: the plugin's \`redis.prefix\`; BullMQ: its \`prefix\`, one queue), ` +
    `with fresh worker processes, ${fmt(warmup)} warm-up jobs, then ${fmt(n)} measured jobs, then ${samples} jobs one at a time; keys removed after. ` +
    `Submission, both stacks: one call per job, ${window} calls in flight, from this process: ours \`app.tasks.submit('stamp')\` (in-process, no HTTP: validates, writes the record, adds the BullMQ job), ` +
    'BullMQ `queue.add(name, {}, { removeOnComplete: true, removeOnFail: true, attempts: 1 })` (the options our stack gives its jobs; BullMQ picks the job id, ours uses the task uuid). ' +
    `Jobs/s = measured jobs / (first submit call -> the last completion seen by this process). Completions are observed over Redis by this process: ours on the events channel (a plain subscriber), BullMQ by QueueEvents (its event stream kept whole, maxLen 1,000,000, so it reads from the start and misses nothing). ` +
    'run() entered is stamped by the task / processor (performance.timeOrigin + performance.now(), the clock every process shares). ' +
    `Workers: ours \`node dist/cli.js worker --redis … --prefix … --concurrency ${c}\` (a pool of ${c} warm children, forked before it takes jobs); BullMQ \`new Worker(queue, processorFile, { concurrency: ${c}, useWorkerThreads: false })\` in a process of its own (bench/distributed-bullmq-worker.js), which forks a child per concurrent job and keeps it. ` +
    'CPU per job is over the measured batch: the worker process and all its descendants (from /proc), this process (process.cpuUsage), redis-server (INFO cpu).')
  return { runs, ratio }
}

// ---------------------------------------------------------------------------
// 2. Progress latency across API nodes.

async function benchProgress () {
  const { rounds, every, seconds, delay } = config.progress
  console.error(`2. progress latency across nodes: 2 API node processes, 1 worker process, setProgress every ${every} ms for ${seconds} s, ${rounds} rounds`)
  const prefix = '{bench-progress}'
  const nodes = []
  let worker
  const observer = new Redis(redis.url)
  try {
    nodes.push(...await Promise.all([startApiNode(prefix), startApiNode(prefix)]))
    worker = await startOurWorker(prefix, 1)
    const published = new Map()
    /** Progress value -> when the plain subscriber got it, to time the API node's own part. */
    const onBus = new Map()
    observer.on('message', (channel, text) => {
      const at = now()
      const event = JSON.parse(text)
      if (event.type === 'progress') {
        published.get(event.uuid)?.push(at - event.progress)
        onBus.set(event.progress, at)
      }
    })
    await observer.subscribe(`${prefix}:events`)
    const samples = { other: [], same: [], bus: [], hop: [] }
    const perRound = []
    let finals = 0
    let closes = 0
    const anomalies = []
    const count = Math.round(seconds * 1000 / every)
    for (let round = 0; round < rounds; round++) {
      const [a, b] = round % 2 === 0 ? nodes : [nodes[1], nodes[0]]
      const response = await fetch(`http://127.0.0.1:${a.port}/tasks`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ task: 'ticker', inputs: { every, count, delay } }),
      })
      if (response.status !== 201) throw new Error(`POST /tasks answered ${response.status}: ${await response.text()}`)
      const { uuid } = await response.json()
      published.set(uuid, [])
      const mine = { other: [], same: [] }
      const follow = (port, into, hops) => new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/tasks/${uuid}/events`, { perMessageDeflate: false })
        let lastSeq = -1
        let final = false
        ws.on('message', (data) => {
          const at = now()
          const frame = JSON.parse(data)
          if (frame.seq !== undefined && !(frame.seq > lastSeq)) anomalies.push(`seq ${frame.seq} after ${lastSeq}`)
          lastSeq = frame.seq ?? lastSeq
          if (frame.type === 'progress') {
            into.push(at - frame.progress)
            const busAt = onBus.get(frame.progress)
            if (hops !== undefined && busAt !== undefined) hops.push(at - busAt)
          }
          else if (frame.type === 'status' && FINAL.has(frame.status)) final = true
          else if (frame.type === 'error') anomalies.push(`error frame: ${frame.message}`)
        })
        ws.once('error', reject)
        ws.once('close', (code) => {
          if (final) finals++
          if (code === 1000) closes++
          resolve()
        })
      })
      const timeout = sleep(delay + seconds * 1000 + 30_000).then(() => { throw new Error(`round ${round + 1}: the sockets did not close`) })
      await Promise.race([Promise.all([follow(b.port, mine.other, samples.hop), follow(a.port, mine.same)]), timeout])
      samples.other.push(...mine.other)
      samples.same.push(...mine.same)
      samples.bus.push(...published.get(uuid))
      perRound.push(summary(mine.other))
    }
    const other = summary(samples.other)
    const same = summary(samples.same)
    const bus = summary(samples.bus)
    const hop = summary(samples.hop)
    const deferred = samples.hop.filter(ms => ms > 10).length
    const four = s => `${fmt(s.p50, 1)} / ${fmt(s.p95, 1)} / ${fmt(s.p99, 1)} / ${fmt(s.max, 1)} ms`
    row(`progress latency, WebSocket client on the OTHER API node (setProgress -> frame received), p50 / p95 / p99 / max (n=${other.n})`, four(other), 'p99 <= 100 ms', pass(other.p99 <= 100))
    row('  per round p99', perRound.map(s => `${fmt(s.p99, 1)} ms (n=${s.n})`).join(', '), 'info', '-')
    row(`  the same, client on the node the task was submitted to (n=${same.n})`, four(same), 'info', '-')
    row(`  of which setProgress -> event on Redis pub/sub (a plain subscriber in the bench process; n=${bus.n})`, four(bus), 'info', '-')
    row(`  of which pub/sub -> frame from the other API node (the same value; n=${hop.n})`, `${four(hop)}; ${deferred} frames over 10 ms`, 'info', '-')
    notes.push(`Progress: 2 API node processes (bench/distributed-node.js: the plugin with \`redis\`, concurrency 0, progressInterval ${PROGRESS_INTERVAL} ms, the default) and 1 worker process (dist/cli.js worker, concurrency 1, progressInterval ${PROGRESS_INTERVAL} ms). ` +
      `Each round POSTs a ticker task to one node (alternating) over HTTP; a WebSocket on GET /tasks/:uuid/events on each node follows it; after ${delay} ms the task calls setProgress ${count} times, every ${every} ms, with the wall-clock time as the value; latency = receive time - value. ` +
      `The child coalesces updates to one per ${PROGRESS_INTERVAL} ms (sending the latest, so a value waits up to ${every} ms plus the pace), the worker writes the record and publishes on Redis, every API node receives it and paces each client to one frame per ${PROGRESS_INTERVAL} ms (a frame that comes less than that after the previous one waits for the rest of the interval: the frames over 10 ms in the API node's part). ` +
      `All processes on this machine: one clock. ${finals} of ${rounds * 2} sockets got the final status, ${closes} were closed by the server with 1000; ${anomalies.length} anomalies${anomalies.length > 0 ? ` (e.g. ${anomalies.slice(0, 3).join('; ')})` : ''}.`)
  } finally {
    await stop(worker)
    await Promise.all(nodes.map(node => stop(node.child)))
    observer.disconnect()
    await dropKeys(admin, prefix)
  }
}

// ---------------------------------------------------------------------------
// 3. CPU-bound tasks on 1, 2 and 4 workers.

/**
 * Iterations of `burn` that take about `ms` of CPU here: timed by this process's CPU time,
 * not the wall clock, which other work on the machine stretches (the least of 5, after a warm-up).
 */
function calibrate (ms) {
  burn(5_000_000)
  const probe = 20_000_000
  const times = []
  for (let i = 0; i < 5; i++) {
    const cpu = process.cpuUsage()
    burn(probe)
    const used = process.cpuUsage(cpu)
    times.push((used.user + used.system) / 1000)
  }
  return Math.round(probe * ms / Math.min(...times))
}

async function cpuRound (workers, iterations, round) {
  const { tasks } = config.cpu
  const prefix = `{bench-cpu-${round}-${workers}}`
  const processes = await Promise.all(Array.from({ length: workers }, () => startOurWorker(prefix, 1)))
  const app = Fastify({ logger: false, pluginTimeout: 120_000 })
  const completions = new Completions()
  const observer = new Redis(redis.url)
  const ran = new Map()
  try {
    await app.register(taskApi, { tasks: [TASKS], redis: { connection: redis.url, prefix }, concurrency: 0 })
    await app.ready()
    observer.on('message', (channel, text) => {
      const event = JSON.parse(text)
      if (event.type === 'status' && event.task !== undefined && FINAL.has(event.status)) {
        ran.set(event.uuid, event.task.outputs)
        completions.record(event.uuid, event.task.outputs?.at, event.status === 'succeeded', event.task.error)
      }
    })
    await observer.subscribe(`${prefix}:events`)
    await sleep(200)
    const start = now()
    await pump(() => app.tasks.submit('spin', { iterations }).then(task => task.uuid), tasks, 64)
    await completions.count(tasks, 300_000, `${workers} workers`)
    const seconds = (completions.lastSeen - start) / 1000
    const outputs = [...ran.values()].filter(o => o?.ms !== undefined)
    const cores = outputs.reduce((sum, o) => sum + o.cpuMs, 0) / 1000 / seconds
    return { rate: tasks / seconds, seconds, cores, taskMs: median(outputs.map(o => o.ms)), taskCpuMs: median(outputs.map(o => o.cpuMs)), failed: completions.failed }
  } finally {
    await Promise.all(processes.map(child => stop(child)))
    await app.close()
    observer.disconnect()
    await dropKeys(admin, prefix)
  }
}

async function benchCpu (throughput) {
  const { rounds, tasks, taskMs, workers } = config.cpu
  const iterations = calibrate(taskMs)
  console.error(`3. CPU-bound tasks: ${tasks} tasks of ~${taskMs} ms CPU (${fmt(iterations)} iterations) on ${workers.join(', ')} worker processes, ${rounds} rounds`)
  const runs = new Map(workers.map(w => [w, []]))
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? workers : [...workers].reverse()
    for (const w of order) {
      const result = await cpuRound(w, iterations, round)
      runs.get(w).push(result)
      console.error(`  round ${round + 1}, ${w} worker(s): ${fmt(result.rate, 2)} tasks/s (${fmt(result.seconds, 2)} s; loop in the child ${fmt(result.taskMs)} ms wall, ${fmt(result.taskCpuMs)} ms CPU; the tasks got ${fmt(result.cores, 2)} cores)`)
    }
  }
  const base = median(runs.get(workers[0]).map(r => r.rate))
  for (const w of workers) {
    const rate = median(runs.get(w).map(r => r.rate))
    const factor = rate / base
    const target = w === 1 ? 'baseline' : w === 2 ? '~2x' : '~2x (2 cores)'
    const verdict = w === 1 ? '-' : pass(factor >= 1.7)
    row(`CPU-bound, ${fmt(tasks)} tasks, ${w} worker process${w > 1 ? 'es' : ''} (concurrency 1): tasks/s, scaling vs 1`,
      `${fmt(rate, 2)} tasks/s, ${fmt(factor, 2)}x (runs: ${runs.get(w).map(r => fmt(r.rate, 2)).join(', ')}; loop in the child, medians: ${fmt(median(runs.get(w).map(r => r.taskMs)))} ms wall, ${fmt(median(runs.get(w).map(r => r.taskCpuMs)))} ms CPU; cores the tasks got: ${runs.get(w).map(r => fmt(r.cores, 2)).join(', ')})`, target, verdict)
  }
  // The machine is shared: how many cores the tasks got varies with the other work on it.
  // Tasks/s per core they got stays flat if distributing them costs nothing.
  const perCore = w => median(runs.get(w).map(r => r.rate / r.cores))
  row(`CPU-bound, tasks/s per core the tasks got, ${workers.join(' / ')} workers (ideal: 1,000 / the task's CPU ms)`,
    `${workers.map(w => fmt(perCore(w), 2)).join(' / ')} (${workers.slice(1).map(w => `${w}: ${fmt(perCore(w) / perCore(workers[0]), 2)}x of 1`).join(', ')}; ideal ${fmt(1000 / median(runs.get(workers[0]).map(r => r.taskCpuMs)), 2)})`,
    'info', '-')
  const failed = [...runs.values()].flat().flatMap(r => r.failed)
  if (failed.length > 0) row('CPU-bound tasks failed', `${failed.length} (e.g. ${failed.slice(0, 2).join('; ')})`, '0', 'MISS')
  notes.push(`CPU-bound: each task runs a fixed loop (bench/distributed-tasks.js \`burn\`, ${fmt(iterations)} iterations, calibrated on this process's CPU time to ~${taskMs} ms of CPU) rather than spinning on the clock, so that a task costs the same CPU however the cores are shared; ` +
    `"loop in the child" is its wall time and CPU time there (the wall time grows past the CPU time when more processes than cores compete, ours or the machine's other work); "cores the tasks got" is the tasks' CPU time summed over the batch's wall time: scaling can only follow it. Each configuration on a fresh prefix, fresh worker processes (forked in parallel, each with 1 warm child), an API node in this process (concurrency 0), ${tasks} tasks submitted at once (app.tasks.submit), ` +
    `tasks/s = ${tasks} / (first submit -> last completion seen); rounds alternate the order (${workers.join(', ')} then reversed).`)
  // Extrapolation from step 1: what Redis and an API node spend per task.
  if (throughput !== undefined) {
    const ours = throughput.runs.ours
    const redisUs = median(ours.map(r => r.redis.cpuPerJob))
    const nodeUs = median(ours.map(r => r.ownCpu))
    const workerUs = median(ours.map(r => r.workerCpu + r.childrenCpu))
    notes.push(`Scaling to N machines: tasks spread over workers by the queue, so CPU-bound work scales with the cores running workers (above: with the cores of this machine) until a shared part saturates. ` +
      `Per no-op task (step 1, ours) Redis spent ${fmt(redisUs)} µs of CPU, so one Redis core (single-threaded) caps the deployment at about ${fmt(1e6 / redisUs)} tasks/s whatever the number of workers; ` +
      `the API node spent ${fmt(nodeUs)} µs per task (submit plus receiving every event; with the observer and submitter), about ${fmt(1e6 / nodeUs)} tasks/s per API node core (API nodes add up, but each receives every event of every task over pub/sub, so this part does not shrink per node as nodes are added); ` +
      `the worker and its children ${fmt(workerUs)} µs of overhead per task. For ${taskMs} ms tasks a core runs about ${fmt(1000 / taskMs)} tasks/s, so Redis would saturate at roughly ${fmt(1e6 / redisUs / (1000 / taskMs))} worker cores ` +
      `(and for tasks of 10 ms at about ${fmt(1e6 / redisUs / 100)}); with progress updates or messages each event adds a store write and a publish. Estimates from one machine where Redis shares 2 cores with everything else.`)
  }
}

// ---------------------------------------------------------------------------

const watchdog = setTimeout(() => {
  console.error(`distributed bench: still running after ${config.watchdog / 1000} s; killing what it started and exiting`)
  killEverything()
  process.exit(1)
}, config.watchdog)
watchdog.unref()

await mkdir(new URL('./results/', import.meta.url), { recursive: true })
if (profileDir !== undefined) await mkdir(profileDir, { recursive: true })

const wanted = process.argv.slice(2)
const want = name => wanted.length === 0 || wanted.includes(name)

async function step (name, fn) {
  try {
    return await fn()
  } catch (err) {
    console.error(err)
    row(name, `ERROR: ${err.message}`, '-', 'ERROR')
  }
}

let left = []
try {
  redis = await startRedis()
  admin = new Redis(redis.url)
  let throughput
  if (want('throughput')) throughput = await step('throughput', benchThroughput)
  if (want('progress')) await step('progress', benchProgress)
  if (want('cpu')) await step('cpu', () => benchCpu(throughput))
} finally {
  admin?.disconnect()
  await redis?.stop()
  killEverything()
  await sleep(200)
  const table = processTable()
  left = [...seen].filter(([pid, start]) => table.get(pid)?.start === start && table.get(pid)?.state !== 'Z').map(([pid]) => pid)
}

const loadAfter = os.loadavg()
notes.push(`Processes: the bench started and saw ${seen.size} processes (redis-server, workers, their children, API nodes); ` +
  `${orphans.length} outlived their parent's stop by a second and were killed${orphans.length > 0 ? ` (${orphans.slice(0, 3).join('; ')})` : ''}; ` +
  `${left.length} left after the cleanup${left.length > 0 ? ` (pids ${left.join(', ')})` : ''}.`)
const output = report.markdown(`fastify-task-api scale-out benchmarks${quick ? ' (BENCH_QUICK=1)' : ''}`, [
  `redis-server ${redis?.version ?? '?'} of the bench's own on 127.0.0.1:${redis?.port ?? '?'} (no persistence), BullMQ ${JSON.parse(readFileSync(new URL('../node_modules/bullmq/package.json', import.meta.url), 'utf8')).version}`,
  `Load average before / after: ${loadBefore.map(x => x.toFixed(2)).join(', ')} / ${loadAfter.map(x => x.toFixed(2)).join(', ')}`,
])
console.log('\n' + output)
await writeFile(new URL('./results/distributed.md', import.meta.url), output)
clearTimeout(watchdog)
