package service

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/activation"
	"github.com/ss-bridge/ss-bridge/internal/ratelog"
	"github.com/ss-bridge/ss-bridge/notify"
	"github.com/ss-bridge/ss-bridge/supervisor"
)

// systemdVars are set by systemd for ss-bridge, not for its workers: a
// worker that inherits NOTIFY_SOCKET can leave the unit stuck in
// "reloading", and LISTEN_PID names the wrong process.
var systemdVars = []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID",
	"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE"}

// storePrefix starts the FDNAME of every socket ss-bridge puts in systemd's
// fd store, so that sockets it stored can be told from a socket unit's.
const storePrefix = "ssb-"

// systemd is what ss-bridge was given by systemd, if it runs under it.
type systemd struct {
	manager   *notify.Manager // no-op without NOTIFY_SOCKET
	inherited []activation.Inherited
	fdStore   bool // FileDescriptorStoreMax= > 0 and NOTIFY_SOCKET set

	// What the observer has told systemd, which a self-upgrade carries over:
	// READY=1 was sent; a RELOADING=1 waits for its READY=1.
	readySent, reloading bool
	// upgrading: a self-upgrade sent RELOADING=1, which the new image ends.
	upgrading bool
	// summary is the last account of the generations, for STATUS=.
	summary string
	// failure says why the last start or reload failed, before every
	// STATUS= until the next reload, start or stop: the exits of the
	// workers a failed restart stopped must not wipe it out within
	// milliseconds, while an operator or ss-bridge reload reads it.
	failure string
	// q sends to systemd for the supervisor's loop.
	q *notify.Queue
}

// takeSystemd reads what systemd passed and removes it from our environment,
// so that neither the workers nor a log command inherit it.
func takeSystemd() (*systemd, error) {
	m, err := notify.FromEnv()
	if err != nil {
		return nil, err
	}
	inherited, err := activation.Inherit()
	if err != nil {
		return nil, err
	}
	store, _ := strconv.Atoi(os.Getenv("FDSTORE"))
	sd := &systemd{manager: m, inherited: inherited, fdStore: store > 0 && os.Getenv("NOTIFY_SOCKET") != ""}
	for _, v := range systemdVars {
		os.Unsetenv(v)
	}
	return sd, nil
}

func (sd *systemd) active() bool { return sd.manager.Active() }

// inheritedSockets returns the inherited sockets to offer to the requested
// specs. Sockets ss-bridge stored in the fd store that no spec asks for any
// more are removed from the store and closed; a socket unit's are kept and
// passed on.
func (sd *systemd) inheritedSockets(specs []activation.Spec) []activation.Socket {
	socks := make([]activation.Socket, 0, len(sd.inherited))
	for _, in := range sd.inherited {
		if strings.HasPrefix(in.Name, storePrefix) && !activation.Requested(in.Socket, specs) {
			// Stored as StoreFDs(storePrefix+key), which encoded the name.
			key, err := notify.DecodeFDName(in.Name)
			if err == nil {
				err = sd.manager.RemoveFDs(key)
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "failed to remove %s from the fd store: %v\n", in.Key, err)
			}
			in.Close()
			continue
		}
		socks = append(socks, in.Socket)
	}
	return socks
}

// store puts the sockets ss-bridge bound itself into systemd's fd store, so
// that they outlive a restart of ss-bridge and clients queue meanwhile.
func (sd *systemd) store(socks []activation.Socket) {
	if !sd.fdStore {
		return
	}
	for _, s := range socks {
		if s.Inherited {
			continue
		}
		if err := sd.manager.StoreFDs(storePrefix+s.Key, s.FD); err != nil {
			fmt.Fprintf(os.Stderr, "failed to store %s in the fd store: %v\n", s.Key, err)
		}
	}
}

// notifyFlushTimeout bounds how long ss-bridge waits, when it exits, for
// systemd to take the notifications still queued (STOPPING=1, the status).
const notifyFlushTimeout = time.Second

// queue returns the Queue through which the supervisor's loop notifies
// systemd: the loop must never wait for systemd (see notify.Queue). Failed
// notifications are logged, a flood of them as a line and a count.
func (sd *systemd) queue() *notify.Queue {
	failed := &ratelog.Limiter{What: "notifications failed", Write: func(line string) {
		fmt.Fprintf(os.Stderr, "sd_notify: %s\n", line)
	}}
	return sd.manager.Queue(func(err error) { failed.Log(err.Error()) })
}

// observer reports the supervisor's events to systemd through sd.q: READY=1
// when the first generation serves; RELOADING=1 on a restart and READY=1
// when it is done, or has failed while the old generation keeps serving;
// STOPPING=1; WATCHDOG=1 on every heartbeat; STATUS= with every change.
//
// Each state change goes in a datagram of its own, after the status that
// describes it: a status too long for one datagram with READY=1 would make
// systemd drop the READY=1, and the status is in place when systemctl
// start or reload returns.
func (sd *systemd) observer(startWait time.Duration) func(supervisor.Event) {
	report := func(err error) {
		if err != nil {
			fmt.Fprintf(os.Stderr, "sd_notify: %v\n", err)
		}
	}
	return func(e supervisor.Event) {
		q := sd.q // replaced when a failed upgrade had closed it
		sd.summary = e.Summary
		switch e.Kind {
		case supervisor.Reloading, supervisor.Started, supervisor.Stopping:
			sd.failure = ""
		}
		status := e.Summary
		if sd.failure != "" {
			status = sd.failure + "; " + e.Summary
		}
		switch e.Kind {
		case supervisor.Spawned:
			report(q.Status(status))
			if !sd.readySent || sd.reloading {
				// A slow worker must not make systemd time out the start or
				// the reload while it is still coming up.
				report(q.ExtendTimeout(startWait + 5*time.Second))
			}
		case supervisor.Started:
			report(q.Status(status))
			if !sd.readySent {
				sd.readySent = true
				report(q.State("READY=1"))
			}
		case supervisor.Reloading:
			sd.reloading = true
			report(q.Status(status))
			report(q.State("RELOADING=1"))
		case supervisor.Reloaded:
			sd.reloading = false
			report(q.Status(status))
			report(q.State("READY=1"))
		case supervisor.StartFailed:
			if sd.reloading && sd.readySent {
				// The reload is over: the old generation keeps serving and
				// the new one is retried. systemctl reload must not hang.
				sd.reloading = false
				sd.failure = "reload failed: " + errText(e)
				report(q.Status(sd.failure + "; " + e.Summary))
				report(q.State("READY=1"))
				return
			}
			sd.failure = "start failed: " + errText(e)
			report(q.Status(sd.failure + "; " + e.Summary))
		case supervisor.Stopping:
			report(q.Status(status))
			report(q.State("STOPPING=1"))
		case supervisor.Heartbeat:
			report(q.Watchdog())
		default:
			report(q.Status(status))
		}
	}
}

// withSummary is text followed by the last account of the generations, in
// which ss-bridge reload and status find the serving one.
func (sd *systemd) withSummary(text string) string {
	if sd.summary == "" {
		return text
	}
	return text + "; " + sd.summary
}

func errText(e supervisor.Event) string {
	if e.Err != nil {
		return e.Err.Error()
	}
	return fmt.Sprintf("worker %d exited with status %d", e.PID, e.Status)
}

// listenFDsShimEnv marks the re-execution of ss-bridge between fork and the
// worker's exec in --listen-fds mode: only then is the worker's pid known,
// which LISTEN_PID must hold.
const listenFDsShimEnv = "SS_BRIDGE_LISTEN_FDS_SHIM"

// listenFDsCommand wraps the worker command in the shim, and gives the
// worker its sockets from descriptor 3 on, as systemd would.
func listenFDsCommand(cfg *supervisor.Config, socks []activation.Socket) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--listen-fds: find our own executable: %w", err)
	}
	files := []uintptr{0, 1, 2}
	names := make([]string, len(socks))
	for i, s := range socks {
		files = append(files, uintptr(s.FD))
		names[i] = notify.EncodeFDName(s.Key)
	}
	cfg.Files = files
	entries := make([]string, len(socks))
	for i, s := range socks {
		entries[i] = s.Key + "=" + strconv.Itoa(3+i)
	}
	cfg.PortEnv = strings.Join(entries, ";")
	cfg.Command = append([]string{exe}, cfg.Command...)
	cfg.Env = append(cfg.Env,
		listenFDsShimEnv+"=1",
		"LISTEN_FDS="+strconv.Itoa(len(socks)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"))
	return nil
}

// InListenFDsShim reports whether this process is the --listen-fds shim,
// which ListenFDsShim must run in place of anything else.
func InListenFDsShim() bool { return os.Getenv(listenFDsShimEnv) == "1" }

// ListenFDsShim runs in the worker's process: it sets LISTEN_PID to this pid,
// which the worker keeps across exec, and executes the worker, args[1:]. It
// returns only on failure, with the exit status.
func ListenFDsShim(args []string) int {
	os.Unsetenv(listenFDsShimEnv)
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "ss-bridge: --listen-fds shim: no command")
		return 127
	}
	// The Go runtime of this shim has replaced the SIG_IGN of SIGPIPE that
	// the bridge passed on by its handler, which exec resets to the default.
	signal.Ignore(syscall.SIGPIPE)
	path, err := exec.LookPath(args[1])
	if err == nil {
		err = syscall.Exec(path, args[1:], os.Environ())
	}
	fmt.Fprintf(os.Stderr, "ss-bridge: failed to exec %s: %v\n", args[1], err)
	return 127
}
