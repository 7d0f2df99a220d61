package listener

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestServeHTTPAnswersConnectionsAcceptedBeforeTheDrain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 1)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(50 * time.Millisecond)
			fmt.Fprint(w, "answered")
		}),
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateNew {
				accepted <- struct{}{}
			}
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeHTTP(ctx, srv, []net.Listener{ln}, 5*time.Second) }()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	<-accepted
	// The drain starts after the connection was accepted and before its
	// request arrives: http.Server.Shutdown would close it unanswered.
	cancel()
	time.Sleep(50 * time.Millisecond)
	fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("request on a connection accepted before the drain: %v", err)
	}
	var body strings.Builder
	bufio.NewReader(resp.Body).WriteTo(&body)
	if resp.StatusCode != 200 || body.String() != "answered" || !resp.Close {
		t.Fatalf("got %d %q (close %v), want 200 \"answered\" with Connection: close", resp.StatusCode, body.String(), resp.Close)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Fatal("the listener still accepts after the drain")
	}
}

func TestServeHTTPDrainTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeHTTP(ctx, srv, []net.Listener{ln}, 100*time.Millisecond) }()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(20 * time.Millisecond)
	cancel() // the connection never sends a request
	if err := <-done; err == nil || !strings.Contains(err.Error(), "1 connections still open") {
		t.Fatalf("got %v, want the drain timeout", err)
	}
}

func TestServeHTTPAnswersKeepAliveRequestsDuringTheGrace(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeHTTP(ctx, srv, []net.Listener{ln}, 5*time.Second) }()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	ask := func() (*http.Response, error) {
		fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(r, nil)
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
	if resp, err := ask(); err != nil || resp.Close {
		t.Fatalf("first request: %v (close %v)", err, resp != nil && resp.Close)
	}
	// The connection is idle in keep-alive when the drain begins; the
	// client's next request must still be answered, and told to go.
	cancel()
	time.Sleep(KeepAliveGrace / 4)
	resp, err := ask()
	if err != nil || resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("request on an idle keep-alive connection during the drain: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
