package main

// crowd restock: how long a restock takes to reach buyers on the other
// instances (tests/bench/bench_http.sh, "restock reaches").
//
//	crowd restock -admin 127.0.0.1:A -buy 127.0.0.1:B,127.0.0.1:C -sku NVDA
//	    -path /api/v1/ManyStock/Cache/BuyFastAtomic/NVDA -token T [-n 20]
//	    each round: sell the SKU out on every -buy instance (A never buys,
//	    so it holds no lease), restock -units on A (POST
//	    /api/v1/Admin/Stock/{sku}), then buy on every -buy instance in a
//	    loop (one keep-alive connection each) until it sells; the time from
//	    the admin answer to each instance's first 200 is one sample. Prints
//	    p50, p99 and max over every sample.

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"
)

type kconn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialK(addr string) *kconn {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		die("restock: %v", err)
	}
	return &kconn{c, bufio.NewReader(c)}
}

func (k *kconn) do(req []byte) int {
	k.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := k.c.Write(req); err != nil {
		die("restock: write: %v", err)
	}
	status, err := readResponse(k.br)
	if err != nil && err != errClose {
		die("restock: read: %v", err)
	}
	return status
}

func cmdRestock(args []string) {
	fs := flag.NewFlagSet("restock", flag.ExitOnError)
	admin := fs.String("admin", "", "instance that restocks (host:port)")
	buy := fs.String("buy", "", "instances that buy, comma separated")
	sku := fs.String("sku", "NVDA", "SKU")
	path := fs.String("path", "", "buy path of the SKU")
	token := fs.String("token", "", "admin token")
	n := fs.Int("n", 20, "rounds")
	units := fs.Int("units", 200, "units per restock")
	limit := fs.Duration("limit", 10*time.Second, "give up on a round after this")
	verbose := fs.Bool("v", false, "print each sample (round, instance, ms, 409s before the 200)")
	fs.Parse(args)
	loopback(*admin)
	buyers := strings.Split(*buy, ",")
	for _, b := range buyers {
		loopback(b)
	}
	buyReq := []byte("POST " + *path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
	body := fmt.Sprintf(`{"restock":%d}`, *units)
	adminReq := []byte("POST /api/v1/Admin/Stock/" + *sku + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
		"Authorization: Bearer " + *token + "\r\nContent-Type: application/json\r\n" +
		fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(body), body))
	a := dialK(*admin)
	ks := make([]*kconn, len(buyers))
	for i, b := range buyers {
		ks[i] = dialK(b)
	}
	var samples []time.Duration
	for r := 0; r < *n; r++ {
		// Sold out everywhere first: each buyer instance answers 409.
		for _, k := range ks {
			for k.do(buyReq) == 200 {
			}
		}
		if s := a.do(adminReq); s != 200 {
			die("restock: admin answered %d", s)
		}
		t0 := time.Now()
		type sample struct {
			inst, refused int
			d             time.Duration
		}
		done := make(chan sample, len(ks))
		for i, k := range ks {
			go func(i int, k *kconn) {
				refused := 0
				for time.Since(t0) < *limit {
					if k.do(buyReq) == 200 {
						done <- sample{i, refused, time.Since(t0)}
						return
					}
					refused++
				}
				done <- sample{i, refused, -1}
			}(i, k)
		}
		for range ks {
			x := <-done
			if x.d < 0 {
				die("restock: an instance did not sell within %s", *limit)
			}
			if *verbose {
				fmt.Printf("round %d instance %s: %.2f ms, %d refused first\n", r, buyers[x.inst], ms(x.d), x.refused)
			}
			samples = append(samples, x.d)
		}
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	fmt.Printf("restock samples=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n", len(samples),
		ms(percentileDur(samples, 0.50)), ms(percentileDur(samples, 0.99)), ms(samples[len(samples)-1]))
}
