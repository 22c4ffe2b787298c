// A small payment service (PSP) for the tests of demo-server/checkout/payment.c.
//
//	payment -addr 127.0.0.1:0     prints "port N" as its first stdout line
//
// POST /charge  {"hold_id":"..","items":[{"sku":"..","quantity":n},..],"buyer":".."|null}
//
//	with Idempotency-Key == hold_id (else 400); the mode answers:
//	succeed 200, fail 500, decline 402, hang (no answer until the
//	client goes away), die (the process exits at once).
//
// POST /mode    body succeed|fail|decline|hang|die
// GET  /charges {"calls":{hold:n},"charged":{hold:1},"duplicates":{hold:n},"buyers":{hold:".."}}
//
// Idempotency as a real PSP: a second successful charge for a hold id is
// answered 200 again but not charged again (counted in "duplicates").
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
)

type item struct {
	SKU      *string `json:"sku"`
	Quantity *uint64 `json:"quantity"`
}

type charge struct {
	HoldID *string `json:"hold_id"`
	Items  []item  `json:"items"`
	Buyer  *string `json:"buyer"`
}

type psp struct {
	mu         sync.Mutex
	mode       string
	calls      map[string]int
	charged    map[string]int
	duplicates map[string]int
	buyers     map[string]*string
}

func (s *psp) charge(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	s.mu.Lock()
	die := s.mode == "die"
	s.mu.Unlock()
	if die {
		os.Exit(3)
	}
	var c charge
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil || dec.More() {
		http.Error(w, fmt.Sprintf("bad body: %v", err), http.StatusBadRequest)
		return
	}
	if c.HoldID == nil || *c.HoldID == "" || len(c.Items) == 0 {
		http.Error(w, "hold_id and items required", http.StatusBadRequest)
		return
	}
	for _, it := range c.Items {
		if it.SKU == nil || *it.SKU == "" || it.Quantity == nil || *it.Quantity == 0 {
			http.Error(w, "bad item", http.StatusBadRequest)
			return
		}
	}
	hold := *c.HoldID
	if r.Header.Get("Idempotency-Key") != hold {
		http.Error(w, "Idempotency-Key must equal hold_id", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.calls[hold]++
	mode := s.mode
	if mode == "succeed" {
		if s.charged[hold] == 0 {
			s.charged[hold] = 1
			s.buyers[hold] = c.Buyer
		} else {
			s.duplicates[hold]++
		}
	}
	s.mu.Unlock()
	switch mode {
	case "succeed":
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"status\":\"charged\"}\n")
	case "fail":
		http.Error(w, "payment backend failure", http.StatusInternalServerError)
	case "decline":
		http.Error(w, "card declined", http.StatusPaymentRequired)
	case "hang":
		<-r.Context().Done()
	}
}

func (s *psp) setMode(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	b, _ := io.ReadAll(io.LimitReader(r.Body, 64))
	m := strings.TrimSpace(string(b))
	switch m {
	case "succeed", "fail", "decline", "hang", "die":
	default:
		http.Error(w, "mode: succeed|fail|decline|hang|die", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.mode = m
	s.mu.Unlock()
	fmt.Fprintln(w, m)
}

func (s *psp) charges(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	b, err := json.Marshal(map[string]any{"calls": s.calls, "charged": s.charged,
		"duplicates": s.duplicates, "buyers": s.buyers})
	s.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	s := &psp{mode: "succeed", calls: map[string]int{}, charged: map[string]int{},
		duplicates: map[string]int{}, buyers: map[string]*string{}}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "payment:", err)
		os.Exit(1)
	}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "port %d\n", ln.Addr().(*net.TCPAddr).Port)
	out.Flush()
	mux := http.NewServeMux()
	mux.HandleFunc("/charge", s.charge)
	mux.HandleFunc("/mode", s.setMode)
	mux.HandleFunc("/charges", s.charges)
	fmt.Fprintln(os.Stderr, "payment:", http.Serve(ln, mux))
	os.Exit(1)
}
