package service

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/ss-bridge/ss-bridge/activation"
	"github.com/ss-bridge/ss-bridge/supervisor"
	"golang.org/x/sys/unix"
)

// A Go process cannot fork, so --daemonize runs the fork-setsid-fork of 0.35
// as two re-executions of this binary with the same arguments: the
// foreground process starts an intermediate one in a new session, which starts
// the daemon and exits, so that the daemon is no session leader and can never
// acquire a controlling terminal. The sockets, the locked pid file and a pipe
// to report readiness on are passed at fixed descriptors; the stage is
// passed in the environment and removed before any worker sees it.
const (
	daemonStageEnv    = "SS_BRIDGE_DAEMON_STAGE"
	daemonFDsEnv      = "SS_BRIDGE_DAEMON_FDS"
	daemonPidFD       = 3
	daemonReadyFD     = 4
	daemonFirstSockFD = 5
)

// daemonize starts the daemon and returns once it has written its pid file
// and its first generation has started (and is in the status file), or has
// failed to: then the error says why. A signal on interrupt (the operator's
// Ctrl-C or a TERM) ends the wait at once; the daemon, in a session of its
// own, goes on, and the error says so.
func daemonize(logFile string, socks []activation.Socket, pid *pidFile, interrupt <-chan os.Signal) error {
	null, err := unix.Open(os.DevNull, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("daemonize: open %s: %w", os.DevNull, err)
	}
	defer unix.Close(null)
	var ready [2]int
	if err := unix.Pipe2(ready[:], unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("daemonize: pipe: %w", err)
	}
	defer func() {
		if ready[0] >= 0 {
			unix.Close(ready[0])
		}
	}()

	// The daemon never holds the terminal: it opens the log itself, and
	// reports what stops it before that on the ready pipe.
	files := []uintptr{uintptr(null), uintptr(null), uintptr(null), uintptr(null), uintptr(ready[1])}
	if pid != nil {
		files[daemonPidFD] = pid.f.Fd()
	}
	for _, s := range socks {
		files = append(files, uintptr(s.FD))
	}
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	env := append(os.Environ(), daemonStageEnv+"=1", daemonFDsEnv+"="+strconv.Itoa(len(files)))
	child, err := syscall.ForkExec(exe, os.Args, &syscall.ProcAttr{
		Env:   env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	unix.Close(ready[1])
	if err != nil {
		return fmt.Errorf("daemonize: %w", err)
	}
	var ws unix.WaitStatus
	unix.Wait4(child, &ws, 0, nil)

	// The first worker may take --interval or --ready-timeout to count as
	// started: a minute is not a wait that Ctrl-C may not cut short.
	type report struct {
		msg string
	}
	reports := make(chan report, 1)
	readEnd := ready[0]
	ready[0] = -1 // the reader closes it, even after an interrupt
	go func() {
		defer unix.Close(readEnd)
		var buf [4096]byte
		n, _ := readFull(readEnd, buf[:])
		reports <- report{string(buf[:n])}
	}()
	var msg string
	select {
	case r := <-reports:
		msg = r.msg
	case sig := <-interrupt:
		return &daemonRunsError{fmt.Sprintf("interrupted (%v) while the daemon started its first worker; the daemon goes on: see %s, stop it with --stop", sig, logFile)}
	}
	switch {
	case msg == "ok":
		return nil
	case strings.HasPrefix(msg, "error: "):
		return errors.New(strings.TrimPrefix(msg, "error: "))
	case strings.HasPrefix(msg, "retrying: "):
		return &daemonRunsError{strings.TrimPrefix(msg, "retrying: ")}
	case ws.Exited() && ws.ExitStatus() != 0:
		return fmt.Errorf("daemonize: the intermediate process exited with status %d", ws.ExitStatus())
	default:
		return fmt.Errorf("the daemon exited before it started; see %s", logFile)
	}
}

// daemonRunsError is a start that failed in the foreground while the daemon
// runs on: its first worker failed to start and is retried, or the wait was
// interrupted. The daemon owns the sockets and the pid file then.
type daemonRunsError struct{ msg string }

func (e *daemonRunsError) Error() string { return e.msg }

func readFull(fd int, buf []byte) (int, error) {
	total := 0
	for total < len(buf) {
		n, err := unix.Read(fd, buf[total:])
		if err == unix.EINTR {
			continue
		}
		if n <= 0 || err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

// InDaemonIntermediate reports whether this process is the intermediate
// stage of --daemonize, which DaemonIntermediate must run in place of
// anything else.
func InDaemonIntermediate() bool { return os.Getenv(daemonStageEnv) == "1" }

// DaemonIntermediate is the session leader between the foreground process and
// the daemon: it starts the daemon with the descriptors it was given and
// returns the exit status.
func DaemonIntermediate() int {
	n, err := strconv.Atoi(os.Getenv(daemonFDsEnv))
	if err != nil || n < daemonFirstSockFD {
		fmt.Fprintf(os.Stderr, "ss-bridge: bad %s\n", daemonFDsEnv)
		return 1
	}
	files := make([]uintptr, n)
	for i := range files {
		files[i] = uintptr(i)
	}
	os.Setenv(daemonStageEnv, "2")
	os.Unsetenv(daemonFDsEnv)
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	if _, err := syscall.ForkExec(exe, os.Args, &syscall.ProcAttr{Env: os.Environ(), Files: files}); err != nil {
		fmt.Fprintf(os.Stderr, "ss-bridge: daemonize: %v\n", err)
		return 1
	}
	return 0
}

// adoptSockets takes over, in the daemon, the sockets its foreground process
// bound, in the order of specs.
func adoptSockets(specs []activation.Spec) []activation.Socket {
	socks := make([]activation.Socket, len(specs))
	for i, spec := range specs {
		fd := daemonFirstSockFD + i
		unix.CloseOnExec(fd)
		socks[i] = activation.Socket{Spec: spec, FD: fd}
		socks[i].Adopt()
	}
	// The specs are valid: the foreground process assigned the same table.
	activation.AssignWorkerFDs(socks)
	return socks
}

// daemonReady is the daemon's end of the pipe on which it tells the
// foreground process whether it has started: "ok", or "error: " and why.
type daemonReady struct{ told bool }

func adoptReadyPipe() *daemonReady {
	unix.CloseOnExec(daemonReadyFD)
	return &daemonReady{}
}

func (r *daemonReady) tell(msg string) {
	if r == nil || r.told {
		return
	}
	r.told = true
	unix.Write(daemonReadyFD, []byte(msg))
	unix.Close(daemonReadyFD)
}

// fail reports an error that stops the daemon before it is ready.
func (r *daemonReady) fail(err error) {
	r.tell("error: " + err.Error())
}

// observer says "ok" once the first generation has started (so the status
// file lists it), or why the first start failed. Either way the foreground
// process returns; in the second, the daemon goes on retrying.
func (r *daemonReady) observer(logFile string) func(supervisor.Event) {
	return func(e supervisor.Event) {
		switch e.Kind {
		case supervisor.Started:
			r.tell("ok")
		case supervisor.StartFailed:
			r.tell(fmt.Sprintf("retrying: the first worker failed to start: %v; the daemon (pid %d) keeps trying, see %s", e.Err, os.Getpid(), logFile))
		}
	}
}
