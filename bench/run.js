// Benchmarks of fastify-task-api, all measured in one run on this machine.
// Run with `npm run bench` (builds, then `node --expose-gc bench/run.js`).
// Targets are not asserted: each line gets a verdict, the process exits 0 either way.
import { fork } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { createReport, fmt, pass, percentile } from './report.js'
import { serverCpu } from './serve.js'
import { fileURLToPath } from 'node:url'
import autocannon from 'autocannon'
import Fastify from 'fastify'
import taskApi, { MemoryStore } from 'fastify-task-api'

const TASKS = new URL('./tasks.js', import.meta.url)
const PROGRESS_INTERVAL = 50

const config = {
  http: { connections: 10, warmup: 1, duration: 4, rounds: 5 },
  latency: { warmup: 200, iterations: 2000 },
  throughput: { warmup: 5_000, n: 50_000 },
  spin: { calls: 20_000_000 },
  memory: { n: 100_000, batch: 10_000 },
  isolation: { spaced: 40, gapMs: 250, batch: 300 },
  sqlite: { rounds: 5, n: 20_000, httpRounds: 5 },
}

if (typeof global.gc !== 'function') {
  console.error('run with node --expose-gc bench/run.js (npm run bench does)')
  process.exit(1)
}

const report = createReport()
const { row, notes } = report



async function newApp (options = {}) {
  const app = Fastify({ logger: false })
  await app.register(taskApi, { tasks: [TASKS], concurrency: 2, runner: 'process', progressInterval: PROGRESS_INTERVAL, ...options })
  await app.ready()
  return app
}

// ---------------------------------------------------------------------------
// 1. HTTP submit: plugin route vs bare route, each server in its own process.

function startServer (file, env = process.env) {
  const child = fork(fileURLToPath(new URL(file, import.meta.url)), [], { execArgv: [], env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${file} did not start in 15 s`)), 15_000)
    child.once('error', reject)
    child.once('exit', code => reject(new Error(`${file} exited with code ${code} before listening`)))
    child.on('message', (message) => {
      if (message?.type === 'listening') {
        clearTimeout(timer)
        resolve(message.port)
      }
    })
  })
  return { child, ready }
}

function stopServer (child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(undefined)
  return new Promise((resolve) => {
    let info
    child.on('message', (message) => { if (message?.type === 'closed') info = message })
    const kill = setTimeout(() => child.kill('SIGKILL'), 5_000)
    child.once('exit', () => { clearTimeout(kill); resolve(info) })
    child.kill('SIGTERM')
  })
}

function cannon (port, duration) {
  return autocannon({
    url: `http://127.0.0.1:${port}/tasks`,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ task: 'noop', inputs: { name: 'x' } }),
    connections: config.http.connections,
    duration,
  })
}

async function httpBench (file, env) {
  const { child, ready } = startServer(file, env)
  try {
    const port = await ready
    await cannon(port, config.http.warmup)
    const cpu0 = await serverCpu(child)
    const result = await cannon(port, config.http.duration)
    const cpu1 = await serverCpu(child)
    const closed = await stopServer(child)
    return {
      rps: result.requests.average,
      non2xx: result.non2xx,
      errors: result.errors + result.timeouts,
      total: result.requests.total,
      p99: result.latency.p99,
      cpuPerRequest: (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / result.requests.total,
      queuedAtClose: closed?.stats?.queued,
    }
  } finally {
    await stopServer(child)
  }
}

const median = values => percentile([...values].sort((a, b) => a - b), 50)

async function benchHttp () {
  console.error('1. HTTP submit (autocannon)')
  // The machine is noisy: interleave the two servers over a few rounds (alternating
  // which goes first) and compare medians. Each run gets a freshly forked server.
  const runs = { bare: [], plugin: [] }
  for (let round = 0; round < config.http.rounds; round++) {
    const order = round % 2 === 0 ? ['bare', 'plugin'] : ['plugin', 'bare']
    for (const name of order) {
      const result = await httpBench(`./server-${name}.js`)
      runs[name].push(result)
      console.error(`  round ${round + 1} ${name}: ${fmt(result.rps)} req/s`)
    }
  }
  const bare = median(runs.bare.map(r => r.rps))
  const plugin = median(runs.plugin.map(r => r.rps))
  const ratio = plugin / bare
  const list = rs => rs.map(r => fmt(r.rps)).join(', ')
  const p99 = rs => median(rs.map(r => r.p99))
  row('HTTP POST /tasks, bare Fastify route', `${fmt(bare)} req/s (runs: ${list(runs.bare)}; p99 ${p99(runs.bare)} ms)`, 'baseline', '-')
  row('HTTP POST /tasks, plugin route', `${fmt(plugin)} req/s (runs: ${list(runs.plugin)}; p99 ${p99(runs.plugin)} ms)`, 'baseline', '-')
  row('HTTP submit ratio plugin/bare (medians)', fmt(ratio, 2), '>= 0.70', pass(ratio >= 0.7))
  const cpuBare = median(runs.bare.map(r => r.cpuPerRequest))
  const cpuPlugin = median(runs.plugin.map(r => r.cpuPerRequest))
  row('HTTP server CPU per request, bare / plugin (medians)', `${fmt(cpuBare, 1)} / ${fmt(cpuPlugin, 1)} µs (bare/plugin ${fmt(cpuBare / cpuPlugin, 2)})`, 'info', '-')
  const sum = (rs, key) => rs.reduce((total, r) => total + r[key], 0)
  const bad = sum(runs.plugin, 'non2xx') + sum(runs.bare, 'non2xx') + sum(runs.plugin, 'errors') + sum(runs.bare, 'errors')
  row('HTTP non-2xx / errors (plugin; bare)', `${sum(runs.plugin, 'non2xx')} / ${sum(runs.plugin, 'errors')}; ${sum(runs.bare, 'non2xx')} / ${sum(runs.bare, 'errors')}`, '0', pass(bad === 0))
  notes.push(`HTTP: ${config.http.rounds} interleaved rounds, ${config.http.connections} connections, ${config.http.warmup} s warmup + ${config.http.duration} s measured per run, body {"task":"noop","inputs":{"name":"x"}}, 127.0.0.1; ` +
    'the plugin server runs the noop task in one child (concurrency 1), which shares the 2 cores with the server and autocannon. ' +
    'CPU per request is the server process\'s own user+system time over the measured run divided by the requests served (the task child is not counted); it is less sensitive to noise than req/s.')
  const last = runs.plugin.at(-1)
  if (last?.queuedAtClose !== undefined) {
    notes.push(`HTTP: in the last plugin run the server accepted ${fmt(last.total)} tasks in ${config.http.duration} s; ${fmt(last.queuedAtClose)} were still queued when it closed ` +
      '(the route accepts faster than one child runs noop tasks under load; the queue has no bound).')
  }
}

// ---------------------------------------------------------------------------
// 2. submit -> run() entered latency, warm pool, one task at a time.

async function benchLatency () {
  console.error('2. submit -> run() entered latency')
  const app = await newApp()
  try {
    const latencies = []
    const roundTrips = []
    const total = config.latency.warmup + config.latency.iterations
    for (let i = 0; i < total; i++) {
      const t0 = performance.timeOrigin + performance.now()
      const record = await app.tasks.submit('entered')
      const final = await app.tasks.wait(record.uuid)
      const t1 = performance.timeOrigin + performance.now()
      if (i < config.latency.warmup) continue
      if (final.status !== 'succeeded') throw new Error(`entered task ${final.status}: ${final.error}`)
      latencies.push(final.outputs.at - t0)
      roundTrips.push(t1 - t0)
    }
    latencies.sort((a, b) => a - b)
    roundTrips.sort((a, b) => a - b)
    const p50 = percentile(latencies, 50)
    const p99 = percentile(latencies, 99)
    row('submit -> run() entered, p50', `${fmt(p50, 3)} ms`, '<= 0.5 ms', pass(p50 <= 0.5))
    row('submit -> run() entered, p99', `${fmt(p99, 3)} ms`, '<= 2 ms', pass(p99 <= 2))
    row('submit -> wait() resolved (round trip), p50 / p99', `${fmt(percentile(roundTrips, 50), 3)} / ${fmt(percentile(roundTrips, 99), 3)} ms`, 'info', '-')
    const min = latencies[0]
    notes.push(`Latency: ${config.latency.iterations} samples after ${config.latency.warmup} warmup; min ${fmt(min, 3)} ms, max ${fmt(latencies.at(-1), 3)} ms. ` +
      'Entered time is the child\'s performance.timeOrigin + now(): both processes read the same wall clock, but each process fixes its timeOrigin once at start, so a skew of a few microseconds is possible' +
      (min < 0 ? ' (negative samples were seen: the skew is larger than the real latency)' : '') + '.')
  } finally {
    await app.close()
  }
}

// ---------------------------------------------------------------------------
// 3. No-op throughput, 2 children, programmatic submit.

async function runBatch (app, n, inputs) {
  const waits = new Array(n)
  for (let i = 0; i < n; i++) {
    const record = await app.tasks.submit('noop', inputs)
    waits[i] = app.tasks.wait(record.uuid)
  }
  const finals = await Promise.all(waits)
  let succeeded = 0
  for (const final of finals) if (final.status === 'succeeded') succeeded++
  return succeeded
}

async function benchThroughput () {
  console.error('3. no-op throughput')
  const app = await newApp()
  try {
    await runBatch(app, config.throughput.warmup, { name: 'x' })
    const t = performance.now()
    const succeeded = await runBatch(app, config.throughput.n, { name: 'x' })
    const seconds = (performance.now() - t) / 1000
    const rate = config.throughput.n / seconds
    row(`no-op throughput (${fmt(config.throughput.n)} tasks, 2 children)`, `${fmt(rate)} tasks/s (${fmt(seconds, 2)} s)`, '>= 10,000 tasks/s', pass(rate >= 10_000))
    if (succeeded !== config.throughput.n) {
      row('no-op throughput: tasks succeeded', `${fmt(succeeded)} of ${fmt(config.throughput.n)}`, 'all', 'MISS')
    }
  } finally {
    await app.close()
  }
}

// ---------------------------------------------------------------------------
// 4. setProgress tight loop, and how many IPC updates reach the parent.

async function benchSpin () {
  console.error('4. setProgress tight loop')
  const app = await newApp()
  try {
    const calls = config.spin.calls
    let progressEvents = 0
    let runningAt
    let finishedAt
    const submittedAt = performance.now()
    const record = await app.tasks.submit('spin', { calls })
    const unsubscribe = app.tasks.subscribe(record.uuid, (event) => {
      if (event.type === 'progress') progressEvents++
      else if (event.type === 'status' && event.status === 'running') runningAt = performance.now()
      else if (event.type === 'status') finishedAt = performance.now()
    })
    const final = await app.tasks.wait(record.uuid)
    unsubscribe()
    if (final.status !== 'succeeded') throw new Error(`spin task ${final.status}: ${final.error}`)
    const perSecond = final.outputs.perSecond
    const loopMs = calls / perSecond * 1000
    // The run as the parent saw it: from the "running" status (or the submit, when the
    // task was already running by the time we subscribed) to the final status.
    const runMs = (finishedAt ?? performance.now()) - (runningAt ?? submittedAt)
    const bound = Math.ceil(runMs / PROGRESS_INTERVAL) + 2
    row(`setProgress calls/s inside the child (${fmt(calls)} calls)`, `${fmt(perSecond)} /s`, '>= 5,000,000 /s', pass(perSecond >= 5_000_000))
    row('setProgress IPC updates', `${progressEvents} for a ${fmt(runMs)} ms run (bound ${bound})`, `<= ${bound}`, pass(progressEvents <= bound))
    const exact = final.progress === calls && final.target === calls
    row('setProgress final record progress / target', `${fmt(final.progress)} / ${fmt(final.target)}`, `${fmt(calls)} exactly`, pass(exact))
    notes.push(`setProgress: the loop itself took ${fmt(loopMs)} ms inside the child; the run seen by the parent (running -> final status) took ${fmt(runMs)} ms.`)
  } finally {
    await app.close()
  }
}

// ---------------------------------------------------------------------------
// 5. Heap held by 100,000 finished small records in the memory store.

async function settleAndGc () {
  for (let i = 0; i < 4; i++) {
    await new Promise(resolve => setImmediate(resolve))
    global.gc()
  }
}

async function benchMemory () {
  console.error('5. memory of finished records')
  const store = new MemoryStore() // the default store, made explicit to read its size
  const app = await newApp({ store })
  try {
    await settleAndGc()
    const before = process.memoryUsage().heapUsed
    let succeeded = 0
    for (let done = 0; done < config.memory.n; done += config.memory.batch) {
      succeeded += await runBatch(app, Math.min(config.memory.batch, config.memory.n - done), { name: 'x' })
    }
    await settleAndGc()
    const after = process.memoryUsage().heapUsed
    const mb = (after - before) / 1024 / 1024
    row(`heap for ${fmt(config.memory.n)} finished records`, `${fmt(mb, 1)} MB (${fmt((after - before) / config.memory.n)} B/record)`, '<= 100 MB', pass(mb <= 100))
    notes.push(`Memory: ${fmt(succeeded)} tasks succeeded; the store holds ${fmt(store.size)} records (app kept open while measuring).`)
  } finally {
    await app.close()
  }
}

// ---------------------------------------------------------------------------


// 6. childPerTask: the cost of a fresh child for every task, against the warm pool, in one run.

async function benchIsolation () {
  console.error('6. childPerTask against the warm pool')
  const results = {}
  for (const [mode, options] of [['warm', {}], ['childPerTask', { childPerTask: true }]]) {
    const app = await newApp(options)
    try {
      // Spaced out, so that a spare child is ready for each task: the latency a user sees
      // when tasks do not arrive faster than children fork.
      const latencies = []
      for (let i = 0; i < config.isolation.spaced + 5; i++) {
        await new Promise(resolve => setTimeout(resolve, config.isolation.gapMs))
        const t0 = performance.timeOrigin + performance.now()
        const final = await app.tasks.wait((await app.tasks.submit('entered')).uuid)
        if (final.status !== 'succeeded') throw new Error(`entered task ${final.status}: ${final.error}`)
        if (i >= 5) latencies.push(final.outputs.at - t0)
      }
      latencies.sort((a, b) => a - b)
      // Back to back: bounded by how fast children fork.
      const t = performance.now()
      const succeeded = await runBatch(app, config.isolation.batch, { name: 'x' })
      const seconds = (performance.now() - t) / 1000
      if (succeeded !== config.isolation.batch) throw new Error(`${mode}: ${succeeded} of ${config.isolation.batch} succeeded`)
      results[mode] = { p50: percentile(latencies, 50), p99: percentile(latencies, 99), rate: config.isolation.batch / seconds }
    } finally {
      await app.close()
    }
  }
  const { warm, childPerTask } = results
  row(`submit -> run() entered, one task every ${config.isolation.gapMs} ms, warm / childPerTask, p50`, `${fmt(warm.p50, 3)} / ${fmt(childPerTask.p50, 3)} ms`, 'info', '-')
  row(`submit -> run() entered, one task every ${config.isolation.gapMs} ms, warm / childPerTask, p99`, `${fmt(warm.p99, 3)} / ${fmt(childPerTask.p99, 3)} ms`, 'info', '-')
  row(`no-op throughput back to back (${fmt(config.isolation.batch)} tasks, 2 children), warm / childPerTask`, `${fmt(warm.rate)} / ${fmt(childPerTask.rate)} tasks/s (childPerTask ${fmt(childPerTask.rate / warm.rate, 4)} of warm)`, 'info', '-')
}

// ---------------------------------------------------------------------------
// 7. The SQLite store against the memory store (no-op throughput, the event loop) and
// against a bare route (HTTP submit), rounds alternating, in one run.

async function benchSqlite () {
  console.error('7. SQLite store')
  const { SqliteStore } = await import('fastify-task-api/sqlite')
  const { mkdtemp, rm } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const { monitorEventLoopDelay } = await import('node:perf_hooks')
  const dir = await mkdtemp(join(tmpdir(), 'task-api-bench-'))
  try {
    const rates = { memory: [], sqlite: [] }
    const delays = { memory: [], sqlite: [] }
    const held = []
    for (let round = 0; round < config.sqlite.rounds; round++) {
      for (const kind of round % 2 === 0 ? ['memory', 'sqlite'] : ['sqlite', 'memory']) {
        const store = kind === 'sqlite' ? new SqliteStore({ path: join(dir, `throughput-${round}.db`) }) : new MemoryStore()
        const app = await newApp({ store })
        try {
          await runBatch(app, 2_000, { name: 'x' })
          const histogram = monitorEventLoopDelay({ resolution: 1 })
          histogram.enable()
          const t = performance.now()
          const succeeded = await runBatch(app, config.sqlite.n, { name: 'x' })
          const seconds = (performance.now() - t) / 1000
          histogram.disable()
          if (succeeded !== config.sqlite.n) throw new Error(`${kind}: ${succeeded} of ${config.sqlite.n} succeeded`)
          rates[kind].push(config.sqlite.n / seconds)
          delays[kind].push({ max: histogram.max / 1e6, p99: histogram.percentile(99) / 1e6 })
          if (kind === 'sqlite') held.push(store.stats().longestWriteMs)
          console.error(`  round ${round + 1} ${kind}: ${fmt(config.sqlite.n / seconds)} tasks/s, event loop delay max ${fmt(histogram.max / 1e6, 1)} ms`)
        } finally {
          await app.close()
        }
      }
    }
    const memory = median(rates.memory)
    const sqlite = median(rates.sqlite)
    row(`no-op throughput (${fmt(config.sqlite.n)} tasks, 2 children), memory store`, `${fmt(memory)} tasks/s (runs: ${rates.memory.map(r => fmt(r)).join(', ')})`, 'baseline', '-')
    row(`no-op throughput (${fmt(config.sqlite.n)} tasks, 2 children), SQLite store`, `${fmt(sqlite)} tasks/s (runs: ${rates.sqlite.map(r => fmt(r)).join(', ')})`, 'baseline', '-')
    row('no-op throughput ratio SQLite/memory (medians)', fmt(sqlite / memory, 2), '>= 0.50', pass(sqlite / memory >= 0.5))
    const worst = kind => Math.max(...delays[kind].map(d => d.max))
    const p99 = kind => median(delays[kind].map(d => d.p99))
    row('event-loop delay under that load, SQLite: max / median p99', `${fmt(worst('sqlite'), 1)} / ${fmt(p99('sqlite'), 1)} ms (memory store, same runs: ${fmt(worst('memory'), 1)} / ${fmt(p99('memory'), 1)} ms)`, 'info', '-')
    // The loop's max includes garbage collection and the machine's other load (the memory
    // store's runs show it); the store measures how long its own writes held the loop.
    row('event loop held by the store\'s writes (SqliteStore stats().longestWriteMs), max over the runs', `${fmt(Math.max(...held), 1)} ms (runs: ${held.map(ms => fmt(ms, 1)).join(', ')})`, '<= 20 ms', pass(Math.max(...held) <= 20))

    const http = { bare: [], sqlite: [] }
    for (let round = 0; round < config.sqlite.httpRounds; round++) {
      for (const kind of round % 2 === 0 ? ['bare', 'sqlite'] : ['sqlite', 'bare']) {
        const result = kind === 'bare'
          ? await httpBench('./server-bare.js')
          : await httpBench('./server-plugin.js', { ...process.env, BENCH_DB: join(dir, `http-${round}.db`) })
        http[kind].push(result)
        console.error(`  round ${round + 1} HTTP ${kind}: ${fmt(result.rps)} req/s`)
      }
    }
    const bare = median(http.bare.map(r => r.rps))
    const plugin = median(http.sqlite.map(r => r.rps))
    row('HTTP POST /tasks, plugin route with the SQLite store', `${fmt(plugin)} req/s (runs: ${http.sqlite.map(r => fmt(r.rps)).join(', ')}); bare: ${fmt(bare)} (runs: ${http.bare.map(r => fmt(r.rps)).join(', ')})`, 'baseline', '-')
    row('HTTP submit ratio SQLite plugin/bare (medians)', fmt(plugin / bare, 2), '>= 0.50', pass(plugin / bare >= 0.5))
    const bad = [...http.bare, ...http.sqlite].reduce((total, r) => total + r.non2xx + r.errors, 0)
    row('HTTP non-2xx / errors (SQLite plugin and bare)', String(bad), '0', pass(bad === 0))
    notes.push(`SQLite: ${config.sqlite.rounds} rounds alternating memory and SQLite (a fresh file each), ${fmt(config.sqlite.n)} no-op tasks after 2,000 warm-up, ` +
      'event-loop delay from monitorEventLoopDelay (1 ms resolution) over the measured batch; HTTP as above, with the plugin server on a fresh SQLite file per run.')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------------------

// `node --expose-gc bench/run.js http latency` runs only the steps named (http, latency,
// throughput, spin, memory, isolation, sqlite); no argument runs them all.
const allSteps = { http: benchHttp, latency: benchLatency, throughput: benchThroughput, spin: benchSpin, memory: benchMemory, isolation: benchIsolation, sqlite: benchSqlite }
const wanted = process.argv.slice(2)
const steps = Object.entries(allSteps).filter(([name]) => wanted.length === 0 || wanted.includes(name)).map(([, step]) => step)
for (const step of steps) {
  try {
    await step()
  } catch (err) {
    row(step.name, `ERROR: ${err.message}`, '-', 'ERROR')
  }
}

const output = report.markdown('fastify-task-api benchmarks')

console.log('\n' + output)
await mkdir(new URL('./results/', import.meta.url), { recursive: true })
await writeFile(new URL('./results/latest.md', import.meta.url), output)
