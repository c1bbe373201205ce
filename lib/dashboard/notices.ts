import { TaskApiError } from './api.js'
import { byId, h } from './dom.js'

/*
 * Failed requests become dismissible notices (role="alert") carrying the server's message;
 * a 401 goes to the sign-in form instead.
 */

let unauthorized: (message: string) => void = () => {}

/** Who hears of a 401 (the sign-in form). */
export function onUnauthorized (handler: (message: string) => void): void {
  unauthorized = handler
}

/** Shows a message as a notice; the same message twice stays one notice. */
export function notify (message: string): void {
  const list = byId('notices')
  for (const notice of Array.from(list.children)) {
    if (notice.firstElementChild?.textContent === message) return
  }
  const dismiss = h('button', { type: 'button', class: 'dismiss', 'aria-label': 'Dismiss' }, '×')
  const notice = h('div', { role: 'alert', class: 'notice' }, h('p', null, message), dismiss)
  dismiss.addEventListener('click', () => notice.remove())
  list.append(notice)
  // The oldest go first: a flapping network leaves a handful, not a wall.
  while (list.children.length > 4) list.firstElementChild?.remove()
}

/** Reports what a request threw: 401 to the sign-in form, anything else as a notice. */
export function report (err: unknown): void {
  if (err instanceof TaskApiError && err.statusCode === 401) unauthorized(err.message)
  else notify(err instanceof Error ? err.message : String(err))
}
