package cli

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// commandTables runs each command with an option nobody has, so that it
// parses (and fails) without doing anything, and returns the option table
// each one parsed with.
func commandTables(t *testing.T) map[string][]option {
	t.Helper()
	tables := map[string][]option{}
	var current string
	tableParsed = func(table []option) { tables[current] = table }
	defer func() { tableParsed = nil }()
	stderr := os.Stderr
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	os.Stderr = null
	defer func() { os.Stderr = stderr; null.Close() }()
	for name, command := range commands {
		current = name
		if code := command([]string{"--no-such-option-anywhere"}); code == 0 {
			t.Errorf("%s with an unknown option exited 0", name)
		}
		if tables[name] == nil {
			t.Errorf("command %s parsed no option table", name)
		}
	}
	return tables
}

// mentions reports whether text names --name as a whole option name, not
// as the prefix of a longer one.
func mentions(text, name string) bool {
	return regexp.MustCompile(regexp.QuoteMeta("--"+name) + `([^a-z-]|-[^a-z]|$)`).MatchString(text)
}

// manMentions is mentions for roff, where a minus is \-.
func manMentions(roff, name string) bool {
	dash := regexp.QuoteMeta(`\-`)
	option := dash + dash + strings.ReplaceAll(regexp.QuoteMeta(name), "-", dash)
	return regexp.MustCompile(option + `([^a-z\\]|\\[^-]|` + dash + `[^a-z]|$)`).MatchString(roff)
}

func readRepoFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile("../" + path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestHelpDocumentsEveryOption checks that every option the parser accepts,
// and every command, is in --help (or the command's --help), in the man page
// and in the bash completion.
func TestHelpDocumentsEveryOption(t *testing.T) {
	man := readRepoFile(t, "docs/ss-bridge.1")
	completion := readRepoFile(t, "packaging/ss-bridge.bash-completion")
	global := map[string]bool{}
	for _, o := range options {
		global[o.name] = true
		if !mentions(bridgeUsage, o.name) {
			t.Errorf("ss-bridge --help does not list --%s", o.name)
		}
		if !manMentions(man, o.name) {
			t.Errorf("the man page does not document --%s", o.name)
		}
		if !mentions(completion, o.name) {
			t.Errorf("the bash completion does not offer --%s", o.name)
		}
	}
	for name, table := range commandTables(t) {
		if !regexp.MustCompile(`(?m)^  ` + name + `\b`).MatchString(bridgeUsage) {
			t.Errorf("ss-bridge --help does not list the command %s", name)
		}
		if !strings.Contains(man, `.SS "ss-bridge `+name) {
			t.Errorf("the man page has no section for the command %s", name)
		}
		if !strings.Contains(completion, name) {
			t.Errorf("the bash completion does not offer the command %s", name)
		}
		for _, o := range table {
			if global[o.name] {
				continue // documented with the server options
			}
			if !mentions(commandUsage[name], o.name) {
				t.Errorf("ss-bridge %s --help does not list --%s", name, o.name)
			}
			if !manMentions(man, o.name) {
				t.Errorf("the man page does not document %s --%s", name, o.name)
			}
			if !mentions(completion, o.name) {
				t.Errorf("the bash completion does not offer %s --%s", name, o.name)
			}
		}
	}
}

// TestManPageRenders renders docs/ss-bridge.1 with man -l and all of
// troff's warnings on (MANROFFOPT=-ww: man's own --warnings shows none when
// its output is not a terminal): any warning fails.
func TestManPageRenders(t *testing.T) {
	if _, err := exec.LookPath("man"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("man (Debian package man-db) is missing, and CI is set")
		}
		t.Skip("man (Debian package man-db) is missing")
	}
	cmd := exec.Command("man", "-E", "UTF-8", "-l", "../docs/ss-bridge.1")
	cmd.Env = append(os.Environ(), "MANROFFOPT=-ww", "MANWIDTH=80", "MAN_KEEP_FORMATTING=", "MANPAGER=cat", "PAGER=cat", "LC_ALL=C.UTF-8")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("man -l: %v: %s", err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Fatalf("man -l warns:\n%s", stderr.String())
	}
	for _, want := range []string{"SS-BRIDGE(1)", "--listen-fds", "EXIT STATUS", "EXAMPLES"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
}

// The envdir and its variables are read at each start attempt (and when an
// auto-restart falls due), not at every wake of the loop as 0.35 did: a file
// ENABLE_AUTO_RESTART created while the server runs takes effect at the next
// start. --help said "read again whenever the server wakes, as 0.35 does",
// which README and ss-bridge(1) contradict.
func TestHelpSaysWhenTheEnvironmentIsRead(t *testing.T) {
	text := strings.Join(strings.Fields(bridgeUsage), " ")
	if strings.Contains(text, "whenever the server wakes") {
		t.Error("--help says the envdir is read whenever the server wakes")
	}
	if !strings.Contains(text, "read at each start attempt") {
		t.Error("--help does not say that the envdir is read at each start attempt")
	}
}
