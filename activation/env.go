package activation

import (
	"fmt"
	"strconv"
	"strings"
)

// AssignWorkerFDs gives every socket the descriptor its workers receive it on.
// A socket pinned with "=FD" keeps FD; the others take the lowest free numbers
// from 3 upwards, in order, which is what 0.35 gives in practice ("8080=3;
// /tmp/app.sock=4"). Two sockets pinned to one descriptor are an error.
func AssignWorkerFDs(socks []Socket) error {
	taken := map[int]string{}
	for _, s := range socks {
		if !s.Pinned {
			continue
		}
		if other, ok := taken[s.Spec.WorkerFD]; ok {
			return fmt.Errorf("%s and %s are both pinned to descriptor %d", other, s.Key, s.Spec.WorkerFD)
		}
		taken[s.Spec.WorkerFD] = s.Key
	}
	next := 3
	for i := range socks {
		if socks[i].Pinned {
			continue
		}
		for taken[next] != "" {
			next++
		}
		socks[i].Spec.WorkerFD = next
		taken[next] = socks[i].Key
	}
	return nil
}

// PortEnv returns the SERVER_STARTER_PORT value: KEY=FD entries joined by ';',
// in the order of socks, with each socket's worker descriptor.
func PortEnv(socks []Socket) string {
	entries := make([]string, len(socks))
	for i, s := range socks {
		entries[i] = s.Key + "=" + strconv.Itoa(s.Spec.WorkerFD)
	}
	return strings.Join(entries, ";")
}

// Files returns the descriptor table of a worker, for syscall.ProcAttr.Files:
// entry i is the descriptor of this process that the worker gets as i. The
// standard descriptors are passed through unless a socket is pinned there;
// gaps are -1, which closes that number in the worker.
func Files(socks []Socket) []uintptr {
	n := 3
	for _, s := range socks {
		if s.Spec.WorkerFD+1 > n {
			n = s.Spec.WorkerFD + 1
		}
	}
	files := make([]uintptr, n)
	for i := range files {
		files[i] = ^uintptr(0)
	}
	files[0], files[1], files[2] = 0, 1, 2
	for _, s := range socks {
		files[s.Spec.WorkerFD] = uintptr(s.FD)
	}
	return files
}
