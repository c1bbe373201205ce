import Fastify from 'fastify'
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import taskApi from '../dist/index.js'
import { build, childPids, fixture, fixtureSource } from './helpers.js'
import { ended, logLines, lastingZombies } from './proc.js'

// Children that cannot start never cost a pool slot: register fails with the real cause,
// submissions get 503 while none can start, and the pool recovers by itself.
// Real forks under tsx take a second or two each: this file gets more than tap's default.
t.setTimeout(180_000)

t.test('at startup, a child that cannot start fails register with the real cause; nothing is left', async (t) => {
  const before = childPids()
  const app = Fastify()
  const missing = join(tmpdir(), `task-api-missing-${process.pid}.mjs`)
  await t.rejects(async () => { await app.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 2, execArgv: [`--import=${missing}`] }) },
    { message: /^fastify-task-api: a child process could not start: it exited with code 1 before it was ready: [^]*Cannot find module/ })
  await app.close()
  await ended(childPids().filter(pid => !before.includes(pid)))
  t.same(await lastingZombies(), [], 'no zombie lasts')
})

t.test('fork failure at startup (EMFILE) fails register with the real cause; close resolves; it works once descriptors are free', async (t) => {
  const server = spawn('/bin/sh', ['-c', 'ulimit -n 1024 && exec "$0" "$@"', process.execPath, '--import=tsx', fileURLToPath(fixtureSource('emfile-server.ts'))],
    { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  server.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const code = await new Promise(resolve => server.once('exit', resolve))
  t.equal(code, 0, 'both apps closed and the process exited')
  const result = JSON.parse(out) as { error?: string, status: string }
  t.match(result.error, /^fastify-task-api: a child process could not start: it cannot be forked: spawn .* EMFILE$/)
  t.equal(result.status, 'succeeded', 'a task runs once descriptors are free')
})

t.test('while no child can start, submissions answer 503 with a clear code; the pool recovers by itself', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-preload-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const preload = join(dir, 'preload.mjs')
  writeFileSync(preload, 'export {}\n')
  const logs: string[] = []
  const app = await build(t, { execArgv: [`--import=${preload}`] },
    { logger: { level: 'warn', stream: { write: (line: string) => { logs.push(line) } } } })
  t.equal((await app.tasks.wait((await app.tasks.submit('hello', { name: 'before' })).uuid)).status, 'succeeded')
  rmSync(preload)
  const [child] = childPids()
  process.kill(child as number, 'SIGKILL')
  let res = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'during' } } })
  const deadline = Date.now() + 10_000
  while (res.statusCode !== 503 && Date.now() < deadline) {
    await new Promise(resolve => setTimeout(resolve, 20))
    res = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'during' } } })
  }
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_TASK_API_RUNNER_UNAVAILABLE')
  t.equal(res.json().message, 'no worker can run tasks right now: try again later', 'the cause stays in the log')
  t.equal(res.headers['retry-after'], '1')
  t.ok(logLines(logs).some(entry => entry.msg === 'fastify-task-api: a child process could not start; retrying' && /Cannot find module/.test(String(entry.cause))), 'the log has the cause')
  writeFileSync(preload, 'export {}\n')
  let recovered: string | undefined
  while (recovered === undefined && Date.now() < deadline + 10_000) {
    res = await app.inject({ method: 'POST', url: '/tasks', payload: { task: 'hello', inputs: { name: 'after' } } })
    if (res.statusCode === 201) recovered = res.json().uuid as string
    else await new Promise(resolve => setTimeout(resolve, 50))
  }
  t.ok(recovered !== undefined, 'submissions are accepted again')
  t.equal((await app.tasks.wait(recovered as string)).status, 'succeeded', 'and run')
  t.equal(childPids().length, 1, 'the slot was never lost')
})

t.test('a fork that fails at run time (EMFILE) costs no pool slot: 503 meanwhile, then the pool recovers and close resolves', async (t) => {
  const server = spawn('/bin/sh', ['-c', 'ulimit -n 1024 && exec "$0" "$@"', process.execPath, '--import=tsx', fileURLToPath(fixtureSource('emfile-runtime-server.ts'))],
    { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  server.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const code = await new Promise(resolve => server.once('exit', resolve))
  t.equal(code, 0, 'the app closed and the process exited')
  const result = JSON.parse(out) as { unavailable?: { statusCode: number, code: string }, status?: string }
  t.same(result.unavailable, { statusCode: 503, code: 'FST_TASK_API_RUNNER_UNAVAILABLE' }, 'while no child can be forked')
  t.equal(result.status, 'succeeded', 'a task runs once descriptors are free')
})

t.test('a close while the children are still starting (Fastify\'s pluginTimeout passed) ends them', async (t) => {
  const before = childPids()
  const app = Fastify({ pluginTimeout: 2000 })
  void app.register(taskApi, { tasks: [fixture('slow-start.ts')], concurrency: 2, execArgv: [], env: { ...process.env, SLOW_START: '1' } })
  await t.rejects(async () => { await app.ready() }, { code: 'FST_ERR_PLUGIN_TIMEOUT' })
  const deadline = Date.now() + 30_000
  let starting = childPids().filter(pid => !before.includes(pid))
  while (starting.length < 2 && Date.now() < deadline) {
    await new Promise(resolve => setTimeout(resolve, 20))
    starting = childPids().filter(pid => !before.includes(pid))
  }
  t.equal(starting.length, 2, 'two children are starting')
  await app.close()
  await ended(starting)
  t.same(await lastingZombies(), [], 'no zombie lasts')
})
