package main

// Tests of the superdaemon's own cost under HUPs (issue 11).

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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

// The runtime's threads other than the main one get 1 ms of timer slack, so that the
// monitor thread's 20 us sleeps through each fork coalesce (see service.runtimeThreadSlack);
// the main thread, the workers forked from it and the log command keep the slack ss-bridge
// was started with. Setting another thread's slack takes CAP_SYS_NICE.
func TestRuntimeThreadsGetTimerSlack(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("setting another thread's timer slack takes CAP_SYS_NICE")
	}
	slack := func(tid int) string {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", tid))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(data))
	}
	ours := slack(os.Getpid())
	if ours == "1000000" {
		t.Skip("this test runs with 1 ms of slack itself")
	}
	dir := t.TempDir()
	logFile := filepath.Join(dir, "log")
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--path=" + filepath.Join(dir, "s.sock"),
		"--log-file=| cat >> " + logFile}, []string{"sleep", "1000"})...)
	m := regexp.MustCompile(`starting new worker (\d+)`).FindStringSubmatch(waitFileContains(t, logFile, 5*time.Second, "starting new worker"))
	w, _ := strconv.Atoi(m[1])
	if got := slack(b.pid); got != ours {
		t.Errorf("the main thread has a slack of %s ns, want %s as started", got, ours)
	}
	if got := slack(w); got != ours {
		t.Errorf("the worker has a slack of %s ns, want %s", got, ours)
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", b.pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if tid != b.pid && slack(tid) != "1000000" {
			t.Errorf("runtime thread %d has a slack of %s ns, want 1000000", tid, slack(tid))
		}
	}
	for _, pid := range descendants(b.pid) {
		if pid != w && slack(pid) != ours {
			t.Errorf("child %d (the log command) has a slack of %s ns, want %s", pid, slack(pid), ours)
		}
	}
}
