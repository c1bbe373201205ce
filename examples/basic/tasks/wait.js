// The seed's example task (django-task-api's JustWaitTask): count to `seconds`, one
// step per second, reporting progress and a message at each step.
import { setTimeout as sleep } from 'node:timers/promises'
import { defineTask, Type } from 'fastify-task-api/task'

export default defineTask({
  name: 'wait',
  inputs: { seconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 600 })) },
  outputs: { waited: Type.Integer() },
  async run ({ seconds = 10 }, task) {
    task.setTarget(seconds)
    task.setProgress(0)
    for (let i = 1; i <= seconds; i++) {
      // Waiting on the task's signal: a cancel ends the task at once.
      await sleep(1000, undefined, { signal: task.signal })
      task.incProgress()
      task.addMessage(`waited ${i} of ${seconds} seconds`)
    }
    return seconds
  },
})
