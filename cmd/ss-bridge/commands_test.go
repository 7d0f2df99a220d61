package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStandaloneStatusFollowsLSB(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile, statusFile := filepath.Join(dir, "pid"), filepath.Join(dir, "status")
	status := func(extra ...string) runResult {
		return runBridgeCmd(t, 10*time.Second, nil, append([]string{"status", "--pid-file=" + pidFile}, extra...)...)
	}
	if r := status(); r.code != 3 || r.stdout != "not running (no pid file)\n" {
		t.Fatalf("no server: exit %d: %q %q", r.code, r.stdout, r.stderr)
	}
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--pid-file=" + pidFile, "--status-file=" + statusFile}, []string{"sleep", "1000"})...)
	b.waitLine(5*time.Second, `^starting new worker (\d+)$`, 1)
	w := b.worker(1, 5*time.Second)
	waitStatus(t, statusFile, statusLine(1, w), 5*time.Second)
	// The live state, through the control socket beside the pid file.
	r := status("--status-file=" + statusFile)
	want := fmt.Sprintf(`^running \(pid %d\)\nsummary: generation 1 \(pid %d\) serving\nrestarts: 0\ngeneration 1: pid %d\n  serving since \S+\n$`, b.pid, w, w)
	if r.code != 0 || !re(want).MatchString(r.stdout) {
		t.Fatalf("running: exit %d: %q, want %q", r.code, r.stdout, want)
	}
	r = status("--json")
	var rep struct {
		Running     bool `json:"running"`
		PID         int  `json:"pid"`
		Generations []struct{ Generation, PID int }
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 0 || !rep.Running || rep.PID != b.pid ||
		len(rep.Generations) != 1 || rep.Generations[0].PID != w || rep.Generations[0].Generation != 1 {
		t.Fatalf("--json: exit %d, %v: %s", r.code, err, r.stdout)
	}
	b.signal(syscall.SIGKILL)
	b.wait(5 * time.Second)
	syscall.Kill(w, syscall.SIGKILL)
	if r := status(); r.code != 1 || !strings.HasPrefix(r.stdout, "not running (stale pid file ") {
		t.Fatalf("stale pid file: exit %d: %q", r.code, r.stdout)
	}
}

func TestForcedStopKillsAfterTheTimeout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--port=127.0.0.1:" + fmt.Sprint(freePort(t)), "--pid-file=" + pidFile}, goWorker("-ignore-term"))...)
	w := b.worker(1, 5*time.Second)
	b.waitLine(5*time.Second, `gen 1 serving`, 1)
	if r := runBridgeCmd(t, 10*time.Second, nil, "stop", "--pid-file="+pidFile, "--force"); r.code != 1 || !strings.Contains(r.stderr, "--force needs --timeout") {
		t.Fatalf("--force without --timeout: exit %d: %q", r.code, r.stderr)
	}
	r := runBridgeCmd(t, 10*time.Second, nil, "stop", "--pid-file="+pidFile, "--timeout=1", "--force")
	if r.code != 0 || !strings.Contains(r.stderr, "did not exit within 1s; killed it and its workers") {
		t.Fatalf("exit %d: %q", r.code, r.stderr)
	}
	if r.took < time.Second || r.took > 4*time.Second {
		t.Fatalf("took %v, want about 1s", r.took)
	}
	if !b.exited() && b.wait(3*time.Second) == -2 {
		t.Fatal("the bridge still runs")
	}
	time.Sleep(100 * time.Millisecond)
	if syscall.Kill(w, 0) == nil {
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", w)); !strings.Contains(string(st), ") Z ") {
			t.Fatalf("worker %d survived the forced stop", w)
		}
	}
	// Without --force, the timeout is an error and nothing is killed.
	b2 := startBridge(t, cmdArgs([]string{"--interval=0", "--pid-file=" + pidFile}, goWorker("-ignore-term"))...)
	b2.worker(1, 5*time.Second)
	// Not before the worker ignores TERM: until then, TERM kills it.
	b2.waitLine(5*time.Second, `gen 1 serving`, 1)
	if r := runBridgeCmd(t, 10*time.Second, nil, "stop", "--pid-file="+pidFile, "--timeout=0.5"); r.code != 1 || !strings.Contains(r.stderr, "did not exit within 500ms") {
		t.Fatalf("exit %d: %q", r.code, r.stderr)
	}
	if b2.exited() {
		t.Fatal("the bridge was killed without --force")
	}
	if r := runBridgeCmd(t, 10*time.Second, nil, "stop", "--pid-file="+pidFile, "--timeout=0.5", "--force"); r.code != 0 {
		t.Fatalf("forced stop: exit %d: %q", r.code, r.stderr)
	}
	b2.wait(3 * time.Second)
}

func TestLogCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	os.WriteFile(log, []byte("first\n"), 0o644)
	if r := runBridgeCmd(t, 10*time.Second, nil, "log", "--log-file="+log); r.code != 0 || r.stdout != "first\n" {
		t.Fatalf("exit %d: %q", r.code, r.stdout)
	}
	if r := runBridgeCmd(t, 10*time.Second, nil, "log", "--log-file=| cat"); r.code != 1 || !strings.Contains(r.stderr, "is a pipe") {
		t.Fatalf("pipe: exit %d: %q", r.code, r.stderr)
	}
	// --follow sees appended lines, and a rotated file's new content.
	follow := startBridgeWith(t, bridgeConfig{}, "log", "--follow", "--log-file="+log)
	follow.waitLine(5*time.Second, `^first$`, 1)
	f, _ := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("second\n")
	f.Close()
	follow.waitLine(5*time.Second, `^second$`, 1)
	os.Rename(log, log+".1")
	os.WriteFile(log, []byte("after rotation\n"), 0o644)
	follow.waitLine(5*time.Second, `^after rotation$`, 1)
}

func TestCommandWordsAreWorkersAfterDashDash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	os.WriteFile(filepath.Join(dir, "status"), []byte("#!/bin/sh\ntouch "+marker+"\nexec sleep 1000\n"), 0o755)
	b := startBridgeWith(t, bridgeConfig{env: []string{"PATH=" + dir + ":" + os.Getenv("PATH")}}, "--interval=0", "--", "status")
	b.waitLine(5*time.Second, `^starting new worker \d+$`, 1)
	waitFileContains(t, marker, 5*time.Second)
	// Under the name start_server there are no commands at all.
	link := filepath.Join(dir, "start_server")
	os.Symlink(e2eBridgeBin, link)
	s := startBridgeWith(t, bridgeConfig{bin: link, env: []string{"PATH=" + dir + ":" + os.Getenv("PATH")}}, "status", "--interval=0")
	s.waitLine(5*time.Second, `^starting new worker \d+$`, 1)
}
