import { spawn, type ChildProcess } from 'node:child_process'

/*
 * Children notice their parent's death through the IPC channel ('disconnect'), but only
 * when their event loop runs: a child spinning in `while (true) {}` or stopped with
 * SIGSTOP never does, and a SIGKILLed server runs no exit handler. So a tiny process
 * outlives the server for a moment and ends what it leaves: a POSIX shell reading the
 * children's process groups on its stdin. The server's death closes that pipe (nothing
 * else holds its write end); at end of input the shell SIGKILLs every group still listed
 * (SIGKILL also ends a stopped process), then exits. It leads its own process group, so
 * a signal to the server's group does not take it down first.
 */
const script = `
groups=" "
while IFS= read -r line; do
  case "$line" in
    +*) groups="$groups\${line#+} " ;;
    -*) rest=" "; for g in $groups; do [ "$g" = "\${line#-}" ] || rest="$rest$g "; done; groups=$rest ;;
  esac
done
for g in $groups; do kill -9 "-$g" 2>/dev/null; done
`

const respawnDelay = 1000

/** Keeps a list of process groups that must not outlive this process. */
export class Reaper {
  readonly #groups = new Set<number>()
  readonly #log: { warn (obj: object, msg: string): void } | undefined
  #child: ChildProcess | undefined
  #closed = false
  #timer: NodeJS.Timeout | undefined
  #warned = false

  constructor (log?: { warn (obj: object, msg: string): void }) {
    this.#log = log
  }

  start (): void {
    if (this.#closed || this.#child !== undefined) return
    let child: ChildProcess
    try {
      child = spawn('/bin/sh', ['-c', script], { stdio: ['pipe', 'ignore', 'ignore'], detached: true })
    } catch (err) {
      this.#failed(err)
      return
    }
    this.#child = child
    child.on('error', (err) => this.#failed(err))
    child.stdin?.on('error', () => {}) // a reaper that died: its exit handler starts another
    child.once('exit', () => {
      if (this.#child === child) this.#child = undefined
      if (!this.#closed) this.#timer = setTimeout(() => this.start(), respawnDelay).unref()
    })
    // Neither the process nor its pipe keeps the server's event loop alive.
    child.unref()
    ;(child.stdin as unknown as { unref?: () => void } | null)?.unref?.()
    if (this.#groups.size > 0) this.#write([...this.#groups].map(group => `+${group}\n`).join(''))
  }

  /** Lists a process group (a child's pid: each child leads its own group). */
  add (group: number): void {
    this.#groups.add(group)
    this.#write(`+${group}\n`)
  }

  /** Takes a group off the list once it is gone. */
  remove (group: number): void {
    if (this.#groups.delete(group)) this.#write(`-${group}\n`)
  }

  /** Ends the reaper; the groups still listed are left alone (the pool stopped them already). */
  close (): void {
    this.#closed = true
    clearTimeout(this.#timer)
    for (const group of this.#groups) this.#write(`-${group}\n`)
    this.#groups.clear()
    this.#child?.stdin?.end()
  }

  #write (text: string): void {
    const stdin = this.#child?.stdin
    if (stdin === undefined || stdin === null || stdin.destroyed) return
    stdin.write(text)
  }

  #failed (err: unknown): void {
    this.#child = undefined
    if (!this.#warned) {
      this.#warned = true
      this.#log?.warn({ err }, 'fastify-task-api: the reaper process (/bin/sh) cannot start: children may outlive a server killed by SIGKILL')
    }
  }
}
