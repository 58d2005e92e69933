// go_client: the clients of incidents 000 and 001 as Go programs, built
// static (CGO_ENABLED=0) so that no preload can reach them: Go's net package
// makes its socket calls as raw system calls, and a static binary has no
// dynamic loader to honour LD_PRELOAD. `tcpfix attach` reaches them from
// the kernel. The integration tests build it (tests/integration/attach_env.py).
//
// usage:
//
//	go_client probe HOST PORT COUNT INTERVAL_MS [TIMEOUT_MS]
//	    incident 000's prober: dial (net.DialTimeout, 2 s by default), close, wait
//	go_client latency HOST PORT COUNT CONCURRENCY [TIMEOUT_MS]
//	    COUNT dials from CONCURRENCY goroutines, each closed at once: the
//	    connect latency distribution (p50, p99, p99.9, max)
//	go_client leak HOST PORT DURATION_MS INTERVAL_MS [LINGER_MS]
//	    incident 001's reconnect loop: dial, never read, never close (the
//	    connections are kept referenced, so the garbage collector does not
//	    close them either), wait, again; then stay LINGER_MS more, still
//	    holding them, before printing and exiting
//	go_client hold HOST PORT MAX
//	    open connections and keep them, until MAX or the first failure
//	go_client churn HOST PORT DURATION_MS [INTERVAL_MS]
//	    short connections: dial, write "ping\n", close, wait INTERVAL_MS (0)
//
// With LOCAL_ADDR=IP in the environment every dial binds to that address
// first (port 0), as a client configured with a source address does.
//
// Every mode prints one JSON object on its last line of stdout: counts, the
// errno names of failures, connect latencies (ms) where measured, and the
// local addresses used. Exit status 0 whatever the connects did; 64 on a
// usage error.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

type result struct {
	Mode          string         `json:"mode"`
	OK            int            `json:"ok"`
	EADDRNOTAVAIL int            `json:"eaddrnotavail"`
	Other         int            `json:"other"`
	Errors        map[string]int `json:"errors"`
	Sources       map[string]int `json:"sources"`
	LatenciesMs   []float64      `json:"latencies_ms,omitempty"`
	P50Ms         float64        `json:"p50_ms"`
	P99Ms         float64        `json:"p99_ms"`
	P999Ms        float64        `json:"p999_ms"`
	MaxMs         float64        `json:"max_ms"`
	ElapsedMs     float64        `json:"elapsed_ms"`
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go_client probe HOST PORT COUNT INTERVAL_MS [TIMEOUT_MS]\n"+
		"       go_client latency HOST PORT COUNT CONCURRENCY [TIMEOUT_MS]\n"+
		"       go_client leak HOST PORT DURATION_MS INTERVAL_MS [LINGER_MS]\n"+
		"       go_client hold HOST PORT MAX\n"+
		"       go_client churn HOST PORT DURATION_MS [INTERVAL_MS]")
	os.Exit(64)
}

func number(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		fmt.Fprintf(os.Stderr, "go_client: not a number: %q\n", s)
		os.Exit(64)
	}
	return n
}

var errnoNames = map[syscall.Errno]string{
	syscall.EADDRNOTAVAIL: "EADDRNOTAVAIL", syscall.ECONNREFUSED: "ECONNREFUSED",
	syscall.ETIMEDOUT: "ETIMEDOUT", syscall.ECONNRESET: "ECONNRESET",
	syscall.ECONNABORTED: "ECONNABORTED", syscall.EPIPE: "EPIPE", syscall.EPERM: "EPERM",
	syscall.EMFILE: "EMFILE", syscall.EADDRINUSE: "EADDRINUSE",
}

func errName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if name, ok := errnoNames[errno]; ok {
			return name
		}
		return fmt.Sprintf("E%d", int(errno))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "other"
}

var dialer = net.Dialer{}

func dial(addr string, timeout time.Duration) (net.Conn, error) {
	d := dialer
	d.Timeout = timeout
	return d.Dial("tcp", addr)
}

func (r *result) failed(err error) {
	name := errName(err)
	r.Errors[name]++
	if name == "EADDRNOTAVAIL" {
		r.EADDRNOTAVAIL++
	} else {
		r.Other++
	}
}

func (r *result) connected(c net.Conn, started time.Time) {
	r.OK++
	r.LatenciesMs = append(r.LatenciesMs, float64(time.Since(started).Microseconds())/1000)
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		r.Sources[a.IP.String()]++
	}
}

func (r *result) finish(started time.Time, keepLatencies bool) {
	r.ElapsedMs = float64(time.Since(started).Milliseconds())
	if n := len(r.LatenciesMs); n > 0 {
		sorted := append([]float64(nil), r.LatenciesMs...)
		sort.Float64s(sorted)
		rank := func(f float64) float64 { // nearest rank
			i := int(f*float64(n)+0.999999) - 1
			if i < 0 {
				i = 0
			}
			return sorted[i]
		}
		r.P50Ms, r.P99Ms, r.P999Ms, r.MaxMs = rank(0.50), rank(0.99), rank(0.999), sorted[n-1]
	}
	if !keepLatencies {
		r.LatenciesMs = nil
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) < 5 {
		usage()
	}
	mode, addr := os.Args[1], net.JoinHostPort(os.Args[2], os.Args[3])
	if local := os.Getenv("LOCAL_ADDR"); local != "" {
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	r := &result{Mode: mode, Errors: map[string]int{}, Sources: map[string]int{}}
	started := time.Now()
	switch mode {
	case "probe":
		if len(os.Args) < 6 || len(os.Args) > 7 {
			usage()
		}
		count, interval := number(os.Args[4]), time.Duration(number(os.Args[5]))*time.Millisecond
		timeout := 2 * time.Second
		if len(os.Args) == 7 {
			timeout = time.Duration(number(os.Args[6])) * time.Millisecond
		}
		for i := 0; i < count; i++ {
			if i > 0 && interval > 0 {
				time.Sleep(interval)
			}
			t := time.Now()
			c, err := dial(addr, timeout)
			if err != nil {
				r.failed(err)
				continue
			}
			r.connected(c, t)
			c.Close()
		}
		r.finish(started, true)
	case "latency":
		if len(os.Args) < 6 || len(os.Args) > 7 {
			usage()
		}
		count, workers := number(os.Args[4]), number(os.Args[5])
		timeout := 10 * time.Second
		if len(os.Args) == 7 {
			timeout = time.Duration(number(os.Args[6])) * time.Millisecond
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		next := 0
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					mu.Lock()
					if next == count {
						mu.Unlock()
						return
					}
					next++
					mu.Unlock()
					t := time.Now()
					c, err := dial(addr, timeout)
					mu.Lock()
					if err != nil {
						r.failed(err)
					} else {
						r.connected(c, t)
					}
					mu.Unlock()
					if err == nil {
						c.Close()
					}
				}
			}()
		}
		wg.Wait()
		r.finish(started, count <= 1000)
	case "leak":
		if len(os.Args) < 6 || len(os.Args) > 7 {
			usage()
		}
		linger := time.Duration(0)
		if len(os.Args) == 7 {
			linger = time.Duration(number(os.Args[6])) * time.Millisecond
		}
		duration := time.Duration(number(os.Args[4])) * time.Millisecond
		interval := time.Duration(number(os.Args[5])) * time.Millisecond
		var kept []net.Conn // never closed, never collected
		for time.Since(started) < duration {
			t := time.Now()
			c, err := dial(addr, 2*time.Second)
			if err != nil {
				r.failed(err)
			} else {
				r.connected(c, t)
				kept = append(kept, c)
			}
			time.Sleep(interval)
		}
		time.Sleep(linger)
		r.finish(started, false)
		runtime.KeepAlive(kept)
	case "hold":
		if len(os.Args) != 5 {
			usage()
		}
		max := number(os.Args[4])
		var kept []net.Conn
		for len(kept) < max {
			t := time.Now()
			c, err := dial(addr, 2*time.Second)
			if err != nil {
				r.failed(err)
				break
			}
			r.connected(c, t)
			kept = append(kept, c)
		}
		r.finish(started, false)
		runtime.KeepAlive(kept)
	case "churn":
		if len(os.Args) < 5 || len(os.Args) > 6 {
			usage()
		}
		duration := time.Duration(number(os.Args[4])) * time.Millisecond
		interval := time.Duration(0)
		if len(os.Args) == 6 {
			interval = time.Duration(number(os.Args[5])) * time.Millisecond
		}
		for time.Since(started) < duration {
			if r.OK+r.Other+r.EADDRNOTAVAIL > 0 && interval > 0 {
				time.Sleep(interval)
			}
			t := time.Now()
			c, err := dial(addr, 2*time.Second)
			if err != nil {
				r.failed(err)
				time.Sleep(time.Millisecond)
				continue
			}
			r.connected(c, t)
			if _, err := c.Write([]byte("ping\n")); err != nil {
				r.Errors["write "+errName(err)]++
			}
			c.Close()
		}
		r.finish(started, false)
	default:
		usage()
	}
}
