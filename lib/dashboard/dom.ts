/*
 * A few DOM helpers: every text goes in through textContent (never innerHTML), and no
 * style attribute is ever written (the page's CSP refuses them; `element.style` is fine).
 */

type Child = Node | string | number | null | undefined | false

/** Attributes to set; `undefined`, `false` and `null` leave one out, `true` sets it empty. */
export type Attributes = Record<string, string | number | boolean | null | undefined>

function fill<E extends Element> (element: E, attributes: Attributes | null | undefined, children: Child[]): E {
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === undefined || value === null || value === false) continue
    element.setAttribute(name, value === true ? '' : String(value))
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue
    element.append(typeof child === 'object' ? child : String(child))
  }
  return element
}

/** An HTML element. */
export function h<K extends keyof HTMLElementTagNameMap> (tag: K, attributes?: Attributes | null, ...children: Child[]): HTMLElementTagNameMap[K] {
  return fill(document.createElement(tag), attributes, children)
}

/** An SVG element. */
export function svg<K extends keyof SVGElementTagNameMap> (tag: K, attributes?: Attributes | null, ...children: Child[]): SVGElementTagNameMap[K] {
  return fill(document.createElementNS('http://www.w3.org/2000/svg', tag), attributes, children)
}

/** The element with this id, which the page must have. */
export function byId<E extends HTMLElement = HTMLElement> (id: string): E {
  const element = document.getElementById(id)
  if (element === null) throw new Error(`the dashboard page has no #${id}`)
  return element as E
}

/** Sets an attribute, or removes it for null. */
export function attr (element: Element, name: string, value: string | number | null): void {
  if (value === null) element.removeAttribute(name)
  else element.setAttribute(name, String(value))
}

/** Sets a text only when it changed (live updates rewrite cells many times a second). */
export function text (element: Node, value: string): void {
  if (element.textContent !== value) element.textContent = value
}

let ids = 0
/** A fresh id for aria-describedby and label pairs. */
export const uid = (stem: string): string => `${stem}-${++ids}`
