import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { Test } from 'tap'
import taskApi, { type TaskApiOptions } from '../dist/index.js'

/**
 * The tests run the compiled package (dist/, built by `npm test`'s pretest) and their
 * task-module fixtures compiled to plain JavaScript (test/fixtures/build/, by
 * scripts/build-fixtures.js): the pool's children then need no TypeScript loader, and
 * start in about 0.2 s instead of about 0.9 s under tsx. Under tap, process.execArgv
 * carries tap's own loaders, which the children do not need either. The default
 * (inheriting execArgv, TypeScript modules under tsx) has its own test in runner.test.ts.
 */
export const childExecArgv: string[] = []

/** A task-module fixture, compiled: `fixture('basic.ts')` is test/fixtures/build/basic.js. */
export const fixture = (name: string): URL => new URL(`./fixtures/build/${name.replace(/\.[jt]s$/, '.js')}`, import.meta.url)

/** A fixture's source file, for what must load TypeScript itself. */
export const fixtureSource = (name: string): URL => new URL(`./fixtures/${name}`, import.meta.url)

/**
 * Fastify gives each plugin 10 s to register by default. The plugin forks its children
 * and waits for them to be ready before register resolves: on a machine whose cores are
 * all busy that can take longer. Every app the tests build gets this instead.
 */
export const pluginTimeout = 120_000

/** A Fastify app with the plugin registered; closed when the test ends. */
export async function build (
  t: Test,
  options: Partial<TaskApiOptions> = {},
  server: FastifyServerOptions = {}
): Promise<FastifyInstance> {
  const app = Fastify({ logger: false, pluginTimeout, ...server })
  t.teardown(() => app.close())
  // A short shutdownTimeout: tests end with tasks still running, and need not wait for them.
  await app.register(taskApi, { tasks: [fixture('basic.ts')], concurrency: 1, execArgv: childExecArgv, shutdownTimeout: 200, ...options })
  await app.ready()
  return app
}

/** Resolves once the task is running. */
export async function untilRunning (app: FastifyInstance, uuid: string): Promise<void> {
  while ((await app.tasks.get(uuid))?.status !== 'running') await new Promise(resolve => setTimeout(resolve, 5))
}

interface ProcessRow { pid: number, stat: string, command: string }

/**
 * Runs `ps` and returns what it printed. ps exits 1 with no output when no process
 * matches: that is an empty table. Anything else (no ps at all, another status, an error
 * message) throws: a "no child left" check must never pass because ps could not look.
 */
export function ps (args: string[]): string {
  const result = spawnSync('ps', args, { encoding: 'utf8' })
  if (result.error !== undefined) throw new Error(`cannot read the process table: ps ${args.join(' ')}: ${result.error.message}`)
  if (result.status === 0) return result.stdout
  if (result.status === 1 && result.stdout.trim() === '' && result.stderr.trim() === '') return ''
  throw new Error(`cannot read the process table: ps ${args.join(' ')} exited with ${String(result.status ?? result.signal)}: ${result.stderr.trim()}`)
}

/** This process's node children, read from the real process table. */
export function children (): ProcessRow[] {
  const out = ps(['-o', 'pid=,stat=,comm=', '--ppid', String(process.pid)])
  return out.split('\n')
    .map(line => line.trim().split(/\s+/))
    .filter(cols => cols.length >= 3)
    .map(([pid, stat, command]) => ({ pid: Number(pid), stat: stat as string, command: command as string }))
    .filter(row => row.command === 'node') // not ps itself, nor the esbuild service tsx starts
}

/** Whether a process with this id exists (a zombie counts: it is still in the table). */
export function exists (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false
    throw err
  }
}

/** Resolves once `predicate` holds; rejects naming `what` after `ms`. For conditions no event announces. */
export async function until (what: string, predicate: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!await predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
}

/** Live children's process ids. */
export function childPids (): number[] {
  return children().filter(row => !row.stat.startsWith('Z')).map(row => row.pid)
}

/** Children that exited but were never reaped. */
export function zombiePids (): number[] {
  return children().filter(row => row.stat.startsWith('Z')).map(row => row.pid)
}

/** POST /tasks with JSON. */
export function submit (app: FastifyInstance, task: string, inputs?: unknown, url = '/tasks') {
  return app.inject({ method: 'POST', url, payload: inputs === undefined ? { task } : { task, inputs } })
}

/** A running `witness` task (fixtures/signals.ts): its uuid, its child's pid, and what it noted so far. */
export interface Witness { uuid: string, pid: number, log: () => string[] }

/**
 * Submits the `witness` task and resolves once it runs with its signal handlers in place
 * (it says so with a message naming its pid).
 */
export async function startWitness (t: Test, app: FastifyInstance, inputs: { sigterm: 'die' | 'ignore', honourAfter?: number }): Promise<Witness> {
  const dir = mkdtempSync(join(tmpdir(), 'task-api-witness-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'log')
  const { uuid } = await app.tasks.submit('witness', { log: file, ...inputs })
  const pid = Number((await untilMessage(app, uuid, 'pid ')).slice(4))
  const log = (): string[] => {
    try {
      return readFileSync(file, 'utf8').split('\n').filter(line => line !== '')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
      throw err
    }
  }
  return { uuid, pid, log }
}

/**
 * Resolves with the first message of the task that starts with `prefix`. Call it in the
 * same tick as the submit resolved, so that no event can come before the subscription.
 */
export function untilMessage (app: FastifyInstance, uuid: string, prefix: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const stop = app.tasks.subscribe(uuid, (event) => {
      if (event.type === 'message' && event.message.startsWith(prefix)) {
        stop()
        resolve(event.message)
      } else if (event.type === 'status' && event.task !== undefined && event.status !== 'pending') {
        stop()
        reject(new Error(`task ${uuid} ended ${event.status} before saying "${prefix}…": ${String(event.task.error)}`))
      }
    })
  })
}
