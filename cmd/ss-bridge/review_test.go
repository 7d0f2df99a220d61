package main

// Findings of an outside review of the hardening, each reproduced on the real binary.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A --log-file command that never reads (hung, or stopped) lets the workers fill the log
// pipe. The bridge's own log lines go to the same pipe, so a blocking write of "received
// TERM..." stalls the loop: TERM is never acted on and only SIGKILL stops the bridge.
// Reproduce: --log-file='| sleep 1000' -- perl -e '$|=1; print "x" while 1', then TERM.
// TERM must be acted on whatever the log command does.
func TestTermWithALogCommandThatNeverReads(t *testing.T) {
	dir := t.TempDir()
	status := filepath.Join(dir, "status")
	b := startBridge(t, "--interval=0", "--port=127.0.0.1:"+fmt.Sprint(freePort(t)), "--status-file="+status,
		"--log-file=| exec sleep 1000", "--", "perl", "-e", `$|=1; print "x" while 1`)
	// The worker blocks once the pipe is full.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, workers, _ := readStatusFile(status)
		if len(workers) == 1 {
			wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", workers[0].pid))
			if strings.Contains(string(wchan), "pipe_write") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker did not fill the log pipe within 20s (status file: %v)", workers)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.signal(syscall.SIGTERM)
	// Generous: the bridge may wait a few seconds for the log command at exit.
	b.wait(15 * time.Second)
}
