package main

// Tests of the superdaemon's own cost under HUPs (issue 11).

import (
	"path/filepath"
	"testing"
	"time"
)

// The superdaemon runs on one P whatever GOMAXPROCS its environment sets:
// with more, the runtime's monitor thread polls every 20 us through each
// rename of the status file and each fork (see service.Run). The runtime's
// scheduler trace says how many Ps it has; the worker, a shell, says nothing.
func TestSuperdaemonRunsOnOneP(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "s.sock")
	b := startBridgeWith(t, bridgeConfig{env: []string{"GOMAXPROCS=4", "GODEBUG=schedtrace=20"}},
		cmdArgs([]string{"--interval=0", "--path=" + sock}, []string{"sleep", "1000"})...)
	b.worker(1, 5*time.Second)
	// A trace line printed after the first worker started, so after Run's
	// start-up.
	m := b.waitLine(5*time.Second, `^SCHED \d+ms: gomaxprocs=(\d+) `, b.count(`^SCHED `)+1)
	if m.sub[1] != "1" {
		t.Errorf("the superdaemon runs with %s Ps, want 1: %q", m.sub[1], m.line)
	}
}
