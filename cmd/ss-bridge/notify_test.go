package main

// Notifications at the edges: a systemd that never reads its NOTIFY_SOCKET, workers that
// flood STATUS= or send a long one, workers that drop privileges, strangers flooding a
// worker's socket, --worker-watchdog without systemd.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// stuckNotifySocket binds a datagram socket that is never read and fills its receive
// queue, as a stuck systemd's would be, and returns its path.
func stuckNotifySocket(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// One socket may run out of its own send buffer first: fill from fresh ones until
	// a fresh one cannot send either.
	for range 64 {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		sent := 0
		for {
			err := unix.Sendto(fd, []byte("FILLER=1"), 0, &unix.SockaddrUnix{Name: path})
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			sent++
		}
		if sent == 0 {
			return path
		}
	}
	t.Fatal("the notify socket's queue never filled")
	return ""
}

// fakeSystemd is a NOTIFY_SOCKET that the test reads: every datagram the bridge sends.
type fakeSystemd struct {
	path string
	mu   sync.Mutex
	msgs []string
}

func listenNotify(t *testing.T) *fakeSystemd {
	t.Helper()
	f := &fakeSystemd{path: filepath.Join(t.TempDir(), "notify")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: f.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			f.mu.Lock()
			f.msgs = append(f.msgs, string(buf[:n]))
			f.mu.Unlock()
		}
	}()
	return f
}

func (f *fakeSystemd) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.msgs...)
}

func (f *fakeSystemd) waitFor(t *testing.T, timeout time.Duration, line string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, m := range f.received() {
			if strings.Contains("\n"+m+"\n", "\n"+line+"\n") {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s within %v; received %d datagrams", line, timeout, len(f.received()))
}

// workerNotifySocket returns the NOTIFY_SOCKET the bridge gave worker pid.
func workerNotifySocket(t *testing.T, pid int) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		for _, kv := range strings.Split(string(data), "\x00") {
			if v, ok := strings.CutPrefix(kv, "NOTIFY_SOCKET="); ok {
				return v
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %d has no NOTIFY_SOCKET: %q", pid, data)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cpuTime is the user and system time pid has used so far.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name, which ends with the last ')'.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.Atoi(fields[11])
	stime, _ := strconv.Atoi(fields[12])
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// With a NOTIFY_SOCKET that is never read, a worker flooding STATUS= and 100 HUPs, a TERM
// is still acted on at once, and the bridge exits.
func TestTERMIsPromptWhateverSystemdAndWorkersDo(t *testing.T) {
	t.Parallel()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	b := startBridgeWith(t, bridgeConfig{env: []string{"NOTIFY_SOCKET=" + stuckNotifySocket(t)}},
		cmdArgs([]string{"--port=" + addr, "--interval=0"}, goWorker("-status-flood"))...)
	waitServing(t, addr, 1, 10*time.Second)
	b.waitLine(5*time.Second, `^worker \d+ flooding NOTIFY_SOCKET with STATUS=$`, 1)
	for range 100 {
		b.signal(syscall.SIGHUP)
	}
	termAt := time.Now()
	b.signal(syscall.SIGTERM)
	m := b.waitLine(15*time.Second, `^received TERM, sending TERM to all workers:`, 1)
	took := m.at.Sub(termAt)
	t.Logf("TERM acted on after %v", took)
	if took > time.Second {
		t.Errorf("TERM acted on after %v, want well under 1s", took)
	}
	if code := b.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
}

// A worker's long STATUS= is cut, and every state change goes alone: no datagram reaches
// the 4096 bytes at which systemd ignores it, and READY=1 arrives.
func TestNotifyDatagramsStayBelowSystemdsLimit(t *testing.T) {
	t.Parallel()
	sd := listenNotify(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	b := startBridgeWith(t, bridgeConfig{env: []string{"NOTIFY_SOCKET=" + sd.path}},
		cmdArgs([]string{"--port=" + addr, "--ready=notify"}, goWorker("-status-len=4080", "-ready"))...)
	sd.waitFor(t, 10*time.Second, "READY=1")
	b.signal(syscall.SIGHUP)
	b.waitLine(10*time.Second, `^killing old workers$`, 1)
	sd.waitFor(t, 10*time.Second, "RELOADING=1")
	b.signal(syscall.SIGTERM)
	b.wait(10 * time.Second)
	sd.waitFor(t, 5*time.Second, "STOPPING=1")
	readies, cut := 0, 0
	for _, m := range sd.received() {
		if len(m) >= 4096 {
			t.Errorf("a datagram of %d bytes: %.60q...", len(m), m)
		}
		if m == "READY=1" {
			readies++
		}
		if strings.Contains(m, ": pid ") && strings.HasSuffix(m, "s...") {
			cut++
		}
	}
	if readies != 2 {
		t.Errorf("%d READY=1 alone, want 2 (start and reload): %.300q", readies, sd.received())
	}
	if cut == 0 {
		t.Errorf("no STATUS= with the worker's text cut: %.300q", sd.received())
	}
}

// A worker that drops root for nobody still reaches its NOTIFY_SOCKET and becomes ready;
// a process that is not the worker or its descendant is still ignored.
func TestWorkerDroppingPrivilegesBecomesReady(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to change user")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("no setpriv")
	}
	// nobody must be able to run the worker binary.
	if err := os.Chmod(e2eBinDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	status := filepath.Join(dir, "status")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	b := startBridgeWith(t, bridgeConfig{dir: dir}, cmdArgs(
		[]string{"--port=" + addr, "--ready=notify", "--ready-timeout=20", "--status-file=" + status},
		append([]string{setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"}, goWorker("-ready")...))...)
	w := b.worker(1, 5*time.Second)
	waitStatus(t, status, statusLine(1, w), 15*time.Second)
	if st, err := os.Stat(fmt.Sprintf("/proc/%d", w)); err != nil || st.Sys().(*syscall.Stat_t).Uid == 0 {
		t.Fatalf("worker %d does not run as nobody (%v)", w, err)
	}
	if n := b.count(`listener\.Ready`); n != 0 {
		t.Errorf("the worker failed to notify:\n%s", b.log)
	}

	// This test process is no descendant of the worker.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: workerNotifySocket(t, w), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("STATUS=intruder")); err != nil {
		t.Fatal(err)
	}
	b.waitLine(5*time.Second, fmt.Sprintf(`^notify message from pid %d \(not worker %d or its descendant\) ignored$`, os.Getpid(), w), 1)
}

// 20,000 datagrams from a stranger to a worker's NOTIFY_SOCKET cost a few lines and a
// count.
func TestIgnoredNotifyFloodIsCounted(t *testing.T) {
	t.Parallel()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	b := startBridge(t, cmdArgs([]string{"--port=" + addr, "--ready=notify"}, goWorker("-ready"))...)
	w := b.worker(1, 5*time.Second)
	waitServing(t, addr, 1, 10*time.Second)
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: workerNotifySocket(t, w), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const sent = 20000
	for i := range sent {
		if _, err := conn.Write([]byte("STATUS=intruder " + strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // for the last ones to be read
	b.signal(syscall.SIGTERM)
	b.wait(10 * time.Second)
	lines, bytes, counted := 0, 0, 0
	for _, l := range b.log.Lines() {
		if strings.Contains(l.text, "ignored") {
			lines++
			bytes += len(l.text) + 1
			if m := re(`^\.\.\. and (\d+) more notify messages ignored$`).FindStringSubmatch(l.text); m != nil {
				n, _ := strconv.Atoi(m[1])
				counted += n
			} else if re(`^notify message from pid \d+ \(not worker \d+ or its descendant\) ignored$`).MatchString(l.text) {
				counted++
			}
		}
	}
	t.Logf("%d datagrams ignored: %d log lines, %d bytes, %d counted", sent, lines, bytes, counted)
	if lines > 8 || bytes > 1000 {
		t.Errorf("%d datagrams ignored made %d log lines, %d bytes", sent, lines, bytes)
	}
	if counted < sent-1000 {
		t.Errorf("%d of %d ignored datagrams counted in the log", counted, sent)
	}
}

// --worker-watchdog alone (no systemd, no --ready=notify) gives the worker a NOTIFY_SOCKET,
// and a worker that pinged once and fell silent is aborted and replaced.
func TestWorkerWatchdogAloneAbortsASilentWorker(t *testing.T) {
	t.Parallel()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	b := startBridge(t, cmdArgs([]string{"--port=" + addr, "--interval=0", "--worker-watchdog=1"}, goWorker("-watchdog-once"))...)
	w := b.worker(1, 5*time.Second)
	b.waitLine(10*time.Second, fmt.Sprintf(`^worker %d sent no WATCHDOG=1 for 1s, aborting it and restarting$`, w), 1)
	b.worker(2, 10*time.Second)
}

// A worker flooding STATUS= as fast as its notifications are taken keeps no core busy in
// the bridge.
func TestStatusFloodCostsTheBridgeLittleCPU(t *testing.T) {
	t.Parallel()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	sd := listenNotify(t)
	b := startBridgeWith(t, bridgeConfig{env: []string{"NOTIFY_SOCKET=" + sd.path}},
		cmdArgs([]string{"--port=" + addr, "--interval=0"}, goWorker("-status-flood"))...)
	b.waitLine(5*time.Second, `^worker \d+ flooding NOTIFY_SOCKET with STATUS=$`, 1)
	time.Sleep(500 * time.Millisecond)
	before, start := cpuTime(t, b.pid), time.Now()
	received := len(sd.received())
	time.Sleep(3 * time.Second)
	used, wall := cpuTime(t, b.pid)-before, time.Since(start)
	statuses := len(sd.received()) - received
	t.Logf("the bridge used %v of CPU in %v of a STATUS= flood, and sent %d notifications", used, wall.Round(time.Millisecond), statuses)
	if used > wall/5 {
		t.Errorf("the bridge used %v of CPU in %v", used, wall)
	}
	if statuses > int(wall/(50*time.Millisecond)) {
		t.Errorf("%d notifications to systemd in %v", statuses, wall)
	}
}
