package runtime

import "slices"

// keyOrder keeps calls that share a record key running in the order of
// their records: a call waits for the unfinished calls before it with the
// same key. Calls keyed by their own correlation id (the gateway's default
// key) share no key and never wait here (a call that supersedes an earlier
// attempt with its correlation id waits for that attempt's call whatever
// the key: call.after). Guarded by Worker.mu.
type keyOrder struct {
	queues map[string][]*call // unfinished calls by key, in record order
}

// keyTurn is a call's place in its key's queue.
type keyTurn struct {
	key string        // the record key when the call is queued, else ""
	ch  chan struct{} // closed when the calls before this one are done; nil when it had its turn at once
	has bool          // the call has its turn
}

// wait queues c behind the unfinished calls with record key key.
func (o *keyOrder) wait(c *call, key []byte) {
	if len(key) == 0 || string(key) == c.id {
		return
	}
	k := string(key)
	c.turn.key = k
	q, busy := o.queues[k]
	if !busy {
		c.turn.has = true
	} else {
		c.turn.ch = make(chan struct{})
	}
	o.queues[k] = append(q, c)
}

// pass removes a finished c from its key's queue and lets the next call
// with that key run.
func (o *keyOrder) pass(c *call) {
	if c.turn.key == "" {
		return
	}
	q := o.queues[c.turn.key]
	i := slices.Index(q, c)
	if i < 0 {
		return
	}
	q = slices.Delete(q, i, i+1)
	if len(q) == 0 {
		delete(o.queues, c.turn.key)
		return
	}
	o.queues[c.turn.key] = q
	if next := q[0]; i == 0 && !next.turn.has {
		next.turn.has = true
		close(next.turn.ch)
	}
}
