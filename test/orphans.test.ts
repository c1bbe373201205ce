import { execFile, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import taskApi from '../dist/index.js'
import { build, childExecArgv, childPids, fixture, fixtureSource, untilRunning } from './helpers.js'
import { ended, running, lastingZombies } from './proc.js'

// A child and everything its task spawned are stopped as a group, and nothing outlives
// the server, whatever kills it. Real processes, read from /proc.
// Real forks under tsx take a second or two each: this file gets more than tap's default.
t.setTimeout(180_000)

t.test('a child and what its task spawned are stopped as a group: cancel, timeout, recycling, close', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-group-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  /** Submits a spawner and reads the pids it wrote; throws if the task ended before it wrote them. */
  const started = async (app: FastifyInstance, name: string, then: string): Promise<{ uuid: string, child: number, grandchild: number }> => {
    const file = join(dir, `${name}.json`)
    const { uuid } = await app.tasks.submit('spawner', { file, then })
    while (!existsSync(file)) {
      const state = await app.tasks.get(uuid)
      if (state === undefined || ['succeeded', 'failed', 'cancelled'].includes(state.status)) {
        throw Object.assign(new Error(`the spawner ended (${state?.status}: ${state?.error}) before it wrote its pids`), { state })
      }
      await new Promise(resolve => setTimeout(resolve, 10))
    }
    return { uuid, ...(JSON.parse(readFileSync(file, 'utf8')) as { child: number, grandchild: number }) }
  }
  const app = await build(t, { tasks: [fixture('containment.ts')], cancelGrace: 100 })
  const cancelled = await started(app, 'cancel', 'wait')
  await app.tasks.cancel(cancelled.uuid)
  t.equal((await app.tasks.wait(cancelled.uuid)).status, 'cancelled')
  await ended([cancelled.child, cancelled.grandchild])
  t.same([cancelled.child, cancelled.grandchild].filter(running), [], 'cancel: the child and its grandchild are gone')

  // The timeout runs from the task's start: on a loaded machine it can pass before the
  // task has spawned and written its pids. Then the run proves nothing: try again with a
  // longer timeout.
  let timeout: { uuid: string, child: number, grandchild: number } | undefined
  let timed: FastifyInstance | undefined
  let ms = 1000
  for (let round = 1; timeout === undefined; round++) {
    timed = await build(t, { tasks: [fixture('containment.ts')], cancelGrace: 100, timeout: ms })
    try {
      timeout = await started(timed, `timeout-${round}`, 'spin')
    } catch (err) {
      const state = (err as { state?: { error: string | null } }).state
      if (round >= 4 || state?.error?.startsWith(`timed out after ${ms} ms`) !== true) throw err
      t.comment(`timed out at ${ms} ms before the task wrote its pids: again with ${ms * 4} ms`)
      ms *= 4
    }
  }
  t.match((await (timed as FastifyInstance).tasks.wait(timeout.uuid)).error, new RegExp(`^timed out after ${ms} ms; it did not end on its signal`))
  await ended([timeout.child, timeout.grandchild])
  t.same([timeout.child, timeout.grandchild].filter(running), [], 'timeout: the child and its grandchild are gone')

  const recycled = await build(t, { tasks: [fixture('containment.ts')], maxTasksPerChild: 1 })
  const recycle = await started(recycled, 'recycle', 'return')
  t.equal((await recycled.tasks.wait(recycle.uuid)).status, 'succeeded')
  await ended([recycle.child, recycle.grandchild])

  const closing = Fastify()
  await closing.register(taskApi, { tasks: [fixture('containment.ts')], concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 100, cancelGrace: 100 })
  const close = await started(closing, 'close', 'wait')
  await closing.close()
  t.notOk(running(close.child), 'close: the child is gone when close resolves')
  await ended([close.grandchild])
  t.same(await lastingZombies(), [], 'no zombie lasts')
})

async function orphans (t: Test, how: NodeJS.Signals): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-orphans-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const server = spawn(process.execPath, ['--import=tsx', fileURLToPath(fixtureSource('orphan-server.ts')), dir], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { server.kill('SIGKILL') })
  await new Promise<void>((resolve, reject) => {
    server.stdout.once('data', () => resolve())
    server.once('exit', code => reject(new Error(`the server exited with ${String(code)}`)))
  })
  const spin = JSON.parse(readFileSync(join(dir, 'spin.json'), 'utf8')) as { child: number, grandchild: number }
  const wait = JSON.parse(readFileSync(join(dir, 'wait.json'), 'utf8')) as { child: number, grandchild: number }
  const children = await new Promise<number[]>((resolve, reject) => {
    execFile('ps', ['-o', 'pid=,comm=', '--ppid', String(server.pid)], (err, out) => {
      if (err !== null) reject(err)
      else resolve(out.split('\n').map(line => line.trim().split(/\s+/)).filter(([, comm]) => comm === 'node').map(([pid]) => Number(pid)))
    })
  })
  t.equal(children.length, 3, 'the server has three children')
  const dozer = children.find(pid => pid !== spin.child && pid !== wait.child) as number
  process.kill(dozer, 'SIGSTOP')
  const everyone = [...children, spin.grandchild, wait.grandchild]
  t.ok(everyone.every(running), 'all five run: a spinning child, a waiting one, a stopped one, two grandchildren')
  server.kill(how)
  await new Promise(resolve => server.once('exit', resolve))
  const ms = await ended(everyone)
  t.comment(`every child and grandchild ended ${ms} ms after the server died of ${how}`)
  t.same(everyone.filter(running), [], `none outlived the server (${how})`)
}

t.test('no child or grandchild outlives a server killed by SIGKILL, even one spinning or stopped', t => orphans(t, 'SIGKILL'))

t.test('no child or grandchild outlives a server ended by SIGTERM', t => orphans(t, 'SIGTERM'))

t.test('a stopped child is ended on cancel too (SIGKILL reaches a stopped process)', async (t) => {
  const app = await build(t, { tasks: [fixture('basic.ts')], cancelGrace: 100 })
  const task = await app.tasks.submit('sleep', { ms: 60_000 })
  await untilRunning(app, task.uuid)
  const [child] = childPids()
  process.kill(child as number, 'SIGSTOP')
  await app.tasks.cancel(task.uuid)
  const done = await app.tasks.wait(task.uuid)
  t.equal(done.status, 'cancelled')
  await ended([child as number])
  t.equal((await app.tasks.wait((await app.tasks.submit('hello', { name: 'next' })).uuid)).status, 'succeeded')
})
