'use strict'
// Server pages with keyset pagination, over the native query.

const { invalid, settle } = require('./errors.js')

class InfiniteQuery {
  constructor(nativeQuery) {
    this._q = nativeQuery
    this._listeners = new Set()
    this._data = []
  }

  get data() {
    return this._data
  }

  get hasMore() {
    return this._q.hasMore()
  }

  get loading() {
    return this._q.loading()
  }

  async loadMore() {
    const loaded = await settle(() => this._q.loadMore())
    if (loaded) this._refresh()
  }

  reset() {
    this._q.reset()
    this._refresh()
  }

  subscribe(listener) {
    if (typeof listener !== 'function') throw invalid('listener must be a function')
    this._listeners.add(listener)
    return () => this._listeners.delete(listener)
  }

  _refresh() {
    this._data = Object.freeze(JSON.parse(this._q.dataJson()))
    for (const l of [...this._listeners]) l()
  }
}

module.exports = { InfiniteQuery }
