package main

// crowd rate: a fixed offered load (the "noisy neighbour" of
// tests/bench/bench_http.sh).
//
//	crowd rate -addr 127.0.0.1:5059 -path P [-method POST] -rate 2000 -d 5s [-conns 64]
//	    sends -rate requests per second for -d, spread evenly, over up to
//	    -conns keep-alive connections: a tick that finds every connection
//	    busy is counted as "late" and dropped (the load stays fixed; a
//	    stalled server does not slow the sender down). Prints the offered,
//	    sent, late and answered counts, the answers by status, p50 and p99.

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func cmdRate(args []string) {
	fs := flag.NewFlagSet("rate", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:5059", "server host:port (loopback)")
	path := fs.String("path", "/", "request path")
	method := fs.String("method", "GET", "GET or POST (an empty body)")
	rate := fs.Int("rate", 2000, "requests per second")
	dur := fs.Duration("d", 5*time.Second, "duration")
	conns := fs.Int("conns", 64, "keep-alive connections at most")
	fs.Parse(args)
	loopback(*addr)
	if *rate < 1 || *rate > 200000 || *conns < 1 || *conns > maxClients || *dur > maxDur {
		die("rate: -rate 1..200000, -conns 1..%d, -d <= %s", maxClients, maxDur)
	}
	if *method != "GET" && *method != "POST" {
		die("rate: -method GET or POST")
	}
	raiseNofile(uint64(*conns))
	req := []byte(*method + " " + *path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n")
	if *method == "POST" {
		req = append(req, "Content-Length: 0\r\n"...)
	}
	req = append(req, "\r\n"...)

	ticks := make(chan time.Time, *conns)
	var lat hist
	var sent, late, answered, failed atomic.Uint64
	var mu sync.Mutex
	statuses := map[int]uint64{}
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c net.Conn
			var br *bufio.Reader
			for t := range ticks {
				if c == nil {
					var err error
					if c, err = net.DialTimeout("tcp", *addr, 5*time.Second); err != nil {
						failed.Add(1)
						c = nil
						continue
					}
					br = bufio.NewReader(c)
				}
				sent.Add(1)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				_, err := c.Write(req)
				var status int
				if err == nil {
					status, err = readResponse(br)
				}
				if status != 0 {
					lat.add(time.Since(t))
					answered.Add(1)
					mu.Lock()
					statuses[status]++
					mu.Unlock()
				} else {
					failed.Add(1)
				}
				if err != nil {
					c.Close()
					c = nil
				}
			}
			if c != nil {
				c.Close()
			}
		}()
	}
	start := time.Now()
	every := time.Second / time.Duration(*rate)
	offered := uint64(0)
	for next := start; time.Since(start) < *dur; next = next.Add(every) {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		offered++
		select {
		case ticks <- next:
		default:
			late.Add(1)
		}
	}
	close(ticks)
	wg.Wait()
	el := time.Since(start).Seconds()
	var keys []int
	for k := range statuses {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, " status_%d=%d", k, statuses[k])
	}
	fmt.Printf("rate offered=%d sent=%d late=%d answered=%d failed=%d answered_per_s=%.0f p50_ms=%.2f p99_ms=%.2f%s\n",
		offered, sent.Load(), late.Load(), answered.Load(), failed.Load(), float64(answered.Load())/el,
		lat.quantile(0.50), lat.quantile(0.99), sb.String())
}
