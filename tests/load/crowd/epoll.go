//go:build linux

// The clients' engine: one epoll loop per CPU, each owning its share of the
// connections, raw non-blocking sockets, requests written by hand. It
// serves ready connections in the order the kernel reports them, so no
// client's turn depends on a goroutine scheduler (with a goroutine per
// connection, clients already looping delayed others' first request by
// seconds).
package main

import (
	"bytes"
	"net"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

type econn struct {
	idx        int // in its loop's conns
	fd         int // -1: none
	c          *client
	connecting bool
	waiting    bool // a request is out
	sentAt     time.Time
	n          int
	buf        [2048]byte
}

type eloop struct {
	epfd   int
	sa     syscall.Sockaddr
	family int
	req    []byte
	conns  []*econn
	retry  []*econn // to reconnect after a failed connect
	lat    [len(hist{})]uint64
}

func sockaddr(addr string) (syscall.Sockaddr, int) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		die("bad -addr %q", addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		die("bad port in %q", addr)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	if ip4 := ip.To4(); ip4 != nil {
		sa := &syscall.SockaddrInet4{Port: p}
		copy(sa.Addr[:], ip4)
		return sa, syscall.AF_INET
	}
	sa := &syscall.SockaddrInet6{Port: p}
	copy(sa.Addr[:], ip.To16())
	return sa, syscall.AF_INET6
}

func (l *eloop) drop(e *econn) {
	if e.fd >= 0 {
		syscall.Close(e.fd) // closing removes it from the epoll set
		e.fd = -1
	}
	e.connecting, e.waiting, e.n = false, false, 0
}

// connect starts a non-blocking connect of e (index i in l.conns); false
// when it failed at once (counted).
func (l *eloop) connect(e *econn, i int) bool {
	fd, err := syscall.Socket(l.family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		e.c.errors++
		return false
	}
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	err = syscall.Connect(fd, l.sa)
	if err != nil && err != syscall.EINPROGRESS {
		syscall.Close(fd)
		e.c.errors++
		return false
	}
	e.fd, e.connecting, e.n = fd, true, 0
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT, Fd: int32(i)}
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		die("epoll_ctl: %v", err)
	}
	return true
}

func (l *eloop) send(e *econn, now time.Time) bool {
	if k, err := syscall.Write(e.fd, l.req); err != nil || k != len(l.req) {
		return false
	}
	if e.c.sent == 0 {
		e.c.sent = now.Sub(e.c.start)
	}
	e.sentAt, e.waiting = now, true
	return true
}

// response parses one answer in e.buf[:e.n]: complete, status, close, malformed.
func response(b []byte) (done bool, status int, closing, bad bool) {
	h := bytes.Index(b, []byte("\r\n\r\n"))
	if h < 0 {
		return false, 0, false, false
	}
	if h < 12 || !bytes.HasPrefix(b, []byte("HTTP/1.")) {
		return false, 0, false, true
	}
	status, err := strconv.Atoi(string(b[9:12]))
	if err != nil {
		return false, 0, false, true
	}
	clen := -1
	for _, line := range bytes.Split(b[:h], []byte("\r\n"))[1:] {
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		name, val := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if clen, err = strconv.Atoi(string(val)); err != nil {
				return false, 0, false, true
			}
		case bytes.EqualFold(name, []byte("Connection")):
			closing = bytes.EqualFold(val, []byte("close"))
		}
	}
	if clen < 0 {
		return false, 0, false, true
	}
	if len(b) < h+4+clen {
		return false, 0, false, false
	}
	if len(b) > h+4+clen {
		return false, 0, false, true // nothing was asked for beyond this answer
	}
	return true, status, closing, false
}

// run: every connection is opened at once (as fast as this loop can dial),
// sends its first request as soon as it is connected, and loops until s.end.
func (l *eloop) run(s *sale) {
	runtime.LockOSThread()
	events := make([]syscall.EpollEvent, 512)
	next := 0 // conns[next:] not yet opened
	for {
		now := time.Now()
		if !now.Before(s.end) {
			break
		}
		for ; next < len(l.conns); next++ { // the crowd arrives at once
			e := l.conns[next]
			e.c.start = time.Now()
			if !l.connect(e, next) {
				l.retry = append(l.retry, e)
			}
		}
		failed := l.retry[:0]
		for _, e := range l.retry {
			if !l.connect(e, e.idx) {
				failed = append(failed, e) // again on the next turn
			}
		}
		l.retry = failed
		wait := min(50, int(s.end.Sub(now)/time.Millisecond)+1)
		if len(l.retry) > 0 {
			wait = min(wait, 10)
		}
		k, err := syscall.EpollWait(l.epfd, events, wait)
		if err != nil && err != syscall.EINTR {
			die("epoll_wait: %v", err)
		}
		for _, ev := range events[:max(k, 0)] {
			l.event(s, l.conns[ev.Fd], ev.Events)
		}
	}
	for _, e := range l.conns {
		l.drop(e)
	}
}

func (l *eloop) event(s *sale, e *econn, events uint32) {
	now := time.Now()
	if e.fd < 0 {
		return
	}
	if e.connecting {
		if events&(syscall.EPOLLOUT|syscall.EPOLLERR|syscall.EPOLLHUP) == 0 {
			return
		}
		soerr, _ := syscall.GetsockoptInt(e.fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
		if soerr != 0 || events&(syscall.EPOLLERR|syscall.EPOLLHUP) != 0 {
			l.drop(e)
			e.c.errors++
			l.retry = append(l.retry, e) // the loop waits 10 ms while retries are due
			return
		}
		e.connecting = false
		mod := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(e.idx)}
		syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, e.fd, &mod)
		if e.c.dial == 0 {
			e.c.dial = now.Sub(e.c.start)
		}
		if !l.send(e, now) {
			l.drop(e)
			e.c.errors++
			l.retry = append(l.retry, e)
		}
		return
	}
	r, err := syscall.Read(e.fd, e.buf[e.n:])
	if err == syscall.EAGAIN {
		return
	}
	if r <= 0 || err != nil { // closed: a lost request is an error
		if e.waiting || e.n > 0 {
			e.c.errors++
		}
		l.drop(e)
		e.c.reconnects++
		l.retry = append(l.retry, e)
		return
	}
	e.n += r
	done, status, closing, bad := response(e.buf[:e.n])
	if bad || (!done && e.n == len(e.buf)) {
		e.c.errors++
		l.drop(e)
		l.retry = append(l.retry, e)
		return
	}
	if !done {
		return
	}
	e.n, e.waiting = 0, false
	l.lat[bucket(uint64(now.Sub(e.sentAt).Microseconds()))]++
	if e.c.count == 0 {
		e.c.first = now.Sub(e.c.start)
	}
	e.c.count++
	if status != 200 {
		e.c.non200++
	}
	if !now.Before(s.end) {
		return
	}
	if closing {
		l.drop(e)
		e.c.reconnects++
		l.retry = append(l.retry, e)
	} else if !l.send(e, now) {
		l.drop(e)
		e.c.errors++
		l.retry = append(l.retry, e)
	}
}

// runEpoll: N clients on one loop per CPU; fills clients and lat.
func runEpoll(addr string, req []byte, clients []client, lat *hist, dur time.Duration) *sale {
	sa, family := sockaddr(addr)
	nl := runtime.NumCPU()
	if nl > len(clients) {
		nl = len(clients)
	}
	loops := make([]*eloop, nl)
	for j := range loops {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			die("epoll_create1: %v", err)
		}
		loops[j] = &eloop{epfd: epfd, sa: sa, family: family, req: req}
	}
	for i := range clients {
		l := loops[i%nl]
		l.conns = append(l.conns, &econn{idx: len(l.conns), fd: -1, c: &clients[i]})
	}
	s := &sale{start: time.Now()}
	s.end = s.start.Add(dur)
	var done sync.WaitGroup
	for _, l := range loops {
		done.Add(1)
		go func(l *eloop) {
			defer done.Done()
			l.run(s)
		}(l)
	}
	done.Wait()
	for _, l := range loops {
		for b, v := range l.lat {
			lat[b].Add(v)
		}
		syscall.Close(l.epfd)
	}
	return s
}
