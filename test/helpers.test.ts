import { spawn } from 'node:child_process'
import { once } from 'node:events'
import t from 'tap'
import { childPids, exists, ps } from './helpers.js'

// The process-table helpers every "no child left, no zombie" check relies on: they must
// see real children, and fail loudly when they cannot look.

t.test('childPids sees a real node child, and stops seeing it once it is gone', async (t) => {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' })
  await once(child, 'spawn')
  const pid = child.pid as number
  t.ok(childPids().includes(pid), `child ${pid} is in the process table`)
  t.ok(exists(pid))
  child.kill('SIGKILL')
  await once(child, 'exit')
  t.notOk(childPids().includes(pid), 'gone once reaped')
  t.notOk(exists(pid))
})

t.test('ps with no matching process is an empty table, not an error', async (t) => {
  // A fresh process that has no children of its own.
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' })
  await once(child, 'spawn')
  t.teardown(() => { child.kill('SIGKILL') })
  t.equal(ps(['-o', 'pid=', '--ppid', String(child.pid)]), '')
})

t.test('ps fails loudly when it cannot run or refuses its arguments', async (t) => {
  t.throws(() => ps(['--no-such-option']), /^cannot read the process table: ps --no-such-option exited with 1: .+/s)
  const path = process.env.PATH
  t.teardown(() => { process.env.PATH = path })
  process.env.PATH = '/nonexistent'
  t.throws(() => ps(['-o', 'pid=', '--ppid', String(process.pid)]), /cannot read the process table: .*ENOENT/)
  t.throws(() => childPids(), /cannot read the process table/, 'so does every check built on it')
})
