import { readdirSync, readFileSync } from 'node:fs'

/** Whether a process is running: gone or a zombie counts as ended. Reads /proc (Linux); any other read error throws. */
export function running (pid: number): boolean {
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
  // "pid (comm) S ...": the state follows the last ")".
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
  return state !== 'Z'
}

/** Resolves once none of the pids runs, with the milliseconds it took; rejects after `bound` ms. */
export async function ended (pids: number[], bound = 10_000): Promise<number> {
  const start = Date.now()
  while (pids.some(running)) {
    if (Date.now() - start > bound) throw new Error(`still running after ${bound} ms: ${pids.filter(running).join(', ')}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  return Date.now() - start
}

/** JSON log lines, parsed. */
export const logLines = (lines: string[]): Array<Record<string, unknown>> => lines.map(line => JSON.parse(line) as Record<string, unknown>)

/** This process's children that exited but were not reaped, read from /proc. */
export function zombies (): number[] {
  const found: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
    } catch {
      continue // gone meanwhile
    }
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    if (state === 'Z' && Number(ppid) === process.pid) found.push(Number(entry))
  }
  return found
}

/**
 * Zombies that last: a child that has just died is a zombie for the moment before the
 * event loop reaps it, so a zombie counts only if it is still there after `bound` ms.
 */
export async function lastingZombies (bound = 2000): Promise<number[]> {
  const start = Date.now()
  while (zombies().length > 0 && Date.now() - start < bound) await new Promise(resolve => setTimeout(resolve, 20))
  return zombies()
}
