package cli

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"time"

	"github.com/ss-bridge/ss-bridge/service"
	"github.com/ss-bridge/ss-bridge/units"
	"golang.org/x/sys/unix"
)

// upgradeTimeout is how long upgrade waits by default: the preflight alone
// may take 10 s before it is given up.
const upgradeTimeout = 30 * time.Second

// upgradeCommand asks a server to upgrade itself in place (SIGUSR2) and
// waits for the outcome: exit 0 once the new program image serves.
func upgradeCommand(args []string) int {
	o, err := parseWith(append(withOptions("pid-file"), userOption, timeoutOption), args)
	if err != nil {
		return failed(fmt.Errorf("upgrade: %w", err))
	}
	if o.Timeout == 0 {
		o.Timeout = upgradeTimeout
	}
	switch {
	case o.PidFile != "" && len(o.Command) == 0 && !o.User:
		err = upgradeStandalone(o)
	case o.PidFile == "" && len(o.Command) == 1:
		err = upgradeUnit(o)
	default:
		err = errors.New("give --pid-file or one unit name")
	}
	if err != nil {
		return failed(fmt.Errorf("upgrade: %w", err))
	}
	return 0
}

// upgradeStandalone sends USR2 to the server of --pid-file and waits for
// the next result in its result file.
func upgradeStandalone(o *Options) error {
	f, pid, err := runningServer(o.PidFile)
	if err != nil {
		return err
	}
	defer f.Close()
	path := service.ResultFile(o.PidFile)
	before, err := service.ReadResult(path)
	if err != nil {
		return err
	}
	if err := unix.Kill(pid, unix.SIGUSR2); err != nil {
		return fmt.Errorf("send USR2 to the server (pid %d): %w", pid, err)
	}
	// The outcome is renamed into place: noticed at once, where polling
	// would add up to pollEvery to every upgrade.
	changed := watchDir(filepath.Dir(path))
	defer changed.close()
	deadline := deadlineAfter(o.Timeout)
	for {
		r, err := service.ReadResult(path)
		if err == nil && r.Seq > before.Seq {
			if !r.OK {
				return fmt.Errorf("%s; ss-bridge %s (pid %d) carries on", r.Error, r.From, pid)
			}
			if held, _ := service.Locked(f); !held {
				return fmt.Errorf("server (pid %d) exited after the upgrade to %s", pid, r.To)
			}
			fmt.Printf("upgraded ss-bridge from %s to %s (pid %d unchanged)\n", r.From, r.To, pid)
			return nil
		}
		if held, _ := service.Locked(f); !held {
			return fmt.Errorf("server (pid %d) exited during the upgrade", pid)
		}
		if deadline.passed() {
			return fmt.Errorf("no outcome from the server (pid %d) within %s", pid, o.Timeout)
		}
		// Woken by a change, or after pollEvery to see whether the server
		// still runs.
		changed.wait(pollEvery)
	}
}

// dirWatch tells of files created or renamed into a directory (inotify).
type dirWatch struct{ fd int }

// watchDir watches dir; if it cannot, wait only sleeps.
func watchDir(dir string) dirWatch {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return dirWatch{-1}
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return dirWatch{-1}
	}
	return dirWatch{fd}
}

// wait returns at the next change in the directory, or after d.
func (w dirWatch) wait(d time.Duration) {
	if w.fd < 0 {
		time.Sleep(d)
		return
	}
	fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(fds, int(d.Milliseconds())); n > 0 {
		var buf [4096]byte
		for {
			if n, _ := unix.Read(w.fd, buf[:]); n <= 0 {
				break
			}
		}
	}
}

func (w dirWatch) close() {
	if w.fd >= 0 {
		unix.Close(w.fd)
	}
}

// upgradedStatus and upgradeFailedStatus match the STATUS= of an attempt's
// outcome (service.UpgradedStatus, service.UpgradeFailedStatus).
var (
	upgradedStatus      = regexp.MustCompile(`^upgraded from ss-bridge (\S+) to (\S+) \(upgrade #\d+\)(;|$)`)
	upgradeFailedStatus = regexp.MustCompile(`^upgrade #\d+ failed: (.*?)(; generation|$)`)
)

// upgradeUnit sends USR2 to the unit's main process through systemd and
// waits for the outcome of the attempt: from the server's control socket
// when it has one, else from the STATUS= that says how the attempt ended.
func upgradeUnit(o *Options) error {
	unit := unitName(o.Command[0])
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	defer cancel()
	conn, err := connect(ctx, o.User)
	if err != nil {
		return err
	}
	defer conn.Close()
	before, err := conn.Status(ctx, unit)
	if err != nil {
		return err
	}
	if before.ActiveState != "active" && before.ActiveState != "reloading" || before.MainPID == 0 {
		return fmt.Errorf("%s is %s, not running", unit, before.ActiveState)
	}
	// A worker's STATUS= (forwarded) can replace the outcome's before we
	// read it; the control socket keeps the outcome until the next attempt.
	ctl := controlPathOfProcess(before.MainPID)
	var last *service.Result
	if ctl != "" {
		if r, err := service.AskControl(ctl, service.ControlRequest{Command: "status"}, min(o.Timeout, service.ControlTimeout)); err == nil {
			last = r.Upgrade // nil from an ss-bridge too old to report it
		}
	}
	if err := conn.KillMain(ctx, unit, unix.SIGUSR2); err != nil {
		return err
	}
	if last != nil {
		return awaitUpgradeResult(ctx, conn, unit, before.MainPID, ctl, last.Seq, o.Timeout)
	}
	for {
		st, err := conn.Status(ctx, unit)
		if err != nil {
			return err
		}
		if st.MainPID != before.MainPID {
			return fmt.Errorf("%s: main pid %d is now %d (%s)", unit, before.MainPID, st.MainPID, st.ActiveState)
		}
		if st.StatusText != before.StatusText {
			if m := upgradeFailedStatus.FindStringSubmatch(st.StatusText); m != nil {
				return fmt.Errorf("%s (pid %d): %s", unit, st.MainPID, m[1])
			}
			if m := upgradedStatus.FindStringSubmatch(st.StatusText); m != nil && st.ActiveState == "active" {
				fmt.Printf("%s: upgraded ss-bridge from %s to %s (pid %d unchanged)\n", unit, m[1], m[2], st.MainPID)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: no outcome within %s (%s, status %q)", unit, o.Timeout, st.ActiveState, st.StatusText)
		case <-time.After(pollEvery):
		}
	}
}

// awaitUpgradeResult polls the control socket at ctl of the unit's main
// process pid until it reports an attempt after attempt seq, then, for a
// success, until systemd has the unit active again (the new image's
// READY=1). A request that fails is asked again while pid is still the
// unit's: the old image's connections end at the exec, and the socket
// queues new ones until the new image serves it.
func awaitUpgradeResult(ctx context.Context, conn *units.Systemd, unit string, pid int, ctl string, seq int, timeout time.Duration) error {
	var res *service.Result
	var askErr error
	for {
		st, err := conn.Status(ctx, unit)
		if err != nil {
			return err
		}
		if st.MainPID != pid {
			return fmt.Errorf("%s: main pid %d is now %d (%s)", unit, pid, st.MainPID, st.ActiveState)
		}
		if res != nil && st.ActiveState == "active" {
			fmt.Printf("%s: upgraded ss-bridge from %s to %s (pid %d unchanged)\n", unit, res.From, res.To, pid)
			return nil
		}
		if res == nil {
			wait := service.ControlTimeout
			if d, ok := ctx.Deadline(); ok {
				wait = min(wait, time.Until(d))
			}
			r, err := service.AskControl(ctl, service.ControlRequest{Command: "status"}, max(wait, time.Millisecond))
			askErr = err
			if err == nil && r.Upgrade != nil && r.Upgrade.Seq > seq {
				if !r.Upgrade.OK {
					return fmt.Errorf("%s (pid %d): %s", unit, pid, r.Upgrade.Error)
				}
				res = r.Upgrade
				continue
			}
		}
		select {
		case <-ctx.Done():
			why := "the control socket reports none"
			if res != nil {
				why = "upgraded, but the unit is " + st.ActiveState
			} else if askErr != nil {
				why = askErr.Error()
			}
			return fmt.Errorf("%s: no outcome within %s (%s)", unit, timeout, why)
		case <-time.After(pollEvery):
		}
	}
}
