package service

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/activation"
	"github.com/ss-bridge/ss-bridge/supervisor"
	"golang.org/x/sys/unix"
)

// A self-upgrade (SIGUSR2) replaces the server's program image with the file
// it was started from, in the same process: the pid, the workers, the
// sockets, the pid-file lock and the generation counter carry on. It runs on
// the supervisor's loop, in steps, while the loop goes on serving:
//
//  1. open the candidate and run it as a preflight child, which reads the
//     State on its stdin and answers "ok VERSION" if it can resume from it;
//  2. on "ok" (not waiting for the candidate's exit, which the new image
//     reaps): tell systemd RELOADING=1, take the final State, write it to a
//     sealed memfd, clear close-on-exec on exactly the descriptors it names,
//     and execve the candidate, whose Run resumes (see resume);
//  3. on any failure the old image carries on untouched, and says why.
//
// The outcome of each attempt goes to the log, to systemd's STATUS=, and to
// the result file beside the pid file, which `ss-bridge upgrade` waits for.
const (
	resumeFDEnv      = "SS_BRIDGE_RESUME_FD"
	preflightEnv     = "SS_BRIDGE_PREFLIGHT"
	preflightTimeout = 10 * time.Second
	// servingGCPercent is GOGC while serving (see run); USR2 raises it to
	// upgradeGCPercent (a heap goal of 4 MB at least) until the exec or the
	// attempt's end: the upgrade's few hundred KB of garbage would otherwise
	// start a collection, whose stop-the-world waits for the vfork of the
	// preflight and whose marking competes with it, for milliseconds each.
	servingGCPercent = 20
	upgradeGCPercent = 100
)

// upgradeSignals are blocked on the execing thread across the exec, so that
// one arriving then stays pending for the new image rather than being taken
// by a thread that the exec ends.
var upgradeSignals = func() unix.Sigset_t {
	var set unix.Sigset_t
	for _, sig := range []syscall.Signal{syscall.SIGUSR2, syscall.SIGALRM} {
		set.Val[(sig-1)/64] |= 1 << ((uint(sig) - 1) % 64)
	}
	return set
}()

func blockUpgradeSignals() {
	set := upgradeSignals
	unix.PthreadSigmask(unix.SIG_BLOCK, &set, nil)
}

func unblockUpgradeSignals() {
	set := upgradeSignals
	unix.PthreadSigmask(unix.SIG_UNBLOCK, &set, nil)
}

// executable is the absolute path of our program.
func executable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find our own executable: %w", err)
	}
	if !filepath.IsAbs(exe) {
		return "", fmt.Errorf("our own executable %s is not an absolute path", exe)
	}
	return exe, nil
}

// resumeFD returns the descriptor of the State an earlier image of this
// process left us, if this image is the result of a self-upgrade.
func resumeFD() (int, bool) {
	v, ok := os.LookupEnv(resumeFDEnv)
	if !ok {
		return 0, false
	}
	os.Unsetenv(resumeFDEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return -1, true
	}
	return fd, true
}

// ResultFile is where the server that holds the pid file pidFile writes
// the outcome of each upgrade attempt (see Result).
func ResultFile(pidFile string) string { return pidFile + ".upgrade" }

// Result is the outcome of an upgrade attempt, written atomically to the
// ResultFile after each one and removed when the server exits.
type Result struct {
	// Seq counts the attempts of the server, from 1.
	Seq   int    `json:"seq"`
	OK    bool   `json:"ok"`
	From  string `json:"from"`
	To    string `json:"to,omitempty"`
	PID   int    `json:"pid"`
	Error string `json:"error,omitempty"`
}

// UpgradedStatus and UpgradeFailedStatus are the STATUS= that tell systemd,
// and `ss-bridge upgrade UNIT`, the outcome of upgrade attempt seq.
func UpgradedStatus(seq int, from, to string) string {
	return fmt.Sprintf("upgraded from ss-bridge %s to %s (upgrade #%d)", from, to, seq)
}

func UpgradeFailedStatus(seq int, why string) string {
	return fmt.Sprintf("upgrade #%d failed: %s", seq, why)
}

// ReadResult reads the result file at path; a missing file is Seq 0.
func ReadResult(path string) (Result, error) {
	var r Result
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("upgrade result %s: %w", path, err)
	}
	return r, nil
}

// upgrade is the state of the upgrade in progress, owned by the loop.
type upgrade struct {
	seq     int // of the last attempt
	running bool
	cand    *os.File // the candidate program, opened once
	pid     int      // the preflight child, until reaped
	exited  bool
	status  syscall.WaitStatus
	replied bool
	reply   string
	timer   *time.Timer
	// attempt tells the tasks of an attempt from those of later ones.
	attempt int
	// last is the outcome of attempt seq, which the control socket
	// reports: unlike STATUS=, which a worker's status replaces, it stays
	// until the next attempt's.
	last *Result
	// killed are preflight children given up on, or left to exit after
	// the exec by an image that had acted on their answer, not yet reaped.
	killed map[int]bool
}

// abandon drops an upgrade in progress when the server stops.
func (u *upgrade) abandon() {
	if !u.running {
		return
	}
	if u.pid > 0 && !u.exited {
		unix.Kill(u.pid, syscall.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(u.pid, &ws, 0, nil)
	}
	u.end()
}

func (u *upgrade) end() {
	debug.SetGCPercent(servingGCPercent)
	u.running = false
	u.attempt++
	if u.cand != nil {
		u.cand.Close()
		u.cand = nil
	}
	if u.timer != nil {
		u.timer.Stop()
	}
	if u.pid > 0 && !u.exited {
		if u.killed == nil {
			u.killed = map[int]bool{}
		}
		u.killed[u.pid] = true
	}
	u.pid, u.exited, u.replied, u.reply = 0, false, false, ""
}

// task runs f on the loop, unless the loop has returned.
func (srv *server) task(f func()) {
	select {
	case srv.tasks <- f:
	case <-srv.done:
	}
}

// forwardUpgrades turns SIGUSR2 into upgrade attempts on the loop.
func (srv *server) forwardUpgrades() {
	if srv.signals.Upgrade == nil {
		return
	}
	for {
		select {
		case <-srv.signals.Upgrade:
			// Raised at once, before the loop takes the task: the
			// attempt's end lowers it again (or an exec leaves it).
			debug.SetGCPercent(upgradeGCPercent)
			srv.task(srv.startUpgrade)
		case <-srv.done:
			return
		}
	}
}

// startUpgrade begins an upgrade: it opens the candidate and starts its
// preflight. It runs on the loop.
func (srv *server) startUpgrade() {
	u := &srv.up
	if u.running {
		fmt.Fprintf(os.Stderr, "received USR2 during an upgrade; ignored\n")
		return
	}
	fmt.Fprintf(os.Stderr, "received USR2, upgrading to %s\n", srv.exe)
	fail := func(format string, args ...any) { srv.upgradeFailed(fmt.Sprintf(format, args...)) }
	if srv.sup.Stopping() {
		fail("the server is stopping")
		return
	}
	if srv.ready != nil && !srv.ready.told {
		fail("the daemon has not started yet")
		return
	}
	if err := srv.sup.CheckExec(); err != nil {
		fail("%v", err)
		return
	}
	cand, err := os.Open(srv.exe)
	if err != nil {
		fail("open %s: %v", srv.exe, unwrap(err))
		return
	}
	u.running, u.cand = true, cand
	attempt := u.attempt
	// The candidate is started first: its runtime takes milliseconds to
	// start before it reads the state, which is taken meanwhile, in this
	// same turn of the loop, so the state of the moment of the fork.
	stateW, err := srv.preflight()
	if err != nil {
		srv.upgradeFailed(err.Error())
		return
	}
	data, err := json.Marshal(srv.snapshot(PendingState{}))
	if err != nil {
		stateW.Close()
		unix.Kill(u.pid, syscall.SIGKILL) // our unreaped child: not reused
		fail("encode the state: %v", err)
		return
	}
	go func() {
		stateW.Write(data) // a candidate that does not read it fails anyway
		stateW.Close()
	}()
	u.timer = time.AfterFunc(preflightTimeout, func() {
		srv.task(func() {
			if u.attempt != attempt || u.exited {
				return
			}
			unix.Kill(u.pid, syscall.SIGKILL) // our unreaped child: not reused
			srv.upgradeFailed(fmt.Sprintf("preflight of %s: no answer within %s", srv.exe, preflightTimeout))
		})
	})
}

// preflight starts the candidate and returns the pipe to write the state to
// on its stdin; its answer is read on its stdout. The candidate is passed as
// descriptor 3 and run from there, so that what is checked is what is
// executed, even if the file at the path is replaced meanwhile.
func (srv *server) preflight() (*os.File, error) {
	u := &srv.up
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("preflight: pipe: %w", err)
	}
	replyR, replyW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("preflight: pipe: %w", err)
	}
	env := append(os.Environ(), preflightEnv+"=1")
	// On the loop, so on the main thread, like the workers: the candidate
	// dies with us (Pdeathsig) and an exec never signals it.
	pid, err := syscall.ForkExec("/proc/self/fd/3", os.Args, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{inR.Fd(), replyW.Fd(), 2, u.cand.Fd()},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	inR.Close()
	replyW.Close()
	if err != nil {
		inW.Close()
		replyR.Close()
		return nil, fmt.Errorf("preflight of %s: %w", srv.exe, err)
	}
	u.pid = pid
	attempt := u.attempt
	go func() {
		replyR.SetReadDeadline(time.Now().Add(preflightTimeout))
		line, _ := bufio.NewReader(io.LimitReader(replyR, 4096)).ReadString('\n')
		replyR.Close()
		srv.task(func() {
			if u.attempt != attempt {
				return
			}
			u.replied, u.reply = true, strings.TrimSpace(line)
			srv.preflightDone()
		})
	}()
	return inW, nil
}

// otherChild takes the exit of the preflight child; the loop reaps it.
func (srv *server) otherChild(pid int, status syscall.WaitStatus) bool {
	u := &srv.up
	if u.killed[pid] {
		delete(u.killed, pid)
		return true
	}
	if !u.running || pid != u.pid || u.exited {
		return false
	}
	u.exited, u.status = true, status
	srv.preflightDone()
	return true
}

// preflightDone decides, once the preflight has answered "ok" and has not
// exited otherwise than with status 0, or has answered and exited. An "ok"
// is acted on at once, without waiting for the candidate's exit (its
// process's teardown takes milliseconds): the new image reaps it.
func (srv *server) preflightDone() {
	u := &srv.up
	if !u.running || !u.replied {
		return
	}
	version, ok := strings.CutPrefix(u.reply, "ok ")
	if ok && (!u.exited || u.status.Exited() && u.status.ExitStatus() == 0) {
		srv.execUpgrade(version)
		return
	}
	if !u.exited {
		return // the reason may be its exit's
	}
	why := u.reply
	switch {
	case u.status.Signaled():
		why = fmt.Sprintf("killed by signal %s", unix.SignalName(u.status.Signal()))
	case why == "" || ok:
		why = fmt.Sprintf("exited with status %d", u.status.ExitStatus())
	}
	srv.upgradeFailed(fmt.Sprintf("preflight of %s: %s", srv.exe, why))
}

// upgradeFailed reports a failed attempt; the server carries on as it was.
func (srv *server) upgradeFailed(why string) {
	srv.up.end()
	srv.up.seq++
	fmt.Fprintf(os.Stderr, "upgrade failed: %s\n", why)
	if sd := srv.sd; sd.active() && sd.q != nil {
		sd.q.Status(sd.withSummary(UpgradeFailedStatus(srv.up.seq, why)))
	}
	srv.writeResult(Result{Seq: srv.up.seq, OK: false, From: srv.c.Version, PID: os.Getpid(), Error: why})
}

// execUpgrade replaces the program image, on the loop: on the main thread,
// where the workers were forked, so that their Pdeathsig is not sent. It
// returns only if the exec failed.
func (srv *server) execUpgrade(version string) {
	u := &srv.up
	sd := srv.sd
	if srv.sup.Stopping() {
		srv.upgradeFailed("the server is stopping")
		return
	}
	if err := srv.sup.CheckExec(); err != nil {
		srv.upgradeFailed(err.Error())
		return
	}
	// systemd holds back a reload's HUP while we reload, and sees no other
	// change: the pid is the same.
	if sd.active() && sd.q != nil {
		if !sd.reloading {
			sd.upgrading = true
			sd.q.Status(sd.withSummary("upgrading to ss-bridge " + version))
			sd.q.State("RELOADING=1")
		}
		sd.q.Watchdog()
		if err := sd.q.Close(notifyFlushTimeout); err != nil {
			fmt.Fprintf(os.Stderr, "sd_notify: %v\n", err)
		}
		sd.q = nil
	}
	blockUpgradeSignals()
	rearmHUP := srv.signals.IgnoreReload()
	var pending PendingState
	child := false
	for drained := false; !drained; {
		select {
		case sig := <-srv.signals.Stop:
			if pending.Stop == "" {
				pending.Stop = unix.SignalName(sig.(syscall.Signal))
			}
		case <-srv.signals.Reload:
			pending.HUP = true
		case <-srv.signals.Child:
			child = true // the new image reaps every exited child
		default:
			drained = true
		}
	}
	st := srv.snapshot(pending)
	if !u.exited {
		st.Upgrade.Preflight = u.pid
	}
	if id, err := activation.FileIDOf(int(u.cand.Fd())); err == nil {
		st.ExeFD = &ExeFDState{FD: int(u.cand.Fd()), File: id}
	}
	// Our own program, even if its file was replaced or removed since: what
	// a new image that cannot resume goes back to.
	if self, err := os.Open("/proc/self/exe"); err == nil {
		defer self.Close()
		if id, err := activation.FileIDOf(int(self.Fd())); err == nil {
			st.Rollback = &ExeFDState{FD: int(self.Fd()), File: id}
		}
	}
	err := srv.exec(st)
	// Still here: the old image carries on.
	rearmHUP()
	unblockUpgradeSignals()
	if sd.active() {
		sd.q = sd.queue()
		if sd.upgrading {
			sd.upgrading = false
			sd.q.State("READY=1")
		}
	}
	redeliver(pending, child)
	srv.upgradeFailed(err.Error())
}

// exec writes st to a sealed memfd and execs the candidate with it. It
// returns only on failure, with everything as it was.
func (srv *server) exec(st State) error {
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode the state: %w", err)
	}
	memfd, err := unix.MemfdCreate("ss-bridge-state", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	defer unix.Close(memfd)
	for rest := data; len(rest) > 0; {
		n, err := unix.Write(memfd, rest)
		if err != nil {
			return fmt.Errorf("write the state: %w", err)
		}
		rest = rest[n:]
	}
	// Sealed: the new image reads exactly what was written.
	if _, err := unix.FcntlInt(uintptr(memfd), unix.F_ADD_SEALS,
		unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		return fmt.Errorf("seal the state: %w", err)
	}
	if _, err := unix.Seek(memfd, 0, io.SeekStart); err != nil {
		return fmt.Errorf("seek the state: %w", err)
	}
	fds := st.FDs()
	cand := int(srv.up.cand.Fd())
	if st.ExeFD != nil {
		// A script reads itself from /dev/fd/N once the kernel has
		// started its interpreter.
		fds = append(fds, cand)
	}
	if st.Rollback != nil {
		fds = append(fds, st.Rollback.FD)
	}
	err = execWithState(fmt.Sprintf("/proc/self/fd/%d", cand), memfd, fds, false)
	return fmt.Errorf("exec %s: %w", srv.exe, err)
}

// execWithState executes path, as this process, with the state in memfd,
// which SS_BRIDGE_RESUME_FD names, plus extraEnv. Close-on-exec is cleared
// on exactly fds and memfd for the exec, under syscall.ForkLock: a fork
// meanwhile (a log command's sh) would inherit them all. A descriptor whose
// flag cannot be cleared fails the exec, unless bestEffort (a rollback, the
// last resort, goes ahead without it). It returns only on failure, with
// every flag as it was.
func execWithState(path string, memfd int, fds []int, bestEffort bool, extraEnv ...string) error {
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, resumeFDEnv+"=") {
			env = append(env, kv)
		}
	}
	env = append(append(env, resumeFDEnv+"="+strconv.Itoa(memfd)), extraEnv...)
	syscall.ForkLock.Lock()
	defer syscall.ForkLock.Unlock()
	var cleared []int
	defer func() {
		for _, fd := range cleared {
			unix.CloseOnExec(fd)
		}
	}()
	for _, fd := range append(fds, memfd) {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			if bestEffort {
				continue
			}
			return fmt.Errorf("pass descriptor %d: %w", fd, err)
		}
		cleared = append(cleared, fd)
	}
	return syscall.Exec(path, os.Args, env)
}

// redeliver sends ourselves the signals drained before a failed exec, or
// carried across a successful one, so that the loop acts on them.
func redeliver(p PendingState, child bool) {
	if p.HUP {
		unix.Kill(os.Getpid(), syscall.SIGHUP)
	}
	if p.Stop != "" {
		if sig := unix.SignalNum(p.Stop); sig != 0 {
			unix.Kill(os.Getpid(), sig)
		}
	}
	if child {
		unix.Kill(os.Getpid(), syscall.SIGCHLD)
	}
}

// snapshot is the server's State. On the loop.
func (srv *server) snapshot(pending PendingState) State {
	st := State{
		Format:     stateFormat,
		Version:    StateVersion,
		Writer:     WriterState{Version: srv.c.Version, PID: os.Getpid()},
		Exe:        srv.exe,
		Supervisor: srv.sup.Snapshot(),
		Pending:    pending,
		Upgrade:    UpgradeState{Seq: srv.up.seq},
		Control:    srv.ctl.state(),
	}
	for i := range srv.socks {
		s := &srv.socks[i]
		ss := SocketState{Spec: s.Spec, FD: s.FD, Inherited: s.Inherited}
		if id, ok := s.OwnedFile(); ok {
			ss.OwnedFile = &id
		}
		st.Sockets = append(st.Sockets, ss)
	}
	if p := srv.pid; p != nil {
		st.PidFile = &PidFileState{Path: p.path, FD: int(p.f.Fd())}
	}
	if l := srv.log; l != nil {
		st.Log = l.snapshot()
	}
	sd := srv.sd
	addr, watchdog := sd.manager.Settings()
	st.Systemd = SystemdState{
		NotifySocket: addr,
		WatchdogUSec: watchdog.Microseconds(),
		FDStore:      sd.fdStore,
		ReadySent:    sd.readySent,
		Reloading:    sd.reloading,
		Upgrading:    sd.upgrading,
		Summary:      sd.summary,
	}
	return st
}

// writeResult records r as the last outcome, for the control socket, and
// replaces the result file beside the pid file.
func (srv *server) writeResult(r Result) {
	srv.up.last = &r
	if srv.c.PidFile == "" {
		return
	}
	data, _ := json.Marshal(r)
	// Beside the pid file, perhaps in a world-writable directory: through a
	// temporary of an unpredictable name, renamed over the path.
	if err := supervisor.ReplaceFile(ResultFile(srv.c.PidFile), append(data, '\n')); err != nil {
		fmt.Fprintf(os.Stderr, "write the upgrade result: %v\n", err)
	}
}

// lastResult is the outcome of the last upgrade attempt; Seq 0 for none.
func (srv *server) lastResult() *Result {
	if r := srv.up.last; r != nil {
		c := *r
		return &c
	}
	return &Result{Seq: srv.up.seq, From: srv.c.Version, PID: os.Getpid()}
}

func (srv *server) removeResult() {
	if srv.c.PidFile != "" {
		os.Remove(ResultFile(srv.c.PidFile))
	}
}

// InPreflight reports whether this process is the preflight of a
// self-upgrade, which Preflight must run in place of the server.
func InPreflight() bool { return os.Getenv(preflightEnv) == "1" }

// Preflight reads the State on in and says on out whether this ss-bridge,
// configured with c, can resume from it: "ok VERSION", or "error: " and
// why. It has no side effect: it binds, writes, signals and starts nothing.
// It returns the exit status.
func Preflight(c Config, in io.Reader, out io.Writer) int {
	if err := preflightCheck(c, in); err != nil {
		fmt.Fprintf(out, "error: %v\n", err)
		return 1
	}
	fmt.Fprintf(out, "ok %s\n", c.Version)
	return 0
}

func preflightCheck(c Config, in io.Reader) error {
	st, err := DecodeState(in)
	if err != nil {
		return err
	}
	if err := st.Supervisor.Check(); err != nil {
		return err
	}
	if len(st.Sockets) < len(c.Specs) {
		return fmt.Errorf("state has %d sockets, the command line asks for %d", len(st.Sockets), len(c.Specs))
	}
	for i, spec := range c.Specs {
		if st.Sockets[i].Spec.Key != spec.Key {
			return fmt.Errorf("state's socket %d is %s, the command line's %s", i, st.Sockets[i].Spec.Key, spec.Key)
		}
	}
	if (st.PidFile != nil) != (c.PidFile != "") || (st.PidFile != nil && st.PidFile.Path != c.PidFile) {
		return errors.New("state's pid file is not the command line's")
	}
	cfg := c.Supervisor
	cfg.Env = append(os.Environ(), c.Env...)
	return cfg.Check()
}
