package supervisor

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// writeStatusFile replaces path with one "GEN:PID" line per generation, in
// ascending numeric order of generation. The content is written to a new
// temporary file next to it and renamed into place, so a reader never sees
// half a file. The temporary's name is unpredictable and it is created with
// O_EXCL, which never follows a symlink: 0.35's "PATH.<pid>" could be planted
// as a symlink to any file, which a root server would then overwrite. The
// rename replaces whatever is at path, a symlink too, without following it.
func writeStatusFile(path string, genPID map[int]int) error {
	entries := make([]StatusEntry, 0, len(genPID))
	for g, pid := range genPID {
		entries = append(entries, StatusEntry{g, pid})
	}
	return writeStatusEntries(path, entries)
}

// writeStatusEntries is writeStatusFile for a pool, where a generation has
// several workers: one "GEN:PID" line per worker, in ascending order of
// generation and then pid. Readers of 0.35's file, which take the
// generations from the lines, see each generation as often as it has
// workers, which none of them minds (see README).
func writeStatusEntries(path string, entries []StatusEntry) error {
	sortEntries(entries)
	var b strings.Builder
	for _, e := range entries {
		fmt.Fprintf(&b, "%d:%d\n", e.Generation, e.PID)
	}
	return ReplaceFile(path, []byte(b.String()))
}

// ReplaceFile puts data at path through a new temporary file beside it
// (CreateStatusTemp) renamed over it: readers see the old content or the
// new, never a part, and a symlink planted at path, perhaps in a
// world-writable directory, is replaced rather than followed.
func ReplaceFile(path string, data []byte) error {
	f, err := CreateStatusTemp(path)
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	return nil
}

// A StatusEntry is a line of the status file: a generation and the pid of
// its worker.
type StatusEntry struct {
	Generation int
	PID        int
}

// ReadStatusFile returns the entries of the status file at path, in ascending
// order of generation and pid (a pool's generation has one line per worker). Lines that are not GEN:PID are passed over.
func ReadStatusFile(path string) ([]StatusEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open status file: %w", err)
	}
	defer f.Close()
	var entries []StatusEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		g, p, ok := strings.Cut(sc.Text(), ":")
		gen, err1 := strconv.Atoi(g)
		pid, err2 := strconv.Atoi(p)
		if ok && err1 == nil && err2 == nil {
			entries = append(entries, StatusEntry{gen, pid})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read status file %s: %w", path, err)
	}
	sortEntries(entries)
	return entries, nil
}

func sortEntries(entries []StatusEntry) {
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].Generation != entries[j].Generation {
			return entries[i].Generation < entries[j].Generation
		}
		return entries[i].PID < entries[j].PID
	})
}

// CreateStatusTemp creates, with mode 0644, a new temporary file to write the
// status file at path through.
func CreateStatusTemp(path string) (*os.File, error) {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("create a temporary file for the status file %s: %w", path, err)
	}
	// CreateTemp makes it 0600; 0.35's is readable by all (less the umask).
	if err := f.Chmod(0o644 &^ umask); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("chmod %s: %w", f.Name(), err)
	}
	return f, nil
}

// umask is the process's umask, which Chmod does not apply.
var umask = func() os.FileMode {
	m := unix.Umask(0)
	unix.Umask(m)
	return os.FileMode(m)
}()
