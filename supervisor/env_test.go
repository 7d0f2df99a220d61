package supervisor

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseSeconds(t *testing.T) {
	for v, want := range map[string]time.Duration{
		"0": 0, "1": time.Second, " 2.5 ": 2500 * time.Millisecond, "1e-3": time.Millisecond,
		"-0": 0, "1e9": 1e9 * time.Second, "1e-400": 0,
	} {
		if got, err := ParseSeconds(v); err != nil || got != want {
			t.Errorf("ParseSeconds(%q) = %v, %v; want %v", v, got, err, want)
		}
	}
	for v, want := range map[string]string{
		"nan": "not a number of seconds", "NaN": "not a number of seconds", "": "not a number of seconds",
		"1x": "not a number of seconds", "inf": "not a finite number of seconds",
		"-Inf": "not a finite number of seconds", "1e400": "not a finite number of seconds",
		"-1": "a negative number of seconds", "1e10": "more than the limit of 1000000000 seconds",
		"1000000000.5": "more than the limit of 1000000000 seconds",
		"1_000":        "not a number of seconds", "0x1p3": "not a number of seconds", "0X1P-2": "not a number of seconds",
	} {
		if got, err := ParseSeconds(v); err == nil || err.Error() != want {
			t.Errorf("ParseSeconds(%q) = %v, %v; want the error %q", v, got, err, want)
		}
	}
	// Twice the bound (the forced auto-restart, the backoff) still fits.
	if d, _ := ParseSeconds("1e9"); 2*d < d || float64(2*d) > math.MaxInt64 {
		t.Errorf("2 * %v overflows", d)
	}
}

// An envdir file is read only when it is a regular file, only so far, and a
// file that cannot be used is named in a warning.
func TestEnvDirSkipsWhatItCannotUse(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("GOOD", []byte("yes\nsecond\n"))
	write("NUL", []byte("a\x00b\n"))
	write("NULAFTER", []byte("fine\n\x00"))
	write("LONG", bytes.Repeat([]byte("x"), envDirFileMax+1))
	// exec takes NAME=VALUE up to MAX_ARG_STRLEN with its NUL, 131072 bytes.
	write("JUSTFITS", append(bytes.Repeat([]byte("y"), maxEnvString-len("JUSTFITS=")), '\n'))
	write("EXECREFUSES", append(bytes.Repeat([]byte("z"), maxEnvString-len("EXECREFUSES=")+1), '\n'))
	if err := syscall.Mkfifo(filepath.Join(dir, "FIFO"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "SUBDIR"), 0o755)
	var warnings []string
	warn := func(format string, args ...any) { warnings = append(warnings, fmt.Sprintf(format, args...)) }
	done := make(chan environment)
	go func() { done <- readEnvDir(environment{"ENVDIR": dir}, os.ReadDir, warn) }()
	var env environment
	select {
	case env = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("reading the envdir blocks (on the FIFO)")
	}
	if env["GOOD"] != "yes" || env["NULAFTER"] != "fine" || len(env["JUSTFITS"]) != maxEnvString-len("JUSTFITS=") {
		t.Errorf("GOOD=%q NULAFTER=%q len(JUSTFITS)=%d", env["GOOD"], env["NULAFTER"], len(env["JUSTFITS"]))
	}
	for _, name := range []string{"NUL", "LONG", "EXECREFUSES", "FIFO", "SUBDIR"} {
		if v, ok := env[name]; ok {
			t.Errorf("%s is set (%d bytes), want it skipped", name, len(v))
		}
	}
	want := []string{
		"envdir: ignoring " + filepath.Join(dir, "EXECREFUSES") + ": NAME=first line is longer than 131071 bytes, which exec refuses",
		"envdir: ignoring " + filepath.Join(dir, "FIFO") + ": not a regular file",
		"envdir: ignoring " + filepath.Join(dir, "LONG") + ": first line longer than 131072 bytes",
		"envdir: ignoring " + filepath.Join(dir, "NUL") + ": contains a NUL byte",
	}
	if strings.Join(warnings, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(warnings, "\n"), strings.Join(want, "\n"))
	}
}

// The envdir is listed once per start attempt, not at every wake of the loop
// (a HUP, a worker's exit, a notification): 0.35 read it once per wake, and
// ss-bridge read it up to four times per wake.
func TestEnvDirReadOncePerSpawn(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 50; i++ {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("VAR%d", i)), []byte("x\n"), 0o644)
	}
	h := start(t, Config{Interval: 0, Env: []string{"ENVDIR=" + dir}})
	h.waitLog("starting new worker 101")
	for i := 0; i < 20; i++ {
		h.signal(syscall.SIGHUP)
		pid := 102 + i
		h.waitFor("the new generation signalling the old", func() bool { return len(h.os.killsOf(pid-1)) == 1 })
		// The old worker's exit and a signal the loop ignores wake it
		// without starting anything.
		h.os.exit(pid-1, 0)
		h.signal(syscall.SIGUSR1)
		h.waitLog(fmt.Sprintf("old worker %d died, status:0", pid-1))
	}
	h.signal(syscall.SIGUSR1)
	time.Sleep(100 * time.Millisecond)
	h.os.mu.Lock()
	reads := h.os.dirReads
	h.os.mu.Unlock()
	if spawns := h.spawnCount(); reads != spawns {
		t.Errorf("the envdir was listed %d times for %d starts, want once per start", reads, spawns)
	}
}

// A bad KILL_OLD_DELAY in the envdir is named in one log line and the
// option's value is used instead; the server keeps running.
func TestEnvDirBadDurationFallsBack(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "KILL_OLD_DELAY"), []byte("nan\n"), 0o644)
	h := start(t, Config{Interval: 0, Env: []string{"ENVDIR=" + dir, "KILL_OLD_DELAY=0.3"}})
	h.waitLog("starting new worker 101")
	h.signal(syscall.SIGHUP)
	h.waitLog("sleeping 0.3 secs before killing old workers")
	line := fmt.Sprintf("envdir: ignoring %s: \"nan\": not a number of seconds; using 0.3", filepath.Join(dir, "KILL_OLD_DELAY"))
	if !strings.Contains(h.log.String(), line+"\n") {
		t.Errorf("log lacks %q:\n%s", line, h.log)
	}
	// without the option's value, the default (0 without auto-restart)
	os.WriteFile(filepath.Join(dir, "KILL_OLD_DELAY"), []byte("1e10\n"), 0o644)
	h2 := start(t, Config{Interval: 0, Env: []string{"ENVDIR=" + dir}})
	h2.waitLog("starting new worker 101")
	h2.signal(syscall.SIGHUP)
	h2.waitLog("killing old workers")
	line = fmt.Sprintf("envdir: ignoring %s: \"1e10\": more than the limit of 1000000000 seconds; using the default", filepath.Join(dir, "KILL_OLD_DELAY"))
	if !strings.Contains(h2.log.String(), line+"\n") || strings.Contains(h2.log.String(), "sleeping") {
		t.Errorf("log lacks %q or sleeps:\n%s", line, h2.log)
	}
}

// Auto-restart settings changed in the envdir since the last start count
// when the restart falls due, as in 0.35, which read them at every wake.
func TestAutoRestartRereadsEnvDirWhenDue(t *testing.T) {
	dir := t.TempDir()
	h := start(t, Config{Interval: 0, Env: []string{"ENVDIR=" + dir, "ENABLE_AUTO_RESTART=1", "AUTO_RESTART_INTERVAL=0.3", "KILL_OLD_DELAY=0"}})
	h.waitLog("starting new worker 101")
	os.WriteFile(filepath.Join(dir, "ENABLE_AUTO_RESTART"), []byte("0\n"), 0o644)
	time.Sleep(time.Second)
	if n := h.spawnCount(); n != 1 {
		t.Fatalf("%d starts after auto-restart was turned off in the envdir, want 1:\n%s", n, h.log)
	}
}

// BenchmarkEnvDir5000 reads an envdir of 5,000 small files.
func BenchmarkEnvDir5000(b *testing.B) {
	dir := b.TempDir()
	for i := 0; i < 5000; i++ {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("VAR%d", i)), []byte("value\n"), 0o644)
	}
	base := environment{"ENVDIR": dir}
	for b.Loop() {
		withEnvDir(base)
	}
}
