package supervisor

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// What the supervisor writes, the control commands read back, in numeric
// order of generation whatever the order of the lines.
func TestReadStatusFileReadsWhatIsWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status")
	if err := writeStatusFile(path, map[int]int{10: 5, 9: 7, 100: 1}); err != nil {
		t.Fatal(err)
	}
	want := []StatusEntry{{9, 7}, {10, 5}, {100, 1}}
	if got, err := ReadStatusFile(path); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ReadStatusFile = %v, %v; want %v", got, err, want)
	}
	os.WriteFile(path, []byte("12:3\nnot a line\n2:x\n\n3:4"), 0o644)
	want = []StatusEntry{{3, 4}, {12, 3}}
	if got, err := ReadStatusFile(path); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ReadStatusFile of a file written by hand = %v, %v; want %v", got, err, want)
	}
	os.Remove(path)
	if _, err := ReadStatusFile(path); !errors.Is(err, os.ErrNotExist) || err.Error() != "open status file: open "+path+": no such file or directory" {
		t.Errorf("ReadStatusFile of no file: %v", err)
	}
}
