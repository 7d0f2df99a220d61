package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// environment is a worker's environment, by name.
type environment map[string]string

func newEnvironment(list []string) environment {
	env := environment{}
	for _, kv := range list {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

func (e environment) list() []string {
	out := make([]string, 0, len(e))
	for k, v := range e {
		out = append(out, k+"="+v)
	}
	return out
}

// MaxSeconds bounds every duration, from options, the environment and the
// envdir alike: about 31.7 years, so that even twice it (the forced
// auto-restart, the backoff's doubling) stays far within time.Duration's 292
// years.
const MaxSeconds = 1e9

// ParseSeconds reads a duration in seconds, fractions allowed. NaN,
// infinities, negative numbers and more than MaxSeconds are errors: each
// would overflow or defeat a timer (NaN converts to an arbitrary duration).
func ParseSeconds(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	f, err := strconv.ParseFloat(v, 64)
	switch {
	// Go's literal syntax is not Perl's: 0.35 reads "1_000" as 1 and
	// "0x1p3" as 0, so such a value is refused rather than read otherwise.
	case strings.ContainsAny(v, "_xXpP"):
		return 0, errors.New("not a number of seconds")
	case err != nil && !errors.Is(err, strconv.ErrRange), math.IsNaN(f):
		return 0, errors.New("not a number of seconds")
	case math.IsInf(f, 0):
		return 0, errors.New("not a finite number of seconds")
	case f < 0:
		return 0, errors.New("a negative number of seconds")
	case f > MaxSeconds:
		return 0, fmt.Errorf("more than the limit of %.0f seconds", float64(MaxSeconds))
	}
	return time.Duration(f * float64(time.Second)), nil
}

// envDirFileMax bounds what is read of an envdir file: the kernel refuses an
// environment string longer than MAX_ARG_STRLEN (32 pages, 128 KiB) anyway,
// and a huge file must not cost its size in memory.
const envDirFileMax = 128 << 10

// maxEnvString is the longest NAME=VALUE exec accepts: MAX_ARG_STRLEN (32
// pages of 4 KiB) with its terminating NUL. A longer one makes every start
// fail with E2BIG, without naming the file.
const maxEnvString = 32*4096 - 1

// withEnvDir is readEnvDir without warnings, for a look at what a worker
// would get (Check).
func withEnvDir(base environment) environment {
	return readEnvDir(base, os.ReadDir, nil)
}

// readEnvDir returns base overlaid with the files of the directory named by
// ENVDIR, as 0.35 reads them: each file NAME not starting with '.' sets NAME
// to its first line; empty and unreadable files are skipped. Because the
// overlay is rebuilt from base every time, a file removed since the last read
// no longer sets its variable. Only regular files are read (a FIFO would block
// the loop), and a file whose first line is too long or holds a NUL byte
// (which exec refuses) is skipped; warn, when not nil, is told why, naming the
// file. readDir lists the directory.
func readEnvDir(base environment, readDir func(string) ([]os.DirEntry, error), warn func(format string, args ...any)) environment {
	env := make(environment, len(base))
	for k, v := range base {
		env[k] = v
	}
	dir := env["ENVDIR"]
	if dir == "" {
		return env
	}
	if warn == nil {
		warn = func(string, ...any) {}
	}
	entries, err := readDir(dir)
	if err != nil {
		return env
	}
	// One buffer for every file: the directory may hold thousands.
	buf := make([]byte, envDirFileMax+1)
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || strings.ContainsRune(name, '=') {
			continue
		}
		path := filepath.Join(dir, name)
		line, ok, err := firstLine(path, buf)
		if err != nil {
			warn("envdir: ignoring %s: %v", path, err)
		}
		if ok && len(name)+1+len(line) > maxEnvString {
			warn("envdir: ignoring %s: %v", path, errEnvLong)
			ok = false
		}
		if ok {
			env[name] = line
		}
	}
	return env
}

var (
	errNotRegular = errors.New("not a regular file")
	errLineLong   = fmt.Errorf("first line longer than %d bytes", envDirFileMax)
	errNUL        = errors.New("contains a NUL byte")
	errEnvLong    = fmt.Errorf("NAME=first line is longer than %d bytes, which exec refuses", maxEnvString)
)

// firstLine reads the first line of the file at path, without its newline,
// through buf, which holds envDirFileMax+1 bytes. ok
// is false for a file with nothing to read; err says why a file that is there
// is not used. Directories and unreadable files are skipped without an error,
// as 0.35 skips them.
func firstLine(path string, buf []byte) (line string, ok bool, err error) {
	// Plain system calls rather than an *os.File: this runs for every file
	// of a directory that may hold thousands. O_NONBLOCK: opening a FIFO
	// must not wait for a writer.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", false, nil
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	switch err := unix.Fstat(fd, &st); {
	case err != nil, st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return "", false, nil
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return "", false, errNotRegular
	}
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", false, nil
		}
		if m == 0 {
			break
		}
		n += m
		if bytes.IndexByte(buf[n-m:n], '\n') >= 0 {
			break // the first line is in
		}
	}
	line8 := buf[:n]
	if i := bytes.IndexByte(line8, '\n'); i >= 0 {
		line8 = line8[:i]
	} else if n > envDirFileMax {
		return "", false, errLineLong
	}
	if n == 0 {
		return "", false, nil
	}
	if bytes.IndexByte(line8, 0) >= 0 {
		return "", false, errNUL
	}
	return string(line8), true, nil
}

// truthy is Perl's truth for an environment value: unset, "" and "0" are false.
func (e environment) truthy(name string) bool {
	v := e[name]
	return v != "" && v != "0"
}

// settings are what the loop needs of the workers' environment: 0.35 reads
// them from the same overlay as the workers' variables.
type settings struct {
	autoRestart         bool
	autoRestartInterval time.Duration
	killOldDelay        time.Duration
}

// settingsOf reads the auto-restart settings of env. A variable that is not a
// valid duration is warned about and replaced by its value in base (the
// option's), or by the default: a typo in an envdir file must not stop the
// server nor turn into a zero or overflowing duration.
func settingsOf(env, base environment, warn func(format string, args ...any)) settings {
	seconds := func(name string) (time.Duration, bool) {
		v, set := env[name]
		if !set {
			return 0, false
		}
		d, err := ParseSeconds(v)
		if err == nil {
			return d, true
		}
		what := fmt.Sprintf("ignoring %s=%q from the environment", name, v)
		bv, bset := base[name]
		if !bset || bv != v {
			what = fmt.Sprintf("envdir: ignoring %s: %q", filepath.Join(env["ENVDIR"], name), v)
			if bd, berr := ParseSeconds(bv); bset && berr == nil {
				warn("%s: %v; using %s", what, err, formatSeconds(bd))
				return bd, true
			}
		}
		warn("%s: %v; using the default", what, err)
		return 0, false
	}
	var st settings
	if env.truthy("ENABLE_AUTO_RESTART") {
		st.autoRestart = true
		// 360 s when unset or zero, as 0.35's "||= 360".
		st.autoRestartInterval = 360 * time.Second
		if d, ok := seconds("AUTO_RESTART_INTERVAL"); ok && d > 0 {
			st.autoRestartInterval = d
		}
	}
	// KILL_OLD_DELAY, or 5 s with auto-restart and 0 without.
	if d, ok := seconds("KILL_OLD_DELAY"); ok {
		st.killOldDelay = d
	} else if st.autoRestart {
		st.killOldDelay = 5 * time.Second
	}
	return st
}

// lookPath finds a command as execvp(3) would, in this environment's PATH.
// A name with a slash is returned as it is: it is relative to the worker's
// directory, which the kernel resolves after the chdir.
func (e environment) lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path, ok := e["PATH"]
	if !ok {
		path = "/usr/local/bin:/usr/bin:/bin"
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &os.PathError{Op: "exec", Path: name, Err: errNotInPath}
}

type notInPathError struct{}

func (notInPathError) Error() string { return "command not found in PATH" }

var errNotInPath = notInPathError{}

// formatSeconds prints a duration the way the log lines print seconds: whole
// numbers without a fraction, as 0.35 printed them.
func formatSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}
