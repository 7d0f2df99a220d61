package main

// Findings of an outside review of the hardening, each reproduced on the real binary.

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/proc"
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

// --daemonize waits in the foreground until the first worker has lived --interval (or sent
// READY=1), which can be long (--interval=60, a slow worker under --ready=notify). Its TERM
// and INT are caught for the server it is about to become and read by nobody meanwhile,
// so Ctrl-C does nothing until the wait ends. Reproduce: ss-bridge --daemonize
// --interval=60 --log-file=L --pid-file=P -- worker, then SIGINT the command: it returns
// only 60 s later, with 0. An interrupted command must return promptly.
func TestDaemonizeForegroundInterrupted(t *testing.T) {
	dir := t.TempDir()
	logFile, pidFile := filepath.Join(dir, "log"), filepath.Join(dir, "pid")
	t.Cleanup(func() {
		data, _ := os.ReadFile(pidFile)
		if daemon, _ := strconv.Atoi(strings.TrimSpace(string(data))); daemon > 0 && proc.Alive(daemon) {
			workers := descendants(daemon)
			syscall.Kill(daemon, syscall.SIGTERM)
			if !proc.WaitDead(daemon, 5*time.Second) {
				syscall.Kill(daemon, syscall.SIGKILL)
			}
			for _, w := range workers {
				killIfOurs(w)
			}
		}
	})
	b := startBridge(t, cmdArgs([]string{"--daemonize", "--interval=60", "--log-file=" + logFile, "--pid-file=" + pidFile,
		"--port=127.0.0.1:" + fmt.Sprint(freePort(t))}, goWorker())...)
	// The daemon is up and its first worker serves: the foreground is waiting.
	waitFileContains(t, logFile, 20*time.Second, "gen 1 serving")
	b.signal(syscall.SIGINT)
	// Generous for a loaded machine; the wait it cuts short is 60 s.
	b.wait(10 * time.Second)
}

// --status-file naming a directory starts, then logs "failed to update the status file:
// rename ...: file exists" at every change, for as long as it runs: the start-up check
// creates the temporary file next to it, which works, and never looks at the path itself.
// 0.35 dies at its first status write. Bad input must be a one-line error at start, exit 1.
func TestStatusFileThatIsADirectory(t *testing.T) {
	dir := t.TempDir()
	res := runBridgeCmd(t, 10*time.Second, nil, "--interval=0", "--port=127.0.0.1:"+fmt.Sprint(freePort(t)),
		"--status-file="+dir, "--", "sleep", "1000")
	if res.code != 1 || res.timedOut || !strings.Contains(res.stderr, dir) {
		t.Fatalf("--status-file=%s (a directory): exit %d (timed out %v), stderr %q; want exit 1 and an error naming it",
			dir, res.code, res.timedOut, res.stderr)
	}
}
