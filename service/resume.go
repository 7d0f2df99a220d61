package service

import (
	"fmt"
	"os"
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
	f := os.NewFile(uintptr(fd), "ss-bridge-state")
	st, err := DecodeState(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("resume after an upgrade: %w", err)
	}
	if e := st.ExeFD; e != nil {
		// Only if it is still the program's file: a wrapper script may
		// have closed it, and the number now be one of our runtime's.
		var fst unix.Stat_t
		if unix.Fstat(e.FD, &fst) == nil && uint64(fst.Dev) == e.File.Dev && fst.Ino == e.File.Ino && !slices.Contains(st.FDs(), e.FD) {
			unix.Close(e.FD)
		}
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
	defer activation.CloseAll(socks)
	if log != nil {
		defer log.finish(false)
	}
	if pid != nil {
		defer pid.release()
	}

	srv := &server{c: c, signals: signals, sd: sd, pid: pid, log: log, socks: socks, exe: st.Exe}
	srv.up.seq = st.Upgrade.Seq + 1
	restore := func(cfg supervisor.Config) (*supervisor.Supervisor, error) {
		sup, err := supervisor.Restore(cfg, st.Supervisor)
		if err != nil {
			return nil, fmt.Errorf("resume after an upgrade: %w", err)
		}
		// The supervisor holds duplicates of the notify sockets.
		for _, fd := range st.Supervisor.FDs() {
			unix.Close(fd)
		}
		srv.sup = sup
		srv.resumed(st)
		return sup, nil
	}
	return srv.run(cfg, restore)
}

// resumed reports the upgrade that started this image and acts on the
// signals the old image had not.
func (srv *server) resumed(st State) {
	from, to := st.Writer.Version, srv.c.Version
	fmt.Fprintf(os.Stderr, "upgraded from %s to %s (pid %d unchanged)\n", from, to, os.Getpid())
	if sd := srv.sd; sd.active() && sd.q != nil {
		sd.q.Status(sd.withSummary(UpgradedStatus(srv.up.seq, from, to)))
		if sd.upgrading {
			sd.upgrading = false
			sd.q.State("READY=1")
		}
		sd.q.Watchdog()
	}
	srv.writeResult(Result{Seq: srv.up.seq, OK: true, From: from, To: to, PID: os.Getpid()})
	redeliver(st.Pending, false)
}
