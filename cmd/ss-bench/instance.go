package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/testkit"
	"github.com/ss-bridge/ss-bridge/supervisor"
)

// Binary is a start_server-compatible superdaemon under test.
type Binary struct {
	Name, Path string
	// Notify: it has --ready=notify (ss-bridge); the others are measured
	// without it, and its scenarios are n/a for them.
	Notify bool
}

// Instance is a running superdaemon with the benchmark worker.
type Instance struct {
	bin     Binary
	cmd     *exec.Cmd
	PID     int
	Started time.Time // just before exec
	Addr    string    // 127.0.0.1:port of the first --port
	Status  string    // the status file
	Events  string    // the workers' events file
	logPath string
	done    chan struct{}
	exitAt  time.Time
	werr    error
}

// Spec is how to run an instance.
type Spec struct {
	Ports      []int    // 127.0.0.1 ports; the first is Addr
	Opts       []string // superdaemon options besides --port and --status-file
	WorkerArgs []string // benchmark worker flags besides -events
	Tag        string   // for the names of its files
	// Node: the worker is the Node.js server (nodeScript) instead of
	// "ss-bench worker"; it takes the same -events, -latency and -exit-if.
	Node bool
}

var (
	workDir  string // files of the instances
	selfPath string // this program, run as the worker
	runSeq   int
	runMu    sync.Mutex
)

func start(b Binary, spec Spec) (*Instance, error) {
	runMu.Lock()
	runSeq++
	prefix := filepath.Join(workDir, fmt.Sprintf("%03d-%s-%s", runSeq, sanitize(b.Name), spec.Tag))
	runMu.Unlock()
	in := &Instance{bin: b, Status: prefix + ".status", Events: prefix + ".events", logPath: prefix + ".log", done: make(chan struct{})}
	if len(spec.Ports) == 0 {
		p, err := testkit.FreePorts(1)
		if err != nil {
			return nil, err
		}
		spec.Ports = p
	}
	in.Addr = fmt.Sprintf("127.0.0.1:%d", spec.Ports[0])
	var args []string
	for _, p := range spec.Ports {
		args = append(args, fmt.Sprintf("--port=127.0.0.1:%d", p))
	}
	args = append(args, "--status-file="+in.Status)
	args = append(args, spec.Opts...)
	if spec.Node {
		args = append(args, "--", nodePath, nodeScript, "-events="+in.Events)
	} else {
		args = append(args, "--", selfPath, "worker", "-events="+in.Events)
	}
	args = append(args, spec.WorkerArgs...)
	logf, err := os.OpenFile(in.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	in.cmd = exec.Command(b.Path, args...)
	in.cmd.Env = cleanEnv()
	in.cmd.Stdout, in.cmd.Stderr = logf, logf
	in.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in.Started = time.Now()
	if err := in.cmd.Start(); err != nil {
		return nil, err
	}
	in.PID = in.cmd.Process.Pid
	go func() {
		in.werr = in.cmd.Wait()
		in.exitAt = time.Now()
		close(in.done)
	}()
	return in, nil
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r == '=' {
			return '_'
		}
		return r
	}, s)
}

// cleanEnv is our environment without what would change the superdaemon's or
// the worker's behaviour.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "ENVDIR", name == "ENABLE_AUTO_RESTART", name == "AUTO_RESTART_INTERVAL",
			name == "KILL_OLD_DELAY", name == "NOTIFY_SOCKET", name == "LISTEN_FDS", name == "LISTEN_PID",
			strings.HasPrefix(name, "SERVER_STARTER_"):
			continue
		}
		env = append(env, kv)
	}
	return env
}

func (in *Instance) Exited() bool {
	select {
	case <-in.done:
		return true
	default:
		return false
	}
}

// Stop sends TERM and waits for the exit (up to timeout), returning how long
// it took; on timeout the process group is killed.
func (in *Instance) Stop(timeout time.Duration) (time.Duration, error) {
	if in.Exited() {
		return 0, fmt.Errorf("%s exited early: %v", in.bin.Name, in.werr)
	}
	t0 := time.Now()
	syscall.Kill(in.PID, syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(timeout):
		in.Kill()
		return 0, fmt.Errorf("%s did not exit within %v of TERM", in.bin.Name, timeout)
	}
	d := in.exitAt.Sub(t0)
	in.reapGroup()
	return d, nil
}

// Kill kills the superdaemon and everything in its process group.
func (in *Instance) Kill() {
	syscall.Kill(-in.PID, syscall.SIGKILL)
	syscall.Kill(in.PID, syscall.SIGKILL)
	<-in.done
	in.reapGroup()
}

// reapGroup kills what is left of the instance's process group (workers
// that outlived it), so that no run disturbs the next.
func (in *Instance) reapGroup() {
	deadline := time.Now().Add(3 * time.Second)
	for syscall.Kill(-in.PID, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(-in.PID, syscall.SIGKILL)
			time.Sleep(10 * time.Millisecond)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (in *Instance) Log() string {
	data, _ := os.ReadFile(in.logPath)
	return string(data)
}

// WaitServing waits for a successful response on addr from a generation of
// at least gen and returns when it came.
func (in *Instance) WaitServing(addr string, gen int, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		g, _, err := get(addr)
		if err == nil && g >= gen {
			return time.Now(), nil
		}
		if err != nil {
			lastErr = err
		}
		if in.Exited() {
			return time.Time{}, fmt.Errorf("%s exited (%v); log:\n%s", in.bin.Name, in.werr, tail(in.Log()))
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s: no response from generation %d on %s within %v (last error %v); log:\n%s", in.bin.Name, gen, addr, timeout, lastErr, tail(in.Log()))
		}
		time.Sleep(time.Millisecond)
	}
}

func tail(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

// get does one GET on a new connection and returns the answering worker's
// generation and pid.
func get(addr string) (gen, pid int, err error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, 0, err
	}
	c := &rawConn{Conn: conn, r: bufio.NewReader(conn)}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")); err != nil {
		return 0, 0, err
	}
	status, body, _, err := c.readResponse()
	if err != nil {
		return 0, 0, err
	}
	p, g, err := testkit.ParseAnswer(body)
	if status != 200 || err != nil {
		return 0, 0, fmt.Errorf("bad response %d %q", status, body)
	}
	return g, p, nil
}

// StatusGens reads the status file: generation to pid.
func (in *Instance) StatusGens() (map[int]int, error) {
	entries, err := supervisor.ReadStatusFile(in.Status)
	if err != nil {
		return nil, err
	}
	out := map[int]int{}
	for _, e := range entries {
		out[e.Generation] = e.PID
	}
	return out, nil
}

// Entries reads every GEN:PID line of the status file (a pool has one per
// worker).
func (in *Instance) Entries() ([]supervisor.StatusEntry, error) {
	return supervisor.ReadStatusFile(in.Status)
}

// only returns the single generation in the status file, if there is one.
func (in *Instance) only() (gen, pid int, ok bool) {
	gens, err := in.StatusGens()
	if err != nil || len(gens) != 1 {
		return 0, 0, false
	}
	for g, p := range gens {
		return g, p, true
	}
	return 0, 0, false
}

// WaitOnly waits until the status file lists a single generation above gen.
func (in *Instance) WaitOnly(gen int, timeout time.Duration, poll time.Duration) (g, pid int, at time.Time, err error) {
	deadline := time.Now().Add(timeout)
	for {
		if g, pid, ok := in.only(); ok && g > gen {
			return g, pid, time.Now(), nil
		}
		if in.Exited() {
			return 0, 0, time.Time{}, fmt.Errorf("%s exited (%v); log:\n%s", in.bin.Name, in.werr, tail(in.Log()))
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(in.Status)
			return 0, 0, time.Time{}, fmt.Errorf("%s: status file does not show a single generation above %d within %v (it shows %q); log:\n%s", in.bin.Name, gen, timeout, data, tail(in.Log()))
		}
		time.Sleep(poll)
	}
}

// Event is a line of the workers' events file.
type Event struct {
	PID  int
	Name string
	At   time.Time
}

func (in *Instance) ReadEvents() []Event {
	data, _ := os.ReadFile(in.Events)
	var out []Event
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		pid, _ := strconv.Atoi(f[0])
		ns, _ := strconv.ParseInt(f[2], 10, 64)
		out = append(out, Event{pid, f[1], time.Unix(0, ns)})
	}
	return out
}

// eventAt finds the time of a worker's event.
func eventAt(evs []Event, pid int, name string) (time.Time, bool) {
	for _, e := range evs {
		if e.PID == pid && e.Name == name {
			return e.At, true
		}
	}
	return time.Time{}, false
}
