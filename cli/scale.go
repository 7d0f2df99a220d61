package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ss-bridge/ss-bridge/service"
	"github.com/ss-bridge/ss-bridge/supervisor"
)

// scaleCommand sets a pool's number of workers through the server's control
// socket and waits until that many serve.
//
// Under systemd too it goes through the control socket rather than sending
// TTIN or TTOU with KillUnit: one request sets an exact count (signals would
// be a difference computed from a count another scaler may be changing),
// and a server without --workers says so, where it would ignore a TTIN.
func scaleCommand(args []string) int {
	o, err := parseWith(append(withOptions("pid-file"), userOption, timeoutOption), args)
	if err != nil {
		return failed(fmt.Errorf("scale: %w", err))
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	var target, countArg string
	switch {
	case o.PidFile != "" && len(o.Command) == 1:
		countArg = o.Command[0]
	case o.PidFile == "" && len(o.Command) == 2:
		target, countArg = o.Command[0], o.Command[1]
	default:
		return failed(errors.New("scale: give --pid-file=FILE N, or UNIT N"))
	}
	n, err := strconv.Atoi(countArg)
	if err != nil || n < 1 || n > supervisor.MaxWorkers {
		return failed(fmt.Errorf("scale: %q is not a number of workers from 1 to %d", countArg, supervisor.MaxWorkers))
	}
	path, err := controlSocketOf(o, target)
	if err != nil {
		return failed(fmt.Errorf("scale: %w", err))
	}
	if err := scale(path, n, o.Timeout); err != nil {
		return failed(fmt.Errorf("scale: %w", err))
	}
	if n == 1 {
		fmt.Println("1 worker serving")
	} else {
		fmt.Printf("%d workers serving\n", n)
	}
	return 0
}

// scale asks for n workers and returns once n serve in n slots.
func scale(path string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if _, err := service.AskControl(path, service.ControlRequest{Command: "scale", Workers: n}, min(timeout, service.ControlTimeout)); err != nil {
		return err
	}
	for {
		r, err := service.AskControl(path, service.ControlRequest{Command: "status"}, service.ControlTimeout)
		if err != nil {
			return err
		}
		v := r.View
		if v.Workers == n && v.Serving == n {
			return nil
		}
		if v.Workers != n {
			return fmt.Errorf("the pool was set to %d workers meanwhile", v.Workers)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s: %d of %d workers serving (%s)", timeout, v.Serving, n, v.Summary)
		}
		time.Sleep(pollEvery)
	}
}

// controlSocketOf finds the control socket of the server with --pid-file,
// or of the unit's main process: beside the pid file it was started with,
// or in its $RUNTIME_DIRECTORY (see service.ControlPath).
func controlSocketOf(o *Options, unit string) (string, error) {
	if o.PidFile != "" {
		f, _, err := runningServer(o.PidFile)
		if err != nil {
			return "", err
		}
		f.Close()
		return service.ControlPath(o.PidFile, ""), nil
	}
	unit = unitName(unit)
	ctx, cancel := context.WithTimeout(context.Background(), busTimeout)
	defer cancel()
	conn, err := connect(ctx, o.User)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	st, err := conn.Status(ctx, unit)
	if err != nil {
		return "", err
	}
	if st.MainPID <= 0 {
		return "", fmt.Errorf("%s is not running", unit)
	}
	path := controlPathOfProcess(st.MainPID)
	if path == "" {
		return "", fmt.Errorf("%s (pid %d) has no control socket: it needs --pid-file or RuntimeDirectory=", unit, st.MainPID)
	}
	return path, nil
}

// controlPathOfProcess is where ss-bridge running as pid has its control
// socket, from the pid file on its command line (as `ss-bridge unit` writes
// it: --pid-file=FILE) or the RUNTIME_DIRECTORY it was started with.
func controlPathOfProcess(pid int) string {
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	pidFile := ""
	// The server's own parser: --pid F, -pid-file=F and the other forms
	// Getopt::Long accepts name the same file.
	if len(args) > 1 {
		if o, err := Parse(args[1:]); err == nil {
			pidFile = o.PidFile
		}
	}
	runtimeDir := ""
	environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	for _, kv := range strings.Split(string(environ), "\x00") {
		if v, ok := strings.CutPrefix(kv, "RUNTIME_DIRECTORY="); ok {
			runtimeDir = v
		}
	}
	return service.ControlPath(pidFile, runtimeDir)
}

// askLive fills r with the server's live state from its control socket at
// path, and reports whether it could; a server without one (an older
// ss-bridge, no pid file) is described from its files instead.
func askLive(r *report, path string) bool {
	if path == "" {
		return false
	}
	if _, err := os.Lstat(path); err != nil {
		return false
	}
	reply, err := service.AskControl(path, service.ControlRequest{Command: "status"}, service.ControlTimeout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ss-bridge: status: %v; reading the files instead\n", err)
		return false
	}
	r.Live = reply.View
	r.Generations = []generation{}
	for _, p := range reply.View.Processes {
		r.Generations = append(r.Generations, generation{p.Generation, p.PID})
	}
	return true
}

func printLive(w io.Writer, v *supervisor.View) {
	fmt.Fprintf(w, "summary: %s\n", v.Summary)
	if v.Workers > 0 {
		mode := "whole generation"
		if v.Rolling {
			mode = "rolling"
		}
		fmt.Fprintf(w, "workers: %d/%d serving (%s restarts)\n", v.Serving, v.Workers, mode)
	}
	fmt.Fprintf(w, "restarts: %d\n", v.Restarts)
	if r := v.LastReload; r != nil {
		fmt.Fprintf(w, "last reload: %s, started %s", r.Outcome, r.Started.Format(time.RFC3339))
		if !r.Ended.IsZero() {
			fmt.Fprintf(w, ", took %s", r.Ended.Sub(r.Started).Round(time.Millisecond))
		}
		if r.Error != "" {
			fmt.Fprintf(w, ": %s", r.Error)
		}
		fmt.Fprintln(w)
	}
	// "generation G: pid P" alone on its line, as without a control socket,
	// for whoever reads those lines; the details follow, indented.
	for _, p := range v.Processes {
		fmt.Fprintf(w, "generation %d: pid %d\n ", p.Generation, p.PID)
		if p.Slot >= 0 {
			fmt.Fprintf(w, " slot %d,", p.Slot)
		}
		fmt.Fprintf(w, " %s since %s", p.State, p.Started.Format(time.RFC3339))
		if p.Restarts > 0 {
			fmt.Fprintf(w, ", %d restarts", p.Restarts)
		}
		if p.Status != "" {
			fmt.Fprintf(w, ": %s", p.Status)
		}
		fmt.Fprintln(w)
	}
}
