import { defineTask, Type } from 'fastify-task-api/task'

export const noop = defineTask({
  name: 'noop',
  inputs: { name: Type.Optional(Type.String()), count: Type.Optional(Type.Integer()) },
  run () {},
})

/** Returns when run() was entered, on the clock both processes share. */
export const entered = defineTask({
  name: 'entered',
  outputs: { at: Type.Number() },
  run () {
    return performance.timeOrigin + performance.now()
  },
})

/** setProgress in a tight loop; returns the calls per second it managed inside the child. */
export const spin = defineTask({
  name: 'spin',
  inputs: { calls: Type.Integer() },
  outputs: { perSecond: Type.Number() },
  run ({ calls }, task) {
    task.setTarget(calls)
    const start = performance.now()
    for (let i = 1; i <= calls; i++) task.setProgress(i)
    const seconds = (performance.now() - start) / 1000
    return calls / seconds
  },
})
