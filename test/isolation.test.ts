import t from 'tap'
import { build, childPids, fixture, until } from './helpers.js'
import { ended, logLines, lastingZombies } from './proc.js'

// One task's leftovers in a warm child (an exit after returning, a changed cwd or
// environment, an error thrown later, a global) never reach another task.
// Real forks under tsx take a second or two each: this file gets more than tap's default.
t.setTimeout(180_000)

t.test('process.exit() right after returning never loses the result', async (t) => {
  const app = await build(t, { tasks: [fixture('containment.ts'), fixture('basic.ts')] })
  for (const how of ['nextTick', 'microtask', 'immediate', 'timeout']) {
    for (const async of [false, true]) {
      const [before] = childPids()
      const done = await app.tasks.wait((await app.tasks.submit('exit-after', { how, async })).uuid)
      t.equal(done.status, 'succeeded', `${how}, ${async ? 'async' : 'sync'}`)
      t.same(done.outputs, { value: `result via ${how}` })
      await ended([before as number])
    }
  }
  const next = await app.tasks.wait((await app.tasks.submit('hello', { name: 'next' })).uuid)
  t.equal(next.status, 'succeeded', 'the exited children were replaced')
  // The last child to exit may do so after running this task (its exit is on a timer):
  // its replacement comes a moment later. One child in the end, never two.
  await until('the pool to hold its one child', () => childPids().length === 1)
  t.equal(childPids().length, 1)
})

t.test('a warm child puts back the cwd and the environment a task changed', async (t) => {
  const app = await build(t, {
    tasks: [fixture('containment.ts')],
    env: { ...process.env, CONTAINMENT_KEPT: 'kept', CONTAINMENT_CHANGED: 'original' },
  })
  const mutated = await app.tasks.wait((await app.tasks.submit('mutate')).uuid)
  const seen = await app.tasks.wait((await app.tasks.submit('inspect')).uuid)
  t.equal(seen.outputs.pid, mutated.outputs.pid, 'the same child ran both')
  t.equal(seen.outputs.cwd, process.cwd(), 'cwd restored')
  t.equal(seen.outputs.leaked, null, 'a variable the task added is gone')
  t.equal(seen.outputs.kept, 'kept', 'a variable the task deleted is back')
  t.equal(seen.outputs.changed, 'original', 'a variable the task changed is restored')
})

t.test('an uncaught error left behind by an earlier task never writes its text into another task\'s record', async (t) => {
  const logs: string[] = []
  const app = await build(t, { tasks: [fixture('containment.ts'), fixture('faults.ts')] },
    { logger: { level: 'warn', stream: { write: (line: string) => { logs.push(line) } } } })
  for (const kind of ['exception', 'rejection']) {
    // Queued together on one child: the bomb goes off a second into the second task.
    const bomb = await app.tasks.submit('leave-bomb', { ms: 1000, kind })
    const victim = await app.tasks.submit('doze', { ms: 10_000 })
    t.equal((await app.tasks.wait(bomb.uuid)).status, 'succeeded', `${kind}: the task that left it succeeded`)
    const done = await app.tasks.wait(victim.uuid)
    t.equal(done.status, 'failed', `${kind}: its child is replaced, so the running task fails`)
    t.equal(done.error, 'the child process running the task had an uncaught exception outside this task\'s code (see the server log)')
    t.notMatch(JSON.stringify(done), /secret/, `${kind}: nothing of the other task's error`)
  }
  const crashes = logLines(logs).filter(entry => entry.msg === 'fastify-task-api: uncaught exception in a child process; it is replaced')
  t.equal(crashes.length, 2, 'both are logged')
  t.ok(crashes.every(entry => String(entry.error).startsWith('secret of the earlier task')), 'with their text, in the server log only')
  const own = await app.tasks.wait((await app.tasks.submit('uncaught')).uuid)
  t.equal(own.error, 'uncaught exception in the child process: thrown from a timer', 'a task\'s own uncaught error keeps its text')
})

t.test('childPerTask: every task gets a fresh child, with a spare forked ahead', async (t) => {
  const app = await build(t, { tasks: [fixture('containment.ts')], childPerTask: true })
  t.equal(childPids().length, 2, 'one child per concurrent task, plus the spare')
  const pids = new Set<number>()
  for (let i = 0; i < 3; i++) {
    const seen = await app.tasks.wait((await app.tasks.submit('inspect')).uuid)
    t.equal(seen.outputs.marker, null, 'no global from an earlier task')
    pids.add(seen.outputs.pid as number)
  }
  t.equal(pids.size, 3, 'three tasks, three children')
  await ended([...pids])
  const deadline = Date.now() + 10_000
  while (childPids().length < 2 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
  t.equal(childPids().length, 2, 'the pool is full again')
  t.same(await lastingZombies(), [], 'no zombie lasts')
})
