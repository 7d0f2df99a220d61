package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/proc"
	"github.com/ss-bridge/ss-bridge/service"
	"github.com/ss-bridge/ss-bridge/supervisor"
	"github.com/ss-bridge/ss-bridge/units"
	"golang.org/x/sys/unix"
)

// commands are ss-bridge's leading words. start_server has none, and a
// worker named like one still runs after "--".
var commands = map[string]func(args []string) int{
	"unit":    unitCommand,
	"reload":  reloadCommand,
	"status":  statusCommand,
	"stop":    stopCommand,
	"log":     logCommand,
	"upgrade": upgradeCommand,
	"scale":   scaleCommand,
}

// busTimeout bounds connecting to D-Bus and each call that is not a job.
const busTimeout = 10 * time.Second

func failed(err error) int {
	fmt.Fprintf(os.Stderr, "ss-bridge: %v\n", err)
	return 1
}

func flagOption(name string, set func(o *Options)) option {
	return option{name, flag, func(o *Options, _ string) error { set(o); return nil }}
}

var (
	userOption    = flagOption("user", func(o *Options) { o.User = true })
	jsonOption    = flagOption("json", func(o *Options) { o.JSON = true })
	timeoutOption = option{"timeout", seconds, func(o *Options, v string) (err error) { o.Timeout, err = secondsValue(v); return }}
)

// withOptions returns the start_server options whose names are given.
func withOptions(names ...string) []option {
	var out []option
	for _, o := range options {
		for _, n := range names {
			if o.name == n {
				out = append(out, o)
			}
		}
	}
	return out
}

// unitCommand prints, or installs, the units of a service run by ss-bridge
// with the given start_server options.
func unitCommand(args []string) int {
	table := append([]option{
		{"name", text, func(o *Options, v string) error { o.Name = v; return nil }},
		{"binary", text, func(o *Options, v string) error { o.Binary = v; return nil }},
		{"output-dir", text, func(o *Options, v string) error { o.OutputDir = v; return nil }},
		flagOption("socket", func(o *Options) { o.Socket = true }),
		userOption,
		flagOption("install", func(o *Options) { o.Install = true }),
		flagOption("enable", func(o *Options) { o.Enable = true }),
		flagOption("now", func(o *Options) { o.Now = true }),
		flagOption("force", func(o *Options) { o.Force = true }),
		{"systemd-version", integer, func(o *Options, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return errors.New("a version number such as 257 expected")
			}
			o.SystemdVersion = n
			return nil
		}},
	}, options...)
	o, err := parseWith(table, args)
	if err != nil {
		return failed(fmt.Errorf("unit: %w", err))
	}
	switch {
	case o.Daemonize:
		return failed(errors.New("unit: --daemonize cannot be used under systemd, which runs ss-bridge itself"))
	case o.Restart || o.Stop || o.Help || o.Version:
		return failed(errors.New("unit: --restart, --stop and --version are not server options"))
	case (o.Enable || o.Now) && !o.Install:
		return failed(errors.New("unit: --enable and --now need --install"))
	case o.OutputDir != "" && o.Install:
		return failed(errors.New("unit: --output-dir and --install exclude each other"))
	}
	c, err := configure(o)
	if err != nil {
		return failed(fmt.Errorf("unit: %w", err))
	}
	cfg := c.Supervisor
	cfg.Env = append(os.Environ(), c.Env...)
	workDir, err := unitPaths(o, cfg)
	if err != nil {
		return failed(fmt.Errorf("unit: %w", err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if o.SystemdVersion == 0 {
		if o.SystemdVersion, err = systemdVersion(ctx, o.User); err != nil {
			return failed(fmt.Errorf("unit: %w; give --systemd-version", err))
		}
	}
	files, err := units.Render(units.Spec{
		Name: o.Name, Binary: o.Binary, Options: serverArgs(o), Ports: o.Ports, Paths: o.Paths,
		PathMode: pathMode(o), Backlog: o.Backlog, Command: o.Command,
		Socket: o.Socket, User: o.User, SystemdVersion: o.SystemdVersion, WorkingDirectory: workDir,
		KillTimeout: o.KillTimeout,
	})
	if err != nil {
		return failed(fmt.Errorf("unit: %w", err))
	}
	if o.OutputDir != "" {
		if err := writeUnits(o, files); err != nil {
			return failed(fmt.Errorf("unit: %w", err))
		}
		return 0
	}
	if !o.Install {
		for i, f := range files {
			if i > 0 {
				fmt.Println()
			}
			fmt.Printf("# %s\n%s", f.Name, f.Content)
		}
		return 0
	}
	if err := install(ctx, o, files); err != nil {
		return failed(fmt.Errorf("unit: %w", err))
	}
	return 0
}

func pathMode(o *Options) string {
	if o.PathMode == 0 {
		return ""
	}
	return fmt.Sprintf("%04o", o.PathMode)
}

// install writes the files, makes systemd read them, and with --enable and
// --now enables and starts the socket (or else the service).
func install(ctx context.Context, o *Options, files []units.File) error {
	dir, err := units.UnitDir(o.User)
	if err != nil {
		return err
	}
	changed, err := units.Write(dir, files, o.Force)
	if err != nil {
		return err
	}
	for _, name := range changed {
		fmt.Printf("installed %s\n", filepath.Join(dir, name))
	}
	conn, err := connect(ctx, o.User)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.ReloadDaemon(ctx); err != nil {
		return err
	}
	main := files[len(files)-1].Name // the socket when there is one
	if o.Enable {
		if err := conn.Enable(ctx, []string{main}); err != nil {
			return err
		}
		// Enabling adds links that systemd has not read: without another
		// reload, as systemctl enable does, every later systemctl command
		// warns that the unit changed on disk.
		if err := conn.ReloadDaemon(ctx); err != nil {
			return err
		}
		fmt.Printf("enabled %s\n", main)
	}
	if o.Now {
		if err := conn.Start(ctx, main); err != nil {
			return err
		}
		fmt.Printf("started %s\n", main)
	}
	return nil
}

func connect(ctx context.Context, user bool) (*units.Systemd, error) {
	ctx, cancel := context.WithTimeout(ctx, busTimeout)
	defer cancel()
	return units.Connect(ctx, user)
}

// systemdVersion asks the service manager, or else systemctl.
func systemdVersion(ctx context.Context, user bool) (int, error) {
	conn, err := connect(ctx, user)
	if err == nil {
		defer conn.Close()
		vctx, cancel := context.WithTimeout(ctx, busTimeout)
		defer cancel()
		return conn.Version(vctx)
	}
	out, cmdErr := exec.CommandContext(ctx, "systemctl", "--version").Output()
	if cmdErr != nil {
		return 0, fmt.Errorf("cannot find systemd's version (%v; systemctl: %v)", err, cmdErr)
	}
	fields := strings.Fields(string(out))
	if len(fields) < 2 {
		return 0, fmt.Errorf("cannot read systemd's version from %q", out)
	}
	return strconv.Atoi(fields[1])
}

// serverArgs writes the server options back as a command line, in a fixed
// order, for ExecStart=.
func serverArgs(o *Options) []string {
	var args []string
	add := func(name, value string) { args = append(args, "--"+name+"="+value) }
	secs := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }
	for _, p := range o.Ports {
		add("port", p)
	}
	for _, p := range o.Paths {
		add("path", p)
	}
	if o.PathMode != 0 {
		add("path-mode", pathMode(o))
	}
	if o.Backlog != 0 {
		add("backlog", strconv.Itoa(o.Backlog))
	}
	for name, v := range map[string]string{"dir": o.Dir, "signal-on-hup": o.SignalOnHUP, "signal-on-term": o.SignalOnTERM,
		"pid-file": o.PidFile, "status-file": o.StatusFile, "envdir": o.EnvDir, "log-file": o.LogFile} {
		if v != "" {
			add(name, v)
		}
	}
	if o.Interval != time.Second {
		add("interval", secs(o.Interval))
	}
	if o.EnableAutoRestart {
		args = append(args, "--enable-auto-restart")
	}
	if o.AutoRestartInterval != nil {
		add("auto-restart-interval", strconv.FormatFloat(*o.AutoRestartInterval, 'f', -1, 64))
	}
	if o.KillOldDelay != nil {
		add("kill-old-delay", strconv.FormatFloat(*o.KillOldDelay, 'f', -1, 64))
	}
	for name, d := range map[string]time.Duration{"kill-timeout": o.KillTimeout, "max-backoff": o.MaxBackoff,
		"ready-timeout": o.ReadyTimeout, "worker-watchdog": o.WorkerWatchdog} {
		if d != 0 {
			add(name, secs(d))
		}
	}
	if o.ReadyNotify {
		add("ready", "notify")
	}
	if o.ListenFDs {
		args = append(args, "--listen-fds")
	}
	if o.Workers != 0 {
		add("workers", strconv.Itoa(o.Workers))
	}
	if o.Rolling {
		args = append(args, "--rolling")
	}
	if o.MaxSurge != 0 {
		add("max-surge", strconv.Itoa(o.MaxSurge))
	}
	// Map order is random: sort the options after the sockets so that the
	// same options always give the same unit.
	first := len(o.Ports) + len(o.Paths)
	sort.Strings(args[first:])
	return args
}

// unitName adds ".service" to a name without a unit type.
func unitName(name string) string {
	if strings.Contains(name, ".") {
		return name
	}
	return name + ".service"
}

func oneArg(cmd string, o *Options) (string, error) {
	if len(o.Command) != 1 {
		return "", fmt.Errorf("%s: give exactly one unit name", cmd)
	}
	return unitName(o.Command[0]), nil
}

// reloadCommand reloads a unit over D-Bus and says which generation serves.
func reloadCommand(args []string) int {
	o, err := parseWith([]option{userOption, timeoutOption}, args)
	if err != nil {
		return failed(fmt.Errorf("reload: %w", err))
	}
	unit, err := oneArg("reload", o)
	if err != nil {
		return failed(err)
	}
	if o.Timeout == 0 {
		o.Timeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	defer cancel()
	conn, err := connect(ctx, o.User)
	if err != nil {
		return failed(err)
	}
	defer conn.Close()
	serving, err := conn.ReloadServing(ctx, unit)
	if errors.Is(err, units.ErrNotRunning) {
		fmt.Printf("%s is not running; its next start runs the new code\n", unit)
		return 0
	}
	if err != nil {
		return failed(err)
	}
	if serving.PID == 0 { // a pool: its generation has many
		fmt.Printf("%s reloaded: generation %d serving\n", unit, serving.Generation)
		return 0
	}
	fmt.Printf("%s reloaded: generation %d (pid %d) serving\n", unit, serving.Generation, serving.PID)
	return 0
}

// Exit codes of the status command, as LSB init scripts give them.
const (
	lsbRunning    = 0
	lsbDeadPID    = 1
	lsbNotRunning = 3
	lsbUnknown    = 4
)

// report is what the status command says.
type report struct {
	units.Status
	Running     bool         `json:"running"`
	PID         int          `json:"pid,omitempty"`
	PidFile     string       `json:"pid_file,omitempty"`
	Generations []generation `json:"generations"`
	Message     string       `json:"message,omitempty"`
	// Live is the server's own account, through its control socket.
	Live *supervisor.View `json:"live,omitempty"`
}

type generation struct {
	Generation int `json:"generation"`
	PID        int `json:"pid"`
}

// statusCommand says whether a server runs: a systemd unit, or with
// --pid-file a standalone server.
func statusCommand(args []string) int {
	o, err := parseWith(append(withOptions("pid-file", "status-file"), userOption, jsonOption), args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ss-bridge: status: %v\n", err)
		return lsbUnknown
	}
	var r report
	code := lsbUnknown
	if o.PidFile != "" {
		r, code = standaloneStatus(o)
	} else {
		unit, err := oneArg("status", o)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ss-bridge: %v (or --pid-file for a standalone server)\n", err)
			return lsbUnknown
		}
		r, code = unitStatus(o, unit)
	}
	if r.Generations == nil {
		r.Generations = []generation{}
	}
	if o.JSON {
		json.NewEncoder(os.Stdout).Encode(r)
	} else {
		printReport(os.Stdout, r)
	}
	return code
}

func standaloneStatus(o *Options) (report, int) {
	r := report{PidFile: o.PidFile}
	f, pid, err := runningServer(o.PidFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
		r.Message = "not running (no pid file)"
		return r, lsbNotRunning
	case err != nil:
		if pid, perr := service.ReadPid(o.PidFile); perr == nil {
			r.PID = pid
			r.Message = fmt.Sprintf("not running (stale pid file %s, pid %d)", o.PidFile, pid)
			return r, lsbDeadPID
		}
		r.Message = err.Error()
		return r, lsbUnknown
	}
	f.Close()
	r.Running, r.PID = true, pid
	r.Message = fmt.Sprintf("running (pid %d)", pid)
	if askLive(&r, service.ControlPath(o.PidFile, "")) {
		return r, lsbRunning
	}
	if o.StatusFile != "" {
		r.Generations = statusFileGenerations(o.StatusFile)
	} else {
		r.Generations = workerGenerations(pid)
	}
	return r, lsbRunning
}

// statusFileGenerations returns the generations a status file lists; none
// when it cannot be read.
func statusFileGenerations(path string) []generation {
	entries, _ := supervisor.ReadStatusFile(path)
	gens := make([]generation, len(entries))
	for i, e := range entries {
		gens[i] = generation{e.Generation, e.PID}
	}
	return gens
}

// workerGenerations finds the children of pid that are workers, with their
// SERVER_STARTER_GENERATION.
func workerGenerations(pid int) []generation {
	var gens []generation
	for _, child := range proc.Children(pid) {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", child.PID))
		if err != nil {
			continue
		}
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, "SERVER_STARTER_GENERATION="); ok {
				if g, err := strconv.Atoi(v); err == nil {
					gens = append(gens, generation{g, child.PID})
				}
			}
		}
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i].Generation < gens[j].Generation })
	return gens
}

func unitStatus(o *Options, unit string) (report, int) {
	ctx, cancel := context.WithTimeout(context.Background(), busTimeout)
	defer cancel()
	r := report{Status: units.Status{Unit: unit}}
	conn, err := connect(ctx, o.User)
	if err != nil {
		r.Message = err.Error()
		return r, lsbUnknown
	}
	defer conn.Close()
	st, err := conn.Status(ctx, unit)
	if err != nil {
		r.Message = err.Error()
		return r, lsbUnknown
	}
	r.Status = st
	r.PID = st.MainPID
	r.Running = st.ActiveState == "active" || st.ActiveState == "reloading"
	if st.MainPID > 0 && !askLive(&r, controlPathOfProcess(st.MainPID)) {
		r.Generations = workerGenerations(st.MainPID)
	}
	if !r.Running {
		return r, lsbNotRunning
	}
	return r, lsbRunning
}

func printReport(w io.Writer, r report) {
	if r.Unit != "" && r.ActiveState == "" {
		fmt.Fprintf(w, "%s:", r.Unit)
		if r.Message == "" {
			fmt.Fprintln(w)
		} else {
			fmt.Fprint(w, " ")
		}
	} else if r.Unit != "" {
		fmt.Fprintf(w, "%s: %s (%s)", r.Unit, r.ActiveState, r.SubState)
		if !r.Since.IsZero() && r.Running {
			fmt.Fprintf(w, " since %s (up %s)", r.Since.Format(time.RFC3339), time.Since(r.Since).Round(time.Second))
		}
		fmt.Fprintln(w)
		if r.PID > 0 {
			fmt.Fprintf(w, "main pid: %d\n", r.PID)
		}
		if r.StatusText != "" {
			fmt.Fprintf(w, "status: %s\n", r.StatusText)
		}
	}
	if r.Message != "" {
		fmt.Fprintln(w, r.Message)
	}
	if v := r.Live; v != nil {
		printLive(w, v)
		return
	}
	for _, g := range r.Generations {
		fmt.Fprintf(w, "generation %d: pid %d\n", g.Generation, g.PID)
	}
}

// stopCommand is --stop with --timeout, and --force to SIGKILL the server
// and its workers when the timeout passes.
func stopCommand(args []string) int {
	o, err := parseWith(append(withOptions("pid-file", "status-file"), timeoutOption,
		flagOption("force", func(o *Options) { o.Force = true })), args)
	if err != nil {
		return failed(fmt.Errorf("stop: %w", err))
	}
	if o.PidFile == "" {
		return failed(errors.New("stop: give --pid-file"))
	}
	if o.Force && o.Timeout == 0 {
		return failed(errors.New("stop: --force needs --timeout"))
	}
	err = stopServer(o, os.Stderr)
	var late *notStoppedError
	if errors.As(err, &late) && o.Force {
		killServer(late.pid, o.StatusFile)
		fmt.Fprintf(os.Stderr, "server (pid %d) did not exit within %s; killed it and its workers\n", late.pid, o.Timeout)
		removeStaleFiles(late.pid, o.PidFile, o.StatusFile)
		return 0
	}
	if err != nil {
		return failed(err)
	}
	return 0
}

// killServer SIGKILLs the server's workers (its children, and the status
// file's pids that are still its children) and then the server.
func killServer(pid int, statusFile string) {
	for _, g := range workerGenerations(pid) {
		unix.Kill(g.PID, unix.SIGKILL)
	}
	for _, g := range statusFileGenerations(statusFile) {
		if proc.Parent(g.PID) == pid {
			unix.Kill(g.PID, unix.SIGKILL)
		}
	}
	unix.Kill(pid, unix.SIGKILL)
}

// removeStaleFiles removes the pid and status files that a killed server
// could not, once it is dead and the pid file is still its and unlocked.
func removeStaleFiles(pid int, pidFile, statusFile string) {
	f, err := os.Open(pidFile)
	if err != nil {
		return
	}
	defer f.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(pollEvery) {
		if held, err := service.Locked(f); err == nil && !held {
			break
		}
		if time.Now().After(deadline) {
			return
		}
	}
	if p, err := service.ReadPid(pidFile); err != nil || p != pid {
		return // a new server's
	}
	if st, err := os.Lstat(pidFile); err != nil || !sameFile(f, st) {
		return
	}
	if statusFile != "" {
		os.Remove(statusFile)
	}
	// The files a server keeps beside its pid file go with it.
	os.Remove(service.ControlPath(pidFile, ""))
	os.Remove(service.ResultFile(pidFile))
	os.Remove(pidFile)
}

func sameFile(f *os.File, st os.FileInfo) bool {
	fst, err := f.Stat()
	return err == nil && os.SameFile(fst, st)
}

// logCommand prints the log file, and with --follow what is appended later,
// across rotation.
func logCommand(args []string) int {
	o, err := parseWith(append(withOptions("log-file"), flagOption("follow", func(o *Options) { o.Follow = true })), args)
	if err != nil {
		return failed(fmt.Errorf("log: %w", err))
	}
	if o.LogFile == "" {
		return failed(errors.New("log: give --log-file"))
	}
	if strings.HasPrefix(strings.TrimSpace(o.LogFile), "|") {
		return failed(fmt.Errorf("log: %s is a pipe to a command; its output is where that command puts it", o.LogFile))
	}
	if err := followLog(o.LogFile, o.Follow, os.Stdout); err != nil {
		return failed(fmt.Errorf("log: %w", err))
	}
	return 0
}

func followLog(path string, follow bool, w io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { f.Close() }()
	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
		// A rotated log is a new file at the path: read the new one from
		// its start, once the old one has been read to its end.
		st, err := os.Stat(path)
		if err != nil {
			continue
		}
		if cur, err := f.Stat(); err == nil && !os.SameFile(st, cur) {
			if _, err := io.Copy(w, f); err != nil {
				return err
			}
			nf, err := os.Open(path)
			if err != nil {
				continue
			}
			f.Close()
			f = nf
		} else if pos, err := f.Seek(0, io.SeekCurrent); err == nil && st.Size() < pos {
			f.Seek(0, io.SeekStart) // truncated
		}
	}
}
