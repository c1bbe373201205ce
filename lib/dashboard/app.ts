import type { CatalogEntry, TaskState, TaskStatus } from '../client/index.js'
import { client, eventsURL, readToken, saveToken, TaskApiError } from './api.js'
import { createCharts } from './charts.js'
import { createDetail } from './detail.js'
import { byId, h } from './dom.js'
import { isUuid } from './format.js'
import { createStartForm } from './form.js'
import { createLive } from './live.js'
import { onUnauthorized, report } from './notices.js'
import { createTable } from './table.js'

/*
 * The dashboard's entry: wires the table, the detail (routed by the URL hash,
 * `#/task/<uuid>`), the start form, the charts and the live socket together, and asks
 * for a bearer token when the API answers 401.
 *
 * Each view is a function over closures rather than a class with #private fields: the
 * bundle targets ES2020, where esbuild would turn every #field into WeakMap calls.
 */

const charts = createCharts()
const live = createLive({
  url: eventsURL,
  connection (open) {
    byId('live-on').hidden = !open
    byId('live-status').textContent = open ? '' : 'Live updates paused — reconnecting…'
  },
  ended: () => charts.soon(),
  error: report,
})

/** A record already fetched for the detail about to open (a search hit, a task just started). */
let prefetched: TaskState | undefined

const taskRoute = '#/task/'
const show = (uuid: string, task?: TaskState): void => {
  prefetched = task
  if (location.hash === `${taskRoute}${uuid}`) route()
  else location.hash = `${taskRoute}${uuid}`
}

const table = createTable(live, uuid => show(uuid))
const detail = createDetail(live, {
  close: () => { location.hash = '#/' },
  deleted (uuid) {
    table.remove(uuid)
    // The deleted task's URL leaves the history: Back must not lead to it.
    history.replaceState(null, '', '#/')
    route()
  },
})
const form = createStartForm((task) => {
  table.offer(task)
  show(task.uuid, task)
})

function route (): void {
  const hash = location.hash
  if (hash.startsWith(taskRoute)) {
    let uuid: string
    try {
      uuid = decodeURIComponent(hash.slice(taskRoute.length)).toLowerCase()
    } catch {
      // A link with a broken escape: no task has that uuid (the detail says so).
      uuid = hash.slice(taskRoute.length)
    }
    const known = prefetched?.uuid === uuid ? prefetched : undefined
    prefetched = undefined
    void detail.open(uuid, known)
    return
  }
  const shown = detail.uuid
  detail.close()
  if (shown !== undefined && isUuid(shown)) document.querySelector<HTMLElement>(`tr[data-uuid="${shown}"]`)?.focus()
}
addEventListener('hashchange', route)

// Filters: status, task, and a search by uuid that opens the task itself.
const status = byId<HTMLSelectElement>('filter-status')
const taskFilter = byId<HTMLSelectElement>('filter-task')
const search = byId<HTMLInputElement>('search')
const searchNote = byId('search-note')
status.addEventListener('change', () => {
  table.status = status.value as TaskStatus | ''
  void table.reset()
})
taskFilter.addEventListener('change', () => {
  table.task = taskFilter.value
  void table.reset()
})
let searched = ''
async function find (value: string, typed: boolean): Promise<void> {
  const uuid = value.trim().toLowerCase()
  if (!isUuid(uuid)) {
    if (!typed && uuid !== '') searchNote.textContent = 'Enter a whole uuid, such as 6f1c3b9e-0d4a-4c2e-9b7a-1e2f3a4b5c6d.'
    return
  }
  if (typed && uuid === searched) return
  searched = uuid
  try {
    show(uuid, await client.get(uuid))
  } catch (err) {
    if (!(err instanceof TaskApiError) || err.statusCode !== 404) {
      report(err)
      return
    }
    if (search.value.trim().toLowerCase() !== uuid) return
    searchNote.textContent = 'No task with this uuid'
    search.setAttribute('aria-invalid', 'true')
  }
}
search.addEventListener('input', () => {
  searchNote.textContent = ''
  search.removeAttribute('aria-invalid')
  void find(search.value, true)
})
byId('filters').addEventListener('submit', (event) => {
  event.preventDefault()
  searched = ''
  void find(search.value, false)
})

function setTaskFilter (catalog: CatalogEntry[]): void {
  const chosen = taskFilter.value
  taskFilter.replaceChildren(h('option', { value: '' }, 'All'), ...catalog.map(entry => h('option', { value: entry.name }, entry.name)))
  if (chosen !== '' && !catalog.some(entry => entry.name === chosen)) taskFilter.append(h('option', { value: chosen }, chosen))
  taskFilter.value = chosen
}

// Bearer tokens: asked for once, kept in sessionStorage for this tab.
const signIn = byId<HTMLFormElement>('sign-in')
const tokenInput = byId<HTMLInputElement>('token')
const signOut = byId<HTMLButtonElement>('sign-out')
signOut.hidden = readToken() === null
onUnauthorized((message) => {
  const wasHidden = signIn.hidden
  signIn.hidden = false
  byId('sign-in-why').textContent = readToken() === null
    ? `This server needs a bearer token: ${message}`
    : `The server refused this token: ${message}`
  if (wasHidden) tokenInput.focus()
})
signIn.addEventListener('submit', (event) => {
  event.preventDefault()
  const token = tokenInput.value.trim()
  if (token === '') return
  saveToken(token)
  tokenInput.value = ''
  signIn.hidden = true
  signOut.hidden = false
  detail.close()
  route()
  void load()
})
signOut.addEventListener('click', () => {
  saveToken(null)
  location.reload()
})

async function load (): Promise<void> {
  const catalog = client.catalog().then((entries) => {
    form.setCatalog(entries)
    setTaskFilter(entries)
  }, report)
  await Promise.all([catalog, table.reset(), charts.refresh()])
  if (signIn.hidden) live.start()
}

setInterval(() => {
  const now = Date.now()
  table.tick(now)
  detail.tick(now)
}, 1000)
void load()
route()
