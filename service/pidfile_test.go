package service

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A pid file replaced between our open and our lock (by a server that exits:
// unlink, then unlock; or by a rename) is not the pid file any more: the lock
// is taken again on the file at the path, so that a second server refuses.
func TestPidFileReplacedBeforeTheLockIsRelocked(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pid")
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	replaced := false
	pidFileOpened = func(p string) {
		if !replaced {
			replaced = true
			os.WriteFile(p+".new", []byte("2\n"), 0o644)
			os.Rename(p+".new", p)
		}
	}
	defer func() { pidFileOpened = nil }()
	first, err := lockPidFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer first.release()
	if !replaced {
		t.Fatal("the hook did not run")
	}
	second, err := lockPidFile(path)
	if err == nil {
		second.release()
		t.Fatal("two servers hold the lock of one pid file")
	}
	if !strings.Contains(err.Error(), "another server is running with pid file") {
		t.Errorf("second server: %v", err)
	}
	if err := first.write(); err != nil {
		t.Errorf("write: %v", err)
	}
}

// A pid file replaced after we locked it is not written to, and not removed.
func TestPidFileReplacedAfterTheLockIsNotOurs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pid")
	p, err := lockPidFile(path)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path+".new", []byte("other\n"), 0o644)
	os.Rename(path+".new", path)
	if err := p.write(); err == nil || !strings.Contains(err.Error(), "was removed or replaced after we locked it") {
		t.Errorf("write: %v", err)
	}
	p.release()
	if data, err := os.ReadFile(path); err != nil || string(data) != "other\n" {
		t.Errorf("another's pid file after release: %q, %v", data, err)
	}
}

// What the control commands read of a running server's pid file: our pid,
// and a lock held until release, which removes the file first.
func TestPidFileLockIsWhatControlCommandsSee(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pid")
	p, err := lockPidFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.write(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if pid, err := ReadPid(path); err != nil || pid != os.Getpid() {
		t.Errorf("ReadPid = %d, %v; want %d", pid, err, os.Getpid())
	}
	if held, err := Locked(f); err != nil || !held {
		t.Errorf("Locked while the server runs = %v, %v", held, err)
	}
	p.release()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("pid file after release: %v", err)
	}
	if held, err := Locked(f); err != nil || held {
		t.Errorf("Locked after release = %v, %v", held, err)
	}
	os.WriteFile(path, []byte("x\n"), 0o644)
	if _, err := ReadPid(path); err == nil || err.Error() != "pid file "+path+" holds no pid" {
		t.Errorf("ReadPid of garbage: %v", err)
	}
}

// A server that has locked the pid file and not yet written its pid (two
// started at once) is reported as starting, not as "pid 0".
func TestPidFileLockedBeforeItIsWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pid")
	first, err := lockPidFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer first.release()
	_, err = lockPidFile(path)
	if err == nil || !strings.Contains(err.Error(), "its pid is not written yet") || strings.Contains(err.Error(), "pid 0") {
		t.Fatalf("second server: %v; want it to say the first is starting", err)
	}
	if err := first.write(); err != nil {
		t.Fatal(err)
	}
	_, err = lockPidFile(path)
	if want := "(pid " + strconv.Itoa(os.Getpid()) + ")"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("second server after the write: %v; want %q", err, want)
	}
}
