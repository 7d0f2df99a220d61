package cli

import (
	"runtime/debug"
	"strings"
)

// release is the version of the source tree; CHANGELOG.md says what each
// release changed.
const release = "0.1.0"

// version is set by builds that know better than the source tree, such as
// the Debian package (packaging/deb.sh):
// -ldflags "-X github.com/ss-bridge/ss-bridge/cli.version=0.1.0+git20261201.abcdef123456".
var version string

// Version says which ss-bridge this is: the version set at link time, or
// the module version when installed with "go install module@version", or
// else the release with "-dev".
func Version() string {
	if version != "" {
		return version
	}
	// A tagged module version, not the pseudo-version that go build derives
	// from an untagged commit (v0.0.0-20261201214617-82cf28e1a2b3+dirty).
	if info, ok := debug.ReadBuildInfo(); ok {
		if v := info.Main.Version; strings.HasPrefix(v, "v") && strings.Count(v, "-") < 2 && !strings.Contains(v, "+") {
			return strings.TrimPrefix(v, "v")
		}
	}
	return release + "-dev"
}

// commit is the git commit the binary was built from, as go build records
// it in a git checkout ("82cf28e4f03e", with ", modified" for uncommitted
// changes), or "": it lets a bug report name the exact source.
func commit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var revision, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if len(revision) > 12 {
		revision = revision[:12]
	}
	if revision != "" && modified == "true" {
		revision += ", modified"
	}
	return revision
}

// versionLine is what ss-bridge --version prints.
func versionLine() string {
	built := ""
	if c := commit(); c != "" {
		built = "commit " + c + "; "
	}
	return "ss-bridge " + Version() + " (" + built + "start_server " + StarterVersion + " compatible)"
}
