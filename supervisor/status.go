package supervisor

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// writeStatusFile replaces path with one "GEN:PID" line per generation, in
// ascending numeric order of generation. The content is written to
// "PATH.<our pid>" and renamed into place, so a reader never sees half a file.
func writeStatusFile(path string, genPID map[int]int) error {
	gens := make([]int, 0, len(genPID))
	for g := range genPID {
		gens = append(gens, g)
	}
	sort.Ints(gens)
	var b strings.Builder
	for _, g := range gens {
		fmt.Fprintf(&b, "%d:%d\n", g, genPID[g])
	}
	tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write status file %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	return nil
}
