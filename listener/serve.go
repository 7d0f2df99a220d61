package listener

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// KeepAliveGrace is how long ServeHTTP answers with "Connection: close"
// before it closes idle keep-alive connections.
const KeepAliveGrace = 100 * time.Millisecond

// ServeHTTP serves srv on every listener until ctx is done, then drains
// without losing a request, and returns nil once every connection it accepted
// has been answered and closed. Workers call it with a context that SIGTERM
// cancels.
//
// It drains as http.Server.Shutdown cannot: Shutdown closes a connection
// whose request is read after the shutdown began without an answer. Here the
// listeners are closed (connections not yet accepted stay queued in the
// socket, which ss-bridge keeps for the next generation); for KeepAliveGrace
// every response says "Connection: close", so that busy keep-alive clients
// move to a new connection after their next answer rather than having an
// idle connection closed under a request they are sending; then keep-alive
// is turned off, closing the idle connections, and every accepted connection
// is waited for. After drainTimeout (0: no limit) the remaining connections
// are closed and an error says how many. It returns at once with the error
// if a listener fails before ctx is done. It wraps srv.Handler and
// srv.ConnState, calling the ones already there.
func ServeHTTP(ctx context.Context, srv *http.Server, lns []net.Listener, drainTimeout time.Duration) error {
	var draining atomic.Bool
	handler := srv.Handler
	if handler == nil {
		handler = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		handler.ServeHTTP(w, r)
	})
	var open atomic.Int64
	previous := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
		if previous != nil {
			previous(c, st)
		}
	}
	failed := make(chan error, len(lns))
	var serving sync.WaitGroup
	for _, ln := range lns {
		serving.Add(1)
		go func() {
			defer serving.Done()
			if err := srv.Serve(ln); err != nil && !draining.Load() {
				failed <- fmt.Errorf("serve %s: %w", ln.Addr(), err)
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-failed:
	}
	draining.Store(true)
	for _, ln := range lns {
		ln.Close()
	}
	serving.Wait()
	if err != nil {
		srv.Close()
		return err
	}
	var deadline <-chan time.Time
	if drainTimeout > 0 {
		deadline = time.After(drainTimeout)
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	grace := KeepAliveGrace
	if drainTimeout > 0 {
		grace = min(grace, drainTimeout)
	}
	for end := time.Now().Add(grace); open.Load() > 0 && time.Now().Before(end); {
		<-tick.C
	}
	srv.SetKeepAlivesEnabled(false)
	for open.Load() > 0 {
		select {
		case <-deadline:
			n := open.Load()
			srv.Close()
			return fmt.Errorf("drain: %d connections still open after %s, closed", n, drainTimeout)
		case <-tick.C:
		}
	}
	return errors.Join(srv.Close())
}
