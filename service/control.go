package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ss-bridge/ss-bridge/activation"
	"github.com/ss-bridge/ss-bridge/supervisor"
	"golang.org/x/sys/unix"
)

// The control socket lets an operator ask a running server for its live
// state and change its pool's size (ss-bridge status, ss-bridge scale). It is
// a unix stream socket of mode 0600 at ControlPath: PIDFILE.ctl beside the
// pid file, or else $RUNTIME_DIRECTORY/ss-bridge.ctl (under systemd with
// RuntimeDirectory=); a server with neither has none. At start a socket file
// in use there is an error and a stale one is replaced, as for --path; a
// symlink or any other file is refused, never followed. It is removed at
// exit and carried across a self-upgrade.
//
// Protocol: one request per connection, one JSON object of at most
// MaxControlRequest bytes, then one JSON object in reply, after which the
// server closes the connection:
//
//	{"command":"status"}
//	    -> {"ok":true, "pid":1234, "version":"0.1.0", "view":{...supervisor.View...},
//	        "upgrade":{...Result of the last self-upgrade attempt, seq 0 for none...}}
//	{"command":"scale", "workers":8}
//	    -> {"ok":true, "pid":1234, "version":"0.1.0", "view":{...}}   (the count is set;
//	       the new workers may still be starting: poll status until view.serving is 8)
//	anything refused -> {"ok":false, "error":"one line"}
//
// A request is served only for a peer (SO_PEERCRED) of the server's uid or
// root. A connection is given ControlTimeout in all, to send its request
// and take its reply: a client that connects and sends nothing holds one of
// maxControlConns connections for that long and nothing else; the request
// itself is answered on the supervisor's loop, where its state lives.
const (
	ControlSocketName = "ss-bridge.ctl"
	MaxControlRequest = 4096
	ControlTimeout    = 5 * time.Second
	maxControlConns   = 16
)

// ControlPath is where the server with pid file pidFile (or, without one,
// running with runtimeDir as $RUNTIME_DIRECTORY) has its control socket; ""
// for none.
func ControlPath(pidFile, runtimeDir string) string {
	if pidFile != "" {
		return pidFile + ".ctl"
	}
	// systemd joins several RuntimeDirectory= with colons.
	if dir, _, _ := strings.Cut(runtimeDir, ":"); dir != "" && filepath.IsAbs(dir) {
		return filepath.Join(dir, ControlSocketName)
	}
	return ""
}

// ControlRequest is a request on the control socket.
type ControlRequest struct {
	Command string `json:"command"`
	Workers int    `json:"workers,omitempty"`
}

// ControlReply is the answer to a ControlRequest.
type ControlReply struct {
	OK      bool             `json:"ok"`
	Error   string           `json:"error,omitempty"`
	PID     int              `json:"pid,omitempty"`
	Version string           `json:"version,omitempty"`
	View    *supervisor.View `json:"view,omitempty"`
	// Upgrade, in a status reply, is the outcome of the last self-upgrade
	// attempt (Seq 0: none yet); absent from an ss-bridge too old to say.
	Upgrade *Result `json:"upgrade,omitempty"`
}

// ControlState is the control socket in a State.
type ControlState struct {
	Path      string             `json:"path"`
	FD        int                `json:"fd"`
	OwnedFile *activation.FileID `json:"owned_file,omitempty"`
}

// control is the server's control socket.
type control struct {
	sock activation.Socket
	ln   net.Listener // on a duplicate of sock.FD
}

// openControl binds the control socket at path, by --path's rules, with
// mode 0600.
func openControl(path string) (*control, error) {
	spec := activation.Spec{Key: path, Network: activation.Unix, Path: path, WorkerFD: -1}
	var warnings strings.Builder
	socks, err := activation.Open([]activation.Spec{spec}, nil, activation.Options{Backlog: maxControlConns, PathMode: 0o600, Warn: &warnings})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	fmt.Fprint(os.Stderr, warnings.String())
	return &control{sock: socks[0]}, nil
}

// adoptControl takes over the control socket an earlier image passed.
func adoptControl(st *ControlState) *control {
	c := &control{sock: activation.Socket{Spec: activation.Spec{Key: st.Path, Network: activation.Unix, Path: st.Path, WorkerFD: -1}, FD: st.FD}}
	if st.OwnedFile != nil {
		c.sock.AdoptFile(*st.OwnedFile)
	}
	return c
}

func (c *control) state() *ControlState {
	if c == nil {
		return nil
	}
	st := &ControlState{Path: c.sock.Path, FD: c.sock.FD}
	if id, ok := c.sock.OwnedFile(); ok {
		st.OwnedFile = &id
	}
	return st
}

// close stops serving and removes the socket file.
func (c *control) close() {
	if c == nil {
		return
	}
	if c.ln != nil {
		c.ln.Close()
	}
	c.sock.Close()
}

// serveControl accepts requests until the server stops. The listener is a
// duplicate, close-on-exec, so that the descriptor the State names is never
// in the runtime's poller and an exec leaves it as it was.
func (srv *server) serveControl() {
	c := srv.ctl
	if c == nil {
		return
	}
	fd, err := unix.FcntlInt(uintptr(c.sock.FD), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		fmt.Fprintf(os.Stderr, "control socket %s: dup: %v\n", c.sock.Path, err)
		return
	}
	f := os.NewFile(uintptr(fd), c.sock.Path)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "control socket %s: %v\n", c.sock.Path, err)
		return
	}
	c.ln = ln
	slots := make(chan struct{}, maxControlConns)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return // closed at exit
				}
				// Out of descriptors, say: the socket must keep serving
				// once they are back, not be dead while still bound.
				time.Sleep(100 * time.Millisecond)
				continue
			}
			// Refused at once, a stranger holds nothing; the reply is a
			// few bytes, which the socket's buffer takes without waiting.
			refuse := func(why string) {
				conn.SetDeadline(time.Now().Add(time.Second))
				json.NewEncoder(conn).Encode(ControlReply{Error: why})
				conn.Close()
			}
			if err := authorize(conn.(*net.UnixConn)); err != nil {
				refuse(err.Error())
				continue
			}
			select {
			case slots <- struct{}{}:
			default:
				// Every slot is held by a slow client: refuse rather than
				// queue behind them.
				refuse("too many control connections; try again")
				continue
			}
			go func() {
				defer func() { <-slots }()
				srv.serveConn(conn.(*net.UnixConn))
			}()
		}
	}()
}

func (srv *server) serveConn(conn *net.UnixConn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(ControlTimeout))
	reply := func(r ControlReply) {
		if r.OK {
			r.PID, r.Version = os.Getpid(), srv.c.Version
		}
		json.NewEncoder(conn).Encode(r)
	}
	var req ControlRequest
	dec := json.NewDecoder(io.LimitReader(conn, MaxControlRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		reply(ControlReply{Error: fmt.Sprintf("bad request: %v", err)})
		return
	}
	var r ControlReply
	switch req.Command {
	case "status":
		r = srv.onLoop(func() ControlReply {
			v := srv.sup.View()
			return ControlReply{OK: true, View: &v, Upgrade: srv.lastResult()}
		})
	case "scale":
		r = srv.onLoop(func() ControlReply {
			if err := srv.sup.SetWorkers(req.Workers); err != nil {
				return ControlReply{Error: err.Error()}
			}
			v := srv.sup.View()
			return ControlReply{OK: true, View: &v}
		})
	default:
		r = ControlReply{Error: fmt.Sprintf("unknown command %q (status, scale)", req.Command)}
	}
	reply(r)
}

// onLoop runs f on the supervisor's loop and returns its reply, or an error
// when the loop has returned.
func (srv *server) onLoop(f func() ControlReply) ControlReply {
	out := make(chan ControlReply, 1)
	select {
	case srv.tasks <- func() { out <- f() }:
	case <-srv.done:
		return ControlReply{Error: "the server is exiting"}
	}
	select {
	case r := <-out:
		return r
	case <-srv.done:
		return ControlReply{Error: "the server is exiting"}
	}
}

// authorize admits a peer of our uid, or root.
func authorize(conn *net.UnixConn) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return fmt.Errorf("peer credentials: %w", credErr)
	}
	if uid := os.Getuid(); cred.Uid != 0 && int(cred.Uid) != uid {
		return fmt.Errorf("permission denied: uid %d may not control a server of uid %d", cred.Uid, uid)
	}
	return nil
}

// AskControl sends req to the control socket at path and returns the reply;
// a refused request is an error with the server's reason.
func AskControl(path string, req ControlRequest, timeout time.Duration) (ControlReply, error) {
	var r ControlReply
	conn, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return r, fmt.Errorf("control socket: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	// A peer refused by its credentials gets the reason at once, and the
	// request may then fail to go: the reason is what to report.
	sendErr := json.NewEncoder(conn).Encode(req)
	if err := json.NewDecoder(io.LimitReader(conn, 64<<20)).Decode(&r); err != nil {
		if sendErr != nil {
			return r, fmt.Errorf("control socket %s: send: %w", path, sendErr)
		}
		return r, fmt.Errorf("control socket %s: reply: %w", path, err)
	}
	if !r.OK {
		return r, errors.New(r.Error)
	}
	return r, nil
}
