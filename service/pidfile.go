package service

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

// pidFileOpened, when set by a test, runs between opening a pid file and
// locking it: the window in which another process may replace the file.
var pidFileOpened func(path string)

// lockPidFile opens path and takes its lock, failing at once when another
// process holds it. It writes nothing yet: see write.
//
// The lock is on the inode, the pid file is the path: a server that exits
// removes the file and then unlocks it, so a lock taken on a file that is no
// longer at the path (removed, or replaced by a rename) proves nothing. Then
// the file at the path is opened and locked again, so that two servers can
// never both hold the lock of what each takes to be the pid file.
func lockPidFile(path string) (*pidFile, error) {
	for attempt := 0; ; attempt++ {
		p, err := openPidFile(path)
		if err != nil {
			return nil, err
		}
		if pidFileOpened != nil {
			pidFileOpened(path)
		}
		if err := unix.Flock(int(p.f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			p.f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				// The holder may have locked the file and not yet written
				// its pid: name it only when it is there.
				if pid, err := ReadPid(path); err == nil && pid > 0 {
					return nil, fmt.Errorf("another server is running with pid file %s (pid %d)", path, pid)
				}
				return nil, fmt.Errorf("another server is running with pid file %s (starting: its pid is not written yet)", path)
			}
			return nil, fmt.Errorf("lock pid file %s: %w", path, err)
		}
		if p.atPath() {
			return p, nil
		}
		p.f.Close()
		if attempt == 10 {
			return nil, fmt.Errorf("pid file %s keeps being replaced while we lock it", path)
		}
	}
}

// openPidFile opens or creates path, refusing to follow a symlink there (in
// a world-writable directory, anybody could point it at a file of root's)
// or to open anything but a regular file.
func openPidFile(path string) (*pidFile, error) {
	_, statErr := os.Lstat(path)
	// O_NONBLOCK: opening a FIFO planted at the path must not hang.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0o644)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("pid file %s is a symlink; refusing to follow it", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open pid file: %w", err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("pid file %s is not a regular file", path)
	}
	return &pidFile{path: path, f: f, created: errors.Is(statErr, os.ErrNotExist)}, nil
}

// atPath reports whether the file we hold is still the one at the path.
func (p *pidFile) atPath() bool {
	held, err1 := p.f.Stat()
	there, err2 := os.Lstat(p.path)
	return err1 == nil && err2 == nil && os.SameFile(held, there)
}

// adoptPidFile takes over a pid file opened and locked by the parent of a
// daemon; the lock belongs to the open file description, so it carries over.
func adoptPidFile(path string, fd int) *pidFile {
	unix.CloseOnExec(fd)
	return &pidFile{path: path, f: os.NewFile(uintptr(fd), path)}
}

// write replaces the file's content with our pid, once more making sure that
// the locked file is the one at the path.
func (p *pidFile) write() error {
	if !p.atPath() {
		return fmt.Errorf("pid file %s was removed or replaced after we locked it", p.path)
	}
	if err := p.f.Truncate(0); err != nil {
		return fmt.Errorf("write pid file %s: %w", p.path, err)
	}
	if _, err := p.f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		return fmt.Errorf("write pid file %s: %w", p.path, err)
	}
	return nil
}

// release removes the file and only then drops the lock, so that whoever waits
// for the lock (--stop) finds the server gone and its file removed, and a
// server that locked the file meanwhile sees it is no longer at the path. A
// file that is no longer ours is left alone.
func (p *pidFile) release() {
	if p == nil {
		return
	}
	if p.atPath() {
		os.Remove(p.path)
	}
	p.f.Close()
}

// abandon gives up a pid file that was locked but never written: it is
// removed only if this process created it.
func (p *pidFile) abandon() {
	if p == nil {
		return
	}
	if p.created && p.atPath() {
		os.Remove(p.path)
	}
	p.f.Close()
}

// ReadPid reads the pid in the pid file at path.
func ReadPid(path string) (int, error) {
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

// Locked reports whether some process holds the lock of the pid file open
// as f: whether the server that wrote it is still running.
func Locked(f *os.File) (bool, error) {
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
