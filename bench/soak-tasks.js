import { defineTask, Type } from 'fastify-task-api/task'

// The soak's workload: one task, told how to behave.
export default defineTask({
  name: 'soak',
  inputs: { kind: Type.String(), ms: Type.Integer() },
  outputs: { pid: Type.Integer() },
  async run ({ kind, ms }, task) {
    task.setTarget(10)
    for (let i = 1; i <= 10; i++) {
      await new Promise(resolve => setTimeout(resolve, ms / 10))
      task.setProgress(i)
      if (i === 5) task.addMessage('half way')
      if (i === 5 && kind === 'exit') process.exit(1)
      if (i === 5 && kind === 'kill') process.kill(process.pid, 'SIGKILL')
    }
    if (kind === 'spin') while (true) {} // a hang that never yields: only a signal ends it
    if (kind === 'hang' || kind === 'cancel') await new Promise(() => {}) // ignores its signal
    return process.pid
  },
})
