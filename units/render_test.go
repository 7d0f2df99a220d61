package units

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRenderPicksTheServiceTypeBySystemdVersion(t *testing.T) {
	spec := Spec{Name: "app", Binary: "/usr/bin/ss-bridge", Options: []string{"--port=8080"}, Ports: []string{"8080"}, Command: []string{"/srv/app", "a b", "50%"}}
	spec.SystemdVersion = 253
	files, err := Render(spec)
	if err != nil {
		t.Fatal(err)
	}
	svc := files[0].Content
	for _, want := range []string{"Type=notify-reload\n", "RuntimeDirectory=app\n", "NotifyAccess=main\n", "KillMode=mixed\n", "Restart=on-failure\n", "TimeoutStopSec=90\n",
		`ExecStart=/usr/bin/ss-bridge --port=8080 -- /srv/app "a b" 50%%` + "\n", "FileDescriptorStoreMax=64\n"} {
		if !strings.Contains(svc, want) {
			t.Errorf("service lacks %q:\n%s", want, svc)
		}
	}
	if strings.Contains(svc, "ExecReload") {
		t.Error("a notify-reload service needs no ExecReload=")
	}
	spec.SystemdVersion = 252
	files, _ = Render(spec)
	svc = files[0].Content
	for _, want := range []string{"Type=notify\n", "RuntimeDirectory=app\n",
		"ExecReload=/usr/bin/ss-bridge --restart --timeout=90 --pid-file=/run/app/ss-bridge.pid --status-file=/run/app/ss-bridge.status\n",
		"ExecStart=/usr/bin/ss-bridge --port=8080 --pid-file=/run/app/ss-bridge.pid --status-file=/run/app/ss-bridge.status -- /srv/app"} {
		if !strings.Contains(svc, want) {
			t.Errorf("legacy service lacks %q:\n%s", want, svc)
		}
	}
}

func TestRenderSocket(t *testing.T) {
	files, err := Render(Spec{Name: "web", Binary: "/b", Socket: true, SystemdVersion: 257, Command: []string{"w"},
		Ports: []string{"8080", "localhost:81", "[::1]:82", "u53"}, Paths: []string{"/run/web.sock"}, PathMode: "0660", Backlog: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files[1].Name != "web.socket" {
		t.Fatalf("files %v", files)
	}
	want := "[Socket]\nListenStream=0.0.0.0:8080\nListenStream=127.0.0.1:81\nListenStream=[::1]:82\nListenDatagram=0.0.0.0:53\n" +
		"ListenStream=/run/web.sock\n# ss-bridge binds IPv6 addresses IPv6-only.\nBindIPv6Only=ipv6-only\nSocketMode=0660\nBacklog=100\nFileDescriptorName=web\n"
	if !strings.Contains(files[1].Content, want) {
		t.Fatalf("socket unit:\n%s\nwant it to contain:\n%s", files[1].Content, want)
	}
	if !strings.Contains(files[0].Content, "Requires=web.socket\nAfter=web.socket\n") || strings.Contains(files[0].Content, "FileDescriptorStoreMax") {
		t.Fatalf("service of a socket unit:\n%s", files[0].Content)
	}
}

func TestRenderRejects(t *testing.T) {
	for name, spec := range map[string]Spec{
		"no name":          {Binary: "/b", Command: []string{"w"}},
		"bad name":         {Name: "a b", Binary: "/b", Command: []string{"w"}},
		"suffix":           {Name: "a.service", Binary: "/b", Command: []string{"w"}},
		"relative binary":  {Name: "a", Binary: "b", Command: []string{"w"}},
		"no command":       {Name: "a", Binary: "/b"},
		"socket, no ports": {Name: "a", Binary: "/b", Command: []string{"w"}, Socket: true},
		"socket, port 0":   {Name: "a", Binary: "/b", Command: []string{"w"}, Socket: true, Ports: []string{"0"}},
	} {
		if _, err := Render(spec); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
}

func TestWriteDoesNotOverwriteWithoutForce(t *testing.T) {
	dir := t.TempDir()
	files := []File{{"a.service", "one\n"}, {"a.socket", "two\n"}}
	if changed, err := Write(dir, files, false); err != nil || len(changed) != 2 {
		t.Fatalf("first write: %v %v", changed, err)
	}
	if changed, err := Write(dir, files, false); err != nil || len(changed) != 0 {
		t.Fatalf("same content again: %v %v", changed, err)
	}
	other := []File{{"a.service", "one\n"}, {"a.socket", "changed\n"}}
	if _, err := Write(dir, other, false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("overwrote a different file: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a.socket")); string(b) != "two\n" {
		t.Fatalf("file changed to %q", b)
	}
	if changed, err := Write(dir, other, true); err != nil || len(changed) != 1 {
		t.Fatalf("forced write: %v %v", changed, err)
	}
}

func TestCommandLineQuoting(t *testing.T) {
	got := commandLine([]string{"/bin/x", "plain", "two words", `q"uote`, `back\slash`, "$HOME", "100%", ""})
	want := `/bin/x plain "two words" "q\"uote" "back\\slash" $$HOME 100%% ""`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestRenderEscapesWhatSystemdWouldMisread(t *testing.T) {
	spec := Spec{Name: "app", Binary: "/b", SystemdVersion: 257, Command: []string{"/srv/a\nConditionUser=nobody", "x\ry", "\x01", "\u0085"}}
	files, err := Render(spec)
	if err != nil {
		t.Fatal(err)
	}
	svc := files[0].Content
	for _, want := range []string{
		"\nDescription=/srv/a\\nConditionUser=nobody under ss-bridge\n",
		"\nExecStart=/b -- \"/srv/a\\nConditionUser=nobody\" \"x\\ry\" \"\\x01\" \"\\u0085\"\n",
	} {
		if !strings.Contains(svc, want) {
			t.Errorf("service lacks %q:\n%s", want, svc)
		}
	}
	if strings.Contains(svc, "\nConditionUser") || strings.Contains(svc, "\r") {
		t.Errorf("a control character went into the unit:\n%q", svc)
	}
	for name, spec := range map[string]Spec{
		"invalid UTF-8 in an argument":    {Name: "a", Binary: "/b", Command: []string{"w", "\xff"}},
		"invalid UTF-8 in the binary":     {Name: "a", Binary: "/b\xff", Command: []string{"w"}},
		"newline in a socket path":        {Name: "a", Binary: "/b", Command: []string{"w"}, Socket: true, Paths: []string{"/run/a\nb"}},
		"trailing backslash in a path":    {Name: "a", Binary: "/b", Command: []string{"w"}, Socket: true, Paths: []string{`/run/a\`}},
		"newline in the directory":        {Name: "a", Binary: "/b", Command: []string{"w"}, WorkingDirectory: "/srv/a\nb"},
		"relative working directory":      {Name: "a", Binary: "/b", Command: []string{"w"}, WorkingDirectory: "srv"},
		"newline in the name":             {Name: "a\nb", Binary: "/b", Command: []string{"w"}},
		"trailing space in the directory": {Name: "a", Binary: "/b", Command: []string{"w"}, WorkingDirectory: "/srv "},
	} {
		if _, err := Render(spec); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
}

// systemd kills what is left after TimeoutStopSec=: a --kill-timeout longer
// than that would be cut short, workers killed while ss-bridge lets them drain.
func TestStopTimeoutOutlastsKillTimeout(t *testing.T) {
	for killTimeout, want := range map[time.Duration]string{
		0:                         "TimeoutStopSec=90\n",
		30 * time.Second:          "TimeoutStopSec=90\n",
		300 * time.Second:         "TimeoutStopSec=310\n",
		299500 * time.Millisecond: "TimeoutStopSec=310\n",
	} {
		files, err := Render(Spec{Name: "app", Binary: "/b", Command: []string{"/w"}, SystemdVersion: 257, KillTimeout: killTimeout})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(files[0].Content, want) {
			t.Errorf("--kill-timeout=%v: service lacks %q:\n%s", killTimeout, want, files[0].Content)
		}
	}
}
