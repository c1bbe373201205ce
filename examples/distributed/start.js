// The distributed example in one command: a Redis, 2 API nodes and 2 workers, each a
// process of its own, as a deployment runs them on separate machines.
//
//   npm run start:distributed        (builds first; or: node examples/distributed/start.js)
//
// Environment: REDIS_URL (a Redis to use; without it a redis-server of the example's own is
// started on a free port, its data in a temporary directory), API_PORTS (default
// 3001,3002), HOST (default 127.0.0.1), WORKERS (2), WORKER_CONCURRENCY (2), REDIS_PREFIX.
//
// Ctrl-C (SIGINT) or SIGTERM stops everything: the API nodes and workers first (a worker
// lets its running tasks end or hands them back), then the redis-server. If any process
// dies on its own, the others are stopped and this exits with code 1.
import { spawn } from 'node:child_process'
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs'
import { createServer, Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

const here = (path) => fileURLToPath(new URL(path, import.meta.url))
const cli = here('../../dist/cli.js')
const tasks = here('./tasks/wait.js')

const host = process.env.HOST ?? '127.0.0.1'
const apiPorts = (process.env.API_PORTS ?? '3001,3002').split(',')
const workerCount = Number(process.env.WORKERS ?? 2)
const concurrency = process.env.WORKER_CONCURRENCY ?? '2'
const prefix = process.env.REDIS_PREFIX ?? '{task-api-example}'
/** How long (ms) the API nodes and workers get to stop before they are killed: above the workers' shutdownTimeout (10 s) and the 2 s from SIGTERM to SIGKILL of a task's process. */
const stopBound = 20_000

function fail (message) {
  console.error(`start.js: ${message}`)
  process.exit(1)
}

for (const port of apiPorts) if (!/^[0-9]+$/.test(port) || Number(port) < 1 || Number(port) > 65535) fail(`API_PORTS must list ports (1 to 65535), got ${JSON.stringify(process.env.API_PORTS)}`)
if (!Number.isInteger(workerCount) || workerCount < 1) fail(`WORKERS must be a whole number, 1 or more, got ${JSON.stringify(process.env.WORKERS)}`)
try {
  accessSync(cli)
} catch {
  fail(`${cli} is missing: build the package first (npm run build), or run npm run start:distributed`)
}

/** The processes started, in order; each `{ name, child, exited }`. */
const processes = []
let stopping = false
let exitCode = 0
let dataDir

/**
 * Starts a process, its output going to ours with each line tagged with its name. Its
 * `ready` promise resolves once a line of its output matches `ready`, and rejects if it
 * exits first.
 */
function start (name, command, args, { env, ready, detached = false }) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env }, detached })
  const entry = { name, child, exited: false }
  processes.push(entry)
  entry.ready = new Promise((resolve, reject) => {
    for (const [stream, out] of [[child.stdout, process.stdout], [child.stderr, process.stderr]]) {
      createInterface({ input: stream }).on('line', (line) => {
        out.write(`[${name}] ${line}\n`)
        if (out === process.stdout && ready?.test(line) === true) resolve(entry)
      })
    }
    child.once('error', (err) => {
      reject(new Error(`${name} could not start: ${err.message}`))
      exited(entry, 1, null)
    })
    child.once('exit', (code, signal) => {
      reject(new Error(`${name} exited before it was ready (${signal ?? `code ${code}`})`))
      exited(entry, code, signal)
    })
  })
  entry.ready.catch(() => {})
  return entry
}

function exited (entry, code, signal) {
  if (entry.exited) return
  entry.exited = true
  if (!stopping) {
    console.error(`start.js: ${entry.name} (pid ${entry.child.pid}) exited unexpectedly (${signal ?? `code ${code}`}): stopping the rest`)
    exitCode = 1
    void stop()
  } else if (code !== 0 && signal !== 'SIGTERM' && signal !== 'SIGINT') {
    // Asked to stop, it ended with an error (or was killed past the bound).
    console.error(`start.js: ${entry.name} (pid ${entry.child.pid}) ended with ${signal ?? `code ${code}`}`)
    exitCode = 1
  }
}

/** Resolves once the process has exited; kills it with SIGKILL if it has not within `ms`. */
function gone (entry, ms) {
  if (entry.exited) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      console.error(`start.js: ${entry.name} (pid ${entry.child.pid}) still runs after ${ms} ms: SIGKILL`)
      exitCode = 1
      entry.child.kill('SIGKILL')
    }, ms)
    entry.child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
  })
}

let stopped
/** API nodes and workers first (a worker needs Redis to hand back its tasks), then Redis. */
function stop () {
  stopping = true
  stopped ??= (async () => {
    const redis = processes.find(entry => entry.name === 'redis-server')
    const others = processes.filter(entry => entry !== redis)
    for (const entry of others) if (!entry.exited) entry.child.kill('SIGTERM')
    await Promise.all(others.map(entry => gone(entry, stopBound)))
    if (redis !== undefined) {
      if (!redis.exited) redis.child.kill('SIGTERM')
      await gone(redis, 10_000)
    }
    if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true })
    console.log(`start.js: stopped${exitCode === 0 ? '' : ' (with errors)'}`)
    process.exit(exitCode)
  })()
  return stopped
}

let firstSignal
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    if (firstSignal !== undefined) {
      // One request sent twice at once (to this process and to its group, as `timeout` does) is one request.
      if (Date.now() - firstSignal < 1000) return
      // A second Ctrl-C does not wait: everything left is killed (a worker's pool reaper ends its task processes).
      console.log(`start.js: ${signal} again: killing what is left`)
      for (const entry of processes) if (!entry.exited) entry.child.kill('SIGKILL')
      return
    }
    firstSignal = Date.now()
    console.log(`start.js: ${signal}: stopping (the same signal again kills what is left)`)
    void stop()
  })
}

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

/** The executable's path, found as the shell would find it. */
function which (command) {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    try {
      accessSync(join(dir, command), constants.X_OK)
      return join(dir, command)
    } catch {}
  }
  return undefined
}

/** Resolves once Redis answers PING on the port (raw RESP: no client library needed). */
async function pong (port, entry) {
  for (;;) {
    if (entry.exited) return
    const answered = await new Promise((resolve) => {
      const socket = new Socket()
      const done = (ok) => { socket.destroy(); resolve(ok) }
      socket.setTimeout(500, () => done(false))
      socket.once('error', () => done(false))
      socket.once('data', data => done(data.toString().startsWith('+PONG')))
      socket.connect(port, '127.0.0.1', () => socket.write('PING\r\n'))
    })
    if (answered) return
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

/**
 * A redis-server of the example's own, with the settings the deployment guide gives: an
 * append-only file fsynced at every write (`appendfsync always`: a task answered 201 is on
 * disk, where `everysec` may lose the last second), and no eviction (BullMQ requires it).
 * Its data directory is temporary: removed when the example stops.
 */
async function startRedis () {
  const server = which('redis-server')
  if (server === undefined) fail('redis-server is not installed: apt-get install redis-server (Debian, Ubuntu), or set REDIS_URL to a Redis to use')
  dataDir = mkdtempSync(join(tmpdir(), 'task-api-distributed-'))
  const port = await freePort()
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dataDir, '--save', '',
    '--appendonly', 'yes', '--appendfsync', 'always', '--maxmemory-policy', 'noeviction', '--loglevel', 'warning']
  // A process group of its own: a Ctrl-C in the terminal reaches the API nodes and workers
  // at once, but Redis must outlive them (it is stopped last).
  const redis = start('redis-server', server, args, { detached: true })
  await Promise.race([pong(port, redis), redis.ready])
  if (redis.exited) throw new Error(`redis-server exited at start (see its output above)`)
  const url = `redis://127.0.0.1:${port}`
  console.log(`start.js: redis-server pid ${redis.child.pid} on ${url} (data in ${dataDir})`)
  return url
}

/** Whether a TCP connection to the Redis of REDIS_URL opens within 5 s: a clear error now, rather than the API nodes' plugin timeout later. */
function reachable (url) {
  const { hostname, port } = new URL(url)
  return new Promise((resolve) => {
    const socket = new Socket()
    const done = (ok) => { socket.destroy(); resolve(ok) }
    socket.setTimeout(5000, () => done(false))
    socket.once('error', () => done(false))
    socket.connect(Number(port || 6379), hostname.replace(/^\[|\]$/g, ''), () => done(true))
  })
}

try {
  if (process.env.REDIS_URL !== undefined && !await reachable(process.env.REDIS_URL)) fail(`cannot reach the Redis of REDIS_URL (${process.env.REDIS_URL})`)
  const url = process.env.REDIS_URL ?? await startRedis()
  const ports = apiPorts.join(',')
  const starting = []
  for (const [i, port] of apiPorts.entries()) {
    starting.push(start(`api-${i + 1}`, process.execPath, [here('./api.js')], {
      env: { PORT: port, HOST: host, API_PORTS: ports, REDIS_URL: url, REDIS_PREFIX: prefix },
      ready: /listening on/,
    }))
  }
  for (let i = 0; i < workerCount; i++) {
    // What `npx fastify-task-api worker --redis <url> --prefix <prefix> --concurrency 2 <module>` runs.
    starting.push(start(`worker-${i + 1}`, process.execPath, [cli, 'worker', '--redis', url, '--prefix', prefix, '--concurrency', concurrency, tasks], {
      ready: /running/,
    }))
  }
  const started = await Promise.all(starting.map(entry => entry.ready))
  for (const entry of started) console.log(`start.js: ${entry.name} pid ${entry.child.pid}`)
  console.log(`start.js: ready: ${apiPorts.map(port => `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port}/`).join(' and ')} (Ctrl-C stops everything)`)
} catch (err) {
  if (!stopping) {
    console.error(`start.js: ${err.message}`)
    exitCode = 1
    void stop()
  }
}
