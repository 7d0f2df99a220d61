package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/testkit"
)

// Kind classifies the outcome of one request.
type Kind uint8

const (
	OK        Kind = iota
	Refused        // connect: ECONNREFUSED
	Reset          // ECONNRESET or EPIPE
	EOF            // the connection closed before a complete response
	Timeout        // no complete response within the timeout
	BadStatus      // a response that is not 200 with a "pid=N gen=G" body
	Other          // any other error
	nKinds
)

var kindNames = [nKinds]string{"ok", "refused", "reset", "EOF", "timeout", "bad status", "other"}

func (k Kind) String() string { return kindNames[k] }

// Sample is one request: when it started and ended (since the load's start),
// its outcome and, for a success, who answered it.
type Sample struct {
	Start, End time.Duration
	Kind       Kind
	// Reused: sent on a keep-alive connection that had answered before.
	Reused bool
	// Unanswered: the failure came before any byte of a response.
	Unanswered bool
	Gen, PID   int32
}

// LoadConfig says how to load a server.
type LoadConfig struct {
	Addr      string        // host:port; the benchmark only ever uses 127.0.0.1
	Conns     int           // concurrent connections (clients)
	Rate      float64       // total requests per second; 0: as fast as answered
	KeepAlive bool          // reuse connections; else one connection per request
	Timeout   time.Duration // per request (connect included)
	Max       time.Duration // the load stops by itself after this long
}

// Load is a running load: Conns clients, each sending one raw HTTP/1.1 GET at
// a time, paced to Rate, with no retries: every failure is counted.
type Load struct {
	cfg     LoadConfig
	base    time.Time
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples []Sample
	once    sync.Once
}

// StartLoad starts the clients.
func StartLoad(cfg LoadConfig) *Load {
	if cfg.Conns <= 0 {
		cfg.Conns = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Max <= 0 {
		cfg.Max = 10 * time.Minute
	}
	l := &Load{cfg: cfg, base: time.Now(), stop: make(chan struct{})}
	for i := 0; i < cfg.Conns; i++ {
		l.wg.Add(1)
		go l.client(i)
	}
	return l
}

// Since converts a time to the load's clock.
func (l *Load) Since(t time.Time) time.Duration { return t.Sub(l.base) }

// Stop stops the clients, waits for their requests in flight and returns
// every sample, ordered by end.
func (l *Load) Stop() []Sample {
	l.once.Do(func() { close(l.stop) })
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	sort.Slice(l.samples, func(i, j int) bool { return l.samples[i].End < l.samples[j].End })
	return l.samples
}

// Snapshot returns the samples so far, unordered.
func (l *Load) Snapshot() []Sample {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Sample(nil), l.samples...)
}

func (l *Load) client(i int) {
	defer l.wg.Done()
	var interval time.Duration
	if l.cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(l.cfg.Conns) / l.cfg.Rate)
	}
	// Spread the clients' phases over one interval.
	next := time.Now().Add(interval * time.Duration(i) / time.Duration(l.cfg.Conns))
	end := l.base.Add(l.cfg.Max)
	var c *rawConn
	local := make([]Sample, 0, 1024)
	defer func() {
		if c != nil {
			c.Close()
		}
		l.mu.Lock()
		l.samples = append(l.samples, local...)
		l.mu.Unlock()
	}()
	for {
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				select {
				case <-l.stop:
					return
				case <-time.After(d):
				}
			}
			next = next.Add(interval)
			if now := time.Now(); next.Before(now) {
				next = now // no burst to catch up after a stall
			}
		}
		select {
		case <-l.stop:
			return
		default:
		}
		if time.Now().After(end) {
			return
		}
		var s Sample
		c, s = l.request(c)
		local = append(local, s)
	}
}

// request sends one request on c (or a new connection) and returns the
// connection to use next (nil: make a new one) and the sample.
func (l *Load) request(c *rawConn) (*rawConn, Sample) {
	start := time.Now()
	s := Sample{Start: l.Since(start)}
	deadline := start.Add(l.cfg.Timeout)
	fail := func(err error) (*rawConn, Sample) {
		s.End = l.Since(time.Now())
		s.Kind = classify(err)
		s.Unanswered = c == nil || c.got == 0
		if c != nil {
			c.Close()
		}
		return nil, s
	}
	if c == nil {
		conn, err := net.DialTimeout("tcp", l.cfg.Addr, l.cfg.Timeout)
		if err != nil {
			return fail(err)
		}
		c = &rawConn{Conn: conn, r: bufio.NewReaderSize(conn, 4096)}
	} else {
		s.Reused = true
	}
	c.SetDeadline(deadline)
	c.got = 0
	req := "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
	if !l.cfg.KeepAlive {
		req = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
	}
	if _, err := io.WriteString(c, req); err != nil {
		return fail(err)
	}
	status, body, keep, err := c.readResponse()
	if err != nil {
		return fail(err)
	}
	s.End = l.Since(time.Now())
	pid, gen, err := testkit.ParseAnswer(body)
	if status != 200 || err != nil {
		s.Kind = BadStatus
		c.Close()
		return nil, s
	}
	s.PID, s.Gen = int32(pid), int32(gen)
	if !l.cfg.KeepAlive || !keep {
		c.Close()
		return nil, s
	}
	return c, s
}

type rawConn struct {
	net.Conn
	r   *bufio.Reader
	got int // bytes of the current response read
}

var errBadResponse = errors.New("malformed response")

// readResponse reads one HTTP/1.1 response with a Content-Length body, and
// says whether the connection may be reused.
func (c *rawConn) readResponse() (status int, body string, keep bool, err error) {
	c.got = 0
	line, err := c.r.ReadString('\n')
	c.got = len(line)
	if err != nil {
		if err == io.EOF && line != "" {
			err = io.ErrUnexpectedEOF
		}
		return 0, "", false, err
	}
	f := strings.Fields(line)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/1.") {
		return 0, "", false, errBadResponse
	}
	status, _ = strconv.Atoi(f[1])
	length := -1
	keep = true
	for {
		h, err := c.r.ReadString('\n')
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, "", false, err
		}
		h = strings.TrimRight(h, "\r\n")
		if h == "" {
			break
		}
		name, value, _ := strings.Cut(h, ":")
		value = strings.TrimSpace(value)
		switch strings.ToLower(name) {
		case "content-length":
			length, _ = strconv.Atoi(value)
		case "connection":
			if strings.EqualFold(value, "close") {
				keep = false
			}
		}
	}
	if length < 0 || length > 1<<20 {
		return status, "", false, errBadResponse
	}
	b := make([]byte, length)
	if _, err := io.ReadFull(c.r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, "", false, err
	}
	return status, string(b), keep, nil
}

func classify(err error) Kind {
	var ne net.Error
	switch {
	case err == nil:
		return OK
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return Reset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return EOF
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return Timeout
	case errors.Is(err, errBadResponse):
		return BadStatus
	}
	return Other
}

// Counts is the number of requests of every kind.
type Counts struct {
	N [nKinds]int
	// IdleClosed counts the failures of requests sent on a reused keep-alive
	// connection that the server closed without answering: what a worker's
	// drain does to a request in flight on a connection it sees as idle.
	IdleClosed int
}

func count(samples []Sample) Counts {
	var c Counts
	for _, s := range samples {
		c.N[s.Kind]++
		if s.Kind != OK && s.Reused && s.Unanswered {
			c.IdleClosed++
		}
	}
	return c
}

// Failed is the number of requests that did not succeed.
func (c Counts) Failed() int {
	n := 0
	for k := Refused; k < nKinds; k++ {
		n += c.N[k]
	}
	return n
}

func (c Counts) String() string {
	var parts []string
	for k := Refused; k < nKinds; k++ {
		if c.N[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.N[k], k))
		}
	}
	if c.IdleClosed > 0 {
		parts = append(parts, fmt.Sprintf("%d of them unanswered on a reused keep-alive connection", c.IdleClosed))
	}
	if len(parts) == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%s)", c.Failed(), strings.Join(parts, ", "))
}

// firstFrom returns the end of the first success from a generation above gen
// that ended after t.
func firstFrom(samples []Sample, gen int, t time.Duration) (time.Duration, bool) {
	for _, s := range samples {
		if s.Kind == OK && int(s.Gen) > gen && s.End >= t {
			return s.End, true
		}
	}
	return 0, false
}

// maxGap returns the longest stretch in [from, to] without a successful
// response ending (samples ordered by end).
func maxGap(samples []Sample, from, to time.Duration) time.Duration {
	last := from
	var gap time.Duration
	for _, s := range samples {
		if s.Kind != OK || s.End < from {
			continue
		}
		if s.End > to {
			break
		}
		gap = max(gap, s.End-last)
		last = s.End
	}
	return max(gap, to-last)
}

// latencies returns the sorted latencies of the successes in [from, to).
func latencies(samples []Sample, from, to time.Duration) []time.Duration {
	var out []time.Duration
	for _, s := range samples {
		if s.Kind == OK && s.Start >= from && s.End < to {
			out = append(out, s.End-s.Start)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
