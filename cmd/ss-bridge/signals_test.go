package main

import (
	"fmt"
	"github.com/ss-bridge/ss-bridge/internal/proc"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// startServing starts the bridge on a fresh port with the Go worker and waits for
// generation 1 to serve; it returns the bridge, the address and the first worker's pid.
func startServing(t *testing.T, opts []string, workerFlags ...string) (*bridge, string, int) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	b := startBridge(t, cmdArgs(append([]string{"--port=" + addr}, opts...), goWorker(workerFlags...))...)
	w := waitServing(t, addr, 1, 5*time.Second)
	if w1 := b.worker(1, time.Second); w1 != w {
		t.Fatalf("worker %d serves, but the bridge started %d", w, w1)
	}
	return b, addr, w
}

func TestHUPLogSequence(t *testing.T) {
	t.Parallel()
	b, addr, w1 := startServing(t, []string{"--interval=0"})
	b.signal(syscall.SIGHUP)
	m := b.expectSequenceWait(5*time.Second,
		`^start_server \(pid:`+fmt.Sprint(b.pid)+`\) starting now\.\.\.$`,
		fmt.Sprintf(`^starting new worker %d$`, w1),
		`^received HUP, spawning a new worker$`,
		`^starting new worker (\d+)$`,
		fmt.Sprintf(`^new worker is now running, sending TERM to old workers:%d$`, w1),
		`^killing old workers$`,
		fmt.Sprintf(`^worker %d got TERM$`, w1),
		fmt.Sprintf(`^old worker %d died, status:0$`, w1))
	w2 := b.worker(2, time.Second)
	if m[3].sub[1] != fmt.Sprint(w2) {
		t.Errorf("sequence matched worker %s, want %d", m[3].sub[1], w2)
	}
	if pid := waitServing(t, addr, 2, 5*time.Second); pid != w2 {
		t.Errorf("generation 2 served by %d, want %d", pid, w2)
	}
	if n := b.count(`^starting new worker `); n != 2 {
		t.Errorf("%d workers started, want 2", n)
	}
}

func TestSignalOnHUP(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"usr1", "USR1", "SIGUSR1", "sigusr1", "SigUsr1"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b, addr, w1 := startServing(t, []string{"--interval=0", "--signal-on-hup=" + name})
			b.signal(syscall.SIGHUP)
			b.expectSequenceWait(5*time.Second,
				`^received HUP, spawning a new worker$`,
				`^starting new worker \d+$`,
				fmt.Sprintf(`^new worker is now running, sending USR1 to old workers:%d$`, w1),
				`^killing old workers$`,
				fmt.Sprintf(`^worker %d got USR1$`, w1),
				fmt.Sprintf(`^old worker %d died, status:0$`, w1))
			if n := b.count(fmt.Sprintf(`^worker %d got TERM$`, w1)); n != 0 {
				t.Errorf("old worker got TERM besides USR1")
			}
			waitServing(t, addr, 2, 5*time.Second)
			// TERM still sends TERM (--signal-on-term is separate)
			w2 := b.worker(2, time.Second)
			b.signal(syscall.SIGTERM)
			if code := b.wait(5 * time.Second); code != 0 {
				t.Errorf("exit code %d", code)
			}
			b.expectSequence(fmt.Sprintf(`^received TERM, sending TERM to all workers:%d$`, w2), fmt.Sprintf(`^worker %d got TERM$`, w2))
		})
	}
}

func TestTermAndInt(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		opts      []string
		sig       syscall.Signal
		sigName   string
		forwarded string
	}{
		{"TERM", nil, syscall.SIGTERM, "TERM", "TERM"},
		{"INT", nil, syscall.SIGINT, "INT", "TERM"},
		{"TERM-signal-on-term-QUIT", []string{"--signal-on-term=QUIT"}, syscall.SIGTERM, "TERM", "QUIT"},
		{"INT-signal-on-term-QUIT", []string{"--signal-on-term=QUIT"}, syscall.SIGINT, "INT", "TERM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, _, w1 := startServing(t, append([]string{"--interval=0"}, tc.opts...))
			b.signal(tc.sig)
			if code := b.wait(5 * time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
			b.expectSequence(
				fmt.Sprintf(`^received %s, sending %s to all workers:%d$`, tc.sigName, tc.forwarded, w1),
				fmt.Sprintf(`^worker %d got %s$`, w1, tc.forwarded),
				fmt.Sprintf(`^worker %d died, status:0$`, w1),
				`^exiting$`)
			if proc.Alive(w1) {
				t.Errorf("worker %d alive after the bridge exited", w1)
			}
		})
	}
	t.Run("HUP-with-signal-on-term-QUIT", func(t *testing.T) {
		t.Parallel()
		b, _, w1 := startServing(t, []string{"--interval=0", "--signal-on-term=QUIT"})
		b.signal(syscall.SIGHUP)
		b.expectSequenceWait(5*time.Second,
			fmt.Sprintf(`^new worker is now running, sending TERM to old workers:%d$`, w1),
			fmt.Sprintf(`^worker %d got TERM$`, w1))
	})
}

// A HUP during a restart (here: while the new worker is within --interval) causes exactly
// one more restart after it.
func TestHUPDuringRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	status := filepath.Join(dir, "status")
	b := startBridge(t, cmdArgs([]string{"--interval=1", "--status-file=" + status}, []string{"sleep", "1000"})...)
	w1 := b.worker(1, 5*time.Second)
	waitStatus(t, status, statusLine(1, w1), 3*time.Second)
	b.signal(syscall.SIGHUP)
	b.worker(2, 3*time.Second)
	time.Sleep(200 * time.Millisecond) // well within the 1s interval of worker 2
	b.signal(syscall.SIGHUP)
	w3 := b.worker(3, 5*time.Second)
	waitStatus(t, status, statusLine(3, w3), 5*time.Second)
	time.Sleep(1500 * time.Millisecond)
	if n := b.count(`^starting new worker `); n != 3 {
		t.Errorf("%d workers started, want 3 (one restart per HUP)", n)
	}
	if data, _ := os.ReadFile(status); string(data) != statusLine(3, w3) {
		t.Errorf("final status %q, want %q", data, statusLine(3, w3))
	}
}

// 13 HUPs 250ms apart while each restart takes a second: every HUP is acted on (they may
// be coalesced), and in the end exactly one generation, newer than every generation
// started before the last HUP, serves.
func TestManyHUPs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	status := filepath.Join(dir, "status")
	b, addr, _ := startServing(t, []string{"--interval=1", "--status-file=" + status})
	startedBeforeLast := 0
	for i := 0; i < 13; i++ {
		if i == 12 {
			startedBeforeLast = b.count(`^starting new worker `)
		}
		b.signal(syscall.SIGHUP)
		time.Sleep(250 * time.Millisecond)
	}
	// Wait for the bridge to settle: one generation, unchanged for 2.5s (a pending
	// restart would have started within the 1s interval).
	deadline := time.Now().Add(20 * time.Second)
	var gens []genPid
	last, lastChange := "", time.Now()
	for {
		raw, g, _ := readStatusFile(status)
		if raw != last {
			last, lastChange = raw, time.Now()
		}
		gens = g
		if len(gens) == 1 && time.Since(lastChange) > 2500*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never settled on one generation; last %q", last)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if gens[0].gen <= startedBeforeLast {
		t.Errorf("final generation %d, but %d were started before the last HUP", gens[0].gen, startedBeforeLast)
	}
	if n := b.count(`^starting new worker `); n != gens[0].gen {
		t.Errorf("%d workers started, final generation %d", n, gens[0].gen)
	}
	pid, gen, err := getPidGen(addr)
	if err != nil || pid != gens[0].pid || gen != gens[0].gen {
		t.Errorf("served by pid %d gen %d (err %v), want %v", pid, gen, err, gens[0])
	}
	if kids := proc.Children(b.pid); len(kids) != 1 || kids[0].PID != gens[0].pid {
		t.Errorf("bridge children %v, want only %d", kids, gens[0].pid)
	}
	t.Logf("13 HUPs: %d workers started, final generation %d (started before last HUP: %d)",
		b.count(`^starting new worker `), gens[0].gen, startedBeforeLast)
}

// TERM during a restart is acted on at once.
func TestTermDuringRestart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		opts    []string
		waitFor string
		nth     int
	}{
		// TERM while worker 2 is within its --interval
		{"interval", []string{"--interval=2"}, `^starting new worker \d+$`, 2},
		{"kill-old-delay", []string{"--interval=0", "--kill-old-delay=10"}, `^sleeping 10 secs before killing old workers$`, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			status := filepath.Join(t.TempDir(), "status")
			b := startBridge(t, cmdArgs(append(tc.opts, "--status-file="+status), []string{"sleep", "1000"})...)
			w1 := b.worker(1, 5*time.Second)
			waitStatus(t, status, statusLine(1, w1), 5*time.Second) // generation 1 is up
			b.signal(syscall.SIGHUP)
			b.waitLine(5*time.Second, tc.waitFor, tc.nth)
			w2 := b.worker(2, time.Second)
			time.Sleep(100 * time.Millisecond)
			start := time.Now()
			b.signal(syscall.SIGTERM)
			code := b.wait(5 * time.Second)
			if d := time.Since(start); d > 1500*time.Millisecond {
				t.Errorf("bridge took %v to exit after TERM during a restart", d)
			}
			if code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
			for _, w := range []int{w1, w2} {
				if proc.Alive(w) {
					t.Errorf("worker %d alive after the bridge exited", w)
				}
			}
		})
	}
}

func TestKillTimeout(t *testing.T) {
	t.Parallel()
	b, _, w1 := startServing(t, []string{"--interval=0", "--kill-timeout=1"}, "-ignore-term")
	b.signal(syscall.SIGHUP)
	m := b.expectSequenceWait(6*time.Second,
		`^killing old workers$`,
		fmt.Sprintf(`^worker %d got TERM$`, w1),
		fmt.Sprintf(`^old worker %d died, status:9$`, w1))
	if d := m[2].at.Sub(m[1].at); d < 800*time.Millisecond || d > 2*time.Second {
		t.Errorf("old worker killed %v after its TERM, want about 1s", d)
	}
	// the new generation also ignores TERM: TERM to the bridge ends with SIGKILL too
	w2 := b.worker(2, time.Second)
	b.signal(syscall.SIGTERM)
	if code := b.wait(5 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	b.expectSequence(fmt.Sprintf(`^worker %d died, status:9$`, w2), `^exiting$`)
}

// A worker that always fails is retried with backoff, not in a tight loop.
func TestBackoff(t *testing.T) {
	t.Parallel()
	t.Run("failing-from-start", func(t *testing.T) {
		t.Parallel()
		b := startBridge(t, cmdArgs([]string{"--interval=0", "--max-backoff=1"}, []string{"sh", "-c", "exit 3"})...)
		b.worker(1, 5*time.Second)
		time.Sleep(3 * time.Second)
		n := b.count(`^starting new worker `)
		if n > 10 || n < 2 {
			t.Errorf("%d start attempts in 3s with --interval=0 --max-backoff=1, want 2..10", n)
		}
		if b.exited() {
			t.Errorf("bridge exited (%v); want it to keep retrying", b.werr)
		}
		t.Logf("%d start attempts in 3s", n)
	})
	t.Run("old-generation-keeps-serving", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		flag := filepath.Join(dir, "fail")
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		b := startBridge(t, cmdArgs([]string{"--interval=0.3", "--max-backoff=1", "--port=" + addr},
			[]string{"sh", "-c", `if [ -e '` + flag + `' ]; then exit 3; fi; exec ` + e2eWorkerBin})...)
		w1 := waitServing(t, addr, 1, 5*time.Second)
		os.WriteFile(flag, nil, 0o644)
		b.signal(syscall.SIGHUP)
		b.worker(2, 3*time.Second)
		end := time.Now().Add(3 * time.Second)
		requests := 0
		for time.Now().Before(end) {
			pid, gen, err := getPidGen(addr)
			requests++
			if err != nil || pid != w1 || gen != 1 {
				t.Fatalf("request %d while the new build fails: pid %d gen %d err %v, want pid %d gen 1", requests, pid, gen, err, w1)
			}
			time.Sleep(50 * time.Millisecond)
		}
		n := b.count(`^starting new worker `)
		if n > 10 {
			t.Errorf("%d start attempts in 3s, want at most 10", n)
		}
		if c := b.count(`^new worker \d+ seems to have failed to start, exit status:768$`); c < 1 {
			t.Errorf("no \"seems to have failed to start, exit status:768\" line")
		}
		// fix the build: the restart completes
		os.Remove(flag)
		deadline := time.Now().Add(5 * time.Second)
		for {
			pid, gen, err := getPidGen(addr)
			if err == nil && gen > 1 {
				t.Logf("%d start attempts while failing; generation %d (pid %d) serves after the fix", n, gen, pid)
				break
			}
			if err != nil {
				t.Fatalf("request failed during recovery: %v", err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("no new generation within 5s of fixing the worker")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !proc.WaitDead(w1, 3*time.Second) {
			t.Errorf("old worker %d still alive after the new generation came up", w1)
		}
	})
}
