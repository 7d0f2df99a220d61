package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ss-bridge/ss-bridge/service"
	"github.com/ss-bridge/ss-bridge/supervisor"
	"golang.org/x/sys/unix"
)

// pollEvery is how often --restart and --stop look at the server's files.
const pollEvery = 20 * time.Millisecond

// runningServer opens the pid file and returns the pid of the server holding
// its lock, or an error when none does.
func runningServer(pidPath string) (*os.File, int, error) {
	f, err := os.Open(pidPath)
	if err != nil {
		return nil, 0, fmt.Errorf("open pid file: %w", err)
	}
	pid, err := service.ReadPid(pidPath)
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	held, err := service.Locked(f)
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !held {
		f.Close()
		return nil, 0, fmt.Errorf("server is not running: pid file %s (pid %d) is not locked by any process", pidPath, pid)
	}
	return f, pid, nil
}

// stopServer sends TERM to the server and returns once it has exited, which
// is when the lock on its pid file is released.
func stopServer(o *Options, stderr io.Writer) error {
	if o.PidFile == "" {
		return errors.New("--stop option requires --pid-file to be set as well")
	}
	f, pid, err := runningServer(o.PidFile)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(stderr, "stop_server (pid:%d) stopping now (pid:%d)...\n", os.Getpid(), pid)
	if err := unix.Kill(pid, unix.SIGTERM); err != nil {
		return fmt.Errorf("send TERM to the server (pid %d): %w", pid, err)
	}
	deadline := deadlineAfter(o.Timeout)
	for {
		held, err := service.Locked(f)
		if err != nil {
			return err
		}
		if !held {
			return nil
		}
		if deadline.passed() {
			return &notStoppedError{pid, o.Timeout}
		}
		time.Sleep(pollEvery)
	}
}

// notStoppedError is a server that did not exit within --timeout.
type notStoppedError struct {
	pid     int
	timeout time.Duration
}

func (e *notStoppedError) Error() string {
	return fmt.Sprintf("server (pid %d) did not exit within %s", e.pid, e.timeout)
}

// restartServer sends HUP to the server and returns once the status file
// lists a single generation newer than every one listed before. (0.35 waits
// for exactly the next number, which never comes when a start attempt failed
// and the generation after it succeeded.)
func restartServer(o *Options) error {
	if o.PidFile == "" || o.StatusFile == "" {
		return errors.New("--restart option requires --pid-file and --status-file to be set as well")
	}
	f, pid, err := runningServer(o.PidFile)
	if err != nil {
		return err
	}
	defer f.Close()
	gens, err := readGenerations(o.StatusFile)
	if err != nil {
		return err
	}
	if len(gens) == 0 {
		return fmt.Errorf("no active process found in the status file %s", o.StatusFile)
	}
	newest := gens[len(gens)-1]
	// A HUP that arrives in the exec of a self-upgrade is lost: send it again
	// when an upgrade has ended meanwhile. A second HUP costs at most one
	// more restart.
	results := service.ResultFile(o.PidFile)
	upgrades, _ := service.ReadResult(results)
	if err := unix.Kill(pid, unix.SIGHUP); err != nil {
		return fmt.Errorf("send HUP to the server (pid %d): %w", pid, err)
	}
	deadline := deadlineAfter(o.Timeout)
	for {
		gens, err := readGenerations(o.StatusFile)
		if err == nil && len(gens) == 1 && gens[0] > newest {
			return nil
		}
		if r, err := service.ReadResult(results); err == nil && r.Seq != upgrades.Seq {
			upgrades = r
			unix.Kill(pid, unix.SIGHUP)
		}
		if held, _ := service.Locked(f); !held {
			return fmt.Errorf("server (pid %d) exited before the new generation started", pid)
		}
		if deadline.passed() {
			return fmt.Errorf("timed out after %s waiting for a new generation to replace generation %d (status file shows %s)",
				o.Timeout, newest, describeGenerations(gens))
		}
		time.Sleep(pollEvery)
	}
}

// readGenerations returns the generations of a status file, ascending, each
// once: a pool (--workers) lists a line per worker.
func readGenerations(path string) ([]int, error) {
	entries, err := supervisor.ReadStatusFile(path)
	var gens []int
	for _, e := range entries {
		if len(gens) == 0 || gens[len(gens)-1] != e.Generation {
			gens = append(gens, e.Generation)
		}
	}
	return gens, err
}

func describeGenerations(gens []int) string {
	if len(gens) == 0 {
		return "none"
	}
	s := make([]string, len(gens))
	for i, g := range gens {
		s[i] = strconv.Itoa(g)
	}
	return "generations " + strings.Join(s, ",")
}

type deadline time.Time

// deadlineAfter returns a deadline d from now; d == 0 never passes.
func deadlineAfter(d time.Duration) deadline {
	if d <= 0 {
		return deadline{}
	}
	return deadline(time.Now().Add(d))
}

func (d deadline) passed() bool {
	return !time.Time(d).IsZero() && time.Now().After(time.Time(d))
}
