package supervisor

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/proc"
	"golang.org/x/sys/unix"
)

// The test binary doubles as a supervisor that execs itself: with
// SSB_EXEC_PROBE=run it runs a real supervisor, and once its worker has
// started it execs its own binary with SSB_EXEC_PROBE=after, which reports
// and waits to be killed. Both run on the main goroutine, as ss-bridge does
// (TestMain is called from main).
func TestMain(m *testing.M) {
	switch os.Getenv("SSB_EXEC_PROBE") {
	case "":
		os.Exit(m.Run())
	case "run":
		execProbe(os.Getenv("SSB_PROBE_DIR"), os.Getenv("SSB_PROBE_OFF_THREAD") != "")
	case "after":
		afterExec(os.Getenv("SSB_PROBE_DIR"))
	}
	os.Exit(2)
}

// probeWorker writes "ready" and then, on SIGUSR1 (the Pdeathsig), "got USR1".
const probeWorker = `trap 'echo got USR1 >> "$SSB_PROBE_DIR/worker.log"; exit 0' USR1
echo ready >> "$SSB_PROBE_DIR/worker.log"
while :; do sleep 0.02; done`

func probeFail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "probe: "+format+"\n", args...)
	os.Exit(1)
}

func execProbe(dir string, offThread bool) {
	sigs, _ := NotifySignals()
	execNow := make(chan int)
	var s *Supervisor
	cfg := Config{
		Command:      []string{"/bin/sh", "-c", probeWorker, "worker"},
		Env:          os.Environ(),
		Interval:     100 * time.Millisecond,
		SignalOnTERM: syscall.SIGUSR1,
		Observer: func(e Event) {
			if e.Kind != Started {
				return
			}
			check := "ok"
			if err := s.CheckExec(); err != nil {
				check = err.Error()
			}
			if err := os.WriteFile(dir+"/checkexec", []byte(check), 0o644); err != nil {
				probeFail("%v", err)
			}
			if offThread {
				execNow <- e.PID
				select {} // keeps the forking thread alive until the exec ends it
			}
			execSelf(dir, e.PID)
		},
	}
	var err error
	if s, err = New(cfg); err != nil {
		probeFail("%v", err)
	}
	if !offThread {
		s.Run(sigs)
		probeFail("Run returned")
	}
	go func() {
		runtime.LockOSThread()
		s.Run(sigs)
	}()
	execSelf(dir, <-execNow)
}

// execSelf waits for the worker to be ready and execs this binary.
func execSelf(dir string, worker int) {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if b, _ := os.ReadFile(dir + "/worker.log"); bytes.HasPrefix(b, []byte("ready\n")) {
			break
		}
		if time.Now().After(deadline) {
			probeFail("worker %d never got ready", worker)
		}
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SSB_EXEC_PROBE=") {
			env = append(env, kv)
		}
	}
	env = append(env, "SSB_EXEC_PROBE=after", fmt.Sprintf("SSB_PROBE_WORKER=%d", worker),
		fmt.Sprintf("SSB_PROBE_TID=%d", unix.Gettid()))
	err := syscall.Exec("/proc/self/exe", os.Args, env)
	probeFail("exec: %v", err)
}

func afterExec(dir string) {
	report := fmt.Sprintf("pid=%d worker=%s exec-tid=%s\n", os.Getpid(), os.Getenv("SSB_PROBE_WORKER"), os.Getenv("SSB_PROBE_TID"))
	if err := os.WriteFile(dir+"/after", []byte(report), 0o644); err != nil {
		probeFail("%v", err)
	}
	for {
		time.Sleep(time.Hour)
	}
}

// A worker forked by the supervisor loop on the main goroutine survives an
// execve of the supervisor's process, stays its child, and still gets its
// Pdeathsig when that process dies. Forked on another thread, it gets the
// signal at the exec: the second case shows the test tells them apart.
func TestWorkersSurviveAnExecOfTheSupervisor(t *testing.T) {
	for _, offThread := range []bool{false, true} {
		name := map[bool]string{false: "main thread", true: "other thread"}[offThread]
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "SSB_EXEC_PROBE=run", "SSB_PROBE_DIR="+dir)
			if offThread {
				cmd.Env = append(cmd.Env, "SSB_PROBE_OFF_THREAD=1")
			}
			var stderr syncBuffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			probe := cmd.Process.Pid
			waited := false
			defer func() {
				if !waited {
					cmd.Process.Kill()
					cmd.Wait()
				}
			}()
			var after string
			for deadline := time.Now().Add(20 * time.Second); after == ""; time.Sleep(20 * time.Millisecond) {
				b, _ := os.ReadFile(dir + "/after")
				if strings.HasSuffix(string(b), "\n") {
					after = string(b)
				} else if time.Now().After(deadline) {
					t.Fatalf("the probe did not exec itself; stderr:\n%s", stderr.String())
				}
			}
			var pid, worker, tid int
			if _, err := fmt.Sscanf(after, "pid=%d worker=%d exec-tid=%d", &pid, &worker, &tid); err != nil {
				t.Fatalf("probe reported %q: %v", after, err)
			}
			defer unix.Kill(worker, syscall.SIGKILL)
			if pid != probe || tid != probe {
				t.Fatalf("after the exec: pid %d, exec'd from thread %d; want the probe's pid %d for both", pid, tid, probe)
			}
			workerLog := func() string { b, _ := os.ReadFile(dir + "/worker.log"); return string(b) }
			check, _ := os.ReadFile(dir + "/checkexec")
			if offThread {
				for deadline := time.Now().Add(5 * time.Second); workerLog() != "ready\ngot USR1\n"; time.Sleep(20 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("worker forked on another thread did not get its Pdeathsig at the exec; its log: %q", workerLog())
					}
				}
				if !strings.Contains(stderr.String(), "warning: starting workers off the main thread") || !strings.Contains(string(check), "off the main thread") {
					t.Errorf("forking off the main thread went unnoticed: CheckExec said %q; stderr:\n%s", check, stderr.String())
				}
				return
			}
			if string(check) != "ok" {
				t.Errorf("CheckExec on the main thread: %s", check)
			}
			// Long enough for the trap of a signal the worker got to run.
			time.Sleep(300 * time.Millisecond)
			if got := workerLog(); got != "ready\n" {
				t.Fatalf("worker got a signal at the exec; its log: %q; probe stderr:\n%s", got, stderr.String())
			}
			if parent := proc.Parent(worker); parent != probe {
				t.Fatalf("worker %d's parent is %d after the exec, want the probe %d", worker, parent, probe)
			}
			if strings.Contains(stderr.String(), "warning") {
				t.Errorf("probe warned:\n%s", stderr.String())
			}
			// kill -9 of the new image: the workers still get their signal.
			cmd.Process.Kill()
			cmd.Wait()
			waited = true
			for deadline := time.Now().Add(5 * time.Second); workerLog() != "ready\ngot USR1\n"; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("worker did not get its Pdeathsig when the probe was killed; its log: %q", workerLog())
				}
			}
		})
	}
}
