package main

// Throughput and latency of a recorded history (the benchmark's numbers).

import (
	"fmt"
	"io"
	"sort"
	"time"
)

func pct(d []int64, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return time.Duration(d[int(float64(len(d)-1)*p)])
}

// Stats prints one line for the whole run and one per route.
func Stats(w io.Writer, h *History) {
	if len(h.Ops) == 0 {
		return
	}
	first, last := h.Ops[0].Start, h.Ops[0].End
	lat := map[string][]int64{}
	status := map[int]int{}
	var all []int64
	var units int64
	for _, o := range h.Ops {
		if o.Start < first {
			first = o.Start
		}
		if o.End > last {
			last = o.End
		}
		status[o.Status]++
		if o.Status == 200 {
			units += o.Qty
		}
		lat[o.Route] = append(lat[o.Route], o.End-o.Start)
		all = append(all, o.End-o.Start)
	}
	secs := float64(last-first) / 1e9
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	fmt.Fprintf(w, "stats: %d requests in %.2f s of load (%.0f req/s, restarts included): %d x 200 (%d units), %d x 409, "+
		"%d other; latency p50 %v p99 %v max %v\n", len(h.Ops), secs, float64(len(h.Ops))/secs, status[200], units,
		status[409], len(h.Ops)-status[200]-status[409], pct(all, 0.5).Round(time.Microsecond),
		pct(all, 0.99).Round(time.Microsecond), pct(all, 1).Round(time.Microsecond))
	var routes []string
	for r := range lat {
		routes = append(routes, r)
	}
	sort.Strings(routes)
	for _, r := range routes {
		d := lat[r]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		fmt.Fprintf(w, "stats: %-6s %6d requests, p50 %v p99 %v\n", r, len(d), pct(d, 0.5).Round(time.Microsecond),
			pct(d, 0.99).Round(time.Microsecond))
	}
}
