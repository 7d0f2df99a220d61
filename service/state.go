package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/ss-bridge/ss-bridge/activation"
	"github.com/ss-bridge/ss-bridge/supervisor"
)

// State is everything a self-upgrade hands from one program image of the
// server to the next across the execve: the server carries on in the same
// process, with the same descriptors, workers and files. It is written by
// the old image, as JSON, to a sealed memfd whose descriptor the new image
// finds in SS_BRIDGE_RESUME_FD.
//
//	{"format":"ss-bridge-state", "version":1,
//	 "writer":{"version":"0.1.0", "pid":1234},
//	 "exe":"/usr/bin/ss-bridge", "exe_fd":{"fd":9, "file":{"Dev":2049, "Ino":1234}},
//	 "rollback":{"fd":10, "file":{"Dev":2049, "Ino":1200}},
//	 "sockets":[{"spec":{"Key":"8080", ...}, "fd":3, "inherited":false, "owned_file":null}],
//	 "pid_file":{"path":"/run/x.pid", "fd":5},
//	 "log":{"fd":7, "fallback_fd":6, "redirected":true, "command":"logger", "read_end":8, "pid":4321,
//	        "pidfd":12},
//	 "systemd":{"notify_socket":"/run/systemd/notify", "watchdog_usec":0, "fd_store":false,
//	            "ready_sent":true, "reloading":false, "upgrading":true,
//	            "summary":"generation 7 (pid 2001) serving"},
//	 "supervisor":{...see supervisor.State...},
//	 "pending":{"hup":false, "stop":""},
//	 "upgrade":{"seq":3},
//	 "control":{"path":"/run/x.pid.ctl", "fd":11, "owned_file":{"Dev":25, "Ino":999}}}
//
// Fields:
//   - format and version: a reader refuses another format, and a version
//     outside [MinStateVersion, StateVersion]. The version is raised only for
//     a change an older reader would misread; a reader ignores fields it does
//     not know, so additions keep it.
//   - writer: the ss-bridge version and pid that wrote the state.
//   - exe: the absolute path the server was first started from, where the
//     next upgrade finds its program.
//   - exe_fd: the descriptor of the program executed, and its file's
//     identity; the new image closes it if it is still open and that file.
//   - rollback: the old image's program, open, and its identity: a new
//     image that cannot resume executes it with the same state, and the old
//     program carries on (and reports the failure). Closed once resumed.
//   - sockets: the listening sockets in the order the workers get them:
//     their spec (activation.Spec), descriptor, whether systemd passed them,
//     and the identity of the unix socket file the server removes at exit.
//   - pid_file: the locked pid file; the lock belongs to the descriptor.
//   - log: --log-file: the descriptor our output goes to, the stderr we
//     started with, whether fds 1 and 2 point at the log, and for a command
//     the pipe's read end and the command's pid, and (optional, version 1)
//     a pidfd of that command, so that the new image watches that very
//     process even if it exited and its pid was reused meanwhile; 0 for
//     none. A reader that does not know it leaves the descriptor open.
//   - systemd: NOTIFY_SOCKET, WATCHDOG_USEC and FDSTORE, which the server
//     removed from its environment at start-up, and what it has told systemd.
//   - supervisor: the generations; see supervisor.State.
//   - pending: signals the old image had received but not acted on, which
//     the new image acts on: a HUP, and the name of a TERM, INT or QUIT.
//   - upgrade: the number of the last upgrade attempt, for the result file.
//   - control (optional, version 1): the control socket (see ControlPath):
//     its path, listening descriptor, and the identity of its file, which
//     the server removes at exit. A reader that does not know it leaves the
//     descriptor open and unserved, and the file in place.
//
// Every descriptor named is open in the new image without close-on-exec;
// the new image sets the flag again at once.
type State struct {
	Format     string           `json:"format"`
	Version    int              `json:"version"`
	Writer     WriterState      `json:"writer"`
	Exe        string           `json:"exe"`
	ExeFD      *ExeFDState      `json:"exe_fd,omitempty"`
	Rollback   *ExeFDState      `json:"rollback,omitempty"`
	Sockets    []SocketState    `json:"sockets"`
	PidFile    *PidFileState    `json:"pid_file,omitempty"`
	Log        *LogState        `json:"log,omitempty"`
	Systemd    SystemdState     `json:"systemd"`
	Supervisor supervisor.State `json:"supervisor"`
	Pending    PendingState     `json:"pending"`
	Upgrade    UpgradeState     `json:"upgrade"`
	Control    *ControlState    `json:"control,omitempty"`
}

// WriterState names the image that wrote a State.
type WriterState struct {
	Version string `json:"version"`
	PID     int    `json:"pid"`
}

// ExeFDState is the descriptor the new image was executed from, which
// stays open across the exec so that a script (a wrapper that execs the real
// binary) can read itself from /dev/fd. The new image closes it, if it is
// still that file.
type ExeFDState struct {
	FD   int               `json:"fd"`
	File activation.FileID `json:"file"`
}

// SocketState is a listening socket in a State.
type SocketState struct {
	Spec      activation.Spec    `json:"spec"`
	FD        int                `json:"fd"`
	Inherited bool               `json:"inherited"`
	OwnedFile *activation.FileID `json:"owned_file"`
}

// PidFileState is the locked pid file in a State.
type PidFileState struct {
	Path string `json:"path"`
	FD   int    `json:"fd"`
}

// LogState is --log-file in a State.
type LogState struct {
	FD         int    `json:"fd"`
	FallbackFD int    `json:"fallback_fd"`
	Redirected bool   `json:"redirected"`
	Command    string `json:"command,omitempty"`
	ReadEnd    int    `json:"read_end,omitempty"`
	PID        int    `json:"pid,omitempty"`
	PIDFD      int    `json:"pidfd,omitempty"`
}

// SystemdState is the link to systemd in a State.
type SystemdState struct {
	NotifySocket string `json:"notify_socket"`
	WatchdogUSec int64  `json:"watchdog_usec"`
	FDStore      bool   `json:"fd_store"`
	ReadySent    bool   `json:"ready_sent"`
	Reloading    bool   `json:"reloading"`
	Upgrading    bool   `json:"upgrading"`
	// Summary is the last STATUS= account of the generations, which the new
	// image repeats after its own status, so that the serving generation
	// stays readable there (units.ParseServing).
	Summary string `json:"summary,omitempty"`
}

// PendingState are the signals received and not yet acted on.
type PendingState struct {
	HUP  bool   `json:"hup"`
	Stop string `json:"stop"`
}

// UpgradeState is the self-upgrade's own state.
type UpgradeState struct {
	Seq int `json:"seq"`
	// Preflight is the candidate's preflight process if it had answered
	// but not yet exited at the exec: a child of this process, which the
	// new image reaps without reporting it.
	Preflight int `json:"preflight,omitempty"`
}

const stateFormat = "ss-bridge-state"

// The versions of State this ss-bridge reads; it writes StateVersion.
const (
	MinStateVersion = 1
	StateVersion    = 1
)

// maxState bounds the state a reader takes in.
const maxState = 16 << 20

// DecodeState reads a State and refuses one this ss-bridge cannot resume
// from.
func DecodeState(r io.Reader) (State, error) {
	var st State
	data, err := io.ReadAll(io.LimitReader(r, maxState+1))
	if err != nil {
		return st, fmt.Errorf("read state: %w", err)
	}
	if len(data) > maxState {
		return st, errors.New("state: larger than 16 MiB")
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("state: %w", err)
	}
	return st, st.check()
}

func (st State) check() error {
	switch {
	case st.Format != stateFormat:
		return fmt.Errorf("state: format %q, not %q", st.Format, stateFormat)
	case st.Version < MinStateVersion || st.Version > StateVersion:
		return fmt.Errorf("state version %d: this ss-bridge reads versions %d to %d", st.Version, MinStateVersion, StateVersion)
	case st.Exe == "":
		return errors.New("state: no executable")
	}
	seen := map[int]string{}
	name := func(fd int, what string) error {
		if fd < 0 {
			return fmt.Errorf("state: %s has descriptor %d", what, fd)
		}
		if other, ok := seen[fd]; ok {
			return fmt.Errorf("state: descriptor %d is both %s and %s", fd, other, what)
		}
		seen[fd] = what
		return nil
	}
	for _, s := range st.Sockets {
		if err := name(s.FD, "socket "+s.Spec.Key); err != nil {
			return err
		}
	}
	if p := st.PidFile; p != nil {
		if err := name(p.FD, "the pid file"); err != nil {
			return err
		}
	}
	if l := st.Log; l != nil {
		if err := name(l.FD, "the log"); err != nil {
			return err
		}
		if err := name(l.FallbackFD, "the first stderr"); err != nil {
			return err
		}
		if l.Command != "" {
			if err := name(l.ReadEnd, "the log pipe's read end"); err != nil {
				return err
			}
		}
		if l.PIDFD != 0 {
			if err := name(l.PIDFD, "the log command's pidfd"); err != nil {
				return err
			}
		}
	}
	if c := st.Control; c != nil {
		if err := name(c.FD, "the control socket"); err != nil {
			return err
		}
	}
	for _, fd := range st.Supervisor.FDs() {
		if err := name(fd, "a notify socket"); err != nil {
			return err
		}
	}
	return nil
}

// FDs lists the descriptors the state names.
func (st State) FDs() []int {
	var fds []int
	for _, s := range st.Sockets {
		fds = append(fds, s.FD)
	}
	if st.PidFile != nil {
		fds = append(fds, st.PidFile.FD)
	}
	if l := st.Log; l != nil {
		fds = append(fds, l.FD, l.FallbackFD)
		if l.Command != "" {
			fds = append(fds, l.ReadEnd)
		}
		if l.PIDFD != 0 {
			fds = append(fds, l.PIDFD)
		}
	}
	if st.Control != nil {
		fds = append(fds, st.Control.FD)
	}
	return append(fds, st.Supervisor.FDs()...)
}
