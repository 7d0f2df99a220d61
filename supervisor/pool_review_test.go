package supervisor

import (
	"syscall"
	"testing"
	"time"
)

// Found by a review of the pool: each fails without its fix.

// twoReady waits for a pool of two to start, sends READY=1 for both (pids 101
// and 102) and waits until the first generation counts as started.
func twoReady(h *harness) {
	h.waitFor("two workers", func() bool { return h.spawnCount() == 2 })
	h.s.messages <- workerMessage{pid: 101, msg: readyMessage()}
	h.s.messages <- workerMessage{pid: 102, msg: readyMessage()}
	h.waitEvent(Started, 1)
}

// A serving worker that dies right after its start while its slot's
// replacement is starting leaves a retry time on the slot; once the
// replacement serves, that past deadline must not wake the loop forever.
func TestPoolNoStaleRetryAfterARoll(t *testing.T) {
	tasks := make(chan func())
	h := start(t, Config{Workers: 2, Rolling: true, ReadyByNotify: true, ReadyTimeout: 10 * time.Second,
		Interval: 10 * time.Millisecond, NotifyDir: shortDir(t), Tasks: tasks})
	twoReady(h)
	h.signal(syscall.SIGHUP)
	h.waitFor("one new", func() bool { return h.spawnCount() == 3 })
	h.os.exit(101, 0)
	time.Sleep(100 * time.Millisecond)
	h.s.messages <- workerMessage{pid: 103, msg: readyMessage()}
	h.waitFor("two new", func() bool { return h.spawnCount() == 4 })
	h.s.messages <- workerMessage{pid: 104, msg: readyMessage()}
	h.waitEvent(Reloaded, 2)
	onLoop(t, tasks, func() {
		if next, ok := h.s.nextDeadline(); ok && next.Before(h.s.now()) {
			t.Errorf("a deadline %v in the past once the roll is done: the loop spins", h.s.now().Sub(next))
		}
	})
}

// A whole-generation restart in which one slot's old worker dies while its
// replacement starts: that replacement fills its slot on its own, and the
// other ready replacements must still be promoted, or the restart never ends.
func TestPoolWholeRestartCompletesAfterAnOldWorkerDies(t *testing.T) {
	h := start(t, Config{Workers: 2, ReadyByNotify: true, ReadyTimeout: 10 * time.Second, Interval: 10 * time.Millisecond,
		NotifyDir: shortDir(t)})
	twoReady(h)
	h.signal(syscall.SIGHUP)
	h.waitFor("two new", func() bool { return h.spawnCount() == 4 })
	h.s.messages <- workerMessage{pid: 103, msg: readyMessage()}
	time.Sleep(100 * time.Millisecond)
	h.os.exit(102, 0)
	time.Sleep(100 * time.Millisecond)
	h.s.messages <- workerMessage{pid: 104, msg: readyMessage()}
	h.waitEvent(Reloaded, 2)
}

// In the first generation, a worker that dies right after it counted as
// started is retried; the first generation must still become ready.
func TestPoolFirstGenerationEarlyDeathStillBecomesReady(t *testing.T) {
	h := start(t, Config{Workers: 2, ReadyByNotify: true, ReadyTimeout: 5 * time.Second, Interval: time.Second,
		NotifyDir: shortDir(t)})
	h.waitFor("two workers", func() bool { return h.spawnCount() == 2 })
	h.s.messages <- workerMessage{pid: 101, msg: readyMessage()}
	time.Sleep(100 * time.Millisecond)
	h.os.exit(101, 1<<8)
	time.Sleep(300 * time.Millisecond)
	h.s.messages <- workerMessage{pid: 102, msg: readyMessage()}
	h.waitFor("a refill of slot 0", func() bool { return h.spawnCount() == 3 })
	h.s.messages <- workerMessage{pid: 103, msg: readyMessage()}
	h.waitEvent(Started, 1)
}

// A refill that fails in a pool that serves is no failed start or reload:
// StartFailed would have systemd's status say "start failed" until the next
// reload, while the other slots serve and the slot is retried.
func TestPoolFailedRefillIsNoFailedStart(t *testing.T) {
	h := start(t, Config{Workers: 2, ReadyByNotify: true, ReadyTimeout: 10 * time.Second, Interval: 10 * time.Millisecond,
		NotifyDir: shortDir(t)})
	twoReady(h)
	time.Sleep(1100 * time.Millisecond) // past --interval + 1 s: an unexpected death, refilled at once
	h.os.exit(101, 0)
	h.waitFor("a refill", func() bool { return h.spawnCount() == 3 })
	h.os.exit(103, 1<<8)
	h.waitFor("the refill's exit handled", func() bool { return h.count(Exited) >= 2 })
	if n := h.count(StartFailed); n != 0 {
		t.Errorf("%d StartFailed events for a failed refill, want 0", n)
	}
}
