// The seed's example task (django-task-api's JustWaitTask): count to `seconds`, one
// step per second, reporting progress and a message at each step.
import { defineTask, Type } from 'fastify-task-api/task'

export default defineTask({
  name: 'wait',
  inputs: { seconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 600 })) },
  outputs: { waited: Type.Integer() },
  async run ({ seconds = 10 }, task) {
    task.setTarget(seconds)
    task.setProgress(0)
    for (let i = 1; i <= seconds; i++) {
      await new Promise(resolve => setTimeout(resolve, 1000))
      task.incProgress()
      task.addMessage(`waited ${i} of ${seconds} seconds`)
    }
    return seconds
  },
})
