package cli

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// pidFile is a pid file held under an exclusive flock for as long as the
// server runs. The lock, not the pid in it, says whether the server is
// running: a file left by a crash holds no lock and so blocks nothing.
type pidFile struct {
	path    string
	f       *os.File
	created bool
}

// lockPidFile opens path and takes its lock, failing at once when another
// process holds it. It writes nothing yet: see write.
func lockPidFile(path string) (*pidFile, error) {
	_, statErr := os.Lstat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open pid file: %w", err)
	}
	p := &pidFile{path: path, f: f, created: errors.Is(statErr, os.ErrNotExist)}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			pid, _ := readPid(path)
			return nil, fmt.Errorf("another server is running with pid file %s (pid %d)", path, pid)
		}
		return nil, fmt.Errorf("lock pid file %s: %w", path, err)
	}
	return p, nil
}

// adoptPidFile takes over a pid file opened and locked by the parent of a
// daemon; the lock belongs to the open file description, so it carries over.
func adoptPidFile(path string, fd int) *pidFile {
	unix.CloseOnExec(fd)
	return &pidFile{path: path, f: os.NewFile(uintptr(fd), path)}
}

// write replaces the file's content with our pid.
func (p *pidFile) write() error {
	if err := p.f.Truncate(0); err != nil {
		return fmt.Errorf("write pid file %s: %w", p.path, err)
	}
	if _, err := p.f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		return fmt.Errorf("write pid file %s: %w", p.path, err)
	}
	return nil
}

// release removes the file and only then drops the lock, so that whoever waits
// for the lock (--stop) finds the server gone and its file removed.
func (p *pidFile) release() {
	if p == nil {
		return
	}
	os.Remove(p.path)
	p.f.Close()
}

// abandon gives up a pid file that was locked but never written: it is
// removed only if this process created it.
func (p *pidFile) abandon() {
	if p == nil {
		return
	}
	if p.created {
		os.Remove(p.path)
	}
	p.f.Close()
}

// readPid reads the pid in a pid file.
func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s holds no pid", path)
	}
	return pid, nil
}

// locked reports whether some process holds the lock of the file open as f.
func locked(f *os.File) (bool, error) {
	err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
	if err == nil {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return false, nil
	}
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	return false, fmt.Errorf("lock %s: %w", f.Name(), err)
}
