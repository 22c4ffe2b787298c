// crowd: the flash-sale crowd against a demo server on loopback
// (make bench-crowd, tests/bench/bench_crowd.sh; docs/benchmarks.md "Crowd").
//
//	crowd clients -addr 127.0.0.1:5059 -n 10000 -d 8s [-path P]
//	    N keep-alive clients, each its own TCP connection, all opened at
//	    once (epoll.go: one loop per CPU); each sends its first request as
//	    soon as it is connected and loops GET P for D. Per client: time
//	    from its connect to its first answer (and the parts: connected,
//	    first request sent, waiting for the answer), answers, errors. A
//	    client whose connection is closed (Connection: close, EOF)
//	    reconnects and goes on, as a browser would.
//	crowd idle -addr 127.0.0.1:5059 -silent 1000 -slow 1000 [-samples 20]
//	    A fresh buyer's latency (new connection, one GET, close) with
//	    nothing else open, then while S connections send nothing and S send
//	    a header byte every -slow-every (500 ms) and never finish.
//
// Output: one line of key=value pairs per measurement (the script parses
// it), times in milliseconds. Loopback only, bounded in count and time;
// raises its own RLIMIT_NOFILE to the hard limit.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"math/bits"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	maxClients = 20000
	maxIdle    = 5000
	maxDur     = 120 * time.Second
)

func die(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "crowd: "+format+"\n", a...)
	os.Exit(2)
}

// loopback refuses any address that is not on this machine's loopback.
func loopback(addr string) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		die("bad -addr %q: %v", addr, err)
	}
	if host == "localhost" {
		return
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		die("-addr %q: loopback only", addr)
	}
}

// raiseNofile lifts the soft RLIMIT_NOFILE to the hard one and checks that
// @need descriptors fit.
func raiseNofile(need uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		die("getrlimit: %v", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			die("setrlimit: %v", err)
		}
	}
	if need+64 > rl.Cur {
		die("need %d file descriptors, RLIMIT_NOFILE is %d (raise the hard limit)", need+64, rl.Cur)
	}
}

func request(path string, extra string) []byte {
	return []byte("GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + "\r\n")
}

var errClose = errors.New("server closed the connection after this answer")

// readResponse reads one response; errClose when it said "Connection: close".
func readResponse(br *bufio.Reader) (status int, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 || string(line[:5]) != "HTTP/" {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	clen, closing := -1, false
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(h) <= 2 {
			break
		}
		s := string(h)
		colon := strings.IndexByte(s, ':')
		if colon < 0 {
			continue
		}
		name, val := s[:colon], strings.TrimSpace(s[colon+1:])
		switch {
		case strings.EqualFold(name, "Content-Length"):
			if clen, err = strconv.Atoi(val); err != nil {
				return 0, fmt.Errorf("bad Content-Length %q", val)
			}
		case strings.EqualFold(name, "Connection"):
			closing = strings.EqualFold(val, "close")
		}
	}
	if clen < 0 {
		return 0, fmt.Errorf("response without Content-Length")
	}
	if _, err := br.Discard(clen); err != nil {
		return 0, err
	}
	if closing {
		return status, errClose
	}
	return status, nil
}

// hist: log-linear latency histogram in microseconds (8 steps per power of two).
type hist [64 * 8]atomic.Uint64

func bucket(us uint64) int {
	if us < 8 {
		return int(us)
	}
	b := bits.Len64(us) - 1 // us in [2^b, 2^(b+1))
	return b*8 + int((us>>(b-3))&7)
}

func bucketValue(i int) uint64 { // upper bound of bucket i
	if i < 8 {
		return uint64(i)
	}
	b, m := i/8, uint64(i%8)
	return (8 + m + 1) << (b - 3)
}

func (h *hist) add(d time.Duration) { h[bucket(uint64(d.Microseconds()))].Add(1) }

func (h *hist) quantile(q float64) float64 {
	var total uint64
	for i := range h {
		total += h[i].Load()
	}
	if total == 0 {
		return 0
	}
	want := uint64(q*float64(total) + 0.5)
	if want < 1 {
		want = 1
	}
	var seen uint64
	for i := range h {
		seen += h[i].Load()
		if seen >= want {
			return float64(bucketValue(i)) / 1000
		}
	}
	return 0
}

type client struct {
	start      time.Time     // its first connect began
	dial       time.Duration // first connection established, since its start
	first      time.Duration // first answer, since its start; 0: none
	sent       time.Duration // first request written, since its start
	count      uint64
	non200     uint64
	errors     uint64
	reconnects uint64
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// sale: the run's clock (the crowd arrives at start).
type sale struct {
	start, end time.Time
}

func percentileDur(v []time.Duration, q float64) time.Duration {
	if len(v) == 0 {
		return 0
	}
	i := int(q*float64(len(v))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(v) {
		i = len(v) - 1
	}
	return v[i]
}

func cmdClients(args []string) {
	fs := flag.NewFlagSet("clients", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:5059", "server host:port (loopback)")
	n := fs.Int("n", 64, "concurrent keep-alive clients")
	dur := fs.Duration("d", 5*time.Second, "duration of the requests, once all are connected")
	path := fs.String("path", "/api/v1/OneStock/Cache/Atomic/Peek", "request path (GET)")
	fs.Parse(args)
	loopback(*addr)
	if *n < 1 || *n > maxClients || *dur <= 0 || *dur > maxDur {
		die("-n 1..%d, -d up to %v", maxClients, maxDur)
	}
	raiseNofile(uint64(*n))
	req := request(*path, "")
	clients := make([]client, *n)
	var lat hist
	s := runEpoll(*addr, req, clients, &lat, *dur)
	elapsed := time.Since(s.start)
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())

	var total, non200, errs, reconn uint64
	counts := make([]uint64, len(clients))
	var firsts, dials, sents, waits []time.Duration
	var arrived time.Time // the last client's connect began
	none := 0
	for i, c := range clients {
		total += c.count
		non200 += c.non200
		errs += c.errors
		reconn += c.reconnects
		counts[i] = c.count
		if c.dial > 0 {
			dials = append(dials, c.dial)
		}
		if c.start.After(arrived) {
			arrived = c.start
		}
		if c.sent > 0 {
			sents = append(sents, c.sent)
		}
		if c.count == 0 {
			none++
		} else {
			firsts = append(firsts, c.first)
			waits = append(waits, c.first-c.sent)
		}
	}
	sort.Slice(counts, func(a, b int) bool { return counts[a] < counts[b] })
	sort.Slice(firsts, func(a, b int) bool { return firsts[a] < firsts[b] })
	sort.Slice(dials, func(a, b int) bool { return dials[a] < dials[b] })
	sort.Slice(sents, func(a, b int) bool { return sents[a] < sents[b] })
	sort.Slice(waits, func(a, b int) bool { return waits[a] < waits[b] })
	var firstMax time.Duration
	if len(firsts) > 0 {
		firstMax = firsts[len(firsts)-1]
	}
	late := 0 // answered, but first answer after 1 s
	for _, f := range firsts {
		if f > time.Second {
			late++
		}
	}
	fmt.Printf("mode=clients n=%d secs=%.2f requests=%d rps=%.0f "+
		"first_p50_ms=%.1f first_p99_ms=%.1f first_max_ms=%.1f first_over_1s=%d none=%d none_share=%.4f "+
		"count_min=%d count_median=%d count_max=%d lat_p50_ms=%.2f lat_p99_ms=%.2f lat_max_ms=%.1f "+
		"non200=%d errors=%d reconnects=%d connected=%d connect_p50_ms=%.1f connect_max_ms=%.1f arrival_spread_ms=%.1f first_sent_p50_ms=%.1f first_sent_max_ms=%.1f first_wait_p50_ms=%.1f first_wait_max_ms=%.1f tool_cpu_s=%.2f\n",
		*n, elapsed.Seconds(), total, float64(total)/elapsed.Seconds(),
		ms(percentileDur(firsts, 0.5)), ms(percentileDur(firsts, 0.99)), ms(firstMax), late, none,
		float64(none)/float64(*n), counts[0], counts[len(counts)/2], counts[len(counts)-1],
		lat.quantile(0.5), lat.quantile(0.99), lat.quantile(1), non200, errs, reconn,
		len(dials), ms(percentileDur(dials, 0.5)), ms(percentileDur(dials, 1)), ms(arrived.Sub(s.start)), ms(percentileDur(sents, 0.5)), ms(percentileDur(sents, 1)),
		ms(percentileDur(waits, 0.5)), ms(percentileDur(waits, 1)), cpu.Seconds())
}

// buyer: one fresh buyer, dial to answer, capped at @limit.
func buyer(addr string, req []byte, limit time.Duration) (time.Duration, error) {
	t0 := time.Now()
	conn, err := net.DialTimeout("tcp", addr, limit)
	if err != nil {
		return time.Since(t0), err
	}
	defer conn.Close()
	conn.SetDeadline(t0.Add(limit))
	if _, err = conn.Write(req); err != nil {
		return time.Since(t0), err
	}
	st, err := readResponse(bufio.NewReader(conn))
	if err == errClose {
		err = nil
	}
	if err == nil && st != 200 {
		err = fmt.Errorf("status %d", st)
	}
	return time.Since(t0), err
}

func samples(addr string, req []byte, k int, every, limit time.Duration) (p50, max time.Duration, fails int) {
	var v []time.Duration
	for i := 0; i < k; i++ {
		next := time.Now().Add(every)
		d, err := buyer(addr, req, limit)
		if err != nil {
			fails++
		}
		v = append(v, d)
		time.Sleep(time.Until(next))
	}
	sort.Slice(v, func(a, b int) bool { return v[a] < v[b] })
	return percentileDur(v, 0.5), v[len(v)-1], fails
}

func cmdIdle(args []string) {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:5059", "server host:port (loopback)")
	silent := fs.Int("silent", 1000, "connections that send nothing")
	slow := fs.Int("slow", 1000, "connections that send a header byte every -slow-every")
	slowEvery := fs.Duration("slow-every", 500*time.Millisecond, "pace of the slow headers")
	k := fs.Int("samples", 20, "fresh-buyer samples, each phase")
	every := fs.Duration("every", 250*time.Millisecond, "spacing of the samples")
	settle := fs.Duration("settle", time.Second, "wait after opening them before sampling")
	limit := fs.Duration("limit", 15*time.Second, "a sample gives up after this")
	path := fs.String("path", "/api/v1/OneStock/Cache/Atomic/Peek", "the buyer's request (GET)")
	fs.Parse(args)
	loopback(*addr)
	if *silent < 0 || *slow < 0 || *silent > maxIdle || *slow > maxIdle || *k < 1 || *k > 200 ||
		*limit > 60*time.Second || time.Duration(*k)*(*every) > maxDur {
		die("-silent/-slow 0..%d, -samples 1..200, -limit up to 60s", maxIdle)
	}
	raiseNofile(uint64(*silent + *slow + 1))
	req := request(*path, "Connection: close\r\n")

	b50, bmax, bfail := samples(*addr, req, *k, *every, *limit)

	var opened, closedSilent, closedSlow atomic.Int64
	var conns []net.Conn
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256) // dials in flight
	open := func(isSlow bool) {
		defer wg.Done()
		sem <- struct{}{}
		conn, err := net.DialTimeout("tcp", *addr, 5*time.Second)
		<-sem
		if err != nil {
			return
		}
		opened.Add(1)
		mu.Lock()
		conns = append(conns, conn)
		mu.Unlock()
		go func() { // notices the server closing it
			buf := make([]byte, 512)
			for {
				if _, err := conn.Read(buf); err != nil {
					select {
					case <-stop:
					default:
						if isSlow {
							closedSlow.Add(1)
						} else {
							closedSilent.Add(1)
						}
					}
					return
				}
			}
		}()
		if !isSlow {
			return
		}
		go func() { // a header that never ends, a byte at a time
			head := "GET " + *path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
			t := time.NewTicker(*slowEvery)
			defer t.Stop()
			for i := 0; ; i++ {
				b := byte('a')
				if i < len(head) {
					b = head[i]
				}
				if _, err := conn.Write([]byte{b}); err != nil {
					return
				}
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		}()
	}
	for i := 0; i < *silent+*slow; i++ {
		wg.Add(1)
		go open(i >= *silent)
	}
	wg.Wait()
	time.Sleep(*settle)
	l50, lmax, lfail := samples(*addr, req, *k, *every, *limit)
	close(stop)
	mu.Lock()
	for _, c := range conns {
		c.Close()
	}
	mu.Unlock()

	fmt.Printf("mode=idle silent=%d slow=%d opened=%d samples=%d base_p50_ms=%.2f base_max_ms=%.2f "+
		"base_fail=%d load_p50_ms=%.2f load_max_ms=%.2f load_fail=%d delay_p50_ms=%.2f delay_max_ms=%.2f "+
		"server_closed_silent=%d server_closed_slow=%d\n",
		*silent, *slow, opened.Load(), *k, ms(b50), ms(bmax), bfail, ms(l50), ms(lmax), lfail,
		ms(l50-b50), ms(lmax-b50), closedSilent.Load(), closedSlow.Load())
}

func main() {
	if len(os.Args) < 2 {
		die("usage: crowd clients|idle|rate|restock [flags] (crowd clients -h)")
	}
	switch os.Args[1] {
	case "clients":
		cmdClients(os.Args[2:])
	case "idle":
		cmdIdle(os.Args[2:])
	case "rate":
		cmdRate(os.Args[2:])
	case "restock":
		cmdRestock(os.Args[2:])
	default:
		die("unknown mode %q: clients, idle, rate or restock", os.Args[1])
	}
}
