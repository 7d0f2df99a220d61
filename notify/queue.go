package notify

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ss-bridge/ss-bridge/internal/text"
	"golang.org/x/sys/unix"
)

// MaxStatusLen bounds the text of a STATUS= sent to the service manager,
// in bytes; longer texts are cut at a character boundary and end in "...".
// systemd ignores a whole notification of NOTIFY_BUFFER_MAX (4096) bytes or
// more, so a long status sent with READY=1 would lose the READY=1.
const MaxStatusLen = 1024

// Queue sends notifications to the service manager from a goroutine of its
// own, so that no caller ever waits for the service manager, whether it is
// slow, stuck or gone. Its contract:
//
//   - State messages (State: READY=1, RELOADING=1, STOPPING=1,
//     EXTEND_TIMEOUT_USEC=, ...) each go in a datagram of their own, in the
//     order given, and none is dropped: while the service manager's queue is
//     full, the first one waiting is retried, with pauses up to
//     maxRetryPause, until it fits or the Queue is closed.
//   - STATUS= coalesces: a status waiting to be sent is replaced by a newer
//     one given before the next state message, and it is sent after the
//     state messages given before it and before those given after it.
//   - WATCHDOG=1 coalesces too: one ping waiting absorbs the next, and it
//     goes before anything else waiting, as it only says the sender lives.
//   - Sends use MSG_DONTWAIT. A notification that fails for another reason
//     than a full queue (no such socket, connection refused) is dropped and
//     reported to the Queue's error function.
//
// A Queue of a Manager that sends nothing, and a nil *Queue, send nothing.
// Its methods are safe for concurrent use.
type Queue struct {
	m      *Manager
	report func(error)

	mu       sync.Mutex
	waiting  []queued
	watchdog bool // a WATCHDOG=1 is waiting
	closed   bool
	wake     chan struct{} // buffered 1: something was queued or Close was called
	abort    chan struct{} // closed when Close gives up on what is left
	stopped  chan struct{} // closed when the sending goroutine has returned
}

type queued struct {
	msg      []byte
	status   bool
	watchdog bool
}

// Pauses between retries of a notification the service manager has no room
// for: short at first, so that a busy systemd costs little delay, then long
// enough that a stuck one costs no CPU.
const (
	minRetryPause = time.Millisecond
	maxRetryPause = 250 * time.Millisecond
)

// Queue returns a Queue sending to m's service manager, and starts its
// goroutine; report, if not nil, is called from that goroutine with every
// notification that failed. Close the Queue to stop the goroutine.
func (m *Manager) Queue(report func(error)) *Queue {
	q := &Queue{
		m:       m,
		report:  report,
		wake:    make(chan struct{}, 1),
		abort:   make(chan struct{}),
		stopped: make(chan struct{}),
	}
	if !m.Active() {
		close(q.stopped)
		return q
	}
	go q.run()
	return q
}

func (q *Queue) active() bool { return q != nil && q.m.Active() }

// State queues a state message: assignments ("READY=1") sent in one
// datagram, as Manager.Send sends them, in order with the other state
// messages. Invalid assignments, or a message systemd would ignore for its
// length, are an error, and nothing is queued; so is a closed Queue.
func (q *Queue) State(assignments ...string) error {
	if !q.active() {
		return nil
	}
	// Built now: RELOADING=1's MONOTONIC_USEC says when the reload began.
	msg, err := message(assignments)
	if err != nil {
		return err
	}
	return q.put(queued{msg: msg})
}

// Status queues STATUS=text, with line breaks made spaces and the text cut
// to MaxStatusLen, replacing a status still waiting (see Queue).
func (q *Queue) Status(text string) error {
	if !q.active() {
		return nil
	}
	return q.put(queued{msg: []byte("STATUS=" + statusText(text)), status: true})
}

// Watchdog queues WATCHDOG=1, unless one is waiting already.
func (q *Queue) Watchdog() error {
	if !q.active() {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return errQueueClosed
	}
	q.watchdog = true
	q.poke()
	return nil
}

var errQueueClosed = errors.New("notify: queue closed")

func (q *Queue) put(e queued) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return errQueueClosed
	}
	if n := len(q.waiting); e.status && n > 0 && q.waiting[n-1].status {
		q.waiting[n-1] = e
	} else {
		q.waiting = append(q.waiting, e)
	}
	q.poke()
	return nil
}

func (q *Queue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Close sends what is waiting, for at most timeout, and stops the Queue.
// It returns an error naming how many notifications were not sent.
func (q *Queue) Close(timeout time.Duration) error {
	if !q.active() {
		return nil
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		<-q.stopped
		return nil
	}
	q.closed = true
	q.poke()
	q.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-q.stopped:
	case <-t.C:
		close(q.abort)
		<-q.stopped
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	left := len(q.waiting)
	if q.watchdog {
		left++
	}
	if left > 0 {
		return fmt.Errorf("notify service manager at %s: %d notifications not sent within %v", q.m.addr, left, timeout)
	}
	return nil
}

// take removes the next notification to send; ok is false when there is
// none, and then done says whether the Queue is closed.
func (q *Queue) take() (e queued, ok, done bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.watchdog:
		q.watchdog = false
		return queued{msg: []byte("WATCHDOG=1"), watchdog: true}, true, false
	case len(q.waiting) > 0:
		e = q.waiting[0]
		q.waiting = q.waiting[1:]
		return e, true, false
	}
	return queued{}, false, q.closed
}

// putBack returns e, which the service manager had no room for, to the head
// of the queue. A newer status waiting behind it still follows it.
func (q *Queue) putBack(e queued) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if e.watchdog {
		q.watchdog = true
		return
	}
	q.waiting = append([]queued{e}, q.waiting...)
}

func (q *Queue) run() {
	defer close(q.stopped)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		q.fail(fmt.Errorf("notify service manager at %s: socket: %w", q.m.addr, err))
		// Nothing can be sent: wait to be closed, dropping what comes.
		for {
			_, ok, done := q.take()
			if done {
				return
			}
			if !ok {
				select {
				case <-q.wake:
				case <-q.abort:
					return
				}
			}
		}
	}
	defer unix.Close(fd)
	to := &unix.SockaddrUnix{Name: q.m.addr}
	pause := minRetryPause
	for {
		e, ok, done := q.take()
		if done {
			return
		}
		if !ok {
			select {
			case <-q.wake:
			case <-q.abort:
				return
			}
			continue
		}
		err := sendDontWait(fd, e.msg, to)
		if errors.Is(err, unix.EAGAIN) {
			q.putBack(e)
			select {
			case <-time.After(pause):
			case <-q.abort:
				return
			}
			pause = min(2*pause, maxRetryPause)
			continue
		}
		pause = minRetryPause
		if err != nil {
			q.fail(fmt.Errorf("notify service manager at %s (%s): %w", q.m.addr, summary(e.msg), err))
		}
	}
}

func (q *Queue) fail(err error) {
	if q.report != nil {
		q.report(err)
	}
}

func sendDontWait(fd int, msg []byte, to *unix.SockaddrUnix) error {
	for {
		err := unix.Sendmsg(fd, msg, nil, to, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err != unix.EINTR {
			return err
		}
	}
}

// statusText is s on one line, in valid UTF-8, cut to MaxStatusLen bytes
// without splitting a UTF-8 character.
func statusText(s string) string {
	// systemd ignores a STATUS= that is not valid UTF-8, and a worker's
	// status (in Latin-1, say) would cost us ours, which says what serves.
	s = strings.ToValidUTF8(text.OneLine(s), "\uFFFD")
	if len(s) <= MaxStatusLen {
		return s
	}
	const ellipsis = "..."
	cut := MaxStatusLen - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// extendTimeout is the EXTEND_TIMEOUT_USEC= assignment for d from now.
func extendTimeout(d time.Duration) string {
	return "EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(max(d, 0).Microseconds(), 10)
}

// ExtendTimeout is State(EXTEND_TIMEOUT_USEC=d): it asks the service
// manager to wait d longer, from now, for the start-up, reload or stop.
func (q *Queue) ExtendTimeout(d time.Duration) error { return q.State(extendTimeout(d)) }
