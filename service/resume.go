package service

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/ss-bridge/ss-bridge/activation"
	"github.com/ss-bridge/ss-bridge/notify"
	"github.com/ss-bridge/ss-bridge/supervisor"
	"golang.org/x/sys/unix"
)

// resume is Run in the image a self-upgrade has just executed: it takes
// over, from the State at descriptor fd, the server the old image ran in
// this process, and runs it on. The workers, sockets, pid file and log were
// never closed: nothing is bound, locked or started again.
func resume(c Config, signals supervisor.Signals, fd int) error {
	if fd < 0 {
		return fmt.Errorf("resume after an upgrade: bad %s", resumeFDEnv)
	}
	// What the old image passed is ours; no worker may inherit it, and
	// anything else leaked to us is not the workers' either.
	closeOnExecAbove(2)
	// Set by the image that rolled back to us: we are the old program again.
	rolledBack, isRollback := os.LookupEnv(rollbackEnv)
	os.Unsetenv(rollbackEnv)
	f := os.NewFile(uintptr(fd), "ss-bridge-state")
	st, err := DecodeState(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("resume after an upgrade: %w", err)
	}
	// Open until the resume is final: a rollback hands the same state on.
	defer runtime.KeepAlive(f)
	closeIfStill(st.ExeFD, st)
	if isRollback {
		closeIfStill(st.Rollback, st)
	}

	sd := &systemd{
		manager:   notify.NewManager(st.Systemd.NotifySocket, time.Duration(st.Systemd.WatchdogUSec)*time.Microsecond),
		fdStore:   st.Systemd.FDStore,
		readySent: st.Systemd.ReadySent,
		reloading: st.Systemd.Reloading,
		upgrading: st.Systemd.Upgrading,
		summary:   st.Systemd.Summary,
	}
	cfg := c.Supervisor
	cfg.Env = append(os.Environ(), c.Env...)

	var pid *pidFile
	if p := st.PidFile; p != nil {
		pid = adoptPidFile(p.Path, p.FD)
		// Last, as in Run.
		defer pid.release()
	}
	var log *logSink
	if st.Log != nil {
		log = adoptLog(st.Log)
		log.watch()
	}
	socks := make([]activation.Socket, len(st.Sockets))
	for i, s := range st.Sockets {
		socks[i] = activation.Socket{Spec: s.Spec, FD: s.FD, Inherited: s.Inherited}
		if s.OwnedFile != nil {
			socks[i].AdoptFile(*s.OwnedFile)
		}
	}
	// As in Run: the sockets (and their files) go before the wait for the
	// log command.
	if log != nil {
		defer log.finish(false)
	}
	defer activation.CloseAll(socks)

	var ctl *control
	if st.Control != nil {
		ctl = adoptControl(st.Control)
		defer ctl.close()
	}

	srv := &server{c: c, signals: signals, sd: sd, pid: pid, log: log, socks: socks, exe: st.Exe, ctl: ctl}
	srv.up.seq = st.Upgrade.Seq + 1
	if p := st.Upgrade.Preflight; p > 0 {
		srv.up.killed = map[int]bool{p: true}
	}
	restore := func(cfg supervisor.Config) (*supervisor.Supervisor, error) {
		sup, err := supervisor.Restore(cfg, st.Supervisor)
		if err == nil && failResume != "" {
			sup, err = nil, errors.New(failResume)
		}
		if err != nil {
			err = fmt.Errorf("resume after an upgrade: %w", err)
			if !isRollback {
				err = srv.rollBack(st, fd, err)
			}
			return nil, err
		}
		closeIfStill(st.Rollback, st)
		f.Close()
		// The supervisor holds duplicates of the notify sockets.
		for _, fd := range st.Supervisor.FDs() {
			unix.Close(fd)
		}
		srv.sup = sup
		srv.resumed(st, rolledBack, isRollback)
		return sup, nil
	}
	return srv.run(cfg, restore)
}

// failResume, set at link time (-ldflags -X), makes every resume fail with
// it as the reason, after the state was read: for the tests of the rollback.
var failResume string

const rollbackEnv = "SS_BRIDGE_ROLLED_BACK"

// closeIfStill closes the descriptor e names if it is still open on its
// file: a wrapper script may have closed it, and the number now be one of
// our runtime's.
func closeIfStill(e *ExeFDState, st State) {
	if e == nil || slices.Contains(st.FDs(), e.FD) {
		return
	}
	if id, err := activation.FileIDOf(e.FD); err == nil && id == e.File {
		unix.Close(e.FD)
	}
}

// rollBack executes, in place of this image that cannot resume, the old
// image's program, which the old image passed open, with the same state: it
// resumes as the old image was, and reports the failed upgrade. It returns
// only when that is impossible, with cause and why; the server then exits,
// and the workers get their Pdeathsig.
func (srv *server) rollBack(st State, memfd int, cause error) error {
	rb := st.Rollback
	if rb == nil {
		return cause
	}
	if id, err := activation.FileIDOf(rb.FD); err != nil || id != rb.File {
		return fmt.Errorf("%w; cannot roll back: the old program is not open", cause)
	}
	fmt.Fprintf(os.Stderr, "%v; rolling back to the old program\n", cause)
	if _, err := unix.Seek(memfd, 0, io.SeekStart); err != nil {
		return fmt.Errorf("%w; cannot roll back: %v", cause, err)
	}
	blockUpgradeSignals()
	rearmHUP := srv.signals.IgnoreReload()
	defer rearmHUP()
	defer unblockUpgradeSignals()
	err := execWithState(fmt.Sprintf("/proc/self/fd/%d", rb.FD), memfd, append(st.FDs(), rb.FD), true, rollbackEnv+"="+cause.Error())
	return fmt.Errorf("%w; roll back: exec: %v", cause, err)
}

// resumed reports the upgrade that started this image, or the rollback to
// it, and acts on the signals the old image had not.
func (srv *server) resumed(st State, rolledBack string, isRollback bool) {
	from, to := st.Writer.Version, srv.c.Version
	sd := srv.sd
	if isRollback {
		why := "after the exec: " + rolledBack + "; rolled back to " + to
		fmt.Fprintf(os.Stderr, "upgrade failed %s (pid %d unchanged)\n", why, os.Getpid())
		if sd.active() && sd.q != nil {
			sd.q.Status(sd.withSummary(UpgradeFailedStatus(srv.up.seq, why)))
		}
		srv.writeResult(Result{Seq: srv.up.seq, OK: false, From: from, PID: os.Getpid(), Error: why})
	} else {
		fmt.Fprintf(os.Stderr, "upgraded from %s to %s (pid %d unchanged)\n", from, to, os.Getpid())
		if sd.active() && sd.q != nil {
			sd.q.Status(sd.withSummary(UpgradedStatus(srv.up.seq, from, to)))
		}
		srv.writeResult(Result{Seq: srv.up.seq, OK: true, From: from, To: to, PID: os.Getpid()})
	}
	if sd.active() && sd.q != nil {
		if sd.upgrading {
			sd.upgrading = false
			sd.q.State("READY=1")
		}
		sd.q.Watchdog()
	}
	redeliver(st.Pending, false)
}
