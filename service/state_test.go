package service

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ss-bridge/ss-bridge/activation"
	"github.com/ss-bridge/ss-bridge/supervisor"
)

// testdata/state-v1.json is a version 1 state: every later ss-bridge must still read it,
// so that it can take over from an ss-bridge of that version.
func TestStateV1IsRead(t *testing.T) {
	f, err := os.Open("testdata/state-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := DecodeState(f)
	if err != nil {
		t.Fatal(err)
	}
	if st.Exe != "/usr/bin/ss-bridge" || len(st.Sockets) != 2 || st.Sockets[1].OwnedFile == nil ||
		*st.Sockets[1].OwnedFile != (activation.FileID{Dev: 25, Ino: 1042}) || st.PidFile.FD != 5 ||
		st.Log.PID != 1240 || !st.Systemd.Upgrading || st.Systemd.WatchdogUSec != 30000000 ||
		st.Supervisor.Generation != 7 || !st.Pending.HUP || st.Upgrade.Seq != 3 || st.ExeFD.FD != 11 || st.Rollback.File.Ino != 393001 {
		t.Errorf("decoded %+v", st)
	}
	if got, want := st.FDs(), []int{3, 4, 5, 7, 6, 8, 12}; !slices.Equal(got, want) {
		t.Errorf("FDs() = %v, want %v", got, want)
	}
}

// What one image writes, the next reads back unchanged; fields it does not know are
// ignored, as additions to the format keep its version.
func TestStateRoundTrip(t *testing.T) {
	data, err := os.ReadFile("testdata/state-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	st, err := DecodeState(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	encoded, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	again, err := DecodeState(bytes.NewReader(encoded))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st, again) {
		t.Errorf("round trip changed the state:\n%+v\n%+v", st, again)
	}
	withNew := strings.Replace(string(data), `"exe":`, `"added_later": {"x": 1}, "exe":`, 1)
	if _, err := DecodeState(strings.NewReader(withNew)); err != nil {
		t.Errorf("an unknown field: %v", err)
	}
}

func TestStateRefusals(t *testing.T) {
	data, err := os.ReadFile("testdata/state-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, from, to, want string }{
		{"format", `"format": "ss-bridge-state"`, `"format": "other"`, `format "other"`},
		{"newer", `"version": 1,
  "writer"`, `"version": 2,
  "writer"`, "state version 2: this ss-bridge reads versions 1 to 1"},
		{"supervisor version", `"supervisor": {
    "version": 1`, `"supervisor": {
    "version": 9`, "supervisor state version 9"},
		{"one descriptor twice", `"pid_file": {"path": "/run/web.pid", "fd": 5}`, `"pid_file": {"path": "/run/web.pid", "fd": 4}`,
			"descriptor 4 is both socket /run/web.sock and the pid file"},
		{"no executable", `"exe": "/usr/bin/ss-bridge"`, `"exe": ""`, "no executable"},
		{"not json", `"format"`, `format`, "state: invalid character"},
	} {
		t.Run(c.name, func(t *testing.T) {
			changed := strings.Replace(string(data), c.from, c.to, 1)
			if changed == string(data) {
				t.Fatalf("%q is not in the fixture", c.from)
			}
			if _, err := DecodeState(strings.NewReader(changed)); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error saying %q", err, c.want)
			}
		})
	}
}

// The preflight answers on its output in one line and has no side effect: it runs with a
// configuration whose files do not exist, and creates none.
func TestPreflightAnswers(t *testing.T) {
	data, err := os.ReadFile("testdata/state-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base := Config{
		Version:    "2.0.0",
		Supervisor: supervisor.Config{Command: []string{"/bin/true"}, StatusFile: dir + "/status"},
		PidFile:    "/run/web.pid",
	}
	for _, spec := range []string{"127.0.0.1:8080"} {
		s, err := activation.ParsePort(spec)
		if err != nil {
			t.Fatal(err)
		}
		base.Specs = append(base.Specs, s)
	}
	for _, c := range []struct {
		name   string
		change func(c *Config)
		in     string
		want   string
		code   int
	}{
		{"ok", func(c *Config) {}, string(data), "ok 2.0.0\n", 0},
		{"other pid file", func(c *Config) { c.PidFile = dir + "/other.pid" }, string(data), "error: state's pid file is not the command line's\n", 1},
		{"other socket", func(c *Config) { c.Specs[0].Key = "9090" }, string(data), "error: state's socket 0 is 127.0.0.1:8080, the command line's 9090\n", 1},
		{"worker gone", func(c *Config) { c.Supervisor.Command = []string{dir + "/gone"} }, string(data), "error: server program " + dir + "/gone: no such file or directory\n", 1},
		{"no state", func(c *Config) {}, "", "error: state: unexpected end of JSON input\n", 1},
		{"two serving workers", func(c *Config) {}, strings.Replace(string(data), `"role": "current"`, `"role": "current"}, {"pid": 2002, "gen": 6, "role": "current"`, 1),
			"error: supervisor state: two workers are current\n", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			cfg.Specs = slices.Clone(base.Specs)
			c.change(&cfg)
			var out bytes.Buffer
			if code := Preflight(cfg, strings.NewReader(c.in), &out); code != c.code || out.String() != c.want {
				t.Errorf("Preflight: %d %q, want %d %q", code, out.String(), c.code, c.want)
			}
		})
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("the preflight left files: %v", entries)
	}
}
